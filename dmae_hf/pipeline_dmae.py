# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The `certified-image-classification` pipeline: Cohen et al.'s CERTIFY for the smoothed version of any image
classifier (a DMAE classifier, or any `AutoModelForImageClassification` checkpoint, optionally behind a DMAE
denoiser; see `smoothed_classifier.py`).

    >>> import dmae_hf
    >>> from transformers import pipeline
    >>> certifier = pipeline("certified-image-classification", model="path/to/classifier")
    >>> certifier("cat.png", n0=100, n=10_000, alpha=0.001)
    {'label': 'cat', 'class_id': 3, 'radius': 0.41, 'pA_lower': 0.95, 'abstained': False, 'sigma': 0.25, ...,
     'resolution': [32, 32], 'shrink': 1.0, 'note': None, 'denoiser': None, 'caveat': 'A certificate proves ...'}
    >>> pipeline("certified-image-classification", model="my-vit-cifar10", sigma=0.25, denoiser="path/to/dmae")

This file and its flat siblings are what a checkpoint pushed by dmae-hf carries for `trust_remote_code=True`
(`custom_pipelines` in its config), so it imports nothing outside them.
"""

import types

import torch
from transformers import Pipeline
from transformers.utils import logging

from .defaults import ALPHA, CERTIFICATE_CAVEAT, METHODS, N0, NOISE_BATCH, SEED, N
from .image_processing_dmae import DMAEImageProcessor
from .smoothed_classifier import SmoothedClassifier

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

# Call arguments routed to g.certify (and from there to `dmae_hf.smoothing.certify`).
METHOD_OPTIONS = tuple(dict.fromkeys(option for options in METHODS.values() for option in options))
CERTIFY_PARAMETERS = ("n0", "n", "alpha", "seed", "method", *METHOD_OPTIONS, "progress")
MAX_PIXELS = 50_000_000  # larger images are refused before their pixels are decoded
PROGRESS_MIN_SAMPLES = 10_000  # progress=None shows a bar when a certificate draws n0 + n >= this many samples


def parse_autocast_dtype(value):
    """`None`, "bf16"/"bfloat16", "fp16"/"float16" or a torch dtype -> `None`, `torch.bfloat16` or `torch.float16`."""
    if value not in AUTOCAST_DTYPES:
        raise ValueError(f"autocast_dtype must be None, 'bf16' or 'fp16' (or torch.bfloat16/float16), got {value!r}.")
    return AUTOCAST_DTYPES[value]


def certificate_fields(g, certificate, resolution, shrink) -> dict:
    """What the pipeline (and `dmae predict --json`) returns for one certificate of g: the class and its label, the
    radius and the bound, the settings, the shrink factor with its note (> `MAX_SHRINK`) and the caveat."""
    class_id = certificate.prediction
    return {
        "label": None if class_id is None else g.id2label.get(class_id, str(class_id)),
        "class_id": class_id,
        "radius": certificate.radius,
        "pA_lower": certificate.pA_lower,
        "abstained": certificate.abstained,
        "n0": certificate.n0,
        "n": certificate.n,
        "alpha": certificate.alpha,
        "resolution": resolution,
        "shrink": shrink,
        "note": g.shrink_note(shrink),
        "sigma": certificate.sigma,
        "sigma_override": certificate.sigma_override,
        "denoiser": g.denoiser_name,
        "caveat": CERTIFICATE_CAVEAT,
    }


class RandomizedSmoothingPipeline(Pipeline):
    """Certified image classification with randomized smoothing (Cohen et al., 2019).

    For each image, returns `{"label", "class_id", "radius", "pA_lower", "abstained", "sigma", "sigma_override",
    "n0", "n", "alpha", "resolution", "shrink", "note", "denoiser", "caveat"}`: with probability at least 1 - alpha the
    smoothed classifier g predicts `label` on the whole L2 ball of `radius` around the image, the L2 norm being that
    of [0, 1] pixels at `resolution` = [H, W], the model's input. When CERTIFY abstains, `label` and `class_id` are
    `None` and `radius` is 0.0. `shrink` is the factor by which the image was scaled down to reach the model's input
    (1.0: not at all), and `note` a one-line warning when it exceeds `defaults.MAX_SHRINK` (else None). `caveat` is
    `defaults.CERTIFICATE_CAVEAT`: a certificate proves the answer stable, not correct.

    The pipeline builds g (`SmoothedClassifier`, attribute `smoothed`) and calls it: g.preprocess brings each image to
    the model's input (the one image decoder, then one call of the model's image processor, without normalising),
    and g.certify certifies it. Construction arguments (`pipeline(..., sigma=..., denoiser=..., override_sigma=...)`):
    sigma (`float`, in [0, 1] pixel units): default the sigma the model (or the denoiser) was trained for, required
    for models without one; denoiser: a DMAE pre-training checkpoint (path, Hub id, short name or
    `DMAEForPreTraining`) put in front of the classifier, f(x~) = model(D(x~)); override_sigma (`bool`): allow a sigma
    other than the trained one (recorded in `sigma_override`). The sigma rule is `defaults.check_sigma`.

    Inputs: PIL images (any mode), image file paths, numpy arrays (HWC or HW, `uint8`, `uint16` or float in [0, 1]),
    (C, H, W) tensors, or lists of them (a list, or a (B, C, H, W) tensor, gives a list of results). A DMAE model's
    processor also brings images it leaves at another size to `image_size` (shortest edge, bicubic, center crop;
    logged once per pipeline). Float (C, H, W) tensors are certified as given, so they must already be the model's
    input size.

    Call arguments (also accepted by `pipeline(...)`, where they become defaults):
        n0 (`int`, 100): selection samples. n (`int`, 10000): estimation samples. alpha (`float`, 0.001): failure
        probability (defaults: `dmae_hf.defaults`). batch_size (`int`, 1000): noisy samples per forward pass; unlike
        other pipelines it is the Monte Carlo batch, images are certified one after the other. seed (`int`, 0): noise
        seed, so results are reproducible. method (`"cohen"`, `"sequential"` or `"adaptive"`), with the options
        `defaults.METHODS` lists for it: `first_look`, `target_radius`, `radius_tolerance`, and `reach`
        ("sequential") or `estimate_tolerance` ("adaptive") (see `dmae_hf.smoothing.certify`). autocast_dtype
        (`None`, "bf16", "fp16"): run the base classifier under `torch.autocast`. progress (`bool`, default: a tqdm
        bar when n0 + n >= 10,000). resize (`bool`, True): False refuses images that the processor does not bring to
        the model's input size instead of resizing them. max_pixels (`int`, `RandomizedSmoothingPipeline.max_pixels`
        = 50,000,000): larger images are refused with a `ValueError` before their pixels are decoded (files: from
        the header). errors (`"report"` or `"raise"`, for lists, datasets and generators; default "report"): an
        image that cannot be used (unreadable, empty, too large, NaN, bad shape, ...) gives an entry with its
        `"error"` message, `label`/`class_id` None, `radius` and `pA_lower` 0.0 (trivially valid), `abstained` True
        and `resolution` None, and a logged warning, while the others are certified; "raise" stops at the first
        one. A single image always raises a `ValueError`. Invalid arguments (n0 > n, alpha, ...) always raise.
    """

    _load_image_processor = None  # the checkpoint's processor when it has one, else rescale-only (see __init__)
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_processor = False
    _load_video_processor = False
    max_pixels = MAX_PIXELS

    def __init__(self, *args, batch_size=None, sigma=None, denoiser=None, override_sigma=False, **kwargs):
        if batch_size is not None:
            kwargs["noise_batch_size"] = batch_size
        super().__init__(*args, **kwargs)
        is_dmae = getattr(self.model.config, "model_type", None) == "dmae"
        if self.image_processor is None:
            if not is_dmae:
                raise ValueError(f"No image processor found with {self.model.name_or_path!r}: a classifier needs its "
                                 "own (its resize and normalisation), so save one next to the model or pass "
                                 "image_processor=... to pipeline().")
            logger.warning("No image processor found with the model: using DMAEImageProcessor.for_cifar10(), which "
                           "only rescales to [0, 1] (save a DMAEImageProcessor next to the model to resize or crop).")
            self.image_processor = DMAEImageProcessor.for_cifar10()
        self.smoothed = SmoothedClassifier(self.model, sigma=sigma, image_processor=self.image_processor,
                                           denoiser=denoiser, override_sigma=override_sigma).to(self.device)
        self.smoothed.eval()
        self._resize_logged = False

    @property
    def denoiser_name(self) -> str | None:
        """The result's "denoiser": its path, Hub id or short name (`SmoothedClassifier.denoiser_name`)."""
        return self.smoothed.denoiser_name

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

    def _sanitize_parameters(self, noise_batch_size=None, autocast_dtype=None, sigma=None, override_sigma=None,
                             max_pixels=None, resize=None, errors=None, **kwargs):
        if sigma is not None or override_sigma is not None:
            raise ValueError("sigma is fixed when the pipeline is created: pipeline('certified-image-classification', "
                             "model=..., sigma=..., override_sigma=...) (default: the sigma the model was trained "
                             "for).")
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
        """An image (or path) -> `{"pixel_values": (1, 3, H, W) float32 tensor in [0, 1], "shrink": float}` at the
        model's input, by `SmoothedClassifier.preprocess` (the one decoder, then one image-processor call); with
        errors="report", a `ValueError` becomes `{"error": message}`."""
        try:
            pixel_values, shrink, original_size = self.smoothed.preprocess(
                image, self.max_pixels if max_pixels is None else max_pixels, resize=resize)
        except ValueError as error:
            if errors == "raise":
                raise
            logger.warning(f"certified-image-classification: image skipped: {error}")
            return {"error": str(error)}
        height, width = pixel_values.shape[-2:]
        if original_size != (height, width) and not self._resize_logged:
            logger.warning(f"certified-image-classification: images are resized to the model's {height}x{width} "
                           f"input (by its image processor) before the noise, e.g. {original_size[1]}x"
                           f"{original_size[0]}; radii are in [0, 1] pixel units at {height}x{width}.")
            self._resize_logged = True
        return {"pixel_values": pixel_values.unsqueeze(0), "shrink": shrink}

    def _forward(self, model_inputs, n0=N0, n=N, alpha=ALPHA, batch_size=NOISE_BATCH, seed=SEED, method="cohen",
                 autocast_dtype=None, progress=None, **method_kwargs):
        if "error" in model_inputs:  # reported, not certified (errors="report")
            return {"error": model_inputs["error"], "n0": n0, "n": n, "alpha": alpha}
        if progress is None:
            progress = n0 + n >= PROGRESS_MIN_SAMPLES
        pixel_values = model_inputs["pixel_values"][0]
        certificate = self.smoothed.certify(pixel_values, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed,
                                            method=method, autocast_dtype=autocast_dtype, progress=progress,
                                            **method_kwargs)
        return {"certificate": certificate, "resolution": list(pixel_values.shape[-2:]),
                "shrink": model_inputs["shrink"]}

    def postprocess(self, model_outputs):
        g = self.smoothed
        common = {"sigma": g.sigma, "sigma_override": g.sigma_override, "denoiser": g.denoiser_name,
                  "caveat": CERTIFICATE_CAVEAT}
        if "error" in model_outputs:
            return {"error": model_outputs["error"], "label": None, "class_id": None, "radius": 0.0, "pA_lower": 0.0,
                    "abstained": True, "n0": model_outputs["n0"], "n": model_outputs["n"],
                    "alpha": model_outputs["alpha"], "resolution": None, "shrink": None, "note": None, **common}
        return certificate_fields(g, model_outputs["certificate"], model_outputs["resolution"],
                                  model_outputs["shrink"])


__all__ = ["RandomizedSmoothingPipeline", "certificate_fields", "parse_autocast_dtype"]
