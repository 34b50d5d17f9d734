"""`dmae certify INPUT... --out LOG`: certify images into a resumable TSV log (see `dmae_hf/certification/`).

    dmae certify bundled:cifar10 --n 1000 --out certify.tsv            # the shipped images, offline
    dmae certify photos/ --out photos.tsv                              # class subfolders are the labels
    dmae certify uoft-cs/cifar10 --split test --max 500 --n 100000 --out cifar10.tsv

INPUT is image files, globs, folders, `bundled:cifar10` / `bundled:imagenet`, a Hub dataset id or a local Hub-layout
copy (`dmae_hf.certification.inputs`); `--dataset X` is the same as the INPUT X. The options, the inputs, the model
and the log are all checked before anything is written, so a failed run leaves no file. Run it again with the same
arguments to resume a killed run; a second run on the same `--out` is refused while the first holds `LOG.lock`. Run
it under `torchrun --nproc_per_node K -m dmae_hf certify ...` (or `accelerate launch`) to split the images over K
processes. torchrun's own parser rejects `--n` and `--max` as ambiguous abbreviations of its options, so write their
aliases `--N` and `--max-index` there.
"""

import sys

from . import (
    Notes,
    add_input_arguments,
    add_smoothing_arguments,
    check_sampling,
    input_list,
    load_smoothed_classifier,
)

EXAMPLE = "dmae certify bundled:cifar10 --n 100 --out certify.tsv && dmae analyze certify.tsv"


def register(subparsers):
    from ..defaults import ALPHA, EMBEDDED_MODEL, METHODS, N0, NOISE_BATCH, REACH, SEED, N

    parser = subparsers.add_parser(
        "certify", help="certify images (files, folders, bundled sets, datasets) into a resumable TSV log",
        description="Cohen et al.'s CERTIFY on every selected image, for any image classifier (a DMAE classifier "
                    "at its own sigma, or any other with --sigma, optionally behind a DMAE --denoiser). "
                    "Writes `idx label predict radius correct time pA_lower samples` rows (predict -1 = abstain, "
                    "label -1 = unlabelled). Nothing is written until the inputs, the model and the options are "
                    "checked. Resumable; one run per log (LOG.lock); multi-process under torchrun/accelerate launch.",
        epilog=f"example (offline, under a minute on a CPU):\n  {EXAMPLE}")
    add_input_arguments(parser)
    parser.add_argument("--model", default=EMBEDDED_MODEL, help="image classifier: directory, Hub id or short name "
                        "(e.g. dmae-tiny-cifar10, or any AutoModelForImageClassification checkpoint with --sigma)")
    add_smoothing_arguments(parser)
    parser.add_argument("--n0", "--N0", type=int, default=N0, help="selection samples per image")
    parser.add_argument("--n", "--N", type=int, default=N, help="estimation samples per image")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="failure probability of each certificate")
    parser.add_argument("--batch", type=int, default=NOISE_BATCH, help="noisy samples per forward pass")
    parser.add_argument("--seed", type=int, default=SEED, help="image idx uses the seed mix(seed, idx)")
    parser.add_argument("--method", choices=list(METHODS), default="cohen",
                        help="cohen: n0 + n samples per image, the reference; sequential (recommended with "
                             "--target-radius: Cohen's certified accuracy within a point for about 1/20 of the "
                             "samples at n = 100000, see benchmarks/sequential): an anytime-valid confidence "
                             "sequence that stops once the targets are settled; adaptive: pre-scheduled looks that "
                             "may stop early")
    parser.add_argument("--target-radius", type=float, nargs="+", default=None,
                        help="adaptive/sequential: the radii that matter; stop once the largest is certified or the "
                             "next one is out of reach")
    parser.add_argument("--first-look", type=int, default=None,
                        help="adaptive/sequential: samples at the first look (adaptive 1000, sequential 100)")
    parser.add_argument("--estimate-tolerance", type=float, default=None,
                        help="adaptive: stop once the point estimate says n samples would add at most this radius")
    parser.add_argument("--radius-tolerance", type=float, default=None,
                        help="adaptive/sequential: stop once even all remaining votes would add at most this radius "
                             "(adaptive 0, sequential 0.01)")
    parser.add_argument("--reach", type=float, default=None,
                        help="sequential: chase a target radius only while it is reachable within reach * n samples "
                             "(or twice the cheapest certificate of the largest target, if more); 1 = within n "
                             f"(sequential {REACH})")
    parser.add_argument("--autocast", choices=["bf16", "fp16"], default=None, help="run the model under autocast")
    parser.add_argument("--compile", nargs="?", const="default", default=None,
                        choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile the base classifier in this mode (reduce-overhead: CUDA graphs on GPU)")
    parser.add_argument("--within-image", action="store_true",
                        help="with several processes: split each image's samples over them (noise blocks), instead "
                             "of splitting the images; same log")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK when available, else cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--out", required=True,
                        help="the TSV log LOG (resumed when it exists); LOG.json records the settings, LOG.lock the "
                             "run that owns it")
    parser.set_defaults(func=run)


def default_device():
    import os

    import torch

    if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def run(args) -> int:
    from ..certification.dataset import certify_dataset
    from ..certification.inputs import UNLABELLED, resolve_inputs
    from ..certification.log import check_log
    from ..certification.ranks import distributed_context
    from ..defaults import CERTIFICATE_CAVEAT
    from ..pipeline_dmae import parse_autocast_dtype

    method_kwargs = {k: v for k in ("target_radius", "first_look", "estimate_tolerance", "radius_tolerance", "reach")
                     if (v := getattr(args, k)) is not None}
    if args.target_radius is not None and len(args.target_radius) == 1:
        method_kwargs["target_radius"] = args.target_radius[0]
    autocast_dtype = parse_autocast_dtype(args.autocast)
    inputs = input_list(args)
    check_sampling(args, args.method, method_kwargs, autocast_dtype)  # nothing loaded or written yet
    check_log(args.out)  # its location, and an existing log's rows (a busy log is found when it is opened)
    images = resolve_inputs(inputs, split=args.split, image_column=args.image_column, label_column=args.label_column)
    g = load_smoothed_classifier(args, args.device or default_device())
    images.bind_labels(g.id2label)
    if args.compile:  # fixed batch shapes compile once each
        g.compile(mode=args.compile, dynamic=False)
    notes = Notes(lambda line: print(line, file=sys.stderr) if distributed_context()[0] == 0 else None)
    notes.once(images.note)
    if images.settings().get("labels") == UNLABELLED:
        notes.once("the images are unlabelled: their rows have label -1 and correct 0, and `dmae analyze` reports "
                   "no accuracy for them")
    summary = certify_dataset(
        g, images, args.out, skip=args.skip, max_index=args.max_index, n0=args.n0, n=args.n, alpha=args.alpha,
        batch_size=args.batch, seed=args.seed, method=args.method, method_kwargs=method_kwargs,
        autocast_dtype=autocast_dtype, progress=not args.no_progress, within_image=args.within_image,
        on_image=lambda idx, pre: notes.image(f"idx {idx} ({images.name(idx)})", g.shrink_note(pre.shrink)))
    notes.close()
    print(f"certified {summary['certified']} image(s), {summary['already_done']} already in the log, "
          f"{summary['skipped_corrupt']} unreadable skipped"
          + (f"; {args.out} has {summary['rows']} rows" if summary["rows"] is not None else ""), file=sys.stderr)
    notes.once(CERTIFICATE_CAVEAT)
    return 0
