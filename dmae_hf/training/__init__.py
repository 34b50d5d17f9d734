# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Training DMAE models with Accelerate: the pieces behind `examples/pretrain.py` and `examples/finetune.py`.
Import from the submodules; this package imports and re-exports nothing.

- `arguments`: the typed arguments (`ModelArguments`, `DataArguments`, `OptimizationArguments`, `RunArguments`),
  the scripts' shared flags built from them (`add_common_args`), `HelpFormatter`, `run_main`.
- `streams`: the streaming pipeline (`load_image_stream`, `ImageDecoder`, `build_stream`, `collate`): Hub or local
  datasets read, split per rank, shuffled and decoded on DataLoader workers.
- `data_setup`: `DataSetup` (the decoded, shuffled train stream and the held-out validation stream of a run,
  checked before any training), its loaders, and the RNG-neutral iteration that makes resume exact.
- `optim`: AdamW parameter groups (weight decay, layer-wise lr decay) and the warmup + half-cosine `Schedule`.
- `checkpoints`: `TrainState`, pickle-free atomic `Checkpoints` and resume.
- `tracking`: `JsonlTracker` (metrics.jsonl, each step once across resumes), `read_metrics`.
- `loop`: the Accelerator, `start_run`, the training loop `train`, `save_final`, `push_folder_to_hub`.
- `visualize`: reconstruction images of a pre-training run.

One training loop serves both scripts (`loop.train`) rather than two stand-alone scripts in the manner of
transformers' `*_no_trainer.py`: the two loops were the same job line for line (gradient accumulation, the lr
schedule, clipping, logging, checkpoints, and the mid-epoch skip plus RNG-neutral iteration on which exact resume
depends), differing only in the loss of a batch and in what runs after a step (reconstruction images) or an
epoch (validation). Written twice, a fix to resume would have to be made twice and tested twice; written once,
`tests/test_checkpoint_faults.py` covers both. The scripts pass those differences as `loss_fn`, `on_step` and
`on_epoch_end`, and keep their model building, evaluation and final outputs.

`dmae_hf.training.augment` holds the device augmentation."""
