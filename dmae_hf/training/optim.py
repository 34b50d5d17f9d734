# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The optimisation recipe: AdamW parameter groups (no decay on norms and biases; layer-wise lr decay for
fine-tuning) and the per-step warmup + half-cosine lr schedule, with its length in optimizer steps."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from .arguments import OptimizationArguments


def param_groups_weight_decay(model: torch.nn.Module, weight_decay: float, skip: tuple[str, ...] = ()) -> list[dict]:
    """MAE's pre-training groups (timm `add_weight_decay`): 1-D parameters and `*.bias` get no weight decay, frozen
    parameters are left out. The (1, 1, D) `cls_token` and `mask_token` DO get decay, as in MAE."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or _short(name) in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def layer_id(name: str, num_layers: int) -> int:
    """DMAE/MAE `lr_decay.get_layer_id_for_vit` on our parameter names: 0 for the CLS token, position embeddings
    and patch embedding; `i + 1` for encoder block `i`; `num_layers` (= depth + 1) for everything after the blocks
    (`fc_norm`, `classifier`, a final norm)."""
    if ".embeddings." in f".{name}":
        return 0
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return num_layers


def param_groups_layer_decay(model: torch.nn.Module, weight_decay: float, layer_decay: float,
                             no_weight_decay: tuple[str, ...] = ("position_embeddings", "cls_token")) -> list[dict]:
    """Fine-tuning groups (`util/lr_decay.param_groups_lrd`): scale `layer_decay ** (num_layers - layer_id)` with
    `num_layers = depth + 1`; no weight decay for 1-D parameters, biases, the position embeddings and the CLS
    token. Each group carries `lr_scale`, which `set_lr` multiplies into the scheduled lr."""
    num_layers = model.config.num_hidden_layers + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim == 1 or name.endswith(".bias") or _short(name) in no_weight_decay
        lid = layer_id(name, num_layers)
        key = (lid, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": layer_decay ** (num_layers - lid), "layer_id": lid}
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Per-step linear warmup then half-cosine (MAE `util/lr_sched.py`, evaluated per optimizer step):
    `lr = base_lr * step / warmup` for `step < warmup`, else
    `min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))`."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)



@dataclass(frozen=True)
class Schedule:
    """A run's length and lr: `total_steps` optimizer steps, `warmup_steps` of them warming up to `lr`, then
    half-cosine down to `min_lr`."""

    total_steps: int
    warmup_steps: int
    lr: float
    min_lr: float = 0.0

    def lr_at(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.warmup_steps, self.lr, self.min_lr)


def schedule_lengths(optim: OptimizationArguments, num_processes: int, train_size: int | None,
                     drop_last: bool = False) -> Schedule:
    """The `Schedule` of a run. Effective batch = batch * grad_accum * processes, lr = blr * effective batch / 256
    unless `lr` is given; an epoch has ceil(train_size / (batch * processes)) micro-batches, or floor(...) with
    `drop_last` (the per-rank data mode, whose ranks keep full batches only)."""
    eff_batch = optim.batch_size * optim.grad_accum * num_processes
    lr = optim.lr if optim.lr is not None else optim.blr * eff_batch / 256
    steps_per_epoch = None
    if train_size is not None:
        rounding = math.floor if drop_last else math.ceil
        micro = max(1, rounding(train_size / (optim.batch_size * num_processes)))
        steps_per_epoch = math.ceil(micro / optim.grad_accum)
    if optim.max_steps is not None:
        total = optim.max_steps
    elif steps_per_epoch is None:
        raise ValueError("Cannot count the training examples of this dataset: pass --max-steps or --train-size.")
    else:
        total = max(1, math.ceil(optim.epochs * steps_per_epoch))
    if optim.warmup_steps is not None:
        warmup = optim.warmup_steps
    elif steps_per_epoch is not None:
        warmup = round(optim.warmup_epochs * steps_per_epoch)
    else:
        warmup = 0
    return Schedule(total, min(warmup, total), lr, optim.min_lr)
