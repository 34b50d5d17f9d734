"""Sub-commands of the `dmae` CLI, one module each (see `dmae_hf/cli.py`). Modules import nothing heavy at the top,
so that building the parser stays fast."""

import argparse

from .. import defaults

INPUT_HELP = ("images to certify: image files, globs ('photos/*.jpg'), folders (class subfolders = labels, "
              "matched to the model's classes; else unlabelled), bundled:cifar10 or bundled:imagenet (shipped, "
              "offline), a Hub dataset id or a local copy in the Hub layout (with --split, --image-column, "
              "--label-column)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default (except for flags and options whose default is None); a description or epilog
    with line breaks (an example to copy) is printed as written."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def add_smoothing_arguments(parser):
    """`--sigma`, `--override-sigma` and `--denoiser`, for `dmae certify` and `dmae predict`: any image classifier,
    optionally behind a DMAE denoiser (see `dmae_hf.smoothed_classifier`)."""
    parser.add_argument("--sigma", type=float, default=None,
                        help="noise std in [0, 1] pixels; required for classifiers without smoothing_sigma in their "
                             "config (default: the DMAE classifier's own, or the denoiser's)")
    parser.add_argument("--override-sigma", action="store_true",
                        help="certify at a --sigma other than the one the model was trained for (valid, usually "
                             "weaker; the result records sigma_override)")
    parser.add_argument("--denoiser", default=None,
                        help="a DMAE pre-training checkpoint (directory, Hub id or short name) put in front of the "
                             "classifier (denoised smoothing); it must be trained at --sigma")


def add_sampling_arguments(parser, n=defaults.N):
    """The model and CERTIFY options shared by `dmae predict` and `dmae demo` (defaults from `dmae_hf.defaults`)."""
    parser.add_argument("--model", default=defaults.EMBEDDED_MODEL, help="model directory, Hub id or short name")
    parser.add_argument("--n0", type=int, default=defaults.N0, help="selection samples per image")
    parser.add_argument("--n", type=int, default=n, help="estimation samples per image")
    parser.add_argument("--alpha", type=float, default=defaults.ALPHA, help="failure probability of each certificate")
    parser.add_argument("--batch", type=int, default=defaults.NOISE_BATCH, help="noisy samples per forward pass")
    parser.add_argument("--seed", type=int, default=defaults.SEED, help="noise seed (the same seed gives the same "
                        "certificates)")


def add_input_arguments(parser):
    """INPUT... and the options that pick images from it, for `dmae certify` and `dmae predict`
    (`dmae_hf.certification.inputs`)."""
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help=INPUT_HELP)
    parser.add_argument("--dataset", default=None, help="the same as one INPUT (kept for older command lines)")
    parser.add_argument("--split", default="test", help="dataset split (or the split subfolder of a folder)")
    parser.add_argument("--image-column", default=None,
                        help="datasets: image column (default: the first column named image, img, jpg, jpeg, png "
                             "or webp, else the first Image column)")
    parser.add_argument("--label-column", default=None,
                        help="datasets: integer label column (default: label or cls when there is one, else the "
                             "images are unlabelled)")
    parser.add_argument("--skip", type=int, default=1, help="certify every SKIP-th image (Cohen's --skip)")
    parser.add_argument("--max", "--max-index", type=int, default=-1, dest="max_index",
                        help="stop at this image index, excluded (Cohen's --max; -1 = all)")


def input_list(args) -> list[str]:
    """INPUT... and --dataset as one list; `ValueError` when there is none."""
    inputs = list(args.inputs) + ([args.dataset] if args.dataset else [])
    if not inputs:
        raise ValueError("no INPUT given: pass image files, a folder, a glob, bundled:cifar10 or a dataset (see "
                         "--help for an example).")
    return inputs


def check_sampling(args, method="cohen", method_kwargs=None, autocast_dtype=None) -> None:
    """The options checked before anything is loaded or written: sigma's range, and the CERTIFY options by the
    core's own checks (`certification.dataset.check_options`)."""
    from ..certification.dataset import check_options

    if args.sigma is not None:
        defaults.check_sigma(args.sigma)
    check_options(args.skip, args.max_index, args.n0, args.n, args.alpha, args.batch, args.seed, method,
                  autocast_dtype, method_kwargs)


def load_smoothed_classifier(args, device="cpu"):
    """g for `--model`, `--sigma`, `--override-sigma` and `--denoiser`, on `device`, in float32."""
    import torch

    from ..smoothed_classifier import SmoothedClassifier

    return SmoothedClassifier.from_pretrained(args.model, sigma=args.sigma, denoiser=args.denoiser,
                                              override_sigma=args.override_sigma, dtype=torch.float32).to(device)


class Notes:
    """Notes printed once each (the certificate caveat, unlabelled images) or per image up to `limit` (shrunk
    images), then counted."""

    def __init__(self, print_line, limit=5):
        self.print_line, self.limit, self.seen, self.more = print_line, limit, set(), 0

    def once(self, text) -> None:
        if text and text not in self.seen:
            self.seen.add(text)
            self.print_line(f"note: {text}")

    def image(self, name, text) -> None:
        if not text:
            return
        if self.limit > 0:
            self.limit -= 1
            self.print_line(f"note: {name}: {text}")
        else:
            self.more += 1

    def close(self) -> None:
        if self.more:
            self.print_line(f"note: {self.more} more image(s) shrunk the same way")
        self.more = 0
