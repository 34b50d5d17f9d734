"""Randomized-smoothing PREDICT and CERTIFY (Cohen et al., 2019). Placeholder until the certification issue lands."""


def predict(*args, **kwargs):
    raise NotImplementedError("dmae_hf.smoothing.predict is being implemented (issue 3).")


def certify(*args, **kwargs):
    raise NotImplementedError("dmae_hf.smoothing.certify is being implemented (issue 3).")
