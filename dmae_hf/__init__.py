# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""dmae-hf: Denoising Masked Autoencoders (Wu et al., ICLR 2023) and certified-robust classification, the Hugging
Face way. Importing the package registers the `dmae` model type with the transformers Auto classes."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_dmae import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, DMAEConfig
from .hub_names import SHORT_NAMES, install_short_name_hook
from .image_processing_dmae import DMAEImageProcessor
from .modeling_dmae import (
    DMAEForPreTraining,
    DMAEForSmoothedClassification,
    DMAEModel,
    DMAEPreTrainedModel,
    add_gaussian_noise,
)
from .pipeline_dmae import RandomizedSmoothingPipeline

__version__ = "0.1.0"

# Route A: the installed package's classes, for `import dmae_hf` users.
AutoConfig.register("dmae", DMAEConfig, exist_ok=True)
AutoModel.register(DMAEConfig, DMAEModel, exist_ok=True)
AutoModelForPreTraining.register(DMAEConfig, DMAEForPreTraining, exist_ok=True)
AutoModelForImageClassification.register(DMAEConfig, DMAEForSmoothedClassification, exist_ok=True)
AutoImageProcessor.register(DMAEConfig, image_processor_classes={"pil": DMAEImageProcessor}, exist_ok=True)

# Route B: every saved checkpoint carries `auto_map` and a copy of the flat model files, so it also loads with
# `trust_remote_code=True` where dmae-hf is not installed.
DMAEConfig.register_for_auto_class()
DMAEModel.register_for_auto_class("AutoModel")
DMAEForPreTraining.register_for_auto_class("AutoModelForPreTraining")
DMAEForSmoothedClassification.register_for_auto_class("AutoModelForImageClassification")
DMAEImageProcessor.register_for_auto_class("AutoImageProcessor")

# The `certified-image-classification` pipeline task: `pipeline("certified-image-classification", model=...)`.
PIPELINE_REGISTRY.register_pipeline(
    "certified-image-classification",
    pipeline_class=RandomizedSmoothingPipeline,
    pt_model=AutoModelForImageClassification,
    default={"model": ("dmae-tiny-cifar10", None)},
    type="image",
)

# Short names ("dmae-vit-base", "dmae-vit-base-sigma0.25", ...) resolve in every loader; see `dmae_hf/hub_names.py`.
install_short_name_hook()

__all__ = [
    "DMAEConfig",
    "DMAEImageProcessor",
    "DMAEModel",
    "DMAEPreTrainedModel",
    "DMAEForPreTraining",
    "DMAEForSmoothedClassification",
    "RandomizedSmoothingPipeline",
    "add_gaussian_noise",
    "SHORT_NAMES",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
]
