# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The `certified-image-classification` pipeline: Cohen et al.'s CERTIFY for a DMAE smoothed classifier.

    >>> import dmae_hf
    >>> from transformers import pipeline
    >>> certifier = pipeline("certified-image-classification", model="path/to/classifier")
    >>> certifier("cat.png", n0=100, n=10_000, alpha=0.001)
    {'label': 'cat', 'class_id': 3, 'radius': 0.41, 'pA_lower': 0.95, 'abstained': False, 'sigma': 0.25, ...}
"""

import os

import torch
from transformers import Pipeline
from transformers.utils import logging

from .image_processing_dmae import DMAEImageProcessor

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
CERTIFY_PARAMETERS = ("n0", "n", "alpha", "seed", "method", "first_look", "target_radius", "radius_tolerance",
                      "estimate_tolerance")


def parse_autocast_dtype(value):
    """`None`, "bf16"/"bfloat16", "fp16"/"float16" or a torch dtype -> `None`, `torch.bfloat16` or `torch.float16`."""
    if value not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast_dtype must be None, 'bf16' or 'fp16' (or torch.bfloat16/float16), got {value!r}.")
    return AUTOCAST_DTYPES[value]


def load_image_file(path):
    """Open an image file with PIL and decode it now, so that a corrupt file fails here with a `ValueError`."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise ValueError(f"No image file at {str(path)!r}.")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"Cannot read the image {str(path)!r}: {error}") from error
    return image


class RandomizedSmoothingPipeline(Pipeline):
    """Certified image classification with randomized smoothing (Cohen et al., 2019) at the model's own sigma.

    For each image, returns `{"label", "class_id", "radius", "pA_lower", "abstained", "sigma", "n0", "n", "alpha"}`:
    with probability at least 1 - alpha the smoothed classifier g predicts `label` on the whole L2 ball of `radius`
    (in [0, 1] pixel units) around the image. When CERTIFY abstains, `label` and `class_id` are `None` and `radius`
    is 0.0.

    Inputs: PIL images (any mode; converted to RGB by the image processor), image file paths, numpy arrays (HWC or
    HW, `uint8`, `uint16` or float in [0, 1]), (C, H, W) tensors, or lists of them (a list gives a list of results).

    Call arguments (also accepted by `pipeline(...)`, where they become defaults):
        n0 (`int`, 100): selection samples. n (`int`, 10000): estimation samples. alpha (`float`, 0.001): failure
        probability. batch_size (`int`, 1000): noisy samples per forward pass; unlike other pipelines it is the
        Monte Carlo batch, images are certified one after the other. seed (`int`, 0): noise seed, so results are
        reproducible. method (`"cohen"` or `"adaptive"`), with `first_look`, `target_radius`, `radius_tolerance`,
        `estimate_tolerance` for "adaptive" (see `dmae_hf.smoothing.certify`). autocast_dtype (`None`, "bf16",
        "fp16"): run the base classifier under `torch.autocast`.

    sigma is `model.config.smoothing_sigma`, the noise level the model was fine-tuned for; it cannot be overridden
    here (use `model.certify(..., sigma=...)` for other levels).
    """

    _load_image_processor = None  # the checkpoint's processor when it has one, else rescale-only (see __init__)
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_processor = False
    _load_video_processor = False

    def __init__(self, *args, batch_size=None, **kwargs):
        if batch_size is not None:
            kwargs["noise_batch_size"] = batch_size
        super().__init__(*args, **kwargs)
        if self.image_processor is None:
            logger.warning("No image processor found with the model: using DMAEImageProcessor.for_cifar10(), which "
                           "only rescales to [0, 1] (save a DMAEImageProcessor next to the model to resize or crop).")
            self.image_processor = DMAEImageProcessor.for_cifar10()
        self.model.eval()

    def __call__(self, inputs, **kwargs):
        """Certify one image (returns a dict) or a list of images (returns a list of dicts); see the class doc."""
        if "batch_size" in kwargs:
            kwargs["noise_batch_size"] = kwargs.pop("batch_size")
        return super().__call__(inputs, batch_size=1, **kwargs)

    def _sanitize_parameters(self, noise_batch_size=None, autocast_dtype=None, sigma=None, **kwargs):
        if sigma is not None:
            raise ValueError("sigma comes from the model (config.smoothing_sigma, the noise level it was trained "
                             "for); use model.certify(pixel_values, sigma=...) to certify at another level.")
        unknown = sorted(set(kwargs) - set(CERTIFY_PARAMETERS))
        if unknown:
            raise ValueError(f"Unknown argument(s) {unknown} for certified-image-classification; expected "
                             f"{', '.join(CERTIFY_PARAMETERS)}, batch_size or autocast_dtype.")
        forward_kwargs = {name: value for name, value in kwargs.items() if value is not None}
        if noise_batch_size is not None:
            forward_kwargs["batch_size"] = noise_batch_size
        if autocast_dtype is not None:
            forward_kwargs["autocast_dtype"] = parse_autocast_dtype(autocast_dtype)
        return {}, forward_kwargs, {}

    def preprocess(self, image):
        """An image (or path) -> `{"pixel_values": (1, 3, H, W) float32 tensor in [0, 1]}`."""
        if isinstance(image, (str, os.PathLike)):
            image = load_image_file(image)
        if isinstance(image, torch.Tensor) and image.ndim == 3 and image.is_floating_point():
            pixel_values = image.detach().float().cpu().unsqueeze(0)
        else:
            pixel_values = self.image_processor(image, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixel_values}

    def _forward(self, model_inputs, n0=100, n=10_000, alpha=0.001, batch_size=1000, seed=0, method="cohen",
                 autocast_dtype=None, **method_kwargs):
        certificate = self.model.certify(model_inputs["pixel_values"][0], n0=n0, n=n, alpha=alpha,
                                         batch_size=batch_size, seed=seed, method=method,
                                         autocast_dtype=autocast_dtype, **method_kwargs)
        return {"certificate": certificate}

    def postprocess(self, model_outputs):
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
        }


__all__ = ["RandomizedSmoothingPipeline", "parse_autocast_dtype", "load_image_file"]
