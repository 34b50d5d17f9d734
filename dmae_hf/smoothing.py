"""Randomized smoothing: PREDICT and CERTIFY of Cohen, Rosenfeld & Kolter (2019), plus a sequential CERTIFY.

The smoothed classifier of a base classifier f is

    g(x) = argmax_c P(f(x + eps) = c),   eps ~ N(0, sigma^2 I),

with the noise added to [0, 1] pixels. If the top class has probability pA >= pA_lower > 1/2, then g is constant on
the L2 ball of radius R = sigma * PhiInv(pA_lower) around x (Cohen et al., Theorem 1).

Everything here is Monte Carlo over noisy copies of x, so each result holds with probability >= 1 - alpha:

* `predict` returns g(x), or abstains; P(it returns a class other than g(x)) <= alpha.
* `certify` returns (class, radius), or abstains; P(it returns a class c with a radius that the true
  P(f(x + eps) = c) does not support, i.e. pA(c) < pA_lower) <= alpha.

No certificate rests on undefined votes: f must return a real floating (N, K) tensor on x's device with a fixed K,
and NaN/Inf logits (which argmax would count as votes) raise a `ValueError` before any decision is made.

Reproducibility: the noise of image x for stage s ("selection", "estimation", "predict") is cut into blocks of
`NOISE_BLOCK` samples, and block j is drawn from its own generator seeded by mix(seed, s, j). Forward batches are
assembled from (parts of) blocks, possibly of several images, so counts do not depend on `batch_size` nor on the
position of an image in the batch (up to the base classifier's own batch-size-dependent rounding).
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

NOISE_BLOCK = 256
_SELECTION, _ESTIMATION, _PREDICT = 0, 1, 2
_MASK64 = (1 << 64) - 1


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


def look_schedule(n: int, first_look: int = 1000) -> list[int]:
    """Cumulative sample counts at which `method="adaptive"` looks: first_look, 2 first_look, 4 first_look, ..., n."""
    looks, m = [], min(first_look, n)
    while m < n:
        looks.append(m)
        m *= 2
    return looks + [n]


# --------------------------------------------------------------------------------------------------------------- noise
def add_gaussian_noise(
    pixel_values: torch.Tensor,
    sigma: float,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
):
    """`x + N(0, sigma^2 I)` drawn in float32 in [0, 1] pixel space: the one noise sampler of the package
    (DMAE pre-training and noisy fine-tuning in `modeling_dmae` use it too).

    `out` (float32, shape of `pixel_values`, e.g. a slice of a batch buffer) receives the result without a copy.
    """
    noise = torch.randn(pixel_values.shape, generator=generator, device=pixel_values.device, dtype=torch.float32,
                        out=out)
    return noise.mul_(sigma).add_(pixel_values.float())


def mix_seed(*values: int) -> int:
    """SplitMix64 chained over the values: a fixed, hash-free 64-bit seed for a (seed, stage, block) triple, and
    (`certify_dataset.image_seed`) for a (seed, idx) pair.

    Kept rather than `numpy.random.SeedSequence`, which mixes differently: it would give other seeds, so other noise,
    and change every certificate and log already written. Certificates must stay identical for the same seeds."""
    z = 0
    for v in values:
        z = (z ^ (v & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        z ^= z >> 31
    return z


class _NoisyStream:
    """x + N(0, sigma^2 I) copies of one image for one stage of `total` samples, block by block.

    Block j holds min(NOISE_BLOCK, total - j NOISE_BLOCK) samples drawn from a generator seeded by (seed, stage, j),
    so sample t of the stage is the same whatever the slicing into batches. With `world` processes, process `rank`
    draws only the blocks j = rank (mod world); the others' counts are summed in by `_Sampler`.
    """

    def __init__(self, x: torch.Tensor, sigma: float, seed: int, stage: int, total: int, rank: int = 0,
                 world: int = 1):
        self.x, self.sigma, self.seed, self.stage, self.total = x, sigma, seed, stage, total
        self.rank, self.world = rank, world
        self.pos = 0  # samples of the stage handed out so far, by all processes together
        self.cached = None  # (j, block) of the block last drawn whole but handed out in parts

    def take(self, m: int) -> list[tuple[int, int, int]]:
        """Advance by m samples; return this process's part of them as segments (block j, start, stop)."""
        end = self.pos + m
        if end > self.total:
            raise RuntimeError(f"noise stream exhausted after {self.total} samples")
        segments = []
        while self.pos < end:
            j, start = divmod(self.pos, NOISE_BLOCK)
            stop = min(NOISE_BLOCK, end - j * NOISE_BLOCK)
            if j % self.world == self.rank:
                segments.append((j, start, stop))
            self.pos = j * NOISE_BLOCK + stop
        return segments

    def fill(self, out: torch.Tensor, j: int, start: int) -> None:
        """Write samples start .. start + len(out) of block j into `out` (a whole block is drawn straight into it)."""
        size = min(NOISE_BLOCK, self.total - j * NOISE_BLOCK)
        if start == 0 and out.shape[0] == size:
            return self._draw(j, out)
        if self.cached is None or self.cached[0] != j:
            block = torch.empty((size, *self.x.shape), dtype=torch.float32, device=self.x.device)
            self._draw(j, block)
            self.cached = (j, block)
        out.copy_(self.cached[1][start : start + out.shape[0]])

    def _draw(self, j: int, out: torch.Tensor) -> None:
        generator = torch.Generator(device=self.x.device)
        generator.manual_seed(mix_seed(self.seed, self.stage, j))
        add_gaussian_noise(self.x.expand(out.shape[0], *self.x.shape), self.sigma, generator=generator, out=out)


# ------------------------------------------------------------------------------------------------------------ sampling
def _process_group() -> tuple[int, int]:
    """(rank, world size) of the default torch.distributed group, which `distributed=True` requires."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("distributed=True needs an initialised torch.distributed process group (e.g. under "
                         "`accelerate launch` or `torchrun`, after `PartialState()` or `init_process_group`).")
    return dist.get_rank(), dist.get_world_size()


class _Sampler:
    """Counts f's votes on noisy copies of several images, packing their samples into shared forward batches.

    With `distributed=True`, the samples of every request are split over the processes of the default
    `torch.distributed` group by noise block, and the counts are summed over processes (one all-reduce per call).
    """

    def __init__(self, base_classifier, x, sigma, seed, batch_size, autocast_dtype, progress, total,
                 distributed=False):
        self.f, self.x, self.sigma, self.seed, self.batch_size = base_classifier, x, sigma, seed, batch_size
        self.device = x.device
        self.autocast_dtype = autocast_dtype
        self.num_classes = None
        self.batches, self.nonfinite = 0, []  # forward passes so far; (number, size, non-finite count) of this call
        self.rank, self.world = _process_group() if distributed else (0, 1)
        self.pbar = None
        if progress and self.rank == 0:
            from tqdm.auto import tqdm

            self.pbar = tqdm(total=total, desc="noisy samples", unit="sample")

    def streams(self, stage: int, total: int) -> list[_NoisyStream]:
        return [_NoisyStream(xi, self.sigma, self.seed, stage, total, self.rank, self.world) for xi in self.x]

    def count(self, requests: list[tuple[int, _NoisyStream, int]]) -> torch.Tensor:
        """Votes (num_images, num_classes) of f on `m` more samples of each (image, stream, m); one host sync."""
        work = [(i, stream, seg) for i, stream, m in requests for seg in stream.take(m)]
        size = min(self.batch_size, max(1, sum(stop - start for _, _, (_, start, stop) in work)))
        batch = torch.empty((size, *self.x.shape[1:]), dtype=torch.float32, device=self.device)
        counts, owners, filled = None, [], 0
        for i, stream, (j, start, stop) in work:
            while start < stop:
                k = min(stop - start, size - filled)
                stream.fill(batch[filled : filled + k], j, start)
                owners.append((i, k))
                filled, start = filled + k, start + k
                if filled == size:
                    counts = self._forward(batch, owners, counts)
                    owners, filled = [], 0
        if filled:
            counts = self._forward(batch[:filled], owners, counts)
        if self.world > 1:
            counts = self._all_reduce(counts)
        # the one host sync: the votes, [all processes' number of non-finite logits,] each local batch's number
        cells = self.x.shape[0] * self.num_classes
        host = torch.cat([counts, *(b.to(counts.device).view(1) for _, _, b in self.nonfinite)]).cpu()
        bad = host[cells:].tolist()
        self._check_finite(bad.pop(0) if self.world > 1 else sum(bad), bad)
        return host[:cells].view(self.x.shape[0], self.num_classes)

    def _check_finite(self, total: int, bad: list[int]) -> None:
        """Refuse the votes of a call in which f returned NaN or Inf (`total` of them, `bad[b]` in the b-th local
        batch): argmax turns them into votes (NaN is the maximum, Inf ties), i.e. into a certificate about a
        classifier whose output is undefined."""
        hits = [(number, size, b) for (number, size, _), b in zip(self.nonfinite, bad, strict=True) if b]
        self.nonfinite = []
        if not total:
            return
        where = (f"forward batch {hits[0][0]} (of {hits[0][1]} noisy samples) has {hits[0][2]}" if hits
                 else "they are in another process's batches")
        more = f"; {len(hits) - 1} later batches have some too" if len(hits) > 1 else ""
        raise ValueError(f"base_classifier returned {total} non-finite logits (NaN or Inf): {where}{more}. No "
                         "prediction or certificate is made from undefined votes; check the model's weights and "
                         "inputs (torch.isfinite(logits).all() must hold).")

    def _all_reduce(self, counts):
        """Sum the counts and the number of non-finite logits of all processes (a process that drew no sample learns
        the number of classes here). The total of non-finite logits goes last, so every process refuses together."""
        import torch.distributed as dist

        device = self.device if dist.get_backend() != "gloo" else torch.device("cpu")
        k = torch.tensor([self.num_classes or 0], device=device)
        dist.all_reduce(k, op=dist.ReduceOp.MAX)
        if self.num_classes not in (None, int(k)):
            raise ValueError(f"processes disagree on the number of classes ({self.num_classes} vs {int(k)}).")
        self.num_classes = int(k)
        if counts is None:
            counts = torch.zeros(self.x.shape[0] * self.num_classes, dtype=torch.long, device=device)
        bad = sum((b.to(device) for _, _, b in self.nonfinite), torch.zeros((), dtype=torch.long, device=device))
        counts = torch.cat([counts.to(device), bad.view(1)])
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        return counts

    def _forward(self, batch, owners, counts):
        if self.autocast_dtype is None:
            logits = self.f(batch)
        else:
            with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
                logits = self.f(batch)
        self.batches += 1
        self._check_logits(logits, batch.shape[0])
        # counted on the device and read back with the votes in `count`, so the check costs no host sync per batch
        self.nonfinite.append((self.batches, batch.shape[0], logits.isfinite().logical_not().sum()))
        if self.num_classes is None:
            self.num_classes = logits.shape[1]
        elif logits.shape[1] != self.num_classes:
            raise ValueError(f"base_classifier returned {logits.shape[1]} classes after {self.num_classes}.")
        num_images, k = self.x.shape[0], self.num_classes
        if counts is None:
            counts = torch.zeros(num_images * k, dtype=torch.long, device=logits.device)
        # votes of sample s go to counts[owner(s) * k + class]; index_add_ (unlike bincount) never syncs with the host
        votes = logits.argmax(dim=1)
        if all(i == owners[0][0] for i, _ in owners):
            slots = votes + owners[0][0] * k
        else:
            ids = torch.tensor([i for i, _ in owners], device=logits.device)
            sizes = torch.tensor([m for _, m in owners], device=logits.device)
            slots = torch.repeat_interleave(ids, sizes, output_size=len(votes)) * k + votes
        counts.index_add_(0, slots, torch.ones_like(slots))
        if self.pbar is not None:
            self.pbar.update(batch.shape[0])
        return counts

    def _check_logits(self, logits, m):
        """Refuse anything but a real floating (m, K >= 1) tensor of logits on the sampler's device."""
        expected = f"base_classifier must map a ({m}, C, H, W) batch to a ({m}, num_classes) tensor of logits"
        if isinstance(logits, (tuple, list, dict)):  # ModelOutput is a dict
            raise ValueError(f"{expected}; got a {type(logits).__name__}. Pass a callable that returns the logits "
                             "tensor itself, e.g. `lambda x: model(x).logits` or `model.base_classifier`.")
        if not isinstance(logits, torch.Tensor):
            raise ValueError(f"{expected}; got {type(logits).__name__}.")
        if logits.ndim != 2 or logits.shape[0] != m or logits.shape[1] == 0:
            raise ValueError(f"{expected}; got shape {tuple(logits.shape)} in forward batch {self.batches}.")
        if not logits.is_floating_point():
            raise ValueError(f"{expected}; got dtype {logits.dtype} (logits must be real floating-point scores).")
        if logits.device != self.device:
            raise ValueError(f"{expected}; got logits on {logits.device} for inputs on {self.device} (return the "
                             "logits on the input's device).")

    def close(self):
        if self.pbar is not None:
            self.pbar.close()


# ---------------------------------------------------------------------------------------------------------- validation
def _check_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _prepare(base_classifier, x, sigma, alpha, batch_size, seed, autocast_dtype):
    """Validate the common arguments; return x as a float32 (B, C, H, W) tensor on the classifier's device."""
    if not callable(base_classifier):
        raise ValueError(f"base_classifier must be callable (a torch module or function), got {base_classifier!r}.")
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a (C, H, W) or (B, C, H, W) tensor of [0, 1] pixels, got {shape}.")
    single = x.ndim == 3
    x = x.unsqueeze(0) if single else x
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch.")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor of [0, 1] pixels, got dtype {x.dtype}.")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or Inf values.")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"x must be in [0, 1] pixel space (got values in [{lo:.3g}, {hi:.3g}]).")
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0 (the noise level in [0, 1] pixel units), got {sigma!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}.")
    _check_int("batch_size", batch_size)
    _check_int("seed", seed, minimum=0)
    if autocast_dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype!r}.")
    module = (base_classifier if isinstance(base_classifier, torch.nn.Module)
              else getattr(base_classifier, "__self__", None))
    param = next(module.parameters(), None) if isinstance(module, torch.nn.Module) else None
    device = param.device if param is not None else x.device
    return x.to(device=device, dtype=torch.float32), single


# ---------------------------------------------------------------------------------------------------------- public API
@torch.inference_mode()
def predict(base_classifier, x, sigma, n=N, alpha=ALPHA, batch_size=NOISE_BATCH, seed=SEED, *, autocast_dtype=None,
            progress=False, distributed=False):
    """Cohen et al.'s PREDICT: g(x), or abstain.

    Draw n noisy samples, let nA >= nB be the two largest class counts, and return the top class iff the two-sided
    binomial test of nA ~ Bin(nA + nB, 1/2) rejects at level alpha; otherwise abstain (`prediction=None`).
    Guarantee: P(the returned class is not g(x)) <= alpha.

    Args:
        base_classifier: callable mapping a float32 (N, C, H, W) batch of noisy [0, 1] images to logits (N, K).
        x: (C, H, W) image -> one `Prediction`; (B, C, H, W) batch -> a list (each image uses `seed`).
        sigma: noise level in [0, 1] pixel units.
        autocast_dtype: run f under `torch.autocast` in this dtype (the noise is drawn and added in float32 first).
        distributed: split the samples over the processes of the default `torch.distributed` group (see `certify`).
    """
    start = time.perf_counter()
    x, single = _prepare(base_classifier, x, sigma, alpha, batch_size, seed, autocast_dtype)
    n = _check_int("n", n)
    sampler = _Sampler(base_classifier, x, sigma, seed, batch_size, autocast_dtype, progress, total=n * len(x),
                       distributed=distributed)
    streams = sampler.streams(_PREDICT, n)
    counts = sampler.count([(i, s, n) for i, s in enumerate(streams)]).tolist()
    sampler.close()
    elapsed = (time.perf_counter() - start) / len(x)
    results = []
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

    method="cohen": draw n0 samples and guess cA = argmax of their counts; draw n fresh samples with nA votes for cA;
    pA_lower = one-sided Clopper-Pearson lower bound at level alpha; abstain if pA_lower < 1/2, else return cA with
    radius sigma * PhiInv(pA_lower). Guarantee: P(pA(cA) < pA_lower and not abstained) <= alpha, so with probability
    >= 1 - alpha the returned class is g(x) and g is constant on the returned L2 ball.

    method="adaptive": the same selection, then the estimation samples are drawn in the pre-scheduled looks
    `look_schedule(n, first_look)` = N_1 < N_2 < ... < N_K = n (N_1 = first_look, doubling). At look k the
    Clopper-Pearson bounds of the cumulative nA out of N_k are taken at level alpha / K. By the union bound, with
    probability >= 1 - alpha every look's lower bound is below pA(cA) simultaneously, so the bound reported at
    whichever look the rule below stops is valid, whatever the rule (it only decides when to stop):
      (a) abstain when the upper bound is < 1/2 (hopeless);
      (b) `target_radius` (a radius or a list of the radii the user cares about; default None = off): stop when the
          largest is certified, or when the smallest one not yet certified is out of reach: even nA = upper bound of
          pA times n votes out of n would not certify it;
      (c) stop when even nA + (n - N_k) votes out of n would raise the radius by <= `radius_tolerance` (default 0);
      (d) stop when the point estimate nA / N_k extrapolated to n would raise it by <= `estimate_tolerance`
          (default None = off; a heuristic, still valid).
    The price is alpha / K instead of alpha at the full budget, i.e. a slightly smaller maximal radius.
    `num_samples` records the samples drawn, and `counts` the votes of the estimation samples drawn.

    Args:
        base_classifier: callable mapping a float32 (N, C, H, W) batch of noisy [0, 1] images to logits (N, K).
        x: (C, H, W) image -> one `Certificate`; (B, C, H, W) batch -> a list (each image uses `seed`, and gets
            the same certificate as alone).
        sigma: noise level in [0, 1] pixel units; the radius is in the L2 norm of [0, 1] pixels of x.
        n0, n: selection and estimation samples (n0 <= n). alpha: failure probability.
        batch_size: noisy samples per forward pass (samples of several images share a pass).
        autocast_dtype: run f under `torch.autocast` in this dtype (the noise is drawn and added in float32 first).
        distributed: split each image's samples over the processes of the default `torch.distributed` group (call
            it on every process with the same arguments): noise block j is drawn by rank j mod world size and the
            counts are summed over processes, so every process returns the certificates one process would.
        method_kwargs: for "adaptive", `first_look` (1000), `target_radius`, `radius_tolerance`,
            `estimate_tolerance`.
    """
    start = time.perf_counter()
    x, single = _prepare(base_classifier, x, sigma, alpha, batch_size, seed, autocast_dtype)
    n0, n = _check_int("n0", n0), _check_int("n", n)
    if n0 > n:
        raise ValueError(f"n0 ({n0}) must not exceed n ({n}): the selection sample is the small one.")
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}.")
    unknown = sorted(set(method_kwargs) - set(METHODS[method]))
    if unknown:
        takes = ", ".join(METHODS[method]) or "no extra options"
        raise ValueError(f"method={method!r} takes {takes}; got {unknown}.")
    options = _adaptive_options(n, **method_kwargs) if method == "adaptive" else None
    sampler = _Sampler(base_classifier, x, sigma, seed, batch_size, autocast_dtype, progress, total=(n0 + n) * len(x),
                       distributed=distributed)
    selection = sampler.count([(i, s, n0) for i, s in enumerate(sampler.streams(_SELECTION, n0))])
    guesses = selection.argmax(dim=1).tolist()  # first maximal class on ties
    estimation = sampler.streams(_ESTIMATION, n)
    if method == "cohen":
        counts = sampler.count([(i, s, n) for i, s in enumerate(estimation)]).tolist()
        decisions = [_certificate(c, cA, n, alpha, sigma, n0, n, seed, "cohen")
                     for c, cA in zip(counts, guesses, strict=True)]
    else:
        decisions = _adaptive(sampler, estimation, guesses, n0, n, alpha, sigma, seed, **options)
    sampler.close()
    elapsed = (time.perf_counter() - start) / len(x)
    results = [Certificate(**decision, elapsed=elapsed) for decision in decisions]
    return results[0] if single else results


def _certificate(counts, cA, drawn, level, sigma, n0, n, seed, method, alpha=None) -> dict:
    """CERTIFY's decision from nA = counts[cA] votes out of `drawn`, with a Clopper-Pearson bound at `level`: the
    fields of its `Certificate` but `elapsed`, which `certify` adds once all images are decided."""
    pA_lower = clopper_pearson_lower(counts[cA], drawn, level)
    abstain = pA_lower < 0.5
    return dict(prediction=None if abstain else cA, radius=0.0 if abstain else radius_from_bound(pA_lower, sigma),
                pA_lower=pA_lower, counts=counts, n0=n0, n=n, alpha=level if alpha is None else alpha,
                sigma=float(sigma), seed=seed, method=method, num_samples=n0 + drawn)


def _adaptive_options(n, first_look=1000, target_radius=None, radius_tolerance=0.0, estimate_tolerance=None):
    _check_int("first_look", first_look)
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


def _certifies(lower: float, sigma: float, radius: float) -> bool:
    """Whether a lower bound `lower` on pA certifies `radius`."""
    return lower >= 0.5 and radius_from_bound(lower, sigma) >= radius


def _reachable(radius: float, upper: float, n: int, level: float, sigma: float) -> bool:
    """Whether `radius` could be certified with n samples if pA were at its upper confidence bound `upper`."""
    return _certifies(clopper_pearson_lower(min(n, math.ceil(upper * n)), n, level), sigma, radius)


def _adaptive(sampler, streams, guesses, n0, n, alpha, sigma, seed, looks, targets, radius_tolerance,
              estimate_tolerance):
    """Sequential estimation over the pre-scheduled `looks`, each at level alpha / len(looks); see `certify`."""
    level = alpha / len(looks)
    counts = [None] * len(streams)
    results = [None] * len(streams)
    drawn = 0
    for look in looks:
        active = [i for i, r in enumerate(results) if r is None]
        if not active:
            break
        votes = sampler.count([(i, streams[i], look - drawn) for i in active])
        drawn = look
        for i in active:
            c = votes[i] if counts[i] is None else counts[i] + votes[i]
            counts[i] = c
            if _stops(int(c[guesses[i]]), look, n, level, sigma, targets, radius_tolerance, estimate_tolerance):
                results[i] = _certificate(c.tolist(), guesses[i], look, level, sigma, n0, n, seed, "adaptive", alpha)
    return results


def _stops(nA, look, n, level, sigma, targets, radius_tolerance, estimate_tolerance) -> bool:
    """The stopping rule of method="adaptive" at the look of `look` samples, nA of them for cA (see `certify`). It
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
