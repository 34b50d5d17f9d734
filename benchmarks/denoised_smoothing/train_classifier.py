# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Train an off-the-shelf transformers ViT on *clean* CIFAR-10: the classifier that denoised smoothing certifies.

The model is `ViTForImageClassification` with the tiny DMAE's shape (width 96, 4 blocks, 3 heads, patch 4, 32 px)
and its own `ViTImageProcessor` (resize to 32x32, CIFAR-10 mean/std), so the only difference from the shipped
`dmae-tiny-cifar10` is how it was trained: no noise, no DMAE pre-training. It is a plain supervised recipe (AdamW,
warmup + cosine, random crop with 4 px padding, horizontal flip, label smoothing 0.1), written out here rather than
through `dmae_hf.training`, whose loop trains DMAE models.

    python benchmarks/denoised_smoothing/train_classifier.py --out runs/denoised/vit-clean --steps 3000
"""

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from datasets import load_dataset
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

CIFAR10_MEAN, CIFAR10_STD = [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616]


def load_split(root: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A CIFAR-10 split in Hub layout -> (uint8 (N, 3, 32, 32) images, int64 labels)."""
    ds = load_dataset(root, split=split)
    images = np.stack([np.asarray(image.convert("RGB")) for image in ds["img"]])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds["label"])


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of the 4 px zero-padded image and a horizontal flip, per image."""
    n = images.shape[0]
    padded = F.pad(images, (4, 4, 4, 4))
    dx, dy = torch.randint(0, 9, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(32))[:, :, None].expand(n, 32, 32)
    cols = (dx[:, None] + torch.arange(32))[:, None, :].expand(n, 32, 32)
    index = torch.arange(n)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[index, rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default="uoft-cs/cifar10",
                        help="CIFAR-10: a Hub id or the path of a local copy in the Hub layout")
    parser.add_argument("--out", required=True, help="output folder (save_pretrained)")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    images, labels = load_split(args.dataset, "train")
    test_images, test_labels = load_split(args.dataset, "test")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    config = ViTConfig(image_size=32, patch_size=4, hidden_size=96, num_hidden_layers=4, num_attention_heads=3,
                       intermediate_size=384, num_labels=10, id2label=dict(enumerate(names)),
                       label2id={name: i for i, name in enumerate(names)})
    model = ViTForImageClassification(config)
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=CIFAR10_MEAN, image_std=CIFAR10_STD)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    warmup = max(1, args.steps // 20)

    def lr_at(step):
        if step < warmup:
            return args.lr * (step + 1) / warmup
        return args.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    start, order, cursor = time.time(), torch.randperm(len(labels), generator=generator), 0
    model.train()
    for step in range(args.steps):
        if cursor + args.batch_size > len(order):
            order, cursor = torch.randperm(len(labels), generator=generator), 0
        index = order[cursor:cursor + args.batch_size]
        cursor += args.batch_size
        x = (augment(images[index], generator).float() / 255 - mean) / std
        loss = F.cross_entropy(model(pixel_values=x).logits, labels[index], label_smoothing=0.1)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}/{args.steps} loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)

    model.eval()
    with torch.no_grad():
        correct = sum((model(pixel_values=(test_images[i:i + 500].float() / 255 - mean) / std).logits.argmax(-1)
                       == test_labels[i:i + 500]).sum().item() for i in range(0, len(test_labels), 500))
    accuracy = correct / len(test_labels)
    print(f"clean test accuracy {accuracy:.4f} after {args.steps} steps ({time.time() - start:.0f} s)")
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    with open(os.path.join(args.out, "training.txt"), "w") as f:
        f.write(f"command: python {' '.join(sys.argv)}\nclean test accuracy (10,000 images): {accuracy:.4f}\n"
                f"time: {time.time() - start:.0f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
