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
- **One run per log.** Rank 0 holds an exclusive, non-blocking `fcntl.flock` on `LOG.lock` (which records its pid
  and host) from before it reads the log until after the merge; in a sharded run rank r also locks
  `LOG.rank{r}.lock`, and rank 0 locks the shards of earlier runs that it will merge. A second run on the same log is
  refused at once, naming the holder. The processes of one run agree (an all-reduce) after each start-up step, so a
  run starts in all of them or in none, and no process writes a row before `LOG.json` is written.
- **Refused, never overwritten or mixed**: an existing `LOG` that is not a certification log (another header, a
  directory, a device), a `LOG.json` that is not a settings file, rows without `LOG.json`, a malformed complete row
  (reported with file and line number), and an unusable location (under a file, unwritable, full). `CertificationLog`
  checks all of these before the model is loaded. Only a torn last line, a kill's artefact, is dropped.
- **Corrupt images** (undecodable bytes, unreadable files, unsupported formats) are reported on stderr with their
  `idx` and skipped; they get no row, and a later run tries them again.
- **Multi-process.** Under `torchrun` / `accelerate launch` (`RANK`, `WORLD_SIZE`), process r certifies the k-th
  selected image when k % world_size == r, into `LOG.rank{r}`. Rank 0 waits for the others (a gloo barrier) and
  merges all shards into `LOG`, sorted by idx; the rows are the ones a single process writes, except `time`. The
  processes must meet within `$DMAE_DIST_TIMEOUT` seconds (default 300); after that, a wait (the final barrier waits
  for the slowest process's share) lasts at most 24 hours. A stale `RANK`/`WORLD_SIZE` thus fails in minutes.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch

from ..defaults import ALPHA, N0, NOISE_BATCH, SEED, N
from ..image_processing_dmae import decode_image
from ..images import load_image_split
from ..smoothing import mix_seed

COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "pA_lower", "samples")
HEADER = "\t".join(COLUMNS) + "\n"
ABSTAIN = -1
_TYPES = (int, int, int, float, int, float, float, int)  # of the columns
DIST_TIMEOUT = 300.0  # seconds for the processes to meet ($DMAE_DIST_TIMEOUT)
DIST_WAIT = timedelta(hours=24)  # any later wait: the final barrier waits for the slowest process's share

# --------------------------------------------------------------------------------------------------------- log files
def image_seed(seed: int, idx: int) -> int:
    """The noise seed of image `idx`: `smoothing.mix_seed(seed, idx)` (SplitMix64), the same in every process and
    every run."""
    return mix_seed(seed, idx)


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


def _write_error(path, error: OSError, fix: str = "choose a writable location for --out") -> OSError:
    """`error` restated as one sentence that names `path` and the fix (its errno is kept)."""
    wrapped = OSError(f"cannot write {path}: {error.strerror or error}; {fix}.")
    wrapped.errno = error.errno
    return wrapped


def _check_file(path: Path) -> None:
    """A log path must be a regular file or absent: refuse a directory, a device, a socket or a pipe."""
    if path.is_dir():
        raise ValueError(f"{path} is a directory; --out names the log file, e.g. {path / 'certify.tsv'}.")
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a regular file (a device, pipe or socket); choose a file path for --out.")


def _read_log(path: Path) -> bytes:
    """The bytes of the log `path` (b"" if absent); `ValueError` if it is not a certification log (another header)."""
    if not path.exists():
        return b""
    _check_file(path)
    with open(path, "rb") as f:
        head = f.read(len(HEADER))
        if not (head.startswith(HEADER.encode()) or HEADER.encode().startswith(head)):  # a torn header is a log
            first = head.decode("utf-8", errors="replace").split("\n")[0]
            raise ValueError(f"{path} exists and is not a dmae certification log (it starts with {first!r}, "
                             f"a log with {HEADER.strip()!r}); it is left untouched: choose another --out.")
        return head + f.read()


def _parse_row(line: str) -> int:
    """The idx of a complete log row; `ValueError` saying what is wrong with it."""
    fields = line.split("\t")
    if len(fields) != len(COLUMNS):
        raise ValueError(f"{len(fields)} field(s), expected {len(COLUMNS)}")
    for name, kind, field in zip(COLUMNS, _TYPES, fields, strict=True):
        try:
            kind(field)
        except ValueError:
            raise ValueError(f"{name} = {field!r} is not {'an integer' if kind is int else 'a number'}") from None
    return int(fields[0])


def read_rows(path) -> dict[int, str]:
    """The complete rows of a log, by idx (the first copy wins). A torn last line is ignored; a missing file is empty.

    Raises `ValueError` if the file is not a certification log, or names the file and line of a malformed row.
    """
    path = Path(path)
    lines = _read_log(path).decode("utf-8", errors="replace").split("\n")[:-1]  # after the last newline: torn
    rows = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            rows.setdefault(_parse_row(line), line + "\n")
        except ValueError as error:
            raise ValueError(f"{path}, line {number}: malformed row {line!r} ({error}); a row has {len(COLUMNS)} "
                             f"tab-separated numbers ({' '.join(COLUMNS)}). Delete or repair that line (its image is "
                             f"then certified again), or choose another --out.") from None
    return rows


class LogWriter:
    """Appends rows to one log file that only this process writes: one `write` + `fsync` per row.

    Opening repairs a file left by a killed run: a torn last line is cut off, and a missing header is written. A file
    that is not a certification log is refused, never truncated.
    """

    def __init__(self, path):
        self.path = Path(path)
        data = _read_log(self.path)
        keep = data.rfind(b"\n") + 1
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if keep < len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(keep)
                    os.fsync(f.fileno())
            self.file = open(self.path, "ab", buffering=0)
        except OSError as error:
            raise _write_error(self.path, error) from None
        if keep == 0:
            self.append(HEADER)

    def append(self, line: str) -> None:
        try:
            self.file.write(line.encode("utf-8"))
            os.fsync(self.file.fileno())
        except OSError as error:
            raise _write_error(self.path, error, "the rows written so far are kept: fix that (e.g. free disk space), "
                                                 "then rerun the same command to resume") from None

    def close(self) -> None:
        self.file.close()


def shard_path(out, rank: int) -> Path:
    return Path(f"{out}.rank{rank}")


def shard_paths(out) -> list[Path]:
    """The per-process logs `LOG.rank{r}` of `out`, from this run or an earlier one with any number of processes."""
    out = Path(out)
    return sorted(p for p in out.parent.glob(f"{out.name}.rank*") if p.name[len(out.name) + 5:].isdigit())


def merge_logs(out, shards=None) -> int:
    """Merge `out` and its shards (default: all `shard_paths(out)`) into `out` (sorted by idx, one row per idx; atomic
    replace); delete the shards. Returns the number of rows. The caller must hold the locks of all these files."""
    out = Path(out)
    shards = shard_paths(out) if shards is None else [p for p in shards if p.exists()]
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


_SETTINGS_KEYS = {"n0", "n", "alpha", "seed", "method"}  # any settings file has these


def check_settings(out, settings: dict, has_rows: bool, rank: int = 0) -> None:
    """Refuse to resume a log written with other certification settings (`LOG.json` records them).

    Rank 0 writes `LOG.json` (atomically) while the log has no rows yet. Rows without `LOG.json`, or a `LOG.json`
    that is not a settings file, are refused. Only the `model` entry is informative: the same checkpoint can be
    spelled in several ways, so it is not compared.
    """
    path = Path(f"{out}.json")
    saved = None
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            if not isinstance(saved, dict) or not _SETTINGS_KEYS <= saved.keys():
                raise ValueError(f"no {', '.join(sorted(_SETTINGS_KEYS))} entries")
        except (ValueError, UnicodeDecodeError) as error:
            raise ValueError(f"{path} is not the settings file of a dmae certification log ({error}); it is left "
                             f"untouched: move it away, or choose another --out.") from None
    if has_rows and saved is None:
        raise ValueError(f"{out} has rows but no settings file {path}, so they cannot be checked against this run's "
                         f"settings (n0, n, alpha, seed, method, sigma, dataset, ...). Restore {path}, or choose "
                         f"another --out (or move the log and its shards away to start afresh).")
    if has_rows:
        changed = [f"{k}={saved.get(k)!r} (now {settings.get(k)!r})" for k in dict.fromkeys([*saved, *settings])
                   if k != "model" and saved.get(k) != settings.get(k)]
        if changed:
            raise ValueError(f"{out} was written with other settings: {', '.join(changed)}. Resume with the same "
                             f"settings, or choose another --out.")
    elif rank == 0:
        tmp = Path(f"{path}.tmp")
        tmp.write_text(json.dumps(settings, indent=1) + "\n")
        os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ one run per log
def check_location(out) -> Path:
    """Refuse an `--out` that cannot hold a log (a directory, a device, a path under a file); create its folder."""
    out = Path(out)
    _check_file(out)
    for parent in out.parents:  # the nearest existing ancestor must be a directory
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write {out}: {parent} is a file, not a directory; choose another --out.")
            break
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _write_error(out.parent, error) from None
    return out


class LogLock:
    """An exclusive `fcntl.flock` on the file `path`, taken without waiting, that records its holder (pid, host).

    `ValueError` naming the holder if another process has it. Writing the holder is also the probe of an
    unwritable or full file system, so that such a location fails before any model work.
    """

    def __init__(self, path, log):
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise _write_error(self.path, error) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode("utf-8", errors="replace").strip() or "holder not recorded yet"
            os.close(self.fd)
            raise ValueError(f"{log} is in use by another run ({holder}; lock file {self.path}), and two writers "
                             f"would lose rows. Wait for that run to end (or stop it), or choose another "
                             f"--out.") from None
        except OSError as error:
            os.close(self.fd)
            raise _write_error(self.path, error, "this file system cannot lock files: choose --out on a local "
                                                 "disk") from None
        try:
            holder = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
            os.pwrite(self.fd, holder, 0)
            os.ftruncate(self.fd, len(holder))
            os.fsync(self.fd)
        except OSError as error:
            self.release()
            raise _write_error(self.path, error) from None

    def release(self, unlink: bool = False) -> None:
        if unlink:  # only the holder removes a lock file, once it is done with the file it guards
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing the last descriptor releases the flock


class CertificationLog:
    """The files of the log `out`, owned by this run (every process of it) until `finish()` or `close()`.

    Opening checks `out`, joins the other processes (`init_distributed`), takes the locks (rank 0: `LOG.lock` and
    the leftover shards of earlier runs; rank r of a sharded run: `LOG.rank{r}.lock`), then reads the finished rows
    (`done`) and opens this process's writer. Each step must succeed in every process, or all of them raise.
    Nothing is loaded or certified yet, so a busy log or a bad `--out` fails in seconds.
    """

    def __init__(self, out, *, within_image=False, rank=None, world_size=None):
        if rank is None or world_size is None:
            rank, world_size = distributed_context()
        self.out, self.rank, self.world_size = Path(out), rank, world_size
        self.within_image = within_image and world_size > 1
        self.sharded = world_size > 1 and not self.within_image
        self.own = shard_path(out, rank) if self.sharded else self.out
        self.locks, self.shards, self.writer, self.done = [], [], None, set()
        self.started_group = init_distributed(world_size)
        try:
            self._agree(self._lock)
            self._agree(self._read)
        except BaseException:
            self.close()
            raise

    def _agree(self, step) -> None:
        """Run `step` in every process; if it fails in any, raise in all (a run starts everywhere or nowhere)."""
        error = None
        try:
            step()
        except Exception as e:  # re-raised below, after the others know
            error = e
        if self.world_size > 1:
            failed = torch.tensor([int(error is not None)])
            torch.distributed.all_reduce(failed)
            if error is None and failed.item():
                error = ValueError(f"{failed.item()} other process(es) of this run could not use {self.out} "
                                   f"(see their error); this one stops too.")
        if error is not None:
            raise error

    def _lock(self) -> None:
        check_location(self.out)
        if self.rank == 0:
            self.locks.append(LogLock(f"{self.out}.lock", self.out))
            leftovers = [p for p in shard_paths(self.out)
                         if not (self.sharded and int(p.name.rsplit(".rank", 1)[1]) < self.world_size)]
            for path in leftovers:  # shards of earlier runs, merged by this one: no writer may be left
                self.locks.append(LogLock(f"{path}.lock", self.out))
            ours = [shard_path(self.out, r) for r in range(self.world_size)] if self.sharded else []
            self.shards = leftovers + ours
        if self.sharded:
            self.locks.append(LogLock(f"{self.own}.lock", self.out))

    def _read(self) -> None:
        for path in {self.out, self.own, *shard_paths(self.out)}:
            self.done.update(read_rows(path))
        if self.rank == 0 or self.sharded:
            self.writer = LogWriter(self.own)

    def check_settings(self, settings: dict) -> None:
        """`check_settings` in every process; rank 0 writes `LOG.json` before any process goes on to write rows."""
        self._agree(lambda: check_settings(self.out, settings, has_rows=bool(self.done), rank=self.rank))

    def rows_written(self) -> int:
        """Complete lines in this run's shards (rank 0's view of every process's progress)."""
        paths = [shard_path(self.out, r) for r in range(self.world_size)] if self.sharded else [self.own]
        return sum(p.read_bytes().count(b"\n") for p in paths if p.exists())

    def finish(self) -> int | None:
        """Wait for every process; rank 0 merges the shards into `out`. Returns the rows of `out` (rank 0) or None."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        try:
            barrier(self.world_size)
            rows = merge_logs(self.out, self.shards) if self.rank == 0 else None
            barrier(self.world_size)
        finally:
            self.close()
        return rows

    def close(self) -> None:
        """Release the locks (idempotent); shard lock files are removed by their holders."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        for lock in self.locks:
            lock.release(unlink=lock.path.name != f"{self.out.name}.lock")
        self.locks = []
        if self.started_group:
            close_process_group(self.world_size)
            self.started_group = False


# ------------------------------------------------------------------------------------------------------------- data
def load_examples(dataset: str, split: str, image_column: str | None, label_column: str):
    """The split through `dmae_hf.images.load_image_split` (the reader training uses too), images left undecoded
    (`decode_image` reads each cell, so a bad image costs one row). Returns `(iterable dataset, image column, label
    column, number of rows or None)`."""
    ds, image_column, label_column = load_image_split(dataset, split, image_column, label_column)
    try:
        num_rows = ds.info.splits[split].num_examples or None
    except (AttributeError, KeyError, TypeError):
        num_rows = None
    return ds, image_column, label_column, num_rows


def selected_indices(num_rows, skip: int, max_index: int):
    """Cohen's selection: every `skip`-th row, stopping at row `max_index` (excluded; -1 = no limit)."""
    stop = num_rows if max_index < 0 else (max_index if num_rows is None else min(num_rows, max_index))
    return None if stop is None else range(0, stop, skip)


# --------------------------------------------------------------------------------------------------- distribution
_DIST_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def distributed_context() -> tuple[int, int]:
    """(rank, world size) from the environment that `torchrun` and `accelerate launch` set; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def dist_timeout() -> float:
    """Seconds the processes wait for each other at start: `$DMAE_DIST_TIMEOUT`, default `DIST_TIMEOUT`."""
    value = os.environ.get("DMAE_DIST_TIMEOUT", str(DIST_TIMEOUT))
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"DMAE_DIST_TIMEOUT={value!r} is not a number of seconds > 0; set it to e.g. "
                         f"{DIST_TIMEOUT:g}.")
    return seconds


def init_distributed(world_size: int) -> bool:
    """Join the other `world_size - 1` processes in a gloo process group; returns whether this call created it.

    The rendezvous waits at most `dist_timeout()` seconds, later collectives `DIST_WAIT`. If the others do not come
    (e.g. a stale `RANK`/`WORLD_SIZE` in the environment), a `ValueError` names the variables and the fix.
    """
    import torch.distributed as dist
    from torch.distributed.rendezvous import rendezvous

    if world_size <= 1 or dist.is_initialized():
        return False
    seconds = dist_timeout()
    try:
        store, rank, size = next(rendezvous("env://", timeout=timedelta(seconds=seconds)))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=size, timeout=DIST_WAIT)
    except (RuntimeError, ValueError) as error:  # torch's DistError is a RuntimeError
        env = ", ".join(f"{k}={os.environ.get(k)}" for k in _DIST_VARIABLES)
        reason = str(error).strip().split("\n")[0][:200]
        raise ValueError(f"the {world_size} processes that the environment announces ({env}) did not meet within "
                         f"{seconds:g} s ({type(error).__name__}: {reason}). For a single-process run, unset RANK, "
                         f"WORLD_SIZE, MASTER_ADDR and MASTER_PORT; for several processes, start them all with "
                         f"torchrun or accelerate launch (or raise $DMAE_DIST_TIMEOUT).") from None
    return True


def barrier(world_size: int) -> None:
    """Wait for every process of the group that `init_distributed` created (at most `DIST_WAIT`)."""
    if world_size <= 1:
        return
    try:
        torch.distributed.barrier()
    except RuntimeError as error:
        reason = str(error).strip().split("\n")[0][:200]
        raise RuntimeError(f"waiting for the other processes failed ({reason}); the rows written so far are kept: "
                           f"rerun the same command to finish and merge them.") from None


def close_process_group(world_size: int) -> None:
    if world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------- driver
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


def certify_dataset(pipe, dataset, out, *, split="test", skip=1, max_index=-1, image_column=None,
                    label_column="label", n0=N0, n=N, alpha=ALPHA, batch_size=NOISE_BATCH, seed=SEED, method="cohen",
                    autocast_dtype=None, method_kwargs=None, progress=True, rank=None, world_size=None,
                    within_image=False) -> dict:
    """Certify the selected images of `dataset[split]` with a `RandomizedSmoothingPipeline` into the log `out`.

    `out` is a path, or a `CertificationLog` opened on it beforehand (as `dmae certify` does, to check the output
    before loading the model; this call then closes it). See the module docstring for the log format, resuming,
    locking and multi-process runs. With `within_image=True`, every process takes part in every image instead: each
    image's noise blocks are split over the processes (`smoothing.certify(..., distributed=True)`), and rank 0 writes
    the log. Rank 0 shows one progress bar over the selection (`progress`) and, after its first image, prints the
    measured samples/s and the projected time. Returns a summary `{"certified", "skipped_corrupt", "already_done",
    "rows"}` (`rows`: rows in the final log, rank 0 only).
    """
    from tqdm.auto import tqdm

    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
        if isinstance(out, CertificationLog):
            out.close()
        raise ValueError(f"skip must be an integer >= 1, got {skip!r}.")
    log = out if isinstance(out, CertificationLog) else CertificationLog(
        out, within_image=within_image, rank=rank, world_size=world_size)
    rank, world_size, done = log.rank, log.world_size, log.done
    share = world_size if log.sharded else 1
    summary = {"certified": 0, "skipped_corrupt": 0, "already_done": 0, "rows": None}
    bar, examples = None, iter(())
    try:
        ds, image_column, label_column, num_rows = load_examples(dataset, split, image_column, label_column)
        settings = {
            "model": str(pipe.model.name_or_path), "sigma": pipe.smoothed.sigma,
            "dataset": os.path.abspath(dataset) if os.path.isdir(dataset) else dataset, "split": split,
            "image_column": image_column, "label_column": label_column, "n0": n0, "n": n, "alpha": alpha,
            "seed": seed, "method": method, "method_kwargs": dict(method_kwargs or {}),
            "autocast_dtype": None if autocast_dtype is None else str(autocast_dtype).replace("torch.", ""),
        }
        if pipe.denoiser_name is not None:  # (logs written without a denoiser keep their settings)
            settings["denoiser"] = pipe.denoiser_name
        log.check_settings(settings)
        selection = selected_indices(num_rows, skip, max_index)
        todo = None if selection is None else [k for k, i in enumerate(selection) if i not in done]
        mine = None if todo is None else sum(k % share == rank % share for k in todo)
        initial = len(done) if selection is None else len(selection) - len(todo)
        base = log.rows_written() if rank == 0 else 0
        bar = tqdm(total=None if selection is None else len(selection), initial=initial, desc="certify", unit="img",
                   disable=not progress or rank > 0, dynamic_ncols=True)
        examples = iter(ds)
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
                pixel_values = pipe.preprocess(decode_image(example[image_column], pipe.max_pixels))["pixel_values"]
            except ValueError as error:
                print(f"warning: skipping idx {idx}: unreadable image ({error})", file=sys.stderr, flush=True)
                summary["skipped_corrupt"] += 1
                continue
            certificate = pipe.smoothed.certify(pixel_values[0].to(pipe.device), n0=n0, n=n, alpha=alpha,
                                                batch_size=batch_size, seed=image_seed(seed, idx), method=method,
                                                autocast_dtype=autocast_dtype, distributed=log.within_image,
                                                **(method_kwargs or {}))
            label = example[label_column]
            if log.writer is not None:
                log.writer.append(format_row(idx, -1 if label is None else int(label), certificate))
            summary["certified"] += 1
            if rank == 0:
                if summary["certified"] == 1:
                    line = projection(certificate, None if todo is None else len(todo), mine, n0 + n,
                                      adaptive=method != "cohen")
                    (tqdm.write if not bar.disable else print)(line, file=sys.stderr)
                bar.update(log.rows_written() - base + initial - bar.n if log.sharded else 1)
    except BaseException:
        log.close()
        raise
    finally:
        getattr(examples, "close", lambda: None)()  # stop the parquet reader now, not at interpreter exit
        if bar is not None:
            bar.close()
    summary["rows"] = log.finish()
    return summary


__all__ = ["certify_dataset", "CertificationLog", "format_row", "read_rows", "merge_logs", "image_seed",
           "decode_image", "HEADER", "COLUMNS", "LogWriter", "load_examples", "distributed_context"]
