# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The `certified-image-classification` pipeline: Cohen et al.'s CERTIFY for a DMAE smoothed classifier.

    >>> import dmae_hf
    >>> from transformers import pipeline
    >>> certifier = pipeline("certified-image-classification", model="path/to/classifier")
    >>> certifier("cat.png", n0=100, n=10_000, alpha=0.001)
    {'label': 'cat', 'class_id': 3, 'radius': 0.41, 'pA_lower': 0.95, 'abstained': False, 'sigma': 0.25, ...,
     'resolution': [32, 32]}
"""

import types

import torch
from transformers import Pipeline
from transformers.utils import logging

from ..defaults import ALPHA, METHODS, N0, NOISE_BATCH, SEED, N
from ..image_processing_dmae import DMAEImageProcessor
from ..images import decode_image
from ..modeling_dmae import check_pixel_values

logger = logging.get_logger(__name__)

AUTOCAST_DTYPES = {
    None: None,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    torch.bfloat16: torch.bfloat16,
    torch.float16: torch.float16,
}

# Call arguments routed to `model.certify` (and from there to `dmae_hf.smoothing.certify`).
METHOD_OPTIONS = tuple(dict.fromkeys(option for options in METHODS.values() for option in options))
CERTIFY_PARAMETERS = ("n0", "n", "alpha", "seed", "method", *METHOD_OPTIONS, "progress")
MAX_PIXELS = 50_000_000  # larger images are refused before their pixels are decoded
PROGRESS_MIN_SAMPLES = 10_000  # progress=None shows a bar when a certificate draws n0 + n >= this many samples


def parse_autocast_dtype(value):
    """`None`, "bf16"/"bfloat16", "fp16"/"float16" or a torch dtype -> `None`, `torch.bfloat16` or `torch.float16`."""
    if value not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast_dtype must be None, 'bf16' or 'fp16' (or torch.bfloat16/float16), got {value!r}.")
    return AUTOCAST_DTYPES[value]


class RandomizedSmoothingPipeline(Pipeline):
    """Certified image classification with randomized smoothing (Cohen et al., 2019) at the model's own sigma.

    For each image, returns `{"label", "class_id", "radius", "pA_lower", "abstained", "sigma", "n0", "n", "alpha",
    "resolution"}`: with probability at least 1 - alpha the smoothed classifier g predicts `label` on the whole L2
    ball of `radius` around the image, the L2 norm being that of [0, 1] pixels at `resolution` = [H, W], the model's
    input (`config.image_size`). When CERTIFY abstains, `label` and `class_id` are `None` and `radius` is 0.0.

    Inputs: PIL images (any mode; converted to RGB by the image processor), image file paths, numpy arrays (HWC or
    HW, `uint8`, `uint16` or float in [0, 1]), (C, H, W) tensors, or lists of them (a list, or a (B, C, H, W)
    tensor, gives a list of results). Every image is brought to the model's input size before any noise is added:
    by the checkpoint's processor (ImageNet: shortest edge 256, center crop 224) and, when that leaves another size,
    by resizing the shortest edge to `image_size` (bicubic) and center-cropping (logged once per pipeline). Float
    (C, H, W) tensors are certified as given, so they must already be (3, image_size, image_size).

    Call arguments (also accepted by `pipeline(...)`, where they become defaults):
        n0 (`int`, 100): selection samples. n (`int`, 10000): estimation samples. alpha (`float`, 0.001): failure
        probability (defaults: `dmae_hf.defaults`). batch_size (`int`, 1000): noisy samples per forward pass; unlike
        other pipelines it is the Monte Carlo batch, images are certified one after the other. seed (`int`, 0): noise
        seed, so results are reproducible. method (`"cohen"` or `"adaptive"`), with `first_look`, `target_radius`,
        `radius_tolerance`, `estimate_tolerance` for "adaptive" (see `dmae_hf.smoothing.certify`). autocast_dtype
        (`None`, "bf16", "fp16"): run the base classifier under `torch.autocast`. progress (`bool`, default: a tqdm
        bar when n0 + n >= 10,000). resize (`bool`, True): False refuses images that the processor does not bring to
        the model's input size instead of resizing them. max_pixels (`int`, `RandomizedSmoothingPipeline.max_pixels`
        = 50,000,000): larger images are refused with a `ValueError` before their pixels are decoded (files: from
        the header). errors (`"report"` or `"raise"`, for lists, datasets and generators; default "report"): an
        image that cannot be used (unreadable, empty, too large, NaN, bad shape, ...) gives an entry with its
        `"error"` message, `label`/`class_id` None, `radius` and `pA_lower` 0.0 (trivially valid), `abstained` True
        and `resolution` None, and a logged warning, while the others are certified; "raise" stops at the first
        one. A single image always raises a `ValueError`. Invalid arguments (n0 > n, alpha, ...) always raise.

    sigma is `model.config.smoothing_sigma`, the noise level the model was fine-tuned for; it cannot be overridden
    here (use `model.certify(..., sigma=...)` for other levels).
    """

    _load_image_processor = None  # the checkpoint's processor when it has one, else rescale-only (see __init__)
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_processor = False
    _load_video_processor = False
    max_pixels = MAX_PIXELS

    def __init__(self, *args, batch_size=None, **kwargs):
        if batch_size is not None:
            kwargs["noise_batch_size"] = batch_size
        super().__init__(*args, **kwargs)
        if self.image_processor is None:
            logger.warning("No image processor found with the model: using DMAEImageProcessor.for_cifar10(), which "
                           "only rescales to [0, 1] (save a DMAEImageProcessor next to the model to resize or crop).")
            self.image_processor = DMAEImageProcessor.for_cifar10()
        self.model.eval()
        self._resize_logged = False

    def __call__(self, inputs, **kwargs):
        """Certify one image (returns a dict) or a list of images (returns a list of dicts); see the class doc."""
        if "batch_size" in kwargs:
            kwargs["noise_batch_size"] = kwargs.pop("batch_size")
        if isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            if inputs.shape[0] == 0:
                raise ValueError(f"Empty batch of images (shape {tuple(inputs.shape)}): pass at least one image.")
            inputs = list(inputs)
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list) and not inputs:
            raise ValueError("No images given (an empty list): pass an image or a non-empty list of images.")
        if not isinstance(inputs, (list, types.GeneratorType, torch.utils.data.Dataset)):
            kwargs["errors"] = "raise"  # a single image: its problem is the caller's error
        return super().__call__(inputs, batch_size=1, **kwargs)

    def _sanitize_parameters(self, noise_batch_size=None, autocast_dtype=None, sigma=None, max_pixels=None,
                             resize=None, errors=None, **kwargs):
        if sigma is not None:
            raise ValueError("sigma comes from the model (config.smoothing_sigma, the noise level it was trained "
                             "for); use model.certify(pixel_values, sigma=...) to certify at another level.")
        unknown = sorted(set(kwargs) - set(CERTIFY_PARAMETERS))
        if unknown:
            raise ValueError(f"Unknown argument(s) {unknown} for certified-image-classification; expected "
                             f"{', '.join(CERTIFY_PARAMETERS)}, batch_size, autocast_dtype, resize, max_pixels or "
                             "errors.")
        preprocess_kwargs = {}
        if max_pixels is not None:
            if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
                raise ValueError(f"max_pixels must be a positive int (pixels per image), got {max_pixels!r}.")
            preprocess_kwargs["max_pixels"] = max_pixels
        if resize is not None:
            if not isinstance(resize, bool):
                raise ValueError(f"resize must be True or False, got {resize!r}.")
            preprocess_kwargs["resize"] = resize
        if errors is not None:
            if errors not in ("raise", "report"):
                raise ValueError(f"errors must be 'raise' or 'report', got {errors!r}.")
            preprocess_kwargs["errors"] = errors
        forward_kwargs = {name: value for name, value in kwargs.items() if value is not None}
        if noise_batch_size is not None:
            forward_kwargs["batch_size"] = noise_batch_size
        if autocast_dtype is not None:
            forward_kwargs["autocast_dtype"] = parse_autocast_dtype(autocast_dtype)
        return preprocess_kwargs, forward_kwargs, {}

    def preprocess(self, image, max_pixels=None, resize=True, errors="report"):
        """An image (or path) -> `{"pixel_values": (1, 3, S, S) float32 tensor in [0, 1]}`, S = config.image_size;
        with errors="report", a `ValueError` becomes `{"error": message}`."""
        try:
            return {"pixel_values": self._pixel_values(image, self.max_pixels if max_pixels is None else max_pixels,
                                                       resize)}
        except ValueError as error:
            if errors == "raise":
                raise
            logger.warning(f"certified-image-classification: image skipped: {error}")
            return {"error": str(error)}

    def _pixel_values(self, image, max_pixels, resize):
        size = self.model.config.image_size
        if isinstance(image, torch.Tensor) and image.ndim == 3 and image.is_floating_point():
            return self._float_tensor(image, size)
        image = decode_image(image, max_pixels)
        processor = self.image_processor
        if not isinstance(processor, DMAEImageProcessor):
            pixel_values = processor(image, return_tensors="pt")["pixel_values"]
            if tuple(pixel_values.shape[-2:]) != (size, size):
                raise ValueError(f"The image processor gives {tuple(pixel_values.shape[-2:])} pixel values, not the "
                                 f"model's ({size}, {size}) input: configure it to resize and crop to {size}.")
            return pixel_values
        image = processor.resize_and_crop(image)
        if image.size != (size, size):
            if not resize:
                raise ValueError(f"The image is {image.size[0]}x{image.size[1]} after processing, not the model's "
                                 f"{size}x{size} input, and resize=False: resize it first, or pass resize=True.")
            if not self._resize_logged:
                logger.warning(f"certified-image-classification: images are resized to the model's {size}x{size} "
                               f"input (shortest edge, bicubic, center crop) before the noise, e.g. "
                               f"{image.size[0]}x{image.size[1]}; radii are in [0, 1] pixel units at {size}x{size}.")
                self._resize_logged = True
            image = processor.fit(image, size)
        return torch.from_numpy(processor.to_array(image)).unsqueeze(0)

    def _float_tensor(self, image, size):
        """A float (C, H, W) tensor, certified as given: checked, not resized."""
        if image.numel() == 0:
            raise ValueError(f"Empty image tensor of shape {tuple(image.shape)}: an image needs at least one pixel.")
        pixel_values = image.detach().float().cpu().unsqueeze(0)
        check_pixel_values(pixel_values, num_channels=self.model.config.num_channels, clean=True)
        lo, hi = pixel_values.min().item(), pixel_values.max().item()
        if lo < 0 or hi > 1:
            raise ValueError(f"Float image tensors must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}].")
        if tuple(image.shape[-2:]) != (size, size):
            raise ValueError(f"A float tensor is certified as given, so it must be the model's input size (3, {size}, "
                             f"{size}), got {tuple(image.shape)}: resize it, or pass it as a PIL image or uint8 "
                             "array, which the pipeline resizes.")
        return pixel_values

    def _forward(self, model_inputs, n0=N0, n=N, alpha=ALPHA, batch_size=NOISE_BATCH, seed=SEED, method="cohen",
                 autocast_dtype=None, progress=None, **method_kwargs):
        if "error" in model_inputs:  # reported, not certified (errors="report")
            return {"error": model_inputs["error"], "n0": n0, "n": n, "alpha": alpha}
        if progress is None:
            progress = n0 + n >= PROGRESS_MIN_SAMPLES
        pixel_values = model_inputs["pixel_values"][0]
        certificate = self.model.certify(pixel_values, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed,
                                         method=method, autocast_dtype=autocast_dtype, progress=progress,
                                         **method_kwargs)
        return {"certificate": certificate, "resolution": list(pixel_values.shape[-2:])}

    def postprocess(self, model_outputs):
        if "error" in model_outputs:
            return {"error": model_outputs["error"], "label": None, "class_id": None, "radius": 0.0, "pA_lower": 0.0,
                    "abstained": True, "sigma": self.model.config.smoothing_sigma, "n0": model_outputs["n0"],
                    "n": model_outputs["n"], "alpha": model_outputs["alpha"], "resolution": None}
        certificate = model_outputs["certificate"]
        class_id = certificate.prediction
        return {
            "label": None if class_id is None else self.model.config.id2label.get(class_id, str(class_id)),
            "class_id": class_id,
            "radius": certificate.radius,
            "pA_lower": certificate.pA_lower,
            "abstained": certificate.abstained,
            "sigma": certificate.sigma,
            "n0": certificate.n0,
            "n": certificate.n,
            "alpha": certificate.alpha,
            "resolution": model_outputs["resolution"],
        }


__all__ = ["RandomizedSmoothingPipeline", "parse_autocast_dtype"]
