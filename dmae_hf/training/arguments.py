# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Typed arguments of a training run: `ModelArguments`, `DataArguments`, `OptimizationArguments` and
`RunArguments` (the "bookkeeping" flags: output, checkpoints, logging, Hub), one dataclass per `--help` group.

The library takes these dataclasses, never an argparse namespace. Each field's `metadata` carries its help text
(and `choices`, `nargs`, `const`, `metavar`, as `HfArgumentParser` reads `metadata["help"]`); the flag is the field
name with dashes (`batch_size` -> `--batch-size`). `transformers.HfArgumentParser` is not used because it would add
an underscore alias beside every dashed flag (`--batch_size` and `--batch-size`) and cannot give one field a
different default per stage: `add_arguments` below is its small equivalent that keeps the scripts' flag names,
help texts and shown defaults exactly. The field defaults are the pre-training recipe; `FINETUNE_DEFAULTS` holds
the fine-tuning recipe's."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass, field

from ..configuration_dmae import ARCHITECTURES


def _arg(help: str, **kwargs) -> dict:
    return dict(help=help, **kwargs)


@dataclass
class ModelArguments:
    """The DMAEConfig architecture: a preset and the sizes that override it (None: the preset's)."""

    preset: str = field(default="vit-base", metadata=_arg(
        "architecture: a DMAEConfig.from_preset name (the other model flags override its fields)",
        choices=list(ARCHITECTURES)))
    hidden_size: int | None = field(default=None, metadata=_arg("encoder width (None: the preset's)"))
    depth: int | None = field(default=None, metadata=_arg("encoder blocks, num_hidden_layers (None: the preset's)"))
    heads: int | None = field(default=None, metadata=_arg("encoder attention heads (None: the preset's)"))
    patch_size: int | None = field(default=None, metadata=_arg("patch size in pixels (None: the preset's)"))
    image_size: int | None = field(default=None, metadata=_arg(
        "the model's native input size; it resizes other inputs (None: the preset's or checkpoint's)"))
    decoder_hidden_size: int | None = field(default=None, metadata=_arg("decoder width (None: the preset's)"))
    decoder_depth: int | None = field(default=None, metadata=_arg("decoder blocks (None: the preset's)"))
    decoder_heads: int | None = field(default=None, metadata=_arg("decoder attention heads (None: the preset's)"))
    normalization: str = field(default="auto", metadata=_arg(
        "mean/std applied inside the model (auto: cifar10 when the dataset name contains 'cifar')",
        choices=["auto", "cifar10", "imagenet"]))

    def normalization_for(self, dataset: str) -> str:
        """"cifar10" or "imagenet": the given `normalization`, or for "auto" cifar10 when `dataset` names CIFAR."""
        if self.normalization != "auto":
            return self.normalization
        return "cifar10" if "cifar" in str(dataset).lower() else "imagenet"

    def config_overrides(self, dataset: str) -> dict:
        """DMAEConfig keyword overrides from the sizes that were given and the mean/std of `normalization_for`."""
        from ..configuration_dmae import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        names = dict(hidden_size="hidden_size", depth="num_hidden_layers", heads="num_attention_heads",
                     patch_size="patch_size", image_size="image_size", decoder_hidden_size="decoder_hidden_size",
                     decoder_depth="decoder_num_hidden_layers", decoder_heads="decoder_num_attention_heads")
        out = {key: getattr(self, name) for name, key in names.items() if getattr(self, name) is not None}
        if self.normalization_for(dataset) == "cifar10":
            out.update(image_mean=CIFAR10_MEAN, image_std=CIFAR10_STD)
        else:
            out.update(image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)
        return out


# RandomResizedCrop scale used when --crop-scale is not given (MAE's pre-training and fine-tuning recipes).
DEFAULT_CROP_SCALE = {"pretrain": (0.2, 1.0), "finetune": (0.08, 1.0)}
CROP_SCALE_HELP = "RandomResizedCrop scale on the device (None: {} for image_size >= 128, none below)"


@dataclass
class DataArguments:
    """The training stream: which dataset, split and columns, how much of it, and how it is decoded."""

    dataset: str = field(metadata=_arg(
        "Hub dataset id (uoft-cs/cifar10, ILSVRC/imagenet-1k) or the path of a local copy in the Hub layout "
        "(a folder holding data/{split}-*.parquet)", required=True))
    split: str = field(default="train", metadata=_arg("training split"))
    image_column: str | None = field(default=None, metadata=_arg(
        "image column (None: the first column named image, img, jpg, jpeg, png or webp, else the first Image "
        "column)"))
    label_column: str | None = field(default="label", metadata=_arg("label column (a ClassLabel)"))
    token: str | None = field(default=None, metadata=_arg(
        "Hub token for gated datasets (None: HF_TOKEN or the saved login)"))
    val_size: int = field(default=0, metadata=_arg(
        "examples held out from the TRAIN split for validation (never the test split)"))
    max_train_examples: int | None = field(default=None, metadata=_arg("use only the first N training examples"))
    train_size: int | None = field(default=None, metadata=_arg("examples per epoch, when it cannot be counted"))
    decode_size: int | None = field(default=None, metadata=_arg(
        "CPU decode: resize shortest edge + center crop to this size (None: keep images smaller than 64 px as they "
        "are, else 256 for training crops / image_size for evaluation)"))
    crop_scale: tuple[float, float] | None = field(default=None, metadata=_arg(CROP_SCALE_HELP, nargs=2))
    no_crop: bool = field(default=False, metadata=_arg("disable RandomResizedCrop"))
    shuffle_buffer: int = field(default=10_000, metadata=_arg("examples in the streaming shuffle buffer"))
    num_workers: int = field(default=4, metadata=_arg(
        "DataLoader workers decoding images, per process (per-rank mode) or on rank 0 (dispatch mode)"))
    data_mode: str = field(default="per-rank", metadata=_arg(
        "per-rank: each process reads and decodes its own disjoint part of the shards (decoding scales with the "
        "processes; ranks stop together, dropping the longer ranks' last examples); dispatch: rank 0 reads and "
        "decodes every batch and splits it over the ranks (every example exactly once; rank 0 bounds the speed)",
        choices=["per-rank", "dispatch"]))


@dataclass
class OptimizationArguments:
    """Batch, length, AdamW and lr schedule, precision and seed (lr = blr * effective batch / 256)."""

    batch_size: int = field(default=64, metadata=_arg("per process and per micro-step"))
    grad_accum: int = field(default=8, metadata=_arg("micro-steps per optimizer step"))
    epochs: float = field(default=1100, metadata=_arg("training length in epochs"))
    max_steps: int | None = field(default=None, metadata=_arg("optimizer steps (overrides --epochs)"))
    lr: float | None = field(default=None, metadata=_arg("absolute lr (overrides --blr)"))
    blr: float = field(default=1.5e-4, metadata=_arg("lr = blr * effective batch / 256"))
    min_lr: float = field(default=0.0, metadata=_arg("lr at the end of the cosine"))
    warmup_epochs: float = field(default=40, metadata=_arg("linear warmup length in epochs"))
    warmup_steps: int | None = field(default=None, metadata=_arg(
        "warmup in optimizer steps (overrides --warmup-epochs)"))
    weight_decay: float = field(default=0.05, metadata=_arg("AdamW weight decay (not on norms and biases)"))
    clip_grad: float | None = field(default=None, metadata=_arg("max gradient norm (None: no clipping)"))
    mixed_precision: str | None = field(default=None, metadata=_arg(
        "None: the accelerate config's setting", choices=["no", "fp16", "bf16"]))
    seed: int = field(default=0, metadata=_arg("seed of the data order, augmentation, masks and noise"))


@dataclass
class RunArguments:
    """Bookkeeping: where the run writes, checkpoint and log intervals, resume, Hub upload, device."""

    output_dir: str = field(metadata=_arg(
        "metrics.jsonl, run_config.json, checkpoints/ and final/", required=True))
    resume: str | None = field(default=None, metadata=_arg(
        "resume from a checkpoint folder, or (no value) from the newest complete one in OUTPUT_DIR/checkpoints "
        "(a fresh start when there is none)", nargs="?", const="auto"))
    save_every: int = field(default=1000, metadata=_arg(
        "optimizer steps between checkpoints (0: only the one written at the end)"))
    keep_checkpoints: int = field(default=2, metadata=_arg("newest complete checkpoints kept (0: all)"))
    log_every: int = field(default=20, metadata=_arg("optimizer steps between metrics.jsonl records"))
    push_to_hub: str | None = field(default=None, metadata=_arg(
        "upload final/ to this Hub model repo", metavar="REPO"))
    cpu: bool = field(default=False, metadata=_arg("force CPU even when an accelerator is available"))
    debug: bool = field(default=False, metadata=_arg("show the traceback of an error"))


FINETUNE_DEFAULTS = dict(val_size=1000, batch_size=32, grad_accum=4, epochs=100, blr=5e-4, min_lr=1e-6,
                         warmup_epochs=5)
GROUPS = (("model", ModelArguments), ("data", DataArguments), ("optimisation", OptimizationArguments),
          ("bookkeeping", RunArguments))


@dataclass
class TrainingArguments:
    """The four groups shared by both example scripts, as parsed."""

    model: ModelArguments
    data: DataArguments
    optim: OptimizationArguments
    run: RunArguments


def _scalar_type(annotation):
    """int for `int | None`, float for `tuple[float, float] | None`, None (a string) for `str`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    base = args[0]
    if typing.get_origin(base) is tuple:
        base = typing.get_args(base)[0]
    return base if base in (int, float) else None


def add_arguments(parser, cls, title: str, defaults: dict | None = None, help_values: dict | None = None) -> None:
    """Add the fields of dataclass `cls` as the argument group `title` of `parser`, in field order: `--name-with-
    dashes`, the field's default (or `defaults[name]`), its metadata (help, choices, nargs, const, metavar,
    required); a `bool` field is a `store_true` flag. `help_values[name]` fills the `{}` of that field's help."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    stage_defaults = defaults or {}
    for f in dataclasses.fields(cls):
        kwargs = dict(f.metadata)
        if help_values and f.name in help_values:
            kwargs["help"] = kwargs["help"].format(help_values[f.name])
        if not kwargs.get("required"):
            kwargs["default"] = stage_defaults.get(f.name, f.default)
        if hints[f.name] is bool:
            kwargs["action"] = "store_true"
        elif _scalar_type(hints[f.name]) is not None:
            kwargs["type"] = _scalar_type(hints[f.name])
        group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def from_namespace(cls, namespace: argparse.Namespace):
    """The `cls` instance holding the namespace's values of `cls`'s fields."""
    return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})


def add_common_args(parser, stage: str) -> None:
    """The model, data, optimisation and bookkeeping groups shared by both example scripts (`stage`: "pretrain"
    or "finetune"; it only changes defaults)."""
    if stage not in DEFAULT_CROP_SCALE:
        raise ValueError(f"stage must be one of {list(DEFAULT_CROP_SCALE)}, got {stage!r}.")
    crop = " ".join(f"{v:g}" for v in DEFAULT_CROP_SCALE[stage])
    for title, cls in GROUPS:
        add_arguments(parser, cls, title, FINETUNE_DEFAULTS if stage == "finetune" else None, {"crop_scale": crop})


def training_arguments(namespace: argparse.Namespace) -> TrainingArguments:
    """The four dataclasses of a namespace parsed by a parser with `add_common_args`."""
    return TrainingArguments(*(from_namespace(cls, namespace) for _, cls in GROUPS))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`--help` of the example scripts: the module docstring as written, every option with its default."""


class _Renamed(argparse.Action):
    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        raise ValueError(f"{option_string} was renamed: use {self.new}.")


def add_renamed(parser, old: str, new: str) -> None:
    """Refuse the flag `old` (hidden from `--help`) with the one-line `error: OLD was renamed: use NEW.` of
    `run_main`, rather than argparse's "unrecognized arguments"."""
    parser.add_argument(old, action=_Renamed, new=new, dest=f"_renamed_{old.strip('-').replace('-', '_')}")


def run_main(main, argv=None) -> int:
    """Run an example script's `main`: a `ValueError` (bad input, named with its fix) prints one line
    `error: ...` and exits with status 2; `--debug` shows the traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(argv)
    except ValueError as err:
        if "--debug" in argv:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
