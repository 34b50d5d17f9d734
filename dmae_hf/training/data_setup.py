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
                 num_labels: int | None = None, default_scale: tuple[float, float] = DEFAULT_CROP_SCALE["pretrain"],
                 rank: int = 0, num_processes: int = 1):
        from . import streams

        self.mode = data_args.data_mode
        if self.mode not in ("per-rank", "dispatch"):
            raise ValueError(f"--data-mode must be per-rank or dispatch, got {self.mode!r}.")
        split = self.mode == "per-rank" and num_processes > 1
        self.rank, self.num_processes = (rank, num_processes) if split else (0, 1)
        self.drop_last = split  # per-rank ranks keep full batches only (the schedule counts floor(size / batch))

        raw = streams.load_image_stream(data_args.dataset, data_args.split, data_args.image_column,
                                     data_args.label_column if with_labels else None, token=data_args.token)
        self.class_names = streams.class_names_of(raw) if with_labels else None
        self.num_classes = num_labels or (streams.num_classes_of(raw) if with_labels else None)
        if with_labels and self.num_classes is None:
            raise ValueError("The label column is not a ClassLabel; pass --num-labels.")
        # Decoded size: small images (CIFAR) as they are; large ones resized + center-cropped.
        probe = streams.ImageDecoder()
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
            train_dec = streams.ImageDecoder(num_labels=self.num_classes)
            eval_dec = train_dec
        else:
            size = data_args.decode_size or (256 if self.crop_scale is not None else image_size)
            train_dec = streams.ImageDecoder(size, size, num_labels=self.num_classes)
            eval_dec = streams.ImageDecoder(data_args.decode_size or round(image_size * 256 / 224), image_size,
                                         num_labels=self.num_classes)
        self.augment_size = image_size if self.crop_scale is not None else (None if self.small else image_size)
        if data_args.max_train_examples:
            raw = streams.first_examples(raw, data_args.max_train_examples + data_args.val_size)
        streams.validate_stream(raw, train_dec)
        train_raw, val_raw = streams.hold_out(raw, data_args.val_size)
        total = data_args.train_size
        if total is None:
            total = data_args.max_train_examples or streams.count_examples(data_args.dataset, data_args.split,
                                                                        token=data_args.token)
            if total is not None and not data_args.max_train_examples:
                total -= data_args.val_size
        self.train_size = total
        self.train = streams.build_stream(train_raw, train_dec, shuffle=True, seed=seed,
                                       buffer_size=data_args.shuffle_buffer, rank=self.rank,
                                       world_size=self.num_processes)
        self.val = streams.build_stream(val_raw, eval_dec, shuffle=False) if val_raw is not None else None
        self.val_size = data_args.val_size

    def train_loader(self, accelerator, batch_size: int, num_workers: int):
        """The training batches on `accelerator.device`: per-rank mode, this rank's own loader in `RankBatches`
        (full batches only, every rank stopping at the same step); dispatch mode, `accelerator.prepare` of one
        loader (rank 0 reads, the Accelerator must have `dispatch_batches=True`, as `loop.make_accelerator`'s)."""
        if self.drop_last:
            return RankBatches(self.loader(self.train, batch_size, num_workers, drop_last=True), self.train,
                               accelerator)
        return accelerator.prepare(self.loader(self.train, batch_size, num_workers))

    def loader(self, dataset, batch_size: int, num_workers: int, drop_last: bool = False):
        from torch.utils.data import DataLoader

        from .streams import UniformBatches, collate

        workers = min(num_workers, dataset.num_shards)
        # A private generator for the workers' base seed (decoding uses no randomness). Accelerate's batch
        # dispatcher drops it, so the training loops also iterate through `rng_neutral`.
        generator = torch.Generator().manual_seed(0)
        if workers > 1:  # workers in a nested loader, full batches out (see UniformBatches)
            return DataLoader(UniformBatches(dataset, workers), batch_size=batch_size, collate_fn=collate,
                              generator=generator, drop_last=drop_last)
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers,
                          persistent_workers=False, generator=generator, drop_last=drop_last)


class RankBatches:
    """The per-rank mode's training loader: this rank's batches, moved to the device, ending on every rank at the
    first step where any rank has none left.

    Before each batch the ranks all-gather a flag "I have a full batch" (one tiny collective per batch, negligible
    beside DDP's gradient all-reduce); when any flag is 0 every rank stops, so the ranks run the same number of
    steps whatever their share of the stream (uneven shards, an example count that the world size does not
    divide), and DDP never waits for a rank that has finished. The loader drops partial batches, so the examples
    dropped each epoch are the tail of the longer ranks' parts."""

    def __init__(self, loader, dataset, accelerator):
        self.loader, self.dataset, self.accelerator = loader, dataset, accelerator

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __iter__(self):
        device = self.accelerator.device
        iterator = iter(self.loader)
        while True:
            batch = next(iterator, None)
            flag = torch.tensor([0 if batch is None else 1], device=device)
            if int(self.accelerator.gather(flag).min()) == 0:  # every rank takes part, also one that has none left
                return
            yield {key: value.to(device, non_blocking=True) for key, value in batch.items()}



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
