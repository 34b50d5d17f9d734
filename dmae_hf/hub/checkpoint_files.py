# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Reading checkpoint files safely, for `dmae convert` and `dmae publish`: safetensors, or `torch.load` with
`weights_only=True` only, and a file that cannot be read is called what it is.

What a file is, from its first bytes (nothing is unpickled to find out; `pickletools.genops` only parses opcodes):

- a zip archive (`PK\\x03\\x04`): torch.save's format; unreadable means corrupt or truncated;
- `\\x80` + protocol 2-5: a pickle. torch.save's legacy format starts with torch's magic number; a complete pickle
  without it is a plain Python pickle (`pickle.dump`), which `weights_only` cannot load; anything else is corrupt;
- an 8-byte length then `{`: safetensors, whatever the file's suffix;
- anything else (text, random bytes, an empty file): not a checkpoint at all.
"""

import argparse
import json
import pickle
import pickletools
import re
import warnings
from pathlib import Path

import torch

from ..load_report import non_finite_tensors

_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER, the first pickle of a legacy torch.save
_PARSE_LIMIT = 10_000_000  # opcodes parsed before a pickle is taken as complete
_EXPECTED = ("Convert an official DMAE .pth, a .safetensors file or a transformers ViTMAE directory (saved with "
             "torch.save / save_pretrained).")


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted; the message says why and names the keys involved."""


# What torch's weights-only unpickler says when a pickle would import or call something beyond plain data.
_CODE_EXECUTION = re.compile(r"GLOBAL (\S+) was not an allowed global|GLOBAL (\S+) whose module \S+ is blocked"
                             r"|reduce for unrecognized function (.+?)(?: which belongs|$)"
                             r"|Can only (?:create new object|build) .*?but got (.+)", re.M)


def _pickle_kind(path: Path) -> str | None:
    """"torch" (torch.save's legacy format), "pickle" (a complete plain pickle) or None (not a well-formed pickle)."""
    try:
        with open(path, "rb") as f:
            for count, (op, arg, _) in enumerate(pickletools.genops(f)):
                if arg == _TORCH_MAGIC:
                    return "torch"
                if op.name == "STOP" or count > _PARSE_LIMIT:
                    return "pickle"
    except (ValueError, EOFError, OSError):
        return None
    return None


def _unreadable(path: Path, detail: str) -> CheckpointError:
    """The error for a file `torch.load(weights_only=True)` could not read (not for lack of code execution)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return CheckpointError(f"{path} is empty (0 bytes), not a checkpoint. {_EXPECTED}")
    if head.startswith(b"PK\x03\x04"):
        return CheckpointError(f"{path} could not be read: corrupt or truncated checkpoint ({detail[:200]}).")
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        kind = _pickle_kind(path)
        if kind == "pickle":
            return CheckpointError(
                f"{path} is a plain Python pickle (protocol {head[1]}), not a checkpoint written by torch.save, and "
                "not a DMAE checkpoint: dmae-hf reads checkpoints with torch.load(weights_only=True), which cannot "
                "load a plain pickle (unpickling it could run code). Re-save the weights with "
                "torch.save({'model': model.state_dict()}, path) from code you trust.")
        return CheckpointError(f"{path} could not be read: corrupt or truncated checkpoint ({detail[:200]}).")
    return CheckpointError(f"{path} is not a DMAE/MAE checkpoint: neither a torch.save file (a zip archive or a "
                           f"pickle) nor safetensors (it starts with {head!r}). {_EXPECTED}")


def torch_load(path: Path) -> dict:
    """`torch.load(weights_only=True)`, allowing only `argparse.Namespace` beyond tensors and plain containers: the
    official training scripts save their `args` with the weights, and a Namespace only holds attributes."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # the error says what the file is
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _CODE_EXECUTION.search(str(e))
        if found:
            raise CheckpointError(
                f"{path} is a pickle that needs code execution to load (it references "
                f"{next(g for g in found.groups() if g)}), which is not allowed: dmae-hf only reads checkpoints "
                "with torch.load(weights_only=True). The file is not corrupt; re-save the state dict alone "
                "(torch.save({'model': model.state_dict()}, path)) from code you trust."
            ) from e
        detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", str(e))
        raise _unreadable(path, detail.group(1) if detail else str(e).strip().splitlines()[0]) from e
    except IsADirectoryError as e:
        raise CheckpointError(f"{path} is a directory without model.safetensors or pytorch_model.bin.") from e
    except Exception as e:  # noqa: BLE001 - torch.load fails on foreign bytes with any type (IndexError, KeyError...)
        raise _unreadable(path, f"{type(e).__name__}: {e}") from e


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _load_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} could not be read: corrupt or truncated safetensors file ({e}).") from e


def load_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Read a checkpoint file or a transformers model directory.

    Returns the state dict (unwrapped from `{"model": ...}`) and the directory's `config.json` as a dict, if any.
    """
    path = Path(path)
    hf_config = None
    if path.is_dir():
        if (path / "config.json").is_file():
            hf_config = json.loads((path / "config.json").read_text())
        if (path / "model.safetensors").is_file():
            state = _load_safetensors(path / "model.safetensors")
        elif (path / "model.safetensors.index.json").is_file():
            index = json.loads((path / "model.safetensors.index.json").read_text())
            state = {}
            for shard in sorted(set(index["weight_map"].values())):
                state.update(_load_safetensors(path / shard))
        elif (path / "pytorch_model.bin").is_file():
            state = torch_load(path / "pytorch_model.bin")
        else:
            raise CheckpointError(f"{path} holds no model.safetensors or pytorch_model.bin.")
    elif path.is_file():
        safetensors = path.suffix == ".safetensors" or _is_safetensors(path)
        state = _load_safetensors(path) if safetensors else torch_load(path)
    else:
        raise CheckpointError(f"Checkpoint {path} does not exist.")

    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} does not hold a state dict (got {type(state).__name__}).")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path} is not a state dict: entries {not_tensors[:10]} are not tensors.")
    return state, hf_config


def check_finite(state: dict, source: str = "checkpoint") -> None:
    """Refuse floating-point tensors holding NaN or Inf, naming them: such a model outputs NaN, which no
    certificate may be built on."""
    bad = non_finite_tensors(state.items())
    if bad:
        raise CheckpointError(f"The {source} has {len(bad)} tensor(s) with NaN or Inf values: {bad[:10]}"
                              f"{' ...' if len(bad) > 10 else ''}. Convert a checkpoint saved before training "
                              "diverged.")


__all__ = ["CheckpointError", "torch_load", "load_checkpoint", "check_finite"]
