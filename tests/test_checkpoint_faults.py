"""Faults in the checkpoint path of `examples/pretrain.py` (tiny preset, real CIFAR-10, `--save-every 1`):

- kill -9 at 10 points of the save sequence, then `--resume`: the run ends with exactly the parameters of the
  uninterrupted run and `metrics.jsonl` holds every step once. 7 kills are SIGKILLs the process sends itself at a
  named point of the save sequence (`DMAE_CHECKPOINT_FAULT=<step>:<point>`, the hook in
  `dmae_hf.training.checkpoints`); 3 are SIGKILLs sent by this test at a random delay (0-30 ms) after a save began
  (they land wherever the process is: mid-file, between files, or already training the next step);
- planted pickles (a `__reduce__` that creates a marker file) in every pickle-ish file name of a checkpoint, and in
  place of each of our own files: `--resume` never unpickles, it ignores them or refuses with a clear error.

The runs are forked from a forkserver that has imported torch/datasets/accelerate once (a fresh interpreter costs
~8 s of imports on a shared core; a forked run of 12 steps ~1 s)."""

import json
import multiprocessing
import os
import pickle
import random
import shutil
import time

import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file

from dmae_hf.training.checkpoints import FAULT_ENV, TRAINER_STATE, find_checkpoints
from dmae_hf.training.tracking import read_metrics

STEPS = 16
ARGS = ["--preset", "tiny", "--image-size", "32", "--patch-size", "8", "--grad-accum", "1", "--batch-size", "16",
        "--shuffle-buffer", "64", "--num-workers", "0", "--recon-every", "0", "--max-train-examples", "64",
        "--max-steps", str(STEPS), "--warmup-steps", "2", "--lr", "1e-3", "--log-every", "1", "--save-every", "1",
        "--keep-checkpoints", "2", "--cpu"]
POINTS = ["begin", "rng", "model", "optimizer", "state", "renamed", "pruning", "pruned"]

pytestmark = pytest.mark.timeout(120)


def _train(argv: list, fault: str | None, log: str) -> None:
    """Forked child: run examples/pretrain.py's main in this process (stdout/stderr to `log`)."""
    import importlib.util

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    import sys

    sys.stdout.reconfigure(line_buffering=True)  # a SIGKILL loses block-buffered lines
    torch.set_num_threads(1)
    if fault:
        os.environ[FAULT_ENV] = fault
    spec = importlib.util.spec_from_file_location("pretrain_example", REPO_ROOT / "examples" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.run_main(module.main, argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@pytest.fixture(scope="module")
def fork(data_dir):
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "datasets", "accelerate", "transformers", "dmae_hf.training.loop",
                                "dmae_hf.training.streams", "dmae_hf.training.augment"])

    def start(out, fault=None, resume=False, kill_after=None):
        """Run one training process; returns its exit code (-9: killed). `kill_after`: SIGKILL it that many
        seconds after it began writing a checkpoint that is not yet complete (`.tmp-checkpoint-*` appeared)."""
        resume_args = ["--resume", str(resume)] if isinstance(resume, (str, os.PathLike)) else ["--resume"] * resume
        argv = ARGS + ["--dataset", str(data_dir / "cifar10"), "--output-dir", str(out)] + resume_args
        proc = ctx.Process(target=_train, args=(argv, fault, str(out) + ".log"))
        proc.start()
        if kill_after is not None:
            root = out / "checkpoints"
            while proc.is_alive() and not (root.is_dir() and any(n.startswith(".tmp-") for n in os.listdir(root))):
                time.sleep(0.001)
            time.sleep(kill_after)
            proc.kill()
        proc.join(60)
        assert proc.exitcode is not None, "training process hung"
        return proc.exitcode

    return start


@pytest.fixture(scope="module")
def straight(fork, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    assert fork(out) == 0, (out.parent / "run.log").read_text()[-3000:]
    return out


def params(out) -> dict:
    return load_file(out / "final" / "model.safetensors")


def test_kill9_at_10_points_of_checkpointing_then_resume_equals_the_uninterrupted_run(fork, straight, tmp_path):
    rng = random.Random(0)
    points = rng.sample(POINTS, 7)  # 7 self-kills, each at the next checkpoint and a different point
    plan = ["hook"] * 7
    for i in (2, 5, 8):  # interleaved with 3 kills at random delays
        plan.insert(i, "delay")
    out, newest, kills = tmp_path / "run", 0, []
    for n, kind in enumerate(plan):
        fault = f"{newest + 1}:{points.pop()}" if kind == "hook" else None
        delay = round(rng.uniform(0.0, 0.03), 4) if kind == "delay" else None
        code = fork(out, resume=n > 0, fault=fault, kill_after=delay)
        assert code in (-9, 0), (tmp_path / "run.log").read_text()[-3000:]
        kills.append((fault or delay, code))
        complete, incomplete = find_checkpoints(out)
        steps = [s for s, _ in complete]
        assert (steps[-1] if steps else 0) >= newest, (kills, steps)  # pruning kept the newest complete one
        assert len(steps) <= 3, steps  # keep 2, plus one when killed between the rename and the pruning
        if kind == "hook":
            assert code == -9, kills
            step, point = fault.split(":")
            before_rename = POINTS.index(point) <= POINTS.index("state")
            assert (steps[-1] if steps else 0) == int(step) - before_rename, (kills, steps)
            if before_rename:
                assert [p for p, _ in incomplete if p.endswith(".tmp-checkpoint-" + step)], (kills, incomplete)
        newest = steps[-1] if steps else 0
    assert newest < STEPS, f"the run finished before the last kill: {kills}"
    assert sum(code == -9 for _, code in kills) >= 9, kills
    assert fork(out, resume=True) == 0
    log = (tmp_path / "run.log").read_text()
    assert "ignored incomplete: .tmp-checkpoint-" in log  # the one-line resume report names what it skipped
    assert log.count("resume: from ") >= 7, log  # every resume names its checkpoint in one line
    a, b = params(straight), params(out)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (key, (a[key] - b[key]).abs().max())
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))  # each step exactly once
    assert [r["loss"] for r in records] == [r["loss"] for r in read_metrics(straight / "metrics.jsonl")]


def test_torn_metrics_line_is_dropped_on_read_and_cut_on_resume(fork, straight, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    shutil.rmtree(out / "checkpoints" / f"checkpoint-{STEPS}")  # resume from step 11
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "loss": 0.')  # a killed writer's torn line
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, STEPS + 1))
    assert fork(out, resume=True) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))


# ------------------------------------------------------------------------------------------------------ pickles

class Plant:
    """Unpickling this creates `path` (a stand-in for arbitrary code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def plant(path, marker) -> None:
    if str(path).endswith((".bin", ".pt", ".pth")):
        torch.save({"state": Plant(marker)}, path)  # torch's zip pickle, as Accelerate writes
    else:
        with open(path, "wb") as f:
            pickle.dump({"state": Plant(marker)}, f)


ACCELERATE_NAMES = ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin",
                    "pytorch_model.bin", "sampler.bin", "scaler.pt", "dl_state_dict.bin"]
OUR_FILES = ["model.safetensors", "optimizer.safetensors", "optimizer.json", "rng_0.safetensors", "rng_0.json",
             TRAINER_STATE]


@pytest.fixture
def resumable(straight, tmp_path):
    """A copy of the straight run whose newest checkpoint is at step 11 (so a resume trains one step)."""
    out = tmp_path / "run"
    shutil.copytree(straight, out, ignore=shutil.ignore_patterns(f"checkpoint-{STEPS}", "final"))
    return out


def test_planted_accelerate_pickles_are_never_read(fork, straight, resumable, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = resumable / "checkpoints" / f"checkpoint-{STEPS - 1}"
    for name in ACCELERATE_NAMES:
        plant(ckpt / name, marker)
    assert fork(resumable, resume=True) == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert not marker.exists()
    a, b = params(straight), params(resumable)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", OUR_FILES)
def test_a_pickle_in_place_of_a_checkpoint_file_is_refused(name, fork, straight, resumable, tmp_path):
    marker = tmp_path / "pwned"
    ckpt = resumable / "checkpoints" / f"checkpoint-{STEPS - 1}"
    plant(ckpt / name, marker)
    if name == TRAINER_STATE:  # the checkpoint is not complete: skipped for the older one, named in one line
        assert fork(resumable, resume=True) == 0
        log = (tmp_path / "run.log").read_text()
        assert f"ignored incomplete: checkpoint-{STEPS - 1} (unreadable {TRAINER_STATE}" in log, log[-2000:]
        assert "resume: no complete checkpoint in " in log  # (the straight run kept only steps 15 and 16)
        assert not marker.exists()
        a, b = params(straight), params(resumable)
        assert all(torch.equal(a[k], b[k]) for k in a)
        return
    meta = json.loads((ckpt / TRAINER_STATE).read_text())  # forge the recorded size, so the file is really opened
    meta["files"][name] = os.path.getsize(ckpt / name)
    (ckpt / TRAINER_STATE).write_text(json.dumps(meta))
    assert fork(resumable, resume=True) == 2
    log = (tmp_path / "run.log").read_text()
    assert not marker.exists()
    assert "Traceback" not in log
    error = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and name.rsplit(".", 1)[0] in error[0] and "is not valid" in error[0], log[-2000:]


def test_an_accelerate_checkpoint_is_refused_without_unpickling(fork, resumable, tmp_path):
    marker = tmp_path / "pwned"
    legacy = resumable / "checkpoints" / "checkpoint_0"
    legacy.mkdir()
    for name in ACCELERATE_NAMES:
        plant(legacy / name, marker)
    # --resume alone: skipped (named in the resume line), the newest complete checkpoint is used
    assert fork(resumable, resume=True) == 0
    assert "checkpoint_0 (an Accelerate checkpoint with pickles (not loaded))" in (tmp_path / "run.log").read_text()
    # --resume DIR: refused in one line
    assert fork(resumable, resume=legacy) == 2
    error = [line for line in (tmp_path / "run.log").read_text().splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "is incomplete or not a dmae_hf checkpoint: an Accelerate checkpoint" in error[0]
    assert not marker.exists()
