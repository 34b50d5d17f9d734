# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""What a saved classifier carries for `trust_remote_code=True`, so that it certifies where dmae-hf is not installed:
`custom_pipelines` in its config.json and the portable set, `pipeline_dmae.py` with the flat files it imports
(found the way transformers finds them, by its relative imports). The portable set imports nothing else of dmae-hf
(tests/test_import_graph.py checks it)."""

import shutil
from pathlib import Path

# transformers' custom-pipeline entry (the format `Pipeline.save_pretrained` writes)
CUSTOM_PIPELINES = {"certified-image-classification": {
    "impl": "pipeline_dmae.RandomizedSmoothingPipeline", "pt": ["AutoModelForImageClassification"], "tf": [],
    "type": "image"}}
PIPELINE_FILE = Path(__file__).with_name("pipeline_dmae.py")


def portable_files() -> list[Path]:
    """`pipeline_dmae.py` and every flat module it imports, directly or not; [] where the pipeline file is absent
    (remote code loaded without it)."""
    if not PIPELINE_FILE.is_file():
        return []
    from transformers.dynamic_module_utils import get_relative_import_files

    return [PIPELINE_FILE, *(Path(f) for f in get_relative_import_files(str(PIPELINE_FILE)))]


def save_with_pipeline(model, save_directory, save, *args, **kwargs):
    """`save(save_directory, *args, **kwargs)` (the model's `PreTrainedModel.save_pretrained`) with `custom_pipelines`
    in the saved config, then the portable files copied beside it (main process only)."""
    files = portable_files()
    if not files:
        return save(save_directory, *args, **kwargs)
    model.config.custom_pipelines = CUSTOM_PIPELINES
    try:
        result = save(save_directory, *args, **kwargs)
    finally:
        del model.config.custom_pipelines
    if kwargs.get("is_main_process", True):
        for source in files:
            shutil.copyfile(source, Path(save_directory) / source.name)
    return result


__all__ = ["CUSTOM_PIPELINES", "portable_files", "save_with_pipeline"]
