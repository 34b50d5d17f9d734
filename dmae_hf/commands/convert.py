"""`dmae convert`: official DMAE or transformers ViTMAE checkpoints -> dmae-hf checkpoints (`dmae_hf.hub.convert`)."""


class PresetChoices:
    """The names of `dmae_hf.configuration_dmae.ARCHITECTURES`, as argparse `choices`. The table is read when argparse
    needs it (a `--preset` to check, `--help` to print), not when the parser is built, which imports no transformers
    (hence the explicit metavar: argparse formats the metavar of every option it adds)."""

    def _names(self) -> list[str]:
        from ..configuration_dmae import ARCHITECTURES

        return list(ARCHITECTURES)

    def __iter__(self):
        return iter(self._names())

    def __contains__(self, name) -> bool:
        return name in self._names()


def register(subparsers):
    parser = subparsers.add_parser(
        "convert",
        help="convert an official DMAE or a transformers ViTMAE checkpoint to a dmae-hf checkpoint",
        description="Convert an official DMAE pre-training (.pth, {'model': state_dict} or a raw state dict) or "
        "fine-tuned classifier checkpoint, or a transformers ViTMAEForPreTraining directory, into a dmae-hf "
        "checkpoint directory: model.safetensors, config.json, preprocessor_config.json and a README.md model card. "
        "Pickles are read with torch.load(weights_only=True) only.",
    )
    parser.add_argument("source", help="checkpoint file (.pth/.bin/.safetensors) or transformers model directory")
    parser.add_argument("output_dir", help="directory to write the dmae-hf checkpoint into")
    parser.add_argument("--preset", choices=PresetChoices(), metavar="PRESET",  # a metavar: not read at build time
                        help="architecture to expect, one of %(choices)s (checked against the weights; gives the "
                        "head counts)")
    parser.add_argument("--num-heads", type=int, help="encoder attention heads (default: from --preset, config.json "
                        "or the official heads of the width, dmae_hf.hub.convert.OFFICIAL_HEADS)")
    parser.add_argument("--decoder-num-heads", type=int, help="decoder attention heads (default: as --num-heads, "
                        "OFFICIAL_DECODER_HEADS)")
    parser.add_argument("--normalization", choices=["imagenet", "cifar10"], default="imagenet",
                        help="mean/std the model normalises with (cifar10 also selects the 32x32 processor)")
    parser.add_argument("--sigma", type=float, help="smoothing noise level of a classifier (required for "
                        "classifiers); pre-training noise of a pre-training checkpoint")
    parser.add_argument("--num-labels", type=int, help="number of classes (checked against the head)")
    parser.add_argument("--labels", help="class names: comma-separated, or a file with one name per line "
                        "(default for a 10-class CIFAR-10 head: the CIFAR-10 names)")
    parser.add_argument("--name", help="model name in the model card (default: the repo or directory name)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="upload the converted folder to this Hub repository "
                        "(a repo id, or a dmae-hf short name -> $DMAE_HF_NAMESPACE/name)")
    parser.add_argument("--private", action="store_true", help="create the Hub repository as private")
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..hub.convert import convert

    # a CheckpointError (a ValueError) or OSError becomes one line and exit status 2 in `dmae_hf.cli.main`
    model = convert(args.source, args.output_dir, name=args.name, push_to_hub=args.push_to_hub,
                    private=args.private, preset=args.preset, num_heads=args.num_heads,
                    decoder_num_heads=args.decoder_num_heads, normalization=args.normalization, sigma=args.sigma,
                    num_labels=args.num_labels, labels=args.labels)
    params = sum(p.numel() for p in model.parameters())
    print(f"{type(model).__name__} ({params / 1e6:.2f}M parameters) written to {args.output_dir}"
          + (f" and pushed to {args.push_to_hub}" if args.push_to_hub else ""))
    return 0
