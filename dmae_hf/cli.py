"""The `dmae` command line. Each sub-command lives in `dmae_hf/commands/<name>.py` and defines
`register(subparsers)`, which adds its parser and sets `func` (called with the parsed arguments).

Building the parser imports no torch and no transformers. The `dmae` console script (`dmae_cli.py`) imports the
package without registering it with transformers, so `dmae --help` answers at once; `main` registers
(`dmae_hf.register`) only when a command runs. A command's error is printed as one line,
`dmae <command>: error: <message>`, with exit status 2; `--debug` shows the traceback instead.
"""

import argparse
import importlib
import os
import pkgutil
import sys

from . import commands
from .commands import HelpFormatter

DEBUG_ENV = "DMAE_DEBUG"


class ArgumentParser(argparse.ArgumentParser):
    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="dmae", description="DMAE models and certified-robust classification.")
    parser.add_argument("--debug", action="store_true", default=os.environ.get(DEBUG_ENV, "") not in ("", "0"),
                        help=f"show the full traceback of an error (also ${DEBUG_ENV}=1)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from . import register

    try:
        register()
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(f"dmae {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one line for the user; --debug for the traceback
        if args.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"dmae {args.command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
