# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""Certified accuracy from certification logs (Cohen et al. 2019's TSV format), as the DMAE paper reports it.

A log is a tab-separated file whose header names its columns. The columns read (by name, in any order) are
`idx label predict radius correct`; `time` (float seconds or Cohen's `H:MM:SS.ffffff`) and `samples` (forward
samples drawn per image) are used when present, and any other column (`pA_lower`, ...) is ignored. So both the logs
of `dmae certify` (any `--method`) and Cohen's original six-column logs are read. `predict = -1` is an abstention;
`label = -1` an unlabelled image (`dmae certify` on images without class folders), which counts in the abstention
rate, samples and time but not in the accuracy: it has no truth to be right about.

- certified accuracy at r: fraction of images with `correct == 1` and `radius >= r` (Cohen's `analyze.py`, DMAE's
  `engine_finetune.py`), where correct means `predict == label` and an abstention (`predict = -1`) never counts,
  with a two-sided 95% Clopper-Pearson interval (`dmae_hf.smoothing`'s bounds at 0.025 each);
- ACR (average certified radius): mean over images of `radius * correct`;
- envelope: for each radius the best certified accuracy over the logs, as the paper's tables take the best over
  sigma. It is meaningful only when the logs certify the same images: if their `idx` sets differ, `analyze_logs`
  warns (`ImageSetMismatchWarning`) and sets `results["image_sets_match"] = False`, and the envelope still takes the
  maximum of the per-log numbers.

    from dmae_hf.certification.analysis import analyze_logs
    results = analyze_logs(["sigma0.25.tsv", "sigma0.5.tsv"], radii=[0, 0.25, 0.5, 0.75], plot="curve.png")
    results["rows"][0]["certified_accuracy"], results["rows"][0]["confidence_intervals"], results["envelope"]

This module is the one definition of those numbers and of their plot: `dmae analyze`, `dmae demo`, the
`certified_accuracy` evaluate metric, `examples/finetune.py` and the benchmarks call `certificate_arrays` /
`certified_accuracy` / `curve` / `plot_curve` rather than counting themselves.

The returned dict is JSON-ready: `{"radii", "rows": [row, ...], "envelope": [...] or None (one log),
"envelope_source": [name per radius] or None, "image_sets_match": bool}`, each row `{"name", "path", "n_images",
"n_unlabelled", "certified_accuracy", "confidence_intervals", "acr", "abstention_rate", "mean_samples",
"mean_time_s"}` (fractions in [0, 1]; `n_images` counts the labelled images, the accuracy's denominator; accuracy,
intervals and ACR are None for a log without labelled images; `mean_samples` / `mean_time_s` None when the column is
absent).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
REQUIRED_COLUMNS = ("idx", "label", "predict", "radius", "correct")
ABSTAIN = -1  # the `predict` of an abstention
UNLABELLED = -1  # the `label` of an image without a label
CONFIDENCE = 0.95


class LogFormatError(ValueError):
    """A certification log that cannot be analysed (missing columns, empty, duplicate idx, bad values)."""


class ImageSetMismatchWarning(UserWarning):
    """The logs of one analysis certify different images, so their envelope mixes test sets."""


# --------------------------------------------------------------------------------------------------------- reading
def _parse_time(text: str) -> float:
    """Seconds from `12.5` or from Cohen's `str(datetime.timedelta)` (`0:00:02.345678`, `1 day, 2:03:04`)."""
    text = text.strip()
    if ":" not in text:
        return float(text)
    days = 0.0
    if "day" in text:
        head, text = text.split(",", 1)
        days = float(head.split()[0])
    hours, minutes, seconds = text.strip().split(":")
    return days * 86400 + float(hours) * 3600 + float(minutes) * 60 + float(seconds)


def _parse_correct(text: str) -> int:
    value = {"true": 1, "false": 0}.get(text.strip().lower())
    return int(float(text)) if value is None else value


def read_log(path) -> dict:
    """Read one log into numpy arrays `idx label predict radius correct` (+ `time`, `samples` if present).

    Raises FileNotFoundError for a missing file and LogFormatError (naming the file, and the line or idx) for missing
    columns, a log without rows, malformed values, duplicate `idx` (a merged or resumed log must hold each image
    once), negative or non-finite radii, and `correct` that disagrees with `predict == label`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"certification log not found: {path}")
    lines = path.read_text().splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise LogFormatError(f"{path}: empty file (expected a tab-separated header "
                             f"`idx label predict radius correct [time ...]`)")
    header = [name.strip() for name in lines[0].split("\t")]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise LogFormatError(f"{path}: missing column(s) {', '.join(missing)} (header: {' '.join(header)}); "
                             f"expected a tab-separated header with {', '.join(REQUIRED_COLUMNS)}")
    position = {name: i for i, name in enumerate(header)}
    optional = [name for name in ("time", "samples") if name in position]
    parsers = {"idx": int, "label": int, "predict": int, "radius": float, "correct": _parse_correct,
               "time": _parse_time, "samples": lambda s: int(float(s))}
    columns = {name: [] for name in (*REQUIRED_COLUMNS, *optional)}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise LogFormatError(f"{path}, line {number}: {len(fields)} fields, the header has {len(header)}")
        for name, values in columns.items():
            try:
                values.append(parsers[name](fields[position[name]]))
            except ValueError:
                raise LogFormatError(f"{path}, line {number}: bad {name} value {fields[position[name]]!r}") from None
    if not columns["idx"]:
        raise LogFormatError(f"{path}: the log has a header but no rows")
    log = {name: np.asarray(values) for name, values in columns.items()}
    unique, counts = np.unique(log["idx"], return_counts=True)
    if (counts > 1).any():
        dup = unique[counts > 1]
        raise LogFormatError(f"{path}: duplicate idx {', '.join(map(str, dup[:10]))}"
                             f"{' ...' if len(dup) > 10 else ''} (each image must appear once; was the log "
                             f"merged or resumed twice?)")
    bad = ~np.isfinite(log["radius"]) | (log["radius"] < 0)
    if bad.any():
        raise LogFormatError(f"{path}: idx {log['idx'][bad][0]} has radius {log['radius'][bad][0]} "
                             f"(must be finite and >= 0)")
    if not np.isin(log["correct"], (0, 1)).all():
        raise LogFormatError(f"{path}: `correct` must be 0 or 1")
    inconsistent = log["correct"] != is_correct(log["predict"], log["label"])
    if inconsistent.any():
        raise LogFormatError(f"{path}: idx {log['idx'][inconsistent][0]} has "
                             f"correct={log['correct'][inconsistent][0]} "
                             f"but predict={log['predict'][inconsistent][0]}, label={log['label'][inconsistent][0]}")
    return log


# ------------------------------------------------------------------------------------------------------- statistics
def is_correct(predict, label) -> np.ndarray:
    """Per image: the smoothed prediction is the true label; an abstention (`predict = -1`) is never correct."""
    predict, label = np.asarray(predict), np.asarray(label)
    return (predict == label) & (predict != ABSTAIN)


def certificate_arrays(certificates, labels) -> tuple[np.ndarray, np.ndarray]:
    """Per-image `(correct, radius)` arrays for `certified_accuracy` / `curve` from certificates (anything with
    `.prediction`, None or -1 for an abstention, and `.radius`, as `dmae_hf.smoothing.Certificate`) and the true
    labels."""
    certificates = list(certificates)
    labels = [int(y) for y in labels]
    if len(certificates) != len(labels):
        raise ValueError(f"{len(certificates)} certificates for {len(labels)} labels: pass one label per image")
    predict = np.array([ABSTAIN if c.prediction is None else int(c.prediction) for c in certificates], dtype=np.int64)
    radius = np.array([float(c.radius) for c in certificates], dtype=float)
    return is_correct(predict, np.array(labels, dtype=np.int64)), radius


def confidence_interval(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided exact (Clopper-Pearson) interval for k successes in n trials: the one-sided bounds of
    `dmae_hf.smoothing` at (1 - confidence) / 2 each, so the certifier and the analysis share one Clopper-Pearson
    bound (the closed-form Beta quantile). scipy's `binomtest(k, n).proportion_ci(method="exact")` gives the same
    interval found by root-finding (brentq, xtol 2e-12): equal to 1e-12 (tests/test_kept_libraries.py), not bitwise,
    so it is not used."""
    from ..smoothing import clopper_pearson_lower, clopper_pearson_upper

    tail = (1.0 - confidence) / 2
    return clopper_pearson_lower(k, n, tail), clopper_pearson_upper(k, n, tail)


def certified_accuracy(correct, radius, radii=DEFAULT_RADII, confidence: float = CONFIDENCE) -> dict:
    """Certified accuracy at each of `radii` (fraction of images with correct and radius >= r), its two-sided
    Clopper-Pearson intervals, and the ACR (mean of radius * correct), from per-image arrays. Shared by
    `analyze_logs` and the `certified_accuracy` evaluate metric."""
    correct = np.asarray(correct, dtype=bool)
    radius = np.asarray(radius, dtype=float)
    if correct.shape != radius.shape or correct.ndim != 1:
        raise ValueError(f"correct and radius must be 1-D and of equal length, got {correct.shape}, {radius.shape}")
    n = len(correct)
    if n == 0:
        raise ValueError("no images to analyse")
    if not np.isfinite(radius).all() or (radius < 0).any():
        raise ValueError("certified radii must be finite and >= 0 (0 for abstentions)")
    radii = [float(r) for r in radii]
    if any(not math.isfinite(r) or r < 0 for r in radii):
        raise ValueError(f"radii must be finite and >= 0, got {radii}")
    counts = [int((correct & (radius >= r)).sum()) for r in radii]
    return {
        "radii": radii,
        "certified_accuracy": [k / n for k in counts],
        "confidence_intervals": [confidence_interval(k, n, confidence) for k in counts],
        "acr": float((radius * correct).sum() / n),
        "n_images": n,
    }


def curve(correct, radius, grid) -> np.ndarray:
    """Certified accuracy at every radius of `grid` (vectorised; a non-increasing step function of r)."""
    certified = np.sort(np.asarray(radius, dtype=float)[np.asarray(correct, dtype=bool)])
    return (len(certified) - np.searchsorted(certified, np.asarray(grid, dtype=float), side="left")) / len(correct)


def radius_grid(radii_arrays, marks=(), points: int = 2000) -> np.ndarray:
    """Radii from 0 to 5% past the largest certified radius (or mark, or 0.1) at which to draw curves."""
    top = max([float(np.max(r)) for r in radii_arrays if len(r)] + [float(m) for m in marks] + [0.1])
    return np.linspace(0.0, top * 1.05, points)


def plot_curve(ax, correct, radius, grid=None, **style) -> np.ndarray:
    """Draw certified accuracy vs L2 radius (`curve` on `grid`, default `radius_grid([radius])`) onto the
    matplotlib Axes `ax`, with the axis labels and limits of every plot of the package; `style` goes to `ax.plot`.
    Returns the curve's values."""
    grid = radius_grid([np.asarray(radius)]) if grid is None else np.asarray(grid, dtype=float)
    values = curve(correct, radius, grid)
    ax.plot(grid, values, **style)
    ax.set_xlabel("L2 radius r (in [0, 1] pixel units)")
    ax.set_ylabel("certified accuracy (correct and radius >= r)")
    ax.set_xlim(0, grid[-1])
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    return values


# --------------------------------------------------------------------------------------------------------- analysis
def analyze_logs(logs, radii=DEFAULT_RADII, names=None, plot=None, confidence: float = CONFIDENCE) -> dict:
    """Analyse certification logs (paths); see the module docstring for the returned dict. `names` default to the
    file stems; `plot` is a PNG path for the certified-accuracy-vs-radius curves (None: no plot)."""
    if isinstance(logs, (str, Path)):
        logs = [logs]
    logs = [Path(p) for p in logs]
    if not logs:
        raise ValueError("no logs given")
    names = [p.stem for p in logs] if names is None else [str(n) for n in names]
    if len(names) != len(logs):
        raise ValueError(f"{len(names)} names for {len(logs)} logs")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be distinct, got {names} (pass names=[...])")
    radii = [float(r) for r in radii]
    if not radii:
        raise ValueError("no radii given")
    data = [read_log(p) for p in logs]
    rows = []
    for name, path, log in zip(names, logs, data, strict=True):
        labelled = log["label"] != UNLABELLED
        if labelled.any():
            stats = certified_accuracy(log["correct"][labelled], log["radius"][labelled], radii, confidence)
        else:
            stats = {"n_images": 0, "certified_accuracy": [None] * len(radii),
                     "confidence_intervals": [None] * len(radii), "acr": None}
        rows.append({
            "name": name,
            "path": str(path),
            "n_images": stats["n_images"],
            "n_unlabelled": int((~labelled).sum()),
            "certified_accuracy": stats["certified_accuracy"],
            "confidence_intervals": stats["confidence_intervals"],
            "acr": stats["acr"],
            "abstention_rate": float((log["predict"] == -1).mean()),
            "mean_samples": float(log["samples"].mean()) if "samples" in log else None,
            "mean_time_s": float(log["time"].mean()) if "time" in log else None,
        })
    image_sets = [set(log["idx"].tolist()) for log in data]
    image_sets_match = all(s == image_sets[0] for s in image_sets)
    if not image_sets_match:
        common = set.intersection(*image_sets)
        sizes = ", ".join(f"{n}: {len(s)}" for n, s in zip(names, image_sets, strict=True))
        warnings.warn(f"the logs certify different images ({sizes} images, {len(common)} in common): the envelope "
                      f"compares accuracies on different test sets",
                      ImageSetMismatchWarning, stacklevel=2)
    envelope = envelope_source = None
    scored = [i for i, row in enumerate(rows) if row["n_images"]]
    if len(scored) > 1:
        best = [max(scored, key=lambda i: rows[i]["certified_accuracy"][j]) for j in range(len(radii))]
        envelope = [rows[i]["certified_accuracy"][j] for j, i in enumerate(best)]
        envelope_source = [rows[i]["name"] for i in best]
    results = {"radii": radii, "rows": rows, "envelope": envelope, "envelope_source": envelope_source,
               "image_sets_match": image_sets_match, "confidence": confidence}
    if plot is not None:
        plot_curves(data, names, plot, radii=radii)
    return results


def plot_curves(data, names, path, radii=()):
    """Certified accuracy vs L2 radius, one step curve per log (plus the envelope when several), PNG via Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = radius_grid([log["radius"] for log in data], marks=radii)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    labelled = [(name, log, log["label"] != UNLABELLED) for name, log in zip(names, data, strict=True)]
    curves = [plot_curve(ax, log["correct"][keep], log["radius"][keep], grid, lw=1.8,
                         label=f"{name} (n={int(keep.sum())})") for name, log, keep in labelled if keep.any()]
    if len(curves) > 1:
        ax.plot(grid, np.max(curves, axis=0), "k--", lw=1, label="best per radius")
    for r in radii:
        ax.axvline(r, color="0.85", lw=0.8, zorder=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------- output
def format_table(results, ci: bool = True) -> str:
    """A markdown table like the paper's: one row per log (certified accuracy in % at each radius, with the 95%
    interval when `ci`), the ACR, and the envelope row when there are several logs."""
    radii = results["radii"]
    lines = ["| log | n | " + " | ".join(f"r = {r:g}" for r in radii) + " | ACR |",
             "| --- | ---: | " + " | ".join("---:" for _ in radii) + " | ---: |"]
    for row in results["rows"]:
        if not row["n_images"]:  # unlabelled images only: no accuracy
            lines.append(f"| {row['name']} | 0 | " + " | ".join("n/a" for _ in radii) + " | n/a |")
            continue
        if ci:
            cells = [f"{100 * a:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
                     for a, (lo, hi) in zip(row["certified_accuracy"], row["confidence_intervals"], strict=True)]
        else:
            cells = [f"{100 * a:.1f}" for a in row["certified_accuracy"]]
        lines.append(f"| {row['name']} | {row['n_images']} | " + " | ".join(cells) + f" | {row['acr']:.3f} |")
    if results.get("envelope"):
        cells = [f"{100 * a:.1f} ({src})"
                 for a, src in zip(results["envelope"], results["envelope_source"], strict=True)]
        lines.append("| best per radius | | " + " | ".join(cells) + " | |")
    return "\n".join(lines)
