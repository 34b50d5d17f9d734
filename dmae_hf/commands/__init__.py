"""Sub-commands of the `dmae` CLI, one module each (see `dmae_hf/cli.py`). Modules import nothing heavy at the top,
so that building the parser stays fast."""

from .. import defaults

EMBEDDED_MODEL = "dmae-tiny-cifar10"


def add_smoothing_arguments(parser):
    """`--sigma` and `--denoiser`, for `dmae certify` and `dmae predict`: any image classifier, optionally behind a
    DMAE denoiser (see `dmae_hf.smoothed_classifier`)."""
    parser.add_argument("--sigma", type=float, default=None,
                        help="noise std in [0, 1] pixels; required for classifiers without smoothing_sigma in their "
                             "config (default: the DMAE classifier's own, or the denoiser's)")
    parser.add_argument("--denoiser", default=None,
                        help="a DMAE pre-training checkpoint (directory, Hub id or short name) put in front of the "
                             "classifier (denoised smoothing); it must be trained at --sigma")


def add_sampling_arguments(parser, n=defaults.N):
    """The model and CERTIFY options shared by `dmae predict` and `dmae demo` (defaults from `dmae_hf.defaults`)."""
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="model directory, Hub id or short name")
    parser.add_argument("--n0", type=int, default=defaults.N0, help="selection samples per image")
    parser.add_argument("--n", type=int, default=n, help="estimation samples per image")
    parser.add_argument("--alpha", type=float, default=defaults.ALPHA, help="failure probability of each certificate")
    parser.add_argument("--batch", type=int, default=defaults.NOISE_BATCH, help="noisy samples per forward pass")
    parser.add_argument("--seed", type=int, default=defaults.SEED, help="noise seed (the same seed gives the same "
                        "certificates)")
