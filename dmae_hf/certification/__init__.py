"""Certification beyond one image: the `certified-image-classification` pipeline (`pipeline`), dataset certification
into resumable Cohen-format logs (`dataset`), certified accuracy from logs (`analysis`) and the `evaluate` metric
(`metrics`). The statistics themselves, PREDICT and CERTIFY, are `dmae_hf.smoothing`, which the model files use too.

Imports nothing at package import, so `dmae_hf.certification.<module>` loads only what that module needs."""
