# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Batched data augmentation on the training device (kornia), applied to the `uint8` batches of
`dmae_hf.training.streams`.

Order, as in DMAE's training code: crop / flip / RandAugment on the clean image, then (fine-tuning) mixup/cutmix
on the batch with soft labels, then the model adds the Gaussian noise itself. Outputs are float32 in [0, 1]
(RandAugment and erasing can leave values at the range ends; nothing is normalised here).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class DeviceAugment(torch.nn.Module):
    """RandomResizedCrop(`size`, `scale`, bicubic) -> horizontal flip -> RandAugment(n, m) -> random erasing.

    Paper settings: pre-training `scale=(0.2, 1)` + flip; ImageNet fine-tuning `scale=(0.08, 1)` + flip +
    RandAugment m9 (n=2); CIFAR-10 (pre-training and fine-tuning): flip only, at 32x32 (`scale=None` disables
    the crop; the batch is then resized only if `size` is set and differs).
    """

    def __init__(self, size: int | None, scale: tuple[float, float] | None = (0.2, 1.0), hflip: bool = True,
                 randaug_n: int = 0, randaug_m: int = 9, erase_prob: float = 0.0):
        super().__init__()
        import kornia.augmentation as K

        self.size = size
        ops = []
        if scale is not None:
            if size is None:
                raise ValueError("RandomResizedCrop needs an output size.")
            ops.append(K.RandomResizedCrop((size, size), scale=tuple(scale), resample="BICUBIC", align_corners=False))
        if hflip:
            ops.append(K.RandomHorizontalFlip(p=0.5))
        if randaug_n > 0:
            from kornia.augmentation.auto import RandAugment

            ops.append(RandAugment(n=randaug_n, m=randaug_m))
        if erase_prob > 0:
            ops.append(K.RandomErasing(p=erase_prob, value=0.0))
        self.ops = torch.nn.Sequential(*ops)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float(images)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            if not any(type(op).__name__ == "RandomResizedCrop" for op in self.ops):
                x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)
        for op in self.ops:
            x = op(x)
        return x.clamp_(0.0, 1.0)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [0, 1]; float input is returned as float32."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


class MixupCutmix:
    """timm-style batch mixup / cutmix with soft labels (mode "batch": image i is mixed with image B-1-i).

    With probability `prob` a batch is mixed; then cutmix is chosen with probability `switch_prob` when both are
    enabled. `lam ~ Beta(alpha, alpha)`; for cutmix a box of area `1 - lam` is pasted and `lam` corrected to the
    exact pasted area. Targets: `lam * onehot(y) + (1 - lam) * onehot(y.flip(0))` (label smoothing is applied by
    the model's loss). Call on clean images, before the model adds noise. Randomness comes from torch's global
    RNG, which Accelerate checkpoints.

    Kept instead of kornia's `RandomMixUpV2` / `RandomCutMixV2` (kornia 0.9), which cannot give the timm/DeiT recipe
    of the paper's fine-tuning (tests/test_kept_libraries.py): `RandomMixUpV2` draws lambda from a uniform range,
    not Beta(0.8, 0.8); both pair images by a random permutation (an image may be paired with itself), not the
    flipped batch; lambda is drawn per image unless `same_on_batch`; `RandomCutMixV2` keeps its box inside the image
    instead of clipping a box centred anywhere, so the area correction differs; neither switches between mixup and
    cutmix with `switch_prob`; and both return `(label, paired label, lambda)` rows, not soft targets.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5):
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("mixup_alpha and cutmix_alpha must be >= 0.")
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def _rand(self) -> float:
        return torch.rand(()).item()

    def _beta(self, alpha: float) -> float:
        g = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
        return float(g.sample())

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        onehot = F.one_hot(labels, self.num_classes).float()
        if not self.active or self._rand() >= self.prob:
            return images, onehot
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or self._rand() < self.switch_prob)
        flipped = images.flip(0)
        if use_cutmix:
            lam = self._beta(self.cutmix_alpha)
            h, w = images.shape[-2:]
            cut_h, cut_w = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
            cy, cx = int(self._rand() * h), int(self._rand() * w)
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            images = images.clone()
            images[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        else:
            lam = self._beta(self.mixup_alpha)
            images = images * lam + flipped * (1.0 - lam)
        return images, onehot * lam + onehot.flip(0) * (1.0 - lam)


__all__ = ["DeviceAugment", "MixupCutmix", "to_float"]
