"""The Hub side: short names of the released models (`names`), conversion of the official checkpoints (`convert`)
and generated model cards (`model_card`).

Imports nothing at package import, so `dmae_hf.hub.<module>` loads only what that module needs."""
