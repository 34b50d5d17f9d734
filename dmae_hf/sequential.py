# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
r"""Sequential CERTIFY (`certify(..., method="sequential")`): an anytime-valid confidence sequence for pA.

Selection is Cohen's and stays separate: n0 samples give the guess cA. The estimation samples are then i.i.d.
X_i = [f(x + eps_i) = cA] ~ Bernoulli(pA). After t of them, S_t votes for cA and F_t = t - S_t against, Robbins'
beta-binomial mixture (Robbins 1970; Howard et al. 2021, Sec. 3.2) is

    M_t(p) = int prod_i (q / p)^{X_i} ((1 - q) / (1 - p))^{1 - X_i} dBeta(q; a, b)
           = B(a + S_t, b + F_t) / (B(a, b) p^{S_t} (1 - p)^{F_t}).

For p = pA it is a mixture of likelihood ratios, hence a nonnegative martingale with M_0 = 1, and Ville's inequality
gives P(exists t >= 1: M_t(pA) >= 1 / alpha) <= alpha. So C_t = {p : M_t(p) < 1 / alpha} is a confidence sequence:
P(exists t: pA not in C_t) <= alpha. log M_t(p) is convex in p with its minimum (<= 0) at p = S_t / t, so C_t is an
interval, and its left end L_t (`lower_bound`, by bisection on (0, S_t / t] keeping M_t >= 1 / alpha below it) obeys

    P(exists t >= 1: pA < L_t) <= alpha.

Hence for ANY stopping time tau <= n, i.e. whatever rule decides from the samples so far when to stop (including
the adversarial one that stops as soon as L_t exceeds the true pA), P(pA < L_tau) <= alpha, and the certificate is
Cohen's with pA_lower = L_tau: cA with radius sigma * PhiInv(L_tau), or abstain when L_tau < 1/2. Certificates are
valid after any batch; the rule below only decides when to stop (a round of looks costs one host sync).

Why this confidence sequence. Voracek (2024) shows that confidence sequences give sequential certification the
optimal sample complexity for "is x robust at r?"; his test for one target is the Krichevsky-Trofimov plug-in
product, i.e. this mixture with the Jeffreys prior. Betting confidence sequences (Waudby-Smith & Ramdas 2023) serve
any [0, 1]-valued data; for Bernoulli votes the mixture is the Bayes-optimal (universal-portfolio) bet, in closed
form and with no grid. A union bound over Clopper-Pearson looks (`method="adaptive"`) is valid at its pre-scheduled
looks only and pays log K. One confidence sequence for pA serves every target radius at once, with no union over
radii. The prior: the mixture's price over a fixed-n Clopper-Pearson bound is about -log of the prior mass near pA
within its standard error, and the samples of a certificate go to the large radii, i.e. to pA near 1, where
Beta(1/2, 1/2) has little mass. `PRIOR` = Beta(1, 1/16) has density b (1 - q)^{b - 1}: 0.12 at 1/2, 0.2 at 0.9,
growing as (1 - q)^{-15/16} towards 1, where the price is log(1 / alpha) + b log t: 5,537 samples all for cA
certify pA >= Phi(3) (r = 3 sigma) at alpha = 0.001, against 5,114 for Clopper-Pearson at a fixed n and 8,904 for
the Jeffreys prior.

The stopping rule (it never affects validity). Each image has its own looks: the next one after t samples comes
after max(first_look, t / 20) more (at most 5% overshoot), or earlier, at the first t' at which the next target
could be certified if every new vote went to cA (so a certificate is not delayed to the next scheduled look), and
never after n. With `target_radius` (the radii the user cares about, e.g. a table's grid): stop once L_t certifies
the largest, or once the smallest one it does not certify is out of reach: even if pA were at its upper bound U_t
(Clopper-Pearson at level `REACH_LEVEL`), S_t + U_t (h - t) votes out of h samples would not certify it. The
horizon h = min(n, max(reach n, 2 m)), where m is the fewest samples that certify the largest target at all (all
votes for cA: 5,537 for r = 3 sigma at alpha = 0.001), so h never stops an image that could certify the whole grid
cheaply. `reach` < 1 stops chasing targets that only the last samples of the budget could settle: near a threshold
the confidence sequence needs 2.5 to 3 times the samples of a fixed-n Clopper-Pearson bound for the same margin
(pA 0.0003 to 0.01 above the thresholds of r = 0 to 3 sigma), so such chases are dear and mostly end uncertified.
`benchmarks/sequential` measured the trade-off on CIFAR-10 and chose `REACH` on images it reports separately;
reach = 1 chases every target within n. Without targets: stop once that projection to h = n
would raise the radius by <= `radius_tolerance`. Both stop at once when even radius 0 (pA > 1/2) is out of reach.
"""

from __future__ import annotations

import math
import numbers

from scipy.special import betaln
from scipy.stats import beta, norm

from .defaults import REACH
from .sampling import check_int

PRIOR = (1.0, 1 / 16)  # Beta(a, b) mixing distribution of the confidence sequence (see above)
REACH_LEVEL = 0.01  # level of the upper bound on pA that decides whether a target is still within reach


def log_mixture(p: float, s: float, f: float, prior=PRIOR) -> float:
    """log M_t(p) for s votes for cA and f against (real s, f allowed, for projections)."""
    a, b = prior
    return betaln(a + s, b + f) - betaln(a, b) - s * math.log(p) - (f * math.log1p(-p) if f else 0.0)


def lower_bound(s: float, t: float, alpha: float, prior=PRIOR) -> float:
    """L_t: the left end of {p : M_t(p) < 1/alpha}. Bisection keeps M_t(lo) >= 1/alpha, so every p < L_t lies
    outside the confidence sequence (M_t is decreasing on (0, s / t]); 0 when s = 0."""
    if s <= 0:
        return 0.0
    threshold = math.log(1 / alpha) + 1e-9  # a hair above 1/alpha: floating rounding never favours the bound
    lo, hi = 0.0, s / t
    if hi >= 1.0:  # all votes for cA: log M_t(p) = const - t log p, solved in closed form, then checked
        lo = math.exp((betaln(prior[0] + s, prior[1]) - betaln(*prior) - threshold) / s)
        while lo > 0 and log_mixture(lo, s, 0.0, prior) < threshold:
            lo = math.nextafter(lo, 0.0)
        return lo
    for _ in range(200):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if log_mixture(mid, s, t - s, prior) >= threshold:
            lo = mid
        else:
            hi = mid
    return lo


def excludes(p: float, s: float, t: float, alpha: float) -> bool:
    """Whether p lies left of the confidence sequence after s votes for cA out of t, i.e. L_t >= p (up to rounding;
    used to plan, never to certify)."""
    return t > 0 and s / t > p and log_mixture(p, s, t - s) >= math.log(1 / alpha)


def look_schedule(n: int, first_look: int) -> list[int]:
    """The scheduled looks (cumulative samples): first_look, then every max(first_look, t / 20) more, and n."""
    looks, t = [], min(first_look, n)
    while t < n:
        looks.append(t)
        t += max(first_look, math.ceil(t / 20))
    return looks + [n]


def options(n, sigma, first_look=100, target_radius=None, radius_tolerance=0.01, reach=REACH) -> dict:
    """Check `certify`'s options for method="sequential"; return the keyword arguments of `estimate`."""
    check_int("first_look", first_look)
    targets = None if target_radius is None else (
        [target_radius] if isinstance(target_radius, numbers.Number) else list(target_radius))
    for name, value in [*(("target_radius", t) for t in targets or []), ("radius_tolerance", radius_tolerance)]:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0 (target_radius: or a list of them), got "
                             f"{value!r}.")
    if targets == []:
        raise ValueError("target_radius must not be an empty list.")
    if isinstance(reach, bool) or not isinstance(reach, numbers.Real) or not 0 < reach <= 1:
        raise ValueError(f"reach must be a number in (0, 1] (the share of n within which a target must be reachable),"
                         f" got {reach!r}.")
    return dict(first_look=first_look, targets=None if targets is None else sorted(set(targets)),
                radius_tolerance=float(radius_tolerance), reach=float(reach))


class Rule:
    """The stopping rule and the looks of one `certify` call (see the module docstring): `decide(s, t)` after a look
    of t samples, s of them for cA, returns (L_t, None) to stop or (None, the next look)."""

    def __init__(self, n, alpha, sigma, first_look=100, targets=None, radius_tolerance=0.01, reach=REACH):
        self.n, self.alpha, self.sigma, self.first_look = n, alpha, sigma, first_look
        self.first = min(first_look, n)  # the first look
        self.radius_tolerance = radius_tolerance
        self.targets = None if targets is None else [float(norm.cdf(r / sigma)) for r in targets]  # pA thresholds
        # the horizon within which a target must be reachable: min(n, max(reach n, 2 m)), m = the fewest samples
        # (all votes for cA) that certify the largest target
        self.horizon = n if targets is None else min(n, max(math.ceil(reach * n),
                                                             2 * (self.earliest(0, 0, self.targets[-1], 2**53) or n)))

    def earliest(self, s: int, t: int, p: float, last: int) -> int | None:
        """The first t' in (t, last] at which L_t' >= p if every vote after t went to cA, or None."""
        if not excludes(p, s + last - t, last, self.alpha):
            return None
        lo, hi = t, last  # log M(p) grows with each vote for cA once s / t > p: bisect on the first that excludes
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if excludes(p, s + mid - t, mid, self.alpha) else (mid, hi)
        return hi

    def decide(self, s: int, t: int):
        lower = lower_bound(s, t, self.alpha)
        missing = [p for p in self.targets or [] if lower < p]  # the thresholds of the targets L_t does not certify
        if t >= self.n or self.stops(s, t, lower, missing):
            return lower, None
        look = min(self.n, t + max(self.first_look, math.ceil(t / 20)))
        if missing:  # look as soon as the next target could be certified, if that is before the scheduled look
            look = min(look, self.earliest(s, t, missing[0], look) or look)
        return None, look

    def stops(self, s: int, t: int, lower: float, missing: list[float]) -> bool:
        upper = 1.0 if s == t else float(beta.isf(REACH_LEVEL, s + 1, t - s))  # Clopper-Pearson upper bound
        h = self.horizon
        if self.targets is None:
            best = lower_bound(s + upper * (h - t), h, self.alpha)  # the bound at h if pA were `upper`
            return best < 0.5 or _radius(best, self.sigma) - _radius(lower, self.sigma) <= self.radius_tolerance
        return not missing or h <= t or not excludes(missing[0], s + upper * (h - t), h, self.alpha)


def _radius(pA_lower: float, sigma: float) -> float:
    return sigma * float(norm.ppf(pA_lower)) if pA_lower > 0.5 else 0.0


def estimate(sampler, streams, guesses, n, alpha, sigma, first_look, targets, radius_tolerance, reach):
    """Draw the estimation samples of all images look by look (the images still going share forward passes, one
    host sync per round of looks) until each stops; return (counts, samples drawn, L_tau) per image."""
    rule = Rule(n, alpha, sigma, first_look, targets, radius_tolerance, reach)
    return sampler.run_looks(streams, guesses, rule.first, rule.decide)
