# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Convert DMAE checkpoints to dmae-hf checkpoints: model.safetensors, config.json, preprocessor_config.json and
README.md.

Three source layouts, told apart by their keys:

- `"pretraining"`: the official pre-training checkpoints of quanlin-wu/dmae (`models_dmae.py`, MAE/timm key names:
  `cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*`,
  `norm.*`, `decoder_embed.*`, `mask_token`, `decoder_pos_embed`, `decoder_blocks.{j}.*`, `decoder_norm.*`,
  `decoder_pred.*`), -> `DMAEForPreTraining`.
- `"classifier"`: official fine-tuned classifiers (`models_vit.py`, global pool): the encoder keys above without
  `norm.*`, plus `fc_norm.*` and `head.*` -> `DMAEForSmoothedClassification`. The learned `pos_embed` is kept.
- `"vit-mae"`: transformers `ViTMAEForPreTraining` checkpoints (`facebook/vit-mae-*`): legacy keys
  (`vit.encoder.layer.{i}.attention.attention.query.*`, `decoder.decoder_layers.{j}...`, also the
  `decoder.decoder_encoder.layer.{j}...` that transformers 5 writes) or new keys (`vit.layers.{i}.attention.q_proj.*`)
  -> `DMAEForPreTraining`, with q, k and v concatenated by rows into the fused `qkv`.

Official `.pth` files are read with `torch.load(map_location="cpu", weights_only=True)` only
(`dmae_hf.hub.checkpoint_files`): a pickle that needs code execution is refused, and a file that is no checkpoint is
called what it is. Key names are mapped by `dmae_hf.hub.renames`. Every source key must be used and every model
weight provided with its exact shape and finite values; otherwise the conversion fails and names the keys.

    python -m dmae_hf convert dmae_base.pth out/dmae-vit-base
    python -m dmae_hf convert cifar_sigma0.25.pth out/c --normalization cifar10 --sigma 0.25 --push-to-hub org/name
"""

import math
import os
import re
from pathlib import Path

import torch

from ..configuration_dmae import (
    ARCHITECTURES,
    CIFAR10_LABELS,
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    PRESETS,
    DMAEConfig,
)
from ..defaults import check_sigma
from ..image_processing_dmae import DMAEImageProcessor
from ..modeling_dmae import DMAEForPreTraining, DMAEForSmoothedClassification
from . import names as hub_names
from .checkpoint_files import CheckpointError, check_finite, load_checkpoint, torch_load
from .model_card import render_model_card
from .renames import official_name, rename_official, rename_vit_mae

# Heads by width in the official models (`official` architectures: ViT-B 768/12, ViT-L 1024/16, ViT-H 1280/16; their
# decoder 512/16): the heads of a checkpoint whose config does not give them.
_OFFICIAL = [DMAEConfig.from_preset(name) for name, arch in ARCHITECTURES.items() if arch.official]
OFFICIAL_HEADS = {c.hidden_size: c.num_attention_heads for c in _OFFICIAL}
OFFICIAL_DECODER_HEADS = {c.decoder_hidden_size: c.decoder_num_attention_heads for c in _OFFICIAL}
NORMALIZATIONS = {"imagenet": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD), "cifar10": (CIFAR10_MEAN, CIFAR10_STD)}
_SOURCES = {"pretraining": "official DMAE pre-training", "classifier": "official DMAE fine-tuned classifier",
            "vit-mae": "transformers ViTMAE"}
_UPLOADED = ["model.safetensors", "*.json", "*.py", "README.md"]  # what --push-to-hub sends (never a pickle)


def _check_options(sigma=None, num_heads=None, decoder_num_heads=None, num_labels=None, **_):
    """Refuse option values no model can have, before any work is done."""
    if sigma is not None:
        try:  # the one sigma rule (0 allowed: a pre-training checkpoint without noise, i.e. a plain MAE)
            check_sigma(sigma, name="--sigma", allow_zero=True)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    for option, value in (("--num-heads", num_heads), ("--decoder-num-heads", decoder_num_heads),
                          ("--num-labels", num_labels)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CheckpointError(f"{option} must be an integer >= 1, got {value!r}.")


def _check_output_dir(output_dir: Path) -> None:
    """Refuse an output directory that cannot be created: under a regular file, or in a read-only directory."""
    existing = next(p for p in (output_dir, *output_dir.parents) if p.exists() or p == p.parent)
    if not existing.is_dir():
        raise CheckpointError(f"Cannot write to {output_dir}: {existing} is a file, not a directory; choose another "
                              "output directory.")
    if existing != output_dir and not os.access(existing, os.W_OK | os.X_OK):
        raise CheckpointError(f"Cannot create {output_dir}: {existing} is not writable.")


def detect_layout(state: dict) -> str:
    """`"pretraining"`, `"classifier"` or `"vit-mae"` (see the module docstring), or a `CheckpointError`."""
    keys = set(state)
    if "head.1.weight" in keys or "head.0.running_mean" in keys:
        raise CheckpointError("This is a linear-probe checkpoint (cls token + BatchNorm head); only global-pool "
                              "fine-tuned classifiers and pre-training checkpoints can be converted.")
    if any(k.startswith("vit.") for k in keys):
        return "vit-mae"
    if "patch_embed.proj.weight" in keys or any(k.startswith("blocks.") for k in keys):
        if any(k.startswith(("decoder_", "mask_token")) for k in keys):
            return "pretraining"
        if any(k.startswith(("head.", "fc_norm.")) for k in keys):
            return "classifier"
        raise CheckpointError("Encoder-only checkpoint (no decoder_* and no fc_norm/head keys): neither a DMAE "
                              "pre-training checkpoint nor a fine-tuned classifier.")
    sample = ", ".join(sorted(keys)[:8])
    raise CheckpointError(f"Not a DMAE/MAE ViT checkpoint: expected keys such as 'patch_embed.proj.weight', "
                          f"'blocks.0.attn.qkv.weight' or 'vit.embeddings.cls_token'; found {sample}, ...")


# --------------------------------------------------------------------------------------------------- architecture
def _depth(state: dict, prefix: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if not indices:
        return 0
    missing = sorted(set(range(max(indices) + 1)) - indices)
    if missing:
        raise CheckpointError(f"Blocks {missing} are missing ({prefix}N.* keys for N in 0..{max(indices)}).")
    return max(indices) + 1


def _get(state: dict, key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"Missing key {key!r}.")
    return state[key]


def _heads(width: int, given: int | None, table: dict, option: str, what: str) -> int:
    heads = given if given is not None else table.get(width)
    if heads is None:
        raise CheckpointError(f"Cannot tell the number of attention heads of a {width}-wide {what} from the weights "
                              f"(the official widths are {sorted(table)}); pass {option} or --preset.")
    if width % heads:
        raise CheckpointError(f"{what} width {width} is not a multiple of {heads} heads.")
    return heads


def infer_architecture(state: dict, hf_config: dict | None = None, preset: str | None = None,
                       num_heads: int | None = None, decoder_num_heads: int | None = None) -> dict:
    """DMAEConfig architecture fields of a renamed (dmae-hf names) state dict.

    Widths, depths, patch size, channels, image size (from the position table), MLP ratio and qkv bias come from
    the tensor shapes. Head counts cannot: they come from `num_heads`/`decoder_num_heads`, else the preset, else the
    source's config.json, else the official convention `OFFICIAL_HEADS` / `OFFICIAL_DECODER_HEADS` (768 -> 12,
    1024 and 1280 -> 16; decoder 512 -> 16).
    """
    patch = _get(state, "dmae.embeddings.patch_embeddings.projection.weight")
    if patch.ndim != 4 or patch.shape[2] != patch.shape[3]:
        raise CheckpointError(f"patch embedding weight has shape {tuple(patch.shape)}, expected (D, C, p, p).")
    width, channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
    pos = _get(state, "dmae.embeddings.position_embeddings")
    grid = math.isqrt(pos.shape[1] - 1)
    if pos.ndim != 3 or grid * grid != pos.shape[1] - 1:
        raise CheckpointError(f"position table has shape {tuple(pos.shape)}, expected (1, 1 + g*g, D).")
    fc1 = _get(state, "dmae.layers.0.mlp.fc1.weight")
    arch = dict(hidden_size=width, num_channels=channels, patch_size=patch_size, image_size=grid * patch_size,
                num_hidden_layers=_depth(state, "dmae.layers."), mlp_ratio=fc1.shape[0] / width,
                qkv_bias="dmae.layers.0.attention.qkv.bias" in state)
    if float(arch["mlp_ratio"]).is_integer():
        arch["mlp_ratio"] = float(arch["mlp_ratio"])
    has_decoder = "decoder.decoder_embed.weight" in state
    if has_decoder:
        arch["decoder_hidden_size"] = state["decoder.decoder_embed.weight"].shape[0]
        arch["decoder_num_hidden_layers"] = _depth(state, "decoder.decoder_layers.")

    hf_config = hf_config or {}
    if preset is not None:
        if preset not in PRESETS:
            raise CheckpointError(f"Unknown preset {preset!r}; choose one of {sorted(PRESETS)}.")
        expected = DMAEConfig.from_preset(preset)
        for field in ("hidden_size", "num_hidden_layers", "patch_size") + (
                ("decoder_hidden_size", "decoder_num_hidden_layers") if has_decoder else ()):
            if getattr(expected, field) != arch[field]:
                raise CheckpointError(f"The checkpoint has {field}={arch[field]} but preset {preset!r} has "
                                      f"{getattr(expected, field)}: wrong architecture for this preset.")
        num_heads = num_heads or expected.num_attention_heads
        decoder_num_heads = decoder_num_heads or expected.decoder_num_attention_heads
    num_heads = num_heads or hf_config.get("num_attention_heads")
    decoder_num_heads = decoder_num_heads or hf_config.get("decoder_num_attention_heads")
    arch["num_attention_heads"] = _heads(width, num_heads, OFFICIAL_HEADS, "--num-heads", "encoder")
    if has_decoder:
        arch["decoder_num_attention_heads"] = _heads(arch["decoder_hidden_size"], decoder_num_heads,
                                                     OFFICIAL_DECODER_HEADS, "--decoder-num-heads", "decoder")
    return arch


def check_state_dict(model: torch.nn.Module, state: dict, unknown: list[str], source: str, official: bool) -> None:
    """Fail, naming the keys, on source keys no rule maps, missing model weights or shape mismatches. Keys are
    named as in the source checkpoint (official names, with the dmae-hf name in parentheses)."""

    def name(key):
        old = official_name(key) if official else None
        return f"{old} ({key})" if old else key

    expected = model.state_dict()
    problems = []
    if unknown:
        problems.append(f"unknown keys in the {source} checkpoint: {sorted(unknown)}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        problems.append(f"keys this model has no place for: {[name(k) for k in unexpected]}")
    missing = sorted(set(expected) - set(state))
    if missing:
        problems.append(f"missing keys (model weights the checkpoint does not provide): {[name(k) for k in missing]}")
    shapes = [f"{name(k)}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if shapes:
        problems.append("mis-shaped keys: " + "; ".join(shapes))
    if problems:
        raise CheckpointError(f"Cannot convert this {source} checkpoint:\n- " + "\n- ".join(problems))


# ----------------------------------------------------------------------------------------------------- conversion
def _parse_labels(labels) -> list[str] | None:
    if labels is None or isinstance(labels, (list, tuple)):
        return list(labels) if labels is not None else None
    path = Path(labels)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [label.strip() for label in str(labels).split(",")]


def convert_state_dict(state: dict, hf_config: dict | None = None, *, preset: str | None = None,
                       num_heads: int | None = None, decoder_num_heads: int | None = None,
                       normalization: str = "imagenet", sigma: float | None = None, num_labels: int | None = None,
                       labels=None):
    """An official or ViTMAE state dict -> a `DMAEForPreTraining` or `DMAEForSmoothedClassification` in eval mode.

    `sigma` is the smoothing noise level of a classifier (required for classifiers) or the pre-training noise of a
    pre-training checkpoint (default 0.25 for official checkpoints, 0.0 for ViTMAE ones, which are plain MAEs).
    """
    if normalization not in NORMALIZATIONS:
        raise CheckpointError(f"normalization must be one of {sorted(NORMALIZATIONS)}, got {normalization!r}.")
    _check_options(sigma, num_heads, decoder_num_heads, num_labels)
    layout = detect_layout(state)
    check_finite(state, f"{_SOURCES[layout]} checkpoint")
    renamed, unknown = rename_vit_mae(state) if layout == "vit-mae" else rename_official(state)
    arch = infer_architecture(renamed, hf_config, preset, num_heads, decoder_num_heads)
    mean, std = NORMALIZATIONS[normalization]
    extra = dict(image_mean=mean, image_std=std)

    if layout == "classifier":
        if not sigma:
            raise CheckpointError(f"A classifier needs its smoothing noise level: pass --sigma > 0 (0.25, 0.5 or 1.0 "
                                  f"in the paper){'' if sigma is None else f', got {sigma!r}'}.")
        rows = _get(renamed, "classifier.weight").shape[0]
        if num_labels is not None and num_labels != rows:
            raise CheckpointError(f"--num-labels {num_labels} does not match the checkpoint's head of {rows} rows.")
        names = _parse_labels(labels)
        if names is None and normalization == "cifar10" and rows == 10:
            names = list(CIFAR10_LABELS)
        if names is not None and len(names) != rows:
            raise CheckpointError(f"Got {len(names)} labels for a head of {rows} classes.")
        id2label = {i: name for i, name in enumerate(names)} if names else {i: f"LABEL_{i}" for i in range(rows)}
        extra.update(num_labels=rows, id2label=id2label, label2id={v: k for k, v in id2label.items()},
                     smoothing_sigma=sigma, pooling="mean")
        model_class = DMAEForSmoothedClassification
    else:
        if layout == "vit-mae":
            hf = hf_config or {}
            extra.update(layer_norm_eps=hf.get("layer_norm_eps", 1e-12), hidden_act=hf.get("hidden_act", "gelu"),
                         mask_ratio=hf.get("mask_ratio", 0.75), norm_pix_loss=hf.get("norm_pix_loss", False),
                         loss_on_all_patches=False, noise_sigma=0.0 if sigma is None else sigma)
        else:
            extra.update(noise_sigma=0.25 if sigma is None else sigma)
        model_class = DMAEForPreTraining

    config = DMAEConfig(**arch, **extra)
    config.architectures = [model_class.__name__]
    model = model_class(config)
    check_state_dict(model, renamed, unknown, _SOURCES[layout], official=layout != "vit-mae")
    model.load_state_dict({k: v.float() for k, v in renamed.items()}, strict=True)
    return model.eval()


def processor_for(config: DMAEConfig) -> DMAEImageProcessor:
    """CIFAR-normalised models take 32x32 images as they are; the others ImageNet's resize 256 + crop 224."""
    if list(config.image_mean) == list(CIFAR10_MEAN):
        return DMAEImageProcessor.for_cifar10()
    return DMAEImageProcessor()


def convert(source, output_dir, *, name: str | None = None, push_to_hub: str | None = None, private: bool = False,
            **kwargs):
    """Convert `source` into `output_dir` (model.safetensors, config.json, preprocessor_config.json, README.md) and
    optionally upload that folder to the Hub repository `push_to_hub` (a repo id or a dmae-hf short name).
    Keyword arguments go to `convert_state_dict`. Returns the model."""
    output_dir = Path(output_dir)
    _check_output_dir(output_dir)
    _check_options(**kwargs)
    if push_to_hub:  # before any work: an unreachable Hub fails at once, not after the conversion and 5 retries
        from .reach import require_hub

        require_hub(f"--push-to-hub {push_to_hub}", "Convert without --push-to-hub, and upload the folder later.")
    state, hf_config = load_checkpoint(source)
    model = convert_state_dict(state, hf_config, **kwargs)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    processor_for(model.config).save_pretrained(output_dir)
    repo_id = None
    if push_to_hub:
        repo_id = hub_names.repo_id(push_to_hub) if push_to_hub in hub_names.SHORT_NAMES else push_to_hub
    name = name or (repo_id.split("/")[-1] if repo_id else output_dir.name)
    layout = detect_layout(state)
    provenance = None if name in hub_names.SHORT_NAMES else (
        f"Converted with `dmae convert` from `{Path(source).name}` ({_SOURCES[layout]} checkpoint).")
    card = render_model_card(name, model.config, provenance=provenance, from_official=True)
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    if repo_id:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(output_dir), allow_patterns=_UPLOADED,
                          commit_message=f"Convert {Path(source).name} with dmae-hf")
    return model


__all__ = ["CheckpointError", "load_checkpoint", "torch_load", "check_finite", "detect_layout", "convert_state_dict",
           "convert", "infer_architecture", "rename_official", "rename_vit_mae", "official_name", "OFFICIAL_HEADS",
           "OFFICIAL_DECODER_HEADS"]
