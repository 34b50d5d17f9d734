# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The page's computation as a plain function (no gradio): `certify_image` certifies one upload with the smoothed
classifier g of a model the server offers (optionally behind a DMAE denoiser), within the server's limits.

The certificate is Cohen et al.'s: with probability >= 1 - alpha over the sampling, g(x) = argmax_c P(f(x + eps) = c),
eps ~ N(0, sigma^2 I), predicts the returned class on the whole L2 ball of the returned radius around x, in [0, 1]
pixels at the model's input size. The upload goes through g's one image decoder and processor (`g.preprocess`); this
module only checks its size in bytes first.

A request is checked whole before any work (the choices against the server's lists, the numbers, n0 + n against the
sample limit, sigma by `defaults.check_sigma`). While it samples, a hook on g's forward pass, called after each noisy
batch, records the first noisy images, reports progress, and stops the work (`RequestStopped`) once the time limit
has passed or the visitor cancelled.
"""

import contextvars
import functools
import html
import math
import numbers
import os
import time
from dataclasses import dataclass, field

from .. import defaults
from .server import ServerSettings

# The sequential method (the page's default) stops as soon as the largest target radius is certified or the next one
# is out of reach, so the embedded model answers after a few hundred to a few thousand noisy samples (seconds on a
# CPU). n = DEMO_N caps the radius at about 2.4 sigma (0.6 at sigma = 0.25), above the largest target.
TARGET_RADII = (0.25, 0.5)
FIRST_LOOK = None  # each method's own first look (sequential 100, adaptive 1000)
NUM_NOISY = 6  # noisy images shown
# Pixels per forward batch: 250 samples at 32x32 (as fast as 1,000 on a CPU), 5 at 224x224, so that a stop or the
# time limit takes effect within a second or two. Certificates do not depend on the batch size.
BATCH_PIXELS = 250 * 32 * 32


class RequestStopped(ValueError):
    """A certification stopped before its end: past the server's time limit, or cancelled by the visitor."""


@functools.cache
def default_settings() -> ServerSettings:
    """The settings of a server started with no options (shipped and cached models, default limits)."""
    return ServerSettings.build(environ={})


# ------------------------------------------------------------------------------------------------------- the model
@functools.lru_cache(maxsize=4)
def load_smoothed(model: str, denoiser: str | None, sigma: float | None, override_sigma: bool):
    """g for an offered model (and denoiser) at sigma, cached: the last four stay loaded."""
    from ..smoothed_classifier import SmoothedClassifier

    g = SmoothedClassifier.from_pretrained(model, sigma=sigma, denoiser=denoiser, override_sigma=override_sigma)
    g.register_forward_hook(_watch_hook)
    return g.eval()


@functools.lru_cache(maxsize=32)
def trained_sigma(model: str, denoiser: str | None) -> float | None:
    """The sigma g is trained for: the classifier's `smoothing_sigma`, else the denoiser's `noise_sigma`, else None
    (read from the configs, without loading weights)."""
    from transformers import AutoConfig

    from .. import register

    register()
    sigma = getattr(AutoConfig.from_pretrained(model), "smoothing_sigma", None)
    if sigma is None and denoiser is not None:
        sigma = getattr(AutoConfig.from_pretrained(denoiser), "noise_sigma", None)
    return None if sigma is None else float(sigma)


# --------------------------------------------------------------------------------------------------- the watch hook
_WATCH = contextvars.ContextVar("dmae_web_watch", default=None)


class _Watch:
    """One request's watch: its forward hook keeps the first noisy images with f's votes; `update`, certify's
    progress callback (after every forward batch), reports progress and raises `RequestStopped` past `deadline`
    (`time.monotonic()`) or once `stop` (a `threading.Event`) is set, which aborts `certify` at once."""

    def __init__(self, max_seconds, total, stop=None, progress=None, num_noisy=NUM_NOISY):
        self.max_seconds, self.total, self.stop, self.progress = max_seconds, total, stop, progress
        self.num_noisy, self.noisy, self.drawn, self.deadline = num_noisy, [], 0, None

    def start(self):
        self.deadline = time.monotonic() + self.max_seconds

    def __call__(self, batch, logits):
        if len(self.noisy) < self.num_noisy:
            k = self.num_noisy - len(self.noisy)
            self.noisy.extend(zip(batch[:k].detach().cpu(), logits[:k].argmax(dim=1).tolist(), strict=True))

    def update(self, done, total):
        self.drawn = done
        if self.stop is not None and self.stop.is_set():
            raise RequestStopped("Cancelled: the certification was stopped.")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise RequestStopped(f"Stopped after {self.max_seconds:g} s, this server's time limit per request, with "
                                 f"{self.drawn:,} of up to {self.total:,} noisy samples drawn: lower n, or use the "
                                 "sequential method, which stops once the target radii are settled.")
        if self.progress is not None:
            self.progress(min(1.0, done / total), desc="noisy samples")


def _watch_hook(module, inputs, output):
    watch = _WATCH.get()
    if watch is not None:
        watch(inputs[0], output)


# ------------------------------------------------------------------------------------------------------- the checks
def check_number(name, value, integer=False, low=None, high=None, closed=False):
    """`value` as an int (integer) or float within the bounds, or a `ValueError` saying what is expected. Huge ints,
    NaN, infinities, bools and strings are refused without converting them first."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and isinstance(value, numbers.Integral):
        value = int(value)
    elif ok:
        ok = math.isfinite(value) and (not integer or float(value).is_integer())
        value = int(value) if ok and integer else value
    if ok and low is not None:
        ok = value >= low if closed or high is None else value > low
    if ok and high is not None:
        ok = value <= high if closed else value < high
    if not ok:
        kind = "a whole number" if integer else "a number"
        bounds = ((f" in [{low}, {high}]" if closed else f" in ({low}, {high})") if high is not None
                  else f" >= {low}" if low is not None else "")
        raise ValueError(f"{name} must be {kind}{bounds}, got {_short(value)}.")
    return value


def _short(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**12:
        return f"about {'-' if value < 0 else ''}1e{len(str(abs(value))) - 1}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_upload(image, max_bytes: int):
    """An upload (a path in gradio's upload folder, or an image object), after the byte limit."""
    if image is None or (isinstance(image, str) and not image.strip()):
        raise ValueError("No image: upload an image file (PNG, JPEG, ...) or pick one of the examples.")
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if os.path.isfile(path) and os.path.getsize(path) > max_bytes:
            raise ValueError(f"The file {os.path.basename(path)!r} is too large ({os.path.getsize(path) / 1e6:.3g} "
                             f"MB, the limit is {max_bytes / 1e6:.3g} MB): upload a smaller image.")
    return image


def preprocess_upload(g, image, max_bytes: int, max_pixels: int):
    """The upload as g's (3, H, W) input in [0, 1] (`g.preprocess`: the one decoder and the model's processor);
    errors name the file by its base name, never by its place on the server."""
    image = check_upload(image, max_bytes)
    try:
        return g.preprocess(image, max_pixels=max_pixels)
    except (ValueError, OSError) as error:
        message = " ".join(str(error).split())
        if isinstance(image, (str, os.PathLike)):
            path = os.fspath(image)
            message = message.replace(path, os.path.basename(path))
        raise ValueError(message) from error


# ------------------------------------------------------------------------------------------------------ computation
@dataclass
class DemoResult:
    """A certificate with what the page shows. Images are (H, W, 3) uint8 arrays at the model's input size."""

    label: str | None  # None: abstained
    class_id: int | None
    radius: float
    pA_lower: float
    counts: dict[str, int]  # votes of the estimation samples per class name
    num_samples: int  # noisy samples drawn (selection + estimation)
    sigma: float
    model_sigma: float | None  # the sigma g is trained for
    sigma_override: bool
    model: str
    denoiser: str | None
    n0: int
    n: int
    alpha: float
    method: str
    target_radius: tuple[float, ...] | None
    resolution: tuple[int, int]
    seconds: float
    shrink_note: str | None = None
    clean: object = field(default=None, repr=False)
    noisy: list = field(default_factory=list, repr=False)  # (image, the class f gave it)
    perturbed: object = field(default=None, repr=False)  # clean + radius * a random unit direction, clipped
    perturbation_norm: float = 0.0  # the L2 norm of perturbed - clean (below the radius where clipping bit)

    @property
    def abstained(self) -> bool:
        return self.label is None

    def summary(self) -> str:
        """The answer in plain words (Markdown)."""
        h, w = self.resolution
        behind = f" behind the denoiser {self.denoiser}" if self.denoiser else ""
        if self.abstained:
            lines = ["### Abstain",
                     f"The vote was not clear enough: the lower bound on pA, the probability that the model gives its "
                     f"most frequent class under noise, is {self.pA_lower:.4f} < 1/2, so no class and no radius are "
                     f"certified (sigma = {self.sigma:g}, {self.model}{behind})."]
        else:
            lines = [f"### Prediction: {self.label}",
                     f"**Certified L2 radius: {self.radius:.3f}** (pA >= {self.pA_lower:.4f}, sigma = "
                     f"{self.sigma:g}, {self.model}{behind})",
                     f"No perturbation of L2 norm below r = {self.radius:.3f} in [0, 1] pixels (over all {h}x{w}x3 "
                     f"values the model sees) can change this prediction, with probability 1 - alpha = "
                     f"{(1 - self.alpha) * 100:.4g}% over the sampling.",
                     f"At least {self.pA_lower:.1%} of noisy copies of the image (Gaussian noise of standard "
                     f"deviation sigma = {self.sigma:g} on every pixel) are classified as {self.label}; "
                     f"r = sigma * PhiInv(pA's lower bound) (Cohen et al., 2019).",
                     f"On the right: the clean image, and beside it the image plus a perturbation of L2 norm "
                     f"{self.perturbation_norm:.3f} (r in a random direction, clipped to [0, 1]), too small to change "
                     "the prediction."]
        stopped = ""
        if self.method != "cohen":
            targets = ", ".join(f"{t:g}" for t in self.target_radius or ())
            targets = f", target radii {targets}" if targets else ""
            stopped = f"{targets}: stopped after {self.num_samples - self.n0:,} of n = {self.n:,}"
        lines.append(f"{self.num_samples:,} noisy samples (n0 = {self.n0}, n = {self.n:,}, alpha = {self.alpha:g}, "
                     f"method {self.method}{stopped}) in {self.seconds:.1f} s.")
        if self.sigma_override:
            lines.append(f"Note: certified at sigma = {self.sigma:g}, not at the trained sigma = "
                         f"{self.model_sigma:g} (override_sigma): valid, but the model usually votes less clearly.")
        if self.shrink_note:
            lines.append(f"Note: {self.shrink_note}")
        lines.append(f"*{defaults.CERTIFICATE_CAVEAT}*")
        return "\n\n".join(lines)

    def histogram_html(self) -> str:
        """The votes per class as HTML bars (one row per class, most votes first)."""
        total = max(1, sum(self.counts.values()))
        rows = []
        for name, count in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            color = "#2e7d32" if name == self.label else "#9e9e9e"
            rows.append(
                '<div class="vote" style="display:flex;align-items:center;gap:8px;margin:2px 0">'
                f'<span class="class-name" style="width:110px">{html.escape(name)}</span>'
                f'<span style="flex:1"><span style="display:block;background:{color};height:12px;'
                f'width:{100 * count / total:.1f}%"></span></span>'
                f'<span class="count" style="width:50px;text-align:right">{count}</span></div>')
        return (f'<div style="font-size:13px"><b>Votes of the {total:,} estimation samples</b>' + "".join(rows)
                + "</div>")


def to_uint8(pixel_values):
    """A (3, H, W) [0, 1] tensor (clipped) -> an (H, W, 3) uint8 array."""
    import numpy as np
    import torch

    return np.ascontiguousarray(pixel_values.clamp(0, 1).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy())


def certify_image(image, model: str = defaults.EMBEDDED_MODEL, denoiser: str | None = None, sigma=None,
                  override_sigma: bool = False, n0: int = defaults.N0, n: int = defaults.DEMO_N,
                  alpha: float = defaults.ALPHA, method: str = "sequential", target_radius=TARGET_RADII,
                  first_look: int | None = FIRST_LOOK, radius_tolerance: float | None = None,
                  seed: int = defaults.SEED, num_noisy: int = NUM_NOISY,
                  settings: ServerSettings | None = None, stop=None, progress=None) -> DemoResult:
    """Certify one image (an upload's path, or a PIL image / array) with the offered `model` behind the offered
    `denoiser` (None: none); see the module doc.

    sigma: None = the sigma g is trained for (required when there is none); another one needs `override_sigma`
    (`defaults.check_sigma`). The method's options (`defaults.METHODS`: `first_look`, `target_radius`,
    `radius_tolerance` for "adaptive" and "sequential") go to g; None leaves the method's own default; "cohen" takes
    none.
    settings: the server's lists and limits (default: `default_settings()`). stop: a `threading.Event` that cancels
    the work; progress: called as progress(fraction, desc=...) after each noisy batch. Raises `ValueError` for
    anything that cannot be certified (`RequestStopped` when the work was stopped), with a one-sentence message.
    """
    settings = settings or default_settings()
    limits = settings.limits
    model_source = settings.source(model, "classifier")
    denoiser_source = settings.source(denoiser, "denoiser")
    if method not in defaults.METHODS:
        raise ValueError(f"method must be one of {', '.join(defaults.METHODS)}, got {_short(method)}.")
    n0 = check_number("n0", n0, integer=True, low=1)
    n = check_number("n", n, integer=True, low=1)
    if n0 + n > limits.max_samples:
        raise ValueError(f"n is over this server's limit ({_short(n)}): n0 + n must be at most "
                         f"{limits.max_samples:,} noisy samples per request (n0 = {n0:,}); lower n.")
    alpha = check_number("alpha", alpha, low=0, high=1)
    if not isinstance(override_sigma, bool):
        raise ValueError(f"override_sigma must be true or false, got {_short(override_sigma)}.")
    trained = trained_sigma(model_source, denoiser_source)
    if sigma is None and trained is None:
        raise ValueError("sigma is required: this model was not trained for a noise level (it is not a DMAE "
                         "classifier and has no denoiser), so enter the sigma to certify at, in [0, 1] pixel units, "
                         "e.g. 0.25.")
    sigma = defaults.check_sigma(trained if sigma is None else sigma, trained, override_sigma)
    start = time.perf_counter()
    g = load_smoothed(model_source, denoiser_source, sigma, override_sigma)
    prepared = preprocess_upload(g, image, limits.max_bytes, limits.max_pixels)
    x = prepared.pixel_values
    h, w = x.shape[-2:]
    watch = _Watch(limits.max_seconds, n0 + n, stop, progress, num_noisy)
    given = {"first_look": first_look, "target_radius": target_radius, "radius_tolerance": radius_tolerance}
    options = {name: given[name] for name in defaults.METHODS[method] if given.get(name) is not None}
    token = _WATCH.set(watch)
    try:
        watch.start()
        cert = g.certify(x, n0=n0, n=n, alpha=alpha, seed=seed, method=method, progress=watch.update,
                         batch_size=max(1, min(defaults.NOISE_BATCH, BATCH_PIXELS // (h * w))), **options)
    finally:
        _WATCH.reset(token)
    return _result(g, cert, x, watch, prepared, model, denoiser, n0, n, alpha, method, options.get("target_radius"),
                   seed, time.perf_counter() - start)


def _result(g, cert, x, watch, prepared, model, denoiser, n0, n, alpha, method, target_radius, seed, seconds):
    import numpy as np
    import torch

    names = [g.id2label.get(i, str(i)) for i in range(len(cert.counts))]
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    perturbed = (x + cert.radius * direction / direction.norm()).clamp(0, 1)
    return DemoResult(
        label=None if cert.abstained else names[cert.prediction], class_id=cert.prediction, radius=cert.radius,
        pA_lower=cert.pA_lower, counts=dict(zip(names, cert.counts, strict=True)), num_samples=cert.num_samples,
        sigma=g.sigma, model_sigma=g.trained_sigma, sigma_override=bool(getattr(cert, "sigma_override", False)),
        model=model, denoiser=None if denoiser in (None, "none") else denoiser, n0=n0, n=n, alpha=alpha,
        method=method, target_radius=None if target_radius is None else tuple(np.atleast_1d(target_radius).tolist()),
        resolution=tuple(x.shape[-2:]), seconds=seconds, shrink_note=g.shrink_note(prepared.shrink),
        clean=to_uint8(x), noisy=[(to_uint8(image), names[vote]) for image, vote in watch.noisy],
        perturbed=to_uint8(perturbed), perturbation_norm=float((perturbed - x).norm()))


__all__ = ["DemoResult", "RequestStopped", "certify_image", "check_number", "default_settings", "load_smoothed",
           "preprocess_upload", "check_upload", "trained_sigma", "TARGET_RADII", "FIRST_LOOK", "NUM_NOISY"]
