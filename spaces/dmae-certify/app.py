"""The dmae-certify Space: `dmae serve` as a Hugging Face Space (gradio SDK). Pushed with `dmae serve --push-space
REPO`, which uploads this folder with a copy of the `dmae_hf` package beside it. Address and port: gradio's
$GRADIO_SERVER_NAME and $GRADIO_SERVER_PORT (Spaces sets them), else 127.0.0.1:7860. What visitors may choose and
what a request may cost come from the Space's settings (variables): DMAE_SERVE_MODELS, DMAE_SERVE_DENOISERS,
DMAE_SERVE_MAX_SAMPLES, DMAE_SERVE_MAX_SECONDS, DMAE_SERVE_CONCURRENCY, DMAE_SERVE_MAX_QUEUE."""

from dmae_hf.web import ServerSettings, build_app, launch

demo = build_app(ServerSettings.build())

if __name__ == "__main__":
    launch(demo, host=None)
