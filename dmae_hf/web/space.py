# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The `dmae-certify` Hub Space: `spaces/dmae-certify/` (app.py, requirements.txt, README.md with the Spaces YAML
header) plus a copy of the `dmae_hf` package, so the Space runs this very code and its embedded model.

    >>> push_space("me/dmae-certify")        # or: dmae serve --push-space me/dmae-certify
"""

import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
SPACE_DIR = PACKAGE_DIR.parent / "spaces" / "dmae-certify"
SPACE_FILES = ("app.py", "requirements.txt", "README.md")


def stage_space(destination, space_dir=SPACE_DIR) -> Path:
    """Write the Space as it is pushed into `destination` (created; must be empty or absent): the files of
    `space_dir` and `dmae_hf/` without caches. Returns the destination."""
    space_dir, destination = Path(space_dir), Path(destination)
    missing = [name for name in SPACE_FILES if not (space_dir / name).is_file()]
    if missing:
        raise ValueError(f"The Space folder {str(space_dir)!r} lacks {', '.join(missing)}: the Space is pushed from a "
                         "checkout of the dmae-hf repository (spaces/dmae-certify), not from an installed package.")
    if destination.exists() and any(destination.iterdir()):
        raise ValueError(f"{str(destination)!r} is not empty: stage the Space into a new folder.")
    destination.mkdir(parents=True, exist_ok=True)
    for name in SPACE_FILES:
        shutil.copy2(space_dir / name, destination / name)
    shutil.copytree(PACKAGE_DIR, destination / "dmae_hf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def push_space(repo_id: str, private: bool = False, token=None, endpoint=None) -> str:
    """Create the Space `repo_id` (gradio SDK) if needed and upload the staged Space in one commit; returns the
    commit URL. `endpoint`: another Hub (default `$HF_ENDPOINT` or huggingface.co)."""
    import tempfile

    from huggingface_hub import HfApi

    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"The Space id must be 'namespace/name', got {repo_id!r}.")
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = stage_space(Path(tmp) / "space")
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="space",
                                   commit_message="Upload the dmae-certify Space (dmae serve --push-space)")
    return commit.commit_url
