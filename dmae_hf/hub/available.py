# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Which short names can be loaded now, and what the others need: the list a model picker (the web page) offers.

    from dmae_hf.hub.available import available_models
    models = available_models()
    [m.name for m in models.loadable]      # shipped checkpoints first, then those in the local Hugging Face cache
    [(m.name, m.hint) for m in models.elsewhere]  # need a download, or are not published yet (with the route)

Nothing here contacts the Hub unless `ask_hub=True` (then one listing of the namespace, only if the Hub can be
reached); the cache is read from disk.
"""

from dataclasses import dataclass
from pathlib import Path

from . import names as hub_names

KINDS = {"classifier": "classifier", "pretraining": "denoiser"}  # ReleasedModel.kind -> ModelEntry.kind


@dataclass(frozen=True)
class ModelEntry:
    """One short name as a picker shows it.

    name: what to pass to `from_pretrained`, `pipeline(model=...)`, `SmoothedClassifier.from_pretrained` or `--model`.
    kind: "classifier" (an image classifier) or "denoiser" (a `DMAEForPreTraining`, the `denoiser=` of any classifier).
    status: "shipped" (inside the package), "cached" (in the local Hugging Face cache), "download" (published on the
        Hub, not cached: loading it downloads it), "unpublished" (not on the Hub yet) or "not cached" (not in the
        cache; the Hub was not asked whether it is published).
    sigma: the noise level a classifier was trained for (None when it has none, e.g. a clean ViT, or for a denoiser
        whose level is in its config). hint: one line, what it is (loadable) or how to get it (the others).
    """

    name: str
    kind: str
    status: str
    sigma: float | None
    hint: str

    @property
    def loadable(self) -> bool:
        return self.status in ("shipped", "cached")


@dataclass(frozen=True)
class AvailableModels:
    """`loadable`: loadable now, without the Hub (shipped, then cached). `elsewhere`: the other short names."""

    loadable: list[ModelEntry]
    elsewhere: list[ModelEntry]


def _cached(repo: str) -> bool:
    """Whether a snapshot of `repo` in the Hub cache holds config.json and weights (what a load reads first)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "snapshots"
    for snapshot in (snapshots.glob("*") if snapshots.is_dir() else ()):
        weights = list(snapshot.glob("*.safetensors")) + list(snapshot.glob("model.safetensors.index.json"))
        if (snapshot / "config.json").is_file() and weights:
            return True
    return False


def _published(namespace: str) -> set[str] | None:
    """The model repositories under `namespace` on the Hub (one request), or None if the Hub cannot be asked."""
    from .reach import hub_unreachable_reason

    if hub_unreachable_reason() is not None:
        return None
    try:
        from huggingface_hub import HfApi

        return {m.id for m in HfApi().list_models(author=namespace, limit=1000)}
    except Exception:  # noqa: BLE001 - a failed listing only means "not asked"
        return None


def _route(name: str) -> str:
    """How to make a short name that is not published: the `dmae publish` route, from the official release."""
    entry = hub_names.SHORT_NAMES[name]
    if entry.kind == "pretraining":
        title, size, url = hub_names.OFFICIAL_RELEASES[entry.preset]
        return f"download {title} ({size}, {url}), then `dmae publish <{title} .pth>`"
    base = "dmae-vit-large" if entry.preset == "vit-large" else "dmae-vit-base"
    return (f"the DMAE authors released no classifiers: fine-tune {base} at sigma={entry.sigma}, then "
            f"`dmae publish <classifier .pth>={name}`")


def available_models(ask_hub: bool = False) -> AvailableModels:
    """The short names (`names.all_short_names()`), split into what loads now and the rest.

    Returns `AvailableModels(loadable, elsewhere)`, two lists of `ModelEntry`: `loadable` holds the shipped
    checkpoints (status "shipped", in `names.shipped_names()` order) and then the released names with a copy in the
    local Hugging Face cache ("cached"); `elsewhere` holds the others, in table order, each with a one-line `hint`:
    status "download" (published, loading downloads it), "unpublished" (with its `dmae publish` route) or, without
    `ask_hub`, "not cached" (hint: published or not, with the `dmae publish` route). `ask_hub=True` lists the
    namespace on the Hub once (skipped when `dmae_hf.hub.reach` finds it unreachable) to tell "download" from
    "unpublished". Raises `NamespaceError` for a bad `$DMAE_HF_NAMESPACE`.
    """
    namespace = hub_names.namespace()
    published = _published(namespace) if ask_hub else None
    loadable, elsewhere = [], []
    for name in hub_names.shipped_names():
        entry = hub_names.SHORT_NAMES.get(name)
        if entry is None:  # a plain transformers classifier (the clean ViT): no trained sigma
            what = "shipped: a plain classifier trained without noise; certify it with a denoiser"
            loadable.append(ModelEntry(name, "classifier", "shipped", None, what))
            continue
        what = (f"shipped: DMAE classifier for {entry.dataset}, trained at sigma {entry.sigma:g}"
                if entry.kind == "classifier" else f"shipped: DMAE denoiser for {entry.dataset} (pass as denoiser)")
        loadable.append(ModelEntry(name, KINDS[entry.kind], "shipped", entry.sigma, what))
    for name, entry in hub_names.SHORT_NAMES.items():
        if hub_names.packaged_path(name) is not None:
            continue
        repo = f"{namespace}/{name}"
        if _cached(repo):
            status, hint = "cached", f"{repo}, in the local Hugging Face cache"
        elif published is None:
            status, hint = "not cached", f"needs {repo} from the Hub if published; else {_route(name)}"
        elif repo in published:
            status, hint = "download", f"published at {repo}: loading it downloads it from the Hub"
        else:
            status, hint = "unpublished", f"not published at {repo} yet: {_route(name)}"
        (loadable if status == "cached" else elsewhere).append(
            ModelEntry(name, KINDS[entry.kind], status, entry.sigma, hint))
    return AvailableModels(loadable, elsewhere)


__all__ = ["available_models", "AvailableModels", "ModelEntry"]
