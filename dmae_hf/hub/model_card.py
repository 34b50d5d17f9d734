# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Model cards (README.md with Hub YAML metadata) for DMAE checkpoints.

`render_model_card(name, config, results=None)` writes the card of one checkpoint: metadata (license, datasets, tags,
pipeline_tag, base_model, `model-index`), what the model is, how to use it, certified accuracy and a citation.
`results` is the dict of the analysis module (`{"radii": [...], "rows": [{"name", "certified_accuracy": [...],
"acr", "n_images"}], "envelope": [...] or None}`, certified accuracies as fractions in [0, 1]); its rows become
measured `model-index` entries. Paper numbers (Wu et al., ICLR 2023, arXiv v1 Tables 1 and 3, best over sigma) are
always labelled as such.

    python -m dmae_hf.hub.model_card --all --out model_cards/           # the cards of every released short name
    python -m dmae_hf.hub.model_card dmae-tiny-cifar10 --config-dir CKPT --results results.json --out CKPT
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
import yaml

from ..configuration_dmae import ARCHITECTURES, CIFAR10_LABELS, CIFAR10_MEAN, CIFAR10_STD, DMAEConfig
from ..modeling_dmae import DMAEForPreTraining, DMAEForSmoothedClassification
from . import names as hub_names

PAPER_URL = "https://arxiv.org/abs/2210.06983"
PAPER_SOURCE = "Wu et al., ICLR 2023, arXiv v1"
# Certified top-1 accuracy (%) at L2 radius r, best over sigma in {0.25, 0.5, 1.0} for each radius.
PAPER_IMAGENET = {  # Table 1
    "vit-base": {0.5: 69.6, 1.0: 57.9, 1.5: 47.8, 2.0: 35.4, 3.0: 22.5},
    "vit-large": {0.5: 73.6, 1.0: 64.6, 1.5: 53.7, 2.0: 41.5, 3.0: 27.5},
}
PAPER_CIFAR10 = {  # Table 3, DMAE ViT-B fine-tuned on CIFAR-10
    "DMAE ViT-B": {0.25: 79.2, 0.5: 64.6, 0.75: 47.3, 1.0: 36.1},
    "DMAE ViT-B + continued pre-training on CIFAR-10": {0.25: 80.8, 0.5: 67.1, 0.75: 49.7, 1.0: 37.7},
}
DATASETS = {"imagenet-1k": ("ILSVRC/imagenet-1k", "ImageNet-1k", "validation"),
            "cifar10": ("uoft-cs/cifar10", "CIFAR-10", "test")}
CITATION = """@inproceedings{wu2023dmae,
  title     = {Denoising Masked Autoencoders Help Robust Classification},
  author    = {Wu, Quanlin and Ye, Hang and Gu, Yuntian and Zhang, Huishuai and Wang, Liwei and He, Di},
  booktitle = {The Eleventh International Conference on Learning Representations (ICLR)},
  year      = {2023},
  url       = {https://arxiv.org/abs/2210.06983}
}

@inproceedings{cohen2019certified,
  title     = {Certified Adversarial Robustness via Randomized Smoothing},
  author    = {Cohen, Jeremy and Rosenfeld, Elan and Kolter, Zico},
  booktitle = {Proceedings of the 36th International Conference on Machine Learning (ICML)},
  year      = {2019}
}"""


def default_config(name: str) -> DMAEConfig:
    """The config of a released short name (architecture, normalisation, labels, sigma), without weights."""
    entry = hub_names.SHORT_NAMES[name]
    kwargs = {}
    if entry.dataset == "cifar10":
        kwargs.update(image_mean=CIFAR10_MEAN, image_std=CIFAR10_STD)
        labels = CIFAR10_LABELS
    else:
        labels = [f"LABEL_{i}" for i in range(1000)]
    if entry.kind == "classifier":
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)), smoothing_sigma=entry.sigma)
    return DMAEConfig.from_preset(entry.preset, **kwargs)


def _entry(name: str, config: DMAEConfig) -> hub_names.ReleasedModel:
    """The table entry, or one inferred from the config for names outside the table."""
    if name in hub_names.SHORT_NAMES:
        return hub_names.SHORT_NAMES[name]
    classifier = bool(config.architectures and "Classification" in config.architectures[0])
    dataset = "cifar10" if list(config.image_mean) == list(CIFAR10_MEAN) else "imagenet-1k"
    preset = _preset_of(config) or "custom"
    return hub_names.ReleasedModel(name, "classifier" if classifier else "pretraining", preset, dataset,
                                   config.smoothing_sigma if classifier else None,
                                   from_official=preset in ARCHITECTURES and ARCHITECTURES[preset].official)


def _num_parameters(config: DMAEConfig, classifier: bool) -> int:
    with torch.device("meta"):
        model = (DMAEForSmoothedClassification if classifier else DMAEForPreTraining)(config)
    return sum(p.numel() for p in model.parameters())


def _paper_rows(entry) -> tuple[str, dict[str, dict[float, float]]] | None:
    """(table caption, {row name: {radius: accuracy %}}) of the paper table that applies, if any."""
    if entry.dataset == "imagenet-1k" and entry.preset in PAPER_IMAGENET:
        title = ARCHITECTURES[entry.preset].title
        return ("ImageNet-1k, Table 1", {f"DMAE {title} (paper)": PAPER_IMAGENET[entry.preset]})
    if entry.dataset == "cifar10" and entry.preset == "vit-base":
        return ("CIFAR-10, Table 3", {f"{k} (paper)": v for k, v in PAPER_CIFAR10.items()})
    return None


def _model_index(name: str, entry, results: dict | None) -> list[dict] | None:
    hub_id, dataset_name, split = DATASETS[entry.dataset]
    task = {"type": "image-classification", "name": "Certified image classification (L2, randomized smoothing)"}
    dataset = {"type": hub_id, "name": dataset_name, "split": split}
    entries = []
    paper = _paper_rows(entry)
    if paper is not None and entry.kind == "classifier":
        caption, rows = paper
        first_row = next(iter(rows.values()))
        entries.append({"task": task, "dataset": dataset, "metrics": [
            {"type": "certified-accuracy", "name": f"Certified accuracy at r={r} (paper, best over sigma)",
             "value": v, "verified": False} for r, v in first_row.items()],
            "source": {"name": f"{PAPER_SOURCE}, {caption} (paper numbers, not measured on these weights)",
                       "url": PAPER_URL}})
    for row in (results or {}).get("rows", []):
        metrics = [{"type": "certified-accuracy", "name": f"Certified accuracy at r={r} ({row['name']})",
                    "value": round(100 * acc, 1), "verified": False}
                   for r, acc in zip(results["radii"], row["certified_accuracy"], strict=True)]
        if row.get("acr") is not None:
            metrics.append({"type": "average-certified-radius", "name": f"ACR ({row['name']})",
                            "value": round(float(row["acr"]), 3), "verified": False})
        entries.append({"task": task, "dataset": dataset, "metrics": metrics})  # measured here: no external source
    return [{"name": name, "results": entries}] if entries else None


def _metadata(name: str, entry, config: DMAEConfig, results: dict | None, namespace: str) -> dict:
    datasets = ["ILSVRC/imagenet-1k"] + (["uoft-cs/cifar10"] if entry.dataset == "cifar10" else [])
    if entry.preset in ARCHITECTURES and not ARCHITECTURES[entry.preset].official:  # CPU-sized: CIFAR-10 only
        datasets = ["uoft-cs/cifar10"]
    meta = {
        "license": "cc-by-nc-4.0" if entry.from_official else "apache-2.0",
        "library_name": "transformers",
        "pipeline_tag": entry.pipeline_tag,
        "tags": ["dmae", "vision", "vit", "masked-autoencoder", "denoising", "certified-robustness",
                 "randomized-smoothing", "adversarial-robustness", "dmae-hf"],
        "datasets": datasets,
    }
    if entry.kind == "classifier" and entry.from_official:
        released = entry.preset in ARCHITECTURES and ARCHITECTURES[entry.preset].stem  # else fine-tuned from ViT-B
        meta["base_model"] = f"{namespace}/dmae-vit-{released or ARCHITECTURES['vit-base'].stem}"
    model_index = _model_index(name, entry, results)
    if model_index:
        meta["model-index"] = model_index
    return meta


def _preset_of(config: DMAEConfig) -> str | None:
    """The preset whose encoder (width, depth, patch) `config` has, if any."""
    for name in ARCHITECTURES:
        preset = DMAEConfig.from_preset(name)
        if (preset.hidden_size, preset.num_hidden_layers, preset.patch_size) == (
                config.hidden_size, config.num_hidden_layers, config.patch_size):
            return name
    return None


def _architecture(entry, config: DMAEConfig) -> str:
    classifier = entry.kind == "classifier"
    size, preset = config.image_size, _preset_of(config)
    rows = [
        ("Architecture", f"{ARCHITECTURES[preset].title if preset else 'ViT'} encoder: width {config.hidden_size}, "
                         f"{config.num_hidden_layers} blocks, {config.num_attention_heads} heads, patch "
                         f"{config.patch_size}, {size}x{size} input, LayerNorm eps {config.layer_norm_eps:g}"),
        ("Parameters", f"{_num_parameters(config, classifier) / 1e6:.1f}M"),
    ]
    if classifier:
        rows.append(("Head", f"mean of the patch tokens -> LayerNorm -> linear, {config.num_labels} classes"))
        rows.append(("Smoothing noise", f"sigma = {config.smoothing_sigma} (in [0, 1] pixel units)"))
    else:
        rows.append(("Decoder", f"width {config.decoder_hidden_size}, {config.decoder_num_hidden_layers} blocks, "
                                f"{config.decoder_num_attention_heads} heads"))
        loss = "normalised-pixel loss" if config.norm_pix_loss else "pixel loss (mean/std-normalised image)"
        patches = "all patches" if config.loss_on_all_patches else "the masked patches"
        rows.append(("Pre-training", f"Gaussian noise sigma {config.noise_sigma}, mask ratio {config.mask_ratio}, "
                                    f"{loss} on {patches}"))
    stats = "CIFAR-10" if list(config.image_std) == list(CIFAR10_STD) else "ImageNet"
    rows.append(("Input", f"RGB pixels in [0, 1]; the model resizes to {size}x{size} (bicubic) and normalises with "
                          f"the {stats} mean/std itself, so noise is added in [0, 1] pixel space"))
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _usage(name: str, entry, config: DMAEConfig) -> str:
    if entry.kind == "classifier":
        n = 100_000 if entry.dataset == "cifar10" else 10_000
        return f'''```python
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

import dmae_hf  # registers the DMAE classes and the dmae-* short names with transformers

processor = AutoImageProcessor.from_pretrained("{name}")
model = AutoModelForImageClassification.from_pretrained("{name}").eval()
pixel_values = processor(Image.open("image.jpg"), return_tensors="pt").pixel_values  # [0, 1], not normalised
# Cohen et al.'s CERTIFY: n0 samples to pick the class, n to bound its probability (the paper's n for this dataset)
certificate = model.certify(pixel_values[0], n0=100, n={n:_}, alpha=0.001, batch_size=200)
if certificate.prediction is None:
    print("abstain")
else:
    print(model.config.id2label[certificate.prediction], "certified L2 radius", round(certificate.radius, 3))
```'''
    masking = (f"masks {config.mask_ratio:.0%} of the patches" if config.mask_ratio else
               "keeps every patch (mask ratio 0)")
    return f'''```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForPreTraining

import dmae_hf  # registers the DMAE classes and the dmae-* short names with transformers

processor = AutoImageProcessor.from_pretrained("{name}")
model = AutoModelForPreTraining.from_pretrained("{name}").eval()
pixel_values = processor(Image.open("image.jpg"), return_tensors="pt").pixel_values  # [0, 1], not normalised
with torch.no_grad():
    outputs = model(pixel_values)  # adds N(0, sigma^2) noise, {masking}, reconstructs the clean image
    features = model.dmae(pixel_values).last_hidden_state  # encoder features of the clean image, all patches
print(float(outputs.loss), tuple(outputs.logits.shape), tuple(features.shape))
```'''


def _denoiser_note(name: str, config: DMAEConfig) -> str:
    if not config.noise_sigma:
        return ("This model was pre-trained without noise (an MAE), so it cannot serve as a denoiser for denoised "
                "smoothing.\n")
    return (f"**As a denoiser** in front of any image classifier (denoised smoothing): "
            f'`pipeline("certified-image-classification", model="<your classifier>", denoiser="{name}")` or '
            f"`dmae certify --model <your classifier> --denoiser {name}`. It was trained to remove Gaussian noise of "
            f"sigma {config.noise_sigma} ([0, 1] pixels), so it serves sigma {config.noise_sigma} only (another sigma "
            f"is refused), at {config.image_size}x{config.image_size}.\n")


def _paper_section(entry) -> str:
    paper = _paper_rows(entry)
    if paper is None:
        return ""
    caption, rows = paper
    radii = list(next(iter(rows.values())))
    lines = [f"| Model | {' | '.join(f'r = {r}' for r in radii)} |", "|---" * (len(radii) + 1) + "|"]
    lines += [f"| {row} | {' | '.join(f'{acc:.1f}' for acc in accs.values())} |" for row, accs in rows.items()]
    who = ("DMAE classifiers of this architecture (this recipe at sigma 0.25, 0.5 and 1.0)" if entry.kind ==
           "classifier" else "classifiers fine-tuned from this encoder")
    return (f"### Paper numbers ({PAPER_SOURCE}, {caption})\n\nCertified top-1 accuracy (%) of {who} at L2 radius "
            "r, reported by the authors as the **best over sigma in {0.25, 0.5, 1.0}** for each radius (not "
            "per-sigma), with the official code. They were **not** measured on the weights of this repository.\n\n"
            + "\n".join(lines) + "\n")


def _results_section(results: dict | None) -> str:
    if not results or not results.get("rows"):
        return "### Measured on these weights\n\nNot yet measured.\n"
    radii = results["radii"]
    lines = [f"| Run | images | {' | '.join(f'r = {r:g}' for r in radii)} | ACR |",
             "|---" * (len(radii) + 3) + "|"]
    for row in results["rows"]:
        accs = " | ".join(f"{100 * a:.1f}" for a in row["certified_accuracy"])
        acr = "" if row.get("acr") is None else f"{float(row['acr']):.3f}"
        lines.append(f"| {row['name']} | {row.get('n_images', '')} | {accs} | {acr} |")
    if results.get("envelope"):
        envelope = " | ".join(f"{100 * a:.1f}" for a in results["envelope"])
        lines.append(f"| envelope (best run per radius) | | {envelope} | |")
    return ("### Measured on these weights\n\nCertified accuracy (%) at L2 radius r, measured with dmae-hf's "
            "CERTIFY on this checkpoint.\n\n" + "\n".join(lines) + "\n")


def _provenance(entry) -> str:
    if not entry.from_official:
        return ("Trained by the dmae-hf project with its own scripts (`examples/pretrain.py`, then "
                "`examples/finetune.py`); see the package README for the exact commands and the reproduction report.")
    if entry.kind == "pretraining":
        epochs = 1100 if entry.preset == "vit-base" else 1600
        size = "Base" if entry.preset == "vit-base" else "Large"
        return (f"Converted with `dmae convert` from the official DMAE-{size} pre-training checkpoint "
                f"({epochs} epochs on ImageNet-1k, released by the authors at "
                "https://github.com/quanlin-wu/dmae). The converter is checked against an independent "
                "re-implementation of the official forward pass (max abs difference <= 1e-5 on random weights).")
    return ("The authors did not release fine-tuned classifiers (issue #6 of quanlin-wu/dmae). These weights are "
            f"meant to be fine-tuned from the official pre-trained encoder with the paper's recipe (Gaussian noise "
            f"sigma={entry.sigma}, consistency regularisation) using `examples/finetune.py`, or converted with "
            "`dmae convert --sigma ...` from a classifier trained with the official code.")


def render_model_card(name: str, config: DMAEConfig, results: dict | None = None, *, namespace: str | None = None,
                      status: str | None = None, provenance: str | None = None,
                      from_official: bool | None = None) -> str:
    """The README.md (YAML front matter + markdown) of checkpoint `name` with `config`.

    `results`: the analysis dict (see the module docstring) measured on these weights, or None. `namespace`: the Hub
    namespace used in `base_model` (default `hub_names.namespace()`). `status`, `provenance`: override the status
    line and the "How the weights were obtained" text. `from_official`: whether the weights derive from the official
    (CC-BY-NC-4.0) ones; by default, from the short-name table, or guessed from the architecture for other names.
    """
    namespace = namespace or hub_names.namespace()
    entry = _entry(name, config)
    if from_official is not None:
        entry = dataclasses.replace(entry, from_official=from_official)
    meta = _metadata(name, entry, config, results, namespace)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    if status is None:
        status = ("**Status: not yet published or validated.** This card describes a planned release; the weights "
                  "and the certified accuracies below have not been produced or checked on this repository yet."
                  if not results else "Measured results below come from this repository's weights.")
    license_note = ("CC-BY-NC-4.0, as the official DMAE weights they derive from (non-commercial use only). The "
                    "dmae-hf code is Apache-2.0." if entry.from_official else
                    "Apache-2.0 (weights trained by the dmae-hf project).")
    description = entry.description or ("DMAE classifier" if entry.kind == "classifier" else "DMAE pre-trained model")
    sections = [
        f"---\n{front}---\n",
        f"# {name}\n",
        f"> {status}\n",
        f"{description}\n",
        "DMAE (Denoising Masked Autoencoders, Wu et al., ICLR 2023) pre-trains a ViT to reconstruct clean images "
        "from Gaussian-noised and 75%-masked ones; fine-tuned on noisy images, the encoder is the base classifier f "
        "of a randomized-smoothing classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c), whose prediction is "
        "certified constant within an L2 radius R = sigma * PhiInv(pA_lower) (Cohen et al., 2019).\n",
        "## Model details\n",
        _architecture(entry, config) + "\n",
        "## Usage\n",
        _usage(name, entry, config) + "\n",
        _denoiser_note(name, config) if entry.kind == "pretraining" else "",
        "`dmae-*` short names resolve to Hub repositories after `import dmae_hf`; the full repository id works "
        "too, and without dmae-hf installed `trust_remote_code=True` loads the model code stored in the "
        "repository.\n",
        "## Certified accuracy\n",
        _paper_section(entry),
        _results_section(results),
        "## How the weights were obtained\n",
        (provenance or _provenance(entry)) + "\n",
        "## License\n",
        license_note + "\n",
        "## Citation\n",
        f"```bibtex\n{CITATION}\n```\n",
    ]
    return "\n".join(s for s in sections if s)


def write_all_cards(out_dir, namespace: str = hub_names.DEFAULT_NAMESPACE) -> list[Path]:
    """Render the card of every released short name (no measured results) into `out_dir/<name>.md`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, entry in hub_names.SHORT_NAMES.items():
        if not entry.from_official:  # the embedded model's card is written with its measured results
            continue
        path = out_dir / f"{name}.md"
        path.write_text(render_model_card(name, default_config(name), namespace=namespace), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dmae_hf.hub.model_card", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", help="checkpoint name (a short name or any repository name)")
    parser.add_argument("--all", action="store_true", help="write the card of every released short name")
    parser.add_argument("--out", required=True, help="output directory (--all) or README.md directory/path")
    parser.add_argument("--config-dir", help="checkpoint directory whose config.json describes the model")
    parser.add_argument("--results", help="JSON file with the analysis results of this checkpoint")
    parser.add_argument("--namespace", default=None, help=f"Hub namespace (default ${hub_names.NAMESPACE_ENV} or "
                                                          f"{hub_names.DEFAULT_NAMESPACE})")
    args = parser.parse_args(argv)
    if args.all:
        for path in write_all_cards(args.out, args.namespace or hub_names.DEFAULT_NAMESPACE):
            print(path)
        return 0
    if not args.name:
        parser.error("give a checkpoint name or --all")
    if args.config_dir:
        config = DMAEConfig.from_pretrained(args.config_dir)
    elif args.name in hub_names.SHORT_NAMES:
        config = default_config(args.name)
    else:
        parser.error(f"{args.name!r} is not a short name: pass --config-dir")
    results = json.loads(Path(args.results).read_text()) if args.results else None
    out = Path(args.out)
    out = out / "README.md" if out.is_dir() or not out.suffix else out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_model_card(args.name, config, results, namespace=args.namespace), encoding="utf-8")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
