"""benchmarks/sequential/run.py: the report's simulation runs the library's own stopping rule on counts from a real
log, pairs the methods on one vote stream, and writes results.json in the issue's schema."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "sequential"))
import run  # noqa: E402


def cohen_row(idx, label, counts):
    return {"idx": idx, "label": label, "method": "cohen", "n": 10_000, "n0": 100, "alpha": 0.001, "sigma": 0.25,
            "seed": 0, "prediction": int(np.argmax(counts)), "radius": 0.5, "pA_lower": 0.97, "counts": counts,
            "num_samples": 10_100, "seconds": 1.0}


def test_the_report_writes_the_issue_schema(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    rows = [cohen_row(0, 3, [0, 0, 0, 10_000, 0, 0, 0, 0, 0, 0]),  # all votes: certifies r = 0.75 cheaply
            cohen_row(1, 1, [2_000, 8_000, 0, 0, 0, 0, 0, 0, 0, 0]),  # pA 0.8: r = 0 only
            cohen_row(2, 2, [0, 0, 5_050, 4_950, 0, 0, 0, 0, 0, 0])]  # a coin: abstains or r ~ 0
    (logs / "n10000-cohen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sequential" / "run.py"), "report", "--out",
                          str(tmp_path), "--images", "3", "--replicates", "3", "--no-plot"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    (entry,) = json.loads((tmp_path / "results.json").read_text())
    assert entry["simulated"] is True and entry["n"] == 100_000 and entry["images"] == 3 and entry["replicates"] == 3
    assert set(entry["mean_samples"]) == {"cohen", "sequential", "adaptive", "cohen at 40,000"}
    assert entry["mean_samples"]["cohen"] == 100_100
    assert 100 < entry["mean_samples"]["sequential"] < 40_100 * 1.05
    assert set(entry["certified_accuracy"]) == {"0", "0.25", "0.5", "0.75"}
    assert entry["certified_accuracy"]["0.75"]["cohen"] == entry["certified_accuracy"]["0.75"]["sequential"] == 1 / 3
    assert entry["certified_accuracy"]["0"]["cohen"] >= 2 / 3


def test_votes_on_the_shared_stream_are_consistent():
    """Any order of questions gets counts that a single Bernoulli stream could have produced."""
    rng = np.random.default_rng(0)
    votes = []
    for t in [100, 5_000, 300, 100_000, 40_000, 300, 2_500]:
        run._votes_at(t, votes, rng, 0.9)
    known = sorted(set(votes))
    assert [t for t, _ in known] == [100, 300, 2_500, 5_000, 40_000, 100_000]
    for (t0, s0), (t1, s1) in zip(known[:-1], known[1:], strict=True):
        assert 0 <= s1 - s0 <= t1 - t0
    assert abs(known[-1][1] / 100_000 - 0.9) < 0.01
