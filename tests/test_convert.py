"""The converter: official DMAE and transformers ViTMAE checkpoints -> dmae-hf, checked against an independent
functional re-implementation of the official forward pass written here from the raw tensors (timm/MAE semantics:
fused qkv split by rows, pre-norm blocks, LayerNorm eps 1e-6, exact GELU, argsort masking, norm-pix loss over all
patches against the clean image, global pool + fc_norm + head; noise in [0, 1], then bicubic resize, then
normalisation)."""

import json
import math
import os
import pickle
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dmae_hf import DMAEForPreTraining, DMAEForSmoothedClassification
from dmae_hf.cli import main as cli_main
from dmae_hf.hub.convert import CheckpointError, convert, load_checkpoint

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
TOL = 1e-5


# ------------------------------------------------------------------ official-layout checkpoints with random weights
def sincos_table(dim, grid):
    """MAE's fixed 2-D sin-cos table with a zero CLS row, written independently of dmae_hf."""
    ys, xs = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    freqs = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))

    def half(coord):
        angles = coord.reshape(-1)[:, None] * freqs[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], 1)

    table = np.concatenate([half(xs), half(ys)], 1)  # the first half encodes the column (w) index
    return torch.tensor(np.concatenate([np.zeros((1, dim)), table]), dtype=torch.float32)[None]


def random_blocks(gen, prefix, depth, dim, hidden):
    def w(*shape, scale):
        return torch.randn(*shape, generator=gen) * scale

    sd = {}
    for i in range(depth):
        p = f"{prefix}.{i}."
        sd.update({
            p + "norm1.weight": 1 + w(dim, scale=0.1), p + "norm1.bias": w(dim, scale=0.1),
            p + "attn.qkv.weight": w(3 * dim, dim, scale=dim ** -0.5), p + "attn.qkv.bias": w(3 * dim, scale=0.1),
            p + "attn.proj.weight": w(dim, dim, scale=dim ** -0.5), p + "attn.proj.bias": w(dim, scale=0.1),
            p + "norm2.weight": 1 + w(dim, scale=0.1), p + "norm2.bias": w(dim, scale=0.1),
            p + "mlp.fc1.weight": w(hidden, dim, scale=dim ** -0.5), p + "mlp.fc1.bias": w(hidden, scale=0.1),
            p + "mlp.fc2.weight": w(dim, hidden, scale=hidden ** -0.5), p + "mlp.fc2.bias": w(dim, scale=0.1),
        })
    return sd


def official_checkpoint(kind, dim, depth, patch, image, dec_dim=None, dec_depth=None, classes=10, seed=0):
    """A state dict with the official key names (`models_dmae.py` / `models_vit.py` global pool)."""
    gen = torch.Generator().manual_seed(seed)
    grid = image // patch
    sd = {"cls_token": torch.randn(1, 1, dim, generator=gen) * 0.02,
          "patch_embed.proj.weight": torch.randn(dim, 3, patch, patch, generator=gen) * (3 * patch * patch) ** -0.5,
          "patch_embed.proj.bias": torch.randn(dim, generator=gen) * 0.1}
    sd.update(random_blocks(gen, "blocks", depth, dim, 4 * dim))
    if kind == "pretraining":
        sd["pos_embed"] = sincos_table(dim, grid)
        sd["norm.weight"] = 1 + torch.randn(dim, generator=gen) * 0.1
        sd["norm.bias"] = torch.randn(dim, generator=gen) * 0.1
        sd["decoder_embed.weight"] = torch.randn(dec_dim, dim, generator=gen) * dim ** -0.5
        sd["decoder_embed.bias"] = torch.randn(dec_dim, generator=gen) * 0.1
        sd["mask_token"] = torch.randn(1, 1, dec_dim, generator=gen) * 0.02
        sd["decoder_pos_embed"] = sincos_table(dec_dim, grid)
        sd.update(random_blocks(gen, "decoder_blocks", dec_depth, dec_dim, 4 * dec_dim))
        sd["decoder_norm.weight"] = 1 + torch.randn(dec_dim, generator=gen) * 0.1
        sd["decoder_norm.bias"] = torch.randn(dec_dim, generator=gen) * 0.1
        sd["decoder_pred.weight"] = torch.randn(patch * patch * 3, dec_dim, generator=gen) * dec_dim ** -0.5
        sd["decoder_pred.bias"] = torch.randn(patch * patch * 3, generator=gen) * 0.1
    else:  # fine-tuned: learned position table, no final norm, fc_norm + head
        sd["pos_embed"] = sincos_table(dim, grid) + torch.randn(1, grid * grid + 1, dim, generator=gen) * 0.02
        sd["fc_norm.weight"] = 1 + torch.randn(dim, generator=gen) * 0.1
        sd["fc_norm.bias"] = torch.randn(dim, generator=gen) * 0.1
        sd["head.weight"] = torch.randn(classes, dim, generator=gen) * dim ** -0.5
        sd["head.bias"] = torch.randn(classes, generator=gen) * 0.1
    return sd


# -------------------------------------------------------------------------- the independent reference forward pass
def ln(x, sd, name):
    return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], eps=1e-6)


def linear(x, sd, name):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def block(x, sd, p, heads):
    b, n, d = x.shape
    qkv = linear(ln(x, sd, p + "norm1"), sd, p + "attn.qkv")
    q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(b, n, heads, d // heads).transpose(1, 2) for i in range(3))
    attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    x = x + linear((attn @ v).transpose(1, 2).reshape(b, n, d), sd, p + "attn.proj")
    h = F.gelu(linear(ln(x, sd, p + "norm2"), sd, p + "mlp.fc1"), approximate="none")
    return x + linear(h, sd, p + "mlp.fc2")


def prepare(images, image, norm):
    """[0,1] images (noise already added) -> bicubic resize to `image` -> normalisation."""
    if images.shape[-1] != image:
        images = F.interpolate(images, size=(image, image), mode="bicubic", align_corners=False)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in norm)
    return (images - mean) / std


def embed(x, sd):
    patch = sd["patch_embed.proj.weight"].shape[-1]
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    return tokens.flatten(2).transpose(1, 2) + sd["pos_embed"][:, 1:]


def ref_encoder(sd, x, heads, keep_noise=None, mask_ratio=0.75, final_norm=True):
    tokens = embed(x, sd)
    b, length, d = tokens.shape
    ids_restore = mask = None
    if keep_noise is not None:
        order = torch.argsort(keep_noise, dim=1)
        keep = int(length * (1 - mask_ratio))
        tokens = torch.stack([tokens[i, order[i, :keep]] for i in range(b)])
        ids_restore = torch.argsort(order, dim=1)
        mask = torch.ones(b, length)
        for i in range(b):
            mask[i, order[i, :keep]] = 0
    cls = (sd["cls_token"] + sd["pos_embed"][:, :1]).expand(b, -1, -1)
    tokens = torch.cat([cls, tokens], 1)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        tokens = block(tokens, sd, f"blocks.{i}.", heads)
    return (ln(tokens, sd, "norm") if final_norm else tokens), mask, ids_restore


def ref_pretraining(sd, clean, pixel_noise, mask_noise, heads, dec_heads, norm, image):
    latent, mask, ids_restore = ref_encoder(sd, prepare(clean + pixel_noise, image, norm), heads, mask_noise)
    x = linear(latent, sd, "decoder_embed")
    b, length = ids_restore.shape
    seq = torch.cat([x[:, 1:], sd["mask_token"].expand(b, length + 1 - x.shape[1], -1)], 1)
    seq = torch.stack([seq[i, ids_restore[i]] for i in range(b)])
    x = torch.cat([x[:, :1], seq], 1) + sd["decoder_pos_embed"]
    depth = len({k.split(".")[1] for k in sd if k.startswith("decoder_blocks.")})
    for i in range(depth):
        x = block(x, sd, f"decoder_blocks.{i}.", dec_heads)
    pred = linear(ln(x, sd, "decoder_norm"), sd, "decoder_pred")[:, 1:]
    target = prepare(clean, image, norm)
    p = sd["patch_embed.proj.weight"].shape[-1]
    g = image // p
    target = target.reshape(b, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(b, g * g, p * p * 3)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True, unbiased=True) + 1e-6).sqrt()
    return pred, ((pred - target) ** 2).mean(), mask


def ref_classifier(sd, noisy, heads, norm, image):
    tokens, _, _ = ref_encoder(sd, prepare(noisy, image, norm), heads, final_norm=False)
    return linear(ln(tokens[:, 1:].mean(1), sd, "fc_norm"), sd, "head")


# ------------------------------------------------------------------------------------------------ equivalence tests
@pytest.mark.parametrize("shape", ["tiny", "vit-b"])
def test_pretraining_conversion_matches_the_official_forward(tmp_path, shape):
    if shape == "tiny":  # 32x32 model fed 16x16 images: the noisy image is upsampled inside the model
        dims = dict(dim=32, depth=2, patch=8, image=32, dec_dim=32, dec_depth=1)
        heads, dec_heads, size, extra = 2, 2, 16, dict(num_heads=2, decoder_num_heads=2)
    else:  # ViT-B/16 widths, heads and resolution (decoder 512/16), depth cut to 2 (+1 decoder block) for speed;
        # the head counts come from the official convention (768 -> 12, decoder 512 -> 16)
        dims = dict(dim=768, depth=2, patch=16, image=224, dec_dim=512, dec_depth=1)
        heads, dec_heads, size, extra = 12, 16, 224, {}
    sd = official_checkpoint("pretraining", **dims)
    path = tmp_path / "checkpoint-1099.pth"
    torch.save({"model": sd}, path)
    model = convert(path, tmp_path / "out", **extra)
    assert isinstance(model, DMAEForPreTraining)
    assert model.config.num_attention_heads == heads and model.config.decoder_num_attention_heads == dec_heads
    assert model.config.layer_norm_eps == 1e-6 and model.config.noise_sigma == 0.25

    gen = torch.Generator().manual_seed(1)
    clean = torch.rand(1, 3, size, size, generator=gen)
    pixel_noise = 0.25 * torch.randn(clean.shape, generator=gen)
    length = (dims["image"] // dims["patch"]) ** 2
    mask_noise = torch.rand(1, length, generator=gen)
    with torch.no_grad():
        out = model(clean, mask_noise=mask_noise, pixel_noise=pixel_noise)
        ref_pred, ref_loss, ref_mask = ref_pretraining(sd, clean, pixel_noise, mask_noise, heads, dec_heads,
                                                       IMAGENET, dims["image"])
        features = model.dmae(clean).last_hidden_state
        ref_features, _, _ = ref_encoder(sd, prepare(clean, dims["image"], IMAGENET), heads)
    assert torch.equal(out.mask, ref_mask)
    assert (out.logits - ref_pred).abs().max() <= TOL
    assert abs(out.loss.item() - ref_loss.item()) <= TOL
    assert (features - ref_features).abs().max() <= TOL

    # the written checkpoint reloads to the same model, from safetensors only
    out_dir = tmp_path / "out"
    assert sorted(p.name for p in out_dir.iterdir() if not p.name.endswith(".py")) == [
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json"]
    reloaded = DMAEForPreTraining.from_pretrained(out_dir).eval()
    with torch.no_grad():
        again = reloaded(clean, mask_noise=mask_noise, pixel_noise=pixel_noise)
    assert torch.equal(again.logits, out.logits)
    processor = json.loads((out_dir / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == 224 and processor["resize_shortest_edge"] == 256


@pytest.mark.parametrize("shape", ["tiny", "vit-b"])
def test_classifier_conversion_matches_the_official_forward(tmp_path, shape):
    # CIFAR-10 transfer: 32x32 noisy images, upsampled to the model's resolution, CIFAR normalisation
    if shape == "tiny":
        dims, heads, extra = dict(dim=32, depth=2, patch=8, image=32), 2, dict(num_heads=2)
    else:
        dims, heads, extra = dict(dim=768, depth=2, patch=16, image=224), 12, {}
    sd = official_checkpoint("classifier", classes=10, **dims)
    path = tmp_path / "checkpoint-best.pth"
    torch.save({"model": sd, "epoch": 99}, path)
    model = convert(path, tmp_path / "out", normalization="cifar10", sigma=0.5, **extra)
    assert isinstance(model, DMAEForSmoothedClassification)
    assert model.config.smoothing_sigma == 0.5 and model.config.id2label[3] == "cat"

    gen = torch.Generator().manual_seed(2)
    clean = torch.rand(2, 3, 32, 32, generator=gen)
    noisy = clean + 0.5 * torch.randn(clean.shape, generator=gen)
    with torch.no_grad():
        logits = model(noisy).logits
        base = model.base_classifier(noisy)
        ref = ref_classifier(sd, noisy, heads, CIFAR, dims["image"])
    assert (logits - ref).abs().max() <= TOL
    assert (base - ref).abs().max() <= TOL
    processor = json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())
    assert processor["do_resize"] is False and processor["do_center_crop"] is False


def vit_mae(tmp_path, **overrides):
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                          image_size=32, patch_size=8, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                          decoder_num_attention_heads=4, decoder_intermediate_size=128, norm_pix_loss=True,
                          **overrides)
    torch.manual_seed(0)
    model = ViTMAEForPreTraining(config).eval()
    with torch.no_grad():  # make every parameter non-trivial (biases and norms start at 0 / 1)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("style", ["saved-by-5.x", "in-memory-names", "4.x-hub"])
def test_vit_mae_conversion_matches_transformers(tmp_path, style):
    hf = vit_mae(tmp_path)
    src = tmp_path / "vit-mae"
    hf.save_pretrained(src, save_original_format=style != "in-memory-names")
    keys = set(load_file(src / "model.safetensors"))
    if style == "4.x-hub":  # what facebook/vit-mae-* hold: decoder.decoder_layers.{j}.attention.attention.query...
        sd = {k.replace("decoder.decoder_encoder.layer.", "decoder.decoder_layers."): v
              for k, v in load_file(src / "model.safetensors").items()}
        save_file(sd, src / "model.safetensors")
        keys = set(sd)
    marker = {"saved-by-5.x": "vit.encoder.layer.0.attention.attention.query.weight",
              "in-memory-names": "vit.layers.0.attention.q_proj.weight",
              "4.x-hub": "decoder.decoder_layers.0.attention.attention.query.weight"}[style]
    assert marker in keys

    model = convert(src, tmp_path / "out")  # heads (2 and 4) come from config.json
    assert model.config.decoder_num_attention_heads == 4 and model.config.layer_norm_eps == 1e-12
    gen = torch.Generator().manual_seed(3)
    clean = torch.rand(2, 3, 32, 32, generator=gen)
    mask_noise = torch.rand(2, 16, generator=gen)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    with torch.no_grad():
        ref = hf(pixel_values=(clean - mean) / std, noise=mask_noise)
        out = model(clean, mask_noise=mask_noise, pixel_noise=torch.zeros_like(clean))
    assert torch.equal(out.mask, ref.mask)
    assert (out.logits - ref.logits).abs().max() <= TOL
    assert abs(out.loss.item() - ref.loss.item()) <= TOL  # masked-patch loss, as ViTMAE's


# ------------------------------------------------------------------------------------------------------ bad inputs
def tiny_sd(kind="pretraining"):
    return official_checkpoint(kind, dim=32, depth=2, patch=8, image=32, dec_dim=32, dec_depth=1)


class CodeExecution:
    def __init__(self, func=print):
        self.func = func

    def __reduce__(self):
        return (self.func, ("echo this must never run",))


@pytest.mark.parametrize("func, legacy", [(print, False), (os.system, False), (os.system, True)],
                         ids=["allowed module", "blocked module", "legacy pickle"])
def test_refuses_pickles_that_need_code_execution(tmp_path, capfd, func, legacy):
    path = tmp_path / "evil.pth"
    payload = {"model": tiny_sd(), "hook": CodeExecution(func)}
    if legacy:  # a plain pickle, not torch's zip format (without tensors, which it would pickle by code too)
        path.write_bytes(pickle.dumps({"hook": payload["hook"]}, protocol=2))
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match=rf"needs code execution .*{func.__name__}.*not allowed.*weights_only")\
            as error:
        load_checkpoint(path)
    assert "corrupt" in str(error.value) and "not corrupt" in str(error.value)  # told apart from a broken file
    assert "this must never run" not in capfd.readouterr().out


def test_non_finite_weights_are_refused_and_named(tmp_path):
    sd = tiny_sd("classifier")
    sd["blocks.1.attn.qkv.weight"][3, 0] = float("nan")
    sd["head.bias"][0] = float("inf")
    torch.save({"model": sd}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match=r"2 tensor\(s\) with NaN or Inf values: "
                       r"\['blocks\.1\.attn\.qkv\.weight', 'head\.bias'\]"):
        convert(tmp_path / "nan.pth", tmp_path / "out", preset="tiny", sigma=0.25)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options, message", [
    (dict(sigma=-1.0), r"--sigma must be a number in \[0, 1\] \(the noise std in \[0, 1\] pixel units\), got -1\.0"),
    (dict(sigma=float("nan")), r"--sigma must be a number in \[0, 1\].*got nan"),
    (dict(sigma=25.0), r"--sigma = 25 is larger than 1: .*divide by 255 \(25 / 255 = 0\.09804\)"),  # check_sigma
    (dict(sigma="0.25"), r"--sigma must be a number in \[0, 1\].*got '0\.25'"),
    (dict(num_heads=0), r"--num-heads must be an integer >= 1, got 0"),
    (dict(output="a_file/out"), r"a_file is a file, not a directory"),
])
def test_bad_options_fail_before_any_work(tmp_path, options, message):
    """The source does not even exist: these errors come first, before the checkpoint is read."""
    (tmp_path / "a_file").write_text("not a directory")
    output = tmp_path / options.pop("output", "out")
    with pytest.raises(CheckpointError, match=message):
        convert(tmp_path / "missing.pth", output, **options)
    assert not (tmp_path / "out").exists()


def test_classifier_needs_positive_sigma(tmp_path):
    torch.save({"model": tiny_sd("classifier")}, tmp_path / "cls.pth")
    with pytest.raises(CheckpointError, match=r"pass --sigma > 0 .*got 0\.0"):
        convert(tmp_path / "cls.pth", tmp_path / "out", preset="tiny", sigma=0.0)


def test_official_training_args_are_allowed(tmp_path):
    import argparse

    path = tmp_path / "checkpoint-0.pth"
    torch.save({"model": tiny_sd(), "args": argparse.Namespace(sigma=0.25), "epoch": 0}, path)
    state, _ = load_checkpoint(path)
    assert "blocks.1.mlp.fc2.bias" in state


NOT_A_CHECKPOINT = r"is not a DMAE/MAE checkpoint: neither a torch\.save file .* nor safetensors"
PLAIN_PICKLE = (r"is a plain Python pickle \(protocol {}\), not a checkpoint written by torch\.save, and not a DMAE "
                r"checkpoint: .*weights_only=True\), which cannot load a plain pickle")


@pytest.mark.parametrize("make, message", [
    (lambda good: good[: len(good) // 2], "corrupt or truncated checkpoint"),  # torch's zip format, cut
    (lambda good: b"\x80\x02not a checkpoint" * 50, "corrupt or truncated checkpoint"),  # a broken pickle
    (lambda good: bytes(random.Random(0).getrandbits(8) for _ in range(4096)), NOT_A_CHECKPOINT),  # issue 23
    (lambda good: b"pop" + bytes(random.Random(7).getrandbits(8) for _ in range(100)), NOT_A_CHECKPOINT),
    (lambda good: b"hello, this is text\n", NOT_A_CHECKPOINT),
    (lambda good: b"", r"is empty \(0 bytes\), not a checkpoint"),
    (lambda good: pickle.dumps({"model": {"w": [1.0, 2.0]}}, protocol=5), PLAIN_PICKLE.format(5)),  # issue 23
    (lambda good: pickle.dumps({"w": bytearray(b"12")}, protocol=4), PLAIN_PICKLE.format(4)),
    (lambda good: pickle.dumps({"w": 1}, protocol=2), PLAIN_PICKLE.format(2)),  # not torch's legacy format
], ids=["truncated zip", "broken pickle", "random bytes", "random bytes 2", "text", "empty", "protocol-5 pickle",
        "protocol-4 pickle", "protocol-2 pickle"])
def test_files_that_are_not_checkpoints_are_called_what_they_are(tmp_path, make, message):
    good = tmp_path / "good.pth"
    torch.save({"model": tiny_sd()}, good)
    path = tmp_path / "file.pth"
    path.write_bytes(make(good.read_bytes()))
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert ("corrupt" in str(info.value)) == (message == "corrupt or truncated checkpoint")


def test_corrupt_safetensors_missing_files_and_safetensors_named_pth(tmp_path):
    bad_safetensors = tmp_path / "model.safetensors"
    bad_safetensors.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken")
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors file"):
        load_checkpoint(bad_safetensors)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")
    save_file(tiny_sd(), tmp_path / "weights.pth")  # safetensors whatever the suffix
    assert "blocks.1.mlp.fc2.bias" in load_checkpoint(tmp_path / "weights.pth")[0]


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.update({"blocks.0.attn.extra.weight": torch.zeros(2)}),
     r"unknown keys.*blocks\.0\.attn\.extra\.weight"),
    (lambda sd: sd.pop("blocks.1.mlp.fc2.bias"), r"missing keys.*blocks\.1\.mlp\.fc2\.bias \(dmae\.layers\.1\.mlp"),
    (lambda sd: sd.update({"decoder_pred.bias": torch.zeros(5)}),
     r"mis-shaped keys: decoder_pred\.bias \(decoder\.decoder_pred\.bias\): checkpoint \(5,\) vs model \(192,\)"),
    (lambda sd: sd.pop("decoder_blocks.0.attn.qkv.bias"),
     r"missing keys.*decoder_blocks\.0\.attn\.qkv\.bias \(decoder\.decoder_layers\.0\.attention\.qkv\.bias\)"),
    (lambda sd: sd.update({k.replace("blocks.1.", "blocks.3."): sd.pop(k) for k in list(sd)
                           if k.startswith("blocks.1.")}), r"Blocks \[1, 2\] are missing"),
])
def test_unknown_missing_and_misshaped_keys_are_named(tmp_path, edit, message):
    sd = tiny_sd()
    edit(sd)
    path = tmp_path / "ckpt.pth"
    torch.save(sd, path)  # a raw state dict is accepted too
    with pytest.raises(CheckpointError, match=message):
        convert(path, tmp_path / "out", preset="tiny")


def test_wrong_architecture_and_missing_options_fail(tmp_path):
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}
    torch.save({"model": resnet}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="Not a DMAE/MAE ViT checkpoint"):
        convert(tmp_path / "resnet.pth", tmp_path / "o1")
    torch.save({"model": tiny_sd()}, tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match="pass --num-heads"):
        convert(tmp_path / "tiny.pth", tmp_path / "o2")
    with pytest.raises(CheckpointError, match="hidden_size=32 but preset 'vit-base' has 768"):
        convert(tmp_path / "tiny.pth", tmp_path / "o3", preset="vit-base")
    torch.save({"model": tiny_sd("classifier")}, tmp_path / "cls.pth")
    with pytest.raises(CheckpointError, match="--sigma"):
        convert(tmp_path / "cls.pth", tmp_path / "o4", num_heads=2)
    with pytest.raises(CheckpointError, match="--num-labels 100 does not match the checkpoint's head of 10"):
        convert(tmp_path / "cls.pth", tmp_path / "o5", num_heads=2, sigma=0.25, num_labels=100)
    with_norm = tiny_sd("classifier")
    with_norm.update({"norm.weight": torch.ones(32), "norm.bias": torch.zeros(32)})
    torch.save({"model": with_norm}, tmp_path / "cls_norm.pth")
    with pytest.raises(CheckpointError, match=r"no place for: \['norm\.bias \(dmae\.layernorm\.bias\)'"):
        convert(tmp_path / "cls_norm.pth", tmp_path / "o7", num_heads=2, sigma=0.25)
    probe = tiny_sd("classifier")
    probe.update({"head.1.weight": probe.pop("head.weight"), "head.0.running_mean": torch.zeros(32)})
    torch.save({"model": probe}, tmp_path / "probe.pth")
    with pytest.raises(CheckpointError, match="linear-probe"):
        convert(tmp_path / "probe.pth", tmp_path / "o6", num_heads=2, sigma=0.25)


def test_cli_converts_and_reports_errors(tmp_path, capsys):
    torch.save({"model": tiny_sd("classifier")}, tmp_path / "cls.pth")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class{i}" for i in range(10)))
    out = tmp_path / "out"
    assert cli_main(["convert", str(tmp_path / "cls.pth"), str(out), "--preset", "tiny", "--sigma", "1.0",
                     "--labels", str(labels), "--num-labels", "10", "--name", "my-dmae"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["smoothing_sigma"] == 1.0 and config["id2label"]["9"] == "class9"
    assert config["architectures"] == ["DMAEForSmoothedClassification"]
    assert (out / "README.md").read_text().splitlines()[0] == "---" and "# my-dmae" in (out / "README.md").read_text()
    assert cli_main(["convert", str(tmp_path / "cls.pth"), str(tmp_path / "o2"), "--preset", "tiny"]) == 2
    assert "--sigma" in capsys.readouterr().err
    (tmp_path / "random.pth").write_bytes(bytes(random.Random(1).getrandbits(8) for _ in range(4096)))
    assert cli_main(["convert", str(tmp_path / "random.pth"), str(tmp_path / "o3"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err  # issue 23: was "error: pop from empty list"
    assert err.count("\n") == 1 and "random.pth is not a DMAE/MAE checkpoint" in err, err
    assert not (tmp_path / "o3").exists()
    (tmp_path / "raw.pth").write_bytes(pickle.dumps({"model": {"w": [1.0]}}, protocol=5))
    assert cli_main(["convert", str(tmp_path / "raw.pth"), str(tmp_path / "o3"), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err  # issue 23: was "corrupt or truncated", after torch's protocol warning
    assert err.count("\n") == 1 and "raw.pth is a plain Python pickle (protocol 5)" in err, err
    assert cli_main(["convert", str(tmp_path / "cls.pth"), str(tmp_path / "o4"), "--sigma", "64"]) == 2
    assert "--sigma = 64 is larger than 1" in capsys.readouterr().err and not (tmp_path / "o4").exists()
