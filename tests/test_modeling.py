"""The models: config, the three models, the processor, registration and both loading routes."""

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)

import dmae_hf  # noqa: F401  (registers the Auto classes)
from dmae_hf import DMAEConfig, DMAEForPreTraining, DMAEForSmoothedClassification, DMAEImageProcessor, DMAEModel
from dmae_hf.modeling_dmae import get_2d_sincos_pos_embed


def tiny(**kwargs):
    return DMAEConfig.from_preset("tiny", num_labels=10, **kwargs)


def count(model_cls, preset, **kwargs):
    with torch.device("meta"):
        model = model_cls(DMAEConfig.from_preset(preset, **kwargs))
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_the_paper():
    assert count(DMAEForSmoothedClassification, "vit-base", num_labels=1000) == 86_567_656
    assert count(DMAEForSmoothedClassification, "vit-large", num_labels=1000) == 304_326_632
    assert count(DMAEForPreTraining, "vit-base") == 111_907_840
    assert count(DMAEForPreTraining, "vit-large") == 329_541_888  # 1.23 GB official DMAE-L checkpoint


def test_presets_and_config_validation():
    assert DMAEConfig.from_preset("vit-huge").patch_size == 14
    assert DMAEConfig().layer_norm_eps == 1e-6 and DMAEConfig().qkv_bias and DMAEConfig().norm_pix_loss
    with pytest.raises(ValueError, match="Unknown DMAE preset"):
        DMAEConfig.from_preset("vit-small")
    for kwargs, message in [
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(mask_ratio=-0.1), "mask_ratio"),
        (dict(noise_sigma=-0.25), "noise_sigma"),
        (dict(smoothing_sigma=-1), "smoothing_sigma"),
        (dict(hidden_size=100), "multiple of num_attention_heads"),
        (dict(pooling="max"), "pooling"),
        (dict(image_mean=[0.5, 0.5]), "image_mean"),
    ]:
        with pytest.raises(ValueError, match=message):
            DMAEConfig(**kwargs)


def test_sincos_table_is_mae_s():
    table = get_2d_sincos_pos_embed(8, 2)
    assert table.shape == (1, 5, 8)
    assert torch.all(table[0, 0] == 0)  # CLS row
    # Patch (row 1, col 0) = index 2: the first half encodes the column (w goes first), the second the row.
    omega = 1.0 / 10000 ** (np.arange(2) / 2.0)
    expected = np.concatenate([np.sin(0 * omega), np.cos(0 * omega), np.sin(1 * omega), np.cos(1 * omega)])
    torch.testing.assert_close(table[0, 3], torch.tensor(expected, dtype=torch.float32))


def test_mae_initialisation():
    model = DMAEForPreTraining(tiny())
    torch.testing.assert_close(
        model.dmae.embeddings.position_embeddings, get_2d_sincos_pos_embed(32, 4), rtol=0, atol=0
    )
    assert not model.dmae.embeddings.position_embeddings.requires_grad
    assert not model.decoder.decoder_pos_embed.requires_grad
    fc1 = model.dmae.layers[0].mlp.fc1
    bound = math.sqrt(6 / (fc1.in_features + fc1.out_features))
    assert fc1.weight.abs().max() <= bound and fc1.weight.abs().max() > 0.8 * bound  # xavier-uniform
    assert torch.all(fc1.bias == 0)
    assert 0.005 < model.dmae.embeddings.cls_token.std() < 0.05
    classifier = DMAEForSmoothedClassification(tiny())
    assert classifier.dmae.embeddings.position_embeddings.requires_grad  # learned when fine-tuning
    assert classifier.classifier.weight.std() < 1e-4  # MAE head init, trunc_normal(std=2e-5)


def reference_pretraining_loss(model, clean, pixel_noise, mask_noise):
    """The paper's formula computed independently: encoder on the noisy image, target = clean, MSE over ALL patches
    of the per-patch standardised target."""
    config = model.config
    mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std).view(1, 3, 1, 1)
    p = config.patch_size
    n, c, h, w = clean.shape
    target = ((clean - mean) / std).reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    target = target.reshape(n, -1, p * p * c)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True, unbiased=True) + 1e-6).sqrt()
    out = model(clean, mask_noise=mask_noise, pixel_noise=pixel_noise)
    return ((out.logits - target) ** 2).mean(), out


def test_pretraining_loss_matches_the_paper_and_encoder_sees_len_keep_tokens():
    torch.manual_seed(0)
    model = DMAEForPreTraining(tiny()).eval()
    clean = torch.rand(3, 3, 32, 32)
    pixel_noise = 0.25 * torch.randn_like(clean)
    mask_noise = torch.rand(3, 16)
    seen = []
    model.dmae.layers[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    expected, out = reference_pretraining_loss(model, clean, pixel_noise, mask_noise)
    torch.testing.assert_close(out.loss, expected, rtol=1e-6, atol=1e-7)
    assert seen == [1 + int(16 * (1 - 0.75))]  # CLS + 4 visible patches
    assert out.mask.sum(1).tolist() == [12.0, 12.0, 12.0]
    # the kept patches are the ones with the smallest masking noise
    kept = mask_noise.argsort(1)[:, :4]
    assert torch.all(out.mask.gather(1, kept) == 0)
    # the encoder saw the noisy image, not the clean one: other noise, other loss
    other, _ = reference_pretraining_loss(model, clean, torch.zeros_like(clean), mask_noise)
    assert not torch.isclose(other, expected)
    # same noise and mask -> the same forward pass exactly
    again = model(clean, mask_noise=mask_noise, pixel_noise=pixel_noise)
    assert torch.equal(again.logits, out.logits)


def test_mae_loss_option_averages_masked_patches_only():
    model = DMAEForPreTraining(tiny(loss_on_all_patches=False, norm_pix_loss=False)).eval()
    clean, mask_noise = torch.rand(2, 3, 32, 32), torch.rand(2, 16)
    out = model(clean, mask_noise=mask_noise, pixel_noise=torch.zeros_like(clean))
    mean = torch.tensor(model.config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(model.config.image_std).view(1, 3, 1, 1)
    target = model.patchify((clean - mean) / std)
    per_patch = ((out.logits - target) ** 2).mean(-1)
    torch.testing.assert_close(out.loss, (per_patch * out.mask).sum() / out.mask.sum())


def test_patchify_unpatchify_round_trip():
    model = DMAEForPreTraining(tiny())
    images = torch.rand(2, 3, 32, 32)
    patches = model.patchify(images)
    assert patches.shape == (2, 16, 8 * 8 * 3)
    torch.testing.assert_close(patches[0, 1, :3], images[0, :, 0, 8])  # channel-last inside a patch
    assert torch.equal(model.unpatchify(patches), images)


def test_finetuning_loss_matches_ce_plus_consistency():
    torch.manual_seed(0)
    config = tiny(num_noise_samples=3, consistency_lambda=2.0, consistency_eta=0.5, label_smoothing=0.1)
    model = DMAEForSmoothedClassification(config)
    model.classifier.weight.data.normal_(0, 0.5)  # non-trivial predictions
    model.train()
    for module in model.modules():  # keep the forward deterministic (no dropout/drop-path in the tiny preset anyway)
        module.training = True
    x = torch.rand(4, 3, 32, 32)
    labels = torch.tensor([0, 3, 9, 3])
    noise = 0.25 * torch.randn(12, 3, 32, 32)
    out = model(x, labels=labels, pixel_noise=noise)

    model.eval()
    logits = model(x.repeat(3, 1, 1, 1) + noise).logits
    torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-6)
    ce = F.cross_entropy(logits, labels.repeat(3), label_smoothing=0.1)
    probs = logits.softmax(-1).reshape(3, 4, 10)
    p_bar = probs.mean(0)
    kl = sum((p_bar * (p_bar.log() - probs[i].log())).sum(-1) for i in range(3)) / 3
    entropy = -(p_bar * p_bar.log()).sum(-1)
    expected = ce + 2.0 * kl.mean() + 0.5 * entropy.mean()
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)

    # soft labels (mixup) give the same loss as the equivalent hard labels
    model.train()
    soft = F.one_hot(labels, 10).float()
    out_soft = model(x, labels=soft, pixel_noise=noise)
    torch.testing.assert_close(out_soft.loss, out.loss, rtol=1e-5, atol=1e-6)


def test_eval_mode_classifies_the_input_as_given():
    model = DMAEForSmoothedClassification(tiny()).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(x).logits, model(x).logits)  # no noise added in eval mode
    assert torch.equal(model(x).logits, model.base_classifier(x))


def test_round_trip_through_auto_classes_in_safetensors(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    classifier = DMAEForSmoothedClassification(tiny()).eval()
    classifier.save_pretrained(tmp_path / "cls")
    DMAEImageProcessor.for_cifar10().save_pretrained(tmp_path / "cls")
    assert (tmp_path / "cls" / "model.safetensors").exists()
    assert not list((tmp_path / "cls").glob("*.bin"))
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "cls")
    assert type(loaded) is DMAEForSmoothedClassification
    assert torch.equal(loaded(x).logits, classifier(x).logits)
    assert type(AutoConfig.from_pretrained(tmp_path / "cls")) is DMAEConfig
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "cls")) is DMAEImageProcessor

    pretrain = DMAEForPreTraining(tiny()).eval()
    pretrain.save_pretrained(tmp_path / "pt")
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path / "pt")
    noise = torch.rand(2, 16)
    pixel_noise = torch.randn_like(x) * 0.25
    assert torch.equal(loaded(x, mask_noise=noise, pixel_noise=pixel_noise).logits,
                       pretrain(x, mask_noise=noise, pixel_noise=pixel_noise).logits)
    encoder = AutoModel.from_pretrained(tmp_path / "pt")
    assert type(encoder) is DMAEModel
    assert torch.equal(encoder(x).last_hidden_state, pretrain.dmae(x).last_hidden_state)
    # a classifier initialised from the pre-trained encoder keeps its weights
    from_pretrained = DMAEForSmoothedClassification.from_pretrained(tmp_path / "pt", num_labels=10)
    assert torch.equal(from_pretrained.dmae.layers[0].attention.qkv.weight,
                       pretrain.dmae.layers[0].attention.qkv.weight)


def test_trust_remote_code_route_without_the_package(tmp_path):
    torch.manual_seed(0)
    model = DMAEForSmoothedClassification(tiny()).eval()
    model.save_pretrained(tmp_path / "ckpt")
    DMAEImageProcessor.for_cifar10().save_pretrained(tmp_path / "ckpt")
    auto_map = json.loads((tmp_path / "ckpt" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "modeling_dmae.DMAEForSmoothedClassification"
    x = torch.rand(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    expected = model(x).logits
    script = textwrap.dedent(f"""
        import sys
        sys.modules["dmae_hf"] = None  # the package cannot be imported in this process
        import torch
        from transformers import AutoModelForImageClassification, AutoImageProcessor
        model = AutoModelForImageClassification.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        processor = AutoImageProcessor.from_pretrained({str(tmp_path / 'ckpt')!r}, trust_remote_code=True)
        assert type(processor).__name__ == "DMAEImageProcessor"
        torch.save(model.eval()(torch.load({str(tmp_path / 'x.pt')!r})).logits, {str(tmp_path / 'out.pt')!r})
    """)
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env, timeout=300)
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def test_eager_and_sdpa_agree():
    torch.manual_seed(0)
    model = DMAEForSmoothedClassification(tiny()).eval()
    model.classifier.weight.data.normal_()
    x = torch.rand(3, 3, 32, 32)
    assert model.config._attn_implementation == "sdpa"
    sdpa = model(x).logits
    model.set_attn_implementation("eager")
    eager = model(x).logits
    torch.testing.assert_close(sdpa, eager, rtol=0, atol=1e-5)
    out = model(x, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 2, 17, 17)
    assert len(out.hidden_states) == 3


def test_small_input_is_resized_after_the_noise():
    """A 32x32 image into a 64x64 model: noise at 32x32, then bicubic resize, then normalisation."""
    config = tiny(image_size=64)
    model = DMAEForPreTraining(config).eval()
    captured = []
    model.dmae.embeddings.patch_embeddings.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    clean = torch.rand(2, 3, 32, 32)
    pixel_noise = 0.5 * torch.randn_like(clean)
    model(clean, mask_noise=torch.rand(2, 64), pixel_noise=pixel_noise)
    mean = torch.tensor(config.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(config.image_std).view(1, 3, 1, 1)
    resized = F.interpolate(clean + pixel_noise, size=(64, 64), mode="bicubic", align_corners=False)
    torch.testing.assert_close(captured[0], (resized - mean) / std)
    # The classifier resizes too, so a certificate is in the 32x32 input's own pixel space.
    classifier = DMAEForSmoothedClassification(config).eval()
    assert classifier(clean).logits.shape == (2, 10)


def test_interpolate_pos_encoding_and_gradient_checkpointing():
    model = DMAEForSmoothedClassification(tiny()).eval()
    x = torch.rand(1, 3, 48, 48)
    out = model(x, interpolate_pos_encoding=True, output_hidden_states=True)
    assert out.hidden_states[0].shape[1] == 1 + 36  # a 6x6 patch grid with an interpolated position table
    out = model(x, output_hidden_states=True)
    assert out.hidden_states[0].shape[1] == 1 + 16  # resized to the native 32x32 instead
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model.dmae.embeddings(x)

    model.activation_checkpointing_enable()
    model.train()
    out = model(torch.rand(2, 3, 32, 32), labels=torch.tensor([1, 2]))
    out.loss.backward()
    assert model.dmae.layers[0].gradient_checkpointing
    assert model.dmae.layers[0].attention.qkv.weight.grad is not None


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda: torch.rand(2, 1, 32, 32), "channels"),
        (lambda: torch.rand(3, 32, 32), "rank 3"),
        (lambda: torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (lambda: torch.full((1, 3, 32, 32), float("inf")), "NaN or Inf"),
        (lambda: torch.rand(1, 3, 32, 32) * 255, "pixel space"),
        (lambda: torch.randint(0, 255, (1, 3, 32, 32)), "floating-point"),
    ],
)
def test_bad_input_raises_clear_value_errors(make_input, message):
    model = DMAEForPreTraining(tiny())
    with pytest.raises(ValueError, match=message):
        model(make_input())


def test_bad_arguments_raise_value_errors():
    model = DMAEForPreTraining(tiny())
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="mask_ratio"):
        model(x, mask_ratio=1.0)
    with pytest.raises(ValueError, match="pixel_noise"):
        model(x, pixel_noise=torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="Masking noise"):
        model(x, mask_noise=torch.rand(1, 5))
    classifier = DMAEForSmoothedClassification(tiny()).train()
    with pytest.raises(ValueError, match="Labels must be in"):
        classifier(x, labels=torch.tensor([10]))
    with pytest.raises(ValueError, match="Soft labels"):
        classifier(x, labels=torch.rand(1, 3))


def test_image_processor_modes_and_errors(tmp_path):
    from PIL import Image

    processor = DMAEImageProcessor()
    photo = Image.new("RGB", (512, 384), (255, 0, 0))
    pixel_values = processor(photo).pixel_values
    assert pixel_values.shape == (1, 3, 224, 224) and pixel_values.dtype == torch.float32
    assert torch.allclose(pixel_values[0, 0], torch.ones(224, 224)) and pixel_values[0, 1].max() == 0
    for mode in ["L", "RGBA", "CMYK", "P", "I;16", "LA"]:
        assert processor(Image.new(mode, (300, 260))).pixel_values.shape == (1, 3, 224, 224)
    sixteen_bit = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    assert DMAEImageProcessor.for_cifar10()(sixteen_bit).pixel_values.max() == 1.0
    cifar = DMAEImageProcessor.for_cifar10()
    mixed = [np.zeros((32, 32, 3), np.uint8), np.ones((3, 32, 32), np.float32)]
    assert cifar(mixed).pixel_values.shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="shape"):
        cifar(np.zeros((32, 32, 5), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cifar(np.full((32, 32, 3), 2.0, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        cifar(np.full((32, 32, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="Unsupported image type"):
        cifar("not an image")
    with pytest.raises(ValueError, match="different sizes"):
        cifar([np.zeros((32, 32, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)])
    processor.save_pretrained(tmp_path)
    assert DMAEImageProcessor.from_pretrained(tmp_path).crop_size == 224


def test_real_imagenet_photo_through_processor_and_model(data_dir):
    import datasets

    row = next(iter(datasets.load_dataset(str(data_dir / "imagenet-sample"), split="validation", streaming=True)))
    pixel_values = DMAEImageProcessor()(row["image"]).pixel_values
    assert pixel_values.shape == (1, 3, 224, 224) and 0 <= pixel_values.min() and pixel_values.max() <= 1
    config = DMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_labels=1000,
                        decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2)
    out = DMAEForPreTraining(config).eval()(pixel_values)
    assert out.logits.shape == (1, 196, 768) and torch.isfinite(out.loss)
