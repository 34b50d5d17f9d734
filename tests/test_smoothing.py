"""Functional tests of `dmae_hf.smoothing`: statistics helpers, reproducibility, batching, validation, autocast."""

import json

import pytest
import torch
from scipy.stats import binom

from dmae_hf import DMAEConfig, smoothing
from dmae_hf.modeling_dmae import DMAEForSmoothedClassification
from dmae_hf.smoothing import Certificate, Prediction, certify, clopper_pearson_lower, clopper_pearson_upper, predict


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return DMAEForSmoothedClassification(DMAEConfig.from_preset("tiny", num_labels=10)).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


class Recorder(torch.nn.Module):
    """Base classifier voting by the sign of the mean pixel minus 0.5 (2 classes); records its inputs."""

    def __init__(self, threshold=0.5):
        super().__init__()
        self.threshold, self.inputs = threshold, []

    def forward(self, z):
        self.inputs.append(z.clone())
        t = z.flatten(1).mean(1) - self.threshold
        return torch.stack([-t, t], dim=1)


# --------------------------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("k,n", [(1, 10), (7, 10), (60, 100), (999, 1000)])
def test_clopper_pearson_bounds_are_exact_tail_inversions(k, n):
    alpha = 0.01
    lo, hi = clopper_pearson_lower(k, n, alpha), clopper_pearson_upper(k, n, alpha)
    assert binom.sf(k - 1, n, lo) == pytest.approx(alpha, rel=1e-6)  # P(Bin(n, lo) >= k) = alpha
    assert binom.cdf(k, n, hi) == pytest.approx(alpha, rel=1e-6)  # P(Bin(n, hi) <= k) = alpha
    assert lo < k / n < hi
    assert clopper_pearson_lower(0, n, alpha) == 0.0 and clopper_pearson_upper(n, n, alpha) == 1.0


def test_maximal_radius_matches_cohen_table():
    """nA = n: PhiInv(pA_lower) = 3.199 at n = 1e4 and 3.811 at n = 1e5 (alpha = 0.001)."""
    radius = smoothing.radius_from_bound
    assert radius(clopper_pearson_lower(10_000, 10_000, 0.001), 1.0) == pytest.approx(3.199, abs=1e-3)
    assert radius(clopper_pearson_lower(100_000, 100_000, 0.001), 1.0) == pytest.approx(3.811, abs=1e-3)


def test_look_schedule():
    assert smoothing.look_schedule(100_000, 1000) == [1000, 2000, 4000, 8000, 16000, 32000, 64000, 100_000]
    assert smoothing.look_schedule(500, 1000) == [500]
    assert smoothing.look_schedule(1000, 1000) == [1000]


# ----------------------------------------------------------------------------------------------------- reproducibility
def test_counts_do_not_depend_on_batch_size(tiny, images):
    kw = dict(n0=20, n=600, seed=3)  # 600 = two full noise blocks and a partial one
    small = certify(tiny.base_classifier, images, 0.25, batch_size=7, **kw)
    large = certify(tiny.base_classifier, images, 0.25, batch_size=1000, **kw)
    assert [c.counts for c in small] == [c.counts for c in large]
    assert [c.radius for c in small] == [c.radius for c in large]
    p7 = predict(tiny.base_classifier, images[0], 0.25, n=300, batch_size=7)
    p1000 = predict(tiny.base_classifier, images[0], 0.25, n=300, batch_size=1000)
    assert p7.counts == p1000.counts and p7.pvalue == p1000.pvalue


def test_noisy_samples_are_bitwise_identical_across_batch_sizes():
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    seen = {}
    for batch_size in [7, 256, 300, 1000]:
        f = Recorder()
        certify(f, x, 0.3, n0=20, n=700, batch_size=batch_size, method="adaptive", first_look=100)
        seen[batch_size] = torch.cat(f.inputs)
    assert all(torch.equal(seen[7], other) for other in seen.values())
    assert seen[7].shape[0] == 2 * 720


def test_batch_equals_one_image_at_a_time(tiny, images):
    batch = certify(tiny.base_classifier, images, 0.5, n0=10, n=300, batch_size=64)
    alone = [certify(tiny.base_classifier, image, 0.5, n0=10, n=300, batch_size=64) for image in images]
    assert [c.to_dict() | {"elapsed": 0} for c in batch] == [c.to_dict() | {"elapsed": 0} for c in alone]
    reversed_batch = certify(tiny.base_classifier, images.flip(0), 0.5, n0=10, n=300, batch_size=64)
    assert [c.counts for c in reversed_batch] == [c.counts for c in alone[::-1]]
    preds = predict(tiny.base_classifier, images, 0.5, n=200)
    assert [p.counts for p in preds] == [predict(tiny.base_classifier, im, 0.5, n=200).counts for im in images]


def test_seed_changes_counts_and_stages_use_disjoint_noise():
    f = Recorder()
    x = torch.full((1, 4, 4), 0.5)
    certify(f, x, 0.3, n0=5, n=20, seed=0)
    selection, estimation = f.inputs
    assert not torch.equal(selection[:5], estimation[:5])
    assert predict(f, x, 0.3, n=50, seed=0).counts != predict(f, x, 0.3, n=50, seed=1).counts


# ----------------------------------------------------------------------------------------------------------- sampling
def test_noise_is_float32_gaussian_in_pixel_space_and_batches_are_packed():
    f = Recorder()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    certify(f, x, 0.3, n0=10, n=1000, batch_size=300)
    sizes = [z.shape[0] for z in f.inputs]
    assert sizes[0] == 40  # the 4 images' selection samples share one forward pass
    assert sum(sizes) == 4 * 1010 and max(sizes) <= 300
    assert all(z.dtype == torch.float32 for z in f.inputs)
    estimation = torch.cat(f.inputs[1:])[:1000] - x[0].float()  # image 0's estimation samples come first
    assert estimation.mean().abs() < 0.01 and estimation.std().item() == pytest.approx(0.3, rel=0.01)


def test_autocast_bf16_runs_classifier_in_autocast_on_float32_noise(tiny, images):
    seen = []

    def f(z):
        seen.append((z.dtype, torch.is_autocast_enabled("cpu")))
        return tiny.base_classifier(z)

    cert = certify(f, images[0], 0.25, n0=10, n=200, autocast_dtype=torch.bfloat16)
    assert seen and all(s == (torch.float32, True) for s in seen)
    assert isinstance(cert, Certificate) and sum(cert.counts) == 200
    assert predict(tiny.base_classifier, images[0], 0.25, n=100, autocast_dtype=torch.bfloat16).n == 100


def test_model_methods_delegate_with_config_sigma(tiny, images):
    cert = tiny.certify(images[0], n0=10, n=100)
    direct = certify(tiny.base_classifier, images[0], tiny.config.smoothing_sigma, n0=10, n=100)
    assert cert.counts == direct.counts and cert.sigma == tiny.config.smoothing_sigma
    assert isinstance(tiny.predict(images[:2], n=50), list)


# -------------------------------------------------------------------------------------------------------- abstention
def test_abstention_is_explicit():
    f = Recorder()  # x on the decision boundary: pA = 1/2 for both classes
    x = torch.full((1, 4, 4), 0.5)
    cert = certify(f, x, 0.5, n0=10, n=200)
    assert cert.prediction is None and cert.abstained and cert.radius == 0.0 and cert.pA_lower < 0.5
    d = json.loads(json.dumps(cert.to_dict()))
    assert d["prediction"] is None and d["abstained"] is True
    pred = predict(f, x, 0.5, n=200)
    assert isinstance(pred, Prediction) and pred.prediction is None and pred.pvalue > 0.001


def test_confident_image_is_certified_with_cohen_radius():
    f = Recorder(threshold=0.2)  # far from the boundary: every vote is class 1
    cert = certify(f, torch.full((1, 4, 4), 0.6), 0.25, n0=10, n=1000, alpha=0.001)
    assert cert.prediction == 1 and cert.counts == [0, 1000] and cert.num_samples == 1010
    # the Clopper-Pearson bound at k = n is alpha^(1/n)
    assert cert.radius == pytest.approx(0.25 * smoothing.norm.ppf(0.001 ** (1 / 1000)))


# ---------------------------------------------------------------------------------------------------------- adaptive
def test_adaptive_with_a_single_look_is_cohen(tiny, images):
    a = certify(tiny.base_classifier, images, 0.25, n0=10, n=500, method="adaptive", first_look=1000)
    c = certify(tiny.base_classifier, images, 0.25, n0=10, n=500)
    assert [(x.counts, x.radius, x.prediction) for x in a] == [(x.counts, x.radius, x.prediction) for x in c]
    assert all(x.method == "adaptive" and x.num_samples == 510 for x in a)


def test_adaptive_stops_early_and_draws_fewer_samples():
    x = torch.full((1, 4, 4), 0.6)
    sure = certify(Recorder(0.2), x, 0.25, n0=10, n=100_000, method="adaptive", target_radius=0.5)
    assert sure.prediction == 1 and sure.radius >= 0.5 and sure.num_samples == 1010

    def quarters(z):  # four classes of probability 1/4 each: pA = 1/4 whatever the selection guess
        u = torch.special.ndtr((z.flatten(1)[:, 0] - 0.6) / 0.25)
        return torch.nn.functional.one_hot((4 * u).long().clamp(max=3), 4).float()

    hopeless = certify(quarters, x, 0.25, n0=10, n=100_000, method="adaptive")
    assert hopeless.abstained and hopeless.num_samples == 1010 and max(hopeless.counts) < 500
    flat = certify(Recorder(0.2), x, 0.25, n0=10, n=4000, method="adaptive", first_look=1000, radius_tolerance=1.0)
    assert flat.num_samples == 1010  # no further sample could add 1.0 to the radius
    full = certify(Recorder(0.2), x, 0.25, n0=10, n=4000, method="adaptive", first_look=1000)
    assert full.num_samples == 4010 and full.pA_lower == clopper_pearson_lower(4000, 4000, 0.001 / 3)


def test_adaptive_targets_stop_when_the_next_radius_is_out_of_reach():
    """pA = 0.7 exactly (sigma 0.25): the true radius is 0.25 * PhiInv(0.7) = 0.131, so 0.1 can be certified and
    0.25 or 0.5 never; the sampler must stop as soon as the next target is out of reach, not spend all of n."""
    x = torch.full((1, 4, 4), 0.6)

    def seventy(z):  # class 1 when u = Phi(eps_0 / sigma) < 0.7, u uniform: P(class 1) = 0.7
        u = torch.special.ndtr((z.flatten(1)[:, 0] - 0.6) / 0.25)
        return torch.nn.functional.one_hot((u < 0.7).long(), 2).float()

    far = certify(seventy, x, 0.25, n0=10, n=64_000, method="adaptive", target_radius=[0.25, 0.5])
    assert far.prediction == 1 and far.num_samples == 1010  # even the upper bound of pA cannot give 0.25
    near = certify(seventy, x, 0.25, n0=10, n=64_000, method="adaptive", target_radius=[0.1, 0.5])
    assert near.prediction == 1 and near.radius >= 0.1 and 1010 < near.num_samples <= 8010
    fixed = certify(seventy, x, 0.25, n0=10, n=64_000)
    assert 0.1 <= fixed.radius < 0.131 and fixed.num_samples == 64_010


# --------------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "change,match",
    [
        (dict(x=torch.full((1, 4, 4), float("nan"))), "NaN"),
        (dict(x=torch.full((1, 4, 4), 255.0)), r"\[0, 1\]"),
        (dict(x=torch.full((1, 4, 4), 1.2)), r"\[0, 1\]"),
        (dict(x=torch.zeros(4, 4)), "shape|tensor"),
        (dict(x=[[0.5]]), "tensor"),
        (dict(sigma=0.0), "sigma"),
        (dict(sigma=-1.0), "sigma"),
        (dict(sigma=float("inf")), "sigma"),
        (dict(sigma=25.0), "divide by 255"),
        (dict(x=torch.rand(3, 0, 0)), r"empty image of shape \(3, 0, 0\)"),
        (dict(n=2**53 + 1), r"n = 9007199254740993 is above .* 2\*\*53"),
        (dict(n=1e12), "n must be an integer"),
        (dict(progress="yes"), "progress must be"),
        (dict(n=0), "n must"),
        (dict(n0=0), "n0 must"),
        (dict(n0=200, n=100), r"n0 \(200\) must not exceed n \(100\)"),
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=1.0), "alpha"),
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(seed=-1), "seed"),
        (dict(method="fast"), "method"),
        (dict(autocast_dtype=torch.int8), "autocast_dtype"),
        (dict(method="adaptive", target_radius=-1.0), "target_radius"),
        (dict(method="adaptive", target_radius=[0.25, -0.5]), "target_radius"),
        (dict(method="adaptive", target_radius=[]), "target_radius"),
        (dict(first_look=10), "extra options"),
    ],
)
def test_bad_input_raises_value_error_naming_it(change, match):
    kwargs = dict(x=torch.full((1, 4, 4), 0.5), sigma=0.25, n0=10, n=100) | change
    with pytest.raises(ValueError, match=match):
        certify(Recorder(), **kwargs)


def test_bad_classifier_output_raises():
    with pytest.raises(ValueError, match="logits"):
        certify(lambda z: z.flatten(1).mean(1), torch.full((1, 4, 4), 0.5), 0.25, n0=10, n=100)
    with pytest.raises(ValueError, match="n must"):
        predict(Recorder(), torch.full((1, 4, 4), 0.5), 0.25, n=0)


# ----------------------------------------------------------------------------------------------------------- progress
def test_progress_hook_is_called_after_every_forward_batch():
    calls, bar = [], type("Bar", (), {"updates": [], "update": lambda self, k: self.updates.append(k)})()
    x = torch.full((2, 1, 4, 4), 0.5)
    certify(Recorder(), x, 0.25, n0=10, n=500, batch_size=300, progress=lambda *done_total: calls.append(done_total))
    assert calls == [(20, 1020), (320, 1020), (620, 1020), (920, 1020), (1020, 1020)]  # 20 selection, 1000 estimation
    certify(Recorder(), x, 0.25, n0=10, n=500, batch_size=300, progress=bar)
    assert bar.updates == [20, 300, 300, 300, 100]


class Stop(Exception):
    pass


@pytest.mark.parametrize("method", ["cohen", "adaptive", "sequential"])
def test_an_exception_from_progress_aborts_certify_at_once_even_at_a_huge_n(method):
    """A caller stops the work by raising from the hook: no further forward pass runs and the exception comes out.
    n = 10**12 allocates nothing in proportion to n (before the lazy noise blocks it raised MemoryError)."""
    f = Recorder()

    def stop_after(done, total):
        if done >= 2000:
            raise Stop(f"{done} of {total}")

    with pytest.raises(Stop, match="2010 of 1000000000010"):
        certify(f, torch.full((1, 4, 4), 0.5), 0.25, n0=10, n=10**12, batch_size=1000, method=method,
                progress=stop_after)
    sizes = [z.shape[0] for z in f.inputs]
    assert sizes == ([10] + [100] * 20 if method == "sequential" else [10, 1000, 1000])  # the looks of 100 first
    with pytest.raises(Stop):
        predict(f, torch.full((1, 4, 4), 0.5), 0.25, n=10**12, progress=stop_after)
