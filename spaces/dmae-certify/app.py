"""The dmae-certify Space: `dmae serve` as a Hugging Face Space (gradio SDK). Pushed with `dmae serve --push-space
REPO`, which uploads this folder with a copy of the `dmae_hf` package beside it. Address and port: gradio's
$GRADIO_SERVER_NAME and $GRADIO_SERVER_PORT (Spaces sets them), else 127.0.0.1:7860."""

from dmae_hf.web import build_app, launch

demo = build_app()

if __name__ == "__main__":
    launch(demo, host=None)
