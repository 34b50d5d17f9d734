#!/usr/bin/env python
# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
r"""DMAE pre-training with Accelerate (defaults: the paper's ViT-B recipe).

Every image gets Gaussian noise N(0, sigma^2) in [0,1] pixel space (added by the model), 75% of the patches are
masked, and the decoder reconstructs the clean image; the loss averages over all patches (`--mae`: sigma 0 and
masked patches only, the MAE baseline). AdamW(0.9, 0.95), weight decay 0.05 except on 1-D parameters and biases,
lr = blr * effective batch / 256 with per-step linear warmup and half-cosine decay.

    # CPU smoke run on CIFAR-10 with the tiny model (uoft-cs/cifar10 from the Hub, or --dataset PATH: a local copy
    # in the Hub layout, a folder holding data/{split}-*.parquet)
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a source checkout

from dmae_hf import DMAEConfig, DMAEForPreTraining  # noqa: E402
from dmae_hf.training.arguments import (  # noqa: E402
    HelpFormatter,
    add_common_args,
    add_renamed,
    run_main,
    training_arguments,
)
from dmae_hf.training.augment import DeviceAugment  # noqa: E402
from dmae_hf.training.data_setup import DataSetup  # noqa: E402
from dmae_hf.training.loop import end_run, make_accelerator, push_folder_to_hub, save_final, start_run, train  # noqa: E402
from dmae_hf.training.optim import param_groups_weight_decay, schedule_lengths  # noqa: E402
from dmae_hf.training.visualize import save_reconstruction  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(parser, "pretrain")
    g = parser.add_argument_group("DMAE")
    g.add_argument("--noise-sigma", type=float, default=0.25,
                   help="pre-training noise std in [0,1] pixels (--mae: 0)")
    add_renamed(parser, "--sigma", "--noise-sigma (the pre-training noise)")
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


def build_model(args, common) -> DMAEForPreTraining:
    overrides = common.model.config_overrides(common.data.dataset)
    overrides.update(noise_sigma=0.0 if args.mae else args.noise_sigma, mask_ratio=args.mask_ratio,
                     loss_on_all_patches=not args.mae, norm_pix_loss=not args.no_norm_pix_loss)
    if args.init_from:
        return DMAEForPreTraining.from_pretrained(args.init_from, **overrides)
    return DMAEForPreTraining(DMAEConfig.from_preset(common.model.preset, **overrides))


def main(argv=None) -> int:
    args = parse_args(argv)
    common = training_arguments(args)
    optim, run = common.optim, common.run
    accelerator = make_accelerator(optim, run)  # seeded with optim.seed
    model = build_model(args, common)
    config = model.config
    data = DataSetup(common.data, config.image_size, with_labels=False, seed=optim.seed,
                     rank=accelerator.process_index, num_processes=accelerator.num_processes)
    augment = DeviceAugment(data.augment_size, scale=data.crop_scale, hflip=True).to(accelerator.device)
    schedule = schedule_lengths(optim, accelerator.num_processes, data.train_size, drop_last=data.drop_last)

    optimizer = torch.optim.AdamW(param_groups_weight_decay(model, optim.weight_decay), lr=schedule.lr,
                                  betas=(0.9, 0.95))
    model, optimizer = accelerator.prepare(model, optimizer)
    train_dl = data.train_loader(accelerator, optim.batch_size, common.data.num_workers)
    state, checkpoints, tracker, resumed = start_run(
        accelerator, model, optimizer, run,
        config=dict(vars(args), total_steps=schedule.total_steps, warmup_steps=schedule.warmup_steps,
                    lr=schedule.lr, num_processes=accelerator.num_processes, model=config.to_dict()))
    recon_batch = None
    if accelerator.is_main_process and args.recon_every:
        source = data.val if data.val is not None else data.train
        recon_batch = next(iter(data.loader(source, 8, 0)))["pixel_values"].to(accelerator.device)
    accelerator.print(f"DMAE pre-training: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
                      f"{schedule.total_steps} steps (warmup {schedule.warmup_steps}), lr {schedule.lr:.3g}, "
                      f"{accelerator.num_processes} process(es){', resumed from ' + resumed if resumed else ''}")

    def loss_fn(model, batch):
        return model(pixel_values=augment(batch["pixel_values"])).loss

    def on_step(step: int) -> None:
        if recon_batch is not None and step % args.recon_every == 0:
            save_reconstruction(accelerator.unwrap_model(model), recon_batch,
                                os.path.join(run.output_dir, "reconstructions", f"step_{step:07d}.png"))

    train(accelerator, model, optimizer, train_dl, data.train, schedule, state, checkpoints, tracker, optim, run,
          loss_fn, on_step=on_step, desc="pretrain")

    accelerator.wait_for_everyone()
    final = os.path.join(run.output_dir, "final")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_final(unwrapped, final, data.small)
        if recon_batch is not None:
            save_reconstruction(unwrapped, recon_batch, os.path.join(final, "reconstruction.png"))
        if run.push_to_hub:
            print("pushed:", push_folder_to_hub(final, run.push_to_hub, token=common.data.token))
    model = None  # DDP's reducer must go before the process group: see end_run
    end_run(accelerator, tracker, checkpoints)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
