"""One architecture table (`configuration_dmae.ARCHITECTURES`): every view of an architecture derives from it.

The converter's heads-by-width tables, the `--preset` choices of `dmae convert` and of the training scripts, the
model-card titles, the short-name table and `dmae publish`'s released architectures; and the embedded model's preset
`tiny-cifar10` is exactly what the reproduction script used to spell out field by field."""

import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from dmae_hf import DMAEConfig
from dmae_hf.configuration_dmae import ARCHITECTURES, PRESETS
from dmae_hf.hub import names as hub_names
from dmae_hf.hub.convert import OFFICIAL_DECODER_HEADS, OFFICIAL_HEADS
from dmae_hf.training.arguments import training_arguments

EMBEDDED = REPO_ROOT / "dmae_hf" / "checkpoints" / "dmae-tiny-cifar10"
# What benchmarks/reproduction/reproduce.py passed before the `tiny-cifar10` preset existed (the commands in the
# embedded model's card, which made its weights).
OLD_ARCH = ["--preset", "tiny", "--hidden-size", "96", "--depth", "4", "--heads", "3", "--patch-size", "4",
            "--image-size", "32", "--decoder-hidden-size", "64", "--decoder-depth", "2", "--decoder-heads", "4",
            "--normalization", "cifar10"]
# Fields of the shipped config.json set by the fine-tuning run or by saving, not by the architecture.
TRAINING_FIELDS = {"architectures", "drop_path_rate", "label_smoothing", "id2label", "label2id", "_name_or_path",
                   "dtype"}


def load_script(path):
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_preset_builds_with_its_fields(name):
    arch = ARCHITECTURES[name]
    config = DMAEConfig.from_preset(name)
    assert PRESETS[name] is arch.config and arch.title
    for field, value in arch.config.items():
        got = getattr(config, field)
        assert (list(got) if isinstance(got, (list, tuple)) else got) == (
            list(value) if isinstance(value, tuple) else value), (name, field)


def test_the_embedded_preset_is_the_shipped_config():
    shipped = DMAEConfig.from_pretrained(EMBEDDED).to_dict()
    preset = DMAEConfig.from_preset("tiny-cifar10").to_dict()
    differ = {k for k in set(shipped) | set(preset) if shipped.get(k) != preset.get(k)}
    assert differ <= TRAINING_FIELDS, {k: (shipped.get(k), preset.get(k)) for k in differ - TRAINING_FIELDS}
    assert hub_names.SHORT_NAMES["dmae-tiny-cifar10"].preset == "tiny-cifar10"


def test_reproduce_uses_the_preset_and_builds_what_the_old_overrides_built(data_dir, tmp_path):
    reproduce = load_script(REPO_ROOT / "benchmarks" / "reproduction" / "reproduce.py")
    assert reproduce.ARCH == ["--preset", "tiny-cifar10"]  # no field overrides
    pretrain = load_script(REPO_ROOT / "examples" / "pretrain.py")
    finetune = load_script(REPO_ROOT / "examples" / "finetune.py")
    data = ["--dataset", str(data_dir / "cifar10"), "--image-column", "img", "--output-dir", str(tmp_path / "run")]

    def pretrained(arch):
        args = pretrain.parse_args([*arch, *data])
        return pretrain.build_model(args, training_arguments(args)).config.to_dict()

    def finetuned(arch, *source):
        args = finetune.parse_args([*arch, *data, *source])
        model = finetune.build_model(args, training_arguments(args), 10, None)
        return model.config.to_dict()

    assert pretrained(reproduce.ARCH) == pretrained(OLD_ARCH)
    assert pretrained(reproduce.ARCH)["hidden_size"] == 96  # not the tiny preset's 32
    assert finetuned(reproduce.ARCH, "--from-scratch") == finetuned(OLD_ARCH, "--from-scratch")
    args = pretrain.parse_args([*reproduce.ARCH, *data])
    pretrain.build_model(args, training_arguments(args)).save_pretrained(tmp_path / "pt")
    source = ("--model", str(tmp_path / "pt"))
    assert finetuned(reproduce.ARCH, *source) == finetuned(OLD_ARCH, *source)


def test_views_derive_from_the_table():
    official = [DMAEConfig.from_preset(n) for n, a in ARCHITECTURES.items() if a.official]
    assert OFFICIAL_HEADS == {768: 12, 1024: 16, 1280: 16} == {c.hidden_size: c.num_attention_heads for c in official}
    assert OFFICIAL_DECODER_HEADS == {512: 16}
    released = {e.preset for e in hub_names.SHORT_NAMES.values() if e.from_official}
    assert released == {n for n, a in ARCHITECTURES.items() if a.stem} == {"vit-base", "vit-large"}
    assert {f"dmae-vit-{ARCHITECTURES[p].stem}" for p in released} <= set(hub_names.SHORT_NAMES)


NEW_PRESET = """
import contextlib, io, os, sys
sys.path.insert(0, {tests!r})
from dmae_hf import configuration_dmae as c
# One new entry in the table (PRESETS is derived from it when the module is imported, so it is patched too).
c.ARCHITECTURES["vit-giant"] = c.Architecture(dict(hidden_size=1408, num_hidden_layers=40, num_attention_heads=22,
                                              patch_size=14, image_size=224), "ViT-g/14", stem="giant", official=True)
c.PRESETS["vit-giant"] = c.ARCHITECTURES["vit-giant"].config
from dmae_hf.cli import main
from dmae_hf.hub import model_card, names as hub_names
from dmae_hf.hub.convert import OFFICIAL_HEADS
from dmae_hf.commands.publish import UnrecognisedFile, recognise
from dmae_hf.training.arguments import add_common_args
import argparse, torch
from test_convert import official_checkpoint
print("HEADS", OFFICIAL_HEADS[1408])
help = io.StringIO()
with contextlib.redirect_stdout(help), contextlib.suppress(SystemExit):
    main(["convert", "--help"])
print("CONVERT", "vit-giant" in help.getvalue())
parser = argparse.ArgumentParser()
add_common_args(parser, "pretrain")
print("TRAINING", parser.parse_args(["--preset", "vit-giant", "--dataset", "d", "--output-dir", "o"]).preset)
print("SHORT", sorted(n for n, e in hub_names.SHORT_NAMES.items() if e.preset == "vit-giant"))
card = model_card.render_model_card("dmae-vit-giant", model_card.default_config("dmae-vit-giant"))
print("CARD", "| Architecture | ViT-g/14 encoder: width 1408, 40 blocks, 22 heads" in card)
torch.save({{"model": official_checkpoint("pretraining", dim=32, depth=1, patch=8, image=32, dec_dim=32,
                                         dec_depth=1)}}, "small.pth")
try:
    recognise("small.pth")
except UnrecognisedFile as e:
    print("PUBLISH", e)
"""


def test_a_new_table_entry_shows_up_everywhere(tmp_path):
    code = NEW_PRESET.format(tests=str(REPO_ROOT / "tests"))
    env = {**os.environ, "DMAE_HF_DEFER_REGISTRATION": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "HEADS 22" in out and "CONVERT True" in out and "TRAINING vit-giant" in out, out
    assert "SHORT ['dmae-vit-giant', 'dmae-vit-giant-sigma0.25', 'dmae-vit-giant-sigma0.5', " \
           "'dmae-vit-giant-sigma1.0']" in out, out
    assert "CARD True" in out, out
    assert "none of the released architectures ['vit-base', 'vit-giant', 'vit-large']" in out, out
