# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Short names of the released DMAE checkpoints and their resolution to Hub repository ids.

`DMAEForPreTraining.from_pretrained("dmae-vit-base")` loads `f"{namespace}/dmae-vit-base"`, where the namespace is
`$DMAE_HF_NAMESPACE` (default `"dmae-hf"`), read at each resolution. The checkpoints shipped inside the package
(`dmae-tiny-cifar10`, `dmae-tiny-cifar10-denoiser` and the plain transformers ViT `vit-tiny-cifar10-clean`) resolve
to their packaged copies, so they load offline by name in every route.

How: `import dmae_hf` calls `install_short_name_hook()`, which wraps
`transformers.utils.hub.cached_files`, the one function through which transformers fetches every file of a model
repository (configs, weights, processor configs, remote code; `cached_file` delegates to it). The wrapper maps a known
short name to its repository id (or packaged directory) and leaves everything else untouched: repo ids with a "/",
existing local paths, and names that do not start with "dmae-". An unknown name that looks like a short name
(`dmae-...` in any case, no "/") raises a `ValueError` saying which name was meant (a wrongly cased one, a near miss)
and listing the known ones. A known name whose repository cannot be fetched raises `ShortNameUnavailableError` (an
`OSError` and a `ValueError`), which names the repository, the cause (offline mode, no such repository on the Hub,
network) and the command that makes the weights from the official release. The commit pinning of `from_pretrained`
(`resolve_revision` of transformers' shared `HfApi` client) is wrapped the same way, so no request ever goes out with
a bare short name. Because both sit below `from_pretrained`, they serve every class at once: the DMAE classes,
`AutoConfig`, `AutoModel*`, `AutoImageProcessor` and `pipeline(...)`. When `dmae_hf.hub.reach` finds the Hub offline
or unreachable (one probe per process), both read the local cache only, so that a Hub id or short name that is not
cached fails at once with one line, instead of after huggingface_hub's retries.
"""

import difflib
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .reach import OFFLINE_REASON, HubUnreachableError, hub_unreachable_reason

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


_NAMESPACE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")


def namespace() -> str:
    """The Hub namespace (user or organisation) of the released checkpoints: `$DMAE_HF_NAMESPACE` or "dmae-hf".
    A value that is not a Hub user or organisation name raises `NamespaceError` (a `ValueError`) naming it."""
    value = os.environ.get(NAMESPACE_ENV) or DEFAULT_NAMESPACE
    if not _NAMESPACE.fullmatch(value) or ".." in value or "--" in value:
        raise NamespaceError(f"{NAMESPACE_ENV}={value!r} is not a Hub user or organisation name (letters, digits, "
                             "'-', '_' and '.', no '/'): set it to one, e.g. my-org, or unset it for the default "
                             f"{DEFAULT_NAMESPACE!r}.")
    return value


def repo_id(name: str) -> str:
    """The Hub repository id of a short name, `f"{namespace()}/{name}"`."""
    if name not in SHORT_NAMES:
        raise UnknownShortNameError(unknown_name_message(name))
    return f"{namespace()}/{name}"


def shipped_names() -> list[str]:
    """The checkpoints shipped inside the package (dmae_hf/checkpoints/<name>/config.json), each a short name too:
    `dmae-tiny-cifar10`, `dmae-tiny-cifar10-denoiser` and `vit-tiny-cifar10-clean` (a plain transformers ViT)."""
    if not PACKAGED_CHECKPOINTS.is_dir():
        return []
    return sorted(p.name for p in PACKAGED_CHECKPOINTS.iterdir() if (p / "config.json").is_file())


def packaged_path(name: str) -> Path | None:
    """The checkpoint directory shipped inside the package for `name`, if it exists (it must hold config.json)."""
    if name not in shipped_names():
        return None
    return PACKAGED_CHECKPOINTS / name


def all_short_names() -> list[str]:
    """The released short names (`SHORT_NAMES`), then the shipped checkpoints outside that table."""
    return list(SHORT_NAMES) + [n for n in shipped_names() if n not in SHORT_NAMES]


def looks_like_short_name(name) -> bool:
    """A "dmae-..." name (any case) or a shipped checkpoint's name, without a path separator."""
    return (isinstance(name, str) and "/" not in name and "\\" not in name
            and (name.lower().startswith(SHORT_NAME_PREFIX) or name in shipped_names()))


class UnknownShortNameError(ValueError, OSError):
    """A "dmae-..." name that is not in the table. Both a `ValueError` (bad argument) and an `OSError`, so that
    transformers' loaders, which re-word other exceptions from `cached_file`, pass its message through."""


class NamespaceError(ValueError, OSError):
    """`$DMAE_HF_NAMESPACE` is not a Hub namespace. A `ValueError` and an `OSError`, like `UnknownShortNameError`."""


def unknown_name_message(name: str) -> str:
    known = all_short_names()
    cased = [n for n in known if n.lower() == name.lower()]
    if cased:
        return (f"{name!r} is a wrongly cased short name: did you mean {cased[0]!r}? Short names are lower case "
                f"(known: {', '.join(known)}).")
    close = difflib.get_close_matches(name.lower(), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"Unknown DMAE short name {name!r}.{hint} Known short names: {', '.join(known)}. Pass a Hub repository "
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


def unavailable_message(name: str, target: str, cause: str, error: BaseException | None, local_files_only=False,
                        reason: str | None = None, state: str = "not in the local cache") -> str:
    """One line: the repository a short name resolves to, why it cannot be fetched, the fix and `howto(name)`.
    `reason`: the cause `dmae_hf.hub.reach` found (offline mode, unreachable Hub), when the Hub was not asked."""
    from huggingface_hub import constants

    where = (f"{NAMESPACE_ENV}={os.environ[NAMESPACE_ENV]}" if os.environ.get(NAMESPACE_ENV)
             else f"{NAMESPACE_ENV} unset, default namespace {DEFAULT_NAMESPACE!r}")
    if reason is not None and reason != OFFLINE_REASON:
        why, fix = reason, "check the connection or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache only"
    elif cause == "offline":
        why = ("offline mode is on (HF_HUB_OFFLINE=1), so the Hub was not contacted"
               if constants.is_offline_mode() else "local_files_only=True, so the Hub was not contacted")
        fix = "unset HF_HUB_OFFLINE (or drop local_files_only) to download it, if it is published"
    elif cause == "missing":
        why = f"the Hub at {constants.ENDPOINT} has no such repository (404, RepositoryNotFound)"
        fix = "these weights are not published there yet"
    else:
        root = _chain(error)[-1]
        why = (f"the Hub at {constants.ENDPOINT} could not be reached (network error: {type(root).__name__}: "
               f"{' '.join(str(root).split())[:120]})")  # one line, whatever the library's text
        fix = "check the connection or HF_ENDPOINT"
    return (f"Cannot load DMAE short name {name!r}: it resolves to the Hub repository {target!r} ({where}), which is "
            f"{state}, and {why}; {fix}. {howto(name)}")


def resolve(name_or_path):
    """Map a short name to what transformers should load; return anything else unchanged.

    - an existing local path, a repo id with a namespace, or a name not starting with "dmae-": unchanged;
    - a shipped checkpoint (`shipped_names()`): its packaged directory; another known short name:
      `f"{namespace()}/{name}"`;
    - any other "dmae-..." name (any case) without "/", or a short name in the wrong case: `UnknownShortNameError`
      (a `ValueError`) saying which name was meant and listing the known ones.
    """
    if not isinstance(name_or_path, str) or "/" in name_or_path or os.path.exists(name_or_path):
        return name_or_path
    local = packaged_path(name_or_path)
    if local is not None:
        return str(local)
    if name_or_path in SHORT_NAMES:
        return repo_id(name_or_path)
    if looks_like_short_name(name_or_path) or any(n.lower() == name_or_path.lower() for n in all_short_names()):
        raise UnknownShortNameError(unknown_name_message(name_or_path))
    return name_or_path


_RAISE_FLAGS = ("_raise_exceptions_for_missing_entries", "_raise_exceptions_for_connection_errors")
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".index.json")


def _snapshots(repo_id: str, kwargs: dict) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(kwargs.get("cache_dir") or constants.HF_HUB_CACHE) / repo_folder_name(
        repo_id=repo_id, repo_type=kwargs.get("repo_type") or "model") / "snapshots"


def _in_cache(repo_id: str, kwargs: dict) -> bool:
    """Whether the Hub cache holds a snapshot of model repository `repo_id` (some files of some commit)."""
    folder = _snapshots(repo_id, kwargs)
    return folder.is_dir() and any(folder.iterdir())


def _weights_uncached(repo_id: str, files, kwargs: dict) -> bool:
    """`files` are all weight files, and the cached snapshots of `repo_id` hold no weight file at all: loading the
    model cannot work from the cache (while a probe for one weight format of a cached model may fail harmlessly)."""
    if not files or not all(str(f).endswith(_WEIGHTS) for f in files):
        return False
    return not any(p.name.endswith(_WEIGHTS) for p in _snapshots(repo_id, kwargs).glob("*/**/*"))


def _fetch(original_files, name: str, target: str, args: tuple, kwargs: dict, reason: str | None):
    """`original_files(target, ...)`, with one clear error when the repository cannot be fetched.

    `reason` (from `dmae_hf.hub.reach`) is set when the Hub is offline or unreachable: then `kwargs` ask for the local
    cache only, and a repository not cached (or cached without a required file, or without any weights) fails at once
    with one line naming the cause and the fix: `ShortNameUnavailableError` for a short name (`name != target`),
    `HubUnreachableError` for a Hub id. Callers probing optional files (processor configs, ...) ask `cached_files` to
    return None instead of raising, which would hide an unreachable repository behind a later, unrelated message. So
    the fetch always runs with both raise flags on; an error whose cause is not "repository unreachable" (say, a
    missing optional file) repeats the call with the caller's own flags, which then answers from the cache.
    """
    forced = {**kwargs, **{flag: True for flag in _RAISE_FLAGS}}
    try:
        return original_files(target, *args, **forced)
    except OSError as error:
        local_only = bool(kwargs.get("local_files_only"))
        cause = unavailable_cause(error, local_only)
        cached = cause not in (None, "missing") and _in_cache(target, kwargs)  # the repo is known here: a file is not
        optional = not all(kwargs.get(flag, True) for flag in _RAISE_FLAGS)
        files = args[0] if args else kwargs.get("filenames")
        if cause is None or (cached and reason is None) or (
                cached and optional and not _weights_uncached(target, files, kwargs)):
            if not optional:
                raise
            return original_files(target, *args, **kwargs)
        where = (f"in the local cache without {', '.join(map(str, files or ['the file asked for']))}" if cached
                 else "not in the local cache")
        if name != target:
            message = unavailable_message(name, target, cause, error, local_only, reason, where)
            raise ShortNameUnavailableError(message) from (None if reason else error)
        if reason is None:
            raise
        fix = ("Unset HF_HUB_OFFLINE to download it" if reason == OFFLINE_REASON
               else "Check the connection or HF_ENDPOINT") + (
            f", or pass a local directory, or one of the shipped models ({', '.join(shipped_names())}).")
        raise HubUnreachableError(f"Model {target!r} is {where} and needs the Hugging Face Hub, and {reason}. "
                                  f"{fix}") from None


def install_short_name_hook() -> None:
    """Make every transformers loader resolve short names, and fail fast on an unreachable Hub (idempotent).

    Wraps `transformers.utils.hub.cached_files` (all file fetches; `cached_file` delegates to it) and the
    `resolve_revision` method of transformers' shared `HfApi` client (`transformers.utils.hub.hf_api()`), which
    each `from_pretrained`/`pipeline` calls once to pin the commit before fetching files. When
    `dmae_hf.hub.reach.hub_unreachable_reason()` says the Hub is offline or unreachable (one probe per process), both
    read the local cache only, so that no request (and no retry) is made for any Hub id.
    """
    from transformers.utils import hub

    if not getattr(hub.cached_files, "_dmae_short_names", False):
        original_files = hub.cached_files

        @functools.wraps(original_files)
        def cached_files(path_or_repo_id, *args, **kwargs):
            target = resolve(path_or_repo_id)
            if not isinstance(target, str) or os.path.exists(target):  # a local path (packaged checkpoints too)
                return original_files(target, *args, **kwargs)
            reason = None if kwargs.get("local_files_only") else hub_unreachable_reason()
            if reason is not None:
                kwargs["local_files_only"] = True
            elif target == path_or_repo_id:  # a Hub id, with the Hub reachable: transformers' own path
                return original_files(target, *args, **kwargs)
            return _fetch(original_files, path_or_repo_id, target, args, kwargs, reason)

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
            if not kwargs.get("local_files_only") and hub_unreachable_reason() is not None:
                kwargs["local_files_only"] = True  # the cached ref, if any; else transformers goes on unpinned
            return original_revision(target, **kwargs)

        resolve_revision._dmae_short_names = True
        api.resolve_revision = resolve_revision


__all__ = ["SHORT_NAMES", "ReleasedModel", "namespace", "repo_id", "resolve", "packaged_path",
           "install_short_name_hook", "UnknownShortNameError", "ShortNameUnavailableError", "OFFICIAL_RELEASES",
           "NAMESPACE_ENV", "DEFAULT_NAMESPACE", "NamespaceError", "shipped_names", "all_short_names"]
