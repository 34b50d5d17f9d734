# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Streaming image datasets for DMAE training: Hub repos (`ILSVRC/imagenet-1k` parquet, `timm/imagenet-1k-wds`
webdataset, CIFAR-10) and local folders in the Hub layout go through the same `datasets.load_dataset(...,
streaming=True)` path.

Pipeline (`build_stream`): raw stream -> columns renamed to `image`/`label`, images kept as encoded bytes ->
optional exclusion of a held-out validation set -> shuffle buffer -> decode + fixed-size resize on the DataLoader's
CPU workers (`ImageDecoder`) -> `collate` to `uint8` tensors. Random augmentation runs batched on the device
afterwards (`dmae_hf.training.augment`), and the Gaussian noise is added by the model.

Sharding across processes (`--data-mode`):

- `per-rank` (default): every process reads a disjoint part of the stream and decodes it on its own DataLoader
  workers (`build_stream`: the encoded stream is split before decoding): whole shards per
  rank when the shard count is a multiple of the world size (each rank reads only its own files), else every
  `world_size`-th example of the shuffled stream (each rank reads every file's bytes but decodes only its own
  examples). Every example is seen at most once per epoch; ranks stop together at the first step where any rank
  has no full batch left (`data_setup.RankBatches`: one all-gather of a flag per batch), so DDP never hangs on uneven
  ends; the dropped examples are the tail of the longer ranks (less than one batch per rank with the example split,
  the excess shards' worth with uneven shard sizes). The decoding throughput grows with the number of processes.
- `dispatch`: the stream goes to `accelerator.prepare(DataLoader(...))` with `dispatch_batches=True`: rank 0 reads
  and decodes everything (its workers split the shards) and splits each global batch over the ranks. Every example
  is seen once per epoch (a last global batch that does not split evenly over the ranks is padded with the epoch's
  first examples), at the cost of rank 0 decoding for every GPU. Use it when the stream cannot be split evenly
  (fewer examples than ranks x batch, or a single unsplittable source read by one process) or to check the
  per-rank mode against it. Validation loaders always use it (small, and `gather_for_metrics` drops the padding).
  We never call `split_dataset_by_node`:
  its example-level split applies after the map, i.e. every rank would still decode every example, and combined
  with `prepare` it shards twice.

Held-out validation (`--val-size N`): the first N examples of the unshuffled train stream, identified by a hash of
their encoded bytes (`example_id`), are removed from the training stream by a filter. A filter, unlike
`skip(N)`, does not depend on how the stream is later sharded (`skip` is split across shards).

Resumable position: the epoch's order is fixed by `(seed, epoch)` (`shuffle` + `set_epoch`), and the checkpointed
`TrainState` (`dmae_hf.training.checkpoints`) records the batches already consumed in the epoch; a resumed run
re-reads and skips them (`skip_batches`), so it continues with exactly the examples the interrupted run would have
seen. (A `ds.state_dict()` alone is not enough with DataLoader workers, each of which holds part of the stream.) In
the per-rank mode each rank skips its own consumed batches, which are the same ones again since its part of the
stream depends only on `(seed, epoch, rank, world size, workers)`.
"""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import torch
from PIL import Image

from ..image_datasets import dataset_not_found, load_image_split
from ..image_processing_dmae import DMAEImageProcessor, decode_image


def load_image_stream(path: str, split: str = "train", image_column: str | None = None,
                      label_column: str | None = "label", token: str | bool | None = None, streaming: bool = True):
    """`dmae_hf.image_datasets.load_image_split` (the reader `dmae certify` uses too: one rule finds the image
    column, the images stay encoded, clear errors before any training) with the columns renamed to `image`/`label`.
    `label_column=None` keeps images only."""
    ds, image_column, label_column = load_image_split(path, split, image_column, label_column, token=token,
                                                      streaming=streaming)
    renames = {image_column: "image", label_column: "label"}
    renames = {old: new for old, new in renames.items() if old is not None and old != new}
    return ds.rename_columns(renames) if renames else ds


def num_classes_of(ds) -> int | None:
    """Number of classes declared by a `ClassLabel` label column, else None."""
    import datasets

    feature = (ds.features or {}).get("label")
    return feature.num_classes if isinstance(feature, datasets.ClassLabel) else None


def class_names_of(ds) -> list[str] | None:
    import datasets

    feature = (ds.features or {}).get("label")
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _image_bytes(image) -> bytes:
    """Encoded bytes of an undecoded `Image` value (dict with bytes/path), of raw bytes, or of a PIL image."""
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            return image["bytes"]
        if image.get("path"):
            with open(image["path"], "rb") as f:
                return f.read()
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise ValueError(f"Cannot read image value of type {type(image).__name__}.")


def example_id(image) -> int:
    """A stable signed 63-bit id of an example: a hash of its encoded image bytes."""
    return int.from_bytes(hashlib.blake2b(_image_bytes(image), digest_size=8).digest(), "little") >> 1


def hold_out(ds, val_size: int):
    """Split a stream into `(train, val)`: `val` = the first `val_size` examples of the unshuffled stream, `train` =
    every other example (filtered by `example_id`, so it stays correct after sharding and shuffling)."""
    if val_size <= 0:
        return ds, None
    val = ds.take(val_size)
    held = {example_id(ex["image"]) for ex in val}
    if len(held) < val_size:
        raise ValueError(f"--val-size {val_size} is larger than the split ({len(held)} distinct examples).")
    train = ds.filter(lambda ex: example_id(ex["image"]) not in held)
    return train, val


class ImageDecoder:
    """Decode on CPU workers to a fixed size for batching, as `uint8` (3, S, S).

    `resize_shortest_edge=None` keeps images as they are (CIFAR-10; they must then all have the same size).
    Otherwise the shortest edge is resized (bicubic) and the center `crop_size` square is kept, e.g. 256 -> 224 for
    ImageNet evaluation, or 256 -> 256 before the device-side RandomResizedCrop of training.
    """

    def __init__(self, resize_shortest_edge: int | None = None, crop_size: int | None = None,
                 num_labels: int | None = None):
        self.processor = DMAEImageProcessor(
            do_resize=resize_shortest_edge is not None, resize_shortest_edge=resize_shortest_edge or 256,
            do_center_crop=crop_size is not None, crop_size=crop_size or 224)
        self.num_labels = num_labels

    def decode(self, image) -> np.ndarray:
        """An image value (see `dmae_hf.image_processing_dmae.decode_image`) -> `uint8` (3, H, W), resized and
        cropped by the processor."""
        return self.processor.to_array(self.processor.resize_and_crop(decode_image(image)), rescale=False)

    def __call__(self, example: dict) -> dict:
        out = {"pixel_values": self.decode(example["image"]), "example_id": example_id(example["image"])}
        if "label" in example:
            label = example["label"]
            check_label(label, self.num_labels)
            out["label"] = int(label)
        return out


def check_label(label, num_labels: int | None) -> None:
    if label is None or isinstance(label, float) and not float(label).is_integer():
        raise ValueError(f"Invalid label {label!r}: labels must be integer class indices.")
    if int(label) < 0 or (num_labels is not None and int(label) >= num_labels):
        bound = f"[0, {num_labels})" if num_labels is not None else ">= 0"
        raise ValueError(f"Label {int(label)} is out of range: labels must be in {bound} (num_labels={num_labels}).")


def collate(examples: list[dict]) -> dict:
    """Stack decoded examples: `pixel_values` uint8 (B, 3, S, S), `labels` int64 (B,), `example_id` int64 (B,)."""
    shapes = {tuple(e["pixel_values"].shape) for e in examples}
    if len(shapes) > 1:
        raise ValueError(f"Images of different sizes {sorted(shapes)} in one batch; set a resize/crop size.")
    pixels = [e["pixel_values"] for e in examples]
    batch = {
        "pixel_values": (torch.stack(pixels) if isinstance(pixels[0], torch.Tensor)
                         else torch.from_numpy(np.stack(pixels))),
        "example_id": torch.tensor([int(e["example_id"]) for e in examples], dtype=torch.int64),
    }
    if "label" in examples[0] or "labels" in examples[0]:
        batch["labels"] = torch.tensor([int(e["label"] if "label" in e else e["labels"]) for e in examples],
                                       dtype=torch.int64)
    return batch


def first_examples(ds, n: int, num_shards: int = 8):
    """The first `n` examples of the unshuffled stream `ds` as an in-memory stream with `num_shards` shards (for
    `--max-train-examples`). `ds.take(n)` is not usable here: once the DataLoader workers (or ranks) shard it, each
    shard takes its own share of `n` from its own files, so the subset is not the first `n` examples."""
    import datasets

    rows = list(ds.take(n))
    if not rows:
        raise ValueError("The dataset split is empty.")
    table = datasets.Dataset.from_list(rows, features=ds.features)
    return table.to_iterable_dataset(num_shards=max(1, min(num_shards, len(rows))))


class UniformBatches(torch.utils.data.IterableDataset):
    """Decoded examples of `dataset`, read by a DataLoader with `num_workers` workers and yielded one by one in a
    fixed order, so that the DataLoader wrapping this yields full batches except the very last one.

    Why: with several workers, a plain DataLoader ends each worker's share of the shards with its own partial
    batch, i.e. partial batches mid-epoch. Accelerate's batch dispatcher (rank 0 reads, splits each global batch
    over the ranks) cuts a global batch of odd size to a multiple of the number of processes and silently drops
    the rest, so examples were lost every epoch. Re-batching in the main process fixes it."""

    def __init__(self, dataset, num_workers: int, chunk: int = 64):
        super().__init__()
        self.dataset, self.num_workers, self.chunk = dataset, num_workers, chunk

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    @property
    def num_shards(self) -> int:
        return self.dataset.num_shards

    def __iter__(self):
        from torch.utils.data import DataLoader

        inner = DataLoader(self.dataset, batch_size=self.chunk, collate_fn=collate, num_workers=self.num_workers,
                           generator=torch.Generator().manual_seed(0))  # leaves torch's global RNG alone
        for batch in inner:
            for i in range(batch["pixel_values"].shape[0]):
                yield {k: v[i] for k, v in batch.items()}


def rank_split(num_shards: int, world_size: int) -> str:
    """How `build_stream` splits a stream of `num_shards` shards over `world_size` ranks: "whole" (one rank),
    "shards" when `num_shards % world_size == 0` (rank r keeps shards r, r + world_size, ... and reads only those
    files), else "examples" (rank r keeps the examples of index r mod world_size of each DataLoader worker's
    shuffled stream: it reads every file's bytes but decodes only its own examples)."""
    if world_size <= 1:
        return "whole"
    return "shards" if num_shards % world_size == 0 else "examples"


def build_stream(ds, decoder: ImageDecoder, shuffle: bool = True, seed: int = 0, buffer_size: int = 10_000,
                 rank: int = 0, world_size: int = 1):
    """Keep this rank's part of a stream of encoded examples (`rank_split`), shuffle it (buffer + shard order; call
    `set_epoch` each epoch) and decode it. Returns an `IterableDataset`.

    The ranks' parts are disjoint and together are the whole stream, for any shard count. The example split needs
    the same stream order on every rank, which holds because the shuffle depends only on `(seed, epoch)` and every
    rank runs the same number of workers. Decoding comes after the split, so a rank decodes only its own examples
    (unlike `split_dataset_by_node`, whose example split applies after the map)."""
    features, how = list(ds.features), rank_split(ds.num_shards, world_size)
    if how == "shards":
        ds = ds.shard(num_shards=world_size, index=rank, contiguous=False)
    if shuffle:
        ds = ds.shuffle(seed=seed, buffer_size=buffer_size)
    if how == "examples":
        ds = ds.filter(lambda _, index: index % world_size == rank, with_indices=True)
    return ds.map(decoder, remove_columns=features)


def validate_stream(ds, decoder: ImageDecoder, num_examples: int = 64) -> int:
    """Decode the first `num_examples` examples and check their labels, so bad data fails before training.
    Returns the number of examples checked (0 means the split is empty, which is an error)."""
    count = 0
    for example in ds.take(num_examples):
        decoder(example)
        count += 1
    if count == 0:
        raise ValueError("The dataset split is empty.")
    return count


__all__ = [
    "load_image_stream",
    "dataset_not_found",
    "hold_out",
    "first_examples",
    "UniformBatches",
    "ImageDecoder",
    "collate",
    "build_stream",
    "rank_split",
    "validate_stream",
    "check_label",
    "example_id",
    "num_classes_of",
    "class_names_of",
    "count_examples",
]


def count_examples(path: str, split: str, token: str | bool | None = None) -> int | None:
    """Number of examples of a split, from the builder's split info or the parquet footers (no data read), else
    None (then pass `--max-steps` or `--train-size`)."""
    import datasets

    builder = datasets.load_dataset_builder(os.path.expanduser(str(path)), token=token)
    splits = builder.info.splits
    if splits and split in splits and splits[split].num_examples:
        return int(splits[split].num_examples)
    files = (builder.config.data_files or {}).get(split)
    if not files or not all(str(f).endswith(".parquet") for f in files):
        return None
    import fsspec
    import pyarrow.parquet as pq

    total = 0
    for f in files:
        with fsspec.open(str(f), "rb", **({"token": token} if str(f).startswith("hf://") and token else {})) as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total
