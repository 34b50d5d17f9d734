# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Checkpoints and resume: the loop state (`TrainState`), pickle-free trees of tensors (`save_tree`/`load_tree`),
every process's RNG states, and `Checkpoints`, which writes a run's full state atomically and resumes it."""

from __future__ import annotations

import json
import os
import re
import shutil

import torch


class TrainState:
    """Loop counters saved with every checkpoint: optimizer steps taken, epoch, batches consumed in that epoch, the
    best validation metric so far, and the size of `metrics.jsonl` when the checkpoint was written (a resumed run
    cuts the log back to it, so every logged step appears once)."""

    def __init__(self):
        self.step = 0
        self.epoch = 0
        self.batches_in_epoch = 0
        self.best_metric = None
        self.metrics_bytes = 0

    def state_dict(self) -> dict:
        return dict(step=self.step, epoch=self.epoch, batches_in_epoch=self.batches_in_epoch,
                    best_metric=self.best_metric, metrics_bytes=self.metrics_bytes)

    def load_state_dict(self, state: dict) -> None:
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.batches_in_epoch, self.best_metric = int(state["batches_in_epoch"]), state.get("best_metric")
        self.metrics_bytes = int(state.get("metrics_bytes", 0))


# --------------------------------------------------------------------------------------------------------------
# Checkpoints: no pickle, atomic
# --------------------------------------------------------------------------------------------------------------
#
# `checkpoints/checkpoint-<step>/` holds `model.safetensors`, `optimizer.{json,safetensors}`, one
# `rng_<rank>.{json,safetensors}` per process and, written last, `trainer_state.json` (loop state + the size of
# every other file). Everything is written into `checkpoints/.tmp-checkpoint-<step>/`, fsync'd, and renamed into
# place only when complete, so a kill at any moment leaves either the whole checkpoint or none. Loading reads JSON
# and safetensors only: no file of a checkpoint is ever unpickled (Accelerate's `save_state`/`load_state` pickle
# the optimizer, the RNG states and registered objects, so they are not used).

CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
TRAINER_STATE = "trainer_state.json"
FORMAT_VERSION = 1
FAULT_ENV = "DMAE_CHECKPOINT_FAULT"  # "<step>:<point>": SIGKILL this process there (tests/test_checkpoint_faults.py)


def _fault_point(step: int, point: str) -> None:
    """Test hook: `DMAE_CHECKPOINT_FAULT=<step>:<point>` kills the process with SIGKILL at that point of the save
    sequence of the checkpoint of that step, exactly as `kill -9` would."""
    if os.environ.get(FAULT_ENV) == f"{step}:{point}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def fsync(path: str) -> None:
    """Flush `path` (a file or a folder) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(obj, tensors: dict):
    """A JSON tree of `obj` (dicts with int/str keys, lists, tuples, numbers, strings, None, tensors, numpy
    arrays); tensors and arrays go to `tensors` and are referenced by name."""
    import numpy as np

    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(obj.astype(np.int64) if obj.dtype == np.uint32 else obj.copy())
        return {"__ndarray__": name, "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        if not all(isinstance(k, (int, str)) for k in obj):
            raise TypeError(f"Cannot checkpoint dict keys {list(obj)!r}: only int and str keys are supported.")
        return {"__dict__": [[k, _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"Cannot checkpoint a {type(obj).__name__} without pickle.")


def _decode(tree, tensors: dict, where: str):
    import numpy as np

    if isinstance(tree, list):
        return [_decode(v, tensors, where) for v in tree]
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"} and tree["__tensor__"] in tensors:
            return tensors[tree["__tensor__"]]
        if set(tree) == {"__ndarray__", "dtype"} and tree["__ndarray__"] in tensors:
            return tensors[tree["__ndarray__"]].numpy().astype(np.dtype(tree["dtype"]))
        if set(tree) == {"__tuple__"}:
            return tuple(_decode(v, tensors, where) for v in tree["__tuple__"])
        if set(tree) == {"__dict__"}:
            return {k: _decode(v, tensors, where) for k, v in tree["__dict__"]}
        raise ValueError(f"Unexpected entry {tree!r} in {where}: not a checkpoint written by dmae_hf.training.")
    return tree


def save_tree(obj, stem: str) -> list[str]:
    """Write `obj` as `stem.json` (structure) + `stem.safetensors` (tensors), fsync'd. Returns the file names."""
    from safetensors.torch import save_file

    tensors = {}
    tree = _encode(obj, tensors)
    save_file(tensors, stem + ".safetensors")
    with open(stem + ".json", "w") as f:
        json.dump({"format": FORMAT_VERSION, "tree": tree}, f)
    for path in (stem + ".safetensors", stem + ".json"):
        fsync(path)
    return [os.path.basename(stem) + ext for ext in (".safetensors", ".json")]


def load_tree(stem: str):
    """Inverse of `save_tree`; reads JSON and safetensors only."""
    from safetensors.torch import load_file

    with open(stem + ".json") as f:
        tree = json.load(f)
    if not isinstance(tree, dict) or tree.get("format") != FORMAT_VERSION:
        raise ValueError(f"{stem}.json is not a dmae_hf checkpoint file (format {FORMAT_VERSION}).")
    return _decode(tree["tree"], load_file(stem + ".safetensors"), stem + ".json")


def rng_states() -> dict:
    """Python, NumPy, torch CPU (and CUDA) generator states of this process."""
    import random

    import numpy as np

    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    import random

    import numpy as np

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def checkpoint_status(path: str) -> tuple[dict | None, str]:
    """(`trainer_state.json` contents, "") for a complete checkpoint folder, else (None, why not)."""
    if os.path.basename(os.path.normpath(path)).startswith("."):
        return None, "unfinished (killed while saving)"
    try:
        with open(os.path.join(path, TRAINER_STATE)) as f:
            meta = json.load(f)
    except FileNotFoundError:
        legacy = any(n.endswith(".pkl") for n in os.listdir(path)) if os.path.isdir(path) else False
        return None, "an Accelerate checkpoint with pickles (not loaded)" if legacy else f"no {TRAINER_STATE}"
    except (OSError, ValueError) as err:
        return None, f"unreadable {TRAINER_STATE} ({err})"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        return None, f"{TRAINER_STATE} is not format {FORMAT_VERSION}"
    for name, size in meta.get("files", {}).items():
        file = os.path.join(path, name)
        if not os.path.isfile(file) or os.path.getsize(file) != size:
            return None, f"{name} missing or truncated"
    return meta, ""


def find_checkpoints(output_dir: str) -> tuple[list[tuple[int, str]], list[tuple[str, str]]]:
    """(complete checkpoints as (step, path), oldest first; incomplete ones as (path, reason))."""
    root = os.path.join(output_dir, "checkpoints")
    complete, incomplete = [], []
    if not os.path.isdir(root):
        return complete, incomplete
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        match = CHECKPOINT_RE.fullmatch(name.removeprefix(".tmp-"))
        if not os.path.isdir(path) or not (match or re.fullmatch(r"checkpoint_\d+", name)):
            continue
        meta, why = checkpoint_status(path)
        if meta is not None and match and not name.startswith("."):
            complete.append((int(match.group(1)), path))
        else:
            incomplete.append((path, why))
    return sorted(complete), incomplete


def latest_checkpoint(output_dir: str) -> str | None:
    """The newest COMPLETE `output_dir/checkpoints/checkpoint-<step>`, or None."""
    complete, _ = find_checkpoints(output_dir)
    return complete[-1][1] if complete else None


_UNSUPPORTED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")


class Checkpoints:
    """Save and resume a run's full state (model, optimizer, grad scaler, every process's RNG states, `TrainState`)
    without pickle, atomically, keeping the newest `keep` complete checkpoints (0: all).

    Data-parallel runs only (one device, DDP, CPU processes): every rank holds the full model and optimizer state,
    which the main process writes; each rank writes its own RNG states."""

    def __init__(self, accelerator, output_dir: str, model, optimizer, state: TrainState, keep: int = 2):
        kind = str(accelerator.distributed_type).split(".")[-1]
        if kind in _UNSUPPORTED:
            raise ValueError(f"Checkpoints are written without pickle for one device and DDP runs only, not {kind} "
                             f"(its checkpoint format unpickles); launch with a DDP config such as "
                             f"examples/accelerate_configs/multi_gpu.yaml.")
        if keep < 0:
            raise ValueError(f"--keep-checkpoints must be >= 0 (0 keeps all), got {keep}.")
        self.accelerator, self.model, self.optimizer, self.state = accelerator, model, optimizer, state
        self.keep = keep
        self.root = os.path.join(output_dir, "checkpoints")

    def save(self, tracker=None) -> str:
        """Write `checkpoint-<step>` (into a temporary folder renamed when complete), then prune old ones. The
        size of `tracker`'s log (`tracking.JsonlTracker.size()`) is recorded in the checkpoint (a resumed run cuts the
        log back to it)."""
        acc, step = self.accelerator, self.state.step
        final = os.path.join(self.root, f"checkpoint-{step}")
        tmp = os.path.join(self.root, f".tmp-checkpoint-{step}")
        if acc.is_main_process:
            os.makedirs(self.root, exist_ok=True)
            for name in os.listdir(self.root):  # leftovers of killed saves and prunes
                if name.startswith((".tmp-", ".trash-")):
                    shutil.rmtree(os.path.join(self.root, name))
            os.makedirs(tmp)
            if tracker is not None:
                self.state.metrics_bytes = tracker.size()
        acc.wait_for_everyone()
        _fault_point(step, "begin")
        files = save_tree(rng_states(), os.path.join(tmp, f"rng_{acc.process_index}"))
        _fault_point(step, "rng")
        acc.wait_for_everyone()
        if acc.is_main_process:
            from safetensors.torch import save_model

            files = [f"rng_{rank}{ext}" for rank in range(acc.num_processes) for ext in (".safetensors", ".json")]
            save_model(acc.unwrap_model(self.model), os.path.join(tmp, "model.safetensors"))
            fsync(os.path.join(tmp, "model.safetensors"))
            _fault_point(step, "model")
            scaler = acc.scaler.state_dict() if acc.scaler is not None else None
            files += save_tree({"optimizer": self.optimizer.state_dict(), "scaler": scaler},
                               os.path.join(tmp, "optimizer"))
            files.append("model.safetensors")
            _fault_point(step, "optimizer")
            meta = {"format": FORMAT_VERSION, "train_state": self.state.state_dict(), "accelerator_step": acc.step,
                    "num_processes": acc.num_processes,
                    "files": {n: os.path.getsize(os.path.join(tmp, n)) for n in sorted(files)}}
            with open(os.path.join(tmp, TRAINER_STATE), "w") as f:
                json.dump(meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _fault_point(step, "state")
            if os.path.exists(final):  # the same step saved by an earlier run into this folder
                os.rename(final, os.path.join(self.root, f".trash-checkpoint-{step}"))
            os.rename(tmp, final)
            fsync(self.root)
            _fault_point(step, "renamed")
            self.prune(step)
        acc.wait_for_everyone()
        return final

    def prune(self, step: int) -> None:
        """Delete complete checkpoints older than the newest `keep` ones (never the newest, `keep >= 1`), each
        renamed out of the way first so that a kill mid-deletion leaves no half checkpoint under its name."""
        if not self.keep:
            return
        complete, _ = find_checkpoints(os.path.dirname(self.root))
        for _, path in complete[:-self.keep]:
            trash = os.path.join(self.root, f".trash-{os.path.basename(path)}")
            os.rename(path, trash)
            _fault_point(step, "pruning")
            shutil.rmtree(trash)
        _fault_point(step, "pruned")

    def resume(self, resume: str | bool | None) -> str | None:
        """Load `resume` (a checkpoint folder) or, for True/"auto"/"latest", the newest complete checkpoint (None
        when there is none yet: a fresh start). Prints one line naming the checkpoint and any incomplete ones
        ignored. Raises `ValueError` for a folder that is not a complete checkpoint of this run's shape."""
        acc = self.accelerator
        if not resume:
            return None
        if resume in (True, "auto", "latest"):
            complete, incomplete = find_checkpoints(os.path.dirname(self.root))
            path = complete[-1][1] if complete else None
            ignored = "; ignored incomplete: " + ", ".join(f"{os.path.basename(p)} ({why})" for p, why in
                                                            incomplete) if incomplete else ""
            where = f"from {path}" if path else f"no complete checkpoint in {self.root}, starting at step 0"
            acc.print(f"resume: {where}{ignored}")
            if path is None:
                return None
        else:
            path = os.path.expanduser(str(resume))
            if not os.path.isdir(path):
                what = "is a file, not a checkpoint folder" if os.path.exists(path) else "does not exist"
                raise ValueError(f"Checkpoint {path!r} {what}; pass a checkpoint-<step> folder or --resume alone "
                                 f"for the newest one in OUTPUT_DIR/checkpoints.")
            acc.print(f"resume: from {path}")
        meta, why = checkpoint_status(path)
        if meta is None:
            raise ValueError(f"Checkpoint {path!r} is incomplete or not a dmae_hf checkpoint: {why}. Pass a complete "
                             f"checkpoint-<step> folder, or --resume alone to take the newest complete one.")
        if meta["num_processes"] != acc.num_processes:
            raise ValueError(f"Checkpoint {path!r} was written by {meta['num_processes']} process(es), this run has "
                             f"{acc.num_processes}; resume with the same number of processes.")
        from safetensors.torch import load_model

        def read(name, load):
            try:
                return load()
            except Exception as err:  # safetensors, JSON and shape errors alike: a damaged or forged file
                raise ValueError(f"{name} of checkpoint {path!r} is not valid ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}); it was not unpickled. Resume "
                                 f"from another checkpoint-<step> folder.") from err

        rng = f"rng_{acc.process_index}"
        read("model.safetensors", lambda: load_model(acc.unwrap_model(self.model), os.path.join(
            path, "model.safetensors"), strict=True))  # read to CPU, copied into the parameters in place
        opt = read("optimizer.json/optimizer.safetensors", lambda: load_tree(os.path.join(path, "optimizer")))
        read("optimizer.json/optimizer.safetensors", lambda: self.optimizer.load_state_dict(opt["optimizer"]))
        if acc.scaler is not None and opt["scaler"] is not None:
            acc.scaler.load_state_dict(opt["scaler"])
        read(f"{rng}.json/{rng}.safetensors", lambda: set_rng_states(load_tree(os.path.join(path, rng))))
        self.state.load_state_dict(meta["train_state"])
        acc.step = int(meta.get("accelerator_step", 0))
        return path
