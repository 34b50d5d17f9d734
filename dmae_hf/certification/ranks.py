# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Certifying a dataset with several processes: who certifies what, how the processes meet, and the merge.

Under `torchrun` / `accelerate launch` (`RANK`, `WORLD_SIZE`), process r certifies the k-th selected image when
k % world_size == r, into `LOG.rank{r}`; or, with `within_image`, every process takes part in every image (its noise
blocks are split over them, `smoothing.certify(..., distributed=True)`) and rank 0 writes `LOG`. Either way a row is
the one a single process writes (except `time`), because image idx is certified with the seed `mix(seed, idx)`.

The processes agree (an all-reduce) after each start-up step of the log, so a run starts in all of them or in none,
and no process writes a row before `LOG.json` is written. At the end rank 0 waits for the others (a gloo barrier)
and merges all shards into `LOG`, sorted by idx. The processes must meet within `$DMAE_DIST_TIMEOUT` seconds
(default 300); after that, a wait (the final barrier waits for the slowest process's share) lasts at most 24 hours.
A stale `RANK`/`WORLD_SIZE` thus fails in minutes.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch

from .log import HEADER, atomic_write, read_rows, shard_paths

DIST_TIMEOUT = 300.0  # seconds for the processes to meet ($DMAE_DIST_TIMEOUT)
DIST_WAIT = timedelta(hours=24)  # any later wait: the final barrier waits for the slowest process's share
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


def merge_logs(out, shards=None) -> int:
    """Merge `out` and its shards (default: all `shard_paths(out)`) into `out` (sorted by idx, one row per idx; atomic
    replace); delete the shards. Returns the number of rows. The caller must hold the locks of all these files."""
    out = Path(out)
    shards = shard_paths(out) if shards is None else [p for p in shards if p.exists()]
    rows = {}
    for path in [out, *shards]:
        for idx, line in read_rows(path).items():
            rows.setdefault(idx, line)
    atomic_write(out, HEADER + "".join(rows[idx] for idx in sorted(rows)))
    for path in shards:
        path.unlink()
    return len(rows)


class Ranks:
    """This process's place in a certification run: `rank`, `world_size`, and the process group it joined.

    `Ranks.join()` reads the environment and, with several processes, joins them (`init_distributed`); `close()`
    leaves the group it created. `sharded` says whether the images are split (each process its own shard) rather than
    each image's samples (`within_image`).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, within_image: bool = False):
        self.rank, self.world_size = rank, world_size
        self.within_image = within_image and world_size > 1
        self.sharded = world_size > 1 and not self.within_image
        self.started_group = False

    @classmethod
    def join(cls, within_image: bool = False, rank=None, world_size=None) -> Ranks:
        if rank is None or world_size is None:
            rank, world_size = distributed_context()
        ranks = cls(rank, world_size, within_image)
        ranks.started_group = init_distributed(world_size)
        return ranks

    def mine(self, k: int) -> bool:
        """Whether this process certifies the k-th selected image."""
        share = self.world_size if self.sharded else 1
        return k % share == self.rank % share

    def agree(self, step) -> None:
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
                error = ValueError(f"{failed.item()} other process(es) of this run failed (see their error); this "
                                   f"one stops too.")
        if error is not None:
            raise error

    def barrier(self) -> None:
        """Wait for every process of the group (at most `DIST_WAIT`)."""
        if self.world_size <= 1:
            return
        try:
            torch.distributed.barrier()
        except RuntimeError as error:
            reason = str(error).strip().split("\n")[0][:200]
            raise RuntimeError(f"waiting for the other processes failed ({reason}); the rows written so far are "
                               f"kept: rerun the same command to finish and merge them.") from None

    def finish(self, log) -> int | None:
        """Wait for every process; rank 0 merges the shards of the `CertificationLog` into its log file. Returns the
        rows of the log (rank 0) or None. Closes the log."""
        log.close_writer()
        try:
            self.barrier()
            rows = merge_logs(log.out, log.shards) if self.rank == 0 else None
            self.barrier()
        finally:
            log.close()
        return rows

    def close(self) -> None:
        if self.started_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.started_group = False


__all__ = ["Ranks", "distributed_context", "init_distributed", "merge_logs"]
