"""`dmae serve`: the web demo (a Gradio app) on this machine, or pushed to the Hub as a Space.

    dmae serve                                   # http://127.0.0.1:7860, the embedded model, offline, CPU
    dmae serve --model dmae-vit-base-sigma0.25 --port 8000
    dmae serve --push-space me/dmae-certify      # upload spaces/dmae-certify + dmae_hf as a Space, then exit

gradio is an optional extra (`pip install -e ".[demo]"`), imported only when the command runs.
"""

from . import EMBEDDED_MODEL

DEMO_EXTRA = 'pip install -e ".[demo]"'


def register(subparsers):
    parser = subparsers.add_parser(
        "serve", help="web demo: certify an uploaded image in the browser (Gradio)",
        description="Start the web demo (a Gradio app): upload an image, choose model, sigma, n, alpha and the "
                    f"method, and see the certificate. Needs the demo extra ({DEMO_EXTRA}).")
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="model selected at first (short name, Hub id or "
                        "local path); the page lets the user pick another")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--push-space", metavar="REPO", help="instead of serving, create or update the Hub Space "
                        "REPO (namespace/name) with this app and exit")
    parser.add_argument("--private", action="store_true", help="with --push-space: create the Space private")
    parser.set_defaults(func=run)


def run(args) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}.")
    if args.push_space:
        from ..web.space import push_space

        print(f"Space pushed: {push_space(args.push_space, private=args.private)}")
        return 0
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise ImportError(f"dmae serve needs gradio, which is not installed: {DEMO_EXTRA}") from error
    from ..web.app import build_app, launch

    launch(build_app(model=args.model), host=args.host, port=args.port, share=args.share)
    return 0
