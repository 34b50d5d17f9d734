# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The metrics of a run: `JsonlTracker` writes `metrics.jsonl` (and TensorBoard scalars when installed) with each
step logged exactly once across kills and resumes; `read_metrics` reads it back."""

from __future__ import annotations

import json
import os
import time

import torch
from accelerate.tracking import GeneralTracker

from .checkpoints import TrainState, fsync


class JsonlTracker(GeneralTracker):
    """Metrics of the main process as JSON lines in `output_dir/metrics.jsonl`, and TensorBoard scalars when
    `torch.utils.tensorboard` is usable. Other processes log nothing.

    `resumed`: the `TrainState` a run resumed from, or None for a fresh run. A fresh run starts an empty log; a
    resumed one cuts the log back to its size at that checkpoint (`TrainState.metrics_bytes`, recorded by
    `Checkpoints.save(tracker)`), dropping what the killed run logged after it, torn last line included, so each
    step is logged once however often the run was killed and resumed.

    Why a tracker of our own: none of Accelerate's trackers (tensorboard, wandb, comet_ml, aim, mlflow, clearml,
    dvclive, swanlab, trackio) writes JSON lines, and none can roll its log back to a checkpoint, which exactly-once
    rows after a resume need (TensorBoard's `purge_step` is the nearest, for TensorBoard only). It is a
    `GeneralTracker`, so `Accelerator(log_with=[tracker])` and `accelerator.log` drive it too; the example scripts
    call it directly because it must be built after the checkpoint has been read, which needs the Accelerator,
    which takes its trackers when it is built."""

    name = "jsonl"
    requires_logging_directory = False

    def __init__(self, output_dir: str, is_main: bool = True, resumed: TrainState | None = None):
        super().__init__()
        self.is_main, self.output_dir = is_main, output_dir
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.tb = None
        if not is_main:
            return
        os.makedirs(output_dir, exist_ok=True)
        keep = resumed.metrics_bytes if resumed is not None else 0
        with open(self.path, "a+b") as f:
            if f.seek(0, os.SEEK_END) > keep:
                f.truncate(keep)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"),
                                    purge_step=resumed.step + 1 if resumed is not None else None)
        except Exception:  # tensorboard not installed
            self.tb = None

    @property
    def tracker(self) -> str:
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        """Write the run's configuration to `output_dir/run_config.json`."""
        if self.is_main:
            with open(os.path.join(self.output_dir, "run_config.json"), "w") as f:
                json.dump(values, f, indent=2, default=str)

    def size(self) -> int:
        """Bytes in the log now, everything written so far fsync'd (recorded in each checkpoint)."""
        if not self.is_main or not os.path.exists(self.path):
            return 0
        fsync(self.path)
        return os.path.getsize(self.path)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        if not self.is_main:
            return
        record = {"step": step, "time": time.time(), **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(k, v, step)

    def finish(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def read_metrics(path: str) -> list[dict]:
    """The records of a `metrics.jsonl`; a torn last line (a run killed mid-write) is dropped."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON ({line[:80]!r}).") from None
    return records


