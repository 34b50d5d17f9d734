# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Training utilities shared by `examples/pretrain.py` and `examples/finetune.py`: AdamW parameter groups (no decay
on norms and biases; layer-wise lr decay for fine-tuning), the per-step warmup + half-cosine schedule, the
checkpointed loop state, a JSON-lines (and TensorBoard when installed) tracker and reconstruction images."""

from __future__ import annotations

import json
import math
import os
import re
import time

import torch


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


class TrainState:
    """Loop counters saved with every checkpoint (`accelerator.register_for_checkpointing`): optimizer steps
    taken, epoch, batches consumed in that epoch, and the best validation metric so far."""

    def __init__(self):
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.best_metric = None

    def state_dict(self) -> dict:
        return dict(step=self.step, epoch=self.epoch, batches_in_epoch=self.batches_in_epoch,
                    best_metric=self.best_metric)

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batches_in_epoch, self.best_metric = int(state["batches_in_epoch"]), state.get("best_metric")


def latest_checkpoint(output_dir: str) -> str | None:
    """Newest `output_dir/checkpoints/checkpoint_N` (Accelerate's automatic naming), or None."""
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return None
    found = [(int(m.group(1)), d) for d in os.listdir(root) if (m := re.fullmatch(r"checkpoint_(\d+)", d))]
    return os.path.join(root, max(found)[1]) if found else None


def resume_from(accelerator, output_dir: str, resume: str | bool) -> str | None:
    """`accelerator.load_state` from `resume` (a checkpoint dir) or, when `resume` is True/"auto", the newest one in
    `output_dir`. Also sets `project_configuration.iteration` past it, which `load_state` does not do (otherwise the
    next automatic save reuses and then deletes the wrong directories)."""
    path = latest_checkpoint(output_dir) if resume in (True, "auto", "latest") else resume
    if not path:
        return None
    if not os.path.isdir(path):
        raise ValueError(f"Checkpoint {path!r} does not exist.")
    accelerator.load_state(path)
    match = re.search(r"checkpoint_(\d+)$", os.path.normpath(path))
    if match:
        accelerator.project_configuration.iteration = int(match.group(1)) + 1
    return path


class JsonlLogger:
    """Metrics of the main process as JSON lines in `output_dir/metrics.jsonl`, and TensorBoard scalars when
    `torch.utils.tensorboard` is usable. Other processes log nothing."""

    def __init__(self, output_dir: str, is_main: bool = True, config: dict | None = None):
        self.is_main = is_main
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.tb = None
        if not is_main:
            return
        os.makedirs(output_dir, exist_ok=True)
        if config is not None:
            with open(os.path.join(output_dir, "run_config.json"), "w") as f:
                json.dump(config, f, indent=2, default=str)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))
        except Exception:  # tensorboard not installed
            self.tb = None

    def log(self, metrics: dict, step: int) -> None:
        if not self.is_main:
            return
        record = {"step": step, "time": time.time(), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@torch.no_grad()
def save_reconstruction(model, pixel_values: torch.Tensor, path: str, num_images: int = 8, seed: int = 0) -> str:
    """PNG grid of rows (original / noisy input with the masked patches greyed / reconstruction / reconstruction
    with the visible noisy patches pasted back) for a `DMAEForPreTraining` model. The reconstruction is
    un-normalised with the per-patch statistics of the clean target when `norm_pix_loss`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .augment import to_float
    from .modeling_dmae import add_gaussian_noise

    was_training = model.training
    model.eval()
    x = to_float(pixel_values[:num_images])
    gen = torch.Generator(device=x.device).manual_seed(seed)
    noisy = add_gaussian_noise(x, model.config.noise_sigma, generator=gen)
    mask_noise = torch.rand(x.shape[0], model.config.num_patches, generator=gen, device=x.device)
    out = model(x, noise=mask_noise, pixel_noise=noisy - x)
    target = model.preprocess_pixels(x)
    pred = out.logits.float()
    if model.config.norm_pix_loss:
        t = model.patchify(target)
        pred = pred * (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(dim=-1, keepdim=True)
    mean = torch.tensor(model.config.image_mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(model.config.image_std, device=x.device).view(1, -1, 1, 1)
    recon = model.unpatchify(pred) * std + mean
    size = recon.shape[-1]
    resize = (lambda t: torch.nn.functional.interpolate(t, size=(size, size), mode="bicubic", align_corners=False)
              if t.shape[-1] != size else t)
    clean, noisy_r = resize(x), resize(noisy)
    p = model.config.patch_size
    mask = out.mask.view(-1, size // p, size // p).repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1)
    masked = noisy_r * (1 - mask) + 0.5 * mask
    pasted = noisy_r * (1 - mask) + recon * mask
    rows = [("original", clean), ("noisy + masked", masked), ("reconstruction", recon), ("recon + visible", pasted)]
    fig, axes = plt.subplots(len(rows), x.shape[0], figsize=(1.6 * x.shape[0], 1.7 * len(rows)), squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(x.shape[0]):
            ax = axes[r][c]
            ax.imshow(images[c].clamp(0, 1).permute(1, 2, 0).cpu().numpy())
            ax.axis("off")
            if c == 0:
                ax.set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    model.train(was_training)
    return path



# --------------------------------------------------------------------------------------------------------------
# Command-line pieces shared by examples/pretrain.py and examples/finetune.py
# --------------------------------------------------------------------------------------------------------------

def add_common_args(parser, stage: str) -> None:
    """Model, data, optimisation and bookkeeping flags shared by both example scripts (`stage`: "pretrain" or
    "finetune"; it only changes defaults)."""
    ft = stage == "finetune"
    g = parser.add_argument_group("model")
    g.add_argument("--preset", default="vit-base", help="DMAEConfig preset: vit-base, vit-large, vit-huge, tiny.")
    g.add_argument("--hidden-size", type=int)
    g.add_argument("--depth", type=int, help="encoder blocks (num_hidden_layers)")
    g.add_argument("--heads", type=int, help="encoder attention heads")
    g.add_argument("--patch-size", type=int)
    g.add_argument("--image-size", type=int, help="the model's native input size (it resizes other inputs)")
    g.add_argument("--decoder-hidden-size", type=int)
    g.add_argument("--decoder-depth", type=int)
    g.add_argument("--decoder-heads", type=int)
    g.add_argument("--normalization", choices=["auto", "cifar10", "imagenet"], default="auto",
                   help="mean/std applied inside the model (auto: cifar10 when the dataset name contains 'cifar')")

    g = parser.add_argument_group("data")
    g.add_argument("--dataset", required=True, help="local folder in the Hub layout or a Hub dataset id")
    g.add_argument("--split", default="train")
    g.add_argument("--image-column", default=None, help="default: image, img, jpg, png or webp")
    g.add_argument("--label-column", default="label")
    g.add_argument("--token", default=None, help="Hub token for gated datasets (else HF_TOKEN / login)")
    g.add_argument("--val-size", type=int, default=0 if not ft else 1000,
                   help="examples held out from the TRAIN split for validation (never the test split)")
    g.add_argument("--max-train-examples", type=int, default=None, help="use only the first N training examples")
    g.add_argument("--train-size", type=int, default=None, help="examples per epoch, when it cannot be counted")
    g.add_argument("--decode-size", type=int, default=None,
                   help="CPU decode: resize shortest edge + center crop to this size (default: keep images smaller "
                        "than 64 px as they are, else 256 for training crops / image_size for evaluation)")
    g.add_argument("--crop-scale", type=float, nargs=2, default=None,
                   help="RandomResizedCrop scale on the device (default: %s for image_size >= 128, none below)"
                        % ("0.08 1" if ft else "0.2 1"))
    g.add_argument("--no-crop", action="store_true", help="disable RandomResizedCrop")
    g.add_argument("--shuffle-buffer", type=int, default=10_000)
    g.add_argument("--num-workers", type=int, default=4)

    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=32 if ft else 64, help="per process and per micro-step")
    g.add_argument("--grad-accum", type=int, default=4 if ft else 8)
    g.add_argument("--epochs", type=float, default=100 if ft else 1100)
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    g.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    g.add_argument("--blr", type=float, default=5e-4 if ft else 1.5e-4, help="lr = blr * effective batch / 256")
    g.add_argument("--min-lr", type=float, default=1e-6 if ft else 0.0)
    g.add_argument("--warmup-epochs", type=float, default=5 if ft else 40)
    g.add_argument("--warmup-steps", type=int, default=None, help="overrides --warmup-epochs")
    g.add_argument("--weight-decay", type=float, default=0.05)
    g.add_argument("--clip-grad", type=float, default=None)
    g.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None,
                   help="default: the accelerate config's setting")
    g.add_argument("--seed", type=int, default=0)

    g = parser.add_argument_group("bookkeeping")
    g.add_argument("--output-dir", required=True)
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint dir, or (no value) from the newest in OUTPUT_DIR/checkpoints")
    g.add_argument("--save-every", type=int, default=1000, help="optimizer steps between checkpoints")
    g.add_argument("--keep-checkpoints", type=int, default=2)
    g.add_argument("--log-every", type=int, default=20)
    g.add_argument("--push-to-hub", metavar="REPO", default=None)
    g.add_argument("--cpu", action="store_true", help="force CPU even when an accelerator is available")


def model_overrides(args) -> dict:
    """DMAEConfig keyword overrides from the model flags that were given."""
    from .configuration_dmae import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    names = dict(hidden_size="hidden_size", depth="num_hidden_layers", heads="num_attention_heads",
                 patch_size="patch_size", image_size="image_size", decoder_hidden_size="decoder_hidden_size",
                 decoder_depth="decoder_num_hidden_layers", decoder_heads="decoder_num_attention_heads")
    out = {field: getattr(args, flag) for flag, field in names.items() if getattr(args, flag, None) is not None}
    norm = normalization(args)
    if norm == "cifar10":
        out.update(image_mean=CIFAR10_MEAN, image_std=CIFAR10_STD)
    elif norm == "imagenet":
        out.update(image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)
    return out


def normalization(args) -> str:
    if args.normalization != "auto":
        return args.normalization
    return "cifar10" if "cifar" in str(args.dataset).lower() else "imagenet"


def make_accelerator(args):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    project = ProjectConfiguration(project_dir=args.output_dir, automatic_checkpoint_naming=True,
                                   total_limit=args.keep_checkpoints)
    kwargs = {"mixed_precision": args.mixed_precision} if args.mixed_precision else {}
    if args.cpu:
        kwargs["cpu"] = True
    # dispatch_batches=True: rank 0 reads the stream, batches are split over ranks (see dmae_hf.data).
    return Accelerator(gradient_accumulation_steps=args.grad_accum, project_config=project,
                       dataloader_config=DataLoaderConfiguration(dispatch_batches=True), **kwargs)


class DataSetup:
    """The streams of one run, built and checked before any training: `train` (decoded, shuffled), `val`
    (decoded, unshuffled, or None), `train_size` (examples per epoch or None), `num_classes`, `class_names` and
    `native_size` (the decoded image size, or None when it varies)."""

    def __init__(self, args, image_size: int, with_labels: bool, num_labels: int | None = None,
                 default_scale=(0.2, 1.0)):
        from . import data

        raw = data.load_image_stream(args.dataset, args.split, args.image_column,
                                     args.label_column if with_labels else None, token=args.token)
        self.class_names = data.class_names_of(raw) if with_labels else None
        self.num_classes = num_labels or (data.num_classes_of(raw) if with_labels else None)
        if with_labels and self.num_classes is None:
            raise ValueError("The label column is not a ClassLabel; pass --num-labels.")
        # Decoded size: small images (CIFAR) as they are; large ones resized + center-cropped.
        probe = data.ImageDecoder()
        first = next(iter(raw.take(1)), None)
        if first is None:
            raise ValueError(f"Split {args.split!r} of {args.dataset!r} is empty.")
        native = probe.decode(first["image"]).shape[-1]
        self.small = args.decode_size is None and native <= 64
        if args.no_crop:
            self.crop_scale = None
        elif args.crop_scale is not None:
            self.crop_scale = tuple(args.crop_scale)
        else:
            self.crop_scale = default_scale if image_size >= 128 and not self.small else None
        if self.small:
            train_dec = data.ImageDecoder(num_labels=self.num_classes)
            eval_dec = train_dec
        else:
            size = args.decode_size or (256 if self.crop_scale is not None else image_size)
            train_dec = data.ImageDecoder(size, size, num_labels=self.num_classes)
            eval_dec = data.ImageDecoder(args.decode_size or round(image_size * 256 / 224), image_size,
                                         num_labels=self.num_classes)
        self.augment_size = image_size if self.crop_scale is not None else (None if self.small else image_size)
        if args.max_train_examples:
            raw = data.first_examples(raw, args.max_train_examples + args.val_size)
        data.validate_stream(raw, train_dec)
        train_raw, val_raw = data.hold_out(raw, args.val_size)
        total = args.train_size
        if total is None:
            total = args.max_train_examples or data.count_examples(args.dataset, args.split, token=args.token)
            if total is not None and not args.max_train_examples:
                total -= args.val_size
        self.train_size = total
        self.train = data.build_stream(train_raw, train_dec, shuffle=True, seed=args.seed,
                                       buffer_size=args.shuffle_buffer)
        self.val = data.build_stream(val_raw, eval_dec, shuffle=False) if val_raw is not None else None
        self.val_size = args.val_size

    def loader(self, dataset, batch_size: int, num_workers: int):
        from torch.utils.data import DataLoader

        from .data import UniformBatches, collate

        workers = min(num_workers, dataset.num_shards)
        # A private generator for the workers' base seed (decoding uses no randomness). Accelerate's batch
        # dispatcher drops it, so the training loops also iterate through `rng_neutral`.
        generator = torch.Generator().manual_seed(0)
        if workers > 1:  # workers in a nested loader, full batches out (see UniformBatches)
            return DataLoader(UniformBatches(dataset, workers), batch_size=batch_size, collate_fn=collate,
                              generator=generator)
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers,
                          persistent_workers=False, generator=generator)


def schedule_lengths(args, accelerator, train_size: int | None) -> tuple[int, int, float]:
    """(total optimizer steps, warmup steps, lr). Effective batch = batch * grad_accum * processes; an epoch has
    ceil(train_size / (batch * processes)) micro-batches."""
    eff_batch = args.batch_size * args.grad_accum * accelerator.num_processes
    lr = args.lr if args.lr is not None else args.blr * eff_batch / 256
    steps_per_epoch = None
    if train_size is not None:
        micro = math.ceil(train_size / (args.batch_size * accelerator.num_processes))
        steps_per_epoch = math.ceil(micro / args.grad_accum)
    if args.max_steps is not None:
        total = args.max_steps
    elif steps_per_epoch is None:
        raise ValueError("Cannot count the training examples of this dataset: pass --max-steps or --train-size.")
    else:
        total = max(1, math.ceil(args.epochs * steps_per_epoch))
    if args.warmup_steps is not None:
        warmup = args.warmup_steps
    elif steps_per_epoch is not None:
        warmup = round(args.warmup_epochs * steps_per_epoch)
    else:
        warmup = 0
    return total, min(warmup, total), lr


def rng_neutral(iterable):
    """Iterate `iterable` (a DataLoader) without touching torch's global RNG: starting a DataLoader iterator draws
    its workers' base seed from it. A run resumed mid-epoch starts its iterator at a different step than the
    uninterrupted run, so without this its augmentation, masks and noise would differ from the uninterrupted run's
    from the resumed step on."""
    state = torch.get_rng_state()
    iterator = iter(iterable)
    try:
        first = next(iterator)
    except StopIteration:
        return
    finally:
        torch.set_rng_state(state)
    yield first
    yield from iterator


def set_epoch(dataloader, dataset, epoch: int) -> None:
    if hasattr(dataloader, "set_epoch"):
        dataloader.set_epoch(epoch)
    else:
        dataset.set_epoch(epoch)


def push_folder_to_hub(folder: str, repo_id: str, token=None, commit_message: str = "Upload DMAE model") -> str:
    """Create `repo_id` (if needed) and upload `folder`; returns the commit url."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    return str(api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message=commit_message))


__all__ = [
    "param_groups_weight_decay",
    "param_groups_layer_decay",
    "layer_id",
    "lr_at",
    "set_lr",
    "TrainState",
    "latest_checkpoint",
    "resume_from",
    "JsonlLogger",
    "read_metrics",
    "save_reconstruction",
    "add_common_args",
    "model_overrides",
    "normalization",
    "make_accelerator",
    "DataSetup",
    "schedule_lengths",
    "set_epoch",
    "rng_neutral",
    "push_folder_to_hub",
]
