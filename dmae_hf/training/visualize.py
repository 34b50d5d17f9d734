# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Reconstruction images of a pre-training run."""

from __future__ import annotations

import os

import torch


@torch.no_grad()
def save_reconstruction(model, pixel_values: torch.Tensor, path: str, num_images: int = 8, seed: int = 0) -> str:
    """PNG grid of rows (original / noisy input with the masked patches greyed / reconstruction / reconstruction
    with the visible noisy patches pasted back) for a `DMAEForPreTraining` model. The reconstruction is
    un-normalised with the per-patch statistics of the clean target when `norm_pix_loss`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..smoothing import add_gaussian_noise
    from .augment import to_float

    was_training = model.training
    model.eval()
    x = to_float(pixel_values[:num_images])
    gen = torch.Generator(device=x.device).manual_seed(seed)
    noisy = add_gaussian_noise(x, model.config.noise_sigma, generator=gen)
    mask_noise = torch.rand(x.shape[0], model.config.num_patches, generator=gen, device=x.device)
    out = model(x, mask_noise=mask_noise, pixel_noise=noisy - x)
    target = model.preprocess_pixels(x)
    pred = out.logits.float()
    if model.config.norm_pix_loss:
        t = model.patchify(target)
        pred = pred * (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(dim=-1, keepdim=True)
    mean = torch.tensor(model.config.image_mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(model.config.image_std, device=x.device).view(1, -1, 1, 1)
    recon = model.unpatchify(pred) * std + mean
    size = recon.shape[-1]

    def resize(t):
        if t.shape[-1] == size:
            return t
        return torch.nn.functional.interpolate(t, size=(size, size), mode="bicubic", align_corners=False)

    clean, noisy_r = resize(x), resize(noisy)
    p = model.config.patch_size
    mask = out.mask.view(-1, size // p, size // p).repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1)
    masked = noisy_r * (1 - mask) + 0.5 * mask
    pasted = noisy_r * (1 - mask) + recon * mask
    rows = [("original", clean), ("noisy + masked", masked), ("reconstruction", recon), ("recon + visible", pasted)]
    fig, axes = plt.subplots(len(rows), x.shape[0], figsize=(1.6 * x.shape[0], 1.7 * len(rows)), squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(x.shape[0]):
            ax = axes[r][c]
            ax.imshow(images[c].clamp(0, 1).permute(1, 2, 0).cpu().numpy())
            ax.axis("off")
            if c == 0:
                ax.set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    model.train(was_training)
    return path
