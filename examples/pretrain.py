#!/usr/bin/env python
# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
r"""DMAE pre-training with Accelerate (defaults: the paper's ViT-B recipe).

Every image gets Gaussian noise N(0, sigma^2) in [0,1] pixel space (added by the model), 75% of the patches are
masked, and the decoder reconstructs the clean image; the loss averages over all patches (`--mae`: sigma 0 and
masked patches only, the MAE baseline). AdamW(0.9, 0.95), weight decay 0.05 except on 1-D parameters and biases,
lr = blr * effective batch / 256 with per-step linear warmup and half-cosine decay.

    # CPU smoke run on CIFAR-10 with the tiny model (uoft-cs/cifar10 from the Hub, or a local Hub-layout copy:
    # --dataset $DMAE_DATA_DIR/cifar10 or ../shared/data/cifar10)
    python examples/pretrain.py --preset tiny --dataset uoft-cs/cifar10 --image-column img \
        --batch-size 64 --grad-accum 1 --max-steps 200 --warmup-steps 20 --num-workers 1 --output-dir runs/pt
    # paper ViT-B on ImageNet, 8 GPUs
    accelerate launch --config_file examples/accelerate_configs/multi_gpu.yaml examples/pretrain.py \
        --dataset ILSVRC/imagenet-1k --output-dir runs/dmae-b

Checkpoints (`--save-every`, `--keep-checkpoints`) are written atomically without pickle; `--resume` continues
from the newest complete one. Bad input ends with one line `error: ...` and exit status 2 (`--debug`: traceback).
"""

import argparse
import os
import sys

import torch
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a source checkout

from dmae_hf import DMAEConfig, DMAEForPreTraining, DMAEImageProcessor  # noqa: E402
from dmae_hf.augment import DeviceAugment  # noqa: E402
from dmae_hf.training import (  # noqa: E402
    Checkpoints,
    DataSetup,
    HelpFormatter,
    JsonlLogger,
    TrainState,
    add_common_args,
    lr_at,
    make_accelerator,
    model_overrides,
    param_groups_weight_decay,
    push_folder_to_hub,
    rng_neutral,
    run_main,
    save_reconstruction,
    schedule_lengths,
    set_epoch,
    set_lr,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(parser, "pretrain")
    g = parser.add_argument_group("DMAE")
    g.add_argument("--sigma", type=float, default=0.25, help="pre-training noise std in [0,1] pixels")
    g.add_argument("--mask-ratio", type=float, default=0.75, help="fraction of patches masked")
    g.add_argument("--mae", action="store_true", help="MAE baseline: no noise, loss on masked patches only")
    g.add_argument("--no-norm-pix-loss", action="store_true", help="regress raw pixels, not per-patch normalised")
    g.add_argument("--init-from", default=None, help="start from these pre-trained weights (continued pre-training)")
    g.add_argument("--recon-every", type=int, default=500,
                   help="optimizer steps between reconstruction PNGs (0: none)")
    return parser


def parse_args(argv=None):
    args = build_parser().parse_args(argv)
    args.label_column = None
    return args


def build_model(args) -> DMAEForPreTraining:
    overrides = model_overrides(args)
    overrides.update(noise_sigma=0.0 if args.mae else args.sigma, mask_ratio=args.mask_ratio,
                     loss_on_all_patches=not args.mae, norm_pix_loss=not args.no_norm_pix_loss)
    if args.init_from:
        return DMAEForPreTraining.from_pretrained(args.init_from, **overrides)
    return DMAEForPreTraining(DMAEConfig.from_preset(args.preset, **overrides))


def main(argv=None) -> int:
    args = parse_args(argv)
    accelerator = make_accelerator(args)
    from accelerate.utils import set_seed

    set_seed(args.seed)
    model = build_model(args)
    config = model.config
    data = DataSetup(args, config.image_size, with_labels=False)
    augment = DeviceAugment(data.augment_size, scale=data.crop_scale, hflip=True).to(accelerator.device)
    total_steps, warmup_steps, lr = schedule_lengths(args, accelerator, data.train_size)

    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, args.weight_decay), lr=lr, betas=(0.9, 0.95))
    train_dl = data.loader(data.train, args.batch_size, args.num_workers)
    model, optimizer, train_dl = accelerator.prepare(model, optimizer, train_dl)
    state = TrainState()
    checkpoints = Checkpoints(accelerator, args.output_dir, model, optimizer, state, keep=args.keep_checkpoints)
    resumed = checkpoints.resume(args.resume)

    logger = JsonlLogger(args.output_dir, accelerator.is_main_process, resumed=state if resumed else None,
                         config=dict(vars(args), total_steps=total_steps, warmup_steps=warmup_steps, lr=lr,
                                     num_processes=accelerator.num_processes, model=config.to_dict()))
    recon_batch = None
    if accelerator.is_main_process and args.recon_every:
        source = data.val if data.val is not None else data.train
        recon_batch = next(iter(data.loader(source, 8, 0)))["pixel_values"].to(accelerator.device)
    accelerator.print(f"DMAE pre-training: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
                      f"{total_steps} steps (warmup {warmup_steps}), lr {lr:.3g}, "
                      f"{accelerator.num_processes} process(es){', resumed from ' + resumed if resumed else ''}")

    progress = tqdm(total=total_steps, initial=state.step, disable=not accelerator.is_main_process, desc="pretrain")
    model.train()
    running, count = 0.0, 0
    while state.step < total_steps:
        set_epoch(train_dl, data.train, state.epoch)
        skip, seen = state.batches_in_epoch, 0
        for batch_index, batch in enumerate(rng_neutral(train_dl)):
            if batch_index < skip:  # resuming mid-epoch: the same order, already-consumed batches dropped
                continue
            seen += 1
            with accelerator.accumulate(model):
                images = augment(batch["pixel_values"])
                loss = model(pixel_values=images).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    set_lr(optimizer, lr_at(state.step, total_steps, warmup_steps, lr, args.min_lr))
                    if args.clip_grad:
                        accelerator.clip_grad_norm_(model.parameters(), args.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_in_epoch = batch_index + 1
            running, count = running + loss.detach().float().item(), count + 1
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            progress.update(1)
            if state.step % args.log_every == 0 or state.step == total_steps:
                metrics = {"loss": running / count, "lr": optimizer.param_groups[-1]["lr"], "epoch": state.epoch}
                logger.log(metrics, state.step)
                progress.set_postfix(loss=f"{metrics['loss']:.4f}")
                running, count = 0.0, 0
            if recon_batch is not None and state.step % args.recon_every == 0:
                save_reconstruction(accelerator.unwrap_model(model), recon_batch,
                                    os.path.join(args.output_dir, "reconstructions", f"step_{state.step:07d}.png"))
            if (args.save_every and state.step % args.save_every == 0) or state.step == total_steps:
                checkpoints.save(logger)
            if state.step >= total_steps:
                break
        else:
            if seen == 0 and skip == 0:
                raise ValueError("The training stream yielded no batch.")
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
    progress.close()

    accelerator.wait_for_everyone()
    final = os.path.join(args.output_dir, "final")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.save_pretrained(final)
        processor = DMAEImageProcessor.for_cifar10() if data.small else DMAEImageProcessor(crop_size=config.image_size)
        processor.save_pretrained(final)
        if recon_batch is not None:
            save_reconstruction(unwrapped, recon_batch, os.path.join(final, "reconstruction.png"))
        if args.push_to_hub:
            print("pushed:", push_folder_to_hub(final, args.push_to_hub, token=args.token))
    logger.close()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
