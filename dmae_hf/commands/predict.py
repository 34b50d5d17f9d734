"""`dmae predict`: certified predictions for image files, through the `certified-image-classification` pipeline.

    dmae predict cat.png dog.jpg --model dmae-tiny-cifar10 --n 1000 --json

Each image gets Cohen et al.'s CERTIFY at the model's sigma (not PREDICT): the label of the smoothed classifier and
the L2 radius on which it is certified with probability >= 1 - alpha, or "abstain". The defaults are the library's
(`dmae_hf.defaults`: n0 = 100, n = 10,000, alpha = 0.001), as in the pipeline and `dmae certify`. Images are
resized to the model's input first, and the radius is in [0, 1] pixel units at that resolution. An image that
cannot be used (unreadable, missing, too large, ...) is reported on stderr; the others are still certified and
printed, and the exit status is then 1.
"""

import json
import sys

from . import add_sampling_arguments, add_smoothing_arguments


def register(subparsers):
    parser = subparsers.add_parser(
        "predict", help="certified label and radius of image files (the certified-image-classification pipeline)",
        description="Certify each image (Cohen et al.'s CERTIFY) and print label and radius; any image "
                    "classifier, with --sigma where it has no smoothing_sigma, optionally behind a DMAE --denoiser. "
                    "A bad image is reported on stderr, the others are printed, and the exit status is then 1.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    add_sampling_arguments(parser)
    add_smoothing_arguments(parser)
    parser.add_argument("--device", default="cpu", help="torch device of the model")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per certified image")
    parser.set_defaults(func=run)


def run(args) -> int:
    import logging

    import torch
    from transformers import pipeline

    certifier = pipeline("certified-image-classification", model=args.model, sigma=args.sigma,
                         denoiser=args.denoiser, device=args.device, dtype=torch.float32)
    pipeline_logger = logging.getLogger("dmae_hf.pipeline_dmae")  # its notes: we print each failure ourselves
    level = pipeline_logger.level
    pipeline_logger.setLevel(logging.ERROR)
    try:
        outputs = certifier(list(args.images), n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch,
                            seed=args.seed, errors="report")
    finally:
        pipeline_logger.setLevel(level)
    results = []
    for path, result in zip(args.images, outputs, strict=True):
        if "error" in result:
            print(f"dmae predict: error: {path}: {result['error']}", file=sys.stderr)
        else:
            results.append({"image": path, **result})
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            verdict = "abstain" if r["abstained"] else f"{r['label']} (class {r['class_id']})"
            print(f"{r['image']}: {verdict}  radius={r['radius']:.3f}  pA_lower={r['pA_lower']:.4f}  "
                  f"sigma={r['sigma']}  n={r['n']}  alpha={r['alpha']}  at {r['resolution'][0]}x{r['resolution'][1]}")
    return 1 if len(results) < len(args.images) else 0
