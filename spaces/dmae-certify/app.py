"""The dmae-certify Space: `dmae serve` as a Hugging Face Space (gradio SDK). Pushed with `dmae serve --push-space
REPO`, which uploads this folder with a copy of the `dmae_hf` package beside it."""

from dmae_hf.web import build_app, launch

demo = build_app()

if __name__ == "__main__":
    launch(demo, host="0.0.0.0", port=7860)
