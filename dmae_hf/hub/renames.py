# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Key names of DMAE checkpoints -> dmae-hf names (see `dmae_hf.hub.convert` for the layouts): the official
(timm) names of quanlin-wu/dmae, and transformers ViTMAE's legacy and new names, q/k/v fused into `qkv`."""

import re

import torch

from .checkpoint_files import CheckpointError

_BLOCK_RENAMES = {"norm1.": "layernorm_before.", "attn.qkv.": "attention.qkv.", "attn.proj.": "attention.proj.",
                  "norm2.": "layernorm_after.", "mlp.fc1.": "mlp.fc1.", "mlp.fc2.": "mlp.fc2."}
_OFFICIAL_RENAMES = {
    "cls_token": "dmae.embeddings.cls_token",
    "pos_embed": "dmae.embeddings.position_embeddings",
    "patch_embed.proj.weight": "dmae.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "dmae.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "dmae.layernorm.weight",
    "norm.bias": "dmae.layernorm.bias",
    "decoder_embed.weight": "decoder.decoder_embed.weight",
    "decoder_embed.bias": "decoder.decoder_embed.bias",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_norm.weight": "decoder.decoder_norm.weight",
    "decoder_norm.bias": "decoder.decoder_norm.bias",
    "decoder_pred.weight": "decoder.decoder_pred.weight",
    "decoder_pred.bias": "decoder.decoder_pred.bias",
    "fc_norm.weight": "fc_norm.weight",
    "fc_norm.bias": "fc_norm.bias",
    "head.weight": "classifier.weight",
    "head.bias": "classifier.bias",
}
# transformers ViTMAE: block-internal names (legacy | new) -> ours; "q"/"k"/"v" are fused afterwards.
_HF_BLOCK_RENAMES = [
    (r"attention\.attention\.query\.|attention\.q_proj\.", "q."),
    (r"attention\.attention\.key\.|attention\.k_proj\.", "k."),
    (r"attention\.attention\.value\.|attention\.v_proj\.", "v."),
    (r"attention\.output\.dense\.|attention\.o_proj\.", "attention.proj."),
    (r"intermediate\.dense\.|mlp\.fc1\.", "mlp.fc1."),
    (r"output\.dense\.|mlp\.fc2\.", "mlp.fc2."),
    (r"layernorm_before\.", "layernorm_before."),
    (r"layernorm_after\.", "layernorm_after."),
]
_HF_TOP_RENAMES = {
    "vit.embeddings.cls_token": "dmae.embeddings.cls_token",
    "vit.embeddings.position_embeddings": "dmae.embeddings.position_embeddings",
    "vit.embeddings.patch_embeddings.projection.weight": "dmae.embeddings.patch_embeddings.projection.weight",
    "vit.embeddings.patch_embeddings.projection.bias": "dmae.embeddings.patch_embeddings.projection.bias",
    "vit.layernorm.weight": "dmae.layernorm.weight",
    "vit.layernorm.bias": "dmae.layernorm.bias",
    **{f"decoder.{name}": f"decoder.{name}" for name in (
        "decoder_embed.weight", "decoder_embed.bias", "mask_token", "decoder_pos_embed", "decoder_norm.weight",
        "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias")},
}
_HF_ENCODER_BLOCK = re.compile(r"vit\.(?:encoder\.layer|layers)\.(\d+)\.(.+)")
_HF_DECODER_BLOCK = re.compile(r"decoder\.(?:decoder_layers|decoder_encoder\.layer)\.(\d+)\.(.+)")


# -------------------------------------------------------------------------------------------------------- renaming
def rename_official(state: dict) -> tuple[dict, list[str]]:
    """Official (timm) names -> dmae-hf names. Returns the renamed dict and the source keys no rule matched."""
    out, unknown = {}, []
    for key, value in state.items():
        new = _OFFICIAL_RENAMES.get(key)
        m = re.fullmatch(r"(blocks|decoder_blocks)\.(\d+)\.(.+)", key)
        if m:
            prefix = "dmae.layers" if m.group(1) == "blocks" else "decoder.decoder_layers"
            rest = next((new_rest + m.group(3)[len(old):] for old, new_rest in _BLOCK_RENAMES.items()
                         if m.group(3).startswith(old)), None)
            new = f"{prefix}.{m.group(2)}.{rest}" if rest else None
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    return out, unknown


def rename_vit_mae(state: dict) -> tuple[dict, list[str]]:
    """transformers ViTMAEForPreTraining names (legacy or new) -> dmae-hf names, q/k/v fused into `qkv`."""
    out, unknown, qkv = {}, [], {}
    for key, value in state.items():
        if key in _HF_TOP_RENAMES:
            out[_HF_TOP_RENAMES[key]] = value
            continue
        m = _HF_ENCODER_BLOCK.fullmatch(key) or _HF_DECODER_BLOCK.fullmatch(key)
        rest = None
        if m:
            for pattern, replacement in _HF_BLOCK_RENAMES:
                hit = re.match(pattern, m.group(2))
                if hit:
                    rest = replacement + m.group(2)[hit.end():]
                    break
        if rest is None or rest.split(".")[-1] not in ("weight", "bias"):
            unknown.append(key)
            continue
        prefix = "dmae.layers" if m.re is _HF_ENCODER_BLOCK else "decoder.decoder_layers"
        if rest[0] in "qkv" and rest[1] == ".":
            qkv.setdefault((prefix, m.group(1), rest[2:]), {})[rest[0]] = value
        else:
            out[f"{prefix}.{m.group(1)}.{rest}"] = value
    for (prefix, index, param), parts in qkv.items():
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            raise CheckpointError(f"Block {prefix}.{index} has no {'/'.join(missing)} {param} to fuse into qkv.")
        out[f"{prefix}.{index}.attention.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out, unknown


def official_name(key: str) -> str | None:
    """The official (timm) name of a dmae-hf weight, the inverse of `rename_official` (None if it has none)."""
    for old, new in _OFFICIAL_RENAMES.items():
        if new == key:
            return old
    m = re.fullmatch(r"(dmae\.layers|decoder\.decoder_layers)\.(\d+)\.(.+)", key)
    if m:
        for old, new in _BLOCK_RENAMES.items():
            if m.group(3).startswith(new):
                blocks = "blocks" if m.group(1) == "dmae.layers" else "decoder_blocks"
                return f"{blocks}.{m.group(2)}.{old}{m.group(3)[len(new):]}"
    return None


__all__ = ["rename_official", "rename_vit_mae", "official_name"]
