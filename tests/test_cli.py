"""`dmae certify` and `dmae predict` on real CIFAR-10 test images: the log format, resuming after SIGKILL, corrupt
images, two processes under torchrun (which own the log: a second run is refused), and JSON predictions.

Subprocesses run with OMP_NUM_THREADS=1 (as torchrun sets it) to stay fast on a shared 2-core machine; the reference
logs are written in-process with the default thread count, so the comparisons also cover thread-count independence.
"""

import io
import json
import os
import signal
import subprocess
import sys
import time

import datasets
import pytest
from conftest import REPO_ROOT
from test_pipeline import CIFAR10_LABELS, build_classifier

from dmae_hf import DMAEForSmoothedClassification, DMAEImageProcessor
from dmae_hf.certification.analysis import read_log
from dmae_hf.certification.dataset import image_seed
from dmae_hf.certification.log import HEADER, LogWriter, format_row, read_rows, shard_path
from dmae_hf.certification.ranks import merge_logs
from dmae_hf.cli import main

FAST = ["--n0", "10", "--n", "50", "--batch", "1000", "--alpha", "0.001", "--seed", "0"]
SLOW = ["--n0", "10", "--n", "500", "--batch", "250", "--alpha", "0.001", "--seed", "0"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return build_classifier(tmp_path_factory.mktemp("classifier"))


def certify_args(model, dataset, out, max_index=12, params=FAST):
    return ["certify", "--model", str(model), "--dataset", str(dataset), "--split", "test", "--max", str(max_index),
            "--image-column", "img", "--label-column", "label", *params, "--out", str(out)]


def subprocess_env(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **extra}


def without_time(path):
    """The log's lines without the `time` column (the only one allowed to differ between runs)."""
    lines = path.read_text().splitlines()
    column = lines[0].split("\t").index("time")
    return [tuple(f for i, f in enumerate(line.split("\t")) if i != column) for line in lines]


@pytest.fixture(scope="module")
def reference_log(classifier_dir, data_dir, tmp_path_factory):
    """An uninterrupted single-process run (in-process) over the first 12 CIFAR-10 test images."""
    out = tmp_path_factory.mktemp("reference") / "certify.tsv"
    assert main(certify_args(classifier_dir, data_dir / "cifar10", out) + ["--no-progress"]) == 0
    return out


@pytest.mark.timeout(60)
def test_certify_writes_cohens_log(reference_log, classifier_dir, cifar10_test_images):
    images, labels = cifar10_test_images
    lines = reference_log.read_text().splitlines()
    assert lines[0] + "\n" == HEADER == "idx\tlabel\tpredict\tradius\tcorrect\ttime\tpA_lower\tsamples\n"
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == list(range(12)) and [int(r[1]) for r in rows] == labels[:12]
    for _idx, label, predict, radius, correct, elapsed, _pA_lower, samples in rows:
        assert (int(predict) == -1) == (float(radius) == 0.0) and int(samples) == 60 and float(elapsed) >= 0
        assert int(correct) == int(int(predict) == int(label) and int(predict) != -1)
    assert {r[2] == "-1" for r in rows} == {True, False}  # both abstentions and certified predictions
    log = read_log(reference_log)  # `dmae analyze` reads it, samples column included
    assert list(log["idx"]) == list(range(12)) and set(log["samples"]) == {60}

    model = DMAEForSmoothedClassification.from_pretrained(classifier_dir).eval()
    for idx in (1, 4):  # each row is model.certify of that image alone with seed mix(seed, idx)
        pixel_values = DMAEImageProcessor.for_cifar10()(images[idx]).pixel_values[0]
        cert = model.certify(pixel_values, n0=10, n=50, alpha=0.001, batch_size=1000, seed=image_seed(0, idx))
        expected = format_row(idx, labels[idx], cert).rstrip("\n").split("\t")
        assert rows[idx][:5] + rows[idx][6:] == expected[:5] + expected[6:]


@pytest.mark.timeout(150)
def test_certify_resumes_after_sigkill(classifier_dir, data_dir, tmp_path):
    reference = tmp_path / "reference.tsv"
    assert main(certify_args(classifier_dir, data_dir / "cifar10", reference, 10, SLOW) + ["--no-progress"]) == 0

    log = tmp_path / "killed.tsv"
    command = [sys.executable, "-m", "dmae_hf", *certify_args(classifier_dir, data_dir / "cifar10", log, 10, SLOW)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 100
    while len(read_rows(log)) < 3:
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(read_rows(log))
    assert 3 <= done < 10
    with open(log, "ab") as f:
        f.write(b"9\t9\t7\t0.2")  # a torn row, as a kill in the middle of a write would leave

    resumed = subprocess.run(command + ["--no-progress"], cwd=REPO_ROOT, env=subprocess_env(), capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"certified {10 - done} image(s), {done} already in the log" in resumed.stderr
    assert without_time(log) == without_time(reference)


@pytest.mark.timeout(150)
def test_two_processes_match_one(reference_log, classifier_dir, data_dir, tmp_path, capsys):
    log = tmp_path / "two.tsv"
    args = certify_args(classifier_dir, data_dir / "cifar10", log)
    args[args.index("--max")] = "--max-index"  # torchrun's parser takes --max and --n for its own options
    args[args.index("--n")] = "--N"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "dmae_hf", *args, "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(ACCELERATE_USE_CPU="1"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock, deadline = log.with_name("two.tsv.lock"), time.time() + 100
    while not (lock.exists() and lock.read_text().startswith("pid ")):  # rank 0 took the log (before its model)
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.01)
    capsys.readouterr()
    assert main(certify_args(classifier_dir, data_dir / "cifar10", log) + ["--no-progress"]) == 2  # a second run
    assert f"{log} is in use by another run ({lock.read_text().strip()}" in capsys.readouterr().err
    stdout, stderr = process.communicate(timeout=140)
    result = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("certified 6 image(s)") == 2
    assert not shard_path(log, 0).exists() and not shard_path(log, 1).exists()
    assert log.read_text().splitlines()[0] + "\n" == HEADER
    assert without_time(log) == without_time(reference_log)


@pytest.mark.timeout(150)
def test_two_processes_within_each_image_match_one(classifier_dir, data_dir, tmp_path):
    """--within-image: both processes work on every image (noise blocks split between them), rank 0 writes."""
    params = ["--n0", "300", "--n", "600", "--batch", "200", "--alpha", "0.001", "--seed", "0"]  # 2-3 blocks each
    reference = tmp_path / "one.tsv"
    assert main(certify_args(classifier_dir, data_dir / "cifar10", reference, 4, params) + ["--no-progress"]) == 0
    log = tmp_path / "within.tsv"
    args = certify_args(classifier_dir, data_dir / "cifar10", log, 4, params)
    args[args.index("--max")] = "--max-index"
    args[args.index("--n")] = "--N"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "dmae_hf", *args, "--within-image", "--no-progress"]
    result = subprocess.run(command, cwd=REPO_ROOT, env=subprocess_env(ACCELERATE_USE_CPU="1"), capture_output=True,
                            text=True, timeout=140)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("certified 4 image(s)") == 2  # every process took part in every image
    assert without_time(log) == without_time(reference)


@pytest.mark.timeout(60)
def test_one_process_finishes_a_killed_two_process_run(reference_log, classifier_dir, data_dir, tmp_path, capsys):
    rows = reference_log.read_text().splitlines(keepends=True)
    log = tmp_path / "log.tsv"
    (tmp_path / "log.tsv.json").write_text((reference_log.parent / "certify.tsv.json").read_text())  # its settings
    shard_path(log, 0).write_text(HEADER + "".join(rows[1:9:2]))  # rank 0 had done idx 0, 2, 4, 6
    shard_path(log, 1).write_text(HEADER + "".join(rows[2:6:2]) + rows[6][:5])  # rank 1: 1, 3, torn 5
    assert main(certify_args(classifier_dir, data_dir / "cifar10", log) + ["--no-progress"]) == 0
    assert "certified 6 image(s), 6 already in the log" in capsys.readouterr().err
    assert without_time(log) == without_time(reference_log)
    assert not shard_path(log, 0).exists() and not shard_path(log, 1).exists()


def write_hub_dataset(root, images, labels, broken):
    """A Hub-layout dataset (`data/test-00000-of-00001.parquet`) whose images at the `broken` rows are corrupt."""
    cells = []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
        cells.append({"bytes": broken.get(i, lambda b: b)(data), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR10_LABELS)})
    (root / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"image": cells, "label": labels}, features=features).to_parquet(
        root / "data" / "test-00000-of-00001.parquet")
    return root


@pytest.mark.timeout(60)
def test_corrupt_images_are_logged_and_skipped(classifier_dir, cifar10_test_images, tmp_path, capsys):
    images, labels = cifar10_test_images
    broken = {2: lambda b: b"not an image at all", 5: lambda b: b[: len(b) // 2]}  # garbage; truncated PNG
    dataset = write_hub_dataset(tmp_path / "ds", images[:8], labels[:8], broken)
    out = tmp_path / "log.tsv"
    args = ["certify", "--model", str(classifier_dir), "--dataset", str(dataset), *FAST, "--out", str(out)]
    assert main(args) == 0  # the image column is found by its feature type
    stderr = capsys.readouterr().err
    assert "skipping idx 2" in stderr and "skipping idx 5" in stderr
    assert sorted(read_rows(out)) == [0, 1, 3, 4, 6, 7]
    assert main(args + ["--no-progress"]) == 0  # a rerun tries the corrupt ones again, certifies nothing new
    assert "certified 0 image(s), 6 already in the log, 2 unreadable skipped" in capsys.readouterr().err

    strided = tmp_path / "strided.tsv"  # Cohen's --skip (every k-th image) and --max (stop index)
    assert main(args[:-1] + [str(strided), "--skip", "3", "--max", "7", "--no-progress"]) == 0
    assert sorted(read_rows(strided)) == [0, 3, 6]


def test_log_files_resume_and_merge(tmp_path):
    log = tmp_path / "log.tsv"
    log.write_text(HEADER + "0\t3\t3\t0.5\t1\t0.1\t0.9\t60\n" + "2\t1\t-1\t0.0")  # torn last row
    assert list(read_rows(log)) == [0]
    LogWriter(log).close()  # repairs: cuts the torn row
    assert log.read_text() == HEADER + "0\t3\t3\t0.5\t1\t0.1\t0.9\t60\n"
    shard = LogWriter(shard_path(log, 1))
    shard.append("3\t1\t-1\t0.0\t0\t0.1\t0.2\t60\n")
    shard.append("1\t1\t1\t0.2\t1\t0.1\t0.7\t60\n")
    shard.close()
    shard_path(log, 0).write_text(HEADER + "0\t3\t3\t0.5\t1\t0.2\t0.9\t60\n")  # a duplicate of idx 0
    assert merge_logs(log) == 3
    assert [line.split("\t")[0] for line in log.read_text().splitlines()] == ["idx", "0", "1", "3"]
    assert not shard_path(log, 0).exists() and not shard_path(log, 1).exists()
    (tmp_path / "other.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="not a dmae certification log"):
        read_rows(tmp_path / "other.tsv")


@pytest.mark.timeout(60)
def test_resume_with_other_settings_is_refused(classifier_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "log.tsv"
    args = certify_args(classifier_dir, data_dir / "cifar10", out, max_index=2) + ["--no-progress"]
    assert main(args) == 0 and len(read_rows(out)) == 2
    assert json.loads((tmp_path / "log.tsv.json").read_text())["n"] == 50
    capsys.readouterr()
    more = args[:]
    more[more.index("--max") + 1] = "3"  # extending the selection is a resume
    assert main(more) == 0 and len(read_rows(out)) == 3
    assert "certified 1 image(s), 2 already in the log" in capsys.readouterr().err
    other = args[:]
    other[other.index("--seed") + 1] = "1"
    assert main(other) == 2
    assert "written with other settings: seed=0 (now 1)" in capsys.readouterr().err
    assert len(read_rows(out)) == 3


@pytest.mark.timeout(60)
def test_adaptive_method_and_autocast(classifier_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "adaptive.tsv"
    args = certify_args(classifier_dir, data_dir / "cifar10", out, max_index=6,
                        params=["--n0", "10", "--n", "800", "--batch", "400"])
    assert main(args + ["--method", "adaptive", "--first-look", "100", "--target-radius", "0.05",
                        "--no-progress"]) == 0
    samples = [int(line.split("\t")[7]) for line in read_rows(out).values()]
    assert len(samples) == 6 and max(samples) <= 810 and min(samples) < 810  # some images stop at an early look
    tolerant = tmp_path / "tolerant.tsv"
    assert main(args[:-1] + [str(tolerant), "--method", "adaptive", "--first-look", "100", "--estimate-tolerance", "1",
                             "--no-progress"]) == 0  # the extrapolated gain is always below 1: stop at the first look
    assert {int(line.split("\t")[7]) for line in read_rows(tolerant).values()} == {110}
    assert json.loads(tolerant.with_name(tolerant.name + ".json").read_text())["method_kwargs"] == {
        "first_look": 100, "estimate_tolerance": 1.0}
    assert main(args[:-1] + [str(tmp_path / "bf16.tsv"), "--autocast", "bf16", "--no-progress"]) == 0
    assert {int(line.split("\t")[7]) for line in read_rows(tmp_path / "bf16.tsv").values()} == {810}
    capsys.readouterr()
    assert main(args[:-1] + [str(tmp_path / "c.tsv"), "--target-radius", "0.5"]) == 2  # a cohen run takes no options
    assert "method='cohen' takes no extra options" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_certify_reports_bad_arguments(classifier_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "bad.tsv"
    args = certify_args(classifier_dir, data_dir / "cifar10", out, max_index=2)
    args[args.index("--n0") + 1] = "100"  # n0 > n = 50
    assert main(args + ["--no-progress"]) == 2
    assert "n0 (100) must not exceed n (50)" in capsys.readouterr().err
    assert main(certify_args(classifier_dir, data_dir / "cifar10", out, max_index=2) + ["--no-progress"]) == 0
    assert main(certify_args(classifier_dir, data_dir / "cifar10", out, max_index=2) + ["--image-column", "pic"]) == 2
    assert "Column 'pic' not in" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_predict_prints_json(classifier_dir, cifar10_test_images, tmp_path, capsys):
    images, _ = cifar10_test_images
    images[1].save(tmp_path / "car.png")
    assert main(["predict", str(tmp_path / "car.png"), "--model", str(classifier_dir), "--n0", "10", "--n", "100",
                 "--alpha", "0.01", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["image"] == str(tmp_path / "car.png") and result["n"] == 100 and result["sigma"] == 0.25
    assert set(result) >= {"label", "class_id", "radius", "pA_lower", "abstained"}
    assert result["abstained"] == (result["label"] is None)
    assert main(["predict", str(tmp_path / "car.png"), str(tmp_path / "missing.png"), "--model",
                 str(classifier_dir), "--n", "100"]) == 1
    captured = capsys.readouterr()
    assert "car.png: " in captured.out and "missing.png: No such file or folder" in captured.err


@pytest.mark.timeout(300)
def test_compiled_classifier_certifies_like_the_eager_one(classifier_dir, data_dir, tmp_path, monkeypatch):
    """`--compile` runs torch.compile (inductor, fixed shapes) on the base classifier; the noise is the same, so the
    certificates agree with the eager run up to float rounding in the logits (pA_lower within one vote's worth)."""
    import torch

    compile_calls, real_compile = [], torch.compile

    def recording_compile(fn, **kwargs):
        compiled = real_compile(fn, **kwargs)

        def call(*args):
            compile_calls.append(args[0].shape[0])
            return compiled(*args)

        return call

    eager, compiled = tmp_path / "eager.tsv", tmp_path / "compiled.tsv"
    assert main(certify_args(classifier_dir, data_dir / "cifar10", eager, max_index=2) + ["--no-progress"]) == 0
    monkeypatch.setattr(torch, "compile", recording_compile)
    assert main(certify_args(classifier_dir, data_dir / "cifar10", compiled, max_index=2)
                + ["--no-progress", "--compile"]) == 0
    assert sum(compile_calls) == 2 * (10 + 50)  # every noisy sample went through the compiled classifier
    a, b = read_rows(eager), read_rows(compiled)
    assert a.keys() == b.keys() == {0, 1}
    for idx in a:
        ea, co = a[idx].split("\t"), b[idx].split("\t")
        assert ea[:3] == co[:3] and abs(float(ea[6]) - float(co[6])) < 0.02
