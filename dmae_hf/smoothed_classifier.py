# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Randomized smoothing around any image classifier, optionally behind a DMAE denoiser.

    g(x) = argmax_c P(f(x + eps) = c),   eps ~ N(0, sigma^2 I),   f(x~) = model(normalise(D(x~)))

`x` is the clean image already brought to the model's input resolution and scaled to [0, 1]: the noise is added
there, in float32 (`smoothing.add_gaussian_noise`), so sigma and the certified L2 radius are in [0, 1] pixel units
of the model's input. The model's own preprocessing runs inside f, on the noisy image: `normalise(x~) =
(scale * x~ - image_mean) / image_std` with the image processor's `rescale_factor` (scale = 255 * rescale_factor,
1 for the usual 1/255) and mean/std, so f sees what the model saw in training up to the noise.

`D` is the identity, or a DMAE pre-training model used as a denoiser (denoised smoothing, Salman et al. 2020, with
the DMAE in place of their DnCNN): `DMAEForPreTraining.denoise` reconstructs the image from all of its noisy patches.
A denoiser removes the noise level it was trained on (`config.noise_sigma`), so it serves that sigma only.

For a DMAE classifier, f is `model.base_classifier` (the model normalises itself), so its certificates are those of
`model.certify` for the same seed.

    >>> smoothed = SmoothedClassifier(vit, sigma=0.25, image_processor=processor, denoiser=dmae_denoiser)
    >>> smoothed.certify(x, n0=100, n=10_000, alpha=0.001)      # x: (3, H, W) in [0, 1] at the model's input
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn
from transformers import PreTrainedModel

from .configuration_dmae import DMAEConfig
from .defaults import ALPHA, N0, NOISE_BATCH, SEED, N
from .modeling_dmae import DMAEForPreTraining
from .smoothing import certify, predict

MAX_SIGMA = 1.0  # noise std in [0, 1] pixel units; Cohen et al. and DMAE certify up to 1.0


def check_sigma(sigma) -> float:
    """sigma as a float in (0, MAX_SIGMA], or a `ValueError` naming the unit (e.g. a 0-255 value)."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive number (the noise std in [0, 1] pixel units), got {sigma!r}.")
    if sigma > MAX_SIGMA:
        raise ValueError(f"sigma = {sigma} is larger than {MAX_SIGMA}: sigma is in [0, 1] pixel units (images are "
                         f"scaled to [0, 1] before the noise). For a value in 0-255 units divide by 255 "
                         f"({sigma} / 255 = {sigma / 255:.4g}).")
    return float(sigma)


def load_denoiser(denoiser, **kwargs) -> DMAEForPreTraining:
    """A `DMAEForPreTraining` (given, or loaded from a path, Hub id or short name) with its decoder, in eval mode."""
    if isinstance(denoiser, (str, bytes)) or hasattr(denoiser, "__fspath__"):
        name = str(denoiser)
        fix = ("A denoiser needs the decoder: pass a DMAEForPreTraining checkpoint (examples/pretrain.py), not a "
               "fine-tuned classifier.")
        config = DMAEConfig.from_pretrained(name, **kwargs)
        architectures = config.architectures or []
        if architectures and "DMAEForPreTraining" not in architectures:
            raise ValueError(f"{name!r} is not a DMAE pre-training checkpoint (it holds {', '.join(architectures)}). "
                             + fix)
        model, info = DMAEForPreTraining.from_pretrained(name, config=config, output_loading_info=True, **kwargs)
        missing = sorted(info["missing_keys"])
        if missing:
            raise ValueError(f"{name!r} is not a DMAE pre-training checkpoint: it lacks {len(missing)} weights "
                             f"({', '.join(missing[:3])}, ...). " + fix)
        denoiser = model
    if not isinstance(denoiser, DMAEForPreTraining):
        raise ValueError(f"denoiser must be a DMAEForPreTraining model or the path, Hub id or short name of one, "
                         f"got {type(denoiser).__name__}.")
    return denoiser.eval()


def processor_normalisation(image_processor) -> tuple[float, list | None, list | None]:
    """(scale, image_mean, image_std) of a transformers image processor: the map from [0, 1] pixels to its model's
    input, `(scale * x - mean) / std` (mean and std None when it does not normalise)."""
    if image_processor is None:
        return 1.0, None, None
    scale = 255.0 * float(image_processor.rescale_factor) if getattr(image_processor, "do_rescale", False) else 255.0
    if not getattr(image_processor, "do_normalize", False):
        return scale, None, None
    mean, std = image_processor.image_mean, image_processor.image_std
    mean = [float(mean)] * 3 if isinstance(mean, numbers.Real) else [float(m) for m in mean]
    std = [float(std)] * 3 if isinstance(std, numbers.Real) else [float(s) for s in std]
    if not all(math.isfinite(v) for v in mean + std) or min(std) <= 0:
        raise ValueError(f"The image processor's image_mean {mean} / image_std {std} must be finite with std > 0.")
    return scale, mean, std


class SmoothedClassifier(nn.Module):
    """The smoothed classifier g of any image classifier `model` at noise level `sigma` (see the module doc).

    Args:
        model: a transformers image classifier (`AutoModelForImageClassification`: ViT, ConvNeXt, ResNet, ..., or a
            DMAE classifier) or any `torch.nn.Module` mapping a (N, 3, H, W) float batch to (N, K) logits (a tensor
            or an output with `.logits`).
        sigma: noise std in [0, 1] pixels. Default: `model.config.smoothing_sigma` (DMAE classifiers), else the
            denoiser's `noise_sigma`; required otherwise. A model with a `smoothing_sigma` serves that sigma only.
        image_processor: the model's processor, whose rescale factor and mean/std f applies to the noisy image
            (ignored for DMAE classifiers, which normalise themselves). Without it the module gets [0, 1] pixels,
            unless `image_mean`/`image_std` are given.
        image_mean, image_std: the normalisation, when there is no processor.
        denoiser: a DMAE pre-training model or checkpoint (path, Hub id, short name) trained at this sigma.
    """

    def __init__(self, model: nn.Module, sigma: float | None = None, image_processor=None, image_mean=None,
                 image_std=None, denoiser=None):
        super().__init__()
        self.model = model
        config = getattr(model, "config", None)
        self.is_dmae = getattr(config, "model_type", None) == "dmae" and hasattr(model, "base_classifier")
        self.denoiser = None if denoiser is None else load_denoiser(denoiser)
        trained_sigma = getattr(config, "smoothing_sigma", None)
        denoiser_sigma = None if self.denoiser is None else float(self.denoiser.config.noise_sigma)
        if denoiser_sigma == 0:
            raise ValueError("The denoiser was pre-trained without noise (noise_sigma = 0, an MAE): it does not "
                             "denoise. Pass a DMAE pre-trained at the sigma you certify at.")
        if sigma is None:
            sigma = trained_sigma if trained_sigma is not None else denoiser_sigma
        if sigma is None:
            raise ValueError(f"sigma is required: {type(model).__name__} has no smoothing_sigma in its config (it "
                             "is not a DMAE classifier), so pass the noise level to certify at, in [0, 1] pixel "
                             "units, e.g. sigma=0.25 (CLI: --sigma 0.25).")
        self.sigma = check_sigma(sigma)
        if trained_sigma is not None and not math.isclose(self.sigma, trained_sigma):
            raise ValueError(f"The model was fine-tuned for sigma = {trained_sigma} (config.smoothing_sigma), not "
                             f"{self.sigma}: certify it at {trained_sigma}, or fine-tune it at {self.sigma}.")
        if self.denoiser is not None:
            if not math.isclose(self.sigma, denoiser_sigma):
                raise ValueError(f"The denoiser was trained at noise_sigma = {denoiser_sigma}, not at sigma = "
                                 f"{self.sigma}: a denoiser removes the noise level it was trained on, so certify "
                                 f"at {denoiser_sigma} or pre-train a DMAE at {self.sigma}.")
        self.id2label = dict(getattr(config, "id2label", None) or {})
        # (H, W) of f's input when it is fixed: a DMAE's image_size or the denoiser's; other models take what their
        # processor gives (their config's image_size may be unused, as ConvNeXt's and ResNet's are).
        self.input_size = (config.image_size,) * 2 if self.is_dmae else None
        if self.denoiser is not None:
            size = (self.denoiser.config.image_size,) * 2
            if self.input_size is not None and self.input_size != size:
                raise ValueError(f"The denoiser works at {size[0]}x{size[1]} and the classifier at "
                                 f"{self.input_size[0]}x{self.input_size[1]}: use a denoiser of the classifier's "
                                 "input resolution.")
            self.input_size = size
        scale, mean, std = (1.0, None, None) if self.is_dmae else processor_normalisation(image_processor)
        if image_mean is not None or image_std is not None:
            if image_processor is not None:
                raise ValueError("Pass either image_processor or image_mean/image_std, not both.")
            if image_mean is None or image_std is None:
                raise ValueError("Pass both image_mean and image_std (or neither).")
            scale, mean, std = 1.0, list(image_mean), list(image_std)
        self.scale = scale
        self.register_buffer("image_mean", None if mean is None else torch.tensor(mean).view(1, -1, 1, 1), False)
        self.register_buffer("image_std", None if std is None else torch.tensor(std).view(1, -1, 1, 1), False)

    def forward(self, noisy_pixel_values: torch.Tensor) -> torch.Tensor:
        """f: (N, K) logits of a batch of noisy [0, 1] images (denoised first when there is a denoiser)."""
        x = noisy_pixel_values
        if self.denoiser is not None:
            x = self.denoiser.denoise(x)
        if self.is_dmae:
            return self.model.base_classifier(x)
        if self.scale != 1.0:
            x = x * self.scale
        if self.image_mean is not None:
            x = (x - self.image_mean.to(x.dtype)) / self.image_std.to(x.dtype)
        out = self.model(pixel_values=x) if isinstance(self.model, PreTrainedModel) else self.model(x)
        return out.logits if hasattr(out, "logits") else out

    def certify(self, pixel_values: torch.Tensor, n0: int = N0, n: int = N, alpha: float = ALPHA,
                batch_size: int = NOISE_BATCH, seed: int = SEED, **kwargs):
        """Cohen et al.'s CERTIFY of g at `self.sigma` for one clean (C, H, W) image in [0, 1] at the model's input
        resolution; see `dmae_hf.smoothing.certify`."""
        self.eval()
        return certify(self, pixel_values, sigma=self.sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                       seed=seed, **kwargs)

    def predict(self, pixel_values: torch.Tensor, n: int = N, alpha: float = ALPHA, batch_size: int = NOISE_BATCH,
                seed: int = SEED, **kwargs):
        """Cohen et al.'s PREDICT of g at `self.sigma`; see `dmae_hf.smoothing.predict`."""
        self.eval()
        return predict(self, pixel_values, sigma=self.sigma, n=n, alpha=alpha, batch_size=batch_size, seed=seed,
                       **kwargs)


__all__ = ["SmoothedClassifier", "check_sigma", "load_denoiser", "processor_normalisation"]
