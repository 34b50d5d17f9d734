# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The one dataset reader of dmae-hf: a split of a Hub dataset or of a local copy in the Hub layout.

`load_image_split(path, split, ...)`: a split streamed with its image and label columns found by one rule
(`find_image_column`), the other columns dropped and the images left encoded, for `dmae certify` and training, which
decode each cell with `image_processing_dmae.decode_image` (the one image decoder; it lives in the portable processor
file because the `certified-image-classification` pipeline, which checkpoints carry for `trust_remote_code`, needs
it too). Resizing and cropping are not done here: only the image processors do them.
"""

import functools
import os
import socket
from urllib.parse import urlparse

# Image columns by name, in order of preference (webdataset shards name them by extension), then label columns.
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")
LABEL_FALLBACK = {"label": "cls"}  # webdataset's class column


# ----------------------------------------------------------------------------------------------------------- the Hub
@functools.cache
def hub_unreachable_reason() -> str | None:
    """None when the Hub can be reached; else a short cause. Decided once per process: `HF_HUB_OFFLINE`, else one TCP
    connect to the endpoint's host and port (1.5 s at most), so an unreachable Hub fails in seconds, not after
    retries."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 is set"
    endpoint = urlparse(constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=1.5).close()
    except OSError:
        return f"{host} cannot be reached (no network)"
    return None


# ---------------------------------------------------------------------------------------------------------- datasets
def dataset_not_found(path: str, reason: str) -> str:
    """The message for a `--dataset` that is neither a local folder nor a reachable Hub dataset: why, and how to
    fix it (offline mode and gated datasets named)."""
    local = os.path.isdir(os.path.expanduser(path))
    message = (f"Dataset {path!r} is neither a local dataset folder nor a reachable Hub dataset id ({reason}). "
               f"Pass a Hub id such as uoft-cs/cifar10 or ILSVRC/imagenet-1k, or a local copy in the Hub layout: "
               f"a folder with data/{{split}}-*.parquet (the layout push_to_hub writes) or a DatasetDict written by "
               f"save_to_disk.")
    if local:
        message = (f"Dataset folder {path!r} holds no dataset in the Hub layout ({reason}); it needs "
                   f"data/{{split}}-*.parquet files (the layout push_to_hub writes) or a DatasetDict written by "
                   f"save_to_disk, or pass a Hub id such as uoft-cs/cifar10.")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE and not local:
        message += " Offline mode is on (HF_HUB_OFFLINE=1): the Hub is not asked; unset it or use a local copy."
    elif not local and "cannot be reached" in reason:
        message += " Connect to the network, or use a local copy."
    if "gated" in reason:
        message += (" The dataset is gated: request access on its Hub page, then pass --token or set HF_TOKEN "
                    "(or run `hf auth login`).")
    return message


def find_image_column(features) -> str | None:
    """The image column of a split, by one rule: the first column named image, img, jpg, jpeg, png or webp (in that
    order), else the first column of type `datasets.Image`; None if there is none."""
    import datasets

    named = next((name for name in IMAGE_COLUMNS if name in features), None)
    return named or next((name for name, f in features.items() if isinstance(f, datasets.Image)), None)


def _unknown_column(kind: str, name: str, path: str, columns: list) -> ValueError:
    return ValueError(f"Unknown {kind} column {name!r} (--{kind}-column). Column {name!r} not in {path!r}, whose "
                      f"columns are {columns}: pass one of them.")


def load_image_split(path: str, split: str, image_column: str | None = None, label_column: str | None = "label",
                     token: str | bool | None = None, streaming: bool = True, label_optional: bool = False):
    """`load_dataset(path, split=split, streaming=True)` with the image column left encoded (`Image(decode=False)`)
    and only the image and label columns kept. Returns `(dataset, image column, label column)`.

    `image_column=None` finds it with `find_image_column`; `label_column="label"` falls back to webdataset's `cls`;
    `label_column=None` keeps images only; with `label_optional`, a split without the label column is read as
    unlabelled (the label column returned is then None). Raises `ValueError` (before any image is read) for a dataset
    that is neither a local folder nor a reachable Hub id (`dataset_not_found`; an unreachable Hub is found in
    seconds by `hub_unreachable_reason`), an unknown split (lists the available ones) or an unknown image/label column
    (lists the columns).
    """
    path = str(path)
    if (path.startswith((".", "/", "~")) or os.sep + os.sep in path) and not os.path.exists(os.path.expanduser(path)):
        raise ValueError(dataset_not_found(path, "no such local folder"))
    path = os.path.expanduser(path)
    if not os.path.exists(path) and (reason := hub_unreachable_reason()) is not None:
        raise ValueError(dataset_not_found(path, f"the Hub cannot be asked: {reason}"))
    import datasets

    try:
        builder = datasets.load_dataset_builder(path, token=token)
    except (FileNotFoundError, ConnectionError) as err:  # DatasetNotFoundError is a FileNotFoundError
        raise ValueError(dataset_not_found(path, str(err).split("\n")[0])) from err
    splits = sorted((builder.info.splits or {}).keys()) or sorted(getattr(builder.config, "data_files", None) or {})
    if splits and split not in splits:
        raise ValueError(f"Unknown split {split!r} for dataset {path!r}; available splits: {splits}.")
    ds = datasets.load_dataset(path, split=split, streaming=streaming, token=token)
    if ds.features is None:  # some builders only know their features after the first example
        ds = ds._resolve_features()
    features = ds.features
    columns = list(features)
    if image_column is None:
        image_column = find_image_column(features)
        if image_column is None:
            raise ValueError(f"No image column found in {path!r}; columns are {columns}. Pass --image-column.")
    if image_column not in columns:
        raise _unknown_column("image", image_column, path, columns)
    if label_column is not None:
        if label_column not in columns and LABEL_FALLBACK.get(label_column) in columns:
            label_column = LABEL_FALLBACK[label_column]
        if label_column not in columns and label_optional:
            label_column = None
        elif label_column not in columns:
            raise _unknown_column("label", label_column, path, columns)
    ds = ds.select_columns([image_column] + ([label_column] if label_column is not None else []))
    if isinstance(features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))  # decoded by decode_image, one by one
    return ds, image_column, label_column


__all__ = ["dataset_not_found", "find_image_column", "hub_unreachable_reason", "load_image_split", "IMAGE_COLUMNS"]
