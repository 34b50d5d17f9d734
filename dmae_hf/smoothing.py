"""Randomized smoothing: PREDICT and CERTIFY of Cohen, Rosenfeld & Kolter (2019), and sequential CERTIFYs.

The smoothed classifier of a base classifier f is

    g(x) = argmax_c P(f(x + eps) = c),   eps ~ N(0, sigma^2 I),

with the noise added to [0, 1] pixels. If the top class has probability pA >= pA_lower > 1/2, then g is constant on
the L2 ball of radius R = sigma * PhiInv(pA_lower) around x (Cohen et al., Theorem 1).

Everything here is Monte Carlo over noisy copies of x, so each result holds with probability >= 1 - alpha:

* `predict` returns g(x), or abstains; P(it returns a class other than g(x)) <= alpha.
* `certify` returns (class, radius), or abstains; P(it returns a class c with a radius that the true
  P(f(x + eps) = c) does not support, i.e. pA(c) < pA_lower) <= alpha.

No certificate rests on undefined votes: f must return a real floating (N, K) tensor on x's device with a fixed K,
and NaN/Inf logits (which argmax would count as votes) raise a `ValueError` before any decision is made. The noise,
its seeds and the counting of votes in shared forward batches are `dmae_hf.sampling`; memory is O(batch_size) at
any n.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from dataclasses import dataclass

import torch
from scipy.stats import beta, binomtest, norm

from .defaults import ALPHA, METHODS, N0, NOISE_BATCH, SEED, N
from .sampling import (
    ESTIMATION,
    NOISE_BLOCK,
    PREDICT,
    SELECTION,
    Sampler,
    add_gaussian_noise,
    check_int,
    mix_seed,
    prepare_inputs,
)
from .sequential import estimate as sequential_estimate
from .sequential import options as sequential_options

__all__ = ["NOISE_BLOCK", "Certificate", "Prediction", "add_gaussian_noise", "certify", "clopper_pearson_lower",
           "clopper_pearson_upper", "look_schedule", "mix_seed", "predict", "radius_from_bound"]


@dataclass
class Certificate:
    """The result of `certify` for one image. `prediction` is None when the certifier abstains (never -1)."""

    prediction: int | None
    radius: float
    pA_lower: float
    counts: list[int]
    n0: int
    n: int
    alpha: float
    sigma: float
    seed: int
    elapsed: float
    method: str = "cohen"
    num_samples: int = 0
    sigma_override: bool = False  # certified at a sigma other than the one the model was trained for (on purpose)

    @property
    def abstained(self) -> bool:
        return self.prediction is None

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "abstained": self.abstained}


@dataclass
class Prediction:
    """The result of `predict` for one image. `prediction` is None when the test abstains (never -1)."""

    prediction: int | None
    counts: list[int]
    pvalue: float
    n: int
    alpha: float
    sigma: float
    seed: int
    elapsed: float
    sigma_override: bool = False  # predicted at a sigma other than the one the model was trained for (on purpose)

    @property
    def abstained(self) -> bool:
        return self.prediction is None

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "abstained": self.abstained}


# -------------------------------------------------------------------------------------------------- PREDICT, CERTIFY
@torch.inference_mode()
def predict(base_classifier, x, sigma, n=N, alpha=ALPHA, batch_size=NOISE_BATCH, seed=SEED, *, autocast_dtype=None,
            progress=False, distributed=False):
    """Cohen et al.'s PREDICT: g(x), or abstain.

    Draw n noisy samples, let nA >= nB be the two largest class counts, and return the top class iff the two-sided
    binomial test of nA ~ Bin(nA + nB, 1/2) rejects at level alpha; otherwise abstain (`prediction=None`).
    Guarantee: P(the returned class is not g(x)) <= alpha. Arguments as for `certify`.
    """
    start = time.perf_counter()
    x, single = prepare_inputs(base_classifier, x, sigma, alpha, batch_size, seed, autocast_dtype)
    n = check_int("n", n)
    sampler = Sampler(base_classifier, x, sigma, seed, batch_size, autocast_dtype, progress, n * len(x), distributed)
    try:
        counts = sampler.count([(i, s, n) for i, s in enumerate(sampler.streams(PREDICT, n))]).tolist()
    finally:
        sampler.close()
    elapsed, results = (time.perf_counter() - start) / len(x), []
    for c in counts:
        top = sorted(range(len(c)), key=lambda k: (-c[k], k))[:2]
        nA, nB = c[top[0]], (c[top[1]] if len(top) > 1 else 0)
        pvalue = float(binomtest(nA, nA + nB, 0.5).pvalue)
        results.append(Prediction(prediction=top[0] if pvalue <= alpha else None, counts=c, pvalue=pvalue, n=n,
                                  alpha=alpha, sigma=float(sigma), seed=seed, elapsed=elapsed))
    return results[0] if single else results


@torch.inference_mode()
def certify(base_classifier, x, sigma, n0=N0, n=N, alpha=ALPHA, batch_size=NOISE_BATCH, seed=SEED, *,
            autocast_dtype=None, method="cohen", progress=False, distributed=False, **method_kwargs):
    """Cohen et al.'s CERTIFY: a class and a certified L2 radius, or abstain.

    Draw n0 samples and guess cA = argmax of their counts (selection); then estimate pA = P(f(x + eps) = cA) from
    fresh samples (estimation) and return cA with radius sigma * PhiInv(pA_lower), or abstain if pA_lower < 1/2.
    Guarantee: P(pA(cA) < pA_lower and not abstained) <= alpha, so with probability >= 1 - alpha the returned class
    is g(x) and g is constant on the returned L2 ball. The methods differ in the estimation only:

    * "cohen" (the reference): n samples with nA votes for cA; pA_lower is the one-sided Clopper-Pearson bound.
    * "sequential": a confidence sequence for pA, valid whenever it stops, with early stopping once the target
      radii are settled (`dmae_hf.sequential`); at most n samples.
    * "adaptive": Clopper-Pearson at alpha / K over K pre-scheduled doubling looks (`_adaptive`).

    Args:
        base_classifier: callable mapping a float32 (N, C, H, W) batch of noisy [0, 1] images to logits (N, K).
        x: (C, H, W) image -> one `Certificate`; (B, C, H, W) batch -> a list (each image uses `seed`, and gets
            the same certificate as alone).
        sigma: noise level in [0, 1] pixel units (`defaults.check_sigma`); the radius is in the L2 norm of x's pixels.
        n0, n: selection and (most) estimation samples, n0 <= n <= 2**53. alpha: failure probability.
        batch_size: noisy samples per forward pass (samples of several images share a pass).
        autocast_dtype: run f under `torch.autocast` in this dtype (the noise is drawn and added in float32 first).
        progress: True for a tqdm bar, a tqdm bar, or a callable(done, total), called after every forward batch;
            an exception it raises aborts `certify` at once (nothing is returned): how a caller stops the work.
        distributed: split each image's samples over the processes of the default `torch.distributed` group (call
            it on every process with the same arguments): noise block j is drawn by rank j mod world size and the
            counts are summed over processes, so every process returns the certificates one process would.
        method_kwargs: the options `defaults.METHODS[method]` names (see `dmae_hf.sequential` and `_adaptive`).
    """
    start = time.perf_counter()
    x, single = prepare_inputs(base_classifier, x, sigma, alpha, batch_size, seed, autocast_dtype)
    n0, n = check_int("n0", n0), check_int("n", n)
    if n0 > n:
        raise ValueError(f"n0 ({n0}) must not exceed n ({n}): the selection sample is the small one.")
    options = _method_options(method, n, sigma, method_kwargs)
    sampler = Sampler(base_classifier, x, sigma, seed, batch_size, autocast_dtype, progress, (n0 + n) * len(x),
                      distributed)
    try:
        selection = sampler.count([(i, s, n0) for i, s in enumerate(sampler.streams(SELECTION, n0))])
        guesses = selection.argmax(dim=1).tolist()  # first maximal class on ties
        streams = sampler.streams(ESTIMATION, n)
        if method == "cohen":
            counts = sampler.count([(i, s, n) for i, s in enumerate(streams)]).tolist()
            estimates = [(c, n, clopper_pearson_lower(c[cA], n, alpha)) for c, cA in zip(counts, guesses, strict=True)]
        else:
            estimates = ESTIMATORS[method](sampler, streams, guesses, n, alpha, sigma, **options)
    finally:
        sampler.close()
    elapsed = (time.perf_counter() - start) / len(x)
    results = [_certificate(cA, counts, drawn, lower, sigma, n0, n, alpha, seed, method, elapsed)
               for cA, (counts, drawn, lower) in zip(guesses, estimates, strict=True)]
    return results[0] if single else results


def _certificate(cA, counts, drawn, pA_lower, sigma, n0, n, alpha, seed, method, elapsed) -> Certificate:
    """CERTIFY's decision for cA from `drawn` estimation samples (class `counts`) and a lower bound on pA."""
    abstain = pA_lower < 0.5
    radius = 0.0 if abstain else radius_from_bound(pA_lower, sigma)
    return Certificate(prediction=None if abstain else cA, radius=radius, pA_lower=pA_lower, counts=counts, n0=n0,
                       n=n, alpha=alpha, sigma=float(sigma), seed=seed, elapsed=elapsed, method=method,
                       num_samples=n0 + drawn)


def _method_options(method, n, sigma, kwargs) -> dict:
    """`method`'s options, checked against `defaults.METHODS` and by the method's own parser."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}.")
    unknown = sorted(set(kwargs) - set(METHODS[method]))
    if unknown:
        takes = ", ".join(METHODS[method]) or "no extra options"
        raise ValueError(f"method={method!r} takes {takes}; got {unknown}.")
    return OPTION_PARSERS[method](n, sigma, **kwargs) if method in OPTION_PARSERS else {}


# ---------------------------------------------------------------------------------------------------------- statistics
def clopper_pearson_lower(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from k successes in n Bernoulli(p) trials:
    the alpha-quantile of Beta(k, n - k + 1), and 0 when k = 0. P(p < bound) <= alpha for every p."""
    return 0.0 if k <= 0 else float(beta.ppf(alpha, k, n - k + 1))


def clopper_pearson_upper(k: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson upper bound: by symmetry, 1 - lower bound of the n - k failures."""
    return 1.0 - clopper_pearson_lower(n - k, n, alpha)


def radius_from_bound(pA_lower: float, sigma: float) -> float:
    """Certified L2 radius sigma * PhiInv(pA_lower) (0 below 1/2, where nothing is certified)."""
    return float(sigma * norm.ppf(pA_lower)) if pA_lower > 0.5 else 0.0


# ------------------------------------------------------------------------------------------------------------ adaptive
def look_schedule(n: int, first_look: int = 1000) -> list[int]:
    """Cumulative sample counts at which `method="adaptive"` looks: first_look, 2 first_look, 4 first_look, ..., n."""
    looks, m = [], min(first_look, n)
    while m < n:
        looks.append(m)
        m *= 2
    return looks + [n]


def _adaptive_options(n, sigma, first_look=1000, target_radius=None, radius_tolerance=0.0, estimate_tolerance=None):
    check_int("first_look", first_look)
    targets = None if target_radius is None else (
        [target_radius] if isinstance(target_radius, numbers.Number) else list(target_radius))
    for name, value in [*(("target_radius", t) for t in targets or []), ("estimate_tolerance", estimate_tolerance),
                        ("radius_tolerance", radius_tolerance)]:
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                  or not (math.isfinite(value) and value >= 0)):
            raise ValueError(f"{name} must be a finite number >= 0 (target_radius: or a list of them), got "
                             f"{value!r}.")
    if targets == []:
        raise ValueError("target_radius must not be an empty list.")
    return dict(looks=look_schedule(n, first_look), targets=None if targets is None else sorted(targets),
                radius_tolerance=radius_tolerance, estimate_tolerance=estimate_tolerance)


def _adaptive(sampler, streams, guesses, n, alpha, sigma, looks, targets, radius_tolerance, estimate_tolerance):
    """method="adaptive": the estimation samples are drawn in the pre-scheduled looks `look_schedule(n, first_look)`
    = N_1 < N_2 < ... < N_K = n. At look k the Clopper-Pearson bounds of the cumulative nA out of N_k are taken at
    level alpha / K. By the union bound, with probability >= 1 - alpha every look's lower bound is below pA(cA)
    simultaneously, so the bound reported at whichever look the rule `_stops` stops is valid, whatever the rule:
      (a) abstain when the upper bound is < 1/2 (hopeless);
      (b) `target_radius` (a radius or a list of the radii the user cares about; default None = off): stop when the
          largest is certified, or when the smallest one not yet certified is out of reach: even nA = upper bound of
          pA times n votes out of n would not certify it;
      (c) stop when even nA + (n - N_k) votes out of n would raise the radius by <= `radius_tolerance` (default 0);
      (d) stop when the point estimate nA / N_k extrapolated to n would raise it by <= `estimate_tolerance`
          (default None = off; a heuristic, still valid).
    The price is alpha / K instead of alpha at the full budget, i.e. a slightly smaller maximal radius.
    Returns (counts, samples drawn, pA_lower) per image."""
    return sampler.run_looks(streams, guesses, *adaptive_rule(n, alpha, sigma, looks, targets, radius_tolerance,
                                                             estimate_tolerance))


def adaptive_rule(n, alpha, sigma, looks, targets, radius_tolerance, estimate_tolerance):
    """method="adaptive"'s looks and stops (see `_adaptive`): (the first look, decide), where decide(nA, look)
    returns (pA_lower, None) to stop or (None, the next look)."""
    level = alpha / len(looks)

    def decide(nA, look):
        if _stops(nA, look, n, level, sigma, targets, radius_tolerance, estimate_tolerance):
            return clopper_pearson_lower(nA, look, level), None
        return None, looks[looks.index(look) + 1]

    return looks[0], decide


def _certifies(lower: float, sigma: float, radius: float) -> bool:
    """Whether a lower bound `lower` on pA certifies `radius`."""
    return lower >= 0.5 and radius_from_bound(lower, sigma) >= radius


def _reachable(radius: float, upper: float, n: int, level: float, sigma: float) -> bool:
    """Whether `radius` could be certified with n samples if pA were at its upper confidence bound `upper`."""
    return _certifies(clopper_pearson_lower(min(n, math.ceil(upper * n)), n, level), sigma, radius)


def _stops(nA, look, n, level, sigma, targets, radius_tolerance, estimate_tolerance) -> bool:
    """The stopping rule of method="adaptive" at the look of `look` samples, nA of them for cA (see `_adaptive`). It
    only decides when to stop: whichever look it stops at, that look's bound at `level` is valid."""
    lower, upper = clopper_pearson_lower(nA, look, level), clopper_pearson_upper(nA, look, level)
    radius = radius_from_bound(lower, sigma)

    def gain(votes: int) -> float:
        """How much `votes` votes for cA out of all n samples would raise the radius."""
        return radius_from_bound(clopper_pearson_lower(votes, n, level), sigma) - radius

    missing = [t for t in targets or [] if not _certifies(lower, sigma, t)]  # target radii not yet certified
    budget_spent = look == n  # the last look: all n estimation samples are drawn
    # (a) hopeless: the upper bound on pA is < 1/2
    hopeless = upper < 0.5
    # (b) the largest target radius is certified, or the smallest one not yet certified is out of reach
    targets_settled = targets is not None and (not missing or not _reachable(missing[0], upper, n, level, sigma))
    # (c) even nA + (n - look) votes out of n would raise the radius by <= radius_tolerance
    within_radius_tolerance = gain(nA + n - look) <= radius_tolerance
    # (d) the point estimate nA / look extrapolated to n would raise it by <= estimate_tolerance (off when None)
    within_estimate_tolerance = estimate_tolerance is not None and gain(round(nA * n / look)) <= estimate_tolerance
    return budget_spent or hopeless or targets_settled or within_radius_tolerance or within_estimate_tolerance


# method -> its estimation step (cohen's is written out in `certify`) and the parser of its options
ESTIMATORS = {"adaptive": _adaptive, "sequential": sequential_estimate}
OPTION_PARSERS = {"adaptive": _adaptive_options, "sequential": sequential_options}
