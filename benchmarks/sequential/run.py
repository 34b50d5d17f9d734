"""Sample efficiency of `certify(method="sequential")` against Cohen's CERTIFY, on the embedded model (issue 24).

The embedded model (`dmae-tiny-cifar10`, sigma 0.25), the first K CIFAR-10 test images, n0 = 100, alpha = 0.001;
the sequential method gets the grid `--radii` (0 0.25 0.5 0.75) as its targets.

    # real runs, both methods, one JSONL line per image in benchmarks/sequential/logs/ (resumable: rerun to go on)
    python benchmarks/sequential/run.py real --dataset uoft-cs/cifar10 --images 500 --n 10000
    python benchmarks/sequential/run.py real --dataset uoft-cs/cifar10 --images 20 --n 100000
    # results.json (one entry per protocol), the plot and a table: the real protocols found in the logs, and
    # n = 100,000 (and 10,000, to check the simulation against the real run) simulated from the n = 10,000 counts
    python benchmarks/sequential/run.py report --simulate 10000 100000

`--dataset` is a Hub id or a local copy in the Hub layout (a folder with data/test-*.parquet).

The simulation (`simulate`): image i's vote distribution is estimated from its real Cohen counts at n = 10,000 (the
estimation counts of its log line). The top class c gets p_c = (n_c + 1/2) / (n + 1), the Jeffreys posterior mean of
a binomial proportion: near pA = 1 an image with all n votes for c gets pA = 1 - 1 / (2 (n + 1)), half a missing vote
in n, rather than 1 (which would make every all-vote image free to certify at any n). The other classes share 1 - p_c
in proportion to their counts (evenly if they have none). Selection draws n0 votes from these probabilities; the
estimation samples are Bernoulli(p_cA). Cohen and the sequential method share them (common random numbers): Cohen's
nA is the sequential run's votes plus Binomial(n - tau, p_cA) for the samples it did not draw, so the comparison is
paired. The sequential run calls `dmae_hf.sequential`'s own `look_schedule`, `stops` and `lower_bound`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METHODS = ("cohen", "sequential")


def log_path(out: Path, n: int, method: str) -> Path:
    return out / "logs" / f"n{n}-{method}.jsonl"


def read_log(path: Path) -> dict[int, dict]:
    """Image index -> its row (the last one wins; a torn last line from a killed run is skipped)."""
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["idx"]] = row
    return rows


# ----------------------------------------------------------------------------------------------------------- real
def run_real(args) -> None:
    import torch

    from dmae_hf.certification.dataset import image_seed
    from dmae_hf.defaults import EMBEDDED_MODEL
    from dmae_hf.image_datasets import load_image_split
    from dmae_hf.smoothed_classifier import SmoothedClassifier

    g = SmoothedClassifier.from_pretrained(EMBEDDED_MODEL)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = g.to(device)
    ds, image_column, label_column = load_image_split(args.dataset, args.split)
    images = [(idx, row) for idx, row in zip(range(args.images), ds, strict=False)]
    for method in args.methods:
        path = log_path(args.out, args.n, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        done = read_log(path)
        todo = [(idx, row) for idx, row in images if idx not in done]
        print(f"{method}, n = {args.n}: {len(done)} images logged, {len(todo)} to go -> {path}", flush=True)
        options = {"target_radius": args.radii} if method == "sequential" else {}
        with path.open("a") as log:
            for idx, row in todo:
                x = g.preprocess(row[image_column]).pixel_values.to(device)
                start = time.perf_counter()
                cert = g.certify(x, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch_size,
                                 seed=image_seed(args.seed, idx), method=method, **options)
                seconds = time.perf_counter() - start
                log.write(json.dumps({"idx": idx, "label": int(row[label_column]), "method": method, "n": args.n,
                                      "n0": args.n0, "alpha": args.alpha, "sigma": cert.sigma, "seed": cert.seed,
                                      "prediction": cert.prediction, "radius": cert.radius,
                                      "pA_lower": cert.pA_lower, "counts": cert.counts,
                                      "num_samples": cert.num_samples, "seconds": seconds}) + "\n")
                log.flush()
                os.fsync(log.fileno())
                print(f"  image {idx}: prediction {cert.prediction} (label {row[label_column]}), radius "
                      f"{cert.radius:.3f}, {cert.num_samples} samples, {seconds:.1f} s", flush=True)


# ----------------------------------------------------------------------------------------------------- simulation
def vote_probabilities(counts, n: int) -> np.ndarray:
    """The estimator of the module docstring: Jeffreys posterior mean for the top class, the rest in proportion."""
    counts = np.asarray(counts, dtype=float)
    top = int(np.argmax(counts))
    p_top = (counts[top] + 0.5) / (n + 1)
    rest = counts.copy()
    rest[top] = 0.0
    if rest.sum() == 0:
        rest = np.ones_like(rest)
        rest[top] = 0.0
    probs = rest / rest.sum() * (1.0 - p_top)
    probs[top] = p_top
    return probs


def simulate(probs, n, rng, n0, alpha, sigma, targets, first_look):
    """One paired simulated run of both methods: (cA, (samples, pA_lower) sequential, (samples, pA_lower) Cohen)."""
    from dmae_hf import sequential
    from dmae_hf.smoothing import clopper_pearson_lower

    cA = int(np.argmax(rng.multinomial(n0, probs)))  # the first maximal class on ties, as `certify`
    p = float(probs[cA])
    s = t = 0
    for look in sequential.look_schedule(n, first_look):
        s += int(rng.binomial(look - t, p))
        t = look
        if sequential.stops(s, t, n, alpha, sigma, targets, 0.0):
            break
    nA = s + int(rng.binomial(n - t, p))
    return cA, (n0 + t, sequential.lower_bound(s, t, alpha)), (n0 + n, clopper_pearson_lower(nA, n, alpha))


# ------------------------------------------------------------------------------------------------------- report
def summarise(name, n, simulated, rows, radii, wall=None) -> dict:
    """One results.json entry from {method: [(correct, radius, samples), ...]} over the same images."""
    from dmae_hf.certification.analysis import certified_accuracy

    entry = {"protocol": name, "n": n, "images": len(next(iter(rows.values()))), "simulated": simulated,
             "mean_samples": {}, "median_samples": {}, "certified_accuracy": {f"{r:g}": {} for r in radii},
             "ci95": {f"{r:g}": {} for r in radii}}
    for method, values in rows.items():
        correct, radius, samples = (np.array(v) for v in zip(*values, strict=True))
        acc = certified_accuracy(correct.astype(bool), radius, radii)
        entry["mean_samples"][method] = float(samples.mean())
        entry["median_samples"][method] = float(np.median(samples))
        for r, a, ci in zip(radii, acc["certified_accuracy"], acc["confidence_intervals"], strict=True):
            entry["certified_accuracy"][f"{r:g}"][method] = a
            entry["ci95"][f"{r:g}"][method] = list(ci)
    entry["fewer_samples"] = entry["mean_samples"]["cohen"] / entry["mean_samples"]["sequential"]
    entry["loss_points"] = {r: 100 * (v["cohen"] - v["sequential"]) for r, v in entry["certified_accuracy"].items()}
    if wall:
        entry["wall_seconds"] = wall
        entry["wall_seconds_per_image"] = {m: w / entry["images"] for m, w in wall.items()}
    return entry


def certificate(prediction, radius, label):
    return prediction is not None and prediction == label, radius if prediction is not None else 0.0


def report(args) -> None:
    entries, plots = [], []
    for path in sorted((args.out / "logs").glob("n*-cohen.jsonl")):
        n = int(path.name[1:].split("-")[0])
        logs = {m: read_log(log_path(args.out, n, m)) for m in METHODS}
        common = sorted(set(logs["cohen"]) & set(logs["sequential"]))
        if not common:
            continue
        rows = {m: [(*certificate(logs[m][i]["prediction"], logs[m][i]["radius"], logs[m][i]["label"]),
                     logs[m][i]["num_samples"]) for i in common] for m in METHODS}
        wall = {m: sum(logs[m][i]["seconds"] for i in common) for m in METHODS}
        entries.append(summarise(f"real, n = {n}", n, False, rows, args.radii, wall))
        plots.append((f"real, n = {n}", [logs["cohen"][i]["radius"] for i in common],
                      [logs["sequential"][i]["num_samples"] for i in common], n + logs["cohen"][common[0]]["n0"]))
    source = read_log(log_path(args.out, args.source_n, "cohen"))
    for n in args.simulate if source else []:
        rng = np.random.default_rng(args.seed)
        rows, cohen_radius, samples = {m: [] for m in METHODS}, [], []
        for i in sorted(source):
            row = source[i]
            probs = vote_probabilities(row["counts"], args.source_n)
            cA, seq, coh = simulate(probs, n, rng, row["n0"], row["alpha"], row["sigma"], args.radii, args.first_look)
            for method, (drawn, lower) in zip(METHODS, (coh, seq), strict=True):
                radius = row["sigma"] * float(_ppf(lower)) if lower >= 0.5 else 0.0
                rows[method].append((*certificate(cA if lower >= 0.5 else None, radius, row["label"]), drawn))
            cohen_radius.append(row["sigma"] * float(_ppf(coh[1])) if coh[1] >= 0.5 else 0.0)
            samples.append(seq[0])
        entries.append(summarise(f"simulated, n = {n} (from the n = {args.source_n} Cohen counts)", n, True, rows,
                                 args.radii))
        plots.append((f"simulated, n = {n}", cohen_radius, samples, n + source[min(source)]["n0"]))
    if not entries:
        sys.exit(f"No logs in {args.out / 'logs'}: run the `real` command first.")
    (args.out / "results.json").write_text(json.dumps(entries, indent=1) + "\n")
    plot(plots, args.out / "samples_vs_radius.png")
    for e in entries:
        print(f"\n{e['protocol']}: {e['images']} images, mean samples cohen {e['mean_samples']['cohen']:.0f}, "
              f"sequential {e['mean_samples']['sequential']:.0f} ({e['fewer_samples']:.1f}x fewer), median "
              f"{e['median_samples']['sequential']:.0f}" + (f"; wall s {e['wall_seconds']}" if "wall_seconds" in e
                                                           else ""))
        for r, acc in e["certified_accuracy"].items():
            lo_c, hi_c = e["ci95"][r]["cohen"]
            lo_s, hi_s = e["ci95"][r]["sequential"]
            print(f"  r = {r}: cohen {100 * acc['cohen']:.1f} [{100 * lo_c:.1f}, {100 * hi_c:.1f}], sequential "
                  f"{100 * acc['sequential']:.1f} [{100 * lo_s:.1f}, {100 * hi_s:.1f}], loss "
                  f"{e['loss_points'][r]:+.1f} points")
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'samples_vs_radius.png'}")


def _ppf(p):
    from scipy.stats import norm

    return norm.ppf(p)


def plot(panels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, radius, samples, cohen) in zip(axes[0], panels, strict=True):
        ax.scatter(radius, samples, s=8, alpha=0.6, label="sequential")
        ax.axhline(cohen, color="k", lw=1, ls="--", label=f"cohen ({cohen:,})")
        ax.set(yscale="log", xlabel="Cohen radius", ylabel="samples per image (selection included)", title=title)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", choices=["real", "report"])
    parser.add_argument("--dataset", default="uoft-cs/cifar10", help="Hub id or local copy in the Hub layout")
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=500, help="the first K images of the split")
    parser.add_argument("--n", type=int, default=10_000, help="real runs: the budget n of both methods")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--device", default=None)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    parser.add_argument("--simulate", type=int, nargs="*", default=[100_000], help="report: simulated budgets")
    parser.add_argument("--source-n", type=int, default=10_000, help="report: the real Cohen log to simulate from")
    parser.add_argument("--first-look", type=int, default=100, help="the sequential method's first look")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    run_real(args) if args.command == "real" else report(args)


if __name__ == "__main__":
    main()
