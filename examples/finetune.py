#!/usr/bin/env python
# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
r"""Fine-tune a pre-trained DMAE encoder into the base classifier of a randomized-smoothing classifier (defaults:
the paper's ImageNet ViT-B recipe), or train one from scratch (`--from-scratch`, Cohen et al.'s Gaussian data
augmentation baseline when combined with `--consistency-lambda 0 --consistency-eta 0 --num-noise-samples 1`).

Loss (computed by `DMAEForSmoothedClassification` in training mode): m noisy copies x + N(0, sigma^2 I) of every
(augmented, possibly mixed) image, CE (+ label smoothing) averaged over the copies + lambda * mean KL(p_bar || p_i)
+ eta * H(p_bar). AdamW(0.9, 0.999) with layer-wise lr decay, per-step warmup + half-cosine. Each epoch reports
clean and noisy accuracy on a validation set held out from the training split; at the end a quick CERTIFY on that
set (small n) when `dmae_hf.smoothing` provides it.

    # CIFAR-10, tiny model, CPU (uoft-cs/cifar10 from the Hub, or --dataset PATH: a local copy in the Hub layout,
    # a folder holding data/{split}-*.parquet)
    python examples/finetune.py --model runs/pt/final --dataset uoft-cs/cifar10 --image-column img \
        --batch-size 64 --grad-accum 1 --epochs 1 --val-size 500 --num-workers 1 --output-dir runs/ft
    # paper CIFAR-10 recipe from a ViT-B DMAE checkpoint
    python examples/finetune.py --model dmae-vit-base --dataset uoft-cs/cifar10 --image-size 224 --batch-size 64 \
        --grad-accum 4 --epochs 50 --blr 5e-4 --layer-decay 0.65 --drop-path 0.1 --label-smoothing 0.1 \
        --smoothing-sigma 0.25

Checkpoints (`--save-every`, `--keep-checkpoints`) are written atomically without pickle; `--resume` continues
from the newest complete one. Bad input ends with one line `error: ...` and exit status 2 (`--debug`: traceback).
"""

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a source checkout

from dmae_hf import DMAEConfig, DMAEForSmoothedClassification, defaults  # noqa: E402
from dmae_hf.hub.model_card import render_model_card  # noqa: E402
from dmae_hf.smoothing import add_gaussian_noise  # noqa: E402
from dmae_hf.training.arguments import (  # noqa: E402
    DEFAULT_CROP_SCALE,
    HelpFormatter,
    add_arguments,
    add_common_args,
    add_renamed,
    run_main,
    training_arguments,
)
from dmae_hf.training.augment import DeviceAugment, MixupCutmix, to_float  # noqa: E402
from dmae_hf.training.data_setup import DataSetup  # noqa: E402
from dmae_hf.training.loop import end_run, make_accelerator, push_folder_to_hub, save_final, start_run, train  # noqa: E402
from dmae_hf.training.optim import param_groups_layer_decay, schedule_lengths  # noqa: E402


@dataclass
class ClassifierArguments:
    """The smoothed classifier's base classifier f and its noisy fine-tuning objective."""

    num_labels: int | None = field(default=None, metadata={"help": "classes (None: the ClassLabel's number)"})
    smoothing_sigma: float = field(default=0.25, metadata={
        "help": "smoothing noise std in [0,1] pixels: the sigma the classifier is trained for and certified at"})
    consistency_lambda: float = field(default=2.0, metadata={"help": "weight of the KL consistency term"})
    consistency_eta: float = field(default=0.5, metadata={"help": "weight of the entropy term"})
    num_noise_samples: int = field(default=2, metadata={"help": "noisy copies per image (m)"})
    label_smoothing: float = field(default=0.1, metadata={"help": "label smoothing of the cross-entropy"})
    layer_decay: float = field(default=0.65, metadata={"help": "layer-wise lr decay"})
    drop_path: float = field(default=0.1, metadata={"help": "stochastic depth rate"})
    pooling: str | None = field(default=None, metadata={"help": "None: the checkpoint's or preset's",
                                                              "choices": ["mean", "cls"]})


@dataclass
class AugmentationArguments:
    """DeiT-style augmentation of the fine-tuning recipe (all off by default, the CIFAR-10 transfer's setting)."""

    mixup: float = field(default=0.0, metadata={"help": "mixup alpha (paper ImageNet: 0.8)"})
    cutmix: float = field(default=0.0, metadata={"help": "cutmix alpha (paper ImageNet: 1.0)"})
    mixup_prob: float = field(default=1.0, metadata={"help": "probability of mixing a batch"})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "probability of cutmix instead of mixup"})
    randaug: int = field(default=0, metadata={"help": "RandAugment ops per image (paper ImageNet: 2, m9)"})
    randaug_m: int = field(default=9, metadata={"help": "RandAugment magnitude"})
    reprob: float = field(default=0.0, metadata={"help": "random erasing probability"})


@dataclass
class EvaluationArguments:
    """Validation during training and the quick CERTIFY of held-out images at the end."""

    eval_every: int = field(default=1, metadata={"help": "epochs between validations (0: only at the end)"})
    certify_examples: int = field(default=100, metadata={"help": "validation images certified at the end"})
    certify_n0: int = field(default=defaults.N0, metadata={"help": "CERTIFY selection samples"})
    certify_n: int = field(default=defaults.DEMO_N, metadata={
        "help": "CERTIFY estimation samples (a quick check; the paper's tables use 100000)"})
    certify_alpha: float = field(default=defaults.ALPHA, metadata={"help": "CERTIFY failure probability"})
    certify_batch: int = field(default=defaults.NOISE_BATCH, metadata={"help": "noisy samples per forward pass"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_common_args(parser, "finetune")
    src = parser.add_argument_group("model source").add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="pre-trained DMAE directory or Hub id (DMAEForPreTraining or classifier)")
    src.add_argument("--from-scratch", action="store_true", help="random init from --preset (Cohen's baseline)")
    for title, cls in (("smoothed classifier", ClassifierArguments), ("augmentation", AugmentationArguments),
                       ("evaluation", EvaluationArguments)):
        add_arguments(parser, cls, title)
    add_renamed(parser, "--sigma", "--smoothing-sigma (the noise the classifier is trained for)")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def build_model(args, common, num_labels: int, class_names) -> DMAEForSmoothedClassification:
    overrides = dict(smoothing_sigma=args.smoothing_sigma, consistency_lambda=args.consistency_lambda,
                     consistency_eta=args.consistency_eta, num_noise_samples=args.num_noise_samples,
                     label_smoothing=args.label_smoothing, drop_path_rate=args.drop_path, num_labels=num_labels)
    if class_names:
        overrides.update(id2label=dict(enumerate(class_names)), label2id={n: i for i, n in enumerate(class_names)})
    if args.pooling:
        overrides["pooling"] = args.pooling
    arch = common.model.config_overrides(common.data.dataset)
    if args.from_scratch:
        return DMAEForSmoothedClassification(DMAEConfig.from_preset(common.model.preset, **arch, **overrides))
    arch = {k: v for k, v in arch.items() if k in ("image_mean", "image_std", "image_size")}
    if common.model.normalization == "auto":  # keep the checkpoint's statistics unless the dataset is CIFAR
        arch = {k: v for k, v in arch.items() if k == "image_size" or "cifar" in str(common.data.dataset).lower()}
    model, info = DMAEForSmoothedClassification.from_pretrained(args.model, output_loading_info=True, **arch,
                                                                **overrides)
    if any(k.startswith("classifier.") for k in info["missing_keys"]):  # new head, as MAE: trunc_normal(2e-5)
        torch.nn.init.trunc_normal_(model.classifier.weight, std=2e-5)
        torch.nn.init.zeros_(model.classifier.bias)
    return model


@torch.no_grad()
def evaluate(model, loader, accelerator, sigma: float, seed: int) -> dict:
    """Clean and noisy (one N(0, sigma^2) draw per image, fixed seed) top-1 accuracy of the base classifier."""
    model.eval()
    gen = torch.Generator(device=accelerator.device).manual_seed(seed + accelerator.process_index)
    correct_clean = correct_noisy = total = 0
    for batch in loader:
        x, y = to_float(batch["pixel_values"]), batch["labels"]
        clean = model(pixel_values=x).logits.argmax(-1)
        noisy = model(pixel_values=add_gaussian_noise(x, sigma, generator=gen)).logits.argmax(-1)
        clean, noisy, y = accelerator.gather_for_metrics((clean, noisy, y))
        correct_clean += (clean == y).sum().item()
        correct_noisy += (noisy == y).sum().item()
        total += y.numel()
    model.train()
    return {"val_clean_acc": correct_clean / max(total, 1), "val_noisy_acc": correct_noisy / max(total, 1),
            "val_examples": total}


def quick_certify(model, val_stream, args, output_dir: str, device) -> dict | None:
    """CERTIFY the first `--certify-examples` validation images (main process); writes certification.jsonl and a
    certified-accuracy plot. Returns the summary."""
    from torch.utils.data import DataLoader

    from dmae_hf.certification.analysis import DEFAULT_RADII, certificate_arrays, certified_accuracy, plot_curve
    from dmae_hf.training.streams import collate

    model.eval()
    records, certificates, seconds = [], [], []
    loader = DataLoader(val_stream.take(args.certify_examples), batch_size=1, collate_fn=collate)
    for i, batch in enumerate(tqdm(loader, total=args.certify_examples, desc="certify")):
        x = to_float(batch["pixel_values"][0]).to(device)
        label = int(batch["labels"][0])
        start = time.time()
        cert = model.certify(x, n0=args.certify_n0, n=args.certify_n, alpha=args.certify_alpha,
                             batch_size=args.certify_batch, seed=args.seed)
        certificates.append(cert)
        seconds.append(time.time() - start)
        records.append({"idx": i, "label": label, "predict": cert.prediction, "radius": cert.radius})
    correct, radius = certificate_arrays(certificates, [r["label"] for r in records])
    with open(os.path.join(output_dir, "certification.jsonl"), "w") as f:
        for r, ok, t in zip(records, correct, seconds, strict=True):
            f.write(json.dumps({**r, "correct": bool(ok), "time": t}) + "\n")
    stats = certified_accuracy(correct, radius, DEFAULT_RADII)
    summary = {"sigma": model.config.smoothing_sigma, "n0": args.certify_n0, "n": args.certify_n,
               "alpha": args.certify_alpha, "num_images": len(records),
               "certified_accuracy": {str(r): a
                                      for r, a in zip(stats["radii"], stats["certified_accuracy"], strict=True)}}
    with open(os.path.join(output_dir, "certification_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    plot_curve(ax, correct, radius)
    ax.set_title(f"sigma={summary['sigma']}, n={args.certify_n}, {len(records)} val images", fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "certified_accuracy.png"), dpi=100)
    plt.close(fig)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    common = training_arguments(args)
    optim, run = common.optim, common.run
    accelerator = make_accelerator(optim, run)  # seeded with optim.seed
    data = DataSetup(common.data, common.model.image_size or _image_size(args), with_labels=True, seed=optim.seed,
                     num_labels=args.num_labels, default_scale=DEFAULT_CROP_SCALE["finetune"],
                     rank=accelerator.process_index, num_processes=accelerator.num_processes)
    model = build_model(args, common, data.num_classes, data.class_names)
    config = model.config
    augment = DeviceAugment(data.augment_size, scale=data.crop_scale, hflip=True, randaug_n=args.randaug,
                            randaug_m=args.randaug_m, erase_prob=args.reprob).to(accelerator.device)
    mixer = MixupCutmix(data.num_classes, args.mixup, args.cutmix, args.mixup_prob, args.mixup_switch_prob)
    schedule = schedule_lengths(optim, accelerator.num_processes, data.train_size, drop_last=data.drop_last)

    groups = param_groups_layer_decay(model, optim.weight_decay, args.layer_decay)
    optimizer = torch.optim.AdamW(groups, lr=schedule.lr, betas=(0.9, 0.999))
    val_dl = data.loader(data.val, optim.batch_size, 0) if data.val is not None else None
    model, optimizer = accelerator.prepare(model, optimizer)
    train_dl = data.train_loader(accelerator, optim.batch_size, common.data.num_workers)
    if val_dl is not None:
        val_dl = accelerator.prepare(val_dl)
    state, checkpoints, tracker, resumed = start_run(
        accelerator, model, optimizer, run,
        config=dict(vars(args), total_steps=schedule.total_steps, warmup_steps=schedule.warmup_steps,
                    lr=schedule.lr, num_processes=accelerator.num_processes, model=config.to_dict()))
    accelerator.print(f"DMAE fine-tuning: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
                      f"{data.num_classes} classes, {schedule.total_steps} steps (warmup {schedule.warmup_steps}), "
                      f"lr {schedule.lr:.3g}, sigma {config.smoothing_sigma}, {accelerator.num_processes} process(es)"
                      f"{', resumed from ' + resumed if resumed else ''}")

    def loss_fn(model, batch):
        images = augment(batch["pixel_values"])
        images, targets = mixer(images, batch["labels"]) if mixer.active else (images, batch["labels"])
        return model(pixel_values=images, labels=targets).loss

    def on_epoch_end(state) -> None:
        if val_dl is not None and args.eval_every and state.epoch % args.eval_every == 0:
            metrics = evaluate(model, val_dl, accelerator, config.smoothing_sigma, optim.seed)
            tracker.log({**metrics, "epoch": state.epoch}, state.step)
            accelerator.print(f"epoch {state.epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    train(accelerator, model, optimizer, train_dl, data.train, schedule, state, checkpoints, tracker, optim, run,
          loss_fn, on_epoch_end=on_epoch_end, desc="finetune")

    final_metrics = {}
    if val_dl is not None:
        final_metrics = evaluate(model, val_dl, accelerator, config.smoothing_sigma, optim.seed)
    if final_metrics:
        tracker.log({**final_metrics, "final": True}, state.step)
        accelerator.print("final: " + ", ".join(f"{k} {v:.4g}" for k, v in final_metrics.items()))
    accelerator.wait_for_everyone()
    final = os.path.join(args.output_dir, "final")
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        save_final(unwrapped, final, data.small)
        results = dict(final_metrics)
        if data.val is not None and args.certify_examples > 0:
            summary = quick_certify(unwrapped, data.val, args, final, accelerator.device)
            if summary:
                results["certification"] = summary
                accelerator.print("certified accuracy: " + json.dumps(summary["certified_accuracy"]))
        with open(os.path.join(final, "eval_results.json"), "w") as f:
            json.dump(results, f, indent=2)
        name = args.push_to_hub or os.path.basename(os.path.abspath(args.output_dir))
        with open(os.path.join(final, "README.md"), "w") as f:
            f.write(render_model_card(name, unwrapped.config, results=results))
        if args.push_to_hub:
            print("pushed:", push_folder_to_hub(final, args.push_to_hub, token=args.token))
    model = None  # DDP's reducer must go before the process group: see end_run
    end_run(accelerator, tracker, checkpoints)
    return 0


def _image_size(args) -> int:
    """The image size the model will have (needed before the model is built, to plan the crops)."""
    if args.from_scratch:
        return DMAEConfig.from_preset(args.preset).image_size
    return DMAEConfig.from_pretrained(args.model).image_size


if __name__ == "__main__":
    sys.exit(run_main(main))
