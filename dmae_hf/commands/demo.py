"""`dmae demo`: certify the bundled CIFAR-10 test images with the embedded model, offline, in about a minute."""

import json
import time
from pathlib import Path

from . import add_sampling_arguments

PACKAGE_DIR = Path(__file__).resolve().parents[1]
ASSETS = PACKAGE_DIR / "assets" / "cifar10"


def register(subparsers):
    parser = subparsers.add_parser("demo", help="certify bundled CIFAR-10 images with the embedded DMAE model")
    add_sampling_arguments(parser)
    parser.add_argument("--out", default="dmae-demo.png", help="where to write the picture")
    parser.set_defaults(func=run)


def load_bundled_images():
    """The CIFAR-10 test images shipped with the package, with their labels."""
    from PIL import Image

    index = json.loads((ASSETS / "index.json").read_text())
    images = [Image.open(ASSETS / item["file"]).convert("RGB") for item in index["images"]]
    return images, [item["label"] for item in index["images"]], index["label_names"]


def run(args) -> int:
    import torch

    from ..image_processing_dmae import DMAEImageProcessor
    from ..modeling_dmae import DMAEForSmoothedClassification

    start = time.perf_counter()
    model = DMAEForSmoothedClassification.from_pretrained(args.model, dtype=torch.float32).eval()
    images, labels, names = load_bundled_images()
    pixel_values = DMAEImageProcessor.for_cifar10()(images).pixel_values
    sigma = model.config.smoothing_sigma
    print(f"Certifying {len(images)} CIFAR-10 test images with {args.model} (sigma={sigma}, n0={args.n0}, "
          f"n={args.n}, alpha={args.alpha}) ...")
    certificates = model.certify(pixel_values, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch,
                                 seed=args.seed, progress=True)

    print(f"\n{'image':>5}  {'true label':<11} {'prediction':<11} {'radius':>7}  {'pA_lower':>8}")
    for i, (cert, label) in enumerate(zip(certificates, labels)):
        predicted = "abstain" if cert.abstained else names[cert.prediction]
        print(f"{i:>5}  {names[label]:<11} {predicted:<11} {cert.radius:>7.3f}  {cert.pA_lower:>8.4f}")
    correct = [not c.abstained and c.prediction == y for c, y in zip(certificates, labels)]
    radii = [c.radius if ok else -1.0 for c, ok in zip(certificates, correct)]
    print(f"\ncertified accuracy: r=0: {sum(r >= 0 for r in radii) / len(radii):.0%}, "
          f"r=0.25: {sum(r >= 0.25 for r in radii) / len(radii):.0%} "
          f"({time.perf_counter() - start:.1f} s)")
    write_picture(args.out, pixel_values, labels, certificates, names, sigma, radii, args.seed)
    print(f"picture: {args.out}")
    return 0


def write_picture(path, pixel_values, labels, certificates, names, sigma, radii, seed, num_shown=8):
    """Clean images, two noisy samples of each at `sigma`, and the certified-accuracy curve of all images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    from ..modeling_dmae import add_gaussian_noise

    generator = torch.Generator().manual_seed(seed)
    shown = pixel_values[:num_shown]
    rows = [shown] + [add_gaussian_noise(shown, sigma, generator).clamp(0, 1) for _ in range(2)]
    fig = plt.figure(figsize=(2 * num_shown / 1.5, 7.5))
    grid = fig.add_gridspec(4, num_shown, height_ratios=[1, 1, 1, 2.2])
    for r, batch in enumerate(rows):
        for c in range(num_shown):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(batch[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                cert = certificates[c]
                guess = "abstain" if cert.abstained else names[cert.prediction]
                ax.set_title(f"{names[labels[c]]}\n-> {guess}, R={cert.radius:.2f}", fontsize=7)
            if c == 0:
                ax.set_ylabel("clean" if r == 0 else f"+N(0,{sigma}²)", fontsize=8)
    ax = fig.add_subplot(grid[3, :])
    grid_r = np.linspace(0, max(0.1, max(radii) * 1.1), 200)
    ax.plot(grid_r, [np.mean([r >= t for r in radii]) for t in grid_r], lw=2)
    ax.set_xlabel("L2 radius (in [0,1] pixel units)"), ax.set_ylabel("certified accuracy")
    ax.set_ylim(0, 1), ax.grid(alpha=0.3)
    ax.set_title(f"{len(radii)} bundled CIFAR-10 test images, sigma={sigma}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
