# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The certification defaults, in one place for the Python API, the pipeline and every command.

This module imports nothing, so the CLI can show the defaults in `--help` without loading torch.

n = 10,000 estimation samples: a certificate then costs seconds to minutes per image on a CPU, and CERTIFY can
reach R = 3.2 sigma at alpha = 0.001. Cohen et al.'s papers use n = 100,000 (R up to 3.8 sigma, 10x the time): pass
`n=100_000` / `--n 100000` to reproduce their tables. `dmae demo` alone uses `DEMO_N` (see there).
"""

N0 = 100  # selection samples (Cohen et al.)
N = 10_000  # estimation samples
ALPHA = 0.001  # failure probability of each certificate (Cohen et al.)
NOISE_BATCH = 1000  # noisy samples per forward pass
SEED = 0

# `dmae demo` certifies 20 images in about a minute on 2 CPU cores: n = 1,000 caps the radius at 2.2 sigma
# (0.55 at sigma = 0.25), which is enough to show what a certificate is.
DEMO_N = 1000

# The methods of `smoothing.certify` and the options each takes: the pipeline's call arguments, `dmae certify --method`
# and the web demo read this table, so a new method is added here and in `smoothing.certify`.
METHODS = {
    "cohen": (),
    "adaptive": ("first_look", "target_radius", "radius_tolerance", "estimate_tolerance"),
}
