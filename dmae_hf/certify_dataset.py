# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Certify a dataset image by image into a certification log (Cohen et al.'s TSV format, two extra columns).

The log has the header `idx label predict radius correct time pA_lower samples` (tab-separated), one row per image,
sorted by `idx` (the row number in the split):

- `predict` is the certified class, or **-1 when CERTIFY abstains** (Cohen's convention; the Python API says None);
- `radius` (L2, [0, 1] pixel units) and `pA_lower` are rounded *down* to 6 decimals, so a printed radius never
  exceeds the certified one (Cohen's logs print 3 significant digits, which can round 0.2496 up to 0.25);
- `correct` is 1 when `predict == label` (never for an abstention), `time` the seconds spent on the image, and
  `samples` the forward samples drawn (n0 + n for Cohen's method, fewer when the adaptive method stops early).

How a run behaves:

- **Reproducible and order-free.** Image `idx` is certified alone with the seed `mix(seed, idx)`, so its row does
  not depend on which process certifies it, nor on what was certified before (except `time`).
- **Resumable.** Each row is appended with one `write` followed by `fsync`. A restarted run reads the existing
  log(s), drops a torn last line (no trailing newline) and certifies only the missing indices, so a killed run
  (even SIGKILL) ends with every selected row exactly once. `LOG.json` records the settings (n0, n, alpha, seed,
  method, sigma, dataset, ...), and a restart with other settings is refused rather than mixing rows.
- **Corrupt images** (undecodable bytes, unreadable files, unsupported formats) are reported on stderr with their
  `idx` and skipped; they get no row, and a later run tries them again.
- **Multi-process.** Under `torchrun` / `accelerate launch` (`RANK`, `WORLD_SIZE`), process r certifies the k-th
  selected image when k % world_size == r, into `LOG.rank{r}`. Rank 0 waits for the others (a gloo barrier) and
  merges all shards into `LOG`, sorted by idx; the rows are the ones a single process writes, except `time`.
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from datetime import timedelta
from pathlib import Path

import torch

from .smoothing import _mix

COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "pA_lower", "samples")
HEADER = "\t".join(COLUMNS) + "\n"
ABSTAIN = -1


# --------------------------------------------------------------------------------------------------------- log files
def image_seed(seed: int, idx: int) -> int:
    """The noise seed of image `idx`: a SplitMix64 mix of (seed, idx), the same in every process and every run."""
    return _mix(seed, idx)


def _round_down(value: float, decimals: int = 6) -> str:
    scale = 10**decimals
    return f"{math.floor(value * scale) / scale:.{decimals}f}"


def format_row(idx: int, label: int, certificate) -> str:
    """One log line for a `dmae_hf.smoothing.Certificate`; abstentions get predict = -1 (Cohen's log format)."""
    predict = ABSTAIN if certificate.abstained else certificate.prediction
    correct = int(not certificate.abstained and predict == label)
    fields = (idx, label, predict, _round_down(certificate.radius), correct, f"{certificate.elapsed:.3f}",
              _round_down(certificate.pA_lower), certificate.num_samples)
    return "\t".join(map(str, fields)) + "\n"


def read_rows(path) -> dict[int, str]:
    """The complete rows of a log, by idx (the first copy wins). A torn last line is ignored; a missing file is empty.

    Raises `ValueError` if the file does not start with this module's header (a log of another format).
    """
    path = Path(path)
    if not path.exists():
        return {}
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")[:-1]  # the part after the last newline is torn (or empty)
    if not lines:
        return {}
    if lines[0] + "\n" != HEADER:
        raise ValueError(f"{path} is not a dmae certification log (header {lines[0]!r}, expected {HEADER.strip()!r});"
                         " choose another --out.")
    rows = {}
    for line in lines[1:]:
        if line:
            rows.setdefault(int(line.split("\t", 1)[0]), line + "\n")
    return rows


class LogWriter:
    """Appends rows to one log file that only this process writes: one `write` + `fsync` per row.

    Opening repairs a file left by a killed run: a torn last line is cut off, and a missing header is written.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        keep = data.rfind(b"\n") + 1
        if keep < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(keep)
                os.fsync(f.fileno())
        self.file = open(self.path, "ab", buffering=0)
        if keep == 0:
            self.append(HEADER)

    def append(self, line: str) -> None:
        self.file.write(line.encode("utf-8"))
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def shard_path(out, rank: int) -> Path:
    return Path(f"{out}.rank{rank}")


def shard_paths(out) -> list[Path]:
    """The per-process logs `LOG.rank{r}` of `out`, from this run or an earlier one with any number of processes."""
    out = Path(out)
    return sorted(p for p in out.parent.glob(f"{out.name}.rank*") if p.name[len(out.name) + 5:].isdigit())


def merge_logs(out) -> int:
    """Merge `out` and its shards into `out` (sorted by idx, one row per idx; atomic replace); delete the shards.
    Returns the number of rows."""
    out, shards = Path(out), shard_paths(out)
    rows = {}
    for path in [out, *shards]:
        for idx, line in read_rows(path).items():
            rows.setdefault(idx, line)
    tmp = Path(f"{out}.tmp")
    with open(tmp, "wb") as f:
        f.write((HEADER + "".join(rows[idx] for idx in sorted(rows))).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    for path in shards:
        path.unlink()
    return len(rows)


def check_settings(out, settings: dict, has_rows: bool, rank: int = 0) -> None:
    """Refuse to resume a log written with other certification settings (`LOG.json` records them).

    Rank 0 writes `LOG.json` (atomically) while the log has no rows yet. Only the `model` entry is informative: the
    same checkpoint can be spelled in several ways, so it is not compared.
    """
    path = Path(f"{out}.json")
    if has_rows and path.exists():
        saved = json.loads(path.read_text())
        changed = [f"{k}={saved.get(k)!r} (now {v!r})" for k, v in settings.items()
                   if k != "model" and saved.get(k) != v]
        if changed:
            raise ValueError(f"{out} was written with other settings: {', '.join(changed)}. Resume with the same "
                             f"settings, or choose another --out.")
    elif rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(settings, indent=1) + "\n")
        os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------------- data
def load_examples(dataset: str, split: str, image_column: str | None, label_column: str):
    """Stream a split (a local Hub-layout folder or a Hub id) with the images left undecoded.

    Returns `(iterable dataset, image column, number of rows or None)`.
    """
    import datasets

    ds = datasets.load_dataset(dataset, split=split, streaming=True)
    features = ds.features or {}
    if image_column is None:
        image_column = next((name for name, f in features.items() if isinstance(f, datasets.Image)), None)
        if image_column is None:
            raise ValueError(f"No image column found in {dataset!r} (columns: {list(features)}); pass --image-column.")
    for name in (image_column, label_column):
        if features and name not in features:
            raise ValueError(f"Column {name!r} not in {dataset!r} (columns: {list(features)}).")
    if isinstance(features.get(image_column), datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))  # decode ourselves: a bad image is one row
    if features:
        ds = ds.select_columns([image_column, label_column])
    try:
        num_rows = ds.info.splits[split].num_examples or None
    except (AttributeError, KeyError, TypeError):
        num_rows = None
    return ds, image_column, num_rows


def decode_image(value):
    """A dataset cell (PIL image, `{"bytes", "path"}`, bytes, path or array) -> a decoded image; `ValueError` if not."""
    from PIL import Image

    try:
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            value = Image.open(io.BytesIO(value))
        elif isinstance(value, (str, os.PathLike)):
            value = Image.open(value)
        if isinstance(value, Image.Image):
            value.load()
        elif value is None:
            raise ValueError("no image data")
    except ValueError:
        raise
    except Exception as error:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, struct.error, ...
        raise ValueError(f"{type(error).__name__}: {error}") from error
    return value


def selected_indices(num_rows, skip: int, max_index: int):
    """Cohen's selection: every `skip`-th row, stopping at row `max_index` (excluded; -1 = no limit)."""
    stop = num_rows if max_index < 0 else (max_index if num_rows is None else min(num_rows, max_index))
    return None if stop is None else range(0, stop, skip)


# --------------------------------------------------------------------------------------------------- distribution
def distributed_context() -> tuple[int, int]:
    """(rank, world size) from the environment that `torchrun` and `accelerate launch` set; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def barrier(world_size: int) -> None:
    """Wait for every process (a gloo process group, created on first use, with a week-long timeout)."""
    if world_size <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(days=7))
    dist.barrier()


def close_process_group(world_size: int) -> None:
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------- driver
def certify_dataset(pipe, dataset, out, *, split="test", skip=1, max_index=-1, image_column=None,
                    label_column="label", n0=100, n=100_000, alpha=0.001, batch_size=1000, seed=0, method="cohen",
                    autocast_dtype=None, method_kwargs=None, progress=True, rank=None, world_size=None,
                    within_image=False) -> dict:
    """Certify the selected images of `dataset[split]` with a `RandomizedSmoothingPipeline` into the log `out`.

    See the module docstring for the log format, resuming and multi-process runs. With `within_image=True`, every
    process takes part in every image instead: each image's noise blocks are split over the processes
    (`smoothing.certify(..., distributed=True)`), and rank 0 writes the log. Returns a summary
    `{"certified", "skipped_corrupt", "already_done", "rows"}` (`rows`: rows in the final log, rank 0 only).
    """
    from tqdm.auto import tqdm

    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
        raise ValueError(f"skip must be an integer >= 1, got {skip!r}.")
    if rank is None or world_size is None:
        rank, world_size = distributed_context()
    out = Path(out)
    within_image = within_image and world_size > 1
    own = out if world_size == 1 or within_image else shard_path(out, rank)
    done = set()
    for path in {out, own, *shard_paths(out)}:
        done.update(read_rows(path))
    if within_image:
        barrier(world_size)  # every process has read the log before rank 0 appends to it
    ds, image_column, num_rows = load_examples(dataset, split, image_column, label_column)
    settings = {
        "model": str(pipe.model.name_or_path), "sigma": float(pipe.model.config.smoothing_sigma),
        "dataset": os.path.abspath(dataset) if os.path.isdir(dataset) else dataset, "split": split,
        "image_column": image_column, "label_column": label_column, "n0": n0, "n": n, "alpha": alpha, "seed": seed,
        "method": method, "method_kwargs": dict(method_kwargs or {}),
        "autocast_dtype": None if autocast_dtype is None else str(autocast_dtype).replace("torch.", ""),
    }
    check_settings(out, settings, has_rows=bool(done), rank=rank)
    selection = selected_indices(num_rows, skip, max_index)
    share = 1 if within_image else world_size
    mine = None if selection is None else [i for k, i in enumerate(selection) if k % share == rank % share]
    total = None if mine is None else sum(i not in done for i in mine)

    writer = LogWriter(own) if rank == 0 or not within_image else None
    summary = {"certified": 0, "skipped_corrupt": 0, "already_done": 0, "rows": None}
    bar = tqdm(total=total, desc="certify" if share == 1 else f"certify rank {rank}", unit="img",
               disable=not progress or (within_image and rank > 0), position=rank % share, dynamic_ncols=True)
    examples = iter(ds)
    try:
        selected = -1
        for idx, example in enumerate(examples):
            if max_index >= 0 and idx >= max_index:
                break
            if idx % skip:
                continue
            selected += 1
            if selected % share != rank % share:
                continue
            if idx in done:
                summary["already_done"] += 1
                continue
            try:
                pixel_values = pipe.preprocess(decode_image(example[image_column]))["pixel_values"]
            except ValueError as error:
                print(f"warning: skipping idx {idx}: unreadable image ({error})", file=sys.stderr, flush=True)
                summary["skipped_corrupt"] += 1
                continue
            certificate = pipe.model.certify(pixel_values[0].to(pipe.device), n0=n0, n=n, alpha=alpha,
                                             batch_size=batch_size, seed=image_seed(seed, idx), method=method,
                                             autocast_dtype=autocast_dtype, distributed=within_image,
                                             **(method_kwargs or {}))
            label = example[label_column]
            if writer is not None:
                writer.append(format_row(idx, -1 if label is None else int(label), certificate))
            summary["certified"] += 1
            bar.update(1)
    finally:
        getattr(examples, "close", lambda: None)()  # stop the parquet reader now, not at interpreter exit
        bar.close()
        if writer is not None:
            writer.close()
    barrier(world_size)
    if rank == 0:
        summary["rows"] = merge_logs(out)
    barrier(world_size)
    close_process_group(world_size)
    return summary


__all__ = ["certify_dataset", "format_row", "read_rows", "merge_logs", "image_seed", "decode_image", "HEADER",
           "COLUMNS", "LogWriter", "load_examples", "distributed_context"]
