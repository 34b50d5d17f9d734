"""`dmae analyze LOG...`: certified-accuracy table (markdown, like the paper's), ACR and plot from certification
logs."""

import json
import sys
import warnings


def register(subparsers):
    from ..certification.analysis import DEFAULT_RADII

    parser = subparsers.add_parser(
        "analyze", help="certified accuracy, 95%% intervals and ACR from certification logs (TSV)",
        description="Certified accuracy at each radius (fraction of images with correct == 1 and radius >= r), with "
                    "two-sided 95% Clopper-Pearson intervals, and the average certified radius, from logs written by "
                    "`dmae certify` or Cohen et al.'s certify.py. With several logs, an extra row gives the best "
                    "log at each radius (as the paper's tables take the best sigma).")
    parser.add_argument("logs", nargs="+", metavar="LOG", help="certification log(s), tab-separated with a header")
    parser.add_argument("--radii", type=float, nargs="+", default=list(DEFAULT_RADII),
                        help="L2 radii (in [0, 1] pixel units) of the table columns")
    parser.add_argument("--names", nargs="+", help="row names, one per log (default: file stems)")
    parser.add_argument("--plot", help="write the certified accuracy vs radius curves to this PNG")
    parser.add_argument("--no-ci", dest="ci", action="store_false",
                        help="percentages only, without the 95%% intervals (the paper's format)")
    parser.add_argument("--json", action="store_true", help="print the full results as JSON instead of the table")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..certification.analysis import ImageSetMismatchWarning, analyze_logs, format_table

    with warnings.catch_warnings(record=True) as caught:  # a bad log raises; `dmae` prints it as one line, exit 2
        warnings.simplefilter("always", ImageSetMismatchWarning)
        results = analyze_logs(args.logs, radii=args.radii, names=args.names, plot=args.plot)
    for warning in caught:
        print(f"dmae analyze: warning: {warning.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(format_table(results, ci=args.ci))
    print()
    confidence = f"{100 * results['confidence']:g}%"
    print(f"Certified accuracy (%) at L2 radius r: images with correct == 1 and radius >= r"
          f"{f', [{confidence} Clopper-Pearson interval]' if args.ci else ''}. ACR: mean of radius * correct.")
    for row in results["rows"]:
        extra = [f"abstained {100 * row['abstention_rate']:.1f}%"]
        if row["n_unlabelled"]:
            extra.append(f"{row['n_unlabelled']} unlabelled image(s), not in the accuracy")
        if row["mean_samples"] is not None:
            extra.append(f"{row['mean_samples']:.0f} samples/image")
        if row["mean_time_s"] is not None:
            extra.append(f"{row['mean_time_s']:.2f} s/image")
        print(f"- {row['name']}: {', '.join(extra)}")
    if args.plot:
        print(f"plot: {args.plot}")
    return 0
