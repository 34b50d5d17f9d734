# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The certification log: Cohen et al.'s TSV format with two extra columns, written so that a run can be killed and
resumed, and owned by one run at a time.

The log has the header `idx label predict radius correct time pA_lower samples` (tab-separated), one row per image,
sorted by `idx` (the image's number in the input):

- `label` is the true class, or -1 for an unlabelled image (`LOG.json` then says `"labels": "none"`);
- `predict` is the certified class, or **-1 when CERTIFY abstains** (Cohen's convention; the Python API says None);
- `radius` (L2, [0, 1] pixel units) and `pA_lower` are rounded *down* to 6 decimals, so a printed radius never
  exceeds the certified one (Cohen's logs print 3 significant digits, which can round 0.2496 up to 0.25);
- `correct` is 1 when `predict == label` (never for an abstention or an unlabelled image), `time` the seconds spent
  on the image, and `samples` the forward samples drawn (n0 + n for Cohen's method, fewer for the adaptive one).

How the files behave:

- **Resumable.** Each row is appended with one `write` followed by `fsync`. Opening a log reads the rows already
  there, drops a torn last line (no trailing newline) and lets the run certify only the missing indices, so a killed
  run (even SIGKILL) ends with every selected row exactly once. `LOG.json` records the settings (n0, n, alpha, seed,
  method, sigma, inputs, ...), and a restart with other settings is refused rather than mixing rows.
- **One run per log.** Rank 0 holds an exclusive, non-blocking `fcntl.flock` on `LOG.lock` (which records its pid
  and host) from before it reads the log until after the merge; in a sharded run rank r also locks
  `LOG.rank{r}.lock` (see `ranks.py`), and rank 0 locks the shards of earlier runs that it will merge. A second run
  on the same log is refused at once, naming the holder.
- **Refused, never overwritten or mixed**: an existing `LOG` that is not a certification log (another header, a
  directory, a device), a `LOG.json` that is not a settings file, rows without `LOG.json`, a malformed complete row
  (reported with file and line number), a busy log, and an unusable location (under a file, unwritable, full).
  `check_log` finds them without writing, except a full disk: a run that fails before its first row removes the
  files it created (log, `LOG.json`, `LOG.lock`), a write error names the file, and no `*.tmp` stays behind.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
from pathlib import Path

COLUMNS = ("idx", "label", "predict", "radius", "correct", "time", "pA_lower", "samples")
HEADER = "\t".join(COLUMNS) + "\n"
ABSTAIN = -1  # the `predict` of an abstention, and the `label` of an unlabelled image
_TYPES = (int, int, int, float, int, float, float, int)  # of the columns
_SETTINGS_KEYS = {"n0", "n", "alpha", "seed", "method"}  # any settings file has these


# ------------------------------------------------------------------------------------------------------------ rows
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


def write_error(path, error: OSError, fix: str = "choose a writable location for --out") -> OSError:
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


def atomic_write(path, text: str) -> None:
    """Write `text` to `path` through `path.tmp` (fsync, then rename): the file is the old one or the new one, never
    half written. On an error the tmp file is removed and the `OSError` names `path`."""
    path, tmp = Path(path), Path(f"{path}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_error(path, error) from None


class LogWriter:
    """Appends rows to one log file that only this process writes: one `write` + `fsync` per row.

    Opening repairs a file left by a killed run: a torn last line is cut off, and a missing header is written. A file
    that is not a certification log is refused, never truncated. `created` says whether this writer made the file.
    """

    def __init__(self, path):
        self.path = Path(path)
        data = _read_log(self.path)
        keep = data.rfind(b"\n") + 1
        self.created = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if keep < len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(keep)
                    os.fsync(f.fileno())
            self.file = open(self.path, "ab", buffering=0)
        except OSError as error:
            raise write_error(self.path, error) from None
        if keep == 0:
            self.append(HEADER)

    def append(self, line: str) -> None:
        try:
            self.file.write(line.encode("utf-8"))
            os.fsync(self.file.fileno())
        except OSError as error:
            raise write_error(self.path, error, "the rows written so far are kept: fix that (e.g. free disk space), "
                                                "then rerun the same command to resume") from None

    def close(self) -> None:
        self.file.close()


def shard_path(out, rank: int) -> Path:
    """`LOG.rank{r}`: the rows that process r of a sharded run writes (merged into `LOG` at the end)."""
    return Path(f"{out}.rank{rank}")


def shard_paths(out) -> list[Path]:
    """The per-process logs `LOG.rank{r}` of `out`, from this run or an earlier one with any number of processes."""
    out = Path(out)
    return sorted(p for p in out.parent.glob(f"{out.name}.rank*") if p.name[len(out.name) + 5:].isdigit())


# -------------------------------------------------------------------------------------------------------- settings
def check_settings(out, settings: dict, has_rows: bool) -> None:
    """Refuse to resume a log written with other certification settings (`LOG.json` records them); writes nothing.

    Rows without `LOG.json`, or a `LOG.json` that is not a settings file, are refused. Only the `model` entry is
    informative: the same checkpoint can be spelled in several ways, so it is not compared.
    """
    path, saved = Path(f"{out}.json"), None
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
                         f"settings (n0, n, alpha, seed, method, sigma, inputs, ...). Restore {path}, or choose "
                         f"another --out (or move the log and its shards away to start afresh).")
    if has_rows:
        changed = [f"{k}={saved.get(k)!r} (now {settings.get(k)!r})" for k in dict.fromkeys([*saved, *settings])
                   if k != "model" and saved.get(k) != settings.get(k)]
        if changed:
            raise ValueError(f"{out} was written with other settings: {', '.join(changed)}. Resume with the same "
                             f"settings, or choose another --out.")


# ------------------------------------------------------------------------------------------------ one run per log
def check_location(out) -> Path:
    """Refuse an `--out` that cannot hold a log (a directory, a device, a path under a file, an unwritable folder);
    writes nothing."""
    out = Path(out)
    _check_file(out)
    for parent in out.parents:  # the nearest existing ancestor must be a writable directory
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write {out}: {parent} is a file, not a directory; choose another --out.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise write_error(out, PermissionError(13, os.strerror(13)))
            break
    return out


def _in_use(log, lock: Path, fd: int) -> ValueError:
    holder = os.pread(fd, 200, 0).decode("utf-8", errors="replace").strip() or "holder not recorded yet"
    return ValueError(f"{log} is in use by another run ({holder}; lock file {lock}), and two writers would lose "
                      f"rows. Wait for that run to end (or stop it), or choose another --out.")


def check_log(out, settings: dict | None = None) -> set[int]:
    """Everything about `out` that can be checked without writing: its location, whether another run holds it (its
    locks, opened read-only), the log and its shards (each a certification log), and `LOG.json` against `settings`
    (when given). Returns the indices already certified."""
    out = check_location(out)
    for lock in [Path(f"{out}.lock"), *(Path(f"{p}.lock") for p in shard_paths(out))]:
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue  # no lock file: nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(out, lock, fd) from None
        except OSError:
            pass  # a file system without locks: found when the run takes the lock
        finally:
            os.close(fd)
    done = set()
    for path in [out, *shard_paths(out)]:
        done.update(read_rows(path))
    if settings is not None:
        check_settings(out, settings, has_rows=bool(done))
    return done


class LogLock:
    """An exclusive `fcntl.flock` on the file `path`, taken without waiting, that records its holder (pid, host).

    `ValueError` naming the holder if another process has it. Writing the holder is also the probe of an
    unwritable or full file system. `created` says whether this lock made the file.
    """

    def __init__(self, path, log):
        self.path = Path(path)
        self.created = not self.path.exists()
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise write_error(self.path, error) from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = _in_use(log, self.path, self.fd)
            os.close(self.fd)
            raise error from None
        except OSError as error:
            self.release(unlink=self.created)
            raise write_error(self.path, error, "this file system cannot lock files: choose --out on a local "
                                                "disk") from None
        try:
            holder = f"pid {os.getpid()} on {socket.gethostname()}\n".encode()
            os.pwrite(self.fd, holder, 0)
            os.ftruncate(self.fd, len(holder))
            os.fsync(self.fd)
        except OSError as error:
            self.release(unlink=self.created)
            raise write_error(self.path, error) from None

    def release(self, unlink: bool = False) -> None:
        if unlink:  # only the holder removes a lock file, once it is done with the file it guards
            self.path.unlink(missing_ok=True)
        os.close(self.fd)  # closing the last descriptor releases the flock


class CertificationLog:
    """The files of the log `out`, owned by this run (every process of it) until `close()`.

    Opening takes the locks (rank 0: `LOG.lock` and the leftover shards of earlier runs; rank r of a sharded run:
    `LOG.rank{r}.lock`), reads the finished rows (`done`), checks `settings` against `LOG.json` (rank 0 writes it
    when the log has no rows yet) and opens this process's writer. It starts no process group: with several
    processes, `agree(step)` (`ranks.Ranks.agree`) runs each step and makes it fail in all of them if it fails in
    one. `sharded`: this process writes `LOG.rank{rank}` (merged by `ranks.Ranks.merge`), else rank 0 writes `LOG`.
    """

    def __init__(self, out, settings: dict, *, rank=0, world_size=1, sharded=False, agree=None):
        self.out, self.rank, self.world_size, self.sharded = Path(out), rank, world_size, sharded
        self.own = shard_path(out, rank) if sharded else self.out
        self.locks, self.shards, self.writer, self.done, self.created = [], [], None, set(), []
        self.rows_at_start, self.opened = None, False
        agree = agree or (lambda step: step())  # one process: just run each step
        try:
            agree(self._lock)
            agree(self._read)
            agree(lambda: self._settings(settings))
            agree(self._open_writer)
        except BaseException:
            self.close(failed=True)
            raise
        self.opened = True

    def _lock(self) -> None:
        check_location(self.out)
        created = [p for p in self.out.parents if not p.exists()]
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise write_error(self.out.parent, error) from None
        self.created += created  # deepest first: removed in this order by a failed run
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

    def _settings(self, settings: dict) -> None:
        check_settings(self.out, settings, has_rows=bool(self.done))
        if self.rank == 0 and not self.done:
            path = Path(f"{self.out}.json")
            if not path.exists():
                self.created.insert(0, path)
            atomic_write(path, json.dumps(settings, indent=1) + "\n")

    def _open_writer(self) -> None:
        if self.rank == 0 or self.sharded:
            self.writer = LogWriter(self.own)
            if self.writer.created:
                self.created.insert(0, self.own)
            self.rows_at_start = self.rows_written()

    def rows_written(self) -> int:
        """Complete lines in this run's files (rank 0's view of every process's progress when sharded)."""
        paths = [shard_path(self.out, r) for r in range(self.world_size)] if self.sharded else [self.own]
        return sum(p.read_bytes().count(b"\n") for p in paths if p.exists())

    def close_writer(self) -> None:
        if self.writer is not None:
            self.writer, writer = None, self.writer
            writer.close()

    def close(self, failed: bool = False) -> None:
        """Release the locks (idempotent); shard lock files are removed by their holders. `failed=True` after an
        error: if this run wrote no row, the files it created (log, `LOG.json`, lock files, folders) are removed
        (in a run of several processes, only when opening failed: in all of them, before any row)."""
        wrote = self.writer is not None and self.rows_written() > self.rows_at_start
        self.close_writer()
        clean = failed and not wrote and not self.done and (not self.opened or self.world_size == 1)
        for lock in self.locks:
            lock.release(unlink=lock.path.name != f"{self.out.name}.lock" or (clean and lock.created))
        self.locks = []
        if clean:
            for path in self.created:
                try:
                    path.rmdir() if path.is_dir() else path.unlink(missing_ok=True)
                except OSError:
                    pass  # a folder that is no longer empty (another writer) stays
        self.created = []


__all__ = ["ABSTAIN", "COLUMNS", "HEADER", "CertificationLog", "LogLock", "LogWriter", "atomic_write", "check_log",
           "check_location", "check_settings", "format_row", "read_rows", "shard_path", "shard_paths",
           "write_error"]
