# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The Monte Carlo machinery under `dmae_hf.smoothing`: noise, seeds, and the counting of f's votes.

Reproducibility: the noise of image x for stage s (`SELECTION`, `ESTIMATION`, `PREDICT`) is cut into blocks of
`NOISE_BLOCK` samples, and block j is drawn from its own generator seeded by mix_seed(seed, s, j). Forward batches
are assembled from (parts of) blocks, possibly of several images, so counts do not depend on `batch_size` nor on the
position of an image in the batch (up to the base classifier's own batch-size-dependent rounding).

Memory: blocks are drawn lazily, one at a time, straight into the forward batch, so a call holds O(batch_size) noisy
samples and O(1) bookkeeping whatever n is (n up to `MAX_SAMPLES`).
"""

from __future__ import annotations

import math
import numbers

import torch

from .defaults import check_sigma

NOISE_BLOCK = 256
SELECTION, ESTIMATION, PREDICT = 0, 1, 2  # the stages of a certificate: their noise is disjoint
MAX_SAMPLES = 2**53  # sample counts stay exact in float64 (the statistics' arithmetic) up to here
_MASK64 = (1 << 64) - 1


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


class NoisyStream:
    """x + N(0, sigma^2 I) copies of one image for one stage of `total` samples, block by block.

    Block j holds min(NOISE_BLOCK, total - j NOISE_BLOCK) samples drawn from a generator seeded by (seed, stage, j),
    so sample t of the stage is the same whatever the slicing into batches. With `world` processes, process `rank`
    draws only the blocks j = rank (mod world); the others' counts are summed in by `Sampler`.
    """

    def __init__(self, x: torch.Tensor, sigma: float, seed: int, stage: int, total: int, rank: int = 0,
                 world: int = 1):
        self.x, self.sigma, self.seed, self.stage, self.total = x, sigma, seed, stage, total
        self.rank, self.world = rank, world
        self.pos = 0  # samples of the stage handed out so far, by all processes together
        self.cached = None  # (j, block) of the block last drawn whole but handed out in parts

    def local(self, m: int) -> int:
        """How many of the next m samples this process draws (O(1), without walking the blocks)."""
        return self._local_below(self.pos + m) - self._local_below(self.pos)

    def _local_below(self, t: int) -> int:
        full, rest = divmod(t, NOISE_BLOCK)  # blocks 0 .. full - 1 lie below t, and `rest` samples of block `full`
        mine = max(0, (full - self.rank + self.world - 1) // self.world)  # j < full with j = rank (mod world)
        return mine * NOISE_BLOCK + (rest if full % self.world == self.rank else 0)

    def take(self, m: int):
        """Advance by m samples; yield this process's part of them, lazily, as segments (block j, start, stop)."""
        end = self.pos + m
        if end > self.total:
            raise RuntimeError(f"noise stream exhausted after {self.total} samples")
        while self.pos < end:
            j, start = divmod(self.pos, NOISE_BLOCK)
            stop = min(NOISE_BLOCK, end - j * NOISE_BLOCK)
            self.pos = j * NOISE_BLOCK + stop
            if j % self.world == self.rank:
                yield j, start, stop

    def fill(self, out: torch.Tensor, j: int, start: int) -> None:
        """Write samples start .. start + len(out) of block j into `out` (a whole block is drawn straight into it)."""
        size = min(NOISE_BLOCK, self.total - j * NOISE_BLOCK)
        if start == 0 and out.shape[0] == size:
            return self._draw(j, out)
        if self.cached is None or self.cached[0] != j:
            self.cached = None  # free the old block before drawing the new one
            block = torch.empty((size, *self.x.shape), dtype=torch.float32, device=self.x.device)
            self._draw(j, block)
            self.cached = (j, block)
        out.copy_(self.cached[1][start : start + out.shape[0]])

    def _draw(self, j: int, out: torch.Tensor) -> None:
        generator = torch.Generator(device=self.x.device)
        generator.manual_seed(mix_seed(self.seed, self.stage, j))
        add_gaussian_noise(self.x.expand(out.shape[0], *self.x.shape), self.sigma, generator=generator, out=out)


# ------------------------------------------------------------------------------------------------------------ counting
def process_group() -> tuple[int, int]:
    """(rank, world size) of the default torch.distributed group, which `distributed=True` requires."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("distributed=True needs an initialised torch.distributed process group (e.g. under "
                         "`accelerate launch` or `torchrun`, after `PartialState()` or `init_process_group`).")
    return dist.get_rank(), dist.get_world_size()


class Sampler:
    """Counts f's votes on noisy copies of several images, packing their samples into shared forward batches.

    With `distributed=True`, the samples of every request are split over the processes of the default
    `torch.distributed` group by noise block, and the counts are summed over processes (one all-reduce per call).

    `progress` is called after every forward batch: True shows a tqdm bar (on rank 0), an object with `update` (a
    tqdm bar) gets `update(samples)`, any other callable gets `progress(done, total)` (this process's samples so far
    and the most the call may draw). An exception raised by it propagates out of `certify`/`predict` at once: no
    further batch runs and nothing is returned, so it is how a caller (a web request past its time) stops the work.
    """

    def __init__(self, base_classifier, x, sigma, seed, batch_size, autocast_dtype, progress, total,
                 distributed=False):
        self.f, self.x, self.sigma, self.seed, self.batch_size = base_classifier, x, sigma, seed, batch_size
        self.device = x.device
        self.autocast_dtype = autocast_dtype
        self.num_classes = None
        self.batches = 0  # forward passes so far
        self.rank, self.world = process_group() if distributed else (0, 1)
        self.total, self.done, self.pbar, self.hook, self.own_bar = total, 0, None, None, False
        if progress is True:
            if self.rank == 0:
                from tqdm.auto import tqdm

                self.pbar, self.own_bar = tqdm(total=total, desc="noisy samples", unit="sample"), True
        elif hasattr(progress, "update"):
            self.pbar = progress
        elif callable(progress):
            self.hook = progress
        elif progress not in (False, None):
            raise ValueError(f"progress must be a bool, a tqdm bar or a callable(done, total), got {progress!r}.")
        self._reset_nonfinite()

    def streams(self, stage: int, total: int) -> list[NoisyStream]:
        return [NoisyStream(xi, self.sigma, self.seed, stage, total, self.rank, self.world) for xi in self.x]

    def count(self, requests: list[tuple[int, NoisyStream, int]]) -> torch.Tensor:
        """Votes (num_images, num_classes) of f on `m` more samples of each (image, stream, m); one host sync."""
        size = min(self.batch_size, max(1, sum(stream.local(m) for _, stream, m in requests)))
        batch = torch.empty((size, *self.x.shape[1:]), dtype=torch.float32, device=self.device)
        counts, owners, filled = None, [], 0
        for i, stream, m in requests:
            for j, start, stop in stream.take(m):
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
        # the one host sync: the votes, [all processes' number of non-finite logits,] this process's bad batches
        cells = self.x.shape[0] * self.num_classes
        host = torch.cat([counts, self.bad.to(counts.device)]).cpu().tolist()
        self._check_finite(*host[cells:])
        return torch.tensor(host[:cells], dtype=torch.long).view(self.x.shape[0], self.num_classes)

    def run_looks(self, streams, guesses, first_look, decide) -> list:
        """Draw the estimation samples of all images look by look until each stops. Every image has its own looks:
        in each round the images still going draw up to their next look together (shared forward passes, one host
        sync per round), and `decide(nA, t)`, after t samples with nA votes for the image's guess, returns
        (pA_lower, None) to stop or (None, the next look). An image's looks depend on its own votes only, so its
        certificate is the same alone and in a batch. Returns (counts, samples drawn, pA_lower) per image."""
        counts, results = [None] * len(streams), [None] * len(streams)
        drawn, looks = [0] * len(streams), [first_look] * len(streams)
        while active := [i for i, r in enumerate(results) if r is None]:
            votes = self.count([(i, streams[i], looks[i] - drawn[i]) for i in active])
            for i in active:
                counts[i] = votes[i] if counts[i] is None else counts[i] + votes[i]
                drawn[i] = looks[i]
                lower, looks[i] = decide(int(counts[i][guesses[i]]), drawn[i])
                if looks[i] is None:
                    results[i] = (counts[i].tolist(), drawn[i], lower)
        return results

    def _reset_nonfinite(self):
        # running [total, batches with some, number, size and count of the first such batch] of this process's
        # non-finite logits, kept on the device: O(1) memory and no host sync per batch
        self.bad = torch.zeros(5, dtype=torch.long, device=self.device)

    def _check_finite(self, *stats) -> None:
        """Refuse the votes of a call in which f returned NaN or Inf: argmax turns them into votes (NaN is the
        maximum, Inf ties), i.e. into a certificate about a classifier whose output is undefined."""
        total, local, batches, first, size, count = stats if self.world > 1 else (stats[0], *stats)
        self._reset_nonfinite()
        if not total:
            return
        where = (f"forward batch {first} (of {size} noisy samples) has {count}" if batches
                 else "they are in another process's batches")
        more = f"; {batches - 1} later batches have some too" if batches > 1 else ""
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
        counts = torch.cat([counts.to(device), self.bad[:1].to(device)])
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
        self._track_nonfinite(logits, batch.shape[0])
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
        self.done += batch.shape[0]
        if self.pbar is not None:
            self.pbar.update(batch.shape[0])
        if self.hook is not None:
            self.hook(self.done, self.total)
        return counts

    def _track_nonfinite(self, logits, m):
        """Fold this batch's number of non-finite logits into `self.bad` on the device (read with the votes)."""
        b = logits.isfinite().logical_not().sum()
        first = (self.bad[1] == 0) & (b > 0)  # this is the first batch with some
        self.bad[0] += b
        self.bad[2] = torch.where(first, self.batches, self.bad[2])
        self.bad[3] = torch.where(first, m, self.bad[3])
        self.bad[4] = torch.where(first, b, self.bad[4])
        self.bad[1] += (b > 0).long()

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
        if self.own_bar:
            self.pbar.close()


# ---------------------------------------------------------------------------------------------------------- validation
def check_int(name, value, minimum=1, maximum=MAX_SAMPLES):
    """`value` as an int in [minimum, maximum]; a `ValueError` naming it otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} = {value} is above the largest sample count supported, 2**53 = {MAX_SAMPLES}.")
    return int(value)


def prepare_inputs(base_classifier, x, sigma, alpha, batch_size, seed, autocast_dtype):
    """Validate the arguments common to `certify` and `predict`; return x as a float32 (B, C, H, W) tensor on the
    classifier's device, and whether x was one image."""
    if not callable(base_classifier):
        raise ValueError(f"base_classifier must be callable (a torch module or function), got {base_classifier!r}.")
    if not isinstance(x, torch.Tensor) or x.ndim not in (3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a (C, H, W) or (B, C, H, W) tensor of [0, 1] pixels, got {shape}.")
    single = x.ndim == 3
    x = x.unsqueeze(0) if single else x
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch.")
    if x.numel() == 0:
        raise ValueError(f"x is an empty image of shape {tuple(x.shape[1:])} (C, H, W): it has no pixels to certify.")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor of [0, 1] pixels, got dtype {x.dtype}.")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or Inf values.")
    lo, hi = x.min().item(), x.max().item()
    if lo < 0 or hi > 1:
        raise ValueError(f"x must be in [0, 1] pixel space (got values in [{lo:.3g}, {hi:.3g}]).")
    check_sigma(sigma)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 < alpha < 1 or math.isnan(alpha):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}.")
    check_int("batch_size", batch_size)
    check_int("seed", seed, minimum=0, maximum=None)
    if autocast_dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype!r}.")
    module = (base_classifier if isinstance(base_classifier, torch.nn.Module)
              else getattr(base_classifier, "__self__", None))
    param = next(module.parameters(), None) if isinstance(module, torch.nn.Module) else None
    device = param.device if param is not None else x.device
    return x.to(device=device, dtype=torch.float32), single
