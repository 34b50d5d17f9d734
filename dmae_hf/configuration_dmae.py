# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""DMAE model configuration."""

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

# Architectures of `models_dmae.py` (dmae_vit_{base,large}_patch16, dmae_vit_huge_patch14) and a tiny one for tests.
PRESETS = {
    "vit-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=16, image_size=224),
    "vit-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=16, image_size=224),
    "vit-huge": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, patch_size=14, image_size=224),
    "tiny": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=8,
        image_size=32,
        decoder_hidden_size=32,
        decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2,
        image_mean=CIFAR10_MEAN,
        image_std=CIFAR10_STD,
    ),
}


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
    layer_norm_eps: float = 1e-6
    drop_path_rate: float | int = 0.0
    initializer_range: float = 0.02
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
    image_mean: list[float] | tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    image_std: list[float] | tuple[float, ...] = IMAGENET_DEFAULT_STD
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
        """Build the config of a named architecture: `"vit-base"`, `"vit-large"`, `"vit-huge"` or `"tiny"`.

        Keyword arguments override the preset (e.g. `num_labels=10, image_mean=CIFAR10_MEAN`).
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown DMAE preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **kwargs})

    def __post_init__(self, **kwargs):
        self.image_mean, self.image_std = list(self.image_mean), list(self.image_std)
        self.check_values()
        super().__post_init__(**kwargs)

    def check_values(self):
        """Raise a `ValueError` naming the first field whose value no DMAE model can use."""
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) is not a multiple of num_attention_heads "
                             f"({self.num_attention_heads}).")
        if self.decoder_hidden_size % self.decoder_num_attention_heads:
            raise ValueError(f"decoder_hidden_size ({self.decoder_hidden_size}) is not a multiple of "
                             f"decoder_num_attention_heads ({self.decoder_num_attention_heads}).")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) is not a multiple of patch_size ({self.patch_size}).")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}.")
        for name in ("noise_sigma", "smoothing_sigma", "consistency_lambda", "consistency_eta", "drop_path_rate"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")
        if self.num_noise_samples < 1:
            raise ValueError(f"num_noise_samples must be >= 1, got {self.num_noise_samples}.")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}.")
        if len(self.image_mean) != self.num_channels or len(self.image_std) != self.num_channels:
            raise ValueError(f"image_mean and image_std need {self.num_channels} values (one per channel).")
        if min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {self.image_std}.")


__all__ = ["DMAEConfig", "PRESETS", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "CIFAR10_MEAN", "CIFAR10_STD"]
