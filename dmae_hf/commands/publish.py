"""`dmae publish`: convert official DMAE release files and upload each to `$DMAE_HF_NAMESPACE/<short name>`.

A file is recognised by its contents, not its name (the release gives none): the official pre-training layout with the
ViT-B/16 or ViT-L/16 encoder is `dmae-vit-base` / `dmae-vit-large`; an official global-pool classifier of those
architectures is `dmae-vit-{base,large}-sigma{s}` (1000 classes) or `dmae-vit-base-cifar10-sigma{s}` (10 classes),
with its sigma taken from the `args` the official scripts save, or from a `sigma<s>` in the file name, or from an
explicit `FILE=SHORT_NAME`. Every file is recognised before anything is converted or uploaded; an unrecognised one
stops the run (or, with `--skip-unrecognised`, is skipped) with the reason.
"""

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

_SIGMA_IN_NAME = re.compile(r"sigma[_=-]?(0\.25|0\.5|1\.0|1)(?!\d)")


@dataclass
class Plan:
    """One release file and the short name it publishes as, with the `convert` options that make it."""

    path: Path
    name: str
    options: dict = field(default_factory=dict)


class UnrecognisedFile(ValueError):
    """A file `dmae publish` does not recognise as an official DMAE release file (the message says why)."""


def _read(path: Path):
    """(state dict, training args or None) of a checkpoint file, through the converter's safe loaders."""
    from ..hub.checkpoint_files import load_checkpoint, torch_load

    if path.suffix == ".safetensors" or path.is_dir() or not path.exists():
        return load_checkpoint(path)[0], None
    raw = torch_load(path)
    args = raw.get("args") if isinstance(raw, dict) else None
    state = raw["model"] if isinstance(raw, dict) and isinstance(raw.get("model"), dict) else raw
    if not isinstance(state, dict) or not state or not all(hasattr(v, "shape") for v in state.values()):
        raise UnrecognisedFile("not a state dict of tensors")
    return state, args


def recognise(path, name: str | None = None) -> Plan:
    """The short name and `convert` options of official release file `path`, or `UnrecognisedFile` saying why.
    `name`: the short name the caller says the file is (checked against the contents)."""
    from ..configuration_dmae import DMAEConfig
    from ..hub import names as hub_names
    from ..hub.convert import CheckpointError, detect_layout, infer_architecture, rename_official

    path = Path(path)
    if name is not None and (name not in hub_names.SHORT_NAMES or not hub_names.SHORT_NAMES[name].from_official):
        official = [n for n, e in hub_names.SHORT_NAMES.items() if e.from_official]
        raise UnrecognisedFile(f"{name!r} is not the short name of an official release; use one of {official}")
    try:
        state, args = _read(path)
        layout = detect_layout(state)
        if layout == "vit-mae":
            raise UnrecognisedFile("a transformers ViTMAE checkpoint, not an official DMAE release file (use "
                                   "`dmae convert ... --push-to-hub REPO`)")
        arch = infer_architecture(rename_official(state)[0], num_heads=1, decoder_num_heads=1)  # shapes only
    except CheckpointError as e:
        raise UnrecognisedFile(str(e).splitlines()[0]) from e

    presets = sorted({e.preset for e in hub_names.SHORT_NAMES.values() if e.from_official})
    fields = ("hidden_size", "num_hidden_layers", "patch_size", "image_size")
    preset = next((p for p in presets if all(getattr(DMAEConfig.from_preset(p), f) == arch[f] for f in fields)), None)
    if preset is None:
        shape = ", ".join(f"{f} {arch[f]}" for f in fields)
        raise UnrecognisedFile(f"its encoder ({shape}) is none of the released architectures {presets}")
    if layout == "pretraining":
        found, options = f"dmae-{preset}", {"preset": preset}
    else:
        if "head.weight" not in state:
            raise UnrecognisedFile("a classifier checkpoint without head.weight")
        classes = state["head.weight"].shape[0]
        dataset = {1000: "imagenet-1k", 10: "cifar10"}.get(classes)
        sigma = hub_names.SHORT_NAMES[name].sigma if name else getattr(args, "sigma", None)
        hit = _SIGMA_IN_NAME.search(path.name)
        if sigma is None and hit:
            sigma = float(hit.group(1))
        if sigma is None:
            raise UnrecognisedFile("a classifier whose sigma is neither in its saved args nor in its file name "
                                   "(sigma0.25, ...): pass FILE=<short name>")
        found = next((n for n, e in hub_names.SHORT_NAMES.items() if e.from_official and e.kind == "classifier"
                      and e.preset == preset and e.dataset == dataset and e.sigma == float(sigma)), None)
        if found is None:
            raise UnrecognisedFile(f"a {preset} classifier with {classes} classes at sigma={sigma}, which is not a "
                                   "released model")
        options = {"preset": preset, "sigma": float(sigma),
                   "normalization": "cifar10" if dataset == "cifar10" else "imagenet"}
    if name is not None and name != found:
        raise UnrecognisedFile(f"it holds {found}, not {name}")
    return Plan(path, found, options)


def register(subparsers):
    parser = subparsers.add_parser(
        "publish",
        help="convert official DMAE release files and upload each under its short name",
        description="Convert the official DMAE release files (the DMAE-Base / DMAE-Large pre-training checkpoints, "
        "and fine-tuned classifiers trained with the official code) with `dmae convert` and upload each, with its "
        "generated model card, to $DMAE_HF_NAMESPACE/<short name>. Files are recognised by their contents; all are "
        "checked before anything is uploaded.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE[=SHORT_NAME]",
                        help="release file (.pth); '=SHORT_NAME' names what it holds (checked), e.g. for a "
                        "classifier whose sigma is neither in its saved args nor in its file name")
    parser.add_argument("--work-dir", default="dmae-publish",
                        help="directory for the converted checkpoints, one sub-directory per short name")
    parser.add_argument("--dry-run", action="store_true",
                        help="recognise the files and print what would be uploaded where; convert and upload nothing")
    parser.add_argument("--skip-unrecognised", action="store_true",
                        help="publish the recognised files and skip the others (without it, any unrecognised file "
                        "stops the run before anything is uploaded)")
    parser.add_argument("--private", action="store_true", help="create the Hub repositories as private")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..hub import names as hub_names
    from ..hub.convert import convert

    plans, refused = [], []
    for item in args.files:
        path, _, name = item.partition("=") if not Path(item).exists() else (item, "", "")
        try:
            plans.append(recognise(path, name or None))
        except UnrecognisedFile as e:
            refused.append(f"{path}: {e}")
    taken = {}
    for plan in plans:
        if plan.name in taken:
            refused.append(f"{plan.path}: holds {plan.name}, like {taken[plan.name]}")
        taken.setdefault(plan.name, plan.path)
    plans = [p for p in plans if taken[p.name] == p.path]
    if refused and not args.skip_unrecognised:
        raise UnrecognisedFile(f"not publishing anything: {len(refused)} file(s) not recognised as official DMAE "
                               f"release files: {'; '.join(refused)}. Pass --skip-unrecognised to publish the others.")
    for reason in refused:
        print(f"dmae publish: skipped {reason}", file=sys.stderr)
    if not plans:
        raise UnrecognisedFile("no file to publish.")
    if not args.dry_run:  # fail at once (no retries) when nothing can be uploaded
        from ..hub.reach import require_hub

        require_hub("Publishing", "Unset HF_HUB_OFFLINE or connect to publish, or pass --dry-run to check the files.")
    for plan in plans:
        repo = hub_names.repo_id(plan.name)
        if args.dry_run:
            print(f"would publish {plan.path} as {repo} ({', '.join(f'{k}={v}' for k, v in plan.options.items())})")
            continue
        model = convert(plan.path, Path(args.work_dir) / plan.name, name=plan.name, push_to_hub=plan.name,
                        private=args.private, **plan.options)
        params = sum(p.numel() for p in model.parameters())
        print(f"published {plan.path} as {repo} ({type(model).__name__}, {params / 1e6:.2f}M parameters)")
    return 0
