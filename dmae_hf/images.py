# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Where images come from: the one image decoder and the one dataset reader of dmae-hf.

- `decode_image(value, max_pixels)`: any image value (a PIL image, a Hub `Image(decode=False)` cell
  `{"bytes", "path"}`, encoded bytes, a file path, a numpy array or a tensor) -> a decoded PIL image. The size is
  checked from the header, before any pixel is decoded; every problem is a `ValueError` naming it. Used by the
  `certified-image-classification` pipeline (files, arrays, PIL images), `dmae certify` (dataset cells) and training
  (`dmae_hf.training.data.ImageDecoder`).
- `load_image_split(path, split, ...)`: a split streamed with its image and label columns found by one rule, the
  other columns dropped and the images left encoded. Used by `dmae certify` and training.

Resizing and cropping are not done here: only `DMAEImageProcessor` does them. This module sits below both the
certification side (`certify_dataset`, `pipeline_dmae`) and the training side (`data`), which import it and not
each other; it imports only PIL, numpy and the self-contained image processor module (the file that checkpoints
carry for `trust_remote_code`, which must not import this one).
"""

import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .image_processing_dmae import channels_last, to_rgb

# Image columns by name, in order of preference (webdataset shards name them by extension), then label columns.
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")
LABEL_FALLBACK = {"label": "cls"}  # webdataset's class column


def check_image_size(width, height, max_pixels, what="The image"):
    """A `ValueError` when a width x height image exceeds `max_pixels`, before anything is decoded or allocated."""
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(f"{what} has {width}x{height} = {width * height / 1e6:.1f} megapixels, more than "
                         f"max_pixels = {max_pixels:,}: downscale it first, or pass a larger max_pixels.")


def _open(source, what: str) -> Image.Image:
    """`Image.open` (reads the header only), with every failure a `ValueError` naming `what`."""
    try:
        with warnings.catch_warnings():  # the max_pixels check is ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(source)
    except Image.DecompressionBombError as error:
        raise ValueError(f"{what} is too large to decode: {error} Downscale it first.") from error
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"Cannot read {what[0].lower()}{what[1:]}: {type(error).__name__}: {error}") from error


def decode_image(value, max_pixels=None) -> Image.Image:
    """Decode one image value now, so that a corrupt, missing or oversized image fails here with a `ValueError`.

    `value` is a PIL image, a `{"bytes", "path"}` dict (a Hub `Image(decode=False)` cell), encoded bytes, a file
    path, or a numpy array / tensor ((H, W), (H, W, 3|4) or (3|4, H, W); `uint8`, `uint16` or float in [0, 1]).
    Images of more than `max_pixels` pixels are refused from their header (arrays: from their shape) before their
    pixels are decoded. Returns a loaded PIL image in its own mode (arrays and tensors: 8-bit RGB, converted by the
    image processor's `to_rgb`).
    """
    what, opened = "The image", False
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
        if value is None:
            raise ValueError("No image data (a cell with neither bytes nor path): check the dataset's image column.")
    if isinstance(value, (str, os.PathLike)):
        what = f"The image {str(value)!r}"
        if os.path.isdir(value):
            raise ValueError(f"{str(value)!r} is a directory, not an image file: pass the image files it contains.")
        if not os.path.isfile(value):
            raise ValueError(f"No image file at {str(value)!r}: check the path.")
        value, opened = _open(value, what), True
    elif isinstance(value, (bytes, bytearray)):
        value, opened = _open(io.BytesIO(value), what), True
    if isinstance(value, Image.Image):
        try:
            check_image_size(*value.size, max_pixels, what=what)
        except ValueError:
            if opened:
                value.close()
            raise
        try:
            value.load()
        except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt pixel data
            raise ValueError(f"Cannot read {what[0].lower()}{what[1:]}: {type(error).__name__}: {error}") from error
        return value
    if not isinstance(value, np.ndarray) and hasattr(value, "numpy"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        array = channels_last(value)
        if array.ndim in (2, 3):
            check_image_size(array.shape[1], array.shape[0], max_pixels)
    return to_rgb(value)  # arrays; anything else gets to_rgb's "Unsupported image type" error


# ---------------------------------------------------------------------------------------------------------- datasets
def dataset_not_found(path: str, reason: str) -> str:
    """The message for a `--dataset` that is neither a local folder nor a reachable Hub dataset: why, and how to
    fix it (offline mode and gated datasets named)."""
    local = os.path.isdir(os.path.expanduser(path))
    message = (f"Dataset {path!r} is neither a local dataset folder nor a reachable Hub dataset id ({reason}). "
               f"Pass a Hub id such as uoft-cs/cifar10 or ILSVRC/imagenet-1k, or a local copy in the Hub layout "
               f"(e.g. $DMAE_DATA_DIR/cifar10): a folder with data/{{split}}-*.parquet (the layout push_to_hub "
               f"writes) or a DatasetDict written by save_to_disk.")
    if local:
        message = (f"Dataset folder {path!r} holds no dataset in the Hub layout ({reason}); it needs "
                   f"data/{{split}}-*.parquet files (the layout push_to_hub writes) or a DatasetDict written by "
                   f"save_to_disk, or pass a Hub id such as uoft-cs/cifar10.")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE and not local:
        message += " Offline mode is on (HF_HUB_OFFLINE=1): the Hub is not asked; unset it or use a local copy."
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
                     token: str | bool | None = None, streaming: bool = True):
    """`load_dataset(path, split=split, streaming=True)` with the image column left encoded (`Image(decode=False)`)
    and only the image and label columns kept. Returns `(dataset, image column, label column)`.

    `image_column=None` finds it with `find_image_column`; `label_column="label"` falls back to webdataset's `cls`;
    `label_column=None` keeps images only. Raises `ValueError` (before any image is read) for a dataset that is
    neither a local folder nor a reachable Hub id (`dataset_not_found`), an unknown split (lists the available ones)
    or an unknown image/label column (lists the columns).
    """
    import datasets

    path = str(path)
    if (path.startswith((".", "/", "~")) or os.sep + os.sep in path) and not os.path.exists(os.path.expanduser(path)):
        raise ValueError(dataset_not_found(path, "no such local folder"))
    path = os.path.expanduser(path)
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
        if label_column not in columns:
            raise _unknown_column("label", label_column, path, columns)
    ds = ds.select_columns([image_column] + ([label_column] if label_column is not None else []))
    if isinstance(features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))  # decoded by decode_image, one by one
    return ds, image_column, label_column


__all__ = ["decode_image", "check_image_size", "load_image_split", "find_image_column", "dataset_not_found",
           "IMAGE_COLUMNS"]
