"""`dmae certify`: certify a dataset split into a resumable TSV log (see `dmae_hf/certification/dataset.py`).

    dmae certify --model DIR_OR_NAME --dataset uoft-cs/cifar10 --split test --max 500 --image-column img \\
        --n0 100 --n 10000 --alpha 0.001 --batch 1000 --seed 0 --out certify.tsv

Run it again with the same arguments to resume a killed run; a second run on the same `--out` is refused while the
first holds `LOG.lock`. The log is checked and locked before the model is loaded. Run it under `torchrun
--nproc_per_node K -m dmae_hf certify ...` (or `accelerate launch`) to split the images over K processes. torchrun's
own parser rejects `--n` and `--max` as ambiguous abbreviations of its options, so write their aliases `--N` and
`--max-index` there.
"""

import sys

from . import add_smoothing_arguments


def register(subparsers):
    from ..defaults import ALPHA, METHODS, N0, NOISE_BATCH, SEED, N

    parser = subparsers.add_parser(
        "certify", help="certify a dataset split with randomized smoothing into a resumable TSV log",
        description="Cohen et al.'s CERTIFY on every selected image of a dataset split, for any image "
                    "classifier (a DMAE classifier at its own sigma, or any other with --sigma, optionally behind a "
                    "DMAE --denoiser). "
                    "Writes `idx label predict radius correct time pA_lower samples` rows (predict -1 = abstain). "
                    "Resumable; one run per log (LOG.lock); multi-process under torchrun/accelerate launch.")
    parser.add_argument("--model", required=True, help="image classifier: directory, Hub id or short name "
                        "(e.g. dmae-tiny-cifar10, or any AutoModelForImageClassification checkpoint with --sigma)")
    add_smoothing_arguments(parser)
    parser.add_argument("--dataset", required=True, help="local Hub-layout dataset folder or Hub dataset id "
                        "(streamed)")
    parser.add_argument("--split", default="test", help="dataset split to certify")
    parser.add_argument("--skip", type=int, default=1, help="certify every SKIP-th image (Cohen's --skip)")
    parser.add_argument("--max", "--max-index", type=int, default=-1, dest="max_index",
                        help="stop at this row index, excluded (Cohen's --max; -1 = the whole split)")
    parser.add_argument("--image-column", default=None,
                        help="image column (default: the first column named image, img, jpg, jpeg, png or webp, "
                             "else the first Image column)")
    parser.add_argument("--label-column", default="label", help="integer label column")
    parser.add_argument("--n0", "--N0", type=int, default=N0, help="selection samples per image")
    parser.add_argument("--n", "--N", type=int, default=N, help="estimation samples per image")
    parser.add_argument("--alpha", type=float, default=ALPHA, help="failure probability of each certificate")
    parser.add_argument("--batch", type=int, default=NOISE_BATCH, help="noisy samples per forward pass")
    parser.add_argument("--seed", type=int, default=SEED, help="image idx uses the seed mix(seed, idx)")
    parser.add_argument("--method", choices=list(METHODS), default="cohen",
                        help="cohen: n0 + n samples per image; adaptive: sequential looks that may stop early")
    parser.add_argument("--target-radius", type=float, nargs="+", default=None,
                        help="adaptive: the radii that matter; stop once the largest is certified or the next one "
                             "is out of reach")
    parser.add_argument("--first-look", type=int, default=None, help="adaptive: samples at the first look (1000)")
    parser.add_argument("--estimate-tolerance", type=float, default=None,
                        help="adaptive: stop once the point estimate says n samples would add at most this radius")
    parser.add_argument("--radius-tolerance", type=float, default=None,
                        help="adaptive: stop once even all remaining votes would add at most this radius (0)")
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
    import torch
    from transformers import pipeline

    from ..certification.dataset import CertificationLog, certify_dataset
    from ..pipeline_dmae import parse_autocast_dtype

    method_kwargs = {k: v for k in ("target_radius", "first_look", "estimate_tolerance", "radius_tolerance")
                     if (v := getattr(args, k)) is not None}
    if args.target_radius is not None and len(args.target_radius) == 1:
        method_kwargs["target_radius"] = args.target_radius[0]
    try:
        log = CertificationLog(args.out, within_image=args.within_image)  # before the model: a bad --out fails fast
        try:
            pipe = pipeline("certified-image-classification", model=args.model, sigma=args.sigma,
                            denoiser=args.denoiser, device=args.device or default_device(), dtype=torch.float32)
            if args.compile:  # fixed batch shapes compile once each
                pipe.smoothed.compile(mode=args.compile, dynamic=False)
            summary = certify_dataset(
                pipe, args.dataset, log, split=args.split, skip=args.skip, max_index=args.max_index,
                image_column=args.image_column, label_column=args.label_column, n0=args.n0, n=args.n,
                alpha=args.alpha, batch_size=args.batch, seed=args.seed, method=args.method,
                method_kwargs=method_kwargs, autocast_dtype=parse_autocast_dtype(args.autocast),
                progress=not args.no_progress)
        finally:
            log.close()
    except (ValueError, OSError) as error:
        print(f"dmae certify: error: {error}", file=sys.stderr)
        return 2
    print(f"certified {summary['certified']} image(s), {summary['already_done']} already in the log, "
          f"{summary['skipped_corrupt']} unreadable skipped"
          + (f"; {args.out} has {summary['rows']} rows" if summary["rows"] is not None else ""), file=sys.stderr)
    return 0
