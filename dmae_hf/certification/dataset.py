# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Certify many images into a certification log: the driver of `dmae certify`, a loop over the smoothed classifier g.

    g = SmoothedClassifier.from_pretrained("dmae-tiny-cifar10")
    certify_dataset(g, resolve_inputs(["bundled:cifar10"]), "certify.tsv", n=1000)

For each selected image (Cohen's `--skip` and `--max`): `g.preprocess` (the one decoder and the model's image
processor), then `g.certify` with the seed `image_seed(seed, idx)`, then one row in the log (`log.py`: format,
fsync, lock, resume, `LOG.json`). Several processes split the images or each image's samples (`ranks.py`).

- **Reproducible and order-free.** Image `idx` is certified alone with the seed `mix(seed, idx)`, so its row does
  not depend on which process certifies it, nor on what was certified before (except `time`).
- **Checked before anything is written.** The options (by the core's own checks, on a 1-pixel image), the log and
  its settings (`log.check_log`) are checked before the log, `LOG.json` or the lock is created, and the inputs and
  the model were checked before (they are arguments). A run that fails before its first row leaves no file.
- **Corrupt images** (undecodable bytes, unreadable files, unsupported formats) are reported on stderr with their
  `idx` and skipped; they get no row, and a later run tries them again.
"""

from __future__ import annotations

import sys

import torch

from ..defaults import ALPHA, N0, NOISE_BATCH, SEED, N
from ..image_processing_dmae import decode_image
from ..smoothing import certify, mix_seed
from .log import ABSTAIN, CertificationLog, check_log, format_row
from .ranks import Ranks

MAX_PIXELS = 50_000_000  # larger images are refused from their header, before their pixels are decoded


def image_seed(seed: int, idx: int) -> int:
    """The noise seed of image `idx`: `smoothing.mix_seed(seed, idx)` (SplitMix64), the same in every process and
    every run."""
    return mix_seed(seed, idx)


def selected_indices(num_rows, skip: int, max_index: int):
    """Cohen's selection: every `skip`-th row, stopping at row `max_index` (excluded; -1 = no limit)."""
    stop = num_rows if max_index < 0 else (max_index if num_rows is None else min(num_rows, max_index))
    return None if stop is None else range(0, stop, skip)


def check_options(skip=1, max_index=-1, n0=N0, n=N, alpha=ALPHA, batch_size=NOISE_BATCH, seed=SEED,
                  method="cohen", autocast_dtype=None, method_kwargs=None) -> None:
    """`ValueError` for options that `certify` would refuse at the first image, found before any file is written:
    the core checks them itself, on a 1-pixel image and a constant classifier (microseconds per sample). sigma is
    checked where g is built (`defaults.check_sigma`)."""
    for name, value, low in (("skip", skip, 1), ("max_index", max_index, -1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    certify(lambda z: torch.zeros(len(z), 2), torch.zeros(3, 1, 1), 1.0, n0=n0, n=n, alpha=alpha,
            batch_size=batch_size, seed=seed, method=method, autocast_dtype=autocast_dtype, **(method_kwargs or {}))


def run_settings(g, images, n0, n, alpha, seed, method, method_kwargs, autocast_dtype) -> dict:
    """What `LOG.json` records: a resumed run must have the same (`model` is informative only)."""
    settings = {"model": str(getattr(g.model, "name_or_path", type(g.model).__name__)), "sigma": g.sigma,
                **images.settings(), "n0": n0, "n": n, "alpha": alpha, "seed": seed, "method": method,
                "method_kwargs": dict(method_kwargs or {}),
                "autocast_dtype": None if autocast_dtype is None else str(autocast_dtype).replace("torch.", "")}
    if g.denoiser_name is not None:  # (logs written without a denoiser or an override keep their settings)
        settings["denoiser"] = g.denoiser_name
    if getattr(g, "sigma_override", False):
        settings["sigma_override"] = True
    return settings


def format_duration(seconds: float) -> str:
    """`0.0137 s`, `4.1 s`, `1 min 22 s`, `3 h 05 min`, `2.5 days`."""
    if seconds < 59.95:
        return f"{seconds:.3g} s"
    minutes, s = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min" if hours < 48 else f"{hours / 24:.1f} days"


def projection(certificate, images, per_process, max_samples, adaptive=False) -> str:
    """The line printed after the first image: its samples/s, and the time that `per_process` images take at that
    rate with `max_samples` samples each (`images` in all over the processes; None: the number is unknown)."""
    seconds = max(certificate.elapsed, 1e-9)
    rate = certificate.num_samples / seconds
    line = (f"first image: {certificate.num_samples:,} samples in {format_duration(seconds)} "
            f"({rate:,.0f} samples/s)")
    per_image = max_samples / rate
    if images is None:
        return line + (f"; number of images unknown (the dataset lists no split sizes): "
                       f"{'at most' if adaptive else 'about'} {format_duration(per_image)} per image")
    share = f" ({per_process:,} per process)" if per_process != images else ""
    bound = "at most" if adaptive else "about"  # the adaptive method may stop an image early
    return line + f"; {images:,} images{share} -> {bound} {format_duration(per_process * per_image)}"


def certify_dataset(g, images, out, *, skip=1, max_index=-1, n0=N0, n=N, alpha=ALPHA, batch_size=NOISE_BATCH,
                    seed=SEED, method="cohen", autocast_dtype=None, method_kwargs=None, progress=True,
                    within_image=False, rank=None, world_size=None, on_image=None) -> dict:
    """Certify the selected images of `images` (`inputs.resolve_inputs`) with the smoothed classifier `g` into the
    log `out` (see `log.py` for the format, resuming and locking, `ranks.py` for several processes).

    Rank 0 shows one progress bar over the selection (`progress`) and, after its first image, prints the measured
    samples/s and the projected time. `on_image(idx, preprocessed)` is called for each image before it is certified
    (`dmae certify` prints shrink notes with it). Returns a summary `{"certified", "skipped_corrupt", "already_done",
    "rows"}` (`rows`: rows in the final log, rank 0 only).
    """
    from tqdm.auto import tqdm

    method_kwargs = dict(method_kwargs or {})
    check_options(skip, max_index, n0, n, alpha, batch_size, seed, method, autocast_dtype, method_kwargs)
    settings = run_settings(g, images, n0, n, alpha, seed, method, method_kwargs, autocast_dtype)
    check_log(out, settings)
    ranks = Ranks.join(within_image, rank, world_size)
    try:
        log = CertificationLog(out, settings, rank=ranks.rank, world_size=ranks.world_size, sharded=ranks.sharded,
                               agree=ranks.agree)
        summary = _certify_rows(g, images, log, ranks, tqdm, skip=skip, max_index=max_index, n0=n0, n=n,
                                alpha=alpha, batch_size=batch_size, seed=seed, method=method,
                                autocast_dtype=autocast_dtype, method_kwargs=method_kwargs, progress=progress,
                                on_image=on_image)
        summary["rows"] = ranks.finish(log)
    finally:
        ranks.close()
    return summary


def _certify_rows(g, images, log, ranks, tqdm, *, skip, max_index, n0, n, alpha, batch_size, seed, method,
                  autocast_dtype, method_kwargs, progress, on_image) -> dict:
    rank, done = ranks.rank, log.done
    summary = {"certified": 0, "skipped_corrupt": 0, "already_done": 0, "rows": None}
    device = next(g.parameters(), torch.empty(0)).device
    bar, examples = None, images.examples()
    try:
        selection = selected_indices(images.num_rows, skip, max_index)
        todo = None if selection is None else [k for k, i in enumerate(selection) if i not in done]
        mine = None if todo is None else sum(ranks.mine(k) for k in todo)
        initial = len(done) if selection is None else len(selection) - len(todo)
        base = log.rows_written() if rank == 0 else 0
        bar = tqdm(total=None if selection is None else len(selection), initial=initial, desc="certify", unit="img",
                   disable=not progress or rank > 0, dynamic_ncols=True)
        selected = -1
        for idx, value, label in examples:
            if max_index >= 0 and idx >= max_index:
                break
            if idx % skip:
                continue
            selected += 1
            if not ranks.mine(selected):
                continue
            if idx in done:
                summary["already_done"] += 1
                continue
            try:
                preprocessed = g.preprocess(decode_image(value, MAX_PIXELS), max_pixels=MAX_PIXELS)
            except ValueError as error:
                print(f"warning: skipping idx {idx}: unreadable image ({error})", file=sys.stderr, flush=True)
                summary["skipped_corrupt"] += 1
                continue
            if on_image is not None and rank == 0:
                on_image(idx, preprocessed)
            certificate = g.certify(preprocessed.pixel_values.to(device), n0=n0, n=n, alpha=alpha,
                                    batch_size=batch_size, seed=image_seed(seed, idx), method=method,
                                    autocast_dtype=autocast_dtype, distributed=ranks.within_image, **method_kwargs)
            if log.writer is not None:
                log.writer.append(format_row(idx, ABSTAIN if label is None else int(label), certificate))
            summary["certified"] += 1
            if rank == 0:
                if summary["certified"] == 1:
                    line = projection(certificate, None if todo is None else len(todo), mine, n0 + n,
                                      adaptive=method != "cohen")
                    (tqdm.write if not bar.disable else print)(line, file=sys.stderr)
                bar.update(log.rows_written() - base + initial - bar.n if log.sharded else 1)
    except BaseException:
        log.close(failed=True)
        raise
    finally:
        examples.close()  # a dataset's reader stops now, not at interpreter exit
        if bar is not None:
            bar.close()
    return summary


__all__ = ["certify_dataset", "check_options", "image_seed", "projection", "run_settings", "selected_indices"]
