# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The checks of what enters a DMAE model's forward: pixels, the pre-training perturbation and the labels. Each
raises a `ValueError` that names the argument and the problem, where the value enters, so that nothing nonsensical
turns into a NaN or negative loss further down."""

import torch

# Clean images must look like [0, 1] pixels; anything beyond this margin is almost surely 0-255 or pre-normalised.
PIXEL_RANGE_MARGIN = 0.5


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int, clean: bool) -> None:
    """Raise a `ValueError` for inputs no DMAE model accepts.

    Always: not a floating (batch, channels, height, width) tensor with `num_channels` channels, or an empty batch.
    For clean images (`clean=True`, the input of pre-training, training and certification, but not the noisy
    batches the base classifier sees when it is smoothed): NaN/Inf pixels and values outside [-0.5, 1.5], which
    betray 0-255 or already-normalised inputs.
    """
    if not isinstance(pixel_values, torch.Tensor):
        raise ValueError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}.")
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must have shape (batch, channels, height, width); got rank "
                         f"{pixel_values.ndim} with shape {tuple(pixel_values.shape)}.")
    if pixel_values.shape[0] == 0:
        raise ValueError(f"pixel_values is an empty batch (shape {tuple(pixel_values.shape)}): pass at least one "
                         "image.")
    if pixel_values.shape[1] != num_channels:
        raise ValueError(f"pixel_values has {pixel_values.shape[1]} channels but the model expects {num_channels} "
                         "(convert grayscale or RGBA images to RGB with DMAEImageProcessor).")
    if 0 in pixel_values.shape[2:]:
        raise ValueError(f"pixel_values has no pixels (shape {tuple(pixel_values.shape)}).")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be a floating-point tensor in [0, 1], got dtype {pixel_values.dtype}.")
    if clean:
        if not torch.isfinite(pixel_values).all():
            raise ValueError("pixel_values contains NaN or Inf values.")
        lo, hi = pixel_values.min().item(), pixel_values.max().item()
        if lo < -PIXEL_RANGE_MARGIN or hi > 1 + PIXEL_RANGE_MARGIN:
            raise ValueError(f"pixel_values must be in [0, 1] pixel space (got values in [{lo:.3g}, {hi:.3g}]). DMAE "
                             "models normalise inside the model: pass images rescaled by 1/255 and not normalised.")


def check_pixel_noise(pixel_noise: torch.Tensor, shape: tuple, copies: str) -> None:
    """The given pre-training / fine-tuning perturbation: a finite float tensor of `shape` (`copies` says what it
    covers, for the message)."""
    if not isinstance(pixel_noise, torch.Tensor):
        raise ValueError(f"pixel_noise must be a torch.Tensor, got {type(pixel_noise).__name__}.")
    if tuple(pixel_noise.shape) != tuple(shape):
        raise ValueError(f"pixel_noise must have shape {tuple(shape)} ({copies}), got {tuple(pixel_noise.shape)}.")
    if not pixel_noise.is_floating_point():
        raise ValueError(f"pixel_noise must be a floating-point tensor, got dtype {pixel_noise.dtype}.")
    if not torch.isfinite(pixel_noise).all():
        raise ValueError("pixel_noise contains NaN or Inf values: the noisy image, and so the loss, would be NaN.")


def check_labels(labels: torch.Tensor, batch_size: int, num_labels: int) -> None:
    """Hard labels: integer class indices in [0, num_labels). Soft labels (mixup/cutmix): a float (batch, num_labels)
    tensor of finite, non-negative weights (a negative or NaN weight gives a negative or NaN cross-entropy)."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}.")
    if labels.ndim == 0 or labels.shape[0] != batch_size:
        raise ValueError(f"Got {labels.shape[0] if labels.ndim else 'a scalar of'} labels for {batch_size} images.")
    if labels.ndim == 1:
        if labels.is_floating_point():
            raise ValueError("Hard labels must be integer class indices.")
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_labels):
            raise ValueError(f"Labels must be in [0, {num_labels}), got values in "
                             f"[{labels.min().item()}, {labels.max().item()}].")
        return
    if labels.ndim != 2 or labels.shape[1] != num_labels:
        raise ValueError(f"Soft labels must have shape (batch, {num_labels}), got {tuple(labels.shape)}.")
    if not labels.is_floating_point():
        raise ValueError(f"Soft labels must be a floating-point tensor of class weights, got dtype {labels.dtype}.")
    if not torch.isfinite(labels).all():
        raise ValueError("Soft labels contain NaN or Inf values: they must be finite class weights >= 0.")
    if labels.numel() and labels.min() < 0:
        raise ValueError(f"Soft labels must be class weights >= 0 (probabilities), got a minimum of "
                         f"{labels.min().item():.3g}: a negative weight gives a negative loss.")


def refuse_renamed_arguments(kwargs: dict) -> None:
    """`noise=` (the masking noise) is now `mask_noise=`, beside `pixel_noise=`: the forwards take `**kwargs` (for
    `Trainer`), which would silently drop it and draw a random mask, so it is refused by name instead."""
    if "noise" in kwargs:
        raise TypeError("forward() got an unexpected keyword argument 'noise': the masking noise is now "
                        "`mask_noise=` (the Gaussian perturbation is `pixel_noise=`).")


__all__ = ["PIXEL_RANGE_MARGIN", "check_labels", "check_pixel_noise", "check_pixel_values",
           "refuse_renamed_arguments"]
