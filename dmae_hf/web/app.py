# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The Gradio app of `dmae serve` and of the `dmae-certify` Space: upload an image, get its certificate.

`certify_image` is the whole computation as a plain function (no gradio): it loads the model through the
`certified-image-classification` pipeline (short name, Hub id or path), brings the image to the model's input with
the pipeline's preprocessing, and runs `dmae_hf.smoothing.certify` on the model's base classifier f, recording the
first noisy images f saw. The certificate is Cohen et al.'s: with probability >= 1 - alpha over the sampling, the
smoothed classifier g(x) = argmax_c P(f(x + eps) = c), eps ~ N(0, sigma^2 I), predicts the returned class on the
whole L2 ball of the returned radius around x, in [0, 1] pixels at the model's input size.

`build_app` lays that out as a page; errors (a file that is not an image, too large, unreadable, a model that cannot
be loaded, bad settings) are shown as one sentence on the page, never a traceback.
"""

import functools
import html
import json
import logging
import math
import numbers
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .. import defaults
from ..commands import EMBEDDED_MODEL

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# The adaptive method stops as soon as the largest target radius is certified or the next one is out of reach, so
# the embedded model answers after 600-1,100 noisy samples (seconds on a CPU). n = DEMO_N caps the radius at about
# 2.4 sigma (0.6 at sigma = 0.25), above the largest target.
TARGET_RADII = (0.25, 0.5)
FIRST_LOOK = 250
MAX_UPLOAD_BYTES = 20_000_000
MAX_UPLOAD_PIXELS = 50_000_000
NUM_NOISY = 6  # noisy images shown
DISPLAY_SIZE = 192  # small images are shown enlarged (nearest neighbour) to this size


class UploadError(ValueError):
    """An upload that cannot be certified (not an image, too large, unreadable); the message says what to do."""


# ------------------------------------------------------------------------------------------------------------ inputs
def model_choices() -> list[str]:
    """The models offered in the page: the embedded one, then the released smoothed classifiers (short names)."""
    from ..hub.names import SHORT_NAMES

    return [EMBEDDED_MODEL] + [m.name for m in SHORT_NAMES.values()
                               if m.kind == "classifier" and m.name != EMBEDDED_MODEL]


def example_images() -> list[tuple[str, str]]:
    """(path, caption) of the bundled examples: a few CIFAR-10 test images, then the ImageNet photos."""
    examples = []
    for folder, dataset, count in (("cifar10", "CIFAR-10", 6), ("imagenet", "ImageNet", None)):
        index_file = ASSETS / folder / "index.json"
        if index_file.is_file():
            items = json.loads(index_file.read_text())["images"][:count]
            examples += [(str(ASSETS / folder / item["file"]), f"{dataset}: {item['label_name']}") for item in items]
    return examples


def read_image(path, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_UPLOAD_PIXELS):
    """Open and decode an uploaded file as an RGB PIL image, or raise an `UploadError` saying why it cannot be used:
    too many bytes (checked first), not an image, too many pixels (from the header, before decoding), unreadable."""
    from PIL import Image, UnidentifiedImageError

    if path is None or (isinstance(path, str) and not path.strip()):
        raise UploadError("No image: upload an image file (PNG, JPEG, ...) or pick one of the examples.")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UploadError(f"The upload {os.path.basename(path)!r} is not a file: upload an image file.")
    name = os.path.basename(path)
    size = os.path.getsize(path)
    if size > max_bytes:
        raise UploadError(f"The file {name!r} is too large ({size / 1e6:.3g} MB, the limit is {max_bytes / 1e6:.3g} "
                          "MB): upload a smaller image.")
    try:
        with warnings.catch_warnings():  # the pixel limit below is ours
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise UploadError(f"The image {name!r} is too large to decode ({error}): upload a smaller image.") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UploadError(f"The file {name!r} is not an image that can be read (PNG, JPEG, WebP, BMP, GIF, TIFF): "
                          "upload an image file.") from error
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise UploadError(f"The image {name!r} is too large ({width}x{height} = {width * height / 1e6:.1f} "
                          f"megapixels, the limit is {max_pixels / 1e6:g}): downscale it first.")
    if width == 0 or height == 0:
        raise UploadError(f"The image {name!r} is empty ({width}x{height} pixels): upload another image.")
    try:
        image.load()
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as error:
        raise UploadError(f"The image {name!r} is unreadable (truncated or corrupt: {error}): upload it again or "
                          "save it anew.") from error


@functools.lru_cache(maxsize=2)
def load_certifier(model: str):
    """The `certified-image-classification` pipeline of `model` (cached: the last two models stay loaded)."""
    from transformers import pipeline

    from .. import register

    register()
    if not isinstance(model, str) or not model.strip():
        raise ValueError("No model given: enter a short name (e.g. dmae-tiny-cifar10), a Hub id or a local path.")
    try:
        certifier = pipeline("certified-image-classification", model=model.strip())
    except (OSError, ValueError) as error:
        message = " ".join(str(error).split())
        raise ValueError(f"Cannot load the model {model!r}: {message}") from error
    if not callable(getattr(certifier.model, "base_classifier", None)):
        raise ValueError(f"The model {model!r} ({type(certifier.model).__name__}) is not a smoothed classifier: use "
                         "a DMAEForSmoothedClassification checkpoint.")
    return certifier


def model_sigma(model: str) -> float:
    """The noise level the model was fine-tuned for (`config.smoothing_sigma`)."""
    return float(load_certifier(model).model.config.smoothing_sigma)


def _pixel_values(certifier, image):
    """The image as the model's (3, S, S) [0, 1] input, through the pipeline's own preprocessing (which resizes)."""
    inputs = certifier.preprocess(image)
    if "error" in inputs:
        raise UploadError(inputs["error"])
    return inputs["pixel_values"][0]


def _check_number(name, value, integer=False, low=None, high=None):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
        value = int(value) if ok else value
    if not ok or (low is not None and value < low) or (high is not None and value > high):
        kind = "a whole number" if integer else "a number"
        bounds = f" in ({low}, {high})" if high is not None else (f" >= {low}" if low is not None else "")
        raise ValueError(f"{name} must be {kind}{bounds}, got {value!r}.")
    return value


# ------------------------------------------------------------------------------------------------------- computation
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
    model_sigma: float
    n0: int
    n: int
    alpha: float
    method: str
    target_radius: tuple[float, ...] | None
    resolution: tuple[int, int]
    seconds: float
    clean: object = field(repr=False)
    noisy: list = field(repr=False)  # (image, the class f gave it)
    perturbed: object = field(repr=False)  # clean + radius * a random unit direction, clipped to [0, 1]
    perturbation_norm: float = 0.0  # the L2 norm of perturbed - clean (below the radius where clipping bit)

    @property
    def abstained(self) -> bool:
        return self.label is None

    def summary(self) -> str:
        """The answer in plain words (Markdown)."""
        h, w = self.resolution
        confidence = f"{(1 - self.alpha) * 100:.4g}%"
        if self.abstained:
            lines = ["### Abstain",
                     f"The vote was not clear enough: the lower bound on pA, the probability that the model gives its "
                     f"most frequent class under noise, is {self.pA_lower:.4f} < 1/2, so no class and no radius are "
                     f"certified (sigma = {self.sigma:g})."]
        else:
            lines = [f"### Prediction: {self.label}",
                     f"**Certified L2 radius: {self.radius:.3f}** (pA >= {self.pA_lower:.4f}, sigma = "
                     f"{self.sigma:g})",
                     f"No perturbation of L2 norm below r = {self.radius:.3f} in [0, 1] pixels (over all {h}x{w}x3 "
                     f"values the model sees) can change this prediction, with probability 1 - alpha = {confidence} "
                     f"over the sampling.",
                     f"At least {self.pA_lower:.1%} of noisy copies of the image (Gaussian noise of standard "
                     f"deviation sigma = {self.sigma:g} on every pixel) are classified as {self.label}; "
                     f"r = sigma * PhiInv(pA's lower bound) (Cohen et al., 2019).",
                     f"On the right: the clean image, and beside it the image plus a perturbation of L2 norm "
                     f"{self.perturbation_norm:.3f} (r in a random direction, clipped to [0, 1]), too small to change "
                     "the prediction."]
        stopped = ""
        if self.method == "adaptive":
            targets = ", ".join(f"{t:g}" for t in self.target_radius or ())
            stopped = f", target radii {targets}: stopped after {self.num_samples - self.n0:,} of n = {self.n:,}"
        lines.append(f"{self.num_samples:,} noisy samples (n0 = {self.n0}, n = {self.n:,}, alpha = {self.alpha:g}, "
                     f"method {self.method}{stopped}) in {self.seconds:.1f} s.")
        if not math.isclose(self.sigma, self.model_sigma):
            lines.append(f"Note: the model was fine-tuned at sigma = {self.model_sigma:g}; the certificate holds at "
                         f"sigma = {self.sigma:g} too, but the model may vote less clearly there.")
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


def _to_uint8(pixel_values):
    """A (3, H, W) [0, 1] tensor (clipped) -> an (H, W, 3) uint8 array."""
    import numpy as np
    import torch

    return np.ascontiguousarray(pixel_values.clamp(0, 1).permute(1, 2, 0).mul(255).round().to(torch.uint8).numpy())


def enlarge(image, size: int = DISPLAY_SIZE):
    """A small (H, W, 3) uint8 image enlarged with nearest neighbour, so that its pixels stay visible."""
    from PIL import Image

    pil = Image.fromarray(image)
    if max(pil.size) >= size:
        return pil
    scale = max(1, size // max(pil.size))
    return pil.resize((pil.size[0] * scale, pil.size[1] * scale), Image.NEAREST)


def certify_image(image, model: str = EMBEDDED_MODEL, sigma: float | None = None, n0: int = defaults.N0,
                  n: int = defaults.DEMO_N, alpha: float = defaults.ALPHA, method: str = "adaptive",
                  target_radius=TARGET_RADII, first_look: int = FIRST_LOOK, seed: int = defaults.SEED,
                  batch_size: int = defaults.NOISE_BATCH, num_noisy: int = NUM_NOISY, progress: bool = False,
                  max_bytes: int = MAX_UPLOAD_BYTES) -> DemoResult:
    """Certify one image (a file path or a PIL image) with `model`; see the module doc.

    sigma: None = the model's `config.smoothing_sigma`; any other sigma > 0 gives a valid certificate at that level
    (`model.certify` allows it), though the model votes best at its own. method "adaptive" uses `target_radius` and
    `first_look` (see `dmae_hf.smoothing.certify`); "cohen" ignores them. Raises `UploadError` for a bad image and
    `ValueError` for bad settings or a model that cannot be loaded.
    """
    import torch

    from ..smoothing import certify

    start = time.perf_counter()
    if method not in defaults.METHODS:
        raise ValueError(f"method must be one of {', '.join(defaults.METHODS)}, got {method!r}.")
    n0 = _check_number("n0", n0, integer=True, low=1)
    n = _check_number("n", n, integer=True, low=1)
    alpha = _check_number("alpha", alpha, low=0, high=1)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}.")
    if n0 > n:
        raise ValueError(f"n0 ({n0}) must not exceed n ({n}): raise n or lower n0.")
    if sigma is not None and not (_check_number("sigma", sigma) > 0):
        raise ValueError(f"sigma must be a number > 0 (noise level in [0, 1] pixel units), got {sigma!r}.")
    if not hasattr(image, "mode"):
        image = read_image(image, max_bytes=max_bytes)
    certifier = load_certifier(model)
    config = certifier.model.config
    trained_sigma = float(config.smoothing_sigma)
    sigma = trained_sigma if sigma is None else float(sigma)
    x = _pixel_values(certifier, image)

    seen = []  # the first noisy images f saw, with its votes

    @torch.inference_mode()
    def base_classifier(batch):
        logits = certifier.model.base_classifier(batch)
        if len(seen) < num_noisy:
            k = num_noisy - len(seen)
            seen.extend(zip(batch[:k].cpu(), logits[:k].argmax(dim=1).tolist(), strict=True))
        return logits

    options = {"target_radius": list(target_radius), "first_look": first_look} if method == "adaptive" else {}
    cert = certify(base_classifier, x, sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed,
                   method=method, progress=progress, **options)

    names = [config.id2label.get(i, str(i)) for i in range(len(cert.counts))]
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(x.shape, generator=generator)
    perturbed = (x + cert.radius * direction / direction.norm()).clamp(0, 1)
    return DemoResult(
        label=None if cert.abstained else names[cert.prediction], class_id=cert.prediction, radius=cert.radius,
        pA_lower=cert.pA_lower, counts=dict(zip(names, cert.counts, strict=True)), num_samples=cert.num_samples,
        sigma=sigma, model_sigma=trained_sigma, n0=n0, n=n, alpha=alpha, method=method,
        target_radius=tuple(target_radius) if method == "adaptive" else None,
        resolution=tuple(x.shape[-2:]), seconds=time.perf_counter() - start, clean=_to_uint8(x),
        noisy=[(_to_uint8(image), names[vote]) for image, vote in seen], perturbed=_to_uint8(perturbed),
        perturbation_norm=float((perturbed - x).norm()))


# -------------------------------------------------------------------------------------------------------------- page
INTRO = """# Certify an image with randomized smoothing
Upload an image (or pick an example), choose the model and the sampling, and press **Certify**. The smoothed
classifier votes over noisy copies of the image; the certificate is an L2 radius within which no change of the
image can change its prediction (Cohen et al., 2019), computed with a DMAE model (Wu et al., ICLR 2023). The embedded
`dmae-tiny-cifar10` knows the 10 CIFAR-10 classes at 32x32 (photos are resized to that); for the ImageNet photos
pick an ImageNet model (`dmae-vit-base-sigma0.25`, ...: downloaded from the Hub, slower on a CPU)."""


def build_app(model: str = EMBEDDED_MODEL, models=None, max_bytes: int = MAX_UPLOAD_BYTES):
    """The page as a `gradio.Blocks` (not launched; see `launch`). `model` is the one selected at first; `models`
    the choices offered (default `model_choices()`; any other short name, Hub id or path can be typed in)."""
    import gradio as gr

    choices = list(dict.fromkeys([model, *(models or model_choices())]))
    examples = example_images()
    gr.set_static_paths(paths=[str(ASSETS)])

    def on_upload(path):
        if path is None:
            return None, ""
        try:
            return enlarge(_to_uint8_pil(read_image(path, max_bytes=max_bytes))), ""
        except UploadError as error:
            return None, f"**Error:** {error}"

    def on_model(name):
        try:
            return gr.update(value=model_sigma(name)), ""
        except Exception as error:  # shown in the page
            return gr.update(), f"**Error:** {_one_line(error)}"

    def on_certify(path, name, sigma, n, alpha, method, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 gradio injects progress
        progress(0, desc="loading the model")
        try:
            result = certify_image(path, model=name, sigma=sigma, n=n, alpha=alpha, method=method, progress=True,
                                   max_bytes=max_bytes)
        except Exception as error:
            if not isinstance(error, (ValueError, OSError)):
                logger.exception("certification failed")
            return f"**Error:** {_one_line(error)}", "", [], None, None
        noisy = [(enlarge(image), f"f: {vote}") for image, vote in result.noisy]
        return (result.summary(), result.histogram_html(), noisy, enlarge(result.clean), enlarge(result.perturbed))

    with gr.Blocks(title="DMAE: certify an image") as app:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image file (PNG, JPEG, ...)", type="filepath", elem_id="upload")
                preview = gr.Image(label="Uploaded image", interactive=False, height=200, elem_id="preview")
                if examples:
                    gr.Examples(examples=[[path] for path, _ in examples], inputs=[upload],
                                example_labels=[caption for _, caption in examples], label="Examples")
            with gr.Column(scale=1):
                model_box = gr.Dropdown(choices, value=model, allow_custom_value=True, elem_id="model",
                                        label="Model (short name, Hub id or local path)")
                sigma_box = gr.Number(value=_sigma_or_none(model), label="sigma (noise level; the model's own by "
                                      "default)", elem_id="sigma")
                n_box = gr.Number(value=defaults.DEMO_N, precision=0, label="n (estimation samples)", elem_id="n")
                alpha_box = gr.Number(value=defaults.ALPHA, label="alpha (failure probability)", elem_id="alpha")
                method_box = gr.Radio(list(defaults.METHODS), value="adaptive", elem_id="method",
                                      label=f"method (adaptive: stop once radius {' / '.join(map(str, TARGET_RADII))}"
                                            " is certified or out of reach)")
                button = gr.Button("Certify", variant="primary", elem_id="certify")
        with gr.Row():
            with gr.Column(scale=1):
                answer = gr.Markdown(elem_id="answer")
                histogram = gr.HTML(elem_id="histogram")
            with gr.Column(scale=1):
                noisy = gr.Gallery(label="Noisy images the model saw (and its vote)", columns=3, rows=2, height=260,
                                   object_fit="contain", elem_id="noisy")
                with gr.Row():
                    clean = gr.Image(label="Clean (as the model sees it)", interactive=False, height=220,
                                     elem_id="clean")
                    perturbed = gr.Image(label="Perturbed by r (a random direction)",
                                         interactive=False, height=220, elem_id="perturbed")

        upload.change(on_upload, inputs=upload, outputs=[preview, answer])
        model_box.change(on_model, inputs=model_box, outputs=[sigma_box, answer])
        button.click(on_certify, inputs=[upload, model_box, sigma_box, n_box, alpha_box, method_box],
                     outputs=[answer, histogram, noisy, clean, perturbed], concurrency_limit=1)
    return app


def launch(app, host: str | None = "127.0.0.1", port: int | None = None, share: bool = False, **kwargs):
    """Serve `app` (queue on, one certification at a time, uploads above `MAX_UPLOAD_BYTES` refused). host or port
    None: gradio's `$GRADIO_SERVER_NAME` / `$GRADIO_SERVER_PORT` (set by Spaces), else 127.0.0.1 / 7860."""
    return app.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, share=share, max_file_size=MAX_UPLOAD_BYTES,
        allowed_paths=[str(ASSETS)], show_error=False, **kwargs)


def _one_line(error) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _sigma_or_none(model):
    try:
        return model_sigma(model)
    except Exception:  # the page shows the loading error at the first certification
        return None


def _to_uint8_pil(image):
    import numpy as np

    return np.asarray(image.convert("RGB"))
