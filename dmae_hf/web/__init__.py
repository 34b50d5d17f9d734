# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The web demo: certify an uploaded image in the browser (a Gradio app; `pip install -e ".[demo]"`).

    >>> from dmae_hf.web import build_app, certify_image
    >>> certify_image("cat.png").summary()          # the certificate, without a browser (no gradio needed)
    >>> build_app().launch()                        # the page; `dmae serve` does this on 127.0.0.1:7860

`dmae serve` runs the app locally; `spaces/dmae-certify` in the repository is the same app as a Hub Space, pushed by
`dmae serve --push-space REPO` (`push_space`). Only `build_app` and `launch` import gradio.
"""

from .app import (
    DemoResult,
    UploadError,
    build_app,
    certify_image,
    example_images,
    launch,
    model_choices,
    read_image,
)
from .space import push_space, stage_space

__all__ = ["DemoResult", "UploadError", "build_app", "certify_image", "example_images", "launch", "model_choices",
           "push_space", "read_image", "stage_space"]
