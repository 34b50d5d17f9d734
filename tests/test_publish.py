"""`dmae publish`: official release files -> converted, uploaded under their short names (loopback fake Hub).

The release architectures are ViT-B/16 and ViT-L/16 (450 MB and 1.3 GB of weights); here the `vit-base` preset is
shrunk to a tiny ViT so that official-layout checkpoints of that "architecture" convert and upload in seconds."""

import argparse
import json

import hub_server
import pytest
import torch
from hub_server import FakeHub
from test_convert import official_checkpoint

from dmae_hf import DMAEConfig, DMAEForPreTraining, DMAEForSmoothedClassification, configuration_dmae
from dmae_hf.cli import main
from dmae_hf.commands.publish import UnrecognisedFile
from dmae_hf.hub import names as hub_names
from dmae_hf.hub.model_card import render_model_card

TINY = dict(dim=32, depth=2, patch=8, image=32)
TINY_PRESET = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=8, image_size=32,
                   decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2)


@pytest.fixture
def release(tmp_path, monkeypatch):
    """Official-layout files of the (shrunk) ViT-B release: pre-training, an ImageNet classifier whose sigma is in its
    saved args, a CIFAR-10 classifier whose sigma is in its file name; and the namespace "tester"."""
    monkeypatch.setitem(configuration_dmae.PRESETS, "vit-base", TINY_PRESET)
    monkeypatch.setenv(hub_names.NAMESPACE_ENV, "tester")
    monkeypatch.chdir(tmp_path)
    files = {"pre": tmp_path / "DMAE-Base.pth", "imagenet": tmp_path / "checkpoint-99.pth",
             "cifar": tmp_path / "cifar10_sigma0.25.pth"}
    torch.save({"model": official_checkpoint("pretraining", **TINY, dec_dim=32, dec_depth=1)}, files["pre"])
    torch.save({"model": official_checkpoint("classifier", **TINY, classes=1000, seed=1), "epoch": 99,
                "args": argparse.Namespace(sigma=0.5, nb_classes=1000)}, files["imagenet"])
    torch.save({"model": official_checkpoint("classifier", **TINY, seed=2)}, files["cifar"])
    return files


def test_publish_converts_uploads_and_loads_by_short_name(release, tmp_path, monkeypatch, capsys):
    names = {"pre": "dmae-vit-base", "imagenet": "dmae-vit-base-sigma0.5", "cifar": "dmae-vit-base-cifar10-sigma0.25"}
    with FakeHub() as hub:
        hub_server.point_client_at(monkeypatch, hub.endpoint, tmp_path / "cache")
        assert main(["publish", *map(str, release.values()), "--work-dir", str(tmp_path / "out")]) == 0
        out = capsys.readouterr().out
        for key, name in names.items():
            assert f"published {release[key]} as tester/{name} (" in out
            files = hub.repos[f"tester/{name}"].files
            assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md",
                    "modeling_dmae.py"} <= set(files)  # the code files: the trust_remote_code route
            assert not [f for f in files if f.endswith((".pth", ".bin", ".pt", ".pkl"))]
            config = DMAEConfig.from_dict(json.loads(files["config.json"]))
            assert files["README.md"].decode() == render_model_card(name, config, namespace="tester")

        pre = DMAEForPreTraining.from_pretrained("dmae-vit-base")
        local = DMAEForPreTraining.from_pretrained(tmp_path / "out" / "dmae-vit-base")
        assert all(torch.equal(a, b)
                   for a, b in zip(pre.state_dict().values(), local.state_dict().values(), strict=True))
        imagenet = DMAEForSmoothedClassification.from_pretrained("dmae-vit-base-sigma0.5")
        assert imagenet.config.smoothing_sigma == 0.5 and imagenet.config.num_labels == 1000
        torch.testing.assert_close(imagenet.classifier.weight,
                                   torch.load(release["imagenet"], weights_only=False)["model"]["head.weight"])
        cifar = DMAEForSmoothedClassification.from_pretrained("dmae-vit-base-cifar10-sigma0.25")
        assert cifar.config.smoothing_sigma == 0.25 and cifar.config.id2label[3] == "cat"
        assert list(cifar.config.image_mean) == list(configuration_dmae.CIFAR10_MEAN)


def test_dry_run_recognises_and_uploads_nothing(release, tmp_path, monkeypatch, capsys):
    with FakeHub() as hub:
        hub_server.point_client_at(monkeypatch, hub.endpoint, tmp_path / "cache")
        assert main(["publish", *map(str, release.values()), "--dry-run", "--work-dir", str(tmp_path / "out")]) == 0
        assert hub.requests == [] and not (tmp_path / "out").exists()
        hub_server.point_client_at(monkeypatch, hub.endpoint, tmp_path / "cache", offline=True)
        assert main(["publish", *map(str, release.values()), "--work-dir", str(tmp_path / "out")]) == 2
        assert hub.requests == [] and not (tmp_path / "out").exists()  # refused before converting anything
    captured = capsys.readouterr()
    assert "dmae publish: error: Publishing needs the Hugging Face Hub, and HF_HUB_OFFLINE=1 is set. Unset " \
           "HF_HUB_OFFLINE or connect to publish, or pass --dry-run to check the files." in captured.err
    out = captured.out.splitlines()
    assert out == [f"would publish {release['pre']} as tester/dmae-vit-base (preset=vit-base)",
                   f"would publish {release['imagenet']} as tester/dmae-vit-base-sigma0.5 (preset=vit-base, "
                   "sigma=0.5, normalization=imagenet)",
                   f"would publish {release['cifar']} as tester/dmae-vit-base-cifar10-sigma0.25 (preset=vit-base, "
                   "sigma=0.25, normalization=cifar10)"]


def test_unrecognised_files_stop_the_run_or_are_skipped(release, tmp_path, monkeypatch, capsys):
    junk = tmp_path / "notes.pth"
    junk.write_bytes(b"not a checkpoint")
    other_arch = tmp_path / "other.pth"  # official layout, but an architecture that was not released
    torch.save({"model": official_checkpoint("pretraining", dim=48, depth=1, patch=8, image=32, dec_dim=32,
                                             dec_depth=1)}, other_arch)
    no_sigma = tmp_path / "finetuned.pth"
    torch.save({"model": official_checkpoint("classifier", **TINY, seed=3)}, no_sigma)
    files = [str(release["pre"]), str(junk), str(other_arch), str(no_sigma), f"{release['cifar']}=dmae-vit-large"]
    with FakeHub() as hub:
        hub_server.point_client_at(monkeypatch, hub.endpoint, tmp_path / "cache")
        with pytest.raises(UnrecognisedFile) as info:
            main(["--debug", "publish", *files])  # --debug: the exception itself, not the one-line message
        assert hub.requests == []  # nothing was uploaded, not even the recognised file
        message = str(info.value)
        assert message.startswith("not publishing anything: 4 file(s) not recognised as official DMAE release files")
        assert f"{junk}: {junk} is not a DMAE/MAE checkpoint: neither a torch.save file" in message
        assert (f"{other_arch}: its encoder (hidden_size 48, num_hidden_layers 1, patch_size 8, image_size 32) is "
                "none of the released architectures ['vit-base', 'vit-large']") in message
        assert f"{no_sigma}: a classifier whose sigma is neither in its saved args nor in its file name" in message
        assert f"{release['cifar']}: it holds dmae-vit-base-cifar10-sigma0.25, not dmae-vit-large" in message
        assert "--skip-unrecognised" in message

        # an explicit short name supplies the sigma; --skip-unrecognised publishes the rest and names what it skipped
        files[3] = f"{no_sigma}=dmae-vit-base-cifar10-sigma1.0"
        assert main(["publish", *files, "--skip-unrecognised", "--work-dir", str(tmp_path / "out")]) == 0
        assert set(hub.repos) == {"tester/dmae-vit-base", "tester/dmae-vit-base-cifar10-sigma1.0"}
        err = capsys.readouterr().err
        assert err.count("dmae publish: skipped ") == 3 and f"skipped {other_arch}: its encoder" in err
        assert DMAEForSmoothedClassification.from_pretrained(
            "dmae-vit-base-cifar10-sigma1.0").config.smoothing_sigma == 1.0
