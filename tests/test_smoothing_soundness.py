"""Statistical soundness of `dmae_hf.smoothing` against base classifiers whose smoothed probabilities are known.

The base classifiers act on the 1-D projection t = w.x (||w|| = 1) of a 1x2x2 image, so t(x + eps) ~ N(w.x, sigma^2)
and P(f(x + eps) = c) is a difference of normal CDFs. Each test runs many independent trials (seeds) and checks with
a one-sided binomial test that the rate of wrong answers is not significantly above alpha; each test also shows that
the same checker catches a deliberately broken bound.
"""

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
        cuts = [-math.inf] + [(a + b) / 2 for a, b in zip(c, c[1:])] + [math.inf]
        return [norm.cdf((hi - t0) / sigma) - norm.cdf((lo - t0) / sigma) for lo, hi in zip(cuts, cuts[1:])]


def two_class(pA):
    """Classes 0 | 1 split at b, with P(class 1) = pA at x: margin = sigma * PhiInv(pA) = true radius of g at x."""
    margin = SIGMA * norm.ppf(pA)
    b = 1.0 - margin
    return NearestCenter([b - 1.0, b + 1.0]), margin


def failure_rate_ok(failures, trials, alpha):
    """One-sided binomial test of H0: failure rate <= alpha; True unless the rate is significantly above alpha."""
    return binomtest(failures, trials, alpha, alternative="greater").pvalue > 1e-3


def certify_failures(f, probs, alpha, **kwargs):
    """Trials whose certificate is wrong: not abstained and pA_lower > the true probability of the returned class."""
    failures = 0
    for seed in range(TRIALS):
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
