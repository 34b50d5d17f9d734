"""The `dmae` console script.

`import dmae_hf` registers the DMAE classes with transformers, which imports torch and transformers (seconds). The
command line needs neither to build its parser, so this launcher imports the package with the registration deferred
(`DMAE_HF_DEFER_REGISTRATION`, removed again at once so that child processes register as usual), and
`dmae_hf.cli.main` registers when a command actually runs: `dmae --help` answers in a fraction of a second.
"""

import os
import sys


def main() -> int:
    os.environ["DMAE_HF_DEFER_REGISTRATION"] = "1"
    try:
        from dmae_hf.cli import main as cli_main
    finally:
        os.environ.pop("DMAE_HF_DEFER_REGISTRATION", None)
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
