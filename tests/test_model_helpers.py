"""The shared helpers of issue 14 against the code they replaced (kept here as the reference), bit for bit."""

import math

import pytest
import torch
import torch.nn.functional as F

from dmae_hf import DMAEConfig, DMAEForPreTraining, DMAEForSmoothedClassification, DMAEModel
from dmae_hf.modeling_dmae import interpolate_pos_table, noisy_copies
from dmae_hf.smoothing import (
    Certificate,
    _certifies,
    _reachable,
    _stops,
    add_gaussian_noise,
    certify,
    clopper_pearson_lower,
    clopper_pearson_upper,
    radius_from_bound,
)


def tiny(**kwargs):
    return DMAEConfig.from_preset("tiny", num_labels=10, **kwargs)


# ------------------------------------------------------------------------------------ the replaced implementations
def old_encoder_interpolation(pos, patch_size, height, width):
    grid = int(math.sqrt(pos.shape[1] - 1))
    new_h, new_w = height // patch_size, width // patch_size
    if (new_h, new_w) == (grid, grid):
        return pos
    patch_pos = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=(new_h, new_w), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, new_h * new_w, -1)
    return torch.cat([pos[:, :1], patch_pos], dim=1)


def old_decoder_interpolation(pos, num_patches):
    if num_patches == pos.shape[1] - 1:
        return pos
    grid, new = int(math.sqrt(pos.shape[1] - 1)), int(math.sqrt(num_patches))
    patch_pos = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=(new, new), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, new * new, -1)
    return torch.cat([pos[:, :1], patch_pos], dim=1)


def old_pretraining_noise(pixel_values, sigma, pixel_noise=None):
    if pixel_noise is None:
        return add_gaussian_noise(pixel_values, sigma)
    return pixel_values.float() + pixel_noise.float()


def old_finetuning_noise(pixel_values, sigma, m, pixel_noise=None):
    repeated = pixel_values.repeat(m, 1, 1, 1)
    if pixel_noise is None:
        return add_gaussian_noise(repeated, sigma)
    return repeated.float() + pixel_noise.float()


def old_stop(nA, look, n, level, sigma, targets, radius_tolerance, estimate_tolerance):
    lower, upper = clopper_pearson_lower(nA, look, level), clopper_pearson_upper(nA, look, level)
    radius = radius_from_bound(lower, sigma)
    missing = [t for t in targets or [] if not _certifies(lower, sigma, t)]
    return (
        look == n
        or upper < 0.5
        or (targets is not None and (not missing or not _reachable(missing[0], upper, n, level, sigma)))
        or radius_from_bound(clopper_pearson_lower(nA + n - look, n, level), sigma) - radius <= radius_tolerance
        or (estimate_tolerance is not None
            and radius_from_bound(clopper_pearson_lower(round(nA * n / look), n, level), sigma) - radius
            <= estimate_tolerance)
    )


# ---------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_position_interpolation_for_encoder_and_decoder_bit_for_bit(dtype):
    model = DMAEForPreTraining(tiny()).to(dtype)  # 4x4 patch grid of 8-pixel patches
    embeddings, decoder = model.dmae.embeddings, model.decoder
    for height, width in [(32, 32), (48, 48), (16, 16), (32, 48), (24, 40), (8, 64)]:
        new = embeddings.interpolate_pos_encoding(height, width)
        assert torch.equal(new, old_encoder_interpolation(embeddings.position_embeddings, 8, height, width))
        assert new.shape == (1, 1 + (height // 8) * (width // 8), 32) and new.dtype == dtype
    for num_patches in [16, 36, 4, 64, 1, 6, 15, 17]:  # not square: as before, the square below
        new = decoder.interpolate_pos_encoding(num_patches)
        assert torch.equal(new, old_decoder_interpolation(decoder.decoder_pos_embed, num_patches))
    assert interpolate_pos_table(decoder.decoder_pos_embed, 4, 4) is decoder.decoder_pos_embed  # own grid: no copy
    # the helper does resize: a 6x6 table differs from the 4x4 one it came from, CLS row kept
    six = interpolate_pos_table(embeddings.position_embeddings, 6, 6)
    assert torch.equal(six[:, :1], embeddings.position_embeddings[:, :1]) and six.shape[1] == 37


def test_one_noise_injection_for_pretraining_and_finetuning_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=gen)
    for m in (1, 2, 4):
        torch.manual_seed(7)
        new = noisy_copies(x, 0.25, m)
        torch.manual_seed(7)
        assert torch.equal(new, old_finetuning_noise(x, 0.25, m))
        given = torch.randn(m * 3, 3, 32, 32, generator=gen)
        assert torch.equal(noisy_copies(x, 0.25, m, given), old_finetuning_noise(x, 0.25, m, given))
    torch.manual_seed(7)
    new = noisy_copies(x.double(), 0.5)  # float32 out of any float input, as before
    torch.manual_seed(7)
    assert torch.equal(new, old_pretraining_noise(x.double(), 0.5)) and new.dtype == torch.float32
    with pytest.raises(ValueError, match=r"pixel_noise must have shape \(6, 3, 32, 32\) \(2 copies"):
        noisy_copies(x, 0.25, 2, torch.zeros(3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"pixel_noise must have shape \(3, 3, 32, 32\) \(that of pixel_values"):
        noisy_copies(x, 0.25, 1, torch.zeros(3, 3, 16, 16))


def test_forwards_draw_the_same_noise_and_masks_as_before():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    pretrainer = DMAEForPreTraining(tiny()).eval()
    torch.manual_seed(5)
    out = pretrainer(x)
    torch.manual_seed(5)  # the old forward: add_gaussian_noise, then torch.rand for the mask
    noisy = old_pretraining_noise(x, pretrainer.config.noise_sigma)
    mask_noise = torch.rand(2, 16)
    encoded = pretrainer.dmae(noisy, mask_ratio=0.75, mask_noise=mask_noise)
    assert torch.equal(out.mask, encoded.mask)
    assert torch.equal(out.logits, pretrainer.decoder(encoded.last_hidden_state, encoded.ids_restore))

    classifier = DMAEForSmoothedClassification(tiny(num_noise_samples=3)).train()  # no dropout in "tiny"
    labels = torch.tensor([1, 7])
    torch.manual_seed(5)
    logits = classifier(x, labels=labels).logits
    torch.manual_seed(5)
    noisy = old_finetuning_noise(x, classifier.config.smoothing_sigma, 3)
    assert torch.equal(logits, classifier(noisy).logits)  # without labels: classified as given


def test_masking_noise_is_called_mask_noise():
    x = torch.rand(1, 3, 32, 32)
    mask_noise = torch.rand(1, 16)
    model = DMAEForPreTraining(tiny())
    out = model(x, mask_noise=mask_noise, pixel_noise=torch.zeros_like(x))
    assert torch.equal(out.mask[0], (mask_noise.argsort(1).argsort(1) >= 4).float()[0])  # the 4 smallest kept
    # the old name would be swallowed by **kwargs and give a random mask: it is refused, naming the new one
    for call in (lambda: model(x, noise=mask_noise), lambda: DMAEModel(tiny())(x, mask_ratio=0.75, noise=mask_noise)):
        with pytest.raises(TypeError, match="mask_noise="):
            call()
    with pytest.raises(ValueError, match=r"mask_noise\) must have shape \(1, 16\)"):
        model(x, mask_noise=torch.rand(1, 5))


def test_adaptive_stopping_rule_decides_as_the_five_way_expression():
    n, sigma = 4000, 0.5
    looks = [500, 1000, 2000, 4000]
    level = 0.001 / len(looks)
    decisions = []
    for targets in (None, [0.1], [0.25, 1.0], [5.0]):
        for radius_tolerance in (0.0, 0.01, 0.2):
            for estimate_tolerance in (None, 0.0, 0.05):
                for look in looks:
                    for nA in sorted({0, 1, look // 3, look // 2, look // 2 + 30, 3 * look // 4, look - 5, look}):
                        args = (nA, look, n, level, sigma, targets, radius_tolerance, estimate_tolerance)
                        decisions.append(_stops(*args))
                        assert decisions[-1] == old_stop(*args), args
    assert any(decisions) and not all(decisions)  # both outcomes are exercised


def test_certificates_are_built_with_their_elapsed_time():
    def f(batch):  # class 1 wins on a bright image, class 0 else
        return torch.stack([0.5 - batch.mean((1, 2, 3)), batch.mean((1, 2, 3)) - 0.5], 1)

    x = torch.stack([torch.full((3, 4, 4), 0.9), torch.full((3, 4, 4), 0.5)])
    for method in ("cohen", "adaptive"):
        extra = {"first_look": 100} if method == "adaptive" else {}
        results = certify(f, x, sigma=0.25, n0=50, n=400, alpha=0.001, batch_size=64, method=method, **extra)
        assert all(isinstance(r, Certificate) for r in results)
        assert results[0].elapsed > 0 and results[0].elapsed == results[1].elapsed
        assert results[0].prediction == 1 and results[0].radius > 0 and results[0].method == method
        assert list(results[0].to_dict()) == ["prediction", "radius", "pA_lower", "counts", "n0", "n", "alpha",
                                              "sigma", "seed", "elapsed", "method", "num_samples", "sigma_override",
                                              "abstained"]
