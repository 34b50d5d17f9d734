# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Denoised smoothing with a DMAE denoiser, on CIFAR-10 at sigma = 0.25: the benchmark of `README.md` here.

Certifies, on the first `--images` CIFAR-10 test images with n0 = 100 and n = 10,000 (alpha = 0.001):

  (a) clean-vit:          a transformers ViT trained on clean CIFAR-10 only (`train_classifier.py`), no denoiser;
  (b) clean-vit+denoiser: the same ViT behind a DMAE denoiser (`DMAEForPreTraining.denoise`);
  (c) dmae-tiny-cifar10:  the shipped DMAE classifier (same ViT shape, DMAE pre-training + noisy fine-tuning).

First it trains, in `--work`, what is not there yet (`TRAINING` below: the clean ViT, a DMAE pre-training at sigma
0.25, and that DMAE fine-tuned as a denoiser). The denoiser is then chosen on 500 *other* test images (indices
5000-5499, so the choice does not see the certified images) among the two candidates, by the clean ViT's accuracy on
one denoised noisy copy of each image (PSNR reported too). Every stage resumes: the logs are `dmae certify` logs.

    python benchmarks/denoised_smoothing/run.py --work runs/denoised --images 250 --method adaptive --autocast bf16
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RADII = (0.0, 0.25, 0.5, 0.75)
DENOISER = "dmae-tiny-cifar10-denoiser"  # the short name of the shipped denoiser
CLEAN_VIT = "vit-tiny-cifar10-clean"  # the shipped clean classifier (a plain transformers checkpoint)
SHIPPED_FILES = ["model.safetensors", "config.json", "preprocessor_config.json"]
CIFAR10 = "uoft-cs/cifar10"  # the default data: a Hub id; a local copy in the Hub layout is a path given as --dataset
LOCAL_DATA: set[str] = set()  # a local --dataset, shown as $CIFAR10 in the reports (no path of this machine there)
# The tiny DMAE's shape and the data, as in benchmarks/reproduction (pre-training 1000 steps of batch 128).
DMAE_ARGS = ("--preset tiny --hidden-size 96 --depth 4 --heads 3 --patch-size 4 --image-size 32 "
             "--decoder-hidden-size 64 --decoder-depth 2 --decoder-heads 4 --normalization cifar10 "
             "--dataset {data} --image-column img --val-size 5000 --num-workers 1 --cpu --seed 0 --batch-size 128 "
             "--grad-accum 1 --save-every 200 --no-crop --recon-every 0 --noise-sigma 0.25").split()


def training(work: str, data: str) -> dict[str, tuple[str, list[str]]]:
    """{name: (output folder, command)} of the three trainings, run from the repository root."""
    common = [a.format(data=data) for a in DMAE_ARGS]
    return {
        "vit-clean": (f"{work}/vit-clean", ["benchmarks/denoised_smoothing/train_classifier.py", "--dataset", data,
                                            "--out", f"{work}/vit-clean", "--steps", "4000"]),
        "pretrain-dmae": (f"{work}/pretrain-dmae/final", ["examples/pretrain.py", *common, "--max-steps", "1000",
                                                          "--lr", "1e-3", "--warmup-steps", "83", "--output-dir",
                                                          f"{work}/pretrain-dmae"]),
        "denoiser-pixels": (f"{work}/denoiser-pixels/final", [
            "examples/pretrain.py", *common, "--max-steps", "500", "--lr", "5e-4", "--warmup-steps", "25",
            "--mask-ratio", "0", "--no-norm-pix-loss", "--init-from", f"{work}/pretrain-dmae/final", "--output-dir",
            f"{work}/denoiser-pixels"]),
    }


def train(args) -> dict[str, list[str]]:
    """Run the trainings whose output is missing (`--resume`: a killed one continues); return the commands."""
    commands = {}
    for name, (output, cmd) in training(args.work, args.dataset).items():
        commands[name] = [sys.executable, *cmd]
        if not os.path.isfile(os.path.join(output, "config.json")):
            print("+", show(commands[name]), flush=True)
            extra = ["--resume"] if cmd[0] == "examples/pretrain.py" else []
            subprocess.run([*commands[name], *extra], check=True, cwd=REPO)
    return commands


def load_test_images(root: str, start: int, count: int):
    """CIFAR-10 test images [start, start + count) as a float (N, 3, 32, 32) tensor in [0, 1], and their labels."""
    import torch
    from datasets import load_dataset

    from dmae_hf import DMAEImageProcessor

    ds = load_dataset(root, split="test").select(range(start, start + count))
    images = DMAEImageProcessor.for_cifar10()(list(ds["img"]), return_tensors="pt").pixel_values
    return images, torch.tensor(ds["label"])


def choose_denoiser(args, out: Path) -> dict:
    """PSNR of D(x + noise) and the clean ViT's accuracy on it, per candidate, on test images 5000-5499."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from dmae_hf import SmoothedClassifier, smoothing
    from dmae_hf.smoothed_classifier import load_denoiser

    path = out / "denoisers.json"
    if path.exists():
        return json.loads(path.read_text())
    clean, labels = load_test_images(args.dataset, 5000, 500)
    noisy = smoothing.add_gaussian_noise(clean, args.sigma, torch.Generator().manual_seed(0))
    model = AutoModelForImageClassification.from_pretrained(args.classifier).eval()
    processor = AutoImageProcessor.from_pretrained(args.classifier)
    classify = SmoothedClassifier(model, sigma=args.sigma, image_processor=processor)

    def measure(images):
        with torch.no_grad():
            accuracy = (torch.cat([classify(b) for b in images.split(100)]).argmax(-1) == labels).float().mean()
        mse = ((images.clamp(0, 1) - clean) ** 2).mean(dim=(1, 2, 3))
        return {"psnr_db": float((10 * torch.log10(1 / mse)).mean()), "vit_accuracy": float(accuracy)}

    rows = {"clean image (no noise)": measure(clean), "noisy image (no denoiser)": measure(noisy)}
    for name, checkpoint in args.denoiser:
        denoiser = load_denoiser(checkpoint)
        with torch.no_grad():
            denoised = torch.cat([denoiser.denoise(b) for b in noisy.split(100)])
        rows[name] = {**measure(denoised), "checkpoint": checkpoint,
                      "norm_pix_loss": bool(denoiser.config.norm_pix_loss)}
    candidates = [name for name, _ in args.denoiser]
    best = max(candidates, key=lambda name: rows[name]["vit_accuracy"])
    result = {"rows": rows, "chosen": best, "checkpoint": rows[best]["checkpoint"]}
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def show(cmd: list[str]) -> str:
    """A command as a user types it: `python`, paths relative to the current folder, a local dataset as $CIFAR10."""
    return " ".join(["python", *("$CIFAR10" if c in LOCAL_DATA else os.path.relpath(c) if os.path.isabs(c) else c
                                 for c in cmd[1:])])


def certify(out: Path, name: str, model_args: list[str], args) -> tuple[Path, list[str]]:
    log, cmd = certify_command(out, name, model_args, args)
    if not (log.exists() and len(log.read_text().splitlines()) > args.images):  # header + one row per image
        start = time.time()
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
    return log, cmd


def certify_command(out: Path, name: str, model_args: list[str], args) -> tuple[Path, list[str]]:
    log = out / f"{name}.tsv"
    cmd = [sys.executable, "-m", "dmae_hf", "certify", *model_args, "--dataset", args.dataset, "--split", "test",
           "--max", str(args.images), "--image-column", "img", "--n0", str(args.n0), "--n", str(args.n),
           "--alpha", str(args.alpha), "--batch", str(args.batch), "--seed", "0", "--method", args.method]
    if args.method == "adaptive":
        cmd += ["--target-radius", *(str(r) for r in RADII if r > 0)]
    if args.autocast:
        cmd += ["--autocast", args.autocast]
    cmd += ["--out", str(log)]
    return log, cmd


def autocast_agreement(args, out: Path) -> str:
    """bf16 vs fp32 certificates of the DMAE classifier on the first 20 images (n = 1,000, Cohen): how much the
    autocast changes f's votes."""
    from dmae_hf.certification.analysis import read_log

    logs = {}
    for dtype, autocast in (("fp32", None), ("bf16", "bf16")):
        check = argparse.Namespace(**{**vars(args), "images": 20, "n0": 100, "n": 1000, "method": "cohen",
                                      "autocast": autocast})
        log, _ = certify(out, f"agreement-{dtype}", ["--model", args.dmae_classifier], check)
        logs[dtype] = read_log(log)
    same = int((logs["fp32"]["predict"] == logs["bf16"]["predict"]).sum())
    gap = float(abs(logs["fp32"]["radius"] - logs["bf16"]["radius"]).max())
    speed = logs["fp32"]["time"].sum() / logs["bf16"]["time"].sum()
    return (f"bf16 against fp32 on the first 20 images (n0 = 100, n = 1,000, same seeds): the same prediction for "
            f"{same}/20, radii at most {gap:.4f} apart, and {speed:.2f}x the speed (this CPU has avx512_bf16).")


def first_rows(log: Path, images: int) -> Path:
    """A copy of `log` with the rows of images idx < `images` only (a log may hold more from a longer run)."""
    lines = log.read_text().splitlines()
    kept = [lines[0]] + [line for line in lines[1:] if int(line.split("\t", 1)[0]) < images]
    if len(kept) - 1 != images:
        raise ValueError(f"{log} has {len(kept) - 1} of the first {images} images: run the certification first.")
    copy = log.with_name(f"{log.stem}.first{images}.tsv")
    copy.write_text("\n".join(kept) + "\n")
    return copy


def report(args, out: Path, logs: dict, commands: dict, choice: dict) -> str:
    from dmae_hf.certification.analysis import analyze_logs, format_table, read_log

    plot = HERE / "certified_accuracy.png"
    logs = {name: first_rows(path, args.images) for name, path in logs.items()}
    results = analyze_logs([str(p) for p in logs.values()], radii=RADII, names=list(logs), plot=str(plot))
    seconds = {name: float(read_log(p)["time"].sum()) for name, p in logs.items()}
    lines = [
        "# Denoised smoothing with a DMAE denoiser (CIFAR-10, sigma = 0.25)",
        "",
        "Generated by `benchmarks/denoised_smoothing/run.py` (do not edit by hand):",
        "",
        "```bash",
        show(["python", "benchmarks/denoised_smoothing/run.py", *sys.argv[1:]]),
        "```",
        *([f"`$CIFAR10` is the local copy of CIFAR-10 (Hub layout) the run read; `--dataset {CIFAR10}` reads the "
           "Hub's."] if LOCAL_DATA else []),
        "",
        f"Certified accuracy (%) on the first {args.images} CIFAR-10 test images, with a 95% Clopper-Pearson "
        f"interval, and the average certified radius (ACR). Certification: n0 = {args.n0}, n = {args.n:,}, alpha = "
        f"{args.alpha}, sigma = {args.sigma}, radius in [0, 1] pixels at 32x32, "
        + ("Cohen et al.'s CERTIFY" if args.method == "cohen" else
           "the adaptive method (`--method adaptive --target-radius 0.25 0.5 0.75`: looks at 1,000, 2,000, 4,000, "
           "8,000 and 10,000 samples with the Clopper-Pearson bound at alpha / 5 each, stopping once 0.75 is "
           "certified or the next target is out of reach; every certificate still holds with probability 1 - alpha, "
           "but the ACR is lower than Cohen's, since a run that stops at a target reports that radius, not the "
           "largest one n samples would give)")
        + (", with f under bf16 autocast (the certificate is for that f; its agreement with fp32 and its speed are "
           "measured below)" if args.autocast else "") + ":",
        "",
        "- **clean-vit**: a transformers `ViTForImageClassification` (width 96, 4 blocks, 3 heads, patch 4: the "
        "tiny DMAE's shape) trained on clean CIFAR-10 only by `train_classifier.py`, certified as it is;",
        f"- **clean-vit+denoiser**: the same ViT behind the DMAE denoiser `{choice['chosen']}` (below): "
        "f(x~) = ViT(D(x~));",
        "- **dmae-tiny-cifar10**: the shipped DMAE classifier (DMAE pre-training, then fine-tuning on noisy images).",
        "",
        format_table(results),
        "",
        f"![certified accuracy]({plot.name})",
        "",
        "## Which denoiser, and how its pixels come back",
        "",
        "The decoder of a DMAE trained with `norm_pix_loss` predicts every patch standardised, so its output has no "
        "scale. Two ways back to pixels were measured, on 500 other test images (indices 5000-5499), one noisy copy "
        f"each at sigma = {args.sigma}: the ViT's accuracy on the denoised images (what the certificate rests on) "
        "and the PSNR against the clean image. The best accuracy is chosen.",
        "",
        "- **stats**: the DMAE pre-training checkpoint as it is (`norm_pix_loss=True`, trained at mask ratio 0.75); "
        "each patch's mean and variance are estimated from the noisy patch (mean; variance less the noise's), see "
        "`DMAEForPreTraining.denoise`;",
        "- **pixels**: the same weights fine-tuned as a denoiser: mask ratio 0 (every patch visible, as at "
        "certification) and the loss on the normalised pixels themselves (`--mask-ratio 0 --no-norm-pix-loss`).",
        "",
        "| input to the ViT | PSNR (dB) | ViT accuracy (%) |",
        "| --- | ---: | ---: |",
    ]
    for name, row in choice["rows"].items():
        mark = " (chosen)" if name == choice["chosen"] else ""
        lines.append(f"| {name}{mark} | {row['psnr_db']:.2f} | {100 * row['vit_accuracy']:.1f} |")
    if args.autocast:
        lines += ["", autocast_agreement(args, out)]
    lines += ["", "Certification time (s, sum of the per-image times in each log, on 2 CPU cores that other jobs "
              "shared during parts of the runs) and the mean number of samples drawn per image:", ""]
    lines += [f"- {name}: {seconds[name]:.0f} ({seconds[name] / args.images:.2f} per image), "
              f"{read_log(p)['samples'].mean():,.0f} samples per image" for name, p in logs.items()]
    lines += ["", "The trainings (from the repository root; `run.py` runs those whose output is missing):", "",
              "```bash", *(show(cmd) for cmd in args.training.values()), "```"]
    lines += ["", "The certification commands:", "", "```bash"]
    lines += [show(cmd) for cmd in commands.values()]
    lines += ["```", ""]
    lines += ["", ("The denoiser helps the clean ViT at every radius > 0 and in ACR" if helps(results) else
                   "The denoiser does not help the clean ViT at every radius > 0 and in ACR")
              + f", so `--ship` {'copies' if helps(results) else 'would not copy'} it into the package as "
              f"`{DENOISER}` (with the clean ViT as `{CLEAN_VIT}`).", ""]
    text = "\n".join(lines)
    (HERE / "README.md").write_text(text)
    return text, results


def helps(results) -> bool:
    """The denoiser helps when the ViT behind it certifies more at every radius > 0 and has a larger ACR."""
    rows = {row["name"]: row for row in results["rows"]}
    a, b = rows["clean-vit"], rows["clean-vit+denoiser"]
    return b["acr"] > a["acr"] and all(y > x for r, x, y in zip(
        results["radii"], a["certified_accuracy"], b["certified_accuracy"], strict=True) if r > 0)


def ship(args, results, choice, commands) -> list[str]:
    """Copy the chosen denoiser (as `dmae-tiny-cifar10-denoiser`) and the clean ViT into `dmae_hf/checkpoints/`,
    each with a card that gives the measured figures and how they were made."""
    import shutil

    import yaml

    from dmae_hf.configuration_dmae import DMAEConfig
    from dmae_hf.hub.model_card import render_model_card

    rows = {row["name"]: row for row in results["rows"]}
    shipped = []
    for name, source in ((DENOISER, Path(choice["checkpoint"])), (CLEAN_VIT, Path(args.classifier))):
        target = REPO / "dmae_hf" / "checkpoints" / name
        target.mkdir(parents=True, exist_ok=True)
        for file in SHIPPED_FILES:
            shutil.copyfile(source / file, target / file)
        for file in ("config.json", "preprocessor_config.json"):  # the package's classes load them: no remote code
            config = json.loads((target / file).read_text())
            config.pop("auto_map", None)
            (target / file).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        shipped.append(name)
    how = "\n".join(["```bash", *(show(cmd) for cmd in commands.values()), "```"])
    row = rows["clean-vit+denoiser"]
    card_results = {"radii": results["radii"], "envelope": None, "rows": [
        {**row, "name": f"in front of {CLEAN_VIT}, CIFAR-10 test, first {args.images} images, n={args.n:,}"}]}
    trained = "\n".join(["```bash", *(show(args.training[k]) for k in ("pretrain-dmae", "denoiser-pixels")), "```"])
    provenance = (f"`{choice['chosen']}` of `benchmarks/denoised_smoothing/README.md`: trained by the dmae-hf project "
                  "on the CIFAR-10 train split (its first 5,000 images held out) on 2 CPU cores, a DMAE pre-training "
                  "at sigma 0.25 and then a fine-tuning as a denoiser, and chosen on test images 5000-5499 (not the "
                  "certified ones):\n\n" + trained + "\n\nThe certified accuracies above are those of the clean ViT "
                  "behind it, from:\n\n" + how)
    target = REPO / "dmae_hf" / "checkpoints" / DENOISER
    card = render_model_card(DENOISER, DMAEConfig.from_pretrained(target), results=card_results,
                             provenance=provenance, from_official=False)
    (target / "README.md").write_text(card)

    vit = rows["clean-vit"]
    accuracy = (Path(args.classifier) / "training.txt").read_text().split("accuracy (10,000 images): ")[1].split()[0]
    meta = {"license": "apache-2.0", "library_name": "transformers", "pipeline_tag": "image-classification",
            "datasets": ["uoft-cs/cifar10"], "tags": ["vit", "cifar10", "dmae-hf", "denoised-smoothing"]}
    table = "\n".join([f"| | {' | '.join(f'r = {r:g}' for r in results['radii'])} | ACR |",
                        "|---" * (len(results["radii"]) + 2) + "|"] + [
        f"| {label} | {' | '.join(f'{100 * a:.1f}' for a in r['certified_accuracy'])} | {r['acr']:.3f} |"
        for label, r in (("alone", vit), (f"behind {DENOISER}", row))])
    (REPO / "dmae_hf" / "checkpoints" / CLEAN_VIT / "README.md").write_text(
        f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n# {CLEAN_VIT}\n\n"
        "A transformers `ViTForImageClassification` (width 96, 4 blocks, 3 heads, patch 4, 32x32 input) trained by "
        "dmae-hf on **clean** CIFAR-10 only (`benchmarks/denoised_smoothing/train_classifier.py`), shipped inside "
        "the package as the off-the-shelf classifier of its denoised-smoothing example: it is not robust to noise "
        f"by itself. Clean test accuracy (10,000 images): {float(accuracy):.1%}.\n\n"
        "```python\nfrom transformers import pipeline\n\nimport dmae_hf\nfrom dmae_hf.hub.names import packaged_path"
        f"\n\ncertifier = pipeline(\"certified-image-classification\", model=str(packaged_path(\"{CLEAN_VIT}\")),"
        f"\n                     denoiser=\"{DENOISER}\")  # sigma 0.25, the denoiser's\n```\n\n"
        f"Certified accuracy (%) at sigma {args.sigma} on the first {args.images} CIFAR-10 test images (n = "
        f"{args.n:,}, alpha = {args.alpha}, {args.method}, measured by `benchmarks/denoised_smoothing/run.py`):\n\n"
        f"{table}\n")
    return shipped


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--work", default="runs/denoised", help="folder of the trainings and the logs (from the "
                        "repository root)")
    parser.add_argument("--dmae-classifier", default="dmae-tiny-cifar10", help="the DMAE classifier of row (c)")
    parser.add_argument("--dataset", default=CIFAR10, help="CIFAR-10: a Hub id or the path of a local copy in the "
                        "Hub layout (default: %(default)s)")
    parser.add_argument("--images", type=int, default=500, help="first test images certified")
    parser.add_argument("--n0", type=int, default=100, help="selection samples")
    parser.add_argument("--n", type=int, default=10_000, help="estimation samples")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    parser.add_argument("--batch", type=int, default=1000, help="noisy samples per forward pass")
    parser.add_argument("--sigma", type=float, default=0.25, help="noise level")
    parser.add_argument("--method", choices=["cohen", "adaptive"], default="cohen",
                        help="adaptive: sequential looks with target radii 0.25, 0.5, 0.75 (stops early)")
    parser.add_argument("--autocast", choices=["bf16"], default=None, help="run f under bf16 autocast")
    parser.add_argument("--only", default=None, help="run only this certification (e.g. dmae-tiny-cifar10)")
    parser.add_argument("--report-only", action="store_true",
                        help="no certification: the table from the first --images rows of the existing logs")
    parser.add_argument("--ship", action="store_true",
                        help=f"when the denoiser helps, ship it ({DENOISER}) and the clean ViT ({CLEAN_VIT}) in "
                             "dmae_hf/checkpoints/ with cards")
    args = parser.parse_args(argv)
    if os.path.isdir(os.path.expanduser(args.dataset)):
        LOCAL_DATA.add(args.dataset)
    args.classifier = f"{args.work}/vit-clean"
    args.denoiser = [("stats", f"{args.work}/pretrain-dmae/final"), ("pixels", f"{args.work}/denoiser-pixels/final")]
    out = Path(args.work) / "benchmark"
    out.mkdir(parents=True, exist_ok=True)
    args.training = train(args) if not args.report_only else {
        name: [sys.executable, *cmd] for name, (_, cmd) in training(args.work, args.dataset).items()}
    runs = {"dmae-tiny-cifar10": lambda: ["--model", args.dmae_classifier],
            "clean-vit": lambda: ["--model", args.classifier, "--sigma", str(args.sigma)],
            "clean-vit+denoiser": lambda: ["--model", args.classifier, "--denoiser", choice["checkpoint"]]}
    if args.only is not None:  # one certification (the denoiser is chosen only when it is needed)
        if args.only not in runs:
            parser.error(f"--only takes one of {', '.join(runs)}")
        choice = choose_denoiser(args, out) if args.only == "clean-vit+denoiser" else None
        certify(out, args.only, runs[args.only](), args)
        return 0
    choice = choose_denoiser(args, out)
    print(json.dumps(choice, indent=1), flush=True)
    run = certify_command if args.report_only else certify  # --report-only: the logs as they are
    logs, commands = {}, {}
    for name, model_args in runs.items():
        logs[name], commands[name] = run(out, name, model_args(), args)
    text, results = report(args, out, logs, commands, choice)
    print(text)
    if args.ship:
        if helps(results):
            print("shipped:", ship(args, results, choice, commands))
        else:
            print("not shipped: the denoiser does not help the clean ViT at every radius")
    return 0

if __name__ == "__main__":
    sys.exit(main())
