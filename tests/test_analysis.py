"""dmae_hf.certification.analysis, `dmae analyze` and the `certified_accuracy` evaluate metric, on small hand-written
logs with known answers."""

import json
import warnings

import pytest
from scipy.stats import binomtest

from dmae_hf.certification.analysis import (
    ImageSetMismatchWarning,
    LogFormatError,
    analyze_logs,
    certificate_arrays,
    certified_accuracy,
    confidence_interval,
    curve,
    plot_curve,
    read_log,
)
from dmae_hf.cli import main

RADII = [0.0, 0.25, 0.5, 0.75, 1.0]

# Cohen's six columns, his timedelta time format: correct-and-certified radii 0.5, 0.25, 1.2 (one abstention, one
# wrong prediction with a radius that must not count).
LOG_A = """idx\tlabel\tpredict\tradius\tcorrect\ttime
0\t3\t3\t0.5\t1\t0:00:01.500000
1\t2\t-1\t0.0\t0\t0:00:01
2\t1\t4\t0.3\t0\t0:00:02
3\t0\t0\t0.25\t1\t0:00:01
4\t5\t5\t1.2\t1\t0:00:02
"""
A_ACC = [0.6, 0.6, 0.4, 0.2, 0.2]
A_ACR = (0.5 + 0.25 + 1.2) / 5

# `dmae certify`'s columns with pA_lower and samples; a correct image with radius 0 counts at r = 0 only.
LOG_B = """idx\tlabel\tpredict\tradius\tcorrect\ttime\tpA_lower\tsamples
0\t3\t3\t0.9\t1\t1.0\t0.99\t1100
1\t2\t2\t0.1\t1\t1.0\t0.6\t1100
2\t1\t1\t0.0\t1\t1.0\t0.5\t1100
3\t0\t-1\t0.0\t0\t2.0\t0.4\t100
4\t5\t5\t0.6\t1\t1.0\t0.9\t1100
"""
B_ACC = [0.8, 0.4, 0.4, 0.2, 0.0]
B_ACR = (0.9 + 0.1 + 0.0 + 0.6) / 5


@pytest.fixture
def logs(tmp_path):
    a, b = tmp_path / "sigma_0.25.tsv", tmp_path / "sigma_0.50.tsv"
    a.write_text(LOG_A)
    b.write_text(LOG_B)
    return a, b


def test_six_column_cohen_log_known_values(logs):
    results = analyze_logs([logs[0]], radii=RADII)
    (row,) = results["rows"]
    assert row["name"] == "sigma_0.25"
    assert row["certified_accuracy"] == pytest.approx(A_ACC)
    assert row["acr"] == pytest.approx(A_ACR)
    assert row["n_images"] == 5
    assert row["abstention_rate"] == pytest.approx(0.2)
    assert row["mean_samples"] is None
    assert row["mean_time_s"] == pytest.approx(7.5 / 5)
    assert results["radii"] == RADII
    assert results["envelope"] is None  # one log: nothing to take the best of
    json.dumps(results)  # JSON-ready


def test_extra_columns_samples_and_radius_boundary(logs):
    (row,) = analyze_logs([logs[1]], radii=RADII + [0.9, 0.91])["rows"]
    assert row["certified_accuracy"] == pytest.approx(B_ACC + [0.2, 0.0])  # radius >= r: 0.9 counts at r = 0.9
    assert row["acr"] == pytest.approx(B_ACR)
    assert row["mean_samples"] == pytest.approx((4 * 1100 + 100) / 5)


def test_columns_are_read_by_name(tmp_path):
    path = tmp_path / "reordered.tsv"
    path.write_text("time\tcorrect\tradius\tidx\tpredict\tlabel\textra\n"
                    "1.0\t1\t0.7\t0\t2\t2\tx\n1.0\t0\t0.0\t1\t-1\t2\ty\n")
    (row,) = analyze_logs([path], radii=[0.5, 0.75])["rows"]
    assert row["certified_accuracy"] == [0.5, 0.0]
    assert row["acr"] == pytest.approx(0.35)


@pytest.mark.parametrize("k,n", [(0, 5), (1, 5), (3, 5), (5, 5), (0, 1), (1, 1), (37, 100), (8123, 10000)])
def test_confidence_interval_is_scipy_exact(k, n):
    lo, hi = confidence_interval(k, n)
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-9)
    assert lo <= k / n <= hi


def test_row_intervals_contain_estimates(logs):
    for row in analyze_logs(logs, radii=RADII)["rows"]:
        for acc, (lo, hi) in zip(row["certified_accuracy"], row["confidence_intervals"], strict=True):
            assert 0.0 <= lo <= acc <= hi <= 1.0
        k = round(row["certified_accuracy"][0] * 5)
        ref = binomtest(k, 5).proportion_ci(confidence_level=0.95, method="exact")
        assert row["confidence_intervals"][0] == pytest.approx((ref.low, ref.high))


def test_envelope_is_best_log_per_radius(logs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same images: no warning
        results = analyze_logs(logs, radii=RADII, names=["s25", "s50"])
    assert [r["name"] for r in results["rows"]] == ["s25", "s50"]
    assert results["envelope"] == pytest.approx([max(a, b) for a, b in zip(A_ACC, B_ACC, strict=True)])
    assert results["envelope_source"] == ["s50", "s25", "s25", "s25", "s25"]  # ties go to the first log
    assert results["image_sets_match"] is True


def test_mismatched_image_sets_warn(logs, tmp_path):
    short = tmp_path / "short.tsv"
    short.write_text("\n".join(LOG_B.splitlines()[:3]) + "\n")
    with pytest.warns(ImageSetMismatchWarning, match="different images"):
        results = analyze_logs([logs[0], short], radii=RADII)
    assert results["image_sets_match"] is False
    assert results["rows"][1]["n_images"] == 2


def test_plot_is_a_png(logs, tmp_path):
    out = tmp_path / "curve.png"
    analyze_logs(logs, radii=RADII, plot=str(out))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_cli_prints_the_table(logs, tmp_path, capsys):
    out = tmp_path / "cli.png"
    assert main(["analyze", str(logs[0]), str(logs[1]), "--radii", "0", "0.25", "0.5", "0.75", "--names", "a", "b",
                 "--plot", str(out)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "| log | n | r = 0 | r = 0.25 | r = 0.5 | r = 0.75 | ACR |"
    assert lines[2].startswith("| a | 5 | 60.0 [14.7, 94.7] | 60.0 [") and lines[2].endswith("| 0.390 |")
    assert lines[3].startswith("| b | 5 | 80.0 [") and lines[3].endswith("| 0.320 |")
    assert lines[4] == "| best per radius | | 80.0 (b) | 60.0 (a) | 40.0 (a) | 20.0 (a) | |"
    assert "900 samples/image" in text
    assert out.stat().st_size > 0

    assert main(["analyze", str(logs[0]), "--no-ci", "--radii", "0.5"]) == 0
    assert "| sigma_0.25 | 5 | 40.0 | 0.390 |" in capsys.readouterr().out

    assert main(["analyze", str(logs[1]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["certified_accuracy"] == pytest.approx(B_ACC)


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "nope.tsv")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("content,message", [
    ("", "empty file"),
    ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n", "no rows"),
    ("idx\tlabel\tpredict\ttime\n0\t1\t1\t1.0\n", "missing column\\(s\\) radius, correct"),
    (LOG_A + "3\t0\t0\t0.25\t1\t0:00:01\n", "duplicate idx 3"),
    ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t2\t0.5\t1\n", "idx 0 has correct=1 but predict=2"),
    ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t-0.5\t1\n", "radius -0.5"),
    ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\tabc\t1\n", "line 2: bad radius"),
    ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\n", "line 2: 4 fields"),
])
def test_bad_logs_raise_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(LogFormatError, match=message):
        read_log(path)


def test_other_errors(logs, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        analyze_logs([tmp_path / "missing.tsv"])
    with pytest.raises(ValueError, match="names"):
        analyze_logs(logs, names=["only-one"])
    with pytest.raises(ValueError, match="distinct"):
        analyze_logs(logs, names=["x", "x"])
    with pytest.raises(ValueError, match="radii"):
        certified_accuracy([True], [0.5], radii=[-1.0])


def test_metric_loads_offline_and_agrees(logs, monkeypatch):
    import evaluate

    from dmae_hf.certification.metrics import CERTIFIED_ACCURACY_PATH

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = evaluate.load(CERTIFIED_ACCURACY_PATH)
    log = read_log(logs[1])
    result = metric.compute(predictions=log["predict"].tolist(), references=log["label"].tolist(),
                            certified_radii=log["radius"].tolist(), radii=RADII)
    (row,) = analyze_logs([logs[1]], radii=RADII)["rows"]
    assert result["certified_accuracy"] == pytest.approx(row["certified_accuracy"])
    assert result["acr"] == pytest.approx(row["acr"])
    flat = [bound for interval in result["confidence_intervals"] for bound in interval]  # approx takes flat lists
    assert flat == pytest.approx([bound for interval in row["confidence_intervals"] for bound in interval])
    assert result["abstention_rate"] == pytest.approx(row["abstention_rate"])
    # batches accumulate like any evaluate metric
    log_a = read_log(logs[0])
    for p, r, rad in zip(log_a["predict"].tolist(), log_a["label"].tolist(), log_a["radius"].tolist(), strict=True):
        metric.add(predictions=p, references=r, certified_radii=rad)
    result = metric.compute(radii=RADII)
    assert result["certified_accuracy"] == pytest.approx(A_ACC)
    assert result["acr"] == pytest.approx(A_ACR)


def test_reproduction_report_uses_this_api(logs, tmp_path, monkeypatch, capsys):
    """benchmarks/reproduction/reproduce.py's write_report reads rows, intervals and ACR, and writes the plot."""
    import sys
    import types

    from conftest import REPO_ROOT

    monkeypatch.syspath_prepend(str(REPO_ROOT / "benchmarks" / "reproduction"))
    monkeypatch.setattr(sys, "argv", ["reproduce.py"])
    import reproduce

    args = types.SimpleNamespace(pretrain_steps=1, finetune_steps=1, batch_size=2, sigma=0.25, images=5, n0=100,
                                 n=1000, alpha=0.001)
    report = tmp_path / "REPORT.md"
    reproduce.write_report(args, {"dmae": logs[0], "gaussian": logs[1]}, {"certify-dmae": 1.0}, report)
    text = report.read_text()
    assert "| dmae | 60.0 [14.7, 94.7] | 60.0 [14.7, 94.7] |" in text and "| 0.390 |" in text
    assert (tmp_path / "certified_accuracy.png").stat().st_size > 0


def test_metric_ships_in_the_built_package(tmp_path):
    """setup.py's build copies the metric module, and evaluate loads it from there offline."""
    import os
    import shutil
    import subprocess
    import sys

    from conftest import REPO_ROOT

    source, build = tmp_path / "src", tmp_path / "lib"  # build a copy: setuptools writes egg-info next to setup.py
    shutil.copytree(REPO_ROOT / "dmae_hf", source / "dmae_hf", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(build)], cwd=source,
                   check=True, capture_output=True)
    assert (build / "dmae_hf" / "certification" / "metrics" / "certified_accuracy" / "certified_accuracy.py").is_file()
    code = ("import evaluate, dmae_hf.certification.metrics as m; "
            f"assert m.CERTIFIED_ACCURACY_PATH.startswith({str(build)!r}); "
            "print(evaluate.load(m.CERTIFIED_ACCURACY_PATH).compute(predictions=[1, -1], references=[1, 0], "
            "certified_radii=[0.4, 0.0], radii=[0.25])['certified_accuracy'])")
    env = {**os.environ, "PYTHONPATH": str(build), "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("[0.5]")


def test_all_abstentions(tmp_path):
    path = tmp_path / "abstain.tsv"
    path.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t-1\t0.0\t0\t1.0\n1\t2\t-1\t0.0\t0\t1.0\n")
    (row,) = analyze_logs([path], radii=[0.0, 0.5], plot=str(tmp_path / "p.png"))["rows"]
    assert row["certified_accuracy"] == [0.0, 0.0] and row["acr"] == 0.0 and row["abstention_rate"] == 1.0
    assert row["confidence_intervals"][0] == pytest.approx((0.0, 1 - 0.025 ** 0.5))
    assert (tmp_path / "p.png").stat().st_size > 0


def test_certificates_count_like_a_log(logs):
    """`certificate_arrays` (demo, finetune, benchmarks) gives the log's numbers: abstentions (None) and wrong
    predictions never count, whatever their radius."""
    from dmae_hf.smoothing import Certificate

    log = read_log(logs[0])
    certificates = [Certificate(prediction=None if p == -1 else int(p), radius=float(r), pA_lower=0.9, counts=[],
                                n0=1, n=1, alpha=0.001, sigma=0.25, seed=0, elapsed=0.0)
                    for p, r in zip(log["predict"], log["radius"], strict=True)]
    correct, radius = certificate_arrays(certificates, log["label"])
    assert correct.tolist() == [True, False, False, True, True] and radius.tolist() == log["radius"].tolist()
    assert certified_accuracy(correct, radius, RADII)["certified_accuracy"] == pytest.approx(A_ACC)
    with pytest.raises(ValueError, match="5 certificates for 4 labels"):
        certificate_arrays(certificates, log["label"][:4])


def test_plot_curve_draws_the_definition_on_given_axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    correct, radius = [True, False, True, True], [0.5, 2.0, 0.0, 1.0]  # the wrong 2.0 must not count
    fig, ax = plt.subplots()
    values = plot_curve(ax, correct, radius, lw=2)
    (line,) = ax.get_lines()
    grid = line.get_xdata()
    brute = [sum(c and r >= t for c, r in zip(correct, radius, strict=True)) / 4 for t in grid]
    assert values.tolist() == brute == line.get_ydata().tolist() == curve(correct, radius, grid).tolist()
    assert grid[0] == 0 and grid[-1] == pytest.approx(2.1) and ax.get_ylim() == (0, 1)
    plt.close(fig)


# Rows of a `dmae certify --method adaptive --n 2000 --first-look 200` log written before the certification modules
# were split (the embedded model on CIFAR-10): an image may stop at an early look, so `samples` varies.
LOG_ADAPTIVE = """idx\tlabel\tpredict\tradius\tcorrect\ttime\tpA_lower\tsamples
0\t0\t8\t0.445681\t0\t7.757\t0.962684\t2100
1\t1\t1\t0.486454\t1\t7.595\t0.974161\t2100
2\t2\t2\t0.289359\t1\t6.860\t0.876452\t2100
3\t3\t3\t0.194409\t1\t8.090\t0.781609\t2100
25\t5\t-1\t0.000000\t0\t7.316\t0.402946\t1700
"""
# `dmae certify` on images without labels (a folder without class folders): label -1, never correct.
LOG_UNLABELLED = """idx\tlabel\tpredict\tradius\tcorrect\ttime\tpA_lower\tsamples
0\t-1\t3\t0.276000\t0\t1.000\t0.866000\t1100
1\t-1\t-1\t0.000000\t0\t1.000\t0.400000\t1100
"""


def test_adaptive_logs_and_unlabelled_images(tmp_path, capsys):
    adaptive, unlabelled, mixed = tmp_path / "adaptive.tsv", tmp_path / "unlabelled.tsv", tmp_path / "mixed.tsv"
    adaptive.write_text(LOG_ADAPTIVE)
    unlabelled.write_text(LOG_UNLABELLED)
    mixed.write_text(LOG_ADAPTIVE + LOG_UNLABELLED.split("\n", 1)[1].replace("0\t-1", "4\t-1").replace(
        "1\t-1\t-1", "5\t-1\t-1"))
    with pytest.warns(ImageSetMismatchWarning):
        results = analyze_logs([adaptive, unlabelled, mixed], radii=[0.0, 0.25])
    a, u, m = results["rows"]
    assert a["certified_accuracy"] == [0.6, 0.4] and a["acr"] == pytest.approx((0.486454 + 0.289359 + 0.194409) / 5)
    assert a["mean_samples"] == (4 * 2100 + 1700) / 5
    assert (u["n_images"], u["n_unlabelled"], u["certified_accuracy"], u["acr"]) == (0, 2, [None, None], None)
    assert u["abstention_rate"] == 0.5 and u["mean_samples"] == 1100
    assert (m["n_images"], m["n_unlabelled"], m["certified_accuracy"]) == (5, 2, a["certified_accuracy"])
    assert results["envelope_source"] == ["adaptive", "adaptive"]  # a log without labels is in no envelope
    assert main(["analyze", str(adaptive), str(unlabelled), "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "| adaptive | 5 | 60.0 [" in out and "| unlabelled | 0 | n/a | n/a | n/a | n/a | n/a | n/a |" in out
    assert "- unlabelled: abstained 50.0%, 2 unlabelled image(s), not in the accuracy" in out
