"""One writer per certification log, and refusals instead of lost, mixed or overwritten rows (`dmae certify`).

Every refusal must name the file and the problem; the ones about `--out` and the process group must come before
the model is loaded, which the tests check by passing a model path that does not exist. A refused or failed run
leaves no file behind.
"""

import errno
import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT
from test_cli import FAST, certify_args, subprocess_env, without_time, write_hub_dataset
from test_pipeline import build_classifier

from dmae_hf import defaults
from dmae_hf.certification.log import HEADER, LogWriter, read_rows
from dmae_hf.cli import build_parser, main

MISSING_MODEL = "no/such-model-dir"  # loading it would fail: a refusal that names --out came first


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return build_classifier(tmp_path_factory.mktemp("classifier"))


def refused(args, capsys) -> str:
    """The one-line error of a refused `dmae certify` run."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dmae certify: error: "), err
    return err[-1]


@pytest.mark.timeout(120)
def test_second_writer_is_refused_and_the_first_completes(classifier_dir, data_dir, tmp_path, capsys):
    log = tmp_path / "cd.tsv"
    slow = ["--n0", "10", "--n", "2000", "--batch", "500", "--alpha", "0.001", "--seed", "0"]
    first = subprocess.Popen([sys.executable, "-m", "dmae_hf", *certify_args(classifier_dir, data_dir / "cifar10", log,
                                                                            4, slow), "--no-progress"],
                             cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    lock = tmp_path / "cd.tsv.lock"
    deadline = time.time() + 60
    while not (lock.exists() and f"pid {first.pid} " in lock.read_text()):
        assert first.poll() is None and time.time() < deadline, "the first writer never took the lock"
        time.sleep(0.02)
    error = refused(certify_args(classifier_dir, data_dir / "cifar10", log, 12) + ["--no-progress"], capsys)
    assert f"{log} is in use by another run (pid {first.pid} on {socket.gethostname()}" in error
    assert "choose another --out" in error
    _, stderr = first.communicate(timeout=100)
    assert first.returncode == 0, stderr[-2000:]
    assert sorted(read_rows(log)) == [0, 1, 2, 3] and "cd.tsv has 4 rows" in stderr
    assert main(certify_args(classifier_dir, data_dir / "cifar10", log, 4, slow) + ["--no-progress"]) == 0
    assert "certified 0 image(s), 4 already in the log" in capsys.readouterr().err  # the lock is free again


def test_malformed_rows_are_refused_with_file_and_line(tmp_path):
    log = tmp_path / "log.tsv"
    good = "0\t3\t3\t0.5\t1\t0.1\t0.9\t60\n"
    for row, problem in [("3\t3\n", "2 field(s), expected 8"),
                         ("1\t1\tcat\t0.2\t1\t0.1\t0.7\t60\n", "predict = 'cat'"),
                         ("1\t1\t1\t0.2\t1\t0.1\t0.7\t60\t9\n", "9 field(s)"), ("\n", "1 field(s)"),
                         ("1\t1\t1\tx\t1\t0.1\t0.7\t60\n", "radius = 'x' is not a number")]:
        log.write_text(HEADER + good + row + good.replace("0\t", "2\t", 1))
        with pytest.raises(ValueError, match="malformed row") as info:
            read_rows(log)
        assert f"{log}, line 3: malformed row" in str(info.value) and problem in str(info.value)
    log.write_text(HEADER + good + "3\t3")  # a torn last line is a kill's artefact: dropped, not an error
    assert list(read_rows(log)) == [0]


@pytest.mark.timeout(60)
def test_malformed_row_and_missing_settings_refuse_to_resume(classifier_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "log.tsv"
    args = certify_args(classifier_dir, data_dir / "cifar10", out, max_index=2) + ["--no-progress"]
    assert main(args) == 0
    with open(out, "a") as f:
        f.write("3\t3\n")
    before = out.read_bytes()
    assert f"{out}, line 4: malformed row '3\\t3'" in refused(args, capsys)
    assert out.read_bytes() == before  # kept as it was, for the user to repair

    out.write_bytes(before[: before.rindex(b"3\t3\n")])
    settings = tmp_path / "log.tsv.json"
    settings.unlink()
    other = args[:]
    other[other.index("--seed") + 1] = "7"  # would silently mix rows of two seeds
    error = refused(other, capsys)
    assert f"{out} has rows but no settings file {settings}" in error and f"Restore {settings}" in error
    assert len(read_rows(out)) == 2 and not settings.exists()

    settings.write_text('{"mine": 1}\n')  # someone else's LOG.json
    error = refused(other, capsys)
    assert f"{settings} is not the settings file of a dmae certification log" in error
    assert settings.read_text() == '{"mine": 1}\n'


@pytest.mark.parametrize("content", [b"my precious notes", b"a\tb\n1\t2\n", b"\x89PNG\r\n\x1a\n\x00\x00", b"idx\tlab"
                                     b"el\tpredict\n0\t1\t2\n"])
def test_unrelated_out_file_is_never_touched(content, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_bytes(content)
    error = refused(["certify", "--model", MISSING_MODEL, "--dataset", "unused", "--out", str(out)], capsys)
    assert f"{out} exists and is not a dmae certification log" in error and "left untouched" in error
    assert out.read_bytes() == content
    with pytest.raises(ValueError, match="not a dmae certification log"):
        LogWriter(out)
    assert out.read_bytes() == content


def test_bad_locations_fail_before_the_model(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "dir").mkdir()
    cases = {
        tmp_path / "file.txt" / "log.tsv": f"{tmp_path / 'file.txt'} is a file, not a directory",
        tmp_path / "file.txt" / "sub" / "log.tsv": f"{tmp_path / 'file.txt'} is a file, not a directory",
        tmp_path / "dir": f"{tmp_path / 'dir'} is a directory; --out names the log file",
        "/dev/full": "/dev/full is not a regular file",
        "/proc/self/log.tsv": "cannot write /proc/self/log.tsv: Permission denied",  # a folder nobody may write
    }
    for out, problem in cases.items():
        error = refused(["certify", "--model", MISSING_MODEL, "--dataset", "unused", "--out", str(out)], capsys)
        assert problem in error, (out, error)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file.txt"]


EMBEDDED = ["bundled:cifar10", "--max", "1", "--n0", "10", "--n", "10", "--no-progress"]  # loads in seconds


@pytest.mark.timeout(120)
def test_unwritable_locations_and_a_full_disk_leave_no_file(tmp_path, capsys, monkeypatch):
    """Found when the run first writes (the lock), after the checks: the message names the file; nothing stays."""
    error = refused(["certify", *EMBEDDED, "--out", "/proc/log.tsv"], capsys)  # writable, says access(); is not
    assert "cannot write /proc/log.tsv.lock: No such file or directory" in error

    def full_disk(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full_disk)  # the write of the lock holder, the first write of a run
    out = tmp_path / "full" / "log.tsv"
    error = refused(["certify", *EMBEDDED, "--out", str(out)], capsys)
    assert f"cannot write {out}.lock: No space left on device" in error
    assert list(tmp_path.iterdir()) == []  # no lock file, no log, and not the folder made for them
    monkeypatch.undo()

    real_replace = os.replace

    def full_disk_replace(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk_replace)  # LOG.json is written through LOG.json.tmp
    error = refused(["certify", *EMBEDDED, "--out", str(out)], capsys)
    assert f"cannot write {out}.json: No space left on device" in error
    assert list(tmp_path.iterdir()) == []  # no LOG.json.tmp either


def test_a_full_disk_while_appending_names_the_log(tmp_path):
    writer = LogWriter(tmp_path / "log.tsv")
    writer.file.close()
    writer.file = open("/dev/full", "ab", buffering=0)  # every write fails with ENOSPC, as on a full disk
    with pytest.raises(OSError, match="No space left on device") as info:
        writer.append("0\t3\t3\t0.5\t1\t0.1\t0.9\t60\n")
    assert info.value.errno == errno.ENOSPC and f"cannot write {tmp_path / 'log.tsv'}" in str(info.value)
    assert "rerun the same command to resume" in str(info.value)
    writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rank", ["0", "1"])  # rank 0 waits for clients; rank 1 for a master that is not there
def test_stale_distributed_environment_fails_in_seconds(rank, tmp_path, capsys, monkeypatch):
    env = {"RANK": rank, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    for key, value in {**env, "DMAE_DIST_TIMEOUT": "2"}.items():
        monkeypatch.setenv(key, value)
    start = time.time()
    error = refused(["certify", *EMBEDDED, "--out", str(tmp_path / "l.tsv")], capsys)
    assert time.time() - start < 30
    assert "did not meet within 2 s" in error and all(f"{k}={v}" in error for k, v in env.items())
    assert "unset RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT" in error and "torchrun" in error
    monkeypatch.setenv("DMAE_DIST_TIMEOUT", "soon")
    assert "DMAE_DIST_TIMEOUT='soon' is not a number of seconds" in refused(
        ["certify", *EMBEDDED, "--out", str(tmp_path / "l.tsv")], capsys)
    assert list(tmp_path.iterdir()) == []


PROJECTION = re.compile(r"first image: ([\d,]+) samples in ([\d.]+) s \(([\d,]+) samples/s\); "
                        r"([\d,]+) images -> about ([\d.]+) s")


@pytest.mark.timeout(60)
def test_first_image_prints_rate_and_projection(classifier_dir, data_dir, cifar10_test_images, tmp_path, capsys):
    out = tmp_path / "log.tsv"
    assert main(certify_args(classifier_dir, data_dir / "cifar10", out, max_index=6)) == 0
    err = capsys.readouterr().err
    (match,) = PROJECTION.findall(err)
    samples, seconds, rate, images, total = (float(v.replace(",", "")) for v in match)
    assert samples == 60 and images == 6
    assert rate == pytest.approx(samples / seconds, rel=0.05, abs=1)  # seconds has 3 significant digits
    assert total == pytest.approx(images * seconds, rel=0.02)
    assert "6/6" in err  # one bar, over the selection, in images

    extended = certify_args(classifier_dir, data_dir / "cifar10", out, max_index=10)  # resume: 4 left of 10
    assert main(extended) == 0
    err = capsys.readouterr().err
    assert "; 4 images -> about" in err and "10/10" in err

    images, labels = cifar10_test_images
    dataset = write_hub_dataset(tmp_path / "ds", images[:2], labels[:2], {})  # no split sizes: streamed blind
    assert main(["certify", "--model", str(classifier_dir), "--dataset", str(dataset), *FAST,
                 "--out", str(tmp_path / "blind.tsv")]) == 0
    assert "number of images unknown (the dataset lists no split sizes): about" in capsys.readouterr().err


def test_certify_options_use_the_shared_defaults_and_have_help():
    parser = build_parser()
    args = parser.parse_args(["certify", "--model", "m", "--dataset", "d", "--out", "o"])
    assert (args.n0, args.n, args.alpha, args.batch, args.seed) == (
        defaults.N0, defaults.N, defaults.ALPHA, defaults.NOISE_BATCH, defaults.SEED)
    certify = parser._subparsers._group_actions[0].choices["certify"]
    undocumented = [a.dest for a in certify._actions if not a.help]
    assert undocumented == [], undocumented


def test_lock_survives_a_finished_run_only_as_a_record(tmp_path, classifier_dir, data_dir, capsys):
    """After a run, LOG.lock names the last holder and is free; shard locks are gone; rows are byte-identical."""
    out = tmp_path / "log.tsv"
    args = certify_args(classifier_dir, data_dir / "cifar10", out, max_index=3) + ["--no-progress"]
    assert main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.tsv", "log.tsv.json", "log.tsv.lock"]
    assert (tmp_path / "log.tsv.lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
    again = tmp_path / "again.tsv"
    assert main(args[:-2] + [str(again), "--no-progress"]) == 0
    assert without_time(again) == without_time(out)
    assert json.loads((tmp_path / "log.tsv.json").read_text())["n"] == 50


def test_dataset_images_above_max_pixels_are_refused_before_decoding(monkeypatch):
    """`dmae certify` reads each dataset cell with `decode_image(cell, MAX_PIXELS)`: the size comes from the header,
    and an oversized image is refused (and skipped with a warning) before its pixels are decoded."""
    import io as _io

    from PIL import Image

    from dmae_hf.image_processing_dmae import decode_image

    buffer = _io.BytesIO()
    Image.new("RGB", (120, 100)).save(buffer, format="PNG")
    cell = {"bytes": buffer.getvalue(), "path": None}
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size))
    with pytest.raises(ValueError, match=r"120x100 = 0.0 megapixels, more than max_pixels = 10,000"):
        decode_image(cell, max_pixels=10_000)
    assert decoded == []  # refused from the header alone
    assert decode_image(cell, max_pixels=12_000).size == (120, 100) and decoded  # within the limit: decoded
