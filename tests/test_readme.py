"""The README's examples run as written: every ```python block that follows a `<!-- runnable -->` marker."""

import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

BLOCKS = re.findall(r"<!-- runnable -->\s*```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, data_dir):
    env_path = f"{REPO_ROOT}"
    result = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]],
        cwd=tmp_path,
        env={"PYTHONPATH": env_path, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg",
             "DMAE_DATA_DIR": str(data_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_readme_starts_with_the_two_newcomer_commands():
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    commands = [line for line in lines[:6] if line.startswith("pip install")]
    assert len(commands) == 2 and "dmae demo" in commands[0] and "pytest" in commands[1]
