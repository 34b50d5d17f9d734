"""Training recipe pieces (`dmae_hf.training.optim`, `dmae_hf.training.augment`) and the example scripts end to end on
the real CIFAR-10 shards with the tiny preset: one process and two CPU processes (torchrun + ACCELERATE_USE_CPU), loss
going down, exact resume, clear errors on bad input before training, and the CIFAR-10 transfer pushed to a loopback
Hub, loaded back and certified."""

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from hub_server import FakeHub
from safetensors.torch import load_file

from dmae_hf import DMAEConfig, DMAEForPreTraining, DMAEForSmoothedClassification
from dmae_hf.training.augment import DeviceAugment, MixupCutmix
from dmae_hf.training.optim import lr_at, param_groups_layer_decay, param_groups_weight_decay
from dmae_hf.training.tracking import read_metrics

# Two shared cores: one torch thread per process (two threads under contention made a tiny step 100x slower).
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), MPLBACKEND="Agg")
TINY = ["--preset", "tiny", "--image-size", "32", "--patch-size", "8", "--grad-accum", "1", "--batch-size", "16",
        "--shuffle-buffer", "64", "--num-workers", "1", "--recon-every", "0"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_script(script: str, args: list, processes: int = 1, env: dict | None = None, timeout: int = 100):
    path = str(REPO_ROOT / "examples" / script)
    if processes == 1:
        cmd = [sys.executable, path]
        env = dict(env or ENV)
    else:  # the working CPU recipe: torchrun + ACCELERATE_USE_CPU (accelerate launch --cpu starts one process);
        # --standalone: torchrun binds its own free port (no pick-then-bind race with the other xdist worker's runs)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), path]
        env = dict(env or ENV, ACCELERATE_USE_CPU="1")
    try:
        result = subprocess.run(cmd + [str(a) for a in args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired as error:  # show where the run stood, not only pytest's own stacks
        stderr = error.stderr.decode(errors="replace") if isinstance(error.stderr, bytes) else error.stderr or ""
        pytest.fail(f"{script} did not finish in {timeout} s; its stderr ends with:\n{stderr[-3000:]}")
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def losses(output_dir) -> list[float]:
    return [m["loss"] for m in read_metrics(os.path.join(output_dir, "metrics.jsonl")) if "loss" in m]


def assert_loss_decreases(output_dir, k: int = 2):
    values = losses(output_dir)
    assert len(values) >= 2 * k, values
    first, last = sum(values[:k]) / k, sum(values[-k:]) / k
    assert last < first, values


# ------------------------------------------------------------------------------------------------------ recipe pieces

def test_pretraining_param_groups_follow_mae():
    model = DMAEForPreTraining(DMAEConfig.from_preset("tiny"))
    groups = param_groups_weight_decay(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in groups[0]["params"]}
    decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.0 and groups[1]["weight_decay"] == 0.05
    params = dict(model.named_parameters())
    assert no_decay == {n for n, p in params.items() if p.requires_grad and (p.ndim <= 1 or n.endswith(".bias"))}
    assert any("layernorm" in n for n in no_decay) and all(params[n].ndim >= 2 for n in decay)
    assert "dmae.embeddings.cls_token" in decay  # (1, 1, D): decayed, exactly as MAE's add_weight_decay
    assert not any("position_embeddings" in n for n in no_decay | decay)  # fixed sin-cos: frozen, left out


def test_finetuning_groups_layer_decay_and_no_decay_on_norms_biases_pos_cls():
    depth, decay_rate = 2, 0.65
    model = DMAEForSmoothedClassification(DMAEConfig.from_preset("tiny", num_labels=10))
    groups = param_groups_layer_decay(model, 0.05, decay_rate)
    scale, wd = {}, {}
    for g in groups:
        for p in g["params"]:
            scale[id(p)], wd[id(p)] = g["lr_scale"], g["weight_decay"]
    n_grouped = sum(len(g["params"]) for g in groups)
    assert n_grouped == sum(1 for p in model.parameters() if p.requires_grad)
    for name, p in model.named_parameters():
        if name.startswith("dmae.embeddings."):
            expected = decay_rate ** (depth + 1)  # layer 0
        elif name.startswith("dmae.layers."):
            i = int(name.split(".")[2])
            expected = decay_rate ** (depth + 1 - (i + 1))  # block i = layer i + 1
        else:  # fc_norm, classifier
            assert name.startswith(("fc_norm.", "classifier.")), name
            expected = 1.0
        assert math.isclose(scale[id(p)], expected), name
        no_wd = p.ndim == 1 or name.endswith(".bias") or name.endswith(("position_embeddings", "cls_token"))
        assert wd[id(p)] == (0.0 if no_wd else 0.05), name
    assert wd[id(model.dmae.embeddings.position_embeddings)] == 0.0
    assert wd[id(model.dmae.embeddings.cls_token)] == 0.0
    assert wd[id(model.classifier.weight)] == 0.05


def test_warmup_cosine_schedule_values():
    base, total, warmup, floor = 1e-3, 110, 10, 1e-6
    assert lr_at(0, total, warmup, base, floor) == 0.0
    assert math.isclose(lr_at(5, total, warmup, base, floor), 5e-4)
    assert math.isclose(lr_at(10, total, warmup, base, floor), base)  # end of warmup: the peak
    assert math.isclose(lr_at(60, total, warmup, base, floor), floor + (base - floor) * 0.5)  # half-way down
    assert math.isclose(lr_at(35, total, warmup, base, floor),
                        floor + (base - floor) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert math.isclose(lr_at(110, total, warmup, base, floor), floor)
    assert math.isclose(lr_at(500, total, warmup, base, floor), floor)  # clamped past the end
    values = [lr_at(s, total, warmup, base, floor) for s in range(total)]
    assert values[:warmup + 1] == sorted(values[:warmup + 1])
    assert values[warmup:] == sorted(values[warmup:], reverse=True)


def test_common_flags_parse_into_typed_arguments_with_stage_defaults():
    from dmae_hf.configuration_dmae import CIFAR10_MEAN, IMAGENET_DEFAULT_MEAN
    from dmae_hf.training.arguments import DataArguments, add_common_args, training_arguments
    from dmae_hf.training.optim import schedule_lengths

    argv = ["--dataset", "uoft-cs/cifar10", "--output-dir", "out", "--depth", "3", "--crop-scale", "0.3", "1",
            "--resume"]
    parsed = {}
    for stage in ("pretrain", "finetune"):
        parser = argparse.ArgumentParser()
        add_common_args(parser, stage)
        parsed[stage] = training_arguments(parser.parse_args(argv))
    pt, ft = parsed["pretrain"], parsed["finetune"]
    assert isinstance(pt.data, DataArguments) and pt.data.crop_scale == [0.3, 1.0] and pt.run.resume == "auto"
    assert (pt.optim.batch_size, pt.optim.grad_accum, pt.optim.blr, pt.data.val_size) == (64, 8, 1.5e-4, 0)
    assert (ft.optim.batch_size, ft.optim.grad_accum, ft.optim.blr, ft.data.val_size) == (32, 4, 5e-4, 1000)
    overrides = pt.model.config_overrides(pt.data.dataset)
    assert overrides["num_hidden_layers"] == 3 and overrides["image_mean"] == CIFAR10_MEAN
    assert pt.model.config_overrides("ILSVRC/imagenet-1k")["image_mean"] == IMAGENET_DEFAULT_MEAN
    schedule = schedule_lengths(ft.optim, 2, train_size=1000)  # 1000 / (32*2) -> 16 micro -> 4 steps an epoch
    assert (schedule.total_steps, schedule.warmup_steps, schedule.lr) == (400, 20, 5e-4 * 32 * 4 * 2 / 256)
    with pytest.raises(ValueError, match="pass --max-steps or --train-size"):
        schedule_lengths(ft.optim, 1, train_size=None)
    with pytest.raises(ValueError, match=r"stage must be one of \['pretrain', 'finetune'\], got 'train'"):
        add_common_args(argparse.ArgumentParser(), "train")


def test_device_augmentation_shapes_and_ranges():
    torch.manual_seed(0)
    big = torch.randint(0, 256, (4, 3, 64, 80), dtype=torch.uint8)
    out = DeviceAugment(48, scale=(0.08, 1.0), randaug_n=2, erase_prob=0.5)(big)
    assert out.shape == (4, 3, 48, 48) and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    cifar = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    flipped = DeviceAugment(None, scale=None)(cifar)  # the CIFAR recipe: flip only, at 32x32
    x = cifar.float() / 255
    assert flipped.shape == (8, 3, 32, 32)
    for i in range(8):  # each image is itself or its mirror image, no other change
        assert torch.allclose(flipped[i], x[i]) or torch.allclose(flipped[i], x[i].flip(-1))
    assert DeviceAugment(64, scale=None)(cifar).shape == (8, 3, 64, 64)  # resize only


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_soft_labels_sum_to_one(mixup, cutmix):
    torch.manual_seed(0)
    images, labels = torch.rand(6, 3, 32, 32), torch.tensor([0, 1, 2, 3, 4, 5])
    mixer = MixupCutmix(10, mixup_alpha=mixup, cutmix_alpha=cutmix)
    for _ in range(5):
        mixed, targets = mixer(images, labels)
        assert mixed.shape == images.shape and targets.shape == (6, 10)
        assert torch.allclose(targets.sum(-1), torch.ones(6))
        lam = targets[0, 0].item()  # image 0 mixed with image 5: lam * e_0 + (1 - lam) * e_5
        assert math.isclose(targets[0, 5].item(), 1 - lam, abs_tol=1e-6)
        if cutmix == 0:
            assert torch.allclose(mixed, lam * images + (1 - lam) * images.flip(0), atol=1e-6)
        elif mixup == 0:  # pasted box: every pixel comes from one of the two images, area fraction = 1 - lam
            from_other = (mixed[0] != images[0]).any(0).float().mean().item()
            assert math.isclose(from_other, 1 - lam, abs_tol=1e-6)
    mixed, targets = MixupCutmix(10, 0.0, 0.0)(images, labels)
    assert torch.equal(mixed, images) and torch.equal(targets, torch.nn.functional.one_hot(labels, 10).float())


# ------------------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    """Tiny DMAE pre-trained for 40 steps on the real CIFAR-10 train split, one process."""
    out = tmp_path_factory.mktemp("pretrain")
    run_script("pretrain.py", TINY + ["--dataset", data_dir / "cifar10", "--max-steps", 40, "--warmup-steps", 4,
                                      "--lr", 2e-3, "--log-every", 5, "--save-every", 20, "--output-dir", out])
    return out


@pytest.mark.timeout(120)
def test_pretrain_one_process_loss_decreases(pretrained):
    assert_loss_decreases(pretrained)
    final = pretrained / "final"
    assert {"model.safetensors", "config.json", "preprocessor_config.json"} <= set(os.listdir(final))
    config = json.loads((final / "config.json").read_text())
    assert config["noise_sigma"] == 0.25 and config["mask_ratio"] == 0.75 and config["norm_pix_loss"]
    assert sorted(os.listdir(pretrained / "checkpoints")) == ["checkpoint-20", "checkpoint-40"]
    assert not [f for f in os.listdir(pretrained / "checkpoints" / "checkpoint-40") if f.endswith((".pkl", ".bin"))]


@pytest.mark.timeout(120)
def test_pretrain_two_processes_loss_decreases(tmp_path, data_dir):
    run_script("pretrain.py", TINY + ["--dataset", data_dir / "cifar10", "--max-steps", 30, "--warmup-steps", 3,
                                      "--lr", 2e-3, "--log-every", 5, "--save-every", 15, "--output-dir", tmp_path],
               processes=2)
    run_config = json.loads((tmp_path / "run_config.json").read_text())
    assert run_config["num_processes"] == 2 and run_config["lr"] == 2e-3
    assert_loss_decreases(tmp_path)
    assert (tmp_path / "final" / "model.safetensors").exists()


FINETUNE = ["--grad-accum", "1", "--batch-size", "16", "--shuffle-buffer", "64", "--num-workers", "1",
            "--max-train-examples", "64", "--max-steps", "48", "--warmup-steps", "4", "--lr", "5e-3",
            "--log-every", "4", "--save-every", "100"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("processes", [1, 2])
def test_finetune_loss_decreases(processes, pretrained, tmp_path, data_dir):
    batch = ["--batch-size", "8"] if processes == 2 else []  # same global batch
    run_script("finetune.py", FINETUNE + batch + ["--model", pretrained / "final", "--dataset", data_dir / "cifar10",
                                                  "--val-size", 16, "--certify-examples", 0, "--output-dir", tmp_path],
               processes=processes)
    assert json.loads((tmp_path / "run_config.json").read_text())["num_processes"] == processes
    assert_loss_decreases(tmp_path, k=3)
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    assert metrics[-1]["final"] and metrics[-1]["val_examples"] == 16  # gathered over both ranks, no duplicates
    config = DMAEConfig.from_pretrained(tmp_path / "final")
    assert config.num_labels == 10 and config.id2label[3] == "cat" and config.smoothing_sigma == 0.25


@pytest.mark.timeout(150)
def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, data_dir):
    """12 steps straight vs. a run stopped at step 6 (mid-epoch: 4 batches an epoch) and resumed: same bytes. Two
    DataLoader workers, so the resumed run also re-reads and skips the consumed batches of a sharded stream."""
    common = TINY + ["--dataset", data_dir / "cifar10", "--max-train-examples", 64, "--num-workers", 2,
                     "--max-steps", 12, "--warmup-steps", 2, "--lr", 1e-3, "--log-every", 1, "--save-every", 6]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_script("pretrain.py", common + ["--output-dir", straight])
    # the interrupted run's state: its step-6 checkpoint (the same command, same seed, up to there)
    import shutil

    shutil.copytree(straight / "checkpoints" / "checkpoint-6", resumed / "checkpoints" / "checkpoint-6")
    state = json.loads((resumed / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())["train_state"]
    assert state["step"] == 6 and state["epoch"] == 1 and state["batches_in_epoch"] == 2
    shutil.copy(straight / "metrics.jsonl", resumed / "metrics.jsonl")  # holds steps 1-12: cut back to 1-6
    result = run_script("pretrain.py", common + ["--output-dir", resumed, "--resume"])
    assert "resumed from" in result.stdout + result.stderr
    a, b = load_file(straight / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (key, (a[key] - b[key]).abs().max())
    assert losses(resumed) == losses(straight)  # each step once
    assert sorted(os.listdir(resumed / "checkpoints")) == ["checkpoint-12", "checkpoint-6"]


@pytest.mark.timeout(150)
def test_two_process_resume_gives_the_same_parameters(tmp_path, data_dir):
    """DDP on two CPU processes: each rank restores its own RNG states from its `rng_<rank>` files."""
    common = TINY + ["--dataset", data_dir / "cifar10", "--max-train-examples", 64, "--batch-size", 8,
                     "--max-steps", 6, "--warmup-steps", 2, "--lr", 1e-3, "--log-every", 1, "--save-every", 3]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_script("pretrain.py", common + ["--output-dir", straight], processes=2)
    import shutil

    shutil.copytree(straight / "checkpoints" / "checkpoint-3", resumed / "checkpoints" / "checkpoint-3")
    assert {"rng_0.safetensors", "rng_1.safetensors"} <= set(os.listdir(resumed / "checkpoints" / "checkpoint-3"))
    run_script("pretrain.py", common + ["--output-dir", resumed, "--resume"], processes=2)
    a, b = load_file(straight / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), (key, (a[key] - b[key]).abs().max())


# ------------------------------------------------------------------------------------------------------ bad input

def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO_ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
@pytest.mark.parametrize("change,message", [
    ({"--dataset": "{tmp}/no-such-dataset"}, r"Dataset '.*no-such-dataset' is neither a local dataset folder nor a "
                                              r"reachable Hub dataset id .*uoft-cs/cifar10"),
    ({"--split": "validation"}, r"Unknown split 'validation' .*available splits: \['test', 'train'\]"),
    ({"--image-column": "image"}, r"Unknown image column 'image' .*columns are \['img', 'label'\]"),
    ({"--num-labels": "5"}, r"Label [5-9] is out of range: labels must be in \[0, 5\) \(num_labels=5\)"),
])
def test_bad_input_fails_clearly_before_training(change, message, tmp_path, data_dir):
    args = {"--from-scratch": None, "--preset": "tiny", "--dataset": str(data_dir / "cifar10"), "--grad-accum": "1",
            "--batch-size": "8", "--max-steps": "2", "--num-workers": "0", "--val-size": "8", "--cpu": None,
            "--output-dir": str(tmp_path / "out")}
    args.update({k: v.format(tmp=tmp_path) for k, v in change.items()})
    def to_argv(options):
        return [x for k, v in options.items() for x in ((k,) if v is None else (k, v))]

    argv = to_argv(args)
    finetune = load_example("finetune")
    with pytest.raises(ValueError, match=message):
        finetune.main(argv)
    assert not (tmp_path / "out" / "checkpoints").exists() and not (tmp_path / "out" / "metrics.jsonl").exists()
    if "--num-labels" not in change:  # the same check guards pre-training
        argv = to_argv({k: v for k, v in args.items() if k not in ("--from-scratch", "--val-size")})
        with pytest.raises(ValueError, match=message):
            load_example("pretrain").main(argv)


@pytest.mark.parametrize("script", ["pretrain", "finetune"])
def test_help_shows_every_option_with_help_and_its_default(script, capsys):
    module = load_example(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    text = " ".join(out.split())
    assert f"{REPO_ROOT.parent}/" not in text and "uoft-cs/cifar10" in text and "ILSVRC/imagenet-1k" in text
    entries, current = {}, None  # option listing: an entry starts with a line "  --flag ..."
    for line in out.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current and line.startswith("    "):
            entries[current] += " " + line.strip()
        else:
            current = None
    checked = 0
    for action in module.build_parser()._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        assert action.help, f"{action.option_strings[0]} has no help text"
        if action.required or action.default == argparse.SUPPRESS:  # --dataset, --output-dir; --help
            continue
        checked += 1
        entry = " ".join(entries[action.option_strings[0]].split())
        assert f"(default: {action.default})" in entry, entry
    assert checked > 40


@pytest.mark.parametrize("script,new,config_key", [("pretrain", "--noise-sigma", "noise_sigma"),
                                                   ("finetune", "--smoothing-sigma", "smoothing_sigma")])
def test_old_sigma_flag_is_refused_with_the_new_name(script, new, config_key, tmp_path):
    """`--sigma` meant the pre-training noise in one script and the smoothing sigma in the other: both refuse it
    in one line naming the flag that says which; the new flag sets the model's noise."""
    result = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / f"{script}.py"), "--from-scratch",
                             "--dataset", "d", "--output-dir", str(tmp_path), "--sigma", "0.5"],
                            env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip() == f"error: --sigma was renamed: use {new} " + (
        "(the pre-training noise)." if script == "pretrain" else "(the noise the classifier is trained for).")
    module = load_example(script)
    args = module.parse_args(["--preset", "tiny", "--dataset", "uoft-cs/cifar10", "--output-dir", str(tmp_path),
                              new, "0.5"] + (["--from-scratch"] if script == "finetune" else []))
    from dmae_hf.training.arguments import training_arguments

    common = training_arguments(args)
    model = module.build_model(args, common) if script == "pretrain" else module.build_model(args, common, 10, None)
    assert getattr(model.config, config_key) == 0.5


def test_resume_from_a_file_says_it_is_not_a_checkpoint(tmp_path):
    from types import SimpleNamespace

    from dmae_hf.training.checkpoints import Checkpoints, TrainState

    accelerator = SimpleNamespace(distributed_type="NO", print=print)
    checkpoints = Checkpoints(accelerator, str(tmp_path), None, None, TrainState())
    (tmp_path / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"model\.safetensors' is a file, not a checkpoint folder; pass a "
                                         r"checkpoint-<step> folder"):
        checkpoints.resume(str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"no-such-checkpoint' does not exist"):
        checkpoints.resume(str(tmp_path / "no-such-checkpoint"))


def test_bad_input_prints_one_error_line_and_exits_2(tmp_path):
    env = dict(ENV, HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "pretrain.py"), "--preset", "tiny",
                             "--dataset", "../no-such-data/cifar10", "--output-dir", str(tmp_path / "out")],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert lines[0].startswith("error: Dataset '../no-such-data/cifar10' is neither a local dataset folder")
    assert "Offline mode is on" in lines[0] and "uoft-cs/cifar10" in lines[0]


# ------------------------------------------------------------------------------------------------------ Hub

LOAD_AND_CERTIFY = r"""
import json, sys
from PIL import Image
from transformers import AutoImageProcessor
from dmae_hf import DMAEForSmoothedClassification
repo, image_path = sys.argv[1], sys.argv[2]
model = DMAEForSmoothedClassification.from_pretrained(repo).eval()
processor = AutoImageProcessor.from_pretrained(repo)
x = processor(Image.open(image_path).convert("RGB"), return_tensors="pt")["pixel_values"][0]
cert = model.certify(x, n0=20, n=100, alpha=0.001, batch_size=100, seed=0)
print("REPORT" + json.dumps({"prediction": cert.prediction, "radius": cert.radius, "n": cert.n,
                             "counts": sum(cert.counts), "shape": list(x.shape), "sigma": model.config.smoothing_sigma,
                             "label3": model.config.id2label[3]}))
"""


@pytest.mark.timeout(180)
def test_cifar10_transfer_pushes_to_the_hub_and_the_pushed_model_certifies(pretrained, tmp_path, data_dir):
    repo = "tester/dmae-tiny-cifar10-sigma0.25"
    with FakeHub() as hub:
        env = {k: v for k, v in ENV.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(HF_ENDPOINT=hub.endpoint, HF_TOKEN="x", HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1",
                   HF_HUB_DISABLE_TELEMETRY="1")
        run_script("finetune.py", FINETUNE + ["--model", pretrained / "final", "--dataset", data_dir / "cifar10",
                                              "--val-size", 16, "--certify-examples", 4, "--certify-n0", 10,
                                              "--certify-n", 50, "--certify-batch", 50, "--push-to-hub", repo,
                                              "--output-dir", tmp_path / "ft"], env=env)
        files = hub.repos[repo].files
        assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "eval_results.json",
                "certification.jsonl", "certification_summary.json", "certified_accuracy.png"} <= set(files)
        assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
        assert files["certified_accuracy.png"].startswith(b"\x89PNG")
        assert len(files["certification.jsonl"].decode().splitlines()) == 4
        results = json.loads(files["eval_results.json"])
        assert results["val_examples"] == 16 and results["certification"]["num_images"] == 4
        card = files["README.md"].decode()
        assert card.startswith("---") and "certif" in card.lower() and "0.25" in card
        assert json.loads(files["preprocessor_config.json"])["do_resize"] is False  # CIFAR: 32x32 as is
        # the pushed bytes are the local final weights
        assert files["model.safetensors"] == (tmp_path / "ft" / "final" / "model.safetensors").read_bytes()

        image = REPO_ROOT / "dmae_hf" / "assets" / "cifar10" / "test_00003_cat.png"  # a real CIFAR-10 test image
        result = subprocess.run([sys.executable, "-c", LOAD_AND_CERTIFY, repo, str(image)], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-4000:]
        report = json.loads(result.stdout.split("REPORT", 1)[1])
        assert report["shape"] == [3, 32, 32] and report["sigma"] == 0.25 and report["label3"] == "cat"
        assert report["n"] == 100 and report["counts"] == 100
        assert report["prediction"] is None or 0 <= report["prediction"] < 10
        assert report["radius"] >= 0.0 and (report["prediction"] is not None or report["radius"] == 0.0)
        assert any(path.startswith(f"/{repo}/resolve/") or f"/api/models/{repo}" in path for _, path in hub.requests)


def test_accelerate_config_files_load():
    """The launch configs the README points to parse with Accelerate's own loader; FSDP wraps a real layer class."""
    from accelerate.commands.config.config_args import ClusterConfig

    import dmae_hf.modeling_dmae as modeling

    kinds = {}
    for path in sorted((REPO_ROOT / "examples" / "accelerate_configs").glob("*.yaml")):
        config = ClusterConfig.from_yaml_file(str(path))
        kinds[path.name] = (str(config.distributed_type).split(".")[-1], config.num_machines, config.num_processes)
        if config.fsdp_config:
            assert hasattr(modeling, config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"])
    assert kinds == {"multi_gpu.yaml": ("MULTI_GPU", 1, 8), "multi_node.yaml": ("MULTI_GPU", 2, 16),
                     "fsdp.yaml": ("FSDP", 1, 8), "deepspeed_zero2.yaml": ("DEEPSPEED", 1, 8)}
    guide = (REPO_ROOT / "docs" / "training-and-data.md").read_text()  # where the README's training example links
    for name in kinds:
        assert name in guide
