# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The run shared by both example scripts: the Accelerator, the loop state with its checkpoints and tracker
(`start_run`), the training loop (`train`), and `final/` (`save_final`, `push_folder_to_hub`)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .arguments import OptimizationArguments, RunArguments
from .checkpoints import Checkpoints, TrainState
from .data_setup import rng_neutral, set_epoch
from .optim import Schedule, set_lr
from .tracking import JsonlTracker


def make_accelerator(optim: OptimizationArguments, run: RunArguments):
    """The run's Accelerator: `grad_accum` micro-steps per optimizer step, `mixed_precision` (None: the accelerate
    config's), `cpu`. Loaders passed to `prepare` are read by rank 0 and dispatched (`dispatch_batches=True`: the
    validation loaders, and the training loader in `--data-mode dispatch`; see dmae_hf.training.streams). Every RNG is
    seeded with `optim.seed` (`accelerate.utils.set_seed`) once it exists."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    project = ProjectConfiguration(project_dir=run.output_dir)  # checkpoints: `Checkpoints`, not save_state
    kwargs = {"mixed_precision": optim.mixed_precision} if optim.mixed_precision else {}
    if run.cpu:
        kwargs["cpu"] = True
    accelerator = Accelerator(gradient_accumulation_steps=optim.grad_accum, project_config=project,
                              dataloader_config=DataLoaderConfiguration(dispatch_batches=True), **kwargs)
    set_seed(optim.seed)
    return accelerator


def start_run(accelerator, model, optimizer, run: RunArguments, config: dict):
    """(`TrainState`, `Checkpoints`, `JsonlTracker`, the checkpoint resumed from or None) of a prepared model and
    optimizer: resumes from `run.resume` when given, then opens the tracker (cut back to the checkpoint) and
    writes `config` to run_config.json."""
    state = TrainState()
    checkpoints = Checkpoints(accelerator, run.output_dir, model, optimizer, state, keep=run.keep_checkpoints)
    resumed = checkpoints.resume(run.resume)
    tracker = JsonlTracker(run.output_dir, accelerator.is_main_process, resumed=state if resumed else None)
    tracker.store_init_configuration(config)
    return state, checkpoints, tracker, resumed


def train(accelerator, model, optimizer, train_dl, train_stream, schedule: Schedule, state: TrainState,
          checkpoints: Checkpoints, tracker: JsonlTracker, optim: OptimizationArguments, run: RunArguments,
          loss_fn: Callable, on_step: Callable | None = None, on_epoch_end: Callable | None = None,
          desc: str = "train") -> None:
    """Train from `state` to `schedule.total_steps` optimizer steps; one loop for pre-training and fine-tuning.

    Each micro-batch: `loss_fn(model, batch)` (augmentation and forward pass), backward, and at an optimizer step
    the scheduled lr (times each group's `lr_scale`) and `--clip-grad`. After optimizer step `s`: a metrics row
    (mean loss since the last row, the largest group lr, epoch) when `s % log_every == 0` or at the end, then
    `on_step(s)`, then a checkpoint when `s % save_every == 0` or at the end. After each full epoch:
    `on_epoch_end(state)` with `state.epoch` already counting it. A run resumed mid-epoch re-reads that epoch in
    the same order and skips the `state.batches_in_epoch` batches already consumed, drawing no random number for
    them, so it continues exactly as the uninterrupted run."""
    from tqdm.auto import tqdm

    total = schedule.total_steps
    progress = tqdm(total=total, initial=state.step, disable=not accelerator.is_main_process, desc=desc)
    model.train()
    running, count = 0.0, 0
    while state.step < total:
        set_epoch(train_dl, train_stream, state.epoch)
        skip, seen = state.batches_in_epoch, 0
        for batch_index, batch in enumerate(rng_neutral(train_dl)):
            if batch_index < skip:  # resuming mid-epoch: the same order, already-consumed batches dropped
                continue
            seen += 1
            with accelerator.accumulate(model):
                loss = loss_fn(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    set_lr(optimizer, schedule.lr_at(state.step))
                    if optim.clip_grad:
                        accelerator.clip_grad_norm_(model.parameters(), optim.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_in_epoch = batch_index + 1
            running, count = running + loss.detach().float().item(), count + 1
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            progress.update(1)
            if state.step % run.log_every == 0 or state.step == total:
                lr_now = max(g["lr"] for g in optimizer.param_groups)
                tracker.log({"loss": running / count, "lr": lr_now, "epoch": state.epoch}, state.step)
                progress.set_postfix(loss=f"{running / count:.4f}")
                running, count = 0.0, 0
            if on_step is not None:
                on_step(state.step)
            if (run.save_every and state.step % run.save_every == 0) or state.step == total:
                checkpoints.save(tracker)
            if state.step >= total:
                break
        else:
            if seen == 0 and skip == 0:
                raise ValueError("The training stream yielded no batch.")
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
            if on_epoch_end is not None:
                on_epoch_end(state)
    progress.close()


def end_run(accelerator, tracker: JsonlTracker, checkpoints: Checkpoints) -> None:
    """Finish a run in the order DDP needs: the tracker closes, every rank waits, the references to the prepared
    (DDP) model go (the accelerator's and `checkpoints`'; the caller drops its own first), and only then is the
    process group destroyed. A DDP reducer freed after its process group can hang in gloo's destructor at exit."""
    import gc

    tracker.finish()
    accelerator.wait_for_everyone()
    checkpoints.model = checkpoints.optimizer = None
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()


def save_final(model: torch.nn.Module, folder: str, small_images: bool) -> None:
    """`save_pretrained` the model and its image processor into `folder`: CIFAR's (images as they are) when the
    training images were small, else resize + center crop to the model's `image_size`."""
    from ..image_processing_dmae import DMAEImageProcessor

    model.save_pretrained(folder)
    processor = (DMAEImageProcessor.for_cifar10() if small_images
                 else DMAEImageProcessor(crop_size=model.config.image_size))
    processor.save_pretrained(folder)


def push_folder_to_hub(folder: str, repo_id: str, token=None, commit_message: str = "Upload DMAE model") -> str:
    """Create `repo_id` (if needed) and upload `folder`; returns the commit url."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    return str(api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message=commit_message))
