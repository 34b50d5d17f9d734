"""`certify(..., method="sequential")`: the confidence sequence is time-uniform, so the certificate is valid whatever
rule decides when to stop; checked with base classifiers whose pA is known, at each decision threshold, with
several stopping rules including the adversarial one, and each check shown able to fail on a naive bound.

Failure = a certificate whose pA_lower exceeds the true probability of the returned class. Each case runs >= 300
independent trials (seeds) at alpha = 0.1 and passes unless a one-sided binomial test finds the failure rate above
alpha (p < 0.001).
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta, binomtest, norm

from dmae_hf import sequential, smoothing
from dmae_hf.smoothing import certify

ALPHA = 0.1
SIGMA = 0.5
W = torch.full((4,), 0.5)  # unit vector on a 1x2x2 image
X = torch.full((1, 2, 2), 0.5)  # w.x = 1


def failure_rate_ok(failures, trials, alpha=ALPHA):
    """One-sided binomial test of H0: failure rate <= alpha; True unless the rate is significantly above alpha."""
    return binomtest(failures, trials, alpha, alternative="greater").pvalue > 1e-3


class TwoClass(torch.nn.Module):
    """Class 1 iff w.z > b: P(f(x + eps) = 1) = Phi((1 - b) / sigma) = pA exactly, so g's true radius at x is
    sigma * PhiInv(pA) (and 0 for class 0 when pA = 1/2)."""

    def __init__(self, pA):
        super().__init__()
        self.pA, self.b = pA, 1.0 - SIGMA * norm.ppf(pA)

    def forward(self, z):
        t = z.flatten(1) @ W - self.b
        return torch.stack([-t, t], dim=1)

    def probabilities(self):
        return [1 - self.pA, self.pA]


def failures(f, trials, **kwargs):
    wrong, drawn = 0, []
    probs = f.probabilities()
    for seed in range(trials):
        cert = certify(f, X, SIGMA, alpha=ALPHA, seed=seed, method="sequential", **kwargs)
        wrong += cert.prediction is not None and cert.pA_lower > probs[cert.prediction]
        drawn.append(cert.num_samples)
    return wrong, drawn


# ----------------------------------------------------------------------------------- the confidence sequence alone
def crossings(p, trials, looks, bound, rng):
    """Trials in which the bound exceeds p at SOME look: the failures of the adversarial rule that stops as soon as
    the bound is wrong (what any stopping rule can at worst achieve)."""
    wrong = 0
    for _ in range(trials):
        s = np.cumsum(rng.random(looks[-1]) < p)
        wrong += any(bound(int(s[t - 1]), t) > p for t in looks)
    return wrong


@pytest.mark.parametrize("radius", [0.0, 0.25, 0.5, 0.75])
def test_confidence_sequence_never_crosses_the_true_pA_at_any_look(radius):
    """pA exactly at the threshold of each radius of the benchmark grid (sigma 0.25), looking after every sample
    for the first 50 and then at the schedule's looks up to n = 2000."""
    p = norm.cdf(radius / 0.25)
    looks = sorted(set(range(1, 51)) | set(sequential.look_schedule(2000, 50)))
    rng = np.random.default_rng(int(radius * 100))
    wrong = crossings(p, 300, looks, lambda s, t: sequential.lower_bound(s, t, ALPHA), rng)
    assert failure_rate_ok(wrong, 300), wrong


def test_the_crossing_check_catches_a_fixed_n_bound_used_sequentially():
    """Clopper-Pearson at alpha at every look is valid at one fixed n only: looked at repeatedly it crosses far more
    often than alpha, and the same check must say so."""
    looks = sequential.look_schedule(3000, 10)
    naive = crossings(0.9, 300, looks, lambda s, t: float(beta.ppf(ALPHA, s, t - s + 1)) if s else 0.0,
                      np.random.default_rng(0))
    assert not failure_rate_ok(naive, 300), naive


def test_lower_bound_edges():
    assert sequential.lower_bound(0, 10, 0.001) == 0.0
    for s, t in [(1, 1), (50, 100), (999, 1000), (10**6, 10**6), (10**6 - 3, 10**6)]:
        low = sequential.lower_bound(s, t, 0.001)
        assert 0 <= low < s / t or (s == t and low < 1)
        assert sequential.log_mixture(low, s, t - s) >= math.log(1000)  # low is outside the confidence sequence
        assert sequential.log_mixture(min(s / t, low * (1 + 1e-6)), s, t - s) < math.log(1000) + 1e-6
    # a confidence sequence is wider than the fixed-n interval at the same n, and tightens with more samples
    assert sequential.lower_bound(9000, 10_000, 0.001) < smoothing.clopper_pearson_lower(9000, 10_000, 0.001)
    assert sequential.lower_bound(900, 1000, 0.001) < sequential.lower_bound(9000, 10_000, 0.001)


# -------------------------------------------------------------------------------------------- through certify
SMALL = dict(n0=10, n=400, first_look=20)


@pytest.mark.parametrize("pA", [0.5, 0.7, 0.9, 0.99])
def test_target_at_the_true_radius_is_sound(pA):
    """The adversarial rule through the API: the target is the TRUE radius, so the method stops exactly when its
    bound first exceeds pA (radius 0 at pA = 1/2: any certificate is wrong there)."""
    f = TwoClass(pA)
    wrong, drawn = failures(f, 300, target_radius=SIGMA * norm.ppf(pA), **SMALL)
    assert failure_rate_ok(wrong, 300), wrong
    assert min(drawn) < max(drawn)


@pytest.mark.parametrize("rule", [dict(target_radius=[0.0, 0.25, 0.5, 0.75]), dict(radius_tolerance=0.05),
                                  dict(radius_tolerance=0.0), dict(target_radius=[0.0, 0.25, 0.5, 0.75], reach=0.1)],
                         ids=["grid", "tolerance", "full budget", "grid, short reach"])
def test_other_stopping_rules_are_sound_near_a_threshold(rule):
    """pA = 0.84: the true radius 0.5 * PhiInv(0.84) = 0.497 lies just under the grid's 0.5."""
    f = TwoClass(0.84)
    wrong, _ = failures(f, 300, **rule, **SMALL)
    assert failure_rate_ok(wrong, 300), wrong


def test_the_api_check_catches_a_naive_sequential_bound(monkeypatch):
    """The same check through `certify` with Clopper-Pearson at alpha as the per-look bound (and as the bound the
    looks are planned with): caught."""
    def naive(s, t, alpha, prior=None):
        return float(beta.ppf(alpha, s, t - s + 1)) if s else 0.0

    monkeypatch.setattr(sequential, "lower_bound", naive)
    monkeypatch.setattr(sequential, "excludes", lambda p, s, t, alpha: t > 0 and naive(s, t, alpha) >= p)
    f = TwoClass(0.9)
    wrong, _ = failures(f, 300, target_radius=SIGMA * norm.ppf(0.9), **SMALL)
    assert not failure_rate_ok(wrong, 300), wrong


# ---------------------------------------------------------------------------------------------------- behaviour
def test_a_certificate_is_the_same_alone_and_in_a_batch():
    x = torch.full((3, 1, 2, 2), 0.5)
    x[1] -= 0.3  # a less confident image: other looks, another stopping time
    x[2] += 0.2
    f = TwoClass(0.9)
    kwargs = dict(n0=20, n=5000, alpha=0.01, seed=4, method="sequential", target_radius=[0.25, 0.5, 0.75, 1.0],
                  batch_size=97)
    batch = certify(f, x, SIGMA, **kwargs)
    alone = [certify(f, image, SIGMA, **kwargs) for image in x]
    assert [c.to_dict() | {"elapsed": 0} for c in batch] == [c.to_dict() | {"elapsed": 0} for c in alone]
    assert len({c.num_samples for c in batch}) == 3


def quarters(z):
    """Four classes of probability 1/4 each: pA = 1/4 whatever the selection guess."""
    u = torch.special.ndtr((z.flatten(1) @ W - 1.0) / SIGMA)
    return torch.nn.functional.one_hot((4 * u).long().clamp(max=3), 4).float()


def test_stops_once_the_largest_target_is_certified_or_the_next_is_out_of_reach():
    sure = certify(TwoClass(1 - 1e-9), X, SIGMA, n0=100, n=100_000, method="sequential", target_radius=[0.5, 1.0])
    assert sure.prediction == 1 and sure.radius >= 1.0 and sure.num_samples < 2000
    assert sure.num_samples - sure.n0 == sum(sure.counts)
    seventy = TwoClass(0.7)  # true radius 0.5 * PhiInv(0.7) = 0.262
    far = certify(seventy, X, SIGMA, n0=100, n=100_000, method="sequential", target_radius=[0.1, 0.5, 1.0])
    assert far.prediction == 1 and 0.1 <= far.radius < 0.262 and far.num_samples < 10_000
    hopeless = certify(quarters, X, SIGMA, n0=100, n=100_000, method="sequential")
    assert hopeless.abstained and hopeless.num_samples == 200  # pA = 1/4 < 1/2: out of reach at the first look
    coin = certify(TwoClass(0.5), X, SIGMA, n0=100, n=2000, method="sequential", target_radius=0.0)
    assert coin.abstained and coin.num_samples < 2100  # pA = 1/2: radius 0 soon out of reach within n
    flat = certify(seventy, X, SIGMA, n0=100, n=100_000, method="sequential", radius_tolerance=0.02)
    assert flat.num_samples < 50_000 and 0.2 < flat.radius < 0.262  # no target: it stops when the radius is flat


def test_sequential_is_listed_and_its_options_checked():
    assert smoothing.METHODS["sequential"] == ("first_look", "target_radius", "radius_tolerance", "reach")
    for bad, match in [(dict(first_look=0), "first_look"), (dict(target_radius=[]), "target_radius"),
                       (dict(target_radius=-0.1), "target_radius"), (dict(radius_tolerance=math.inf), "radius_tol"),
                       (dict(reach=0), "reach"), (dict(reach=1.5), "reach"), (dict(reach=True), "reach"),
                       (dict(estimate_tolerance=0.1), "takes first_look, target_radius, radius_tolerance, reach")]:
        with pytest.raises(ValueError, match=match):
            certify(TwoClass(0.9), X, SIGMA, n0=10, n=100, method="sequential", **bad)


def test_a_certificate_is_not_delayed_to_the_next_scheduled_look():
    """Every vote for cA: the rule looks exactly when the largest target can first be certified (m samples)."""
    rule = sequential.Rule(100_000, 0.001, SIGMA, targets=[0.5, 1.0])
    m = rule.earliest(0, 0, norm.cdf(1.0 / SIGMA), 100_000)
    assert m not in sequential.look_schedule(100_000, 100)  # not a scheduled look: found by the rule
    assert sequential.lower_bound(m, m, 0.001) >= norm.cdf(1.0 / SIGMA) > sequential.lower_bound(m - 1, m - 1, 0.001)
    sure = certify(TwoClass(1 - 1e-12), X, SIGMA, n0=100, n=100_000, method="sequential", target_radius=[0.5, 1.0])
    assert sure.num_samples == 100 + m and sure.radius >= 1.0


def test_reach_stops_chasing_a_target_only_the_end_of_the_budget_could_settle():
    """pA = 0.9785 is just above the threshold of radius 2 sigma (0.97725). With reach = 1 the rule chases radius
    2 sigma far into the budget (52,878 samples at this seed) and still ends short of it; the default reach (0.4)
    gives up within 0.4 n (16,459 here), with the same first target certified."""
    f = TwoClass(0.9785)
    kwargs = dict(n0=100, n=100_000, method="sequential", target_radius=[0.5, 1.0], seed=1)
    full = certify(f, X, SIGMA, reach=1.0, **kwargs)
    short = certify(f, X, SIGMA, **kwargs)
    assert short.num_samples <= 100 + 1.05 * 0.4 * 100_000 < full.num_samples and full.radius < 1.0
    assert 0.5 <= short.radius < 1.0  # the first target is certified all the same
    assert sequential.Rule(10_000, 0.001, 0.25, targets=[0.0, 0.75]).horizon == 10_000  # 2 m = 11,074 > 0.4 n
