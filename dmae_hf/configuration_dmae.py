# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""DMAE model configuration."""

import math
import numbers
from typing import NamedTuple

from huggingface_hub.dataclasses import strict
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers.activations import ACT2FN
from transformers.configuration_utils import PreTrainedConfig

from .defaults import check_sigma

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class Architecture(NamedTuple):
    """One backbone size, the single source of what the package knows about it.

    config: the `DMAEConfig` fields of the preset (the others keep their defaults). title: its name for people
    (model cards). stem: `"base"` for the released checkpoints `dmae-vit-base*`, None when none is released.
    official: an architecture of the official code (`models_dmae.py`), whose heads-by-width (encoder and decoder)
    are the convention the converter falls back on when a checkpoint does not say.
    """

    config: dict
    title: str
    stem: str | None = None
    official: bool = False


# `dmae_vit_{base,large}_patch16`, `dmae_vit_huge_patch14` of `models_dmae.py`, a tiny ViT for tests and the
# architecture of the embedded model `dmae-tiny-cifar10` (a ViT for CPUs, native 32x32 input, patch 4).
ARCHITECTURES = {
    "vit-base": Architecture(
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=16, image_size=224),
        "ViT-B/16", stem="base", official=True),
    "vit-large": Architecture(
        dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=16, image_size=224),
        "ViT-L/16", stem="large", official=True),
    "vit-huge": Architecture(
        dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, patch_size=14, image_size=224),
        "ViT-H/14", official=True),
    "tiny": Architecture(
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32,
             decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
             image_mean=CIFAR10_MEAN, image_std=CIFAR10_STD),
        "tiny ViT"),
    "tiny-cifar10": Architecture(
        dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=3, patch_size=4, image_size=32,
             decoder_hidden_size=64, decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
             image_mean=CIFAR10_MEAN, image_std=CIFAR10_STD),
        "tiny ViT/4"),
}
PRESETS = {name: architecture.config for name, architecture in ARCHITECTURES.items()}

# Allowed values of the numeric fields: integers >= 1, and intervals of finite reals.
POSITIVE_INTS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size",
                 "num_channels", "decoder_hidden_size", "decoder_num_hidden_layers", "decoder_num_attention_heads",
                 "num_noise_samples")
INTERVALS = {
    "mlp_ratio": "(0, inf)", "layer_norm_eps": "(0, inf)", "initializer_range": "[0, inf)",
    "hidden_dropout_prob": "[0, 1)", "attention_probs_dropout_prob": "[0, 1)", "drop_path_rate": "[0, 1)",
    "mask_ratio": "[0, 1)", "label_smoothing": "[0, 1)", "consistency_lambda": "[0, inf)",
    "consistency_eta": "[0, inf)",
}
SIGMAS = ("noise_sigma", "smoothing_sigma")  # checked by the one sigma rule, `defaults.check_sigma` (0 = no noise)


def _check_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def _check_interval(name, value, interval):
    """Raise unless `value` is a finite real in `interval`, written "[a, b)", "(a, inf)", ..."""
    low, high = (float(v) for v in interval[1:-1].split(","))
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
          and (low <= value if interval[0] == "[" else low < value)
          and (value <= high if interval[-1] == "]" else value < high))
    if not ok:
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}.")


@strict
class DMAEConfig(PreTrainedConfig):
    r"""
    Configuration of a Denoising Masked Autoencoder (Wu et al., ICLR 2023) and of the classifiers fine-tuned from it.

    All images enter the models in **[0, 1] pixel space**. Gaussian noise is added in that space, the result is
    resized to `image_size` (bicubic) when needed and only then normalised with `image_mean` / `image_std`, inside
    the model. A certified L2 radius is therefore measured in the input's own [0, 1] pixel space.

    Args:
        hidden_size, num_hidden_layers, num_attention_heads (`int`): encoder width, depth and heads.
        mlp_ratio (`float`, defaults to 4.0): MLP hidden size as a multiple of the width (encoder and decoder).
        hidden_act (`str`, defaults to `"gelu"`): exact (erf) GELU, as timm's `nn.GELU`.
        qkv_bias (`bool`, defaults to `True`): bias of the fused query/key/value projection.
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of every LayerNorm (MAE uses 1e-6, not HF's 1e-12).
        drop_path_rate (`float`, defaults to 0.0): stochastic depth, linearly spaced over the encoder blocks.
        image_size, patch_size, num_channels (`int`): the encoder's native input geometry.
        decoder_hidden_size, decoder_num_hidden_layers, decoder_num_attention_heads (`int`): the pre-training decoder.
        mask_ratio (`float`, defaults to 0.75): fraction of patches removed before the encoder in pre-training.
        noise_sigma (`float`, defaults to 0.25): std of the Gaussian pixel noise in pre-training ([0,1] units).
        norm_pix_loss (`bool`, defaults to `True`): regress per-patch normalised pixels (unbiased var, eps 1e-6).
        loss_on_all_patches (`bool`, defaults to `True`): DMAE's loss averages over all patches; `False` gives
            MAE's masked-patches-only loss.
        image_mean, image_std (`tuple[float]`): normalisation applied inside the model (ImageNet by default).
        smoothing_sigma (`float`, defaults to 0.25): noise level of the smoothed classifier built on this model.
        consistency_lambda, consistency_eta (`float`): weights of the KL and entropy consistency terms.
        num_noise_samples (`int`, defaults to 2): noisy copies per image in the fine-tuning loss (m).
        label_smoothing (`float`, defaults to 0.0): label smoothing of the fine-tuning cross-entropy.
        pooling (`str`, defaults to `"mean"`): `"mean"` (mean of patch tokens + `fc_norm`, the paper's default) or
            `"cls"` (final norm, CLS token).
        initializer_range (`float`, defaults to 0.02): std of the normal init of the CLS and mask tokens.

    Values are checked when the config is built or loaded (`validate_values`: sizes are integers >= 1, the
    `INTERVALS` of the real fields, divisibility, one finite mean and positive std per channel): nonsense raises a
    `ValueError` that names the field, its value and the allowed range.

    Example:

    ```python
    >>> from dmae_hf import DMAEConfig, DMAEForPreTraining
    >>> config = DMAEConfig.from_preset("vit-base")
    >>> model = DMAEForPreTraining(config)
    ```
    """

    model_type = "dmae"

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float | int = 4.0
    hidden_act: str = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    qkv_bias: bool = True
    layer_norm_eps: float | int = 1e-6
    drop_path_rate: float | int = 0.0
    initializer_range: float | int = 0.02
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    decoder_hidden_size: int = 512
    decoder_num_hidden_layers: int = 8
    decoder_num_attention_heads: int = 16
    mask_ratio: float | int = 0.75
    noise_sigma: float | int = 0.25
    norm_pix_loss: bool = True
    loss_on_all_patches: bool = True
    image_mean: list[float | int] | tuple[float | int, ...] = IMAGENET_DEFAULT_MEAN
    image_std: list[float | int] | tuple[float | int, ...] = IMAGENET_DEFAULT_STD
    smoothing_sigma: float | int = 0.25
    consistency_lambda: float | int = 2.0
    consistency_eta: float | int = 0.5
    num_noise_samples: int = 2
    label_smoothing: float | int = 0.0
    pooling: str = "mean"

    @property
    def intermediate_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def decoder_intermediate_size(self) -> int:
        return int(self.decoder_hidden_size * self.mlp_ratio)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "DMAEConfig":
        """Build the config of a named architecture, a key of `ARCHITECTURES` (`"vit-base"`, `"tiny"`, ...).

        Keyword arguments override the preset (e.g. `num_labels=10, image_mean=CIFAR10_MEAN`).
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown DMAE preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **kwargs})

    def __post_init__(self, **kwargs):
        if not __name__.startswith("transformers_modules."):
            # Saved classifiers carry `custom_pipelines` for `pipeline(..., trust_remote_code=True)` where dmae-hf is
            # not installed (this file then runs as remote code). Installed, dmae-hf serves its own registered
            # pipeline, and transformers would otherwise ask for trust_remote_code: the entry is dropped here.
            kwargs.pop("custom_pipelines", None)
        self.image_mean, self.image_std = self._channel_values("image_mean"), self._channel_values("image_std")
        if kwargs.get("num_labels") is not None:
            _check_int("num_labels", kwargs["num_labels"])
        super().__post_init__(**kwargs)
        self.validate_values()

    def _channel_values(self, name) -> list[float]:
        values = getattr(self, name)
        if any(isinstance(v, bool) for v in values):
            raise ValueError(f"{name} must hold numbers, got {values!r}.")
        return [float(v) for v in values]

    def validate_values(self):
        """Raise a `ValueError` naming the first field whose value no DMAE model can use, with the allowed range.

        Runs when the config is built or loaded (`__post_init__`, also under `from_pretrained`/`from_dict`) and,
        as a `@strict` class validator, in `validate()`, which `save_pretrained` calls: a field set to nonsense after
        construction cannot be saved.
        """
        for name in POSITIVE_INTS:
            _check_int(name, getattr(self, name))
        for name, interval in INTERVALS.items():
            _check_interval(name, getattr(self, name), interval)
        for name in SIGMAS:
            check_sigma(getattr(self, name), name=name, allow_zero=True)
        _check_int("num_labels (the size of id2label)", self.num_labels)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                             f"({self.num_attention_heads}).")
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(f"decoder_hidden_size ({self.decoder_hidden_size}) is not a multiple of "
                             f"decoder_num_attention_heads ({self.decoder_num_attention_heads}).")
        if self.patch_size > self.image_size:
            raise ValueError(f"patch_size ({self.patch_size}) is larger than image_size ({self.image_size}).")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) is not a multiple of patch_size ({self.patch_size}); "
                             "choose a patch_size that divides it.")
        if min(self.intermediate_size, self.decoder_intermediate_size) < 1:
            raise ValueError(f"mlp_ratio ({self.mlp_ratio}) gives an MLP of {self.intermediate_size} units for "
                             f"hidden_size {self.hidden_size}: it must give at least 1.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"hidden_act must be one of transformers' ACT2FN names (e.g. 'gelu'), got "
                             f"{self.hidden_act!r}.")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}.")
        for name, positive in (("image_mean", False), ("image_std", True)):
            values = getattr(self, name)
            if len(values) != self.num_channels:
                raise ValueError(f"{name} needs {self.num_channels} values (one per channel, num_channels), got "
                                 f"{len(values)}: {values}.")
            if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
                raise ValueError(f"{name} must hold finite numbers{' > 0' if positive else ''}, got {values}.")


_strict_setattr = DMAEConfig.__setattr__


def _setattr(self, name, value):
    """@strict's type check of a field (on construction, loading and assignment), raised as a one-line `ValueError`
    like every other config error, e.g. `DMAEConfig.from_preset("tiny", hidden_size="32")`."""
    try:
        _strict_setattr(self, name, value)
    except StrictDataclassFieldValidationError as error:
        cause = error.__cause__
        raise ValueError(f"DMAEConfig: {cause if cause is not None else error}".replace("\n", " ")) from None


DMAEConfig.__setattr__ = _setattr

__all__ = ["DMAEConfig", "ARCHITECTURES", "Architecture", "PRESETS", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD",
           "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10_LABELS"]
