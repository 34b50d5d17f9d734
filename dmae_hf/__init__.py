# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""dmae-hf: Denoising Masked Autoencoders (Wu et al., ICLR 2023) and certified-robust classification, the Hugging
Face way. Importing the package registers the `dmae` model type with the transformers Auto classes, the
`certified-image-classification` pipeline task and the `dmae-*` short names (`register()`).

The public names below are imported lazily, on first use (PEP 562), so `import dmae_hf.<module>` loads only what
that module needs. The registration itself needs transformers' model classes and torch; the `dmae` command line
defers it until a command runs (see `dmae_cli.py`).
"""

import importlib
import os

__version__ = "0.1.0"

_EXPORTS = {
    "DMAEConfig": "configuration_dmae",
    "CIFAR10_MEAN": "configuration_dmae",
    "CIFAR10_STD": "configuration_dmae",
    "IMAGENET_DEFAULT_MEAN": "configuration_dmae",
    "IMAGENET_DEFAULT_STD": "configuration_dmae",
    "DMAEImageProcessor": "image_processing_dmae",
    "DMAEModel": "modeling_dmae",
    "DMAEPreTrainedModel": "modeling_dmae",
    "DMAEForPreTraining": "modeling_dmae",
    "DMAEForSmoothedClassification": "modeling_dmae",
    "add_gaussian_noise": "smoothing",
    "RandomizedSmoothingPipeline": "pipeline_dmae",
    "SmoothedClassifier": "smoothed_classifier",
    "Preprocessed": "smoothed_classifier",
    "SHORT_NAMES": "hub.names",
}

__all__ = [*_EXPORTS, "register"]

_registered = False


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_EXPORTS})


def register() -> None:
    """Register dmae-hf with transformers (idempotent; `import dmae_hf` calls it).

    - Auto classes: `AutoConfig`, `AutoModel`, `AutoModelForPreTraining`, `AutoModelForImageClassification` and
      `AutoImageProcessor` load `model_type="dmae"` checkpoints with the installed package's classes;
    - remote code: every saved checkpoint also carries `auto_map` and a copy of the flat model files, so it loads with
      `trust_remote_code=True` where dmae-hf is not installed;
    - the `certified-image-classification` pipeline task (default model: the embedded `defaults.EMBEDDED_MODEL`);
    - the `dmae-*` short names in every loader (`dmae_hf/hub/names.py`).
    """
    global _registered
    if _registered:
        return
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        AutoModelForImageClassification,
        AutoModelForPreTraining,
    )
    from transformers.pipelines import PIPELINE_REGISTRY

    from .configuration_dmae import DMAEConfig
    from .defaults import EMBEDDED_MODEL
    from .hub.names import install_short_name_hook
    from .image_processing_dmae import DMAEImageProcessor
    from .modeling_dmae import DMAEForPreTraining, DMAEForSmoothedClassification, DMAEModel
    from .pipeline_dmae import RandomizedSmoothingPipeline

    AutoConfig.register("dmae", DMAEConfig, exist_ok=True)
    AutoModel.register(DMAEConfig, DMAEModel, exist_ok=True)
    AutoModelForPreTraining.register(DMAEConfig, DMAEForPreTraining, exist_ok=True)
    AutoModelForImageClassification.register(DMAEConfig, DMAEForSmoothedClassification, exist_ok=True)
    AutoImageProcessor.register(DMAEConfig, image_processor_classes={"pil": DMAEImageProcessor}, exist_ok=True)

    DMAEConfig.register_for_auto_class()
    DMAEModel.register_for_auto_class("AutoModel")
    DMAEForPreTraining.register_for_auto_class("AutoModelForPreTraining")
    DMAEForSmoothedClassification.register_for_auto_class("AutoModelForImageClassification")
    DMAEImageProcessor.register_for_auto_class("AutoImageProcessor")

    PIPELINE_REGISTRY.register_pipeline(
        "certified-image-classification",
        pipeline_class=RandomizedSmoothingPipeline,
        pt_model=AutoModelForImageClassification,
        default={"model": (EMBEDDED_MODEL, None)},
        type="image",
    )
    install_short_name_hook()
    _registered = True


if not os.environ.get("DMAE_HF_DEFER_REGISTRATION"):
    register()
