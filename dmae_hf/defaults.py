# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The certification defaults and the one rule for sigma, in one place for the Python API, the pipeline, every
command and the web page.

This module imports only the standard library, so the CLI can show the defaults in `--help` without loading torch.

n = 10,000 estimation samples: a certificate then costs seconds to minutes per image on a CPU, and CERTIFY can
reach R = 3.2 sigma at alpha = 0.001. Cohen et al.'s papers use n = 100,000 (R up to 3.8 sigma, 10x the time): pass
`n=100_000` / `--n 100000` to reproduce their tables. `dmae demo` alone uses `DEMO_N` (see there).
"""

import math
import numbers

N0 = 100  # selection samples (Cohen et al.)
N = 10_000  # estimation samples
ALPHA = 0.001  # failure probability of each certificate (Cohen et al.)
NOISE_BATCH = 1000  # noisy samples per forward pass
SEED = 0

EMBEDDED_MODEL = "dmae-tiny-cifar10"  # the classifier shipped inside the package: every command's default model

# Shown wherever a certificate is shown (pipeline result, CLI, web page, demo): what a certificate does not say.
CERTIFICATE_CAVEAT = ("A certificate proves that the smoothed classifier's answer cannot change within the radius; it "
                      "does not prove that the answer is correct (an image the model never learned gets a confident "
                      "certificate too).")
# An image shrunk by more than this factor on a side to reach the model's input (a photo into a 32x32 model) is
# flagged: the certificate is about the small image, which may have lost what the photo shows.
MAX_SHRINK = 4.0

# `dmae demo` certifies 20 images in about a minute on 2 CPU cores: n = 1,000 caps the radius at 2.2 sigma
# (0.55 at sigma = 0.25), which is enough to show what a certificate is.
DEMO_N = 1000

# The methods of `smoothing.certify` and the options each takes: the pipeline's call arguments, `dmae certify --method`
# and the web demo read this table, so a new method is added here and in `smoothing.certify`.
METHODS = {
    "cohen": (),
    "adaptive": ("first_look", "target_radius", "radius_tolerance", "estimate_tolerance"),
    "sequential": ("first_look", "target_radius", "radius_tolerance", "reach"),
}
# method="sequential" chases a target radius only while it is reachable within REACH * n samples
# (dmae_hf/sequential.py; chosen on CIFAR-10 images 0-99 by benchmarks/sequential, reported on images 100-499)
REACH = 0.4


# ------------------------------------------------------------------------------------------------------------- sigma
MAX_SIGMA = 1.0  # noise std in [0, 1] pixel units; Cohen et al. and DMAE certify at 0.12 to 1.0


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float is finite, and out of every range
        return True


def check_sigma(sigma, trained_sigma=None, override=False, name="sigma", allow_zero=False) -> float:
    """The one rule for a noise level, on every route (Python API, pipeline, CLI, web page, config fields).

    sigma is the std of the Gaussian noise in [0, 1] pixel units: a finite number in (0, MAX_SIGMA] ([0, MAX_SIGMA]
    with `allow_zero`, for configs where 0 means no noise). A value above MAX_SIGMA is almost always one in 0-255
    units, and the message says to divide by 255. When the model was trained for `trained_sigma`, sigma must equal it
    unless `override` is set: the caller means to certify at another level, which is valid but usually weak, and the
    result then records `sigma_override`. Returns sigma as a float; raises `ValueError` naming the problem and fix.
    """
    low = "[0" if allow_zero else "(0"
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not _finite(sigma) or sigma < 0 or (
            sigma == 0 and not allow_zero):
        raise ValueError(f"{name} must be a number in {low}, {MAX_SIGMA:g}] (the noise std in [0, 1] pixel units), "
                         f"got {sigma!r}.")
    if sigma > MAX_SIGMA:
        if sigma > 1e6:  # no unit makes this a noise level (and 10**400 does not even convert to float)
            raise ValueError(f"{name} is far above {MAX_SIGMA:g}: it must be a number in {low}, {MAX_SIGMA:g}] (the "
                             f"noise std in [0, 1] pixel units).")
        raise ValueError(f"{name} = {sigma:g} is larger than {MAX_SIGMA:g}: it is in [0, 1] pixel units (images are "
                         f"scaled to [0, 1] before the noise). For a value in 0-255 units divide by 255 "
                         f"({sigma:g} / 255 = {sigma / 255:.4g}).")
    sigma = float(sigma)
    if trained_sigma is not None and not override and abs(sigma - float(trained_sigma)) > 1e-9:
        raise ValueError(f"This model was trained for sigma = {float(trained_sigma):g}, not {sigma:g}: certify it at "
                         f"{float(trained_sigma):g}, or pass override_sigma=True (CLI: --override-sigma) to certify "
                         f"at {sigma:g} anyway (valid, usually weaker; the result records sigma_override).")
    return sigma
