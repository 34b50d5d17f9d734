# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""What `dmae certify` and `dmae predict` certify: the INPUT arguments, resolved to numbered images.

An INPUT is one of:

- an image file (any format PIL reads), or a glob of them (`'photos/*.jpg'`, quoted so that the shell leaves it);
- a folder: its images, unlabelled; or, when it holds class subfolders (`cat/`, `dog/`, ...) of images, those
  images labelled by their folder's name (matched to the model's `id2label`, ignoring case, `_` and `-`); a folder
  with a subfolder named `--split` (e.g. `test/<class>/*.png`) is read from that subfolder, and one with an
  `index.json` (the bundled sets' layout) is labelled by it;
- `bundled:cifar10` (the 20 CIFAR-10 test images shipped in the package) or `bundled:imagenet` (3 ImageNet photos),
  labelled by their index: offline, no download;
- a Hub dataset id (`uoft-cs/cifar10`, streamed) or a local copy in the Hub layout (a folder with
  `data/{split}-*.parquet` or a `save_to_disk` DatasetDict), read by `dmae_hf.image_datasets.load_image_split` with
  `--split`, `--image-column` and `--label-column`. A dataset is the only INPUT of its run.

Images are numbered (`idx`) in the order given, a folder's and a glob's files sorted by name. Nothing is decoded
here: `resolve_inputs` checks that the inputs exist and can be read as a whole (a bad one is a `ValueError` naming
it), and a corrupt image is found, and skipped, when it is certified.
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..image_datasets import load_image_split

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
BUNDLED = "bundled:"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
_DATASET_FILES = ("dataset_dict.json", "dataset_info.json", "state.json")  # save_to_disk and the Hub layout
_DATASET_SUFFIXES = (".parquet", ".arrow", ".tar")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
UNLABELLED = "none"  # `LOG.json`'s "labels" for images without labels (their rows have label -1)


def bundled_names() -> list[str]:
    return sorted(p.name for p in ASSETS.iterdir() if (p / "index.json").is_file())


def _normalise(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def label_ids(names, id2label: dict) -> dict[str, int | None]:
    """Each class name -> the model's class id: its label ignoring case, `_` and `-`, or one of a label's
    comma-separated synonyms (ImageNet's "tabby, tabby cat"), or the id itself ("3"); None when none matches."""
    table = {}
    for key, label in sorted(((int(k), str(v)) for k, v in id2label.items()), reverse=True):  # lowest id wins
        table[_normalise(label)] = key
        for synonym in label.split(","):
            table.setdefault(_normalise(synonym), key)
    ids = {str(k) for k in id2label}
    return {name: table.get(_normalise(name), int(name) if name in ids else None) for name in names}


@dataclass
class ImageFile:
    path: str  # where it is read from
    name: str  # how the log's settings and `dmae predict` name it
    class_name: str | None = None  # its folder or index label, before it is matched to the model's classes


class ImageFiles:
    """Image files, numbered in order; labelled when every one has a class name (class folders, bundled index)."""

    def __init__(self, files: list[ImageFile], bundled: bool):
        self.files, self.bundled = files, bundled
        self.labelled = all(f.class_name is not None for f in files)
        self.num_rows = len(files)
        self.labels, self.note = None, None

    def bind_labels(self, id2label: dict) -> None:
        """Match the class names to the model's classes. Unknown class folders are an error; bundled images of
        classes the model does not know are certified unlabelled (`note` says so)."""
        if not self.labelled:
            return
        ids = label_ids({f.class_name for f in self.files}, id2label)
        unknown = sorted(name for name, i in ids.items() if i is None)
        if unknown and self.bundled:
            self.labelled = False
            self.note = (f"the model's classes do not include {', '.join(map(repr, unknown))}: these images are "
                         f"certified as unlabelled")
        elif unknown:
            known = ", ".join(str(v) for _, v in sorted((int(k), v) for k, v in id2label.items())[:12])
            raise ValueError(f"class folder(s) {', '.join(map(repr, unknown))} name no class of the model (its "
                             f"classes: {known}{', ...' if len(id2label) > 12 else ''}). Rename the folders to the "
                             f"model's class names, or pass the images without class folders to certify them "
                             f"unlabelled.")
        else:
            self.labels = [ids[f.class_name] for f in self.files]

    def settings(self) -> dict:
        return {"files": [f.name for f in self.files],
                "labels": ("bundled index" if self.bundled else "class folders") if self.labelled else UNLABELLED}

    def examples(self):
        """(idx, image path, label or None) for each image."""
        for idx, f in enumerate(self.files):
            yield idx, f.path, self.labels[idx] if self.labelled and self.labels else None

    def name(self, idx: int) -> str:
        return self.files[idx].name


class DatasetSplit:
    """A split of a Hub dataset or of a local copy, streamed with its images left encoded."""

    def __init__(self, dataset: str, split: str, image_column=None, label_column=None, token=None):
        self.dataset, self.split = dataset, split
        self.ds, self.image_column, self.label_column = load_image_split(
            dataset, split, image_column, label_column or "label", token=token, label_optional=label_column is None)
        self.labelled, self.bundled, self.note = self.label_column is not None, False, None
        try:
            self.num_rows = self.ds.info.splits[split].num_examples or None
        except (AttributeError, KeyError, TypeError):
            self.num_rows = None

    def bind_labels(self, id2label: dict) -> None:
        """A dataset's integer labels are taken as the model's class ids."""

    def settings(self) -> dict:
        settings = {"dataset": os.path.abspath(self.dataset) if os.path.isdir(self.dataset) else self.dataset,
                    "split": self.split, "image_column": self.image_column, "label_column": self.label_column}
        if not self.labelled:
            settings["labels"] = UNLABELLED
        return settings

    def examples(self):
        """(idx, image cell, label or None) for each row; the reader stops when the iteration does."""
        rows = iter(self.ds)
        try:
            for idx, example in enumerate(rows):
                label = example[self.label_column] if self.labelled else None
                yield idx, example[self.image_column], label
        finally:
            getattr(rows, "close", lambda: None)()  # stop the parquet reader now, not at interpreter exit

    def name(self, idx: int) -> str:
        return f"{self.dataset}[{self.split}][{idx}]"


# ------------------------------------------------------------------------------------------------------ resolving
def _is_dataset_folder(folder: Path) -> bool:
    return ((folder / "data").is_dir() or any((folder / name).is_file() for name in _DATASET_FILES)
            or any(p.suffix in _DATASET_SUFFIXES for p in folder.iterdir()))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _folder_files(folder: Path, split: str, shown: str) -> list[ImageFile]:
    if (folder / "index.json").is_file():  # a folder in the bundled sets' layout: labelled by its index
        return _indexed(folder, lambda file: os.path.join(shown, file))
    images = _images_in(folder)
    classes = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".") and _images_in(d)]
    if images and classes:
        some = ", ".join(d.name for d in classes[:3]) + (", ..." if len(classes) > 3 else "")
        raise ValueError(f"Folder {shown!r} holds both images and class folders ({some}): move the loose images "
                         f"into their class folders (labelled), or pass them as files or a glob (unlabelled).")
    if images:
        return [ImageFile(str(p), str(p)) for p in images]
    if classes:
        return [ImageFile(str(p), str(p), d.name) for d in classes for p in _images_in(d)]
    if (folder / split).is_dir() and not _is_dataset_folder(folder / split):
        return _folder_files(folder / split, split, os.path.join(shown, split))
    raise ValueError(f"No images in folder {shown!r}: it holds no image files ({', '.join(IMAGE_EXTENSIONS[:4])}, "
                     f"...), no class folders of them, no {split!r} split folder and no dataset in the Hub layout.")


def _indexed(folder: Path, shown) -> list[ImageFile]:
    """The images that `folder/index.json` lists (`{"images": [{"file", "label_name"}, ...]}`, the bundled sets'
    layout), labelled by `label_name`."""
    try:
        images = json.loads((folder / "index.json").read_text())["images"]
        return [ImageFile(str(folder / image["file"]), shown(image["file"]), str(image["label_name"]))
                for image in images]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{folder / 'index.json'} is not an image index ({type(error).__name__}: {error}); it "
                         f"must be {{\"images\": [{{\"file\": ..., \"label_name\": ...}}, ...]}}.") from None


def _bundled(name: str) -> list[ImageFile]:
    folder = ASSETS / name
    if not name or not (folder / "index.json").is_file():
        raise ValueError(f"Unknown bundled image set {BUNDLED + name!r}; the package holds "
                         f"{', '.join(BUNDLED + n for n in bundled_names())}.")
    return _indexed(folder, lambda file: f"{BUNDLED}{name}/{file}")


def _looks_like_hub_id(text: str) -> bool:
    return bool(_HUB_ID.fullmatch(text)) and not text.lower().endswith(IMAGE_EXTENSIONS)


def resolve_inputs(inputs, split: str = "test", image_column=None, label_column=None, token=None):
    """The INPUT arguments as `ImageFiles` (files, globs, folders, bundled sets) or a `DatasetSplit` (one Hub id or
    local Hub-layout copy). `ValueError` naming the input for a missing file, an empty folder or glob, a dataset that
    cannot be read (an unreachable Hub fails in seconds), a dataset mixed with other inputs, labelled inputs mixed
    with unlabelled ones, or dataset options given with files."""
    inputs = [str(i) for i in inputs]
    if not inputs:
        raise ValueError("No INPUT given: pass image files, folders, a glob, bundled:cifar10 or a dataset.")
    datasets = []
    for text in inputs:
        path = Path(os.path.expanduser(text))
        if text.startswith(BUNDLED) or path.is_file():
            continue
        if path.is_dir() and not _is_dataset_folder(path) or glob.has_magic(text) and not path.exists():
            continue
        if path.is_dir() or _looks_like_hub_id(text):
            datasets.append(text)
        else:
            raise ValueError(f"No such file or folder: {text!r} (an INPUT is an image file, a folder, a glob, "
                             f"{BUNDLED}{'|'.join(bundled_names())}, a Hub dataset id or a local Hub-layout copy).")
    if datasets:
        if len(inputs) > 1:
            raise ValueError(f"Dataset {datasets[0]!r} must be the only INPUT of a run (got {len(inputs)} inputs): "
                             f"certify it and the other inputs in separate runs.")
        return DatasetSplit(datasets[0], split, image_column, label_column, token=token)
    for option, value in (("--image-column", image_column), ("--label-column", label_column)):
        if value is not None:
            raise ValueError(f"{option} applies to datasets; the inputs are image files, labelled by their class "
                             f"folders if any.")
    files, seen, labelled = [], set(), {}
    for text in inputs:
        path = Path(os.path.expanduser(text))
        if text.startswith(BUNDLED):
            found = _bundled(text[len(BUNDLED):])
        elif path.is_file():
            found = [ImageFile(str(path), text)]
        elif path.is_dir():
            found = _folder_files(path, split, text)
        else:
            matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
            if not matches:
                raise ValueError(f"No file matches {text!r}.")
            found = [f for m in matches
                     for f in (_folder_files(Path(m), split, m) if os.path.isdir(m) else [ImageFile(m, m)])]
        labelled[text] = all(f.class_name is not None for f in found)
        for f in found:
            key = os.path.realpath(f.path)
            if key not in seen:
                seen.add(key)
                files.append(f)
    if len(set(labelled.values())) > 1:
        raise ValueError(f"Labelled inputs ({', '.join(t for t, v in labelled.items() if v)}) and unlabelled ones "
                         f"({', '.join(t for t, v in labelled.items() if not v)}) in one run: certify them "
                         f"separately.")
    return ImageFiles(files, bundled=all(t.startswith(BUNDLED) for t in inputs))


__all__ = ["ASSETS", "BUNDLED", "DatasetSplit", "ImageFile", "ImageFiles", "label_ids", "resolve_inputs"]
