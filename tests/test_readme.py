"""The README's examples run as written: every ```python block, in a fresh interpreter in an empty folder."""

import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)


def test_every_python_block_is_collected():
    assert len(BLOCKS) == README.count("```python") >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg",
             "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"README python block {index}:\n{BLOCKS[index][:300]}\n{result.stderr[-3000:]}"


def test_no_path_of_this_machine_in_the_project():
    """No absolute path of the folder that holds the checkout (the build machine's) in any tracked text file."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    needle = f"{REPO_ROOT.parent}/".encode()
    hits = [name for name in files.splitlines() if (REPO_ROOT / name).is_file()
            and needle in (REPO_ROOT / name).read_bytes()]
    assert len(files.splitlines()) > 50 and not hits, hits


def test_readme_starts_with_the_two_newcomer_commands():
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    commands = [line for line in lines[:6] if line.startswith("pip install")]
    assert len(commands) == 2 and "dmae demo" in commands[0] and "pytest" in commands[1]
