"""`dmae demo`: certify the bundled CIFAR-10 test images with the embedded model, offline, in under a minute."""

import json
import os
import tempfile
import time
from pathlib import Path

from .. import defaults
from . import add_sampling_arguments

PACKAGE_DIR = Path(__file__).resolve().parents[1]
ASSETS = PACKAGE_DIR / "assets" / "cifar10"
DEMO_TARGETS = (0.0, 0.25, 0.5)  # the sequential method's targets: n = DEMO_N caps the radius at about 0.6


def register(subparsers):
    parser = subparsers.add_parser(
        "demo", help="certify bundled CIFAR-10 images with the embedded DMAE model",
        description="Certify the 20 CIFAR-10 test images shipped with the package, offline, in under a minute on a "
                    f"CPU. n defaults to {defaults.DEMO_N} here (not {defaults.N}, the default of the other commands) "
                    "to keep it that short; that caps the radius at about 2.2 sigma.")
    add_sampling_arguments(parser, n=defaults.DEMO_N)
    parser.add_argument("--method", choices=list(defaults.METHODS), default="sequential",
                        help="sequential: stop once the largest target radius is certified or the next is out of "
                             "reach (valid whenever it stops); cohen: all n0 + n samples")
    parser.add_argument("--target-radius", type=float, nargs="+", default=list(DEMO_TARGETS),
                        help="sequential/adaptive: the radii that matter")
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "dmae-demo.png"),
                        help="where to write the picture (images, noisy samples, certified-accuracy curve)")
    parser.set_defaults(func=run)


def largest_bound(method: str, n: int, alpha: float) -> float:
    """The largest pA_lower `method` can give with n samples (all votes for the class)."""
    from .. import sequential, smoothing

    if method == "sequential":
        return sequential.lower_bound(n, n, alpha)
    looks = len(smoothing.look_schedule(n)) if method == "adaptive" else 1
    return smoothing.clopper_pearson_lower(n, n, alpha / looks)


def load_bundled_images():
    """The CIFAR-10 test images shipped with the package, with their labels."""
    from PIL import Image

    index = json.loads((ASSETS / "index.json").read_text())
    images = [Image.open(ASSETS / item["file"]).convert("RGB") for item in index["images"]]
    return images, [item["label"] for item in index["images"]], index["label_names"]


def run(args) -> int:
    import torch

    from ..certification.analysis import certificate_arrays, certified_accuracy
    from ..image_processing_dmae import DMAEImageProcessor
    from ..modeling_dmae import DMAEForSmoothedClassification

    start = time.perf_counter()
    model = DMAEForSmoothedClassification.from_pretrained(args.model, dtype=torch.float32).eval()
    images, labels, names = load_bundled_images()
    pixel_values = DMAEImageProcessor.for_cifar10()(images).pixel_values
    sigma = model.config.smoothing_sigma
    targets = {} if args.method == "cohen" else {"target_radius": args.target_radius}
    print(f"Certifying {len(images)} CIFAR-10 test images with {args.model} (sigma={sigma}, n0={args.n0}, "
          f"n={args.n}, alpha={args.alpha}, method={args.method}"
          + (f", target radii {' '.join(f'{r:g}' for r in args.target_radius)}" if targets else "") + ") ...")
    certificates = model.certify(pixel_values, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch,
                                 seed=args.seed, progress=True, method=args.method, **targets)
    correct, radius = certificate_arrays(certificates, labels)
    print(f"\n{'image':>5}  {'true label':<11} {'prediction':<11} {'radius':>7}  {'pA_lower':>8}  {'samples':>7}")
    for i, (cert, label, ok) in enumerate(zip(certificates, labels, correct, strict=True)):
        predicted = "abstain" if cert.abstained else names[cert.prediction]
        mark = "" if ok or cert.abstained else "  WRONG: certified, but not the true label"
        print(f"{i:>5}  {names[label]:<11} {predicted:<11} {cert.radius:>7.3f}  {cert.pA_lower:>8.4f}  "
              f"{cert.num_samples:>7,}{mark}")
    print(EXPLANATION.format(sigma=sigma, confidence=1 - args.alpha, n=args.n, n0=args.n0,
                             top=largest_bound(args.method, args.n, args.alpha)))
    print(f"\n{defaults.CERTIFICATE_CAVEAT}")
    at_0, at_025 = certified_accuracy(correct, radius, radii=(0.0, 0.25))["certified_accuracy"]
    drawn = sum(c.num_samples for c in certificates)
    print(f"\ncertified accuracy: r=0: {at_0:.0%}, r=0.25: {at_025:.0%}; {drawn / len(certificates):,.0f} noisy "
          f"samples per image of at most {args.n0 + args.n:,} ({time.perf_counter() - start:.1f} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_picture(args.out, pixel_values, labels, certificates, names, sigma, correct, radius, args.seed)
    print(f"picture: {args.out}")
    return 0


EXPLANATION = """
What the columns mean:
- sigma = {sigma}: the smoothed classifier votes over copies of the image with Gaussian noise of this standard
  deviation added to every pixel (pixels in [0, 1]); the model was fine-tuned at this noise level.
- radius: no change of the image with L2 norm below the radius (in [0, 1] pixel units, over all 32x32x3 values) can
  change the smoothed classifier's prediction. It holds with probability >= 1 - alpha = {confidence:g} over the
  sampling.
- pA_lower: a lower bound (confidence 1 - alpha) on the probability that the model gives the predicted class
  under noise; radius = sigma * PhiInv(pA_lower). With n = {n} samples it is at most {top:.4f}.
- samples: the noisy samples drawn, n0 = {n0} to guess the class and then at most n to bound its probability; the
  sequential method stops once the largest target radius is certified or the next one is out of reach.
- abstain: the vote was not clear enough (pA_lower < 1/2), so no class and no radius are certified.
- WRONG: the certified class is not the true label; counted as not certified below."""


def panel_title(certificate, label: int, names) -> tuple[str, str]:
    """(two-line title, colour) of one image: the prediction (and the true label when it differs), then the radius."""
    if certificate.abstained:
        return f"abstain (true: {names[label]})\nno radius", "0.45"
    if certificate.prediction != label:
        return f"{names[certificate.prediction]} (true: {names[label]})\nr = {certificate.radius:.2f}", "red"
    return f"{names[label]}\nr = {certificate.radius:.2f}", "black"


def make_figure(pixel_values, labels, certificates, names, sigma, correct, radius, seed, columns: int = 5):
    """Every certified image in a grid (`columns` wide) titled by `panel_title`, one noisy sample at `sigma` (what
    the smoothed classifier votes over), and the certified-accuracy curve of all images
    (`dmae_hf.certification.analysis.plot_curve` of the per-image `correct`, `radius`). Returns the figure; the
    image panels carry the label "certified"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from ..certification.analysis import plot_curve
    from ..smoothing import add_gaussian_noise

    count = len(certificates)
    rows = -(-count // columns)
    fig = plt.figure(figsize=(2.2 * columns, 2.3 * rows + 3.2), layout="constrained")
    grid = fig.add_gridspec(rows + 1, columns, height_ratios=[1] * rows + [1.45])
    for i, cert in enumerate(certificates):
        ax = fig.add_subplot(grid[i // columns, i % columns], label="certified")
        ax.imshow(pixel_values[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([]), ax.set_yticks([])
        title, colour = panel_title(cert, labels[i], names)
        ax.set_title(title, fontsize=9, color=colour)
    ax = fig.add_subplot(grid[rows, :columns - 1], label="curve")
    plot_curve(ax, correct, radius, lw=2)
    ax.set_title(f"certified accuracy of the {count} images, sigma = {sigma}", fontsize=9)
    noisy = add_gaussian_noise(pixel_values[:1], sigma, torch.Generator().manual_seed(seed)).clamp(0, 1)
    ax = fig.add_subplot(grid[rows, columns - 1], label="noisy")
    ax.imshow(noisy[0].permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(f"image 0 + N(0, {sigma}²):\none noisy sample", fontsize=9)
    fig.suptitle(f"dmae demo: {count} CIFAR-10 test images, prediction (red: wrong) and certified L2 radius r",
                 fontsize=11)
    return fig


def write_picture(path, pixel_values, labels, certificates, names, sigma, correct, radius, seed):
    """`make_figure` saved as a PNG at `path`."""
    import matplotlib.pyplot as plt

    fig = make_figure(pixel_values, labels, certificates, names, sigma, correct, radius, seed)
    fig.savefig(path, dpi=110)
    plt.close(fig)
