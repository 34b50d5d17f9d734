# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The data streams of a run (`DataSetup`: decoded, shuffled, held-out validation, checked before any training),
their DataLoaders, and iterating them so that a resumed run draws the same random numbers as an uninterrupted one."""

from __future__ import annotations

import torch

from .arguments import DEFAULT_CROP_SCALE, DataArguments


class DataSetup:
    """The streams of one run, built and checked before any training: `train` (decoded, shuffled), `val`
    (decoded, unshuffled, or None), `train_size` (examples per epoch or None), `num_classes`, `class_names`,
    `small` (images of 64 px or less kept as they are), `crop_scale` and `augment_size` (what `DeviceAugment`
    takes). `seed` orders the shuffle; `default_scale` is the RandomResizedCrop scale used for images of 128 px
    and more when `--crop-scale` is not given."""

    def __init__(self, data_args: DataArguments, image_size: int, with_labels: bool, seed: int,
                 num_labels: int | None = None, default_scale: tuple[float, float] = DEFAULT_CROP_SCALE["pretrain"]):
        from . import data

        raw = data.load_image_stream(data_args.dataset, data_args.split, data_args.image_column,
                                     data_args.label_column if with_labels else None, token=data_args.token)
        self.class_names = data.class_names_of(raw) if with_labels else None
        self.num_classes = num_labels or (data.num_classes_of(raw) if with_labels else None)
        if with_labels and self.num_classes is None:
            raise ValueError("The label column is not a ClassLabel; pass --num-labels.")
        # Decoded size: small images (CIFAR) as they are; large ones resized + center-cropped.
        probe = data.ImageDecoder()
        first = next(iter(raw.take(1)), None)
        if first is None:
            raise ValueError(f"Split {data_args.split!r} of {data_args.dataset!r} is empty.")
        native = probe.decode(first["image"]).shape[-1]
        self.small = data_args.decode_size is None and native <= 64
        if data_args.no_crop:
            self.crop_scale = None
        elif data_args.crop_scale is not None:
            self.crop_scale = tuple(data_args.crop_scale)
        else:
            self.crop_scale = default_scale if image_size >= 128 and not self.small else None
        if self.small:
            train_dec = data.ImageDecoder(num_labels=self.num_classes)
            eval_dec = train_dec
        else:
            size = data_args.decode_size or (256 if self.crop_scale is not None else image_size)
            train_dec = data.ImageDecoder(size, size, num_labels=self.num_classes)
            eval_dec = data.ImageDecoder(data_args.decode_size or round(image_size * 256 / 224), image_size,
                                         num_labels=self.num_classes)
        self.augment_size = image_size if self.crop_scale is not None else (None if self.small else image_size)
        if data_args.max_train_examples:
            raw = data.first_examples(raw, data_args.max_train_examples + data_args.val_size)
        data.validate_stream(raw, train_dec)
        train_raw, val_raw = data.hold_out(raw, data_args.val_size)
        total = data_args.train_size
        if total is None:
            total = data_args.max_train_examples or data.count_examples(data_args.dataset, data_args.split,
                                                                        token=data_args.token)
            if total is not None and not data_args.max_train_examples:
                total -= data_args.val_size
        self.train_size = total
        self.train = data.build_stream(train_raw, train_dec, shuffle=True, seed=seed,
                                       buffer_size=data_args.shuffle_buffer)
        self.val = data.build_stream(val_raw, eval_dec, shuffle=False) if val_raw is not None else None
        self.val_size = data_args.val_size

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
