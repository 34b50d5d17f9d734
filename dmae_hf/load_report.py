# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""What loading a checkpoint reports: the one-line summary of the weights a load dropped or initialised on
purpose (a pre-training checkpoint loaded as a classifier), and the refusal of weights that hold NaN or Inf."""

import torch


def non_finite_tensors(named_tensors) -> list[str]:
    """Names of the floating-point tensors of `(name, tensor)` pairs that hold NaN or Inf (meta tensors skipped).

    A model with such weights outputs NaN, and no certificate may rest on it: loading and conversion refuse them."""
    return [name for name, tensor in named_tensors
            if tensor.is_floating_point() and tensor.device.type != "meta" and not torch.isfinite(tensor).all()]


def refuse_non_finite_weights(model, source) -> None:
    """A one-line `ValueError` naming the tensors of `model` (loaded from `source`) that hold NaN or Inf values."""
    bad = non_finite_tensors(model.state_dict().items())
    if bad:
        raise ValueError(f"{source}: {len(bad)} weight tensor(s) hold NaN or Inf values: {bad[:10]}"
                         f"{' ...' if len(bad) > 10 else ''}. The checkpoint is corrupt or was saved after training "
                         "diverged; load an earlier one.")


def load_summary(model_name: str, source, dropped, initialised) -> str:
    """One line naming the modules (`decoder`, `dmae.layernorm`, `classifier`, `fc_norm`) whose tensors a load dropped
    or initialised, with tensor counts."""

    def modules(keys) -> str:
        names = dict.fromkeys(".".join(k.split(".")[:2 if k.startswith("dmae.") else 1]) for k in sorted(keys))
        return f"{' + '.join(names)} ({len(keys)} tensor{'s' * (len(keys) != 1)})"

    parts = ([f"dropped {modules(dropped)}"] if dropped else []) + (
        [f"initialised {modules(initialised)}"] if initialised else [])
    return f"{model_name} from {source}: {', '.join(parts)}"


def expected_load_changes(loading_info, filter_keys) -> tuple[set, set]:
    """Run transformers' filtering of `loading_info` by `_keys_to_ignore_on_load_*` (`filter_keys`, the model's
    `_adjust_missing_and_unexpected_keys`) and return what it filtered: (dropped, initialised) keys."""
    unexpected, missing = set(loading_info.unexpected_keys), set(loading_info.missing_keys)
    filter_keys(loading_info)
    return unexpected - set(loading_info.unexpected_keys), missing - set(loading_info.missing_keys)


__all__ = ["expected_load_changes", "load_summary", "non_finite_tensors", "refuse_non_finite_weights"]
