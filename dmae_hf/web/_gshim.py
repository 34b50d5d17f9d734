# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Temporary: `SmoothedClassifier.from_pretrained`, `g.preprocess` and `g.shrink_note` (G_API.md) through today's
pipeline, until helper g's versions are on main. Removed when they land."""

import math
from collections import namedtuple

from .. import defaults

Preprocessed = namedtuple("Preprocessed", "pixel_values shrink original_size")


def from_pretrained(source, sigma=None, denoiser=None, override_sigma=False):
    from ..smoothed_classifier import SmoothedClassifier

    if hasattr(SmoothedClassifier, "from_pretrained"):
        return SmoothedClassifier.from_pretrained(source, sigma=sigma, denoiser=denoiser,
                                                  override_sigma=override_sigma)
    from transformers import pipeline

    from .. import register

    register()
    pipe = pipeline("certified-image-classification", model=source, sigma=sigma, denoiser=denoiser)
    g = pipe.smoothed
    g.trained_sigma = getattr(pipe.model.config, "smoothing_sigma", None) or (
        None if g.denoiser is None else float(g.denoiser.config.noise_sigma))
    g.sigma_override = False
    g.denoiser_name = denoiser
    g.preprocess = lambda image, max_pixels=None: _preprocess(pipe, image, max_pixels)
    g.shrink_note = shrink_note
    return g


def _preprocess(pipe, image, max_pixels):
    from ..image_processing_dmae import decode_image

    decoded = decode_image(image, max_pixels)
    inputs = pipe.preprocess(decoded, max_pixels=max_pixels)
    if "error" in inputs:
        raise ValueError(inputs["error"])
    pixel_values = inputs["pixel_values"][0]
    w, h = decoded.size
    shrink = max(1.0, h / pixel_values.shape[-2], w / pixel_values.shape[-1])
    return Preprocessed(pixel_values, shrink, (h, w))


def shrink_note(shrink):
    if not math.isfinite(shrink) or shrink <= defaults.MAX_SHRINK:
        return None
    return (f"The image was shrunk {shrink:.0f}x on a side to reach the model's input: the certificate is about the "
            "small image, which may have lost what the original shows.")
