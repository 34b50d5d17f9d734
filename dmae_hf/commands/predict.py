"""`dmae predict`: certified predictions for image files, through the `certified-image-classification` pipeline.

    dmae predict cat.png dog.jpg --model dmae-tiny-cifar10 --n 1000 --json

Each image gets Cohen et al.'s CERTIFY at the model's sigma (not PREDICT): the label of the smoothed classifier and
the L2 radius on which it is certified with probability >= 1 - alpha, or "abstain".
"""

import json
import sys

from . import add_sampling_arguments


def register(subparsers):
    parser = subparsers.add_parser(
        "predict", help="certified label and radius of image files (the certified-image-classification pipeline)",
        description="Certify each image (Cohen et al.'s CERTIFY at the model's sigma) and print label and radius.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format PIL reads)")
    add_sampling_arguments(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    parser.set_defaults(func=run)


def run(args) -> int:
    import torch
    from transformers import pipeline

    try:
        certifier = pipeline("certified-image-classification", model=args.model, device=args.device,
                             dtype=torch.float32)
    except ValueError as error:
        print(f"dmae predict: error: {error}", file=sys.stderr)
        return 2
    results, failed = [], False
    for path in args.images:
        try:
            result = certifier(path, n0=args.n0, n=args.n, alpha=args.alpha, batch_size=args.batch, seed=args.seed)
        except ValueError as error:
            print(f"dmae predict: error: {path}: {error}", file=sys.stderr)
            failed = True
            continue
        results.append({"image": path, **result})
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            verdict = "abstain" if r["abstained"] else f"{r['label']} (class {r['class_id']})"
            print(f"{r['image']}: {verdict}  radius={r['radius']:.3f}  pA_lower={r['pA_lower']:.4f}  "
                  f"sigma={r['sigma']}  n={r['n']}  alpha={r['alpha']}")
    return 1 if failed else 0
