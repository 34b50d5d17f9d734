# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Image processor for DMAE models: PIL and NumPy only (no torchvision), no normalisation; and `decode_image`, the one
image decoder of dmae-hf (files, bytes, Hub cells, arrays, PIL images; size checked from the header before any pixel
is decoded), kept here so that the files a checkpoint carries for `trust_remote_code` include it."""

import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def channels_last(arr: np.ndarray) -> np.ndarray:
    """An image array as (H, W) or (H, W, C) (a view): (C, H, W) with C in 1, 3, 4 is moved, (H, W, 1) squeezed."""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    return arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr


def resize_shortest_edge(image: Image.Image, edge: int, resample: str = "bicubic") -> Image.Image:
    """Resize (PIL) so that the shortest edge is `edge` pixels, keeping the aspect ratio."""
    w, h = image.size
    scale = edge / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image if size == image.size else image.resize(size, _RESAMPLE[resample])


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central (size, size) square; a `ValueError` if the image is smaller."""
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"Image of {w}x{h} is smaller than the crop size {size}; enable do_resize.")
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def to_rgb(image) -> Image.Image:
    """Any supported input as an 8-bit RGB PIL image, or a `ValueError` that names the problem."""
    if isinstance(image, Image.Image):
        if 0 in image.size:
            raise ValueError(f"Empty image of {image.size[0]}x{image.size[1]} pixels: an image needs at least "
                             "one pixel.")
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: keep the top 8 bits
            arr = np.asarray(image, dtype=np.float64)
            scale = 65535.0 if arr.max() > 255 or image.mode.startswith("I;16") else 255.0
            image = Image.fromarray(np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8))
        elif image.mode == "F":
            raise ValueError("Float ('F' mode) PIL images are not supported; pass a float array in [0, 1].")
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        return image.convert("RGB")
    if hasattr(image, "numpy") and not isinstance(image, np.ndarray):  # torch tensor
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"Unsupported image type {type(image).__name__}; pass a PIL image, a numpy array, a "
                         "tensor or an image file path.")
    arr = channels_last(image)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"Unsupported image array shape {image.shape}: expected (H, W), (H, W, 3|4) or "
                         "(3|4, H, W).")
    if arr.size == 0:
        raise ValueError(f"Empty image array of shape {image.shape}: an image needs at least one pixel.")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("Image array contains NaN or Inf values.")
        if arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"Float image arrays must be in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}].")
        arr = np.round(arr * 255.0).astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"Unsupported image dtype {arr.dtype}: use uint8, uint16 or float in [0, 1].")
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[1 if arr.ndim == 2 else arr.shape[-1]] if arr.ndim == 3 else "L"
    return to_rgb(Image.fromarray(arr, mode=mode))


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


class DMAEImageProcessor(BaseImageProcessor):
    r"""
    Turns images into `pixel_values` in **[0, 1]**: RGB conversion, optional resize of the shortest edge and center
    crop (ImageNet: 256 bicubic, then 224), rescale by 1/255. It does **not** normalise: DMAE models add the
    smoothing noise in [0, 1] pixel space and normalise inside the model.

    Accepts PIL images (any mode: grayscale, RGBA, CMYK, palette and 16-bit images are converted to 8-bit RGB),
    `uint8` arrays (H, W), (H, W, 3|4) or (3|4, H, W), float arrays in [0, 1], and lists of them.

    Args:
        do_resize (`bool`): resize the shortest edge to `resize_shortest_edge` (bicubic by default).
        resize_shortest_edge (`int`): 256 for ImageNet.
        do_center_crop (`bool`) / crop_size (`int`): 224 for ImageNet.
        resample (`str`): "bicubic", "bilinear" or "nearest".

    Calling it with `size=S` (as the `certified-image-classification` pipeline does with the model's
    `config.image_size`) also brings every image the steps above leave at another size to S x S: shortest edge
    resized to S, then center crop.
    """

    model_input_names = ["pixel_values"]

    def __init__(self, do_resize=True, resize_shortest_edge=256, do_center_crop=True, crop_size=224,
                 resample="bicubic", **kwargs):
        super().__init__(**kwargs)
        if resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}.")
        self.do_resize = do_resize
        self.resize_shortest_edge = resize_shortest_edge
        self.do_center_crop = do_center_crop
        self.crop_size = crop_size
        self.resample = resample

    @classmethod
    def for_cifar10(cls) -> "DMAEImageProcessor":
        """The CIFAR-10 transfers' processor: 32x32 images as they are, only rescaled."""
        return cls(do_resize=False, do_center_crop=False, crop_size=32)

    def to_pil(self, image) -> Image.Image:
        """Any supported input as an 8-bit RGB PIL image (`to_rgb`)."""
        return to_rgb(image)

    def resize_and_crop(self, image) -> Image.Image:
        """`to_pil`, then the processor's own resize and center crop."""
        image = self.to_pil(image)
        if self.do_resize:
            image = resize_shortest_edge(image, self.resize_shortest_edge, self.resample)
        if self.do_center_crop:
            image = center_crop(image, self.crop_size)
        return image

    def fit(self, image: Image.Image, size: int) -> Image.Image:
        """A PIL image at (size, size): shortest edge resized to `size`, then center crop; unchanged if already so."""
        return image if image.size == (size, size) else center_crop(resize_shortest_edge(image, size, self.resample),
                                                                    size)

    @staticmethod
    def to_array(image: Image.Image, rescale: bool = True) -> np.ndarray:
        """An RGB PIL image -> float32 array (3, H, W) in [0, 1]; `rescale=False`: its `uint8` values (a contiguous
        copy, for batching)."""
        if not rescale:
            return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
        return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0

    def process_one(self, image, size=None) -> np.ndarray:
        """One image -> float32 array (3, H, W) in [0, 1]; with `size`, at (size, size) (see `fit`)."""
        image = self.resize_and_crop(image)
        return self.to_array(image if size is None else self.fit(image, size))

    def preprocess(self, images, return_tensors="pt", size=None, **kwargs) -> BatchFeature:
        """Images -> `pixel_values` (B, 3, H, W) in [0, 1]; `size` brings every image to (size, size) (see
        `process_one`)."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise ValueError("No images given.")
        arrays = [self.process_one(image, size=size) for image in images]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(f"Images have different sizes after processing {sorted(shapes)}; enable resize and crop.")
        return BatchFeature(data={"pixel_values": np.stack(arrays)}, tensor_type=return_tensors)


__all__ = ["DMAEImageProcessor", "center_crop", "channels_last", "check_image_size", "decode_image",
           "resize_shortest_edge", "to_rgb"]
