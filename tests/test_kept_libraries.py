"""Each place where a library could replace our code: the replacement checked for identical results, or the reason
it is not used shown by a test (issue 14)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from dmae_hf.certification.analysis import confidence_interval
from dmae_hf.certification.dataset import image_seed
from dmae_hf.smoothing import clopper_pearson_lower, clopper_pearson_upper, mix_seed
from dmae_hf.training.augment import MixupCutmix

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------- Clopper-Pearson: scipy binomtest
def _pairs():
    edges = [(0, 1), (1, 1), (0, 2), (1, 2), (2, 2), (0, 5), (5, 5), (0, 100_000), (1, 100_000),
             (99_999, 100_000), (100_000, 100_000)]
    rng = np.random.default_rng(0)
    for n in (3, 7, 10, 20, 50, 100, 500, 1000, 10_000, 100_000):
        edges += [(int(k), n) for k in np.unique(rng.integers(0, n + 1, size=12))]
    return edges


@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_interval_equals_scipy_binomtest_exact_to_1e12(confidence):
    pairs = _pairs()
    assert len(pairs) > 100
    for k, n in pairs:
        lo, hi = confidence_interval(k, n, confidence)
        ref = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
        assert abs(lo - ref.low) <= 1e-12 and abs(hi - ref.high) <= 1e-12, (k, n, lo, ref.low, hi, ref.high)
        assert (lo == 0.0) == (k == 0) and (hi == 1.0) == (k == n), (k, n)  # exact ends, as scipy's
    assert confidence_interval(1, 1) == pytest.approx((0.025, 1.0), abs=1e-15)  # n = 1: p^1 = 0.025


def test_interval_is_the_certifiers_bound():
    """One Clopper-Pearson bound: the analysis' interval is `dmae_hf.smoothing`'s one-sided bounds, bit for bit."""
    tail = (1 - 0.95) / 2
    for k, n in _pairs():
        assert confidence_interval(k, n) == (clopper_pearson_lower(k, n, tail), clopper_pearson_upper(k, n, tail))


# ------------------------------------------------------------------------------------ mixup / cutmix: kornia V2
def _kornia(name, **kwargs):
    import kornia.augmentation as K

    return getattr(K, name)(data_keys=["input", "class"], **kwargs)


def test_kornia_mixup_cannot_reproduce_timm_mixup():
    images, labels = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    torch.manual_seed(1)
    ours, targets = MixupCutmix(6, mixup_alpha=0.8, cutmix_alpha=0.0)(images, labels)
    lam = targets[0, 0].item()
    assert torch.allclose(targets, lam * torch.eye(6) + (1 - lam) * torch.eye(6).flip(0))  # batch lambda, flip pair
    torch.manual_seed(1)
    theirs, rows = _kornia("RandomMixUpV2")(images, labels)
    assert rows.shape == (6, 3)  # (label, paired label, lambda), not soft targets
    assert not torch.allclose(ours, theirs)  # same random state, other images
    assert len(set(rows[:, 2].tolist())) > 1  # lambda per image, not per batch
    assert not torch.equal(rows[:, 1].long(), labels.flip(0))  # random pairs, not the flipped batch
    torch.manual_seed(1)
    _, rows = _kornia("RandomMixUpV2", same_on_batch=True)(images, labels)
    assert len(set(rows[:, 2].tolist())) == 1 and not math.isclose(rows[0, 2].item(), 1 - lam, abs_tol=1e-3)


def test_kornia_cutmix_cannot_reproduce_timm_cutmix():
    images, labels = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.arange(6)
    torch.manual_seed(3)
    ours, _targets = MixupCutmix(6, mixup_alpha=0.0, cutmix_alpha=1.0)(images, labels)
    torch.manual_seed(3)
    cutmix = _kornia("RandomCutMixV2", beta=1.0, same_on_batch=True)
    theirs, rows = cutmix(images, labels)
    assert rows.shape == (1, 6, 3)  # (label, paired label, lambda) per mix, not soft targets
    assert not torch.equal(ours, theirs)
    assert not torch.equal(cutmix._params["mix_pairs"][0], torch.arange(6).flip(0))  # random pairs


# ----------------------------------------------------------------------- seed mixer: SplitMix64, not SeedSequence
def test_mix_seed_is_splitmix64_and_image_seeds_are_unchanged():
    assert mix_seed(0) == 0xE220A8397B1DCDAF  # SplitMix64's first output from state 0
    # values of the mixer as every existing certificate and log was drawn with (pinned before making it public)
    assert image_seed(0, 7) == mix_seed(0, 7) == 7259628554680249319
    assert mix_seed(123, 1, 2) == 1177796814569802283 and mix_seed(2**64 - 1, 5) == 3846658174030194800
    # numpy's SeedSequence mixes differently: replacing the mixer would change every certificate
    assert int(np.random.SeedSequence([0, 7]).generate_state(1, np.uint64)[0]) != image_seed(0, 7)
