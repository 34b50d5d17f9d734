# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Short names of the released DMAE checkpoints and their resolution to Hub repository ids.

`DMAEForPreTraining.from_pretrained("dmae-vit-base")` loads `f"{namespace}/dmae-vit-base"`, where the namespace is
`$DMAE_HF_NAMESPACE` (default `"dmae-hf"`), read at each resolution. `dmae-tiny-cifar10` resolves to the copy shipped
inside the package when there is one.

How: `import dmae_hf` calls `install_short_name_hook()`, which wraps `transformers.utils.hub.cached_files`, the one
function through which transformers fetches every file of a model repository (configs, weights, processor configs,
remote code; `cached_file` delegates to it). The wrapper maps a known short name to its repository id (or packaged
directory) and leaves everything else untouched: repo ids with a "/", existing local paths, and names that do not
start with "dmae-". An unknown name that looks like a short name (`dmae-...`, no "/") raises a `ValueError` listing
the known ones. The commit pinning of `from_pretrained` (`resolve_revision` of transformers' shared `HfApi` client) is
wrapped the same way, so no request ever goes out with a bare short name. Because both sit below `from_pretrained`,
they serve every class at once: the DMAE classes, `AutoConfig`, `AutoModel*`, `AutoImageProcessor` and `pipeline(...)`.
"""

import functools
import os
from dataclasses import dataclass
from pathlib import Path

NAMESPACE_ENV = "DMAE_HF_NAMESPACE"
DEFAULT_NAMESPACE = "dmae-hf"
SHORT_NAME_PREFIX = "dmae-"
PACKAGED_CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


@dataclass(frozen=True)
class ReleasedModel:
    """One entry of the short-name table.

    kind: "pretraining" (`DMAEForPreTraining`) or "classifier" (`DMAEForSmoothedClassification`).
    preset: architecture (`DMAEConfig.from_preset` name). dataset: "imagenet-1k" or "cifar10" (data the classifier
    was fine-tuned on, or the pre-training data). sigma: smoothing noise level of a classifier.
    from_official: weights derived from the official DMAE release (hence CC-BY-NC-4.0).
    """

    name: str
    kind: str
    preset: str
    dataset: str
    sigma: float | None = None
    from_official: bool = True
    description: str = ""

    @property
    def pipeline_tag(self) -> str:
        return "image-classification" if self.kind == "classifier" else "image-feature-extraction"


def _table() -> dict[str, ReleasedModel]:
    arch = {"vit-base": ("base", "ViT-B/16"), "vit-large": ("large", "ViT-L/16")}
    models = []
    for preset, (short, title) in arch.items():
        models.append(ReleasedModel(
            f"dmae-vit-{short}", "pretraining", preset, "imagenet-1k",
            description=f"DMAE {title} encoder and decoder, pre-trained on ImageNet-1k with Gaussian noise "
                        "(sigma 0.25) and 75% masking."))
    for preset, (short, title) in arch.items():
        for sigma in (0.25, 0.5, 1.0):
            models.append(ReleasedModel(
                f"dmae-vit-{short}-sigma{sigma}", "classifier", preset, "imagenet-1k", sigma,
                description=f"DMAE {title} fine-tuned on ImageNet-1k with Gaussian noise sigma={sigma}: the base "
                            f"classifier of a smoothed classifier certified at sigma={sigma}."))
    for sigma in (0.25, 0.5, 1.0):
        models.append(ReleasedModel(
            f"dmae-vit-base-cifar10-sigma{sigma}", "classifier", "vit-base", "cifar10", sigma,
            description=f"DMAE ViT-B/16 transferred to CIFAR-10 (32x32 images upsampled to 224 inside the model), "
                        f"fine-tuned with Gaussian noise sigma={sigma}."))
    models.append(ReleasedModel(
        "dmae-tiny-cifar10", "classifier", "tiny", "cifar10", 0.25, from_official=False,
        description="A tiny DMAE (ViT width 96, 4 blocks, 3 heads, patch 4, native 32x32 input) pre-trained and "
                    "fine-tuned on CIFAR-10 by this project, small enough to ship inside the package for offline "
                    "demos and tests."))
    return {m.name: m for m in models}


SHORT_NAMES: dict[str, ReleasedModel] = _table()


def namespace() -> str:
    """The Hub namespace (user or organisation) of the released checkpoints: `$DMAE_HF_NAMESPACE` or "dmae-hf"."""
    return os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE


def repo_id(name: str) -> str:
    """The Hub repository id of a short name, `f"{namespace()}/{name}"`."""
    if name not in SHORT_NAMES:
        raise UnknownShortNameError(unknown_name_message(name))
    return f"{namespace()}/{name}"


def packaged_path(name: str) -> Path | None:
    """The checkpoint directory shipped inside the package for `name`, if it exists (it must hold config.json)."""
    path = PACKAGED_CHECKPOINTS / name
    return path if (path / "config.json").is_file() else None


def looks_like_short_name(name) -> bool:
    return isinstance(name, str) and name.startswith(SHORT_NAME_PREFIX) and "/" not in name and "\\" not in name


class UnknownShortNameError(ValueError, OSError):
    """A "dmae-..." name that is not in the table. Both a `ValueError` (bad argument) and an `OSError`, so that
    transformers' loaders, which re-word other exceptions from `cached_file`, pass its message through."""


def unknown_name_message(name: str) -> str:
    return (f"Unknown DMAE short name {name!r}. Known short names: {', '.join(SHORT_NAMES)}. Pass a Hub repository "
            "id ('namespace/name') or a local directory for other checkpoints.")


def resolve(name_or_path):
    """Map a short name to what transformers should load; return anything else unchanged.

    - an existing local path, a repo id with a namespace, or a name not starting with "dmae-": unchanged;
    - a known short name: its packaged directory (only `dmae-tiny-cifar10` has one) or `f"{namespace()}/{name}"`;
    - any other "dmae-..." name without "/": `UnknownShortNameError` (a `ValueError`) listing the known names.
    """
    if isinstance(name_or_path, os.PathLike):
        return name_or_path
    if not looks_like_short_name(name_or_path) or os.path.exists(name_or_path):
        return name_or_path
    if name_or_path not in SHORT_NAMES:
        raise UnknownShortNameError(unknown_name_message(name_or_path))
    local = packaged_path(name_or_path)
    return str(local) if local is not None else repo_id(name_or_path)


def install_short_name_hook() -> None:
    """Make every transformers loader resolve short names (idempotent).

    Wraps `transformers.utils.hub.cached_files` (all file fetches; `cached_file` delegates to it) and the
    `resolve_revision` method of transformers' shared `HfApi` client (`transformers.utils.hub.hf_api()`), which
    each `from_pretrained`/`pipeline` calls once to pin the commit before fetching files.
    """
    from transformers.utils import hub

    if not getattr(hub.cached_files, "_dmae_short_names", False):
        original_files = hub.cached_files

        @functools.wraps(original_files)
        def cached_files(path_or_repo_id, *args, **kwargs):
            return original_files(resolve(path_or_repo_id), *args, **kwargs)

        cached_files._dmae_short_names = True
        hub.cached_files = cached_files

    api = hub.hf_api()
    if not getattr(api.resolve_revision, "_dmae_short_names", False):
        original_revision = api.resolve_revision

        @functools.wraps(original_revision)
        def resolve_revision(repo_id, **kwargs):
            target = resolve(repo_id)
            if target != repo_id and os.path.isdir(target):  # a packaged checkpoint: no revision to resolve
                return kwargs.get("revision")
            return original_revision(target, **kwargs)

        resolve_revision._dmae_short_names = True
        api.resolve_revision = resolve_revision


__all__ = ["SHORT_NAMES", "ReleasedModel", "namespace", "repo_id", "resolve", "packaged_path",
           "install_short_name_hook", "UnknownShortNameError", "NAMESPACE_ENV", "DEFAULT_NAMESPACE"]
