"""`dmae certify INPUT...` and `dmae predict INPUT...`: image files, globs, folders (class subfolders are labels),
the bundled images, Hub ids and local Hub-layout copies; an unreachable Hub fails in seconds; a refused run writes
nothing; the `--help` examples work exactly as printed.

The runs use the embedded model with a few samples per image, so each takes seconds."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT
from test_cli import without_time
from test_pipeline_inputs import png_header

from dmae_hf import defaults
from dmae_hf.certification.inputs import ImageFiles, label_ids, resolve_inputs
from dmae_hf.certification.log import read_rows
from dmae_hf.cli import build_parser, main

ASSETS = REPO_ROOT / "dmae_hf" / "assets"
CIFAR10 = json.loads((ASSETS / "cifar10" / "index.json").read_text())
ID2LABEL = dict(enumerate(CIFAR10["label_names"]))
TINY = ["--n0", "10", "--n", "20", "--batch", "100", "--no-progress"]


def bundled(i: int):
    return ASSETS / "cifar10" / CIFAR10["images"][i]["file"]


def copy(i: int, folder, name=None):
    folder.mkdir(parents=True, exist_ok=True)
    return shutil.copy(bundled(i), folder / (name or bundled(i).name))


def names(images):
    return [os.path.basename(f.path) for f in images.files]


def one_line_error(capsys, command="certify") -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert len(err) == 1 and err[0].startswith(f"dmae {command}: error: "), err
    return err[0]


# ---------------------------------------------------------------------------------------------------- resolving
def test_files_globs_and_folders_resolve_in_order(tmp_path):
    flat = tmp_path / "flat"
    for i, name in [(0, "b.png"), (1, "a.png"), (2, "c.png"), (3, ".hidden.png")]:
        copy(i, flat, name)
    (flat / "notes.txt").write_text("not an image")
    folder = resolve_inputs([str(flat)])
    assert isinstance(folder, ImageFiles) and names(folder) == ["a.png", "b.png", "c.png"]
    assert not folder.labelled and folder.settings()["labels"] == "none"
    assert names(resolve_inputs([str(flat / "*.png")])) == ["a.png", "b.png", "c.png"]
    files = resolve_inputs([str(flat / "c.png"), str(flat / "a.png"), str(flat)])  # in order; repeats dropped
    assert names(files) == ["c.png", "a.png", "b.png"]
    assert [idx for idx, _, label in files.examples() if label is None] == [0, 1, 2]


def test_class_folders_are_labels_matched_to_the_models_classes(tmp_path):
    root = tmp_path / "photos"
    copy(3, root / "Cat")  # any case
    copy(1, root / "automobile")
    copy(13, root / "Cat")
    images = resolve_inputs([str(root)])
    assert images.labelled and names(images) == [bundled(3).name, bundled(13).name, bundled(1).name]
    images.bind_labels(ID2LABEL)
    assert [label for _, _, label in images.examples()] == [3, 3, 1]
    assert images.settings()["labels"] == "class folders"

    split = tmp_path / "layout"  # test/<class>/*.png, the ImageFolder layout
    copy(8, split / "test" / "ship")
    images = resolve_inputs([str(split)])
    images.bind_labels(ID2LABEL)
    assert [label for _, _, label in images.examples()] == [8]
    with pytest.raises(ValueError, match="No images in folder .*layout.*no 'train' split folder"):
        resolve_inputs([str(split)], split="train")

    copy(4, root / "zebra")
    images = resolve_inputs([str(root)])
    with pytest.raises(ValueError, match=r"class folder\(s\) 'zebra' name no class of the model \(its classes: "
                                         r"airplane, automobile"):
        images.bind_labels(ID2LABEL)


def test_label_names_match_ignoring_case_underscores_and_synonyms():
    id2label = {"0": "airplane", "3": "tabby, tabby cat", "5": "great white shark", "7": "horse"}
    assert label_ids(["AIRPLANE", "tabby_cat", "Great-White-Shark", "7", "zebra"], id2label) == {
        "AIRPLANE": 0, "tabby_cat": 3, "Great-White-Shark": 5, "7": 7, "zebra": None}


def test_bundled_images_and_their_folder_are_labelled_by_their_index():
    images = resolve_inputs(["bundled:cifar10"])
    images.bind_labels(ID2LABEL)
    assert images.num_rows == 20 and images.name(3) == "bundled:cifar10/test_00003_cat.png"
    assert [label for _, _, label in images.examples()] == [item["label"] for item in CIFAR10["images"]]
    folder = resolve_inputs([str(ASSETS / "cifar10")])  # the path: once "Unknown label column 'label'"
    folder.bind_labels(ID2LABEL)
    assert [v for v in folder.examples()] == [v for v in images.examples()]

    photos = resolve_inputs(["bundled:imagenet"])
    photos.bind_labels(ID2LABEL)  # a CIFAR-10 model knows no strawberry: certified unlabelled, and said so
    assert not photos.labelled and "'strawberry'" in photos.note
    assert [label for _, _, label in photos.examples()] == [None] * 3


def test_bad_inputs_are_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    copy(0, tmp_path / "mixed")
    copy(1, tmp_path / "mixed" / "automobile")
    copy(2, tmp_path / "loose")
    cases = [
        ([str(tmp_path / "missing.png")], "No such file or folder: '.*missing.png'"),
        ([str(tmp_path / "nothing" / "*.png")], "No file matches '.*nothing/\\*.png'"),
        ([str(tmp_path / "empty")], "No images in folder '.*empty'"),
        ([str(tmp_path / "mixed")], "holds both images and class folders \\(automobile\\)"),
        (["bundled:mnist"], "Unknown bundled image set 'bundled:mnist'; the package holds bundled:cifar10, "
                            "bundled:imagenet"),
        (["bundled:cifar10", str(tmp_path / "loose")], "Labelled inputs \\(bundled:cifar10\\) and unlabelled ones"),
        (["uoft-cs/cifar10", "bundled:cifar10"], "Dataset 'uoft-cs/cifar10' must be the only INPUT"),
    ]
    for inputs, message in cases:
        with pytest.raises(ValueError, match=message):
            resolve_inputs(inputs)
    with pytest.raises(ValueError, match="--image-column applies to datasets"):
        resolve_inputs(["bundled:cifar10"], image_column="img")


# ------------------------------------------------------------------------------------------------------ the Hub
@pytest.mark.timeout(60)
def test_an_unreachable_hub_id_fails_in_seconds_with_one_line(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as s:  # a port nothing listens on (a new endpoint: probed afresh): refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = f"127.0.0.1:{port} cannot be reached (connection refused)"
    for offline, endpoint, cause in [(True, constants.ENDPOINT, "HF_HUB_OFFLINE=1 is set"),
                                     (False, f"http://127.0.0.1:{port}", refused)]:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        start = time.perf_counter()
        assert main(["certify", "uoft-cs/cifar10", "--out", str(tmp_path / "c.tsv")]) == 2
        assert time.perf_counter() - start < 3
        error = one_line_error(capsys)
        assert "'uoft-cs/cifar10' is neither a local dataset folder nor a reachable Hub dataset id" in error
        assert cause in error and "local copy" in error
        assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------- nothing written
@pytest.mark.timeout(120)
@pytest.mark.parametrize("args, message", [
    (["missing.png"], "No such file or folder: 'missing.png'"),
    (["bundled:cifar10", "--model", "./no-such-model"], "no-such-model"),
    (["bundled:cifar10", "--n", "0"], r"n must be an integer >= 1, got 0"),
    (["bundled:cifar10", "--n0", "200", "--n", "100"], r"n0 \(200\) must not exceed n \(100\)"),
    (["bundled:cifar10", "--alpha", "0"], r"alpha must be in \(0, 1\), got 0.0"),
    (["bundled:cifar10", "--alpha", "1.5"], r"alpha must be in \(0, 1\), got 1.5"),
    (["bundled:cifar10", "--sigma", "25"], r"sigma = 25 is larger than 1.*divide by 255"),
    (["bundled:cifar10", "--sigma", "0.5"], r"sigma = 0\.25"),  # the model's own sigma, named
    (["bundled:cifar10", "--method", "adaptive", "--first-look", "-5"], "first_look"),
])
def test_a_refused_run_leaves_no_file(args, message, tmp_path, capsys):
    out = tmp_path / "runs" / "c.tsv"
    assert main(["certify", *TINY, *args, "--out", str(out)]) == 2
    assert re.search(message, one_line_error(capsys))
    assert list(tmp_path.iterdir()) == []  # no log, LOG.json, LOG.lock, nor the folder for them


# ------------------------------------------------------------------------------------------------- end to end
@pytest.mark.timeout(180)
def test_certify_labelled_folders_and_unlabelled_images_then_analyze(tmp_path, capsys):
    root = tmp_path / "photos"
    for i in (3, 13):
        copy(i, root / "cat")
    copy(8, root / "Ship")
    labelled = tmp_path / "labelled.tsv"
    assert main(["certify", str(root), *TINY, "--out", str(labelled)]) == 0
    err = capsys.readouterr().err
    assert err.count(defaults.CERTIFICATE_CAVEAT) == 1 and "unlabelled" not in err
    assert [int(row.split("\t")[1]) for row in read_rows(labelled).values()] == [8, 3, 3]  # Ship/ sorts first
    settings = json.loads((tmp_path / "labelled.tsv.json").read_text())
    assert settings["labels"] == "class folders" and len(settings["files"]) == 3

    unlabelled = tmp_path / "unlabelled.tsv"
    assert main(["certify", str(root / "cat" / "*.png"), *TINY, "--out", str(unlabelled)]) == 0
    err = capsys.readouterr().err
    assert "the images are unlabelled: their rows have label -1" in err
    rows = [row.split("\t") for row in read_rows(unlabelled).values()]
    assert [(r[1], r[4]) for r in rows] == [("-1", "0")] * 2  # label -1, never correct
    assert json.loads((tmp_path / "unlabelled.tsv.json").read_text())["labels"] == "none"

    assert main(["analyze", str(labelled), str(unlabelled)]) == 0
    out = capsys.readouterr().out
    assert "| labelled | 3 |" in out and "| unlabelled | 0 | n/a" in out
    assert "unlabelled: " in out and "2 unlabelled image(s), not in the accuracy" in out


@pytest.mark.timeout(180)
def test_bundled_images_a_folder_and_a_hub_layout_copy_certify_alike(data_dir, cifar10_test_images, tmp_path):
    """`bundled:cifar10`, the assets folder (once refused) and `--dataset` give the same rows for the same images;
    a local Hub-layout copy as an INPUT is the same as `--dataset`."""
    logs = {}
    for name, args in [("bundled", ["bundled:cifar10"]), ("folder", [str(ASSETS / "cifar10")]),
                       ("dataset", ["--dataset", str(ASSETS / "cifar10")])]:
        logs[name] = tmp_path / f"{name}.tsv"
        assert main(["certify", *args, "--max", "3", *TINY, "--out", str(logs[name])]) == 0
    assert without_time(logs["bundled"]) == without_time(logs["folder"]) == without_time(logs["dataset"])
    for name, args in [("input", [str(data_dir / "cifar10")]), ("option", ["--dataset", str(data_dir / "cifar10")])]:
        logs[name] = tmp_path / f"{name}.tsv"
        assert main(["certify", *args, "--max", "2", *TINY, "--out", str(logs[name])]) == 0
    assert without_time(logs["input"]) == without_time(logs["option"])
    labels = [int(r.split("\t")[1]) for r in read_rows(logs["input"]).values()]
    assert labels == cifar10_test_images[1][:2]  # its label column


@pytest.mark.timeout(120)
def test_predict_reports_a_bad_input_and_prints_the_others(tmp_path, capsys):
    copy(3, tmp_path / "photos" / "cat")
    (tmp_path / "empty").mkdir()
    bomb = png_header(tmp_path / "bomb.png", 20000, 20000)  # refused from its header, never decoded
    assert main(["predict", str(tmp_path / "photos"), str(tmp_path / "missing.png"), str(tmp_path / "empty"),
                 str(bomb), "bundled:imagenet", "--n0", "10", "--n", "20", "--json"]) == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [r["image"] for r in results] == [os.path.join(str(tmp_path / "photos"), "cat", bundled(3).name)] + [
        f"bundled:imagenet/{item}" for item in sorted(p.name for p in (ASSETS / "imagenet").glob("*.jpg"))]
    assert results[0]["true_label"] == "cat" and results[0]["note"] is None and results[0]["shrink"] == 1.0
    assert all("shrunk 8.0x" in r["note"] and "true_label" not in r for r in results[1:])
    errors = [line for line in captured.err.splitlines() if line.startswith("dmae predict: error: ")]
    assert len(errors) == 3 and "No such file or folder" in errors[0] and "No images in folder" in errors[1]
    assert f"{bomb}: " in errors[2] and "too large to decode" in errors[2]
    assert captured.err.count(defaults.CERTIFICATE_CAVEAT) == 1


# ------------------------------------------------------------------------------------------------------ --help
@pytest.mark.timeout(300)
@pytest.mark.parametrize("command", ["certify", "predict"])
def test_the_help_example_works_as_printed(command, tmp_path):
    text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
    example = text.split("example (offline", 1)[1].splitlines()[1].strip()
    assert example.startswith(f"dmae {command} bundled:")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    shell = f'dmae() {{ "{sys.executable}" -m dmae_hf "$@"; }}\n{example}'  # `dmae` is this checkout's CLI
    result = subprocess.run(["bash", "-c", shell], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=280)
    assert result.returncode == 0, result.stderr[-2000:]
    if command == "certify":
        assert "| certify | 20 |" in result.stdout and len(read_rows(tmp_path / "certify.tsv")) == 20
    else:
        assert result.stdout.count("bundled:imagenet/") == 6  # three results and their shrink notes
        assert result.stdout.count(defaults.CERTIFICATE_CAVEAT) == 1
