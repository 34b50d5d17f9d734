# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""g, the smoothed classifier: the one object through which everything certifies or predicts (`model.certify`,
the pipeline, `dmae certify`/`dmae predict`, the web page, the benchmarks).

    g(x) = argmax_c P(f(x + eps) = c),   eps ~ N(0, sigma^2 I),   f(x~) = model(normalise(D(x~)))

`x` is the clean image brought to the model's input resolution and scaled to [0, 1] (`preprocess`): the noise is
added there, in float32, so sigma and the certified L2 radius are in [0, 1] pixel units of the model's input. The
model's own normalisation runs inside f on the noisy image: `normalise(x~) = (scale * x~ - mean) / std` with the
image processor's mean/std and `scale = 255 * rescale_factor` (1 for the usual 1/255). A DMAE classifier normalises
itself (f = `model.base_classifier`). `D` is the identity, or a DMAE pre-training model as a denoiser (denoised
smoothing, Salman et al. 2020): it removes the noise level it was trained on.

sigma follows one rule, `defaults.check_sigma`: in (0, 1], and equal to the level the model (or the denoiser) was
trained for unless `override_sigma=True`, which the certificates then record (`sigma_override`).

    >>> g = SmoothedClassifier.from_pretrained("dmae-tiny-cifar10")
    >>> x = g.preprocess("cat.png").pixel_values          # (3, 32, 32) in [0, 1]
    >>> g.certify(x, n0=100, n=10_000, alpha=0.001)        # Certificate(prediction=3, radius=0.41, ...)
    >>> SmoothedClassifier.from_pretrained("vit-tiny-cifar10-clean", denoiser="dmae-tiny-cifar10-denoiser")
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from typing import NamedTuple

import torch
from torch import nn
from transformers import AutoImageProcessor, AutoModelForImageClassification, AutoModelForPreTraining, PreTrainedModel

from .configuration_dmae import DMAEConfig
from .defaults import ALPHA, MAX_SHRINK, N0, NOISE_BATCH, SEED, N, check_sigma
from .image_processing_dmae import DMAEImageProcessor, decode_image, to_rgb
from .input_checks import check_pixel_values
from .load_report import refuse_non_finite_weights
from .smoothing import certify, predict

# Keyword arguments of `from_pretrained` that the image processor's loader takes too (the rest are the model's).
PROCESSOR_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder",
                    "trust_remote_code")


class Preprocessed(NamedTuple):
    """An image at the model's input: `pixel_values` (3, H, W) float32 in [0, 1]; `shrink`, the largest factor by
    which a side was reduced to reach it (resize and crop together; 1.0 = not reduced); `original_size`, the (H, W)
    it had before."""

    pixel_values: torch.Tensor
    shrink: float
    original_size: tuple[int, int]


def is_denoiser(model) -> bool:
    """A DMAE pre-training model (by duck type: the remote-code copy of the class is another class)."""
    return getattr(getattr(model, "config", None), "model_type", None) == "dmae" and callable(
        getattr(model, "denoise", None))


def load_denoiser(denoiser, **kwargs):
    """A `DMAEForPreTraining` (given, or loaded from a path, Hub id or short name) with its decoder, in eval mode."""
    if isinstance(denoiser, (str, bytes)) or hasattr(denoiser, "__fspath__"):
        name = os.fsdecode(denoiser)
        fix = ("A denoiser needs the decoder: pass a DMAEForPreTraining checkpoint (examples/pretrain.py), not a "
               "fine-tuned classifier.")
        config = DMAEConfig.from_pretrained(name, **kwargs)
        architectures = config.architectures or []
        if architectures and "DMAEForPreTraining" not in architectures:
            raise ValueError(f"{name!r} is not a DMAE pre-training checkpoint (it holds {', '.join(architectures)}). "
                             + fix)
        model, info = AutoModelForPreTraining.from_pretrained(name, config=config, output_loading_info=True, **kwargs)
        missing = sorted(info["missing_keys"])
        if missing:
            raise ValueError(f"{name!r} is not a DMAE pre-training checkpoint: it lacks {len(missing)} weights "
                             f"({', '.join(missing[:3])}, ...). " + fix)
        denoiser = model
    if not is_denoiser(denoiser):
        raise ValueError(f"denoiser must be a DMAEForPreTraining model or the path, Hub id or short name of one, "
                         f"got {type(denoiser).__name__}.")
    return denoiser.eval()


def channel_values(name: str, values, channels: int = 3) -> list[float]:
    """A per-channel normalisation (`image_mean` / `image_std`): one number or one per channel, finite (std > 0)."""
    values = [values] * channels if isinstance(values, numbers.Real) else values
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or {channels} numbers, got {values!r}.") from None
    if len(values) != channels:
        raise ValueError(f"{name} needs {channels} values (one per RGB channel), got {len(values)}: {values}.")
    if not all(math.isfinite(v) for v in values) or (name.endswith("std") and min(values) <= 0):
        raise ValueError(f"{name} must hold finite numbers{' > 0' if name.endswith('std') else ''}, got {values}.")
    return values


def is_dmae_processor(image_processor) -> bool:
    # by name: under trust_remote_code the processor's class may come from another copy of this module
    return type(image_processor).__name__ == DMAEImageProcessor.__name__


def processor_normalisation(image_processor) -> tuple[float, list | None, list | None]:
    """(scale, image_mean, image_std) of a transformers image processor: the map from [0, 1] pixels to its model's
    input, `(scale * x - mean) / std` (mean and std None when it does not normalise)."""
    if image_processor is None or is_dmae_processor(image_processor):  # DMAE processors give [0, 1] pixels
        return 1.0, None, None
    scale = 255.0 * float(image_processor.rescale_factor) if getattr(image_processor, "do_rescale", False) else 255.0
    if not getattr(image_processor, "do_normalize", False):
        return scale, None, None
    return (scale, channel_values("The image processor's image_mean", image_processor.image_mean),
            channel_values("The image processor's image_std", image_processor.image_std))


class SmoothedClassifier(nn.Module):
    """The smoothed classifier g of any image classifier `model` at noise level `sigma` (see the module doc).

    Args:
        model: a transformers image classifier (`AutoModelForImageClassification`: ViT, ConvNeXt, ResNet, ..., or a
            DMAE classifier) or any `torch.nn.Module` mapping a (N, 3, H, W) float batch to (N, K) logits (a tensor
            or an output with `.logits`).
        sigma: noise std in [0, 1] pixels. Default: the trained sigma, `model.config.smoothing_sigma` (DMAE
            classifiers), else the denoiser's `noise_sigma`; required otherwise.
        image_processor: the model's processor: `preprocess` runs it, and f applies its rescale factor and mean/std
            to the noisy image (DMAE classifiers normalise themselves). Without one, `preprocess` only converts to
            [0, 1] pixels, and f normalises with `image_mean`/`image_std` when given.
        denoiser: a DMAE pre-training model or checkpoint (path, Hub id, short name).
        override_sigma: certify at a sigma other than the trained one (valid, usually weaker; recorded).
    """

    def __init__(self, model: nn.Module, sigma: float | None = None, image_processor=None, image_mean=None,
                 image_std=None, denoiser=None, override_sigma: bool = False):
        super().__init__()
        if not isinstance(override_sigma, bool):
            raise ValueError(f"override_sigma must be True or False, got {override_sigma!r}.")
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module (an image classifier), got {type(model).__name__}.")
        self.model = model
        config = getattr(model, "config", None)
        self.is_dmae = getattr(config, "model_type", None) == "dmae" and hasattr(model, "base_classifier")
        self.denoiser_name = None if denoiser is None else (  # a path, Hub id or short name, as given
            os.fsdecode(denoiser) if isinstance(denoiser, (str, bytes, os.PathLike)) else None)
        self.denoiser = None if denoiser is None else load_denoiser(denoiser)
        if self.denoiser is not None and self.denoiser_name is None:
            self.denoiser_name = str(getattr(self.denoiser, "name_or_path", "") or type(self.denoiser).__name__)
        denoiser_sigma = None if self.denoiser is None else float(self.denoiser.config.noise_sigma)
        if denoiser_sigma == 0:
            raise ValueError("The denoiser was pre-trained without noise (noise_sigma = 0, an MAE): it does not "
                             "denoise. Pass a DMAE pre-trained at the sigma you certify at.")
        model_sigma = getattr(config, "smoothing_sigma", None)
        self.trained_sigma = float(model_sigma) if model_sigma is not None else denoiser_sigma
        if sigma is None:
            if not self.trained_sigma:  # none, or a DMAE fine-tuned without noise (smoothing_sigma = 0)
                raise ValueError(f"sigma is required: {type(model).__name__} has no trained sigma (no "
                                 "smoothing_sigma in its config, no denoiser), so pass the noise level to certify "
                                 "at, in [0, 1] pixel units, e.g. sigma=0.25 (CLI: --sigma 0.25).")
            sigma = self.trained_sigma
        self.sigma = check_sigma(sigma, self.trained_sigma, override_sigma)
        if denoiser_sigma is not None and model_sigma is not None:  # both trained: the denoiser too
            check_sigma(self.sigma, denoiser_sigma, override_sigma, name="sigma (the denoiser's noise_sigma)")
        self.sigma_override = any(t is not None and abs(self.sigma - t) > 1e-9 for t in (model_sigma, denoiser_sigma))
        self.id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
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
        if image_processor is not None and "pixel_values" not in getattr(image_processor, "model_input_names",
                                                                         ["pixel_values"]):
            raise ValueError(f"image_processor must give pixel_values, and {type(image_processor).__name__} gives "
                             f"{list(image_processor.model_input_names)}: pass the classifier's image processor.")
        scale, mean, std = (1.0, None, None) if self.is_dmae else processor_normalisation(image_processor)
        if image_mean is not None or image_std is not None:
            if image_processor is not None:
                raise ValueError("Pass either image_processor or image_mean/image_std, not both.")
            if image_mean is None or image_std is None:
                raise ValueError("Pass both image_mean and image_std (or neither).")
            scale, mean, std = 1.0, channel_values("image_mean", image_mean), channel_values("image_std", image_std)
        if image_processor is None and (self.is_dmae or self.input_size is not None or mean is not None):
            image_processor = DMAEImageProcessor.for_cifar10()  # [0, 1] pixels, brought to input_size if fixed
        self.image_processor = image_processor
        self.scale = scale
        self.register_buffer("image_mean", None if mean is None else torch.tensor(mean).view(1, -1, 1, 1), False)
        self.register_buffer("image_std", None if std is None else torch.tensor(std).view(1, -1, 1, 1), False)

    @classmethod
    def from_pretrained(cls, name_or_path, sigma: float | None = None, denoiser=None, override_sigma: bool = False,
                        **hub_kwargs) -> SmoothedClassifier:
        """g of a saved classifier (path, Hub id or short name such as "dmae-tiny-cifar10" or
        "vit-tiny-cifar10-clean"): `AutoModelForImageClassification` and its `AutoImageProcessor`, in eval mode,
        with an optional denoiser (a `DMAEForPreTraining`, or its path, Hub id or short name, e.g.
        "dmae-tiny-cifar10-denoiser"). `hub_kwargs` go to the loaders (`token`, `revision`, `dtype`, ...).
        Weights holding NaN or Inf are refused with a one-line `ValueError`."""
        name = os.fsdecode(name_or_path)
        model = AutoModelForImageClassification.from_pretrained(name, **hub_kwargs).eval()
        refuse_non_finite_weights(model, name)
        try:
            processor = AutoImageProcessor.from_pretrained(name, **{k: v for k, v in hub_kwargs.items()
                                                                    if k in PROCESSOR_KWARGS})
        except OSError:
            if getattr(model.config, "model_type", None) != "dmae":
                raise ValueError(f"No image processor found with {name!r}: a classifier needs its own (its resize "
                                 "and normalisation), so save one next to the model.") from None
            processor = None  # a DMAE classifier normalises itself: DMAEImageProcessor.for_cifar10() is used
        denoiser_name = os.fsdecode(denoiser) if isinstance(denoiser, (str, bytes, os.PathLike)) else None
        if denoiser_name is not None:
            denoiser = load_denoiser(denoiser_name, **{k: v for k, v in hub_kwargs.items() if k in PROCESSOR_KWARGS})
        g = cls(model, sigma=sigma, image_processor=processor, denoiser=denoiser, override_sigma=override_sigma)
        g.denoiser_name = denoiser_name or g.denoiser_name
        return g

    # ------------------------------------------------------------------------------------------------------- images
    def preprocess(self, image, max_pixels: int | None = None, resize: bool = True) -> Preprocessed:
        """One image (PIL image, numpy array, tensor or file path) at the model's input: decoded by the one image
        decoder (`decode_image`: any mode, size checked against `max_pixels` from the header), then one call of the
        image processor, which resizes and crops (a DMAE processor also to `input_size`, unless `resize=False`,
        which refuses other sizes instead) and rescales to [0, 1] without normalising. A float (3, H, W) tensor in
        [0, 1] is taken as the model's input itself. Bad mode, shape, size or values give a `ValueError`."""
        if isinstance(image, torch.Tensor) and image.ndim == 3 and image.is_floating_point():
            return self._float_tensor(image)
        image = to_rgb(decode_image(image, max_pixels))
        original_size = (image.height, image.width)
        processor = self.image_processor
        if processor is None:  # a bare module without normalisation: its [0, 1] pixels as they are
            processor = DMAEImageProcessor.for_cifar10()
        if is_dmae_processor(processor):
            size = self.input_size[0] if self.input_size is not None and resize else None
            output = processor(image, size=size, return_tensors="pt")
        else:  # transformers' processors: their resize and crop, rescaled to [0, 1] by them, not normalised
            output = processor(image, do_rescale=True, rescale_factor=1 / 255, do_normalize=False,
                               return_tensors="pt")
        if "pixel_values" not in output:
            raise ValueError(f"The image processor {type(processor).__name__} gave no pixel_values (it gave "
                             f"{sorted(output)}): pass the classifier's image processor.")
        pixel_values = output["pixel_values"][0].float()
        height, width = pixel_values.shape[-2:]
        if self.input_size is not None and (height, width) != self.input_size:
            if is_dmae_processor(processor):  # (resize=False)
                raise ValueError(f"The image is {width}x{height} after processing, not the model's "
                                 f"{self.input_size[1]}x{self.input_size[0]} input, and resize=False: resize it "
                                 "first, or pass resize=True.")
            raise ValueError(f"The image processor gives {(height, width)} pixel values, not the model's "
                             f"{self.input_size} input: configure it to resize and crop to that size.")
        if not torch.isfinite(pixel_values).all():
            raise ValueError("The image processor gave NaN or Inf pixel values.")
        pixel_values = pixel_values.clamp(0.0, 1.0)  # (a bicubic resample may overshoot [0, 1] by rounding)
        shrink = max(1.0, original_size[0] / height, original_size[1] / width)
        return Preprocessed(pixel_values.contiguous(), shrink, original_size)

    def _float_tensor(self, image: torch.Tensor) -> Preprocessed:
        """A float (C, H, W) tensor, certified as given: checked, not resized."""
        if image.numel() == 0:
            raise ValueError(f"Empty image tensor of shape {tuple(image.shape)}: an image needs at least one pixel.")
        pixel_values = image.detach().float().cpu()
        check_pixel_values(pixel_values.unsqueeze(0), num_channels=3, clean=True)
        lo, hi = pixel_values.min().item(), pixel_values.max().item()
        if lo < 0 or hi > 1:
            raise ValueError(f"Float image tensors must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}].")
        if self.input_size is not None and tuple(image.shape[-2:]) != self.input_size:
            raise ValueError(f"A float tensor is certified as given, so it must be the model's input size (3, "
                             f"{self.input_size[0]}, {self.input_size[1]}), got {tuple(image.shape)}: resize it, or "
                             "pass it as a PIL image or uint8 array, which is resized.")
        return Preprocessed(pixel_values, 1.0, tuple(image.shape[-2:]))

    def shrink_note(self, shrink: float) -> str | None:
        """A one-line note when the image was shrunk by more than `defaults.MAX_SHRINK` to reach the model's input,
        else None."""
        if shrink is None or shrink <= MAX_SHRINK:
            return None
        size = "" if self.input_size is None else f"{self.input_size[0]}x{self.input_size[1]} "
        return (f"The image was shrunk {shrink:.1f}x on a side (resized and cropped) to reach the model's {size}"
                "input: the certificate is about that small image, which may have lost what the original shows.")

    # ------------------------------------------------------------------------------------------------------------ f
    def forward(self, noisy_pixel_values: torch.Tensor) -> torch.Tensor:
        """f: (N, K) logits of a batch of noisy [0, 1] images (denoised first when there is a denoiser)."""
        x = noisy_pixel_values
        if self.denoiser is not None:
            x = self.denoiser.denoise(x)
        if self.is_dmae:
            return self.model.base_classifier(x)  # (warns in training mode itself)
        if self.model.training:
            warnings.warn("Certifying a model in training mode (dropout active?); call model.eval().", stacklevel=2)
        if self.scale != 1.0:
            x = x * self.scale
        if self.image_mean is not None:
            x = (x - self.image_mean.to(x.dtype)) / self.image_std.to(x.dtype)
        out = self.model(pixel_values=x) if isinstance(self.model, PreTrainedModel) else self.model(x)
        return out.logits if hasattr(out, "logits") else out

    # --------------------------------------------------------------------------------------------- PREDICT, CERTIFY
    def certify(self, pixel_values: torch.Tensor, n0: int = N0, n: int = N, alpha: float = ALPHA,
                batch_size: int = NOISE_BATCH, seed: int = SEED, method: str = "cohen", progress: bool = False,
                **method_options):
        """Cohen et al.'s CERTIFY of g at `self.sigma` (`dmae_hf.smoothing.certify`): (3, H, W) in [0, 1] at the
        model's input -> one `Certificate`, (B, 3, H, W) -> a list (the same seed gives each image the certificate it
        gets alone). Each records `sigma_override`."""
        results = certify(self, pixel_values, sigma=self.sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                          seed=seed, method=method, progress=progress, **method_options)
        return self._record(results)

    def predict(self, pixel_values: torch.Tensor, n: int = N, alpha: float = ALPHA, batch_size: int = NOISE_BATCH,
                seed: int = SEED, **kwargs):
        """Cohen et al.'s PREDICT of g at `self.sigma` (`dmae_hf.smoothing.predict`); records `sigma_override`."""
        results = predict(self, pixel_values, sigma=self.sigma, n=n, alpha=alpha, batch_size=batch_size, seed=seed,
                          **kwargs)
        return self._record(results)

    def _record(self, results):
        for result in results if isinstance(results, list) else [results]:
            result.sigma_override = self.sigma_override
        return results


__all__ = ["Preprocessed", "SmoothedClassifier", "channel_values", "is_denoiser", "load_denoiser",
           "processor_normalisation"]
