"""The README and docs/*.md run as written: every code block, offline, in an empty folder.

- ```python blocks: each is exec'd in a fresh namespace in its own empty folder. The blocks of one document share
  one interpreter (torch and transformers are imported once per document, not once per block), started with
  HF_HUB_OFFLINE=1 and an empty HOME, so nothing comes from the network or a cache.
- ```bash blocks: each runs under `bash -e -o pipefail` in an empty folder holding links to the repository's
  `dmae_hf/`, `examples/`, `tests/` and `benchmarks/` (the blocks say "from the repository root"), with `dmae` and
  `python` meaning this checkout, offline.
- ```text blocks are output or layouts and are not run.
- A block that cannot run here (an install, a server, hours of training, files the user must download) is preceded
  by `<!-- not run: REASON -->`. Such blocks are few (`MAX_NOT_RUN`) and each gives its reason.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
DOC_PAGES = ["certification", "models-and-hub", "training-and-data", "reproduction-and-benchmarks", "web-demo",
             "architecture"]
LANGUAGES = {"python", "bash", "text"}
NOT_RUN = re.compile(r"<!-- not run: (.*?) -->")
MAX_NOT_RUN = 8
FENCE = re.compile(r"^```(\S*)\n(.*?)^```[ \t]*$", re.S | re.M)


def blocks(path: Path) -> list[dict]:
    """The fenced blocks of a markdown file: language, code, line and the `not run` reason on the line above."""
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        above = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        reason = NOT_RUN.fullmatch(above.strip())
        found.append({"doc": path.name, "line": line, "lang": match.group(1), "code": match.group(2),
                      "not_run": reason.group(1).strip() if reason else None})
    return found


BLOCKS = [block for doc in DOCS for block in blocks(doc)]
BASH = [b for b in BLOCKS if b["lang"] == "bash" and b["not_run"] is None]
PYTHON_DOCS = sorted({b["doc"] for b in BLOCKS if b["lang"] == "python" and b["not_run"] is None})


def _environment(home: Path) -> dict:
    return {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "PATH": f"{home / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin",
            "MPLBACKEND": "Agg", "HOME": str(home), "OMP_NUM_THREADS": "1", "TMPDIR": str(home)}


def _home(tmp_path: Path) -> Path:
    """An empty HOME whose bin/ maps `dmae` and `python` to this checkout and this interpreter."""
    home = tmp_path / "home"
    (home / "bin").mkdir(parents=True)
    for name, command in (("dmae", f'"{sys.executable}" -m dmae_hf "$@"'), ("python", f'"{sys.executable}" "$@"')):
        script = home / "bin" / name
        script.write_text(f"#!/bin/sh\nexec {command}\n")
        script.chmod(0o755)
    return home


RUNNER = textwrap.dedent("""
    import json, os, sys, traceback
    blocks, folder, out = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
    results = []
    for i, block in enumerate(blocks):
        cwd = os.path.join(folder, f"block{i}")
        os.makedirs(cwd)
        os.chdir(cwd)
        try:
            exec(compile(block["code"], f"{block['doc']}:{block['line']}", "exec"), {"__name__": "__main__"})
            results.append(None)
        except BaseException:
            results.append(traceback.format_exc()[-3000:])
    json.dump(results, open(out, "w"))
""")


@pytest.mark.parametrize("doc", PYTHON_DOCS)
def test_python_blocks_run(doc, tmp_path):
    todo = [b for b in BLOCKS if b["doc"] == doc and b["lang"] == "python" and b["not_run"] is None]
    home = _home(tmp_path)
    (tmp_path / "blocks.json").write_text(json.dumps(todo))
    (tmp_path / "work").mkdir()
    result = subprocess.run([sys.executable, "-c", RUNNER, str(tmp_path / "blocks.json"), str(tmp_path / "work"),
                             str(tmp_path / "results.json")], cwd=tmp_path, env=_environment(home),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{doc}: the block runner itself failed:\n{result.stderr[-3000:]}"
    failures = [f"--- {doc}:{block['line']}\n{block['code'][:300]}\n{error}"
                for block, error in zip(todo, json.loads((tmp_path / "results.json").read_text()), strict=True)
                if error is not None]
    assert not failures, f"{len(failures)} of {len(todo)} python blocks of {doc} failed:\n" + "\n".join(failures)


@pytest.mark.parametrize("block", BASH, ids=[f"{b['doc']}:{b['line']}" for b in BASH])
def test_bash_block_runs(block, tmp_path):
    home = _home(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("dmae_hf", "examples", "tests", "benchmarks"):
        (work / name).symlink_to(REPO_ROOT / name, target_is_directory=True)
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block["code"]], cwd=work, env=_environment(home),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (f"{block['doc']}:{block['line']} exited with {result.returncode}:\n"
                                    f"{block['code']}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")


def test_every_block_is_collected_and_declared():
    """Every fence names its language; the runnable ones are most of them, and none is silently skipped."""
    for doc in DOCS:
        text = doc.read_text()
        assert text.count("```") == 2 * len(blocks(doc)), f"{doc.name}: an unclosed or nested code fence"
    undeclared = [f"{b['doc']}:{b['line']} ({b['lang'] or 'no language'})" for b in BLOCKS
                  if b["lang"] not in LANGUAGES]
    assert not undeclared, f"code blocks must be ```python, ```bash or ```text: {undeclared}"
    runnable = [b for b in BLOCKS if b["lang"] != "text" and b["not_run"] is None]
    assert len(runnable) >= 20 and len([b for b in BLOCKS if b["doc"] == "README.md" and b in runnable]) >= 5


def test_blocks_not_run_are_few_and_say_why():
    markers = [(doc.name, m.group(1)) for doc in DOCS for m in NOT_RUN.finditer(doc.read_text())]
    marked = [b for b in BLOCKS if b["not_run"] is not None]
    assert len(markers) == len(marked), "a `<!-- not run: ... -->` comment must sit on the line above a code block"
    assert len(marked) <= MAX_NOT_RUN, [f"{b['doc']}:{b['line']}: {b['not_run']}" for b in marked]
    vague = [f"{b['doc']}:{b['line']}" for b in marked if len(b["not_run"].split()) < 4 or b["lang"] == "text"]
    assert not vague, f"each block not run needs a reason of a few words (and text blocks need no marker): {vague}"


def test_readme_starts_with_the_two_newcomer_commands():
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    commands = [line for line in lines[:6] if line.startswith("pip install")]
    assert len(commands) == 2 and "dmae demo" in commands[0] and "pytest" in commands[1]
    assert 'pip install -e ".[test]" && HF_HUB_OFFLINE=1 python -m pytest -n 2 -q' in commands[1]


def test_readme_is_a_front_door():
    text = (REPO_ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; the details belong in docs/"
    first_screen = "\n".join(lines[:15])
    assert "radius" in first_screen and "1 - alpha" in first_screen, "the first screen says what a certificate is"
    assert "certified accuracy" in "\n".join(lines[:45]), "the first screen shows what `dmae demo` prints"
    assert "CERTIFICATE_CAVEAT" in text and "not that the answer is right" in text
    for page in DOC_PAGES:
        assert f"(docs/{page}.md" in text, f"README.md does not link docs/{page}.md"


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", path.read_text())
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_links_between_the_docs_resolve():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", doc.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            name, _, anchor = target.partition("#")
            path = (doc.parent / name).resolve() if name else doc
            if not path.exists():
                broken.append(f"{doc.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken


def test_docs_name_no_machine_data_folder():
    """Data is a Hub id or a path the user gives; the repository's own small fixture is tests/data/."""
    hits = [doc.name for doc in DOCS if "../shared" in doc.read_text() or "shared/data" in doc.read_text()]
    assert not hits, hits


def test_no_path_of_this_machine_in_the_project():
    """No absolute path of the folder that holds the checkout (the build machine's) in any tracked text file."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    needle = f"{REPO_ROOT.parent}/".encode()
    hits = [name for name in files.splitlines() if (REPO_ROOT / name).is_file()
            and needle in (REPO_ROOT / name).read_bytes()]
    assert len(files.splitlines()) > 50 and not hits, hits
