#!/usr/bin/env python
"""The paper's claim at small scale on real CIFAR-10: does DMAE pre-training help the smoothed classifier?

Three models of the same architecture and training budget, all fine-tuned at the same sigma:

  (a) dmae     DMAE pre-training (noise 0.25 + 75% masking, all-patch loss), then fine-tuning with consistency
               regularisation (m=2, lambda 2, eta 0.5);
  (b) scratch  no pre-training, Gaussian noise augmentation only (Cohen et al.'s recipe: m=1, lambda=eta=0);
  (c) mae      MAE pre-training (no noise, masked-patch loss), then the same fine-tuning as (a).

Each is certified with Cohen's CERTIFY (n0=100, n=--n, alpha=0.001) on the first --images CIFAR-10 test images (the
test split is never used for selection: validation is held out from train), and `README.md` in this folder is
rewritten with the certified-accuracy table (95% Clopper-Pearson intervals), the plot and the time taken.

Every stage is resumable: re-running skips finished stages and resumes an interrupted one.

    python benchmarks/reproduction/reproduce.py --out runs/reproduction            # the full run
    python benchmarks/reproduction/reproduce.py --out /tmp/smoke --pretrain-steps 4 --finetune-steps 4 \
        --images 4 --n 50                                                          # a smoke test
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

# The architecture of the embedded model `dmae-tiny-cifar10` (`ARCHITECTURES["tiny-cifar10"]` of dmae_hf's config:
# a ViT for CPUs, native 32x32 input, patch 4, CIFAR-10 normalisation).
ARCH = ["--preset", "tiny-cifar10"]
RADII = [0.0, 0.25, 0.5, 0.75]
EMBEDDED = "dmae-tiny-cifar10"
SHIPPED_FILES = ["model.safetensors", "config.json", "preprocessor_config.json"]
CIFAR10 = "uoft-cs/cifar10"  # the default data: a Hub id; a local copy in the Hub layout is a path given as --dataset
LOCAL_DATA: set[str] = set()  # a local --dataset, shown as $CIFAR10 in the reports (no path of this machine there)


def show(cmd: list[str]) -> str:
    """A command as a reader would type it: `python`, paths relative to the repository, a local dataset as $CIFAR10."""
    words = ["python" if w == sys.executable else "$CIFAR10" if w in LOCAL_DATA else w.replace(str(REPO) + "/", "")
             for w in cmd]
    return " ".join(words)


COMMANDS: dict[str, list[str]] = {}  # stage -> the command that produced it (for the report and the card)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/reproduction", help="working directory (checkpoints, logs)")
    parser.add_argument("--dataset", default=CIFAR10, help="CIFAR-10: a Hub id or the path of a local copy in the "
                        "Hub layout (default: %(default)s)")
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--finetune-steps", type=int, default=700)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=500, help="CIFAR-10 test images certified per model")
    parser.add_argument("--n", type=int, default=10_000, help="estimation samples per certificate")
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--models", nargs="+", default=["dmae", "scratch", "mae", "scratch-long"],
                        help="dmae, scratch, mae, and scratch-long: (b) trained for pre-training + fine-tuning steps")
    parser.add_argument("--report", default=str(HERE / "README.md"), help="where to write the report")
    parser.add_argument("--ship", action="store_true",
                        help=f"also copy the DMAE model, with its model card, into dmae_hf/checkpoints/{EMBEDDED}")
    return parser.parse_args(argv)


def run(cmd, log_path: Path):
    """Run one stage, appending its output to `log_path`; raise if it fails."""
    print("$", " ".join(cmd), flush=True)
    with open(log_path, "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def stage(out: Path, name: str, cmd: list[str], timings: dict) -> Path:
    """Run a training stage unless its final model exists; `--resume` picks up an interrupted run."""
    final = out / name / "final"
    COMMANDS[name] = cmd + ["--output-dir", str(out / name)]
    if not (final / "config.json").exists():
        start = time.time()
        resume = ["--resume"] if (out / name / "checkpoints").is_dir() else []
        run(cmd + ["--output-dir", str(out / name)] + resume, out / f"{name}.log")
        record_time(out, timings, name, time.time() - start)
    return final


def certify_seconds(log: Path) -> float:
    """Seconds spent certifying, summed over the log's rows: exact across killed and resumed runs."""
    from dmae_hf.certification.analysis import read_log

    return float(read_log(log)["time"].sum())


def replace_flag(cmd: list[str], flag: str, value) -> list[str]:
    i = cmd.index(flag)
    return cmd[: i + 1] + [str(value)] + cmd[i + 2 :]


def record_time(out: Path, timings: dict, name: str, seconds: float, add: bool = True):
    """Add `seconds` to (or set) stage `name` in out/timings.json (re-read first: stages may run in parallel)."""
    path = out / "timings.json"
    timings.update(json.loads(path.read_text()) if path.exists() else {})
    timings[name] = (timings.get(name, 0.0) if add else 0.0) + seconds
    path.with_suffix(".tmp").write_text(json.dumps(timings, indent=1))
    path.with_suffix(".tmp").replace(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cifar = args.dataset
    if os.path.isdir(os.path.expanduser(cifar)):
        LOCAL_DATA.add(cifar)
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    py = sys.executable
    data = ["--dataset", cifar, "--image-column", "img", "--val-size", "5000", "--num-workers", "1", "--cpu",
            "--seed", "0", "--batch-size", str(args.batch_size), "--grad-accum", "1", "--save-every", "100"]
    pretrain = [py, "examples/pretrain.py", *ARCH, *data, "--no-crop", "--max-steps", str(args.pretrain_steps),
                "--lr", "1e-3", "--warmup-steps", str(max(1, args.pretrain_steps // 12))]
    finetune = [py, "examples/finetune.py", *ARCH, *data, "--max-steps", str(args.finetune_steps), "--lr", "1e-3",
                "--warmup-steps", str(max(1, args.finetune_steps // 10)), "--layer-decay", "0.65",
                "--smoothing-sigma", str(args.sigma), "--certify-examples", "0"]
    consistency = ["--consistency-lambda", "2.0", "--consistency-eta", "0.5", "--num-noise-samples", "2"]
    gaussian_only = ["--consistency-lambda", "0", "--consistency-eta", "0", "--num-noise-samples", "1"]

    models = {}
    if "dmae" in args.models:
        pt = stage(out, "pretrain-dmae", pretrain + ["--noise-sigma", "0.25"], timings)
        models["dmae"] = stage(out, "finetune-dmae", finetune + ["--model", str(pt)] + consistency, timings)
    if "scratch" in args.models:
        models["scratch"] = stage(out, "finetune-scratch", finetune + ["--from-scratch"] + gaussian_only, timings)
    if "scratch-long" in args.models:  # (b) given the step count of pre-training + fine-tuning
        steps = args.pretrain_steps + args.finetune_steps
        longer = replace_flag(replace_flag(finetune, "--max-steps", steps), "--warmup-steps", max(1, steps // 10))
        models["scratch-long"] = stage(out, "finetune-scratch-long", longer + ["--from-scratch"] + gaussian_only,
                                       timings)
    if "mae" in args.models:
        pt = stage(out, "pretrain-mae", pretrain + ["--mae"], timings)
        models["mae"] = stage(out, "finetune-mae", finetune + ["--model", str(pt)] + consistency, timings)

    logs = {}
    for name, path in models.items():
        log = out / f"certify-{name}.tsv"
        cmd = [py, "-m", "dmae_hf", "certify", "--model", str(path), "--dataset", cifar, "--split", "test",
               "--max", str(args.images), "--image-column", "img", "--label-column", "label", "--n0", str(args.n0),
               "--n", str(args.n), "--alpha", str(args.alpha), "--batch", "1000", "--seed", "0", "--out", str(log)]
        run(cmd, out / f"certify-{name}.log")  # resumes a killed run; a finished log is left as it is
        record_time(out, timings, f"certify-{name}", certify_seconds(log), add=False)
        COMMANDS[f"certify-{name}"] = cmd
        logs[name] = log
    results = write_report(args, logs, timings, Path(args.report))
    if args.ship and "dmae" in models:
        ship(models["dmae"], results, timings, args)
    return 0


def ship(final: Path, results: dict, timings: dict, args):
    """Copy the DMAE model into the package as `dmae-tiny-cifar10`, with a card that gives how it was made."""
    from dmae_hf.configuration_dmae import DMAEConfig
    from dmae_hf.hub.model_card import render_model_card

    target = REPO / "dmae_hf" / "checkpoints" / EMBEDDED
    target.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        shutil.copyfile(final / name, target / name)
    config = json.loads((target / "config.json").read_text())
    config.pop("auto_map", None)  # the package's own classes load it; no remote-code files are shipped
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    row = next(r for r in results["rows"] if r["name"] == "dmae")
    card_results = {"radii": results["radii"],
                    "rows": [{**row, "name": f"CIFAR-10 test, first {args.images} images, n={args.n}"}],
                    "envelope": None}
    train_minutes = (timings.get("pretrain-dmae", 0) + timings.get("finetune-dmae", 0)) / 60
    provenance = "\n".join([
        f"Trained by the dmae-hf project with its own scripts on the CIFAR-10 train split (`{show([args.dataset])}`,",
        "its first 5,000 images held out for validation; nothing was selected on the test split), on 2 CPU",
        f"cores in {train_minutes:.0f} minutes of training in all, then certified with `dmae certify`. The",
        "exact commands, from `benchmarks/reproduction/reproduce.py --ship`:", "", "```bash",
        *(show(COMMANDS[k]) for k in ("pretrain-dmae", "finetune-dmae", "certify-dmae") if k in COMMANDS), "```", "",
        "The same script trains the two baselines of the reproduction report (`benchmarks/reproduction/README.md`).",
    ])
    card = render_model_card(EMBEDDED, DMAEConfig.from_pretrained(target), results=card_results,
                             provenance=provenance, from_official=False)
    (target / "README.md").write_text(card)
    print(f"shipped {EMBEDDED} to {target}")


def paired_comparison(logs: dict) -> list[str]:
    """DMAE against each baseline on the same images: at each radius, b = images certified (correct, radius >= r)
    by dmae only and c = by the baseline only; two-sided exact sign test of b ~ Bin(b + c, 1/2) (McNemar)."""
    from scipy.stats import binomtest

    from dmae_hf.certification.analysis import read_log

    if "dmae" not in logs or len(logs) < 2:
        return []
    def certified(path, r):  # idx -> certified at radius r
        log = read_log(path)
        return {int(i): bool(c == 1 and rad >= r)
                for i, c, rad in zip(log["idx"], log["correct"], log["radius"], strict=True)}

    lines = ["", "Paired on the same test images (McNemar's exact test): images certified at radius r by DMAE only "
             "(b) and by the baseline only (c), and the two-sided p-value of b ~ Bin(b + c, 1/2).", "",
             "| DMAE vs | " + " | ".join(f"r = {r}" for r in RADII) + " |",
             "| --- | " + " | ".join("---" for _ in RADII) + " |"]
    for name, path in logs.items():
        if name == "dmae":
            continue
        cells = []
        for r in RADII:
            ours, theirs = certified(logs["dmae"], r), certified(path, r)
            b = sum(ours[i] and not theirs.get(i, False) for i in ours)
            c = sum(theirs[i] and not ours.get(i, False) for i in theirs)
            p = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
            cells.append(f"b={b}, c={c}, p={p:.2g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def write_report(args, logs: dict, timings: dict, report: Path):
    """Certified-accuracy table with 95% Clopper-Pearson intervals, the plot, commands and times."""
    from dmae_hf.certification.analysis import analyze_logs

    plot = report.with_name("certified_accuracy.png")
    results = analyze_logs([str(p) for p in logs.values()], radii=RADII, names=list(logs), plot=str(plot))
    lines = [
        "# DMAE vs Gaussian augmentation vs MAE on CIFAR-10, at small scale",
        "",
        "Generated by `benchmarks/reproduction/reproduce.py` (do not edit by hand). Command:",
        "",
        "```bash",
        show(["python", "benchmarks/reproduction/reproduce.py", *sys.argv[1:]]),
        "```",
        *(["", f"`$CIFAR10` is the local copy of CIFAR-10 (Hub layout) the run read; `--dataset {CIFAR10}` reads "
           "the Hub's."] if LOCAL_DATA else []),
        "",
        f"Three models of the same architecture (`{' '.join(ARCH)}`) and budget ({args.pretrain_steps} pre-training "
        f"and {args.finetune_steps} fine-tuning steps of batch {args.batch_size}), fine-tuned at sigma={args.sigma} "
        f"and certified on the first {args.images} CIFAR-10 test images with n0={args.n0}, n={args.n}, "
        f"alpha={args.alpha}: dmae (DMAE pre-training, then fine-tuning with consistency regularisation), scratch "
        f"(no pre-training, Gaussian augmentation only, {args.finetune_steps} steps), mae (MAE pre-training without "
        f"noise, then dmae's fine-tuning), and scratch-long (scratch given the pre-training steps too: "
        f"{args.pretrain_steps + args.finetune_steps} steps). Entries: certified accuracy (%) with a 95% "
        f"Clopper-Pearson interval.",
        "",
        "| model | " + " | ".join(f"r = {r}" for r in RADII) + " | ACR |",
        "| --- | " + " | ".join("---" for _ in RADII) + " | --- |",
    ]
    for row in results["rows"]:
        cells = [f"{100 * a:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
                 for a, (lo, hi) in zip(row["certified_accuracy"], row["confidence_intervals"], strict=True)]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {row['acr']:.3f} |")
    lines += paired_comparison(logs)
    lines += ["", f"![certified accuracy]({plot.name})", "",
              "Time per stage (s; 2 CPU cores shared with other jobs, stages sometimes "
              "in parallel). Training: wall time of the runs that finished the stage; certification: the sum of the "
              "log's per-image times, so a killed and resumed run counts fully:", ""]
    lines += [f"- {k}: {v:.0f}" for k, v in timings.items()]
    lines += ["", "The stages' commands:", "", "```bash", *(show(cmd) for cmd in COMMANDS.values()), "```"]
    report.write_text("\n".join(lines) + "\n")
    print(report.read_text())
    return results


if __name__ == "__main__":
    sys.exit(main())
