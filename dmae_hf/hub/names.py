# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Short names of the released DMAE checkpoints and their resolution to Hub repository ids.

`DMAEForPreTraining.from_pretrained("dmae-vit-base")` loads `f"{namespace}/dmae-vit-base"`, where the namespace is
`$DMAE_HF_NAMESPACE` (default `"dmae-hf"`), read at each resolution. `dmae-tiny-cifar10` and
`dmae-tiny-cifar10-denoiser` resolve to the copies shipped inside the package when they are there.

How: `import dmae_hf` calls `install_short_name_hook()`, which wraps `transformers.utils.hub.cached_files`, the one
function through which transformers fetches every file of a model repository (configs, weights, processor configs,
remote code; `cached_file` delegates to it). The wrapper maps a known short name to its repository id (or packaged
directory) and leaves everything else untouched: repo ids with a "/", existing local paths, and names that do not
start with "dmae-". An unknown name that looks like a short name (`dmae-...`, no "/") raises a `ValueError` listing
the known ones. A known name whose repository cannot be fetched raises `ShortNameUnavailableError` (an `OSError` and a
`ValueError`), which names the repository, the cause (offline mode, no such repository on the Hub, network) and the
command that makes the weights from the official release. The commit pinning of `from_pretrained`
(`resolve_revision` of transformers' shared `HfApi` client) is wrapped the same way, so no request ever goes out with
a bare short name. Because both sit below `from_pretrained`, they serve every class at once: the DMAE classes,
`AutoConfig`, `AutoModel*`, `AutoImageProcessor` and `pipeline(...)`.
"""

import functools
import os
from dataclasses import dataclass
from pathlib import Path

NAMESPACE_ENV = "DMAE_HF_NAMESPACE"
DEFAULT_NAMESPACE = "dmae-hf"
SHORT_NAME_PREFIX = "dmae-"
PACKAGED_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
# The official DMAE release (README of quanlin-wu/dmae): two pre-training checkpoints on OneDrive, no file names given.
OFFICIAL_RELEASES = {
    "vit-base": ("DMAE-Base", "427MB", "https://1drv.ms/u/s!AnxRCBR6qpJqiiyVY-qxN_AKNwhA?e=Xb6mlj"),
    "vit-large": ("DMAE-Large", "1.23GB", "https://1drv.ms/u/s!AnxRCBR6qpJqii1fTOzAG3tBSDn6?e=PxxadF"),
}


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
    from ..configuration_dmae import ARCHITECTURES

    arch = {preset: (a.stem, a.title) for preset, a in ARCHITECTURES.items() if a.stem}  # the released sizes
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
    base = ARCHITECTURES["vit-base"]
    for sigma in (0.25, 0.5, 1.0):
        models.append(ReleasedModel(
            f"dmae-vit-{base.stem}-cifar10-sigma{sigma}", "classifier", "vit-base", "cifar10", sigma,
            description=f"DMAE {base.title} transferred to CIFAR-10 (32x32 images upsampled to "
                        f"{base.config['image_size']} inside the model), fine-tuned with Gaussian noise "
                        f"sigma={sigma}."))
    tiny = ARCHITECTURES["tiny-cifar10"].config
    models.append(ReleasedModel(
        "dmae-tiny-cifar10", "classifier", "tiny-cifar10", "cifar10", 0.25, from_official=False,
        description=f"A tiny DMAE (ViT width {tiny['hidden_size']}, {tiny['num_hidden_layers']} blocks, "
                    f"{tiny['num_attention_heads']} heads, patch {tiny['patch_size']}, native "
                    f"{tiny['image_size']}x{tiny['image_size']} input) pre-trained and fine-tuned on CIFAR-10 by this "
                    "project, small enough to ship inside the package for offline demos and tests."))
    models.append(ReleasedModel(
        "dmae-tiny-cifar10-denoiser", "pretraining", "tiny-cifar10", "cifar10", from_official=False,
        description="A tiny DMAE of the same shape pre-trained on CIFAR-10 at sigma 0.25 by this project, then "
                    "fine-tuned as a denoiser (mask ratio 0, loss on the pixels): the plug-in denoiser of denoised "
                    "smoothing in front of any 32x32 classifier, shipped inside the package."))
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


class ShortNameUnavailableError(OSError, ValueError):
    """A known short name whose Hub repository cannot be fetched (offline, missing repository, network). An `OSError`
    like every transformers loading error, so that all loaders pass its message through unchanged."""


def howto(name: str) -> str:
    """How to obtain the weights of short name `name` without its Hub repository."""
    entry = SHORT_NAMES[name]
    if not entry.from_official:
        return (f"{name} ships inside the package (dmae_hf/checkpoints/{name}); reinstall dmae-hf to restore it.")
    if entry.kind == "pretraining":
        title, size, url = OFFICIAL_RELEASES[entry.preset]
        return (f"Make them from the official release: download {title} ({size}, {url}), then run "
                f"`dmae convert <{title} .pth> {name}` and load the directory {name} (a local directory of that "
                f"name takes precedence over the short name), or `dmae publish <{title} .pth>` to upload it to "
                f"{namespace()}/{name}.")
    base = "dmae-vit-large" if entry.preset == "vit-large" else "dmae-vit-base"
    return (f"The DMAE authors released no fine-tuned classifiers, only the pre-training checkpoints: fine-tune "
            f"{base} at sigma={entry.sigma} (dmae_hf.training), or take a classifier trained with the official code, "
            f"then run `dmae convert <classifier .pth> {name} --sigma {entry.sigma}"
            + (" --normalization cifar10" if entry.dataset == "cifar10" else "")
            + f"` and load the directory {name}, or `dmae publish <classifier .pth>={name}` to upload it.")


def _chain(error: BaseException):
    seen = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def unavailable_cause(error: BaseException, local_files_only: bool = False) -> str | None:
    """Why a Hub fetch failed, from the exception chain of `transformers.utils.hub.cached_files`: "offline"
    (`HF_HUB_OFFLINE` or `local_files_only`, file not cached), "missing" (404, no such repository), "network" (the
    endpoint could not be reached), or None for anything else (a missing file in an existing repository, a gated
    repository, a revision, permissions), which is left to transformers' own message."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    chain = _chain(error)
    if any(isinstance(e, GatedRepoError) for e in chain):
        return None
    if any(isinstance(e, RepositoryNotFoundError) for e in chain):
        return "missing"
    if any(isinstance(e, OfflineModeIsEnabled) for e in chain):
        return "offline"
    if any(isinstance(e, LocalEntryNotFoundError) for e in chain):
        if constants.is_offline_mode() or local_files_only:
            return "offline"
        return "network"
    return None


def unavailable_message(name: str, target: str, cause: str, error: BaseException, local_files_only=False) -> str:
    from huggingface_hub import constants

    where = (f"{NAMESPACE_ENV}={os.environ[NAMESPACE_ENV]}" if os.environ.get(NAMESPACE_ENV)
             else f"{NAMESPACE_ENV} unset, default namespace {DEFAULT_NAMESPACE!r}")
    if cause == "offline":
        why = ("offline mode is on (HF_HUB_OFFLINE=1), so the Hub was not contacted"
               if constants.is_offline_mode() else "local_files_only=True, so the Hub was not contacted")
        fix = "unset HF_HUB_OFFLINE (or drop local_files_only) to download it, if it is published"
    elif cause == "missing":
        why = f"the Hub at {constants.ENDPOINT} has no such repository (404, RepositoryNotFound)"
        fix = "these weights are not published there yet"
    else:
        root = _chain(error)[-1]
        why = (f"the Hub at {constants.ENDPOINT} could not be reached (network error: {type(root).__name__}: "
               f"{str(root)[:120]})")
        fix = "check the connection or HF_ENDPOINT"
    return (f"Cannot load DMAE short name {name!r}: it resolves to the Hub repository {target!r} ({where}), which is "
            f"not in the local cache, and {why}; {fix}. {howto(name)}")


def resolve(name_or_path):
    """Map a short name to what transformers should load; return anything else unchanged.

    - an existing local path, a repo id with a namespace, or a name not starting with "dmae-": unchanged;
    - a known short name: its packaged directory (`dmae-tiny-cifar10`, `dmae-tiny-cifar10-denoiser`) or
      `f"{namespace()}/{name}"`;
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


_RAISE_FLAGS = ("_raise_exceptions_for_missing_entries", "_raise_exceptions_for_connection_errors")


def _fetch_short_name(original_files, name: str, target: str, args: tuple, kwargs: dict):
    """`original_files(target, ...)`, with a `ShortNameUnavailableError` when the repository cannot be fetched.

    Callers probing optional files (processor configs, ...) ask `cached_files` to return None instead of raising, which
    would hide an unreachable repository behind a later, unrelated message. So the fetch always runs with both raise
    flags on; an error whose cause is not "repository unreachable" (say, a missing optional file) repeats the call
    with the caller's own flags, which then answers from the cache (or the "file does not exist" cache).
    """
    from huggingface_hub import try_to_load_from_cache

    forced = {**kwargs, **{flag: True for flag in _RAISE_FLAGS}}
    try:
        return original_files(target, *args, **forced)
    except OSError as error:
        local_only = bool(kwargs.get("local_files_only"))
        cause = unavailable_cause(error, local_only)
        cached = try_to_load_from_cache(target, "config.json", cache_dir=kwargs.get("cache_dir"))
        if cause is None or (cause != "missing" and isinstance(cached, str)):  # repo known here: a file is missing
            if all(kwargs.get(flag, True) for flag in _RAISE_FLAGS):
                raise
            return original_files(target, *args, **kwargs)
        raise ShortNameUnavailableError(unavailable_message(name, target, cause, error, local_only)) from error


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
            target = resolve(path_or_repo_id)
            if target == path_or_repo_id or os.path.isdir(target):  # not a short name, or a packaged checkpoint
                return original_files(target, *args, **kwargs)
            return _fetch_short_name(original_files, path_or_repo_id, target, args, kwargs)

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
           "install_short_name_hook", "UnknownShortNameError", "ShortNameUnavailableError", "OFFICIAL_RELEASES",
           "NAMESPACE_ENV", "DEFAULT_NAMESPACE"]
