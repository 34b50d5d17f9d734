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
estimation samples are Bernoulli(p_cA). All methods read one such stream per image (common random numbers): counts
past the last known point are drawn forward, counts between two known points from their hypergeometric split, so
the comparison is paired. The sequential and adaptive runs call the library's own rules (`sequential.Rule`,
`smoothing.adaptive_rule`), built from `certify`'s own option parsers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import beta
from tqdm.auto import tqdm

from dmae_hf.defaults import REACH

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
    images = [(idx, row) for idx, row in zip(range(args.first + args.images), ds, strict=False)
              if idx >= args.first]
    for method in args.methods:
        path = log_path(args.out, args.n, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        done = read_log(path)
        todo = [(idx, row) for idx, row in images if idx not in done]
        print(f"{method}, n = {args.n}: {len(done)} images logged, {len(todo)} to go -> {path}", flush=True)
        options = {"target_radius": args.radii, "reach": args.reach} if method == "sequential" else {}
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


def simulate(probs, rng, n0, n, alpha, rules, cap):
    """One paired simulated run: (cA, {method: (samples, pA_lower)}) for each method of `rules` ({method: (first look,
    decide)}, the library's own looks and stops, as `certify` runs them), Cohen at `cap` samples (the sequential
    method's horizon: what a plain smaller budget would give) and Cohen at n."""
    from dmae_hf.smoothing import clopper_pearson_lower

    cA = int(np.argmax(rng.multinomial(n0, probs)))  # the first maximal class on ties, as `certify`
    p = float(probs[cA])
    votes = []  # known points (samples, votes for cA) of one Bernoulli(pA) stream shared by all methods
    out = {}
    for method, (look, decide) in rules.items():
        while look is not None:  # as `Sampler.run_looks` does for one image
            t = look
            lower, look = decide(_votes_at(t, votes, rng, p), t)
        out[method] = (n0 + t, lower)
    if cap < n:
        out[f"cohen at {cap:,}"] = (n0 + cap, clopper_pearson_lower(_votes_at(cap, votes, rng, p), cap, alpha))
    out["cohen"] = (n0 + n, clopper_pearson_lower(_votes_at(n, votes, rng, p), n, alpha))
    return cA, out


def _votes_at(t, votes, rng, p):
    """Votes for cA among the first t samples of the shared stream `votes` [(samples, votes)], sorted by samples:
    drawn forward from the last known point, or as a hypergeometric split between the two known points around t."""
    votes.sort()
    before = max((v for v in votes if v[0] <= t), default=(0, 0))
    after = min((v for v in votes if v[0] >= t), default=None)
    if before[0] == t:
        return before[1]
    if after is None:
        s = before[1] + int(rng.binomial(t - before[0], p))
    else:  # given the votes at both ends, the votes in between are hypergeometric
        k, m = after[1] - before[1], after[0] - before[0]
        s = before[1] + (int(rng.hypergeometric(k, m - k, t - before[0])) if 0 < k < m else k * (t - before[0]) // m)
    votes.append((t, s))
    return s


# ------------------------------------------------------------------------------------------------------- report
def summarise(name, n, simulated, rows, radii, wall=None, replicates=1) -> dict:
    """One results.json entry from {method: [(correct, radius, samples), ...]} over the same images (simulated:
    `replicates` runs of each image, concatenated; accuracies and samples are their means, the 95% intervals the
    Clopper-Pearson intervals of the images at the mean accuracy)."""
    from dmae_hf.certification.analysis import certified_accuracy

    images = len(next(iter(rows.values()))) // replicates
    entry = {"protocol": name, "n": n, "images": images, "simulated": simulated, "mean_samples": {},
             "median_samples": {}, "certified_accuracy": {f"{r:g}": {} for r in radii},
             "ci95": {f"{r:g}": {} for r in radii}}
    if simulated:
        entry["replicates"] = replicates
    for method, values in rows.items():
        correct, radius, samples = (np.array(v) for v in zip(*values, strict=True))
        acc = np.mean([certified_accuracy(c.astype(bool), r, radii)["certified_accuracy"]
                       for c, r in zip(correct.reshape(replicates, -1), radius.reshape(replicates, -1), strict=True)],
                      axis=0)
        entry["mean_samples"][method] = float(samples.mean())
        entry["median_samples"][method] = float(np.median(samples))
        for r, a in zip(radii, acc, strict=True):
            k = round(a * images)
            entry["certified_accuracy"][f"{r:g}"][method] = float(a)
            entry["ci95"][f"{r:g}"][method] = [float(beta.ppf(0.025, k, images - k + 1)) if k else 0.0,
                                               float(beta.ppf(0.975, k + 1, images - k)) if k < images else 1.0]
    entry["fewer_samples"] = {m: entry["mean_samples"]["cohen"] / v for m, v in entry["mean_samples"].items()
                              if m != "cohen"}
    entry["loss_points"] = {m: {r: 100 * (v["cohen"] - v[m]) for r, v in entry["certified_accuracy"].items()}
                            for m in rows if m != "cohen"}
    entry["mean_loss_points"] = {m: float(np.mean(list(v.values()))) for m, v in entry["loss_points"].items()}
    if wall:
        entry["wall_seconds"] = wall
        entry["wall_seconds_per_image"] = {m: w / images for m, w in wall.items()}
    return entry


def certificate(prediction, radius, label):
    return prediction is not None and prediction == label, radius if prediction is not None else 0.0


def report(args) -> None:
    from dmae_hf import sequential, smoothing

    def subsets(images):
        """The images of a protocol, then its held-out part (index >= --held-out-from) when it is a proper subset."""
        held_out = [i for i in images if i >= args.held_out_from]
        return [(images, "")] + ([(held_out, ", held out (not used to choose reach)")]
                                 if held_out and len(held_out) < len(images) else [])

    entries, plots, real_images = [], [], {}
    for path in sorted((args.out / "logs").glob("n*-cohen.jsonl"), key=lambda q: int(q.name[1:].split("-")[0])):
        n = int(path.name[1:].split("-")[0])
        logs = {m: read_log(log_path(args.out, n, m)) for m in METHODS}
        common = sorted(i for i in set(logs["cohen"]) & set(logs["sequential"])
                        if args.first <= i < args.first + args.images)
        if not common:
            continue
        real_images[n] = common
        for images, name in subsets(common):
            rows = {m: [(*certificate(logs[m][i]["prediction"], logs[m][i]["radius"], logs[m][i]["label"]),
                         logs[m][i]["num_samples"]) for i in images] for m in METHODS}
            wall = {m: sum(logs[m][i]["seconds"] for i in images) for m in METHODS}
            entries.append(summarise(f"real, n = {n}, images {images[0]}-{images[-1]}{name}", n, False, rows,
                                     args.radii, wall))
        plots.append((f"real, n = {n}", [logs["cohen"][i]["radius"] for i in common],
                      [logs["sequential"][i]["num_samples"] for i in common], n + logs["cohen"][common[0]]["n0"]))
    source = read_log(log_path(args.out, args.source_n, "cohen"))
    source = {i: row for i, row in sorted(source.items()) if args.first <= i < args.first + args.images}
    for n in args.simulate if source else []:
        rng = np.random.default_rng(args.seed)
        first = source[min(source)]
        alpha, sigma = first["alpha"], first["sigma"]
        rule = sequential.Rule(n, alpha, sigma, **sequential.options(
            n, sigma, first_look=args.first_look, target_radius=args.radii, reach=args.reach))
        adaptive = smoothing.adaptive_rule(n, alpha, sigma, **smoothing.OPTION_PARSERS["adaptive"](
            n, sigma, target_radius=args.radii))
        rules = {"sequential": (rule.first, rule.decide), "adaptive": adaptive}
        runs = {}  # method -> image -> [(correct, radius, samples) per replicate]
        for _ in tqdm(range(args.replicates), desc=f"simulated n = {n:,}", unit="replicate"):
            for i, row in source.items():
                probs = vote_probabilities(row["counts"], args.source_n)
                cA, out = simulate(probs, rng, row["n0"], n, alpha, rules, rule.horizon)
                for method, (drawn, lower) in out.items():
                    radius = row["sigma"] * float(_ppf(lower)) if lower >= 0.5 else 0.0
                    runs.setdefault(method, {}).setdefault(i, []).append(
                        (*certificate(cA if lower >= 0.5 else None, radius, row["label"]), drawn))
        runs = {"cohen": runs.pop("cohen"), **runs}
        also = [(real_images[n], f", the images of the real n = {n} run")] if n in real_images else []
        for images, name in subsets(list(source)) + also:
            rows = {m: [per_image[i][k] for k in range(args.replicates) for i in images]
                    for m, per_image in runs.items()}
            entries.append(summarise(f"simulated, n = {n}, images {images[0]}-{images[-1]}{name} (from the n = "
                                     f"{args.source_n} Cohen counts)", n, True, rows, args.radii,
                                     replicates=args.replicates))
        plots.append((f"simulated, n = {n}", [runs["cohen"][i][0][1] for i in source],
                      [runs["sequential"][i][0][2] for i in source],
                      n + first["n0"]))
    if not entries:
        sys.exit(f"No logs in {args.out / 'logs'}: run the `real` command first.")
    (args.out / args.results).write_text(json.dumps(entries, indent=1) + "\n")
    if args.plot:
        plot(plots, args.out / "samples_vs_radius.png")
    for e in entries:
        print(f"\n{e['protocol']}: {e['images']} images" + (f" x {e['replicates']} replicates" if e["simulated"]
                                                             else "") +
              (f"; wall s {', '.join(f'{m} {w:.0f}' for m, w in e['wall_seconds'].items())}" if "wall_seconds" in e
               else ""))
        for m, mean in e["mean_samples"].items():
            fewer = f" ({e['fewer_samples'][m]:.1f}x fewer)" if m != "cohen" else ""
            loss = (" loss " + " / ".join(f"{v:+.2f}" for v in e["loss_points"][m].values()) +
                    f" points (mean {e['mean_loss_points'][m]:.2f})") if m != "cohen" else ""
            print(f"  {m:>16}: mean samples {mean:9.0f}{fewer}, median {e['median_samples'][m]:.0f};{loss}")
        for r, acc in e["certified_accuracy"].items():
            print(f"  r = {r}: " + ", ".join(f"{m} {100 * a:.1f} [{100 * e['ci95'][r][m][0]:.1f}, "
                                             f"{100 * e['ci95'][r][m][1]:.1f}]" for m, a in acc.items()))
    print(f"\nwrote {args.out / args.results}" + (f" and {args.out / 'samples_vs_radius.png'}" if args.plot else ""))


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
    parser.add_argument("command", choices=["real", "report"], help="real: certify and log; report: results.json")
    parser.add_argument("--dataset", default="uoft-cs/cifar10", help="Hub id or local copy in the Hub layout")
    parser.add_argument("--split", default="test", help="the split to certify")
    parser.add_argument("--first", type=int, default=0, help="the first image index (real runs and report)")
    parser.add_argument("--images", type=int, default=500, help="how many images from --first (real runs and report)")
    parser.add_argument("--n", type=int, default=10_000, help="real runs: the budget n of both methods")
    parser.add_argument("--n0", type=int, default=100, help="real runs: selection samples")
    parser.add_argument("--alpha", type=float, default=0.001, help="real runs: failure probability")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (real) and simulation seed (report)")
    parser.add_argument("--batch-size", type=int, default=1000, help="real runs: noisy samples per forward pass")
    parser.add_argument("--device", default=None, help="real runs: torch device (None: cuda if available, else cpu)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="real runs: methods")
    parser.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75],
                        help="the grid: the sequential method's targets and the reported radii")
    parser.add_argument("--simulate", type=int, nargs="*", default=[100_000], help="report: simulated budgets")
    parser.add_argument("--replicates", type=int, default=20, help="report: simulated runs of each image")
    parser.add_argument("--source-n", type=int, default=10_000, help="report: the real Cohen log to simulate from")
    parser.add_argument("--first-look", type=int, default=100, help="the sequential method's first look")
    parser.add_argument("--reach", type=float, default=REACH, help="the sequential method's reach")
    parser.add_argument("--results", default="results.json", help="report: the file written in --out")
    parser.add_argument("--plot", action=argparse.BooleanOptionalAction, default=True,
                        help="report: write samples_vs_radius.png")
    parser.add_argument("--held-out-from", type=int, default=100,
                        help="report: also summarise the images from this index on (those not used to choose reach)")
    parser.add_argument("--out", type=Path, default=HERE, help="the folder of logs/ and the results")
    args = parser.parse_args(argv)
    run_real(args) if args.command == "real" else report(args)


if __name__ == "__main__":
    main()
