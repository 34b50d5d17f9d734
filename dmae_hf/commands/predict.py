"""`dmae predict INPUT...`: the certified label and radius of each image, printed (no log).

    dmae predict bundled:imagenet --n 1000
    dmae predict cat.png dog.jpg --model dmae-tiny-cifar10 --json

INPUT is what `dmae certify` takes (files, globs, folders, `bundled:cifar10` / `bundled:imagenet`, a dataset). Each
image gets Cohen et al.'s CERTIFY through the smoothed classifier g (not PREDICT): the label of g and the L2 radius
on which it is certified with probability >= 1 - alpha, or "abstain", with the seed `--seed` for every image (as the
pipeline). The defaults are the library's (`dmae_hf.defaults`). Images are brought to the model's input first, and
the radius is in [0, 1] pixel units at that resolution; an image shrunk more than 4x on a side gets a note. An INPUT
or image that cannot be used (missing, an empty folder, unreadable, too large, ...) is reported on stderr; the others
are still certified and printed, and the exit status is then 1. The certificate caveat is printed once, last.
"""

import json
import sys

from . import (
    Notes,
    add_input_arguments,
    add_sampling_arguments,
    add_smoothing_arguments,
    check_sampling,
    input_list,
    load_smoothed_classifier,
)

EXAMPLE = "dmae predict bundled:imagenet --n 100"


def register(subparsers):
    parser = subparsers.add_parser(
        "predict", help="certified label and radius of images (files, folders, bundled sets, datasets)",
        description="Certify each image (Cohen et al.'s CERTIFY) and print label and radius; any image "
                    "classifier, with --sigma where it has no smoothing_sigma, optionally behind a DMAE --denoiser. "
                    "A bad INPUT or image is reported on stderr, the others are printed, and the exit status is then "
                    "1.",
        epilog=f"example (offline, seconds on a CPU):\n  {EXAMPLE}")
    add_input_arguments(parser)
    add_sampling_arguments(parser)
    add_smoothing_arguments(parser)
    parser.add_argument("--device", default="cpu", help="torch device of the model")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per certified image")
    parser.set_defaults(func=run)


def result(g, certificate, preprocessed, label) -> dict:
    """The printed fields of one certificate: the pipeline's (`RandomizedSmoothingPipeline.postprocess`: label,
    radius, shrink and its note, sigma_override, the caveat, ...), plus `true_label` for labelled inputs."""
    from ..defaults import CERTIFICATE_CAVEAT

    class_id = certificate.prediction
    fields = {"label": None if class_id is None else g.id2label.get(class_id, str(class_id)), "class_id": class_id,
              "radius": certificate.radius, "pA_lower": certificate.pA_lower, "abstained": certificate.abstained,
              "n0": certificate.n0, "n": certificate.n, "alpha": certificate.alpha,
              "resolution": list(preprocessed.pixel_values.shape[-2:]), "shrink": preprocessed.shrink,
              "note": g.shrink_note(preprocessed.shrink), "sigma": certificate.sigma,
              "sigma_override": certificate.sigma_override, "denoiser": g.denoiser_name, "caveat": CERTIFICATE_CAVEAT}
    if label is not None:
        fields["true_label"] = g.id2label.get(int(label), str(label))
    return fields


def resolve_each(inputs, args, report) -> list:
    """Each INPUT resolved alone (`certification.inputs.resolve_inputs`); one that fails is reported, not fatal."""
    from ..certification.inputs import resolve_inputs

    sources = []
    for text in inputs:
        try:
            sources.append(resolve_inputs([text], split=args.split, image_column=args.image_column,
                                          label_column=args.label_column))
        except ValueError as error:
            report(f"{text}: {error}")
    return sources


def run(args) -> int:
    from ..certification.dataset import MAX_PIXELS
    from ..defaults import CERTIFICATE_CAVEAT
    from ..image_processing_dmae import decode_image

    inputs = input_list(args)
    check_sampling(args)
    failed = []

    def report(message):
        failed.append(message)
        print(f"dmae predict: error: {message}", file=sys.stderr)

    sources = resolve_each(inputs, args, report)
    g = load_smoothed_classifier(args, args.device)
    notes = Notes(lambda line: print(line, file=sys.stderr if args.json else sys.stdout))
    results = []
    for images in sources:
        images.bind_labels(g.id2label)
        notes.once(images.note)
        examples = images.examples()
        for idx, value, label in examples:
            if args.max_index >= 0 and idx >= args.max_index:
                break
            if idx % args.skip:
                continue
            name = images.name(idx)
            try:
                preprocessed = g.preprocess(decode_image(value, MAX_PIXELS), max_pixels=MAX_PIXELS)
            except ValueError as error:
                report(f"{name}: {error}")
                continue
            certificate = g.certify(preprocessed.pixel_values, n0=args.n0, n=args.n, alpha=args.alpha,
                                    batch_size=args.batch, seed=args.seed)
            r = {"image": name, **result(g, certificate, preprocessed, label)}
            results.append(r)
            if not args.json:
                verdict = "abstain" if r["abstained"] else f"{r['label']} (class {r['class_id']})"
                truth = f"  true label: {r['true_label']}" if "true_label" in r else ""
                print(f"{name}: {verdict}  radius={r['radius']:.3f}  pA_lower={r['pA_lower']:.4f}  "
                      f"sigma={r['sigma']}  n={r['n']}  alpha={r['alpha']}  at {r['resolution'][0]}x"
                      f"{r['resolution'][1]}{truth}")
                notes.image(name, r["note"])
        examples.close()
    notes.close()
    if args.json:
        print(json.dumps(results, indent=1))
    notes.once(CERTIFICATE_CAVEAT)
    return 1 if failed else 0
