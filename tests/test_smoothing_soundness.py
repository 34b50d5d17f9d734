"""Statistical soundness of `dmae_hf.smoothing` against base classifiers whose smoothed probabilities are known.

The base classifiers act on the 1-D projection t = w.x (||w|| = 1) of a 1x2x2 image, so t(x + eps) ~ N(w.x, sigma^2)
and P(f(x + eps) = c) is a difference of normal CDFs. Each test runs many independent trials (seeds) and checks with
a one-sided binomial test that the rate of wrong answers is not significantly above alpha; each test also shows that
the same checker catches a deliberately broken bound.

The last part holds broken base classifiers to the same standard: ties and batch-size-dependent outputs still get
certificates their true pA supports; NaN/Inf outputs, exceptions, wrong shapes and a changing number of classes
get no certificate at all.
"""

import itertools
import math

import pytest
import torch
from scipy.stats import binomtest, norm

from dmae_hf import smoothing

TRIALS = 2000
W = torch.full((4,), 0.5)  # unit vector on a 1x2x2 image
X = torch.full((1, 2, 2), 0.5)  # w.x = 1
SIGMA = 0.5


class NearestCenter(torch.nn.Module):
    """f(z) = the class whose center on the line t = w.z is nearest: intervals between the centers' midpoints."""

    def __init__(self, centers):
        super().__init__()
        self.register_buffer("centers", torch.tensor(centers, dtype=torch.float32))

    def forward(self, z):
        t = z.flatten(1) @ W
        return -((t[:, None] - self.centers) ** 2)

    def probabilities(self, t0=1.0, sigma=SIGMA):
        """Exact P(f(x + eps) = c) when w.x = t0."""
        c = self.centers.tolist()
        cuts = [-math.inf] + [(a + b) / 2 for a, b in itertools.pairwise(c)] + [math.inf]
        return [norm.cdf((hi - t0) / sigma) - norm.cdf((lo - t0) / sigma) for lo, hi in itertools.pairwise(cuts)]


def two_class(pA):
    """Classes 0 | 1 split at b, with P(class 1) = pA at x: margin = sigma * PhiInv(pA) = true radius of g at x."""
    margin = SIGMA * norm.ppf(pA)
    b = 1.0 - margin
    return NearestCenter([b - 1.0, b + 1.0]), margin


def failure_rate_ok(failures, trials, alpha):
    """One-sided binomial test of H0: failure rate <= alpha; True unless the rate is significantly above alpha."""
    return binomtest(failures, trials, alpha, alternative="greater").pvalue > 1e-3


def certify_failures(f, probs, alpha, trials=TRIALS, **kwargs):
    """Trials whose certificate is wrong: not abstained and pA_lower > the true probability of the returned class."""
    failures = 0
    for seed in range(trials):
        cert = smoothing.certify(f, X, SIGMA, alpha=alpha, seed=seed, **kwargs)
        assert cert.prediction is not None or cert.radius == 0.0
        failures += cert.prediction is not None and cert.pA_lower > probs[cert.prediction]
    return failures


def test_cohen_certify_two_class_sound_and_checker_catches_broken_bounds(monkeypatch):
    alpha, f, margin = 0.1, *two_class(0.7)
    probs = f.probabilities()
    assert abs(probs[1] - 0.7) < 1e-6
    failures, radius_failures = 0, 0
    for seed in range(TRIALS):
        cert = smoothing.certify(f, X, SIGMA, n0=10, n=100, alpha=alpha, seed=seed)
        wrong = cert.prediction is not None and (cert.prediction != 1 or cert.radius > margin)
        failures += wrong
        radius_failures += cert.prediction is not None and cert.pA_lower > probs[cert.prediction]
    assert failures == radius_failures  # radius > distance to the boundary <=> pA_lower > pA
    assert failures > 0  # the regime is one where failures happen at all
    assert failure_rate_ok(failures, TRIALS, alpha), failures

    exact = smoothing.clopper_pearson_lower
    monkeypatch.setattr(smoothing, "clopper_pearson_lower", lambda k, n, a: exact(k, n, 4 * a))
    assert not failure_rate_ok(certify_failures(f, probs, alpha, n0=10, n=100), TRIALS, alpha)
    monkeypatch.setattr(smoothing, "clopper_pearson_lower", lambda k, n, a: k / n)  # the point estimate
    assert not failure_rate_ok(certify_failures(f, probs, alpha, n0=10, n=100), TRIALS, alpha)


def test_cohen_certify_multiclass_sound():
    alpha = 0.1
    f = NearestCenter([0.0, 1.0, 2.0])  # the middle class holds x (t = 1)
    probs = f.probabilities(sigma=0.4)
    assert 0.6 < probs[1] < 0.8 and abs(sum(probs) - 1) < 1e-9
    failures = 0
    for seed in range(TRIALS):
        cert = smoothing.certify(f, X, 0.4, n0=10, n=100, alpha=alpha, seed=seed)
        failures += cert.prediction is not None and cert.pA_lower > probs[cert.prediction]
    assert failures > 0 and failure_rate_ok(failures, TRIALS, alpha), failures


ADAPTIVE = dict(n0=10, n=400, first_look=25, method="adaptive")


@pytest.mark.parametrize("rule", ["target", "estimate"])
def test_adaptive_certify_sound_and_naive_sequential_bound_caught(monkeypatch, rule):
    """Looks at 25, 50, 100, 200, 400 samples, each at alpha / 5. The "target" rule is adversarial: it stops as soon
    as the radius reaches the TRUE radius, i.e. exactly when the bound is wrong; without the union bound (alpha at
    every look) optional stopping then inflates the failure rate, and the checker must see it."""
    alpha, f, margin = 0.1, *two_class(0.7)
    options = dict(target_radius=margin) if rule == "target" else dict(estimate_tolerance=0.05)
    probs = f.probabilities()
    drawn = []
    failures = 0
    for seed in range(TRIALS):
        cert = smoothing.certify(f, X, SIGMA, alpha=alpha, seed=seed, **ADAPTIVE, **options)
        failures += cert.prediction is not None and cert.pA_lower > probs[cert.prediction]
        drawn.append(cert.num_samples)
        assert cert.num_samples - cert.n0 == sum(cert.counts)
    assert failure_rate_ok(failures, TRIALS, alpha), failures
    assert min(drawn) < max(drawn)  # the rule stops early on some trials and not on others

    if rule == "target":
        exact = smoothing.clopper_pearson_lower
        monkeypatch.setattr(smoothing, "clopper_pearson_lower", lambda k, n, a: exact(k, n, 5 * a))
        naive = certify_failures(f, probs, alpha, **ADAPTIVE, **options)
        assert not failure_rate_ok(naive, TRIALS, alpha), naive


def test_predict_error_rate_and_checker_catches_untested_vote():
    """P(predict returns a class other than g(x)) <= alpha, near the tie pA = 0.52 where a plain vote errs often."""
    alpha, (f, _) = 0.05, two_class(0.52)

    def wrong_answers():
        return sum(smoothing.predict(f, X, SIGMA, n=100, alpha=alpha, seed=seed).prediction == 0
                   for seed in range(TRIALS))

    assert failure_rate_ok(wrong_answers(), TRIALS, alpha)
    original = smoothing.binomtest
    try:
        smoothing.binomtest = lambda *a, **k: type("R", (), {"pvalue": 0.0})()  # no test: a plain majority vote
        assert not failure_rate_ok(wrong_answers(), TRIALS, alpha)
    finally:
        smoothing.binomtest = original


# --------------------------------------------------------------------------------------------- broken base classifiers
class TiedTop(NearestCenter):
    """`two_class` with a third class whose logit always equals class 1's: argmax takes the first maximal class, so
    P(class 1) is unchanged and class 2 never gets a vote."""

    def forward(self, z):
        logits = super().forward(z)
        return torch.cat([logits, logits[:, 1:]], dim=1)


def test_ties_certify_the_first_maximal_class_soundly():
    alpha, (f, _) = 0.1, two_class(0.7)
    tied = TiedTop(f.centers.tolist())
    probs = f.probabilities() + [0.0]
    failures = certify_failures(tied, probs, alpha, trials=1000, n0=10, n=100)
    assert failures > 0 and failure_rate_ok(failures, 1000, alpha), failures
    cert = smoothing.certify(tied, X, SIGMA, n0=10, n=100, alpha=alpha)
    assert cert.counts[2] == 0 and cert.prediction in (None, 1)

    constant = lambda z: torch.tensor([0.0, 1.0, 1.0, 0.0]).expand(z.shape[0], 4)  # noqa: E731, pA(1) = 1
    cert = smoothing.certify(constant, X, SIGMA, n0=10, n=100, alpha=alpha)
    assert cert.prediction == 1 and cert.counts == [0, 100, 0, 0]
    assert cert.pA_lower == smoothing.clopper_pearson_lower(100, 100, alpha) < 1.0


class BatchSizeDependent(torch.nn.Module):
    """The two-class split of pA = `full` in batches of `size` samples, and of pA = `partial` in smaller ones."""

    def __init__(self, size, full, partial):
        super().__init__()
        self.size, self.full, self.partial = size, two_class(full)[0], two_class(partial)[0]

    def forward(self, z):
        return (self.full if z.shape[0] == self.size else self.partial)(z)


def test_batch_size_dependent_classifier_is_certified_for_the_batches_it_sees():
    """n = 100 in batches of 16: 96 samples see pA = 0.6 and 4 see 0.95; nA is a sum of independent Bernoullis of
    mean pA = 0.614, which the Clopper-Pearson bound still covers (Hoeffding, 1956). Counts do not depend on where a
    sample falls otherwise: the sampler's batching is a function of (n0, n, batch_size, number of images) only."""
    alpha, f = 0.1, BatchSizeDependent(16, 0.6, 0.95)
    mean = (96 * 0.6 + 4 * 0.95) / 100
    failures = certify_failures(f, [1 - mean, mean], alpha, trials=1000, n0=10, n=100, batch_size=16)
    assert failures > 0 and failure_rate_ok(failures, 1000, alpha), failures


def with_logits(edit):
    """`two_class(0.7)`'s classifier with its logits edited in place by `edit(logits)`."""
    f = two_class(0.7)[0]

    def broken(z):
        logits = f(z)
        edit(logits)
        return logits

    return broken


NON_FINITE = {
    "all NaN": lambda logits: logits.fill_(math.nan),
    "NaN in one class": lambda logits: logits[:, 1].fill_(math.nan),  # argmax would vote for class 1 every time
    "all +Inf": lambda logits: logits.fill_(math.inf),  # ... for class 0
    "+Inf in one class": lambda logits: logits[:, 0].fill_(math.inf),
    "-Inf everywhere": lambda logits: logits.fill_(-math.inf),
    "one NaN sample": lambda logits: logits[-1, 0].fill_(math.nan),
}


@pytest.mark.parametrize("edit", NON_FINITE.values(), ids=NON_FINITE)
@pytest.mark.parametrize("call", ["certify", "adaptive", "predict"])
def test_non_finite_logits_never_certify(edit, call):
    f = with_logits(edit)
    run = {"certify": lambda: smoothing.certify(f, X, SIGMA, n0=10, n=100, alpha=0.01),
           "adaptive": lambda: smoothing.certify(f, X, SIGMA, alpha=0.01, **ADAPTIVE),
           "predict": lambda: smoothing.predict(f, X, SIGMA, n=100, alpha=0.01)}[call]
    with pytest.raises(ValueError, match=r"non-finite logits \(NaN or Inf\): forward batch 1 \(of \d+ noisy"):
        run()


def test_intermittent_non_finite_logits_never_certify():
    """NaN only where the noisy sample lands far out (t > 2.2, P = 0.8% per sample): about half the trials meet one,
    in some batches only, and exactly those are refused; a NaN in batch 3 alone is named as such."""
    f, emitted = two_class(0.7)[0], []

    def rare_nan(z):
        logits = f(z)
        far = z.flatten(1) @ W > 2.2
        emitted[-1] |= bool(far.any())
        logits[far] = math.nan
        return logits

    refused = []
    for seed in range(200):
        emitted.append(False)
        try:
            smoothing.certify(rare_nan, X, SIGMA, n0=10, n=100, alpha=0.1, seed=seed, batch_size=32)
            refused.append(False)
        except ValueError as e:
            assert "non-finite" in str(e)
            refused.append(True)
    assert refused == emitted and 20 < sum(refused) < 180

    calls = []

    def third_batch_nan(z):
        calls.append(z.shape[0])
        logits = f(z)
        if len(calls) == 3:
            logits[5, 1] = math.nan
        return logits

    with pytest.raises(ValueError, match=r"1 non-finite logits .*forward batch 3 \(of 32 noisy samples\) has 1\."):
        smoothing.certify(third_batch_nan, X, SIGMA, n0=10, n=100, batch_size=32)
    assert calls == [10, 32, 32, 32, 4]  # the whole estimation stage ran, then the check refused its votes


class Flaky:
    """Forward pass number `at` misbehaves as `how` says; the others are `two_class(0.7)`'s classifier."""

    def __init__(self, at, how):
        self.f, self.at, self.how, self.calls = two_class(0.7)[0], at, how, 0

    def __call__(self, z):
        self.calls += 1
        logits = self.f(z)
        if self.calls != self.at:
            return logits
        if self.how == "raise":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return {"transpose": logits.T, "drop a row": logits[1:], "flatten": logits[:, 0],
                "extra class": torch.cat([logits, logits[:, :1]], 1), "tuple": (logits,)}[self.how]


@pytest.mark.parametrize("at", [1, 3], ids=["selection", "estimation"])
@pytest.mark.parametrize("how, error, match", [
    ("raise", RuntimeError, "illegal memory access"),
    ("transpose", ValueError, r"tensor of logits; got shape \(2, \d+\)"),
    ("drop a row", ValueError, r"tensor of logits; got shape \(\d+, 2\)"),
    ("flatten", ValueError, r"tensor of logits; got shape \(\d+,\)"),
    ("extra class", ValueError, r"returned [23] classes after [23]"),  # 3 then 2 in selection
    ("tuple", ValueError, "got a tuple.*logits tensor itself"),
])
def test_classifiers_that_fail_mid_run_never_certify(at, how, error, match):
    with pytest.raises(error, match=match):
        smoothing.certify(Flaky(at, how), X, SIGMA, n0=10, n=100, batch_size=32)
