# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Training utilities shared by `examples/pretrain.py` and `examples/finetune.py`: AdamW parameter groups (no decay
on norms and biases; layer-wise lr decay for fine-tuning), the per-step warmup + half-cosine schedule, the
checkpointed loop state, a JSON-lines (and TensorBoard when installed) tracker and reconstruction images."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time

import torch


def param_groups_weight_decay(model: torch.nn.Module, weight_decay: float, skip: tuple[str, ...] = ()) -> list[dict]:
    """MAE's pre-training groups (timm `add_weight_decay`): 1-D parameters and `*.bias` get no weight decay, frozen
    parameters are left out. The (1, 1, D) `cls_token` and `mask_token` DO get decay, as in MAE."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or name.endswith(".bias") or _short(name) in skip:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def layer_id(name: str, num_layers: int) -> int:
    """DMAE/MAE `lr_decay.get_layer_id_for_vit` on our parameter names: 0 for the CLS token, position embeddings
    and patch embedding; `i + 1` for encoder block `i`; `num_layers` (= depth + 1) for everything after the blocks
    (`fc_norm`, `classifier`, a final norm)."""
    if ".embeddings." in f".{name}":
        return 0
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return num_layers


def param_groups_layer_decay(model: torch.nn.Module, weight_decay: float, layer_decay: float,
                             no_weight_decay: tuple[str, ...] = ("position_embeddings", "cls_token")) -> list[dict]:
    """Fine-tuning groups (`util/lr_decay.param_groups_lrd`): scale `layer_decay ** (num_layers - layer_id)` with
    `num_layers = depth + 1`; no weight decay for 1-D parameters, biases, the position embeddings and the CLS
    token. Each group carries `lr_scale`, which `set_lr` multiplies into the scheduled lr."""
    num_layers = model.config.num_hidden_layers + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim == 1 or name.endswith(".bias") or _short(name) in no_weight_decay
        lid = layer_id(name, num_layers)
        key = (lid, no_decay)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                           "lr_scale": layer_decay ** (num_layers - lid), "layer_id": lid}
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Per-step linear warmup then half-cosine (MAE `util/lr_sched.py`, evaluated per optimizer step):
    `lr = base_lr * step / warmup` for `step < warmup`, else
    `min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup)))`."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


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


def _fsync(path: str) -> None:
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
        _fsync(path)
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
        self.accelerator, self.model, self.optimizer, self.state, self.keep = accelerator, model, optimizer, state, keep
        self.root = os.path.join(output_dir, "checkpoints")

    def save(self, logger: JsonlLogger | None = None) -> str:
        """Write `checkpoint-<step>` (into a temporary folder renamed when complete), then prune old ones."""
        acc, step = self.accelerator, self.state.step
        final = os.path.join(self.root, f"checkpoint-{step}")
        tmp = os.path.join(self.root, f".tmp-checkpoint-{step}")
        if acc.is_main_process:
            os.makedirs(self.root, exist_ok=True)
            for name in os.listdir(self.root):  # leftovers of killed saves and prunes
                if name.startswith((".tmp-", ".trash-")):
                    shutil.rmtree(os.path.join(self.root, name))
            os.makedirs(tmp)
            if logger is not None:
                self.state.metrics_bytes = logger.size()
        acc.wait_for_everyone()
        _fault_point(step, "begin")
        files = save_tree(rng_states(), os.path.join(tmp, f"rng_{acc.process_index}"))
        _fault_point(step, "rng")
        acc.wait_for_everyone()
        if acc.is_main_process:
            from safetensors.torch import save_model

            files = [f"rng_{rank}{ext}" for rank in range(acc.num_processes) for ext in (".safetensors", ".json")]
            save_model(acc.unwrap_model(self.model), os.path.join(tmp, "model.safetensors"))
            _fsync(os.path.join(tmp, "model.safetensors"))
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
            _fsync(self.root)
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
        for old_step, path in complete[:-self.keep]:
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
            acc.print(f"resume: {'from ' + path if path else 'no complete checkpoint in ' + self.root + ', starting at step 0'}"
                      f"{ignored}")
            if path is None:
                return None
        else:
            path = os.path.expanduser(str(resume))
            if not os.path.isdir(path):
                raise ValueError(f"Checkpoint {path!r} does not exist; pass a checkpoint-<step> folder or --resume "
                                 f"alone for the newest one in OUTPUT_DIR/checkpoints.")
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


class JsonlLogger:
    """Metrics of the main process as JSON lines in `output_dir/metrics.jsonl`, and TensorBoard scalars when
    `torch.utils.tensorboard` is usable. Other processes log nothing.

    `resumed`: the `TrainState` a run resumed from, or None for a fresh run. A fresh run starts an empty log; a
    resumed one cuts the log back to its size at that checkpoint (dropping what the killed run logged after it,
    torn last line included), so each step is logged once however often the run was killed and resumed."""

    def __init__(self, output_dir: str, is_main: bool = True, config: dict | None = None,
                 resumed: TrainState | None = None):
        self.is_main = is_main
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.tb = None
        if not is_main:
            return
        os.makedirs(output_dir, exist_ok=True)
        keep = resumed.metrics_bytes if resumed is not None else 0
        with open(self.path, "a+b") as f:
            if f.seek(0, os.SEEK_END) > keep:
                f.truncate(keep)
        if config is not None:
            with open(os.path.join(output_dir, "run_config.json"), "w") as f:
                json.dump(config, f, indent=2, default=str)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(output_dir, "tensorboard"),
                                    purge_step=resumed.step + 1 if resumed is not None else None)
        except Exception:  # tensorboard not installed
            self.tb = None

    def size(self) -> int:
        """Bytes in the log now, everything written so far fsync'd (recorded in each checkpoint)."""
        if not self.is_main or not os.path.exists(self.path):
            return 0
        _fsync(self.path)
        return os.path.getsize(self.path)

    def log(self, metrics: dict, step: int) -> None:
        if not self.is_main:
            return
        record = {"step": step, "time": time.time(), **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def read_metrics(path: str) -> list[dict]:
    """The records of a `metrics.jsonl`; a torn last line (a run killed mid-write) is dropped."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not JSON ({line[:80]!r}).") from None
    return records


@torch.no_grad()
def save_reconstruction(model, pixel_values: torch.Tensor, path: str, num_images: int = 8, seed: int = 0) -> str:
    """PNG grid of rows (original / noisy input with the masked patches greyed / reconstruction / reconstruction
    with the visible noisy patches pasted back) for a `DMAEForPreTraining` model. The reconstruction is
    un-normalised with the per-patch statistics of the clean target when `norm_pix_loss`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .augment import to_float
    from .modeling_dmae import add_gaussian_noise

    was_training = model.training
    model.eval()
    x = to_float(pixel_values[:num_images])
    gen = torch.Generator(device=x.device).manual_seed(seed)
    noisy = add_gaussian_noise(x, model.config.noise_sigma, generator=gen)
    mask_noise = torch.rand(x.shape[0], model.config.num_patches, generator=gen, device=x.device)
    out = model(x, mask_noise=mask_noise, pixel_noise=noisy - x)
    target = model.preprocess_pixels(x)
    pred = out.logits.float()
    if model.config.norm_pix_loss:
        t = model.patchify(target)
        pred = pred * (t.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + t.mean(dim=-1, keepdim=True)
    mean = torch.tensor(model.config.image_mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(model.config.image_std, device=x.device).view(1, -1, 1, 1)
    recon = model.unpatchify(pred) * std + mean
    size = recon.shape[-1]
    resize = (lambda t: torch.nn.functional.interpolate(t, size=(size, size), mode="bicubic", align_corners=False)
              if t.shape[-1] != size else t)
    clean, noisy_r = resize(x), resize(noisy)
    p = model.config.patch_size
    mask = out.mask.view(-1, size // p, size // p).repeat_interleave(p, 1).repeat_interleave(p, 2).unsqueeze(1)
    masked = noisy_r * (1 - mask) + 0.5 * mask
    pasted = noisy_r * (1 - mask) + recon * mask
    rows = [("original", clean), ("noisy + masked", masked), ("reconstruction", recon), ("recon + visible", pasted)]
    fig, axes = plt.subplots(len(rows), x.shape[0], figsize=(1.6 * x.shape[0], 1.7 * len(rows)), squeeze=False)
    for r, (title, images) in enumerate(rows):
        for c in range(x.shape[0]):
            ax = axes[r][c]
            ax.imshow(images[c].clamp(0, 1).permute(1, 2, 0).cpu().numpy())
            ax.axis("off")
            if c == 0:
                ax.set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    model.train(was_training)
    return path



# --------------------------------------------------------------------------------------------------------------
# Command-line pieces shared by examples/pretrain.py and examples/finetune.py
# --------------------------------------------------------------------------------------------------------------

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`--help` of the example scripts: the module docstring as written, every option with its default."""


def add_common_args(parser, stage: str) -> None:
    """Model, data, optimisation and bookkeeping flags shared by both example scripts (`stage`: "pretrain" or
    "finetune"; it only changes defaults)."""
    ft = stage == "finetune"
    g = parser.add_argument_group("model")
    from .configuration_dmae import ARCHITECTURES

    g.add_argument("--preset", default="vit-base", choices=list(ARCHITECTURES),
                   help="architecture: a DMAEConfig.from_preset name (the other model flags override its fields)")
    g.add_argument("--hidden-size", type=int, help="encoder width (None: the preset's)")
    g.add_argument("--depth", type=int, help="encoder blocks, num_hidden_layers (None: the preset's)")
    g.add_argument("--heads", type=int, help="encoder attention heads (None: the preset's)")
    g.add_argument("--patch-size", type=int, help="patch size in pixels (None: the preset's)")
    g.add_argument("--image-size", type=int, help="the model's native input size; it resizes other inputs "
                                                  "(None: the preset's or checkpoint's)")
    g.add_argument("--decoder-hidden-size", type=int, help="decoder width (None: the preset's)")
    g.add_argument("--decoder-depth", type=int, help="decoder blocks (None: the preset's)")
    g.add_argument("--decoder-heads", type=int, help="decoder attention heads (None: the preset's)")
    g.add_argument("--normalization", choices=["auto", "cifar10", "imagenet"], default="auto",
                   help="mean/std applied inside the model (auto: cifar10 when the dataset name contains 'cifar')")

    g = parser.add_argument_group("data")
    g.add_argument("--dataset", required=True,
                   help="Hub dataset id (uoft-cs/cifar10, ILSVRC/imagenet-1k) or a local copy in the Hub layout "
                        "(e.g. $DMAE_DATA_DIR/cifar10)")
    g.add_argument("--split", default="train", help="training split")
    g.add_argument("--image-column", default=None, help="image column (None: the first of image, img, jpg, png, webp)")
    g.add_argument("--label-column", default="label", help="label column (a ClassLabel)")
    g.add_argument("--token", default=None, help="Hub token for gated datasets (None: HF_TOKEN or the saved login)")
    g.add_argument("--val-size", type=int, default=0 if not ft else 1000,
                   help="examples held out from the TRAIN split for validation (never the test split)")
    g.add_argument("--max-train-examples", type=int, default=None, help="use only the first N training examples")
    g.add_argument("--train-size", type=int, default=None, help="examples per epoch, when it cannot be counted")
    g.add_argument("--decode-size", type=int, default=None,
                   help="CPU decode: resize shortest edge + center crop to this size (None: keep images smaller "
                        "than 64 px as they are, else 256 for training crops / image_size for evaluation)")
    g.add_argument("--crop-scale", type=float, nargs=2, default=None,
                   help="RandomResizedCrop scale on the device (None: %s for image_size >= 128, none below)"
                        % ("0.08 1" if ft else "0.2 1"))
    g.add_argument("--no-crop", action="store_true", help="disable RandomResizedCrop")
    g.add_argument("--shuffle-buffer", type=int, default=10_000, help="examples in the streaming shuffle buffer")
    g.add_argument("--num-workers", type=int, default=4, help="DataLoader workers decoding images (rank 0)")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=32 if ft else 64, help="per process and per micro-step")
    g.add_argument("--grad-accum", type=int, default=4 if ft else 8, help="micro-steps per optimizer step")
    g.add_argument("--epochs", type=float, default=100 if ft else 1100, help="training length in epochs")
    g.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    g.add_argument("--lr", type=float, default=None, help="absolute lr (overrides --blr)")
    g.add_argument("--blr", type=float, default=5e-4 if ft else 1.5e-4, help="lr = blr * effective batch / 256")
    g.add_argument("--min-lr", type=float, default=1e-6 if ft else 0.0, help="lr at the end of the cosine")
    g.add_argument("--warmup-epochs", type=float, default=5 if ft else 40, help="linear warmup length in epochs")
    g.add_argument("--warmup-steps", type=int, default=None, help="warmup in optimizer steps (overrides --warmup-epochs)")
    g.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (not on norms and biases)")
    g.add_argument("--clip-grad", type=float, default=None, help="max gradient norm (None: no clipping)")
    g.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None,
                   help="None: the accelerate config's setting")
    g.add_argument("--seed", type=int, default=0, help="seed of the data order, augmentation, masks and noise")

    g = parser.add_argument_group("bookkeeping")
    g.add_argument("--output-dir", required=True, help="metrics.jsonl, run_config.json, checkpoints/ and final/")
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint folder, or (no value) from the newest complete one in "
                        "OUTPUT_DIR/checkpoints (a fresh start when there is none)")
    g.add_argument("--save-every", type=int, default=1000,
                   help="optimizer steps between checkpoints (0: only the one written at the end)")
    g.add_argument("--keep-checkpoints", type=int, default=2, help="newest complete checkpoints kept (0: all)")
    g.add_argument("--log-every", type=int, default=20, help="optimizer steps between metrics.jsonl records")
    g.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload final/ to this Hub model repo")
    g.add_argument("--cpu", action="store_true", help="force CPU even when an accelerator is available")
    g.add_argument("--debug", action="store_true", help="show the traceback of an error")


def run_main(main, argv=None) -> int:
    """Run an example script's `main`: a `ValueError` (bad input, named with its fix) prints one line
    `error: ...` and exits with status 2; `--debug` shows the traceback instead."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return main(argv)
    except ValueError as err:
        if "--debug" in argv:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2


def model_overrides(args) -> dict:
    """DMAEConfig keyword overrides from the model flags that were given."""
    from .configuration_dmae import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    names = dict(hidden_size="hidden_size", depth="num_hidden_layers", heads="num_attention_heads",
                 patch_size="patch_size", image_size="image_size", decoder_hidden_size="decoder_hidden_size",
                 decoder_depth="decoder_num_hidden_layers", decoder_heads="decoder_num_attention_heads")
    out = {field: getattr(args, flag) for flag, field in names.items() if getattr(args, flag, None) is not None}
    norm = normalization(args)
    if norm == "cifar10":
        out.update(image_mean=CIFAR10_MEAN, image_std=CIFAR10_STD)
    elif norm == "imagenet":
        out.update(image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)
    return out


def normalization(args) -> str:
    if args.normalization != "auto":
        return args.normalization
    return "cifar10" if "cifar" in str(args.dataset).lower() else "imagenet"


def make_accelerator(args):
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

    project = ProjectConfiguration(project_dir=args.output_dir)  # checkpoints: `Checkpoints`, not save_state
    kwargs = {"mixed_precision": args.mixed_precision} if args.mixed_precision else {}
    if args.cpu:
        kwargs["cpu"] = True
    # dispatch_batches=True: rank 0 reads the stream, batches are split over ranks (see dmae_hf.data).
    return Accelerator(gradient_accumulation_steps=args.grad_accum, project_config=project,
                       dataloader_config=DataLoaderConfiguration(dispatch_batches=True), **kwargs)


class DataSetup:
    """The streams of one run, built and checked before any training: `train` (decoded, shuffled), `val`
    (decoded, unshuffled, or None), `train_size` (examples per epoch or None), `num_classes`, `class_names` and
    `native_size` (the decoded image size, or None when it varies)."""

    def __init__(self, args, image_size: int, with_labels: bool, num_labels: int | None = None,
                 default_scale=(0.2, 1.0)):
        from . import data

        raw = data.load_image_stream(args.dataset, args.split, args.image_column,
                                     args.label_column if with_labels else None, token=args.token)
        self.class_names = data.class_names_of(raw) if with_labels else None
        self.num_classes = num_labels or (data.num_classes_of(raw) if with_labels else None)
        if with_labels and self.num_classes is None:
            raise ValueError("The label column is not a ClassLabel; pass --num-labels.")
        # Decoded size: small images (CIFAR) as they are; large ones resized + center-cropped.
        probe = data.ImageDecoder()
        first = next(iter(raw.take(1)), None)
        if first is None:
            raise ValueError(f"Split {args.split!r} of {args.dataset!r} is empty.")
        native = probe.decode(first["image"]).shape[-1]
        self.small = args.decode_size is None and native <= 64
        if args.no_crop:
            self.crop_scale = None
        elif args.crop_scale is not None:
            self.crop_scale = tuple(args.crop_scale)
        else:
            self.crop_scale = default_scale if image_size >= 128 and not self.small else None
        if self.small:
            train_dec = data.ImageDecoder(num_labels=self.num_classes)
            eval_dec = train_dec
        else:
            size = args.decode_size or (256 if self.crop_scale is not None else image_size)
            train_dec = data.ImageDecoder(size, size, num_labels=self.num_classes)
            eval_dec = data.ImageDecoder(args.decode_size or round(image_size * 256 / 224), image_size,
                                         num_labels=self.num_classes)
        self.augment_size = image_size if self.crop_scale is not None else (None if self.small else image_size)
        if args.max_train_examples:
            raw = data.first_examples(raw, args.max_train_examples + args.val_size)
        data.validate_stream(raw, train_dec)
        train_raw, val_raw = data.hold_out(raw, args.val_size)
        total = args.train_size
        if total is None:
            total = args.max_train_examples or data.count_examples(args.dataset, args.split, token=args.token)
            if total is not None and not args.max_train_examples:
                total -= args.val_size
        self.train_size = total
        self.train = data.build_stream(train_raw, train_dec, shuffle=True, seed=args.seed,
                                       buffer_size=args.shuffle_buffer)
        self.val = data.build_stream(val_raw, eval_dec, shuffle=False) if val_raw is not None else None
        self.val_size = args.val_size

    def loader(self, dataset, batch_size: int, num_workers: int):
        from torch.utils.data import DataLoader

        from .data import UniformBatches, collate

        workers = min(num_workers, dataset.num_shards)
        # A private generator for the workers' base seed (decoding uses no randomness). Accelerate's batch
        # dispatcher drops it, so the training loops also iterate through `rng_neutral`.
        generator = torch.Generator().manual_seed(0)
        if workers > 1:  # workers in a nested loader, full batches out (see UniformBatches)
            return DataLoader(UniformBatches(dataset, workers), batch_size=batch_size, collate_fn=collate,
                              generator=generator)
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=workers,
                          persistent_workers=False, generator=generator)


def schedule_lengths(args, accelerator, train_size: int | None) -> tuple[int, int, float]:
    """(total optimizer steps, warmup steps, lr). Effective batch = batch * grad_accum * processes; an epoch has
    ceil(train_size / (batch * processes)) micro-batches."""
    eff_batch = args.batch_size * args.grad_accum * accelerator.num_processes
    lr = args.lr if args.lr is not None else args.blr * eff_batch / 256
    steps_per_epoch = None
    if train_size is not None:
        micro = math.ceil(train_size / (args.batch_size * accelerator.num_processes))
        steps_per_epoch = math.ceil(micro / args.grad_accum)
    if args.max_steps is not None:
        total = args.max_steps
    elif steps_per_epoch is None:
        raise ValueError("Cannot count the training examples of this dataset: pass --max-steps or --train-size.")
    else:
        total = max(1, math.ceil(args.epochs * steps_per_epoch))
    if args.warmup_steps is not None:
        warmup = args.warmup_steps
    elif steps_per_epoch is not None:
        warmup = round(args.warmup_epochs * steps_per_epoch)
    else:
        warmup = 0
    return total, min(warmup, total), lr


def rng_neutral(iterable):
    """Iterate `iterable` (a DataLoader) without touching torch's global RNG: starting a DataLoader iterator draws
    its workers' base seed from it. A run resumed mid-epoch starts its iterator at a different step than the
    uninterrupted run, so without this its augmentation, masks and noise would differ from the uninterrupted run's
    from the resumed step on."""
    state = torch.get_rng_state()
    iterator = iter(iterable)
    try:
        first = next(iterator)
    except StopIteration:
        return
    finally:
        torch.set_rng_state(state)
    yield first
    yield from iterator


def set_epoch(dataloader, dataset, epoch: int) -> None:
    if hasattr(dataloader, "set_epoch"):
        dataloader.set_epoch(epoch)
    else:
        dataset.set_epoch(epoch)


def push_folder_to_hub(folder: str, repo_id: str, token=None, commit_message: str = "Upload DMAE model") -> str:
    """Create `repo_id` (if needed) and upload `folder`; returns the commit url."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True)
    return str(api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message=commit_message))


__all__ = [
    "param_groups_weight_decay",
    "param_groups_layer_decay",
    "layer_id",
    "lr_at",
    "set_lr",
    "TrainState",
    "latest_checkpoint",
    "find_checkpoints",
    "checkpoint_status",
    "Checkpoints",
    "save_tree",
    "load_tree",
    "JsonlLogger",
    "read_metrics",
    "save_reconstruction",
    "add_common_args",
    "HelpFormatter",
    "run_main",
    "model_overrides",
    "normalization",
    "make_accelerator",
    "DataSetup",
    "schedule_lengths",
    "set_epoch",
    "rng_neutral",
    "push_folder_to_hub",
]
