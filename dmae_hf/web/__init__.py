# Copyright 2026 The dmae-hf authors. Licensed under the Apache License, Version 2.0.
"""The web demo: certify an uploaded image in the browser (a Gradio app; `pip install -e ".[demo]"`).

    >>> from dmae_hf.web import ServerSettings, build_app, certify_image
    >>> certify_image("cat.png").summary()          # the certificate, without a browser (no gradio needed)
    >>> settings = ServerSettings.build(models=["me/my-vit"], max_seconds=30)
    >>> launch(build_app(settings))                 # the page; `dmae serve` does this on 127.0.0.1:7860

`server` decides what a visitor may choose and what a request may cost, `certifier` certifies through the smoothed
classifier g, `page` lays it out (only `build_app` and `launch` import gradio). `dmae serve` runs the app locally;
`spaces/dmae-certify` in the repository is the same app as a Hub Space, pushed by `dmae serve --push-space REPO`.
"""

from .certifier import DemoResult, RequestStopped, certify_image, default_settings
from .page import build_app, example_images, launch
from .server import REFUSED, Limits, ServerSettings
from .space import push_space, stage_space

__all__ = ["DemoResult", "Limits", "REFUSED", "RequestStopped", "ServerSettings", "build_app", "certify_image",
           "default_settings", "example_images", "launch", "push_space", "stage_space"]
