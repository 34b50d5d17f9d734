"""The package's modules import one way: no cycles, and no private name (`_x`) taken from another module.

The graph is read from the modules' own source (every `import` statement, also those inside functions), so a
lazy import that closes a cycle is caught as well."""

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "dmae_hf"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(importer: str, node: ast.ImportFrom) -> str:
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports(name: str):
    """(imported module, imported names) for every import of a dmae_hf module in `name`."""
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "dmae_hf":
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            target = resolve(name, node) if node.level else node.module or ""
            if target.split(".")[0] != "dmae_hf":
                continue
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            if submodules:  # `from . import commands`: an edge to each submodule
                yield from ((m, []) for m in submodules)
                names = [n for n in names if f"{target}.{n}" not in MODULES]
                if not names:
                    continue
            yield target, names


def graph():
    return {name: {target for target, _ in imports(name) if target in MODULES and target != name} for name in MODULES}


def find_cycle(edges):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read():
    edges = graph()
    assert len(MODULES) > 20 and "dmae_hf.smoothing" in edges["dmae_hf.modeling_dmae"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the checker finds cycles


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_private_name_is_imported_across_modules():
    offences = [f"{name} imports {target}.{n}" for name in MODULES for target, names in imports(name)
                for n in names if n.startswith("_") and target != name]
    for path in [*(REPO_ROOT / "examples").rglob("*.py"), *(REPO_ROOT / "benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dmae_hf"):
                offences += [f"{path.name} imports {node.module}.{a.name}"
                             for a in node.names if a.name.startswith("_")]
    assert not offences, offences


def test_the_portable_model_imports_only_its_flat_siblings():
    """What the remote-code route copies next to a checkpoint (model, processor and the custom pipeline) must not
    reach into the rest of the package."""
    portable = {"dmae_hf.configuration_dmae", "dmae_hf.modeling_dmae", "dmae_hf.image_processing_dmae",
                "dmae_hf.smoothing", "dmae_hf.sampling", "dmae_hf.defaults", "dmae_hf.smoothed_classifier",
                "dmae_hf.pipeline_dmae", "dmae_hf.input_checks", "dmae_hf.load_report", "dmae_hf.remote_code"}
    edges = graph()
    for name in portable:
        assert edges[name] <= portable, f"{name} imports {sorted(edges[name] - portable)}"
