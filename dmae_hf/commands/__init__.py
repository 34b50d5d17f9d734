"""Sub-commands of the `dmae` CLI, one module each (see `dmae_hf/cli.py`)."""

EMBEDDED_MODEL = "dmae-tiny-cifar10"


def add_sampling_arguments(parser):
    """The model and CERTIFY options shared by `dmae predict` and `dmae demo`."""
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="model directory, Hub id or short name")
    parser.add_argument("--n0", type=int, default=100, help="selection samples per image")
    parser.add_argument("--n", type=int, default=1000, help="estimation samples per image")
    parser.add_argument("--alpha", type=float, default=0.001, help="failure probability of each certificate")
    parser.add_argument("--batch", type=int, default=1000, help="noisy samples per forward pass")
    parser.add_argument("--seed", type=int, default=0)
