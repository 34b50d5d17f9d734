"""`dmae serve`: the web demo (a Gradio app) on this machine, or pushed to the Hub as a Space.

    dmae serve                                   # http://127.0.0.1:7860, the shipped models, offline, CPU
    dmae serve --model me/my-vit --denoiser dmae-tiny-cifar10-denoiser --max-seconds 30 --port 8000
    dmae serve --push-space me/dmae-certify      # upload spaces/dmae-certify + dmae_hf as a Space, then exit

A visitor chooses only among the models the server offers: the shipped ones and those in the local Hub cache, plus
each --model and --denoiser (short names, Hub ids, local folders). Each flag falls back to the Space's setting of
the same name ($DMAE_SERVE_MODELS, $DMAE_SERVE_MAX_SECONDS, ...). gradio is an optional extra
(`pip install -e ".[demo]"`), imported only when the command runs.
"""

from ..defaults import EMBEDDED_MODEL

DEMO_EXTRA = 'pip install -e ".[demo]"'


def register(subparsers):
    from ..web.server import CONCURRENCY, MAX_QUEUE, MAX_SAMPLES, MAX_SECONDS

    parser = subparsers.add_parser(
        "serve", help="web demo: certify an uploaded image in the browser (Gradio)",
        description="Start the web demo (a Gradio app): upload an image, choose a model the server offers (and a "
                    "DMAE denoiser), sigma, n, alpha and the method, and see the certificate. Needs the demo extra "
                    f"({DEMO_EXTRA}).")
    parser.add_argument("--model", action="append", metavar="MODEL",
                        help="offer this classifier too (short name, Hub id or local folder; repeat for more; a Hub "
                             f"id is downloaded at start); the first is selected when the page opens (default: "
                             f"{EMBEDDED_MODEL}). Env: DMAE_SERVE_MODELS (comma-separated)")
    parser.add_argument("--denoiser", action="append", metavar="DENOISER",
                        help="offer this DMAE denoiser too (repeatable). Env: DMAE_SERVE_DENOISERS")
    parser.add_argument("--max-samples", type=int, help=f"most noisy samples (n0 + n) per request (default "
                        f"{MAX_SAMPLES:,}). Env: DMAE_SERVE_MAX_SAMPLES")
    parser.add_argument("--max-seconds", type=float, help=f"most seconds of sampling per request, after which it "
                        f"stops (default {MAX_SECONDS:g}). Env: DMAE_SERVE_MAX_SECONDS")
    parser.add_argument("--concurrency", type=int, help=f"certifications at a time (default {CONCURRENCY}). Env: "
                        "DMAE_SERVE_CONCURRENCY")
    parser.add_argument("--max-queue", type=int, help=f"requests that may wait; more are turned away (default "
                        f"{MAX_QUEUE}). Env: DMAE_SERVE_MAX_QUEUE")
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
    from ..web import ServerSettings, build_app, launch

    settings = ServerSettings.build(models=args.model or (), denoisers=args.denoiser or (),
                                    max_samples=args.max_samples, max_seconds=args.max_seconds,
                                    concurrency=args.concurrency, max_queue=args.max_queue)
    print(f"Offering {', '.join(settings.models)}; denoisers {', '.join(settings.denoisers) or 'none'}; "
          f"{settings.limits.describe()}.")
    launch(build_app(settings), host=args.host, port=args.port, share=args.share)
    return 0
