# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The page of `dmae serve` and of the `dmae-certify` Space (a Gradio app): upload an image, get its certificate.

`build_app(settings)` lays `certifier.certify_image` out as a page with the server's lists and limits
(`server.ServerSettings`), and sets up the queue: `settings.limits.concurrency` certifications at a time, at most
`max_queue` waiting. Every endpoint (the certification, the change of model or denoiser, the upload preview) checks
what it is sent itself, since a visitor can call each one over HTTP; errors are one sentence on the page, never a
traceback. A certification runs in a worker thread that stops after its current noisy batch when the time limit
passes or the visitor presses Cancel (or cancels through the API), so the next visitor gets the CPU at once.
"""

import asyncio
import json
import logging
import threading
from pathlib import Path

from .. import defaults
from .certifier import TARGET_RADII, DemoResult, certify_image, check_upload, load_smoothed, to_uint8, trained_sigma
from .server import NO_DENOISER, REFUSED, ServerSettings

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DISPLAY_SIZE = 192  # small images are shown enlarged (nearest neighbour) to this size
PREVIEW_SIZE = 512  # large uploads are previewed at most this large

INTRO = """# Certify an image with randomized smoothing
Upload an image (or pick an example), choose the model and the sampling, and press **Certify**. The smoothed
classifier votes over noisy copies of the image; the certificate is an L2 radius within which no change of the
image can change its prediction (Cohen et al., 2019). `dmae-tiny-cifar10` is a small DMAE (Wu et al., ICLR 2023)
that knows the 10 CIFAR-10 classes at 32x32 (photos are shrunk to that); `vit-tiny-cifar10-clean` is a plain ViT
trained without noise, which certifies well only behind the DMAE denoiser `dmae-tiny-cifar10-denoiser`."""


def example_images() -> list[tuple[str, str]]:
    """(path, caption) of the bundled examples: a few CIFAR-10 test images, then the ImageNet photos."""
    examples = []
    for folder, dataset, count in (("cifar10", "CIFAR-10", 6), ("imagenet", "ImageNet", None)):
        index_file = ASSETS / folder / "index.json"
        if index_file.is_file():
            items = json.loads(index_file.read_text())["images"][:count]
            examples += [(str(ASSETS / folder / item["file"]), f"{dataset}: {item['label_name']}") for item in items]
    return examples


def enlarge(image, size: int = DISPLAY_SIZE):
    """A small (H, W, 3) uint8 image enlarged with nearest neighbour, so that its pixels stay visible."""
    from PIL import Image

    pil = Image.fromarray(image)
    if max(pil.size) >= size:
        return pil
    scale = max(1, size // max(pil.size))
    return pil.resize((pil.size[0] * scale, pil.size[1] * scale), Image.NEAREST)


def preview(path, settings: ServerSettings):
    """The upload decoded by the one image decoder (within the byte and pixel limits), at most PREVIEW_SIZE."""
    import numpy as np

    from ..image_processing_dmae import decode_image

    limits = settings.limits
    path = check_upload(path, limits.max_bytes)
    try:
        image = decode_image(path, limits.max_pixels).convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(" ".join(str(error).split()).replace(str(path), Path(path).name)) from error
    image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
    return image if max(image.size) >= DISPLAY_SIZE else enlarge(np.asarray(image))


def sigma_for(settings: ServerSettings, model, denoiser):
    """The sigma field's value for a choice: the sigma g is trained for, or None (then the visitor enters one)."""
    return trained_sigma(settings.source(model, "classifier"), settings.source(denoiser, "denoiser"))


def unavailable_text(settings: ServerSettings) -> str:
    if not settings.unavailable:
        return "Every model this server knows is offered above."
    lines = ["These need a download or are not published yet, so this server does not offer them. Publish a model "
             "with `dmae publish`, then offer it with `dmae serve --model NAME` (or the Space's `DMAE_SERVE_MODELS`)."]
    lines += [f"- `{name}`: {why}" for name, why in settings.unavailable.items()]
    return "\n".join(lines)


def build_app(settings: ServerSettings | None = None):
    """The page as a `gradio.Blocks` with its queue set up (not launched; see `launch`). settings: the server's lists
    and limits (default `ServerSettings.build()`: shipped and cached models, the Space's settings, default limits)."""
    import gradio as gr

    settings = settings or ServerSettings.build()
    limits = settings.limits
    examples = example_images()
    gr.set_static_paths(paths=[str(ASSETS)])

    def on_upload(path):
        if path is None:
            return None, ""
        try:
            return preview(path, settings), ""
        except ValueError as error:
            return None, f"**Error:** {error}"

    def on_choice(model, denoiser):
        try:
            sigma = sigma_for(settings, model, denoiser)
        except ValueError:
            return gr.update(), f"**Error:** {REFUSED}"
        except Exception:  # a broken offered checkpoint: logged for the operator, one line for the visitor
            logger.exception("reading the configs failed")
            return gr.update(), "**Error:** This model cannot be read on this server."
        return gr.update(value=sigma), ""

    async def on_certify(path, model, denoiser, sigma, override, n, alpha, method,
                         progress=gr.Progress()):  # noqa: B008 gradio injects progress
        stop = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(
            certify_image, path, model=model, denoiser=denoiser, sigma=sigma, override_sigma=override, n=n,
            alpha=alpha, method=method, settings=settings, stop=stop, progress=progress))
        try:
            result = await asyncio.shield(work)
        except asyncio.CancelledError:  # Cancel on the page, /cancel over the API, or the client went away
            stop.set()
            await asyncio.wait([work])  # the worker stops after its current batch; only then is the slot free
            raise
        except ValueError as error:
            return f"**Error:** {' '.join(str(error).split())}", "", [], None, None
        except Exception:  # not the visitor's doing: logged for the operator, one line for the visitor
            logger.exception("certification failed")
            return "**Error:** The certification failed on this server.", "", [], None, None
        return _outputs(result)

    with gr.Blocks(title="DMAE: certify an image") as app:
        gr.Markdown(INTRO)
        gr.Markdown(f"This server allows {limits.describe()}.", elem_id="limits")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image file (PNG, JPEG, ...)", type="filepath", elem_id="upload")
                shown = gr.Image(label="Uploaded image", interactive=False, height=200, elem_id="preview")
                if examples:
                    gr.Examples(examples=[[path] for path, _ in examples], inputs=[upload],
                                example_labels=[caption for _, caption in examples], label="Examples")
                with gr.Accordion("Models not on this server", open=False):
                    gr.Markdown(unavailable_text(settings), elem_id="unavailable")
            with gr.Column(scale=1):
                # allow_custom_value: gradio's own check would echo the value; ours refuses with one message
                model_box = gr.Dropdown(list(settings.models), value=settings.selected, label="Model",
                                        allow_custom_value=True, elem_id="model")
                denoiser_box = gr.Dropdown([NO_DENOISER, *settings.denoisers], value=NO_DENOISER,
                                           allow_custom_value=True, label="DMAE denoiser in front of the model",
                                           elem_id="denoiser")
                sigma_box = gr.Number(value=_safe_sigma(settings), elem_id="sigma",
                                      label=f"sigma (noise std in [0, 1] pixels, at most {defaults.MAX_SIGMA:g}; the "
                                            "trained one by default, required for a model trained without one)")
                override_box = gr.Checkbox(False, elem_id="override", label="override_sigma: certify at a sigma "
                                           "other than the trained one (valid, usually weaker)")
                n_box = gr.Number(value=defaults.DEMO_N, precision=0, elem_id="n",
                                  label=f"n (estimation samples; n0 = {defaults.N0} + n <= {limits.max_samples:,})")
                alpha_box = gr.Number(value=defaults.ALPHA, label="alpha (failure probability)", elem_id="alpha")
                method_box = gr.Radio(list(defaults.METHODS), value="sequential", elem_id="method",
                                      label=f"method ({' and '.join(m for m, o in defaults.METHODS.items() if o)}: "
                                            f"stop once radius {' / '.join(map(str, TARGET_RADII))} is certified or "
                                            "out of reach)")
                with gr.Row():
                    button = gr.Button("Certify", variant="primary", elem_id="certify")
                    cancel = gr.Button("Cancel", elem_id="cancel")
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

        light = {"concurrency_limit": 2, "concurrency_id": "light"}
        upload.change(on_upload, inputs=upload, outputs=[shown, answer], api_name="preview", **light)
        gr.on([model_box.change, denoiser_box.change], on_choice, inputs=[model_box, denoiser_box],
              outputs=[sigma_box, answer], api_name="choose", **light)
        run = button.click(on_certify, outputs=[answer, histogram, noisy, clean, perturbed], api_name="certify",
                           inputs=[upload, model_box, denoiser_box, sigma_box, override_box, n_box, alpha_box,
                                   method_box])
        cancel.click(None, cancels=[run])
    app.queue(default_concurrency_limit=limits.concurrency, max_size=limits.max_queue)
    app.dmae_settings = settings
    return app


def launch(app, host: str | None = "127.0.0.1", port: int | None = None, share: bool = False, **kwargs):
    """Serve `app` (uploads above the byte limit refused by gradio itself). host or port None: gradio's
    `$GRADIO_SERVER_NAME` / `$GRADIO_SERVER_PORT` (set by Spaces), else 127.0.0.1 / 7860."""
    settings = getattr(app, "dmae_settings", None) or ServerSettings.build()
    return app.launch(server_name=host, server_port=port, share=share, max_file_size=settings.limits.max_bytes,
                      allowed_paths=[str(ASSETS)], show_error=False, **kwargs)


def _outputs(result: DemoResult):
    noisy = [(enlarge(image), f"f: {vote}") for image, vote in result.noisy]
    return result.summary(), result.histogram_html(), noisy, enlarge(result.clean), enlarge(result.perturbed)


def _safe_sigma(settings):
    """The selected model's trained sigma, its g loaded now so that the first visitor does not wait for it."""
    try:
        sigma = sigma_for(settings, settings.selected, None)
        if sigma is not None:
            load_smoothed(settings.source(settings.selected), None, sigma, False)
        return sigma
    except Exception:  # noqa: BLE001 shown at the first certification instead
        logger.exception(f"loading {settings.selected} failed")
        return None


__all__ = ["build_app", "launch", "example_images", "enlarge", "preview", "INTRO", "ASSETS", "to_uint8"]
