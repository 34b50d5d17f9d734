"""Start-up cost of the package and of the command line, against transformers' own floor, in one run.

    python benchmarks/import_time.py [--repeats 5] [--repo PATH]

Each case runs in a fresh interpreter (`python -c ...`), `--repeats` times; the median wall time is printed. The
baseline is `from transformers import PreTrainedModel`: what any transformers model class costs to import, and so
the least that registering DMAE with the Auto classes can cost. `--repo` measures another checkout (e.g. an older
commit in a `git worktree`) with the same interpreter.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "dmae --help": "import sys; sys.argv = ['dmae', '--help']\n"
                   "try:\n    import dmae_cli; dmae_cli.main()\nexcept ImportError:\n"
                   "    from dmae_hf.cli import main; main()\nexcept SystemExit:\n    pass",
    "import dmae_hf": "import dmae_hf",
    "baseline: from transformers import PreTrainedModel": "from transformers import PreTrainedModel",
    "import torch": "import torch",
}


def median_time(code: str, repo: Path, repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, cwd=tempfile.gettempdir())  # not the checkout: --repo decides
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="runs per case (default: 5)")
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]),
                        help="checkout to measure (default: this one)")
    args = parser.parse_args()
    results = {name: median_time(code, Path(args.repo), args.repeats) for name, code in CASES.items()}
    baseline = results["baseline: from transformers import PreTrainedModel"]
    print("| case | median s | / baseline |\n| --- | ---: | ---: |")
    for name, seconds in results.items():
        print(f"| {name} | {seconds:.2f} | {seconds / baseline:.2f} |")


if __name__ == "__main__":
    main()
