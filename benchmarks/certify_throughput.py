"""Throughput of `dmae_hf.smoothing.certify` against a plain Cohen-style loop, and adaptive/sequential vs fixed n.

Both certifiers run on the same model and the same real CIFAR-10 test images, in the same process, alternating, so
the printed ratio is measured in this run. The reference is the loop of Cohen et al.'s `core.py` written out here:
repeat the image, `randn_like` noise, forward, argmax, count on the host with numpy, Clopper-Pearson bound.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python benchmarks/certify_throughput.py --preset tiny --n 10000 --images 8

Prints noisy samples/s and seconds per certificate of both, their ratio, and the share of wall time spent outside
the base classifier's forward (noise sampling separately), then the adaptive-vs-cohen comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import beta, norm

from dmae_hf import sampling, smoothing
from dmae_hf.certification.analysis import certificate_arrays, certified_accuracy
from dmae_hf.configuration_dmae import PRESETS, DMAEConfig
from dmae_hf.image_processing_dmae import DMAEImageProcessor
from dmae_hf.modeling_dmae import DMAEForSmoothedClassification
from dmae_hf.smoothing import add_gaussian_noise


def load_cifar10(dataset: str, split: str, count: int):
    """The first `count` rows of CIFAR-10's `split`: a Hub id, or a local copy in the Hub layout the user gives."""
    import datasets

    rows = datasets.load_dataset(dataset, split=split, streaming=True).take(count)
    rows = list(rows)
    pixels = DMAEImageProcessor.for_cifar10()([r["img"] for r in rows], return_tensors="pt").pixel_values
    return pixels, torch.tensor([r["label"] for r in rows])


class Timed:
    """Wraps a base classifier; accumulates the wall time of its forward passes and counts them."""

    def __init__(self, f, device):
        self.f, self.device, self.seconds, self.calls, self.samples = f, device, 0.0, 0, 0

    def __call__(self, z):
        sync(self.device)
        start = time.perf_counter()
        out = self.f(z)
        sync(self.device)
        self.seconds += time.perf_counter() - start
        self.calls, self.samples = self.calls + 1, self.samples + z.shape[0]
        return out

    def reset(self):
        self.seconds, self.calls, self.samples = 0.0, 0, 0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class NoiseClock:
    """Seconds spent drawing noise: wraps `add_gaussian_noise` as seen by `dmae_hf.sampling` (the noise streams)."""

    seconds = 0.0

    @classmethod
    def install(cls, device):
        def timed(*args, **kwargs):
            sync(device)
            start = time.perf_counter()
            out = add_gaussian_noise(*args, **kwargs)
            sync(device)
            cls.seconds += time.perf_counter() - start
            return out

        sampling.add_gaussian_noise = timed


# ------------------------------------------------------------------------------------- the reference (Cohen's core.py)
class Reference:
    def __init__(self, f, num_classes, sigma, batch_size, device, autocast_dtype):
        self.f, self.k, self.sigma, self.batch_size, self.device = f, num_classes, sigma, batch_size, device
        self.autocast_dtype, self.noise_seconds = autocast_dtype, 0.0

    def sample(self, x, num):
        counts = np.zeros(self.k, dtype=int)
        with torch.no_grad():
            while num > 0:
                b = min(self.batch_size, num)
                num -= b
                sync(self.device)
                start = time.perf_counter()
                batch = x.repeat((b, 1, 1, 1))
                noise = torch.randn_like(batch) * self.sigma
                noisy = batch + noise
                sync(self.device)
                self.noise_seconds += time.perf_counter() - start
                cast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                        else contextlib.nullcontext())
                with cast:
                    predictions = self.f(noisy).argmax(1)
                counts += np.bincount(predictions.cpu().numpy(), minlength=self.k)
        return counts

    def certify(self, x, n0, n, alpha):
        cA = int(self.sample(x, n0).argmax())
        nA = int(self.sample(x, n)[cA])
        pA_lower = beta.ppf(alpha, nA, n - nA + 1) if nA > 0 else 0.0
        return (None, 0.0) if pA_lower < 0.5 else (cA, self.sigma * norm.ppf(pA_lower))


def quick_train(model, dataset, steps, sigma, batch_size, device):
    """A few hundred steps of Gaussian-noise training, only so that pA varies across images (not a real model)."""
    x, y = load_cifar10(dataset, "train", steps * batch_size // 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,))
        with warnings.catch_warnings():  # base_classifier warns about training mode, which is the point here
            warnings.simplefilter("ignore")
            logits = model.base_classifier(add_gaussian_noise(x[idx].to(device), sigma))
        loss = F.cross_entropy(logits, y[idx].to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default="uoft-cs/cifar10",
                        help="CIFAR-10: a Hub id or a local copy in the Hub layout")
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--model", default=None,
                        help="a trained classifier (directory or short name, e.g. dmae-tiny-cifar10) instead of a "
                             "preset")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds of each certifier (alternating)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--compile", nargs="?", const="default", default=None,
                        choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile the base classifier (both certifiers use the compiled one)")
    parser.add_argument("--train-steps", type=int, default=150, help="quick noisy training so pA varies (0 = random)")
    parser.add_argument("--adaptive-n", type=int, default=100_000,
                        help="budget n of the adaptive comparison (0 = skip it)")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = torch.device(args.device)
    autocast_dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    if args.model:
        model = DMAEForSmoothedClassification.from_pretrained(args.model).to(device)
        args.preset, args.sigma, args.train_steps = args.model, model.config.smoothing_sigma, 0
    else:
        model = DMAEForSmoothedClassification(DMAEConfig.from_preset(args.preset, num_labels=10)).to(device)
    if args.train_steps:
        loss = quick_train(model, args.dataset, args.train_steps, args.sigma, 128, device)
        print(f"quick noisy training: {args.train_steps} steps, last loss {loss:.3f}")
    model.eval()
    x, y = load_cifar10(args.dataset, "test", args.images)
    x = x.to(device)
    base = model.base_classifier
    if args.compile:
        base = torch.compile(base, mode=args.compile, dynamic=False)
    f = Timed(base, device)
    NoiseClock.install(device)
    reference = Reference(f, 10, args.sigma, args.batch_size, device, autocast_dtype)
    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{threads} threads'}),"
          f" torch {torch.__version__}, preset {args.preset}, dtype {args.dtype}, compile {args.compile}, "
          f"images {args.images}, "
          f"n0 {args.n0}, n {args.n}, batch {args.batch_size}")

    def run_ours(xi):
        return smoothing.certify(f, xi, args.sigma, args.n0, args.n, args.alpha, args.batch_size,
                                 autocast_dtype=autocast_dtype)

    def run_reference(xi):
        return reference.certify(xi, args.n0, args.n, args.alpha)

    run_ours(x[0]), run_reference(x[0])  # warm-up
    # Interleaved image by image (alternating which goes first) so that drifts in machine load hit both alike.
    totals = {"ours": [0.0, 0.0, 0.0, 0], "reference": [0.0, 0.0, 0.0, 0]}  # wall, forward, noise, samples
    results = {"ours": [], "reference": []}
    for repeat in range(args.repeats):
        for i, xi in enumerate(x):
            order = [("reference", run_reference), ("ours", run_ours)]
            for name, fn in order if (repeat + i) % 2 == 0 else order[::-1]:
                f.reset()
                NoiseClock.seconds = reference.noise_seconds = 0.0
                sync(device)
                start = time.perf_counter()
                out = fn(xi)
                sync(device)
                wall = time.perf_counter() - start
                noise = NoiseClock.seconds if name == "ours" else reference.noise_seconds
                t = totals[name]
                t[0], t[1], t[2], t[3] = t[0] + wall, t[1] + f.seconds, t[2] + noise, t[3] + f.samples
                if repeat == 0:
                    results[name].append(out)
    ours_results, ref_results = results["ours"], results["reference"]
    print(f"{'certifier':<10} {'samples/s':>11} {'s/cert':>8} {'outside fwd':>11} {'noise':>7} {'other':>7}")
    rate = {}
    for name, (wall, fwd, noise, samples) in totals.items():
        rate[name] = samples / wall
        print(f"{name:<10} {rate[name]:>11.0f} {wall / (args.repeats * args.images):>8.3f} "
              f"{(wall - fwd) / wall:>11.1%} {noise / wall:>7.1%} {(wall - fwd - noise) / wall:>7.1%}")
    print(f"throughput ratio ours / reference = {rate['ours'] / rate['reference']:.3f}")
    agree = sum((c.prediction, round(c.radius, 2)) == (p, round(r, 2))
                for c, (p, r) in zip(ours_results, ref_results, strict=True))
    print(f"same prediction and radius (2 decimals) as the reference on {agree}/{args.images} images "
          "(different noise draws, so small differences are expected)")

    # ---------------------------------------------------------------------------------------- adaptive vs cohen
    n_big = args.adaptive_n
    if not n_big:
        return 0
    print(f"\nadaptive vs cohen on the same {args.images} images, n0 {args.n0}, n {n_big}, batched call, "
          f"true labels {y.tolist()}")
    print(f"{'method':<44} {'samples':>10} {'fwd passes':>10} {'wall s':>7} {'abstain':>7} {'mean R':>7} "
          f"{'cert.acc@sigma':>14} {'@2sigma':>7}")
    settings = [("cohen", {}), ("adaptive", {}), ("adaptive", dict(estimate_tolerance=0.05 * args.sigma)),
                ("adaptive", dict(target_radius=args.sigma)),
                ("adaptive", dict(target_radius=[args.sigma, 2 * args.sigma])),
                ("sequential", dict(target_radius=[0, args.sigma, 2 * args.sigma, 3 * args.sigma])),
                ("sequential", {})]
    for method, options in settings:
        f.reset()
        start = time.perf_counter()
        certs = smoothing.certify(f, x, args.sigma, args.n0, n_big, args.alpha, args.batch_size, method=method,
                                  autocast_dtype=autocast_dtype, **options)
        wall = time.perf_counter() - start
        label = method + (" " + ", ".join(f"{k}={v}" for k, v in options.items()) if options else "")
        radii = [c.radius for c in certs]
        acc = certified_accuracy(*certificate_arrays(certs, y.tolist()),
                                 radii=(args.sigma, 2 * args.sigma))["certified_accuracy"]
        print(f"{label:<44} {sum(c.num_samples for c in certs):>10} {f.calls:>10} {wall:>7.1f} "
              f"{sum(c.abstained for c in certs):>7} {np.mean(radii):>7.3f} {acc[0]:>14.2f} {acc[1]:>7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
