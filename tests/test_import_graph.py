"""The package's modules import one way: no cycles, no private name (`_x`) taken from another module, no import of
a higher layer, and the portable set that checkpoints carry for remote code imports only itself.

The graph is read from the modules' own source (every `import` statement, also those inside functions), so a
lazy import that closes a cycle or reaches up a layer is caught as well."""

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "dmae_hf"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
ROOT = "dmae_hf"


def root_exports() -> dict:
    """The lazy exports of the package root (`_EXPORTS` in dmae_hf/__init__.py): name -> module."""
    for node in ast.walk(ast.parse(MODULES[ROOT].read_text())):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return {f"{ROOT}.{k}": f"{ROOT}.{v}" for k, v in ast.literal_eval(node.value).items()}
    return {}


def resolve(importer: str, node: ast.ImportFrom) -> str:
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def statement_imports(name: str, node):
    """(imported module, imported names) for each dmae_hf module one statement of `name` imports."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == ROOT:
                yield alias.name, []
    elif isinstance(node, ast.ImportFrom):
        target = resolve(name, node) if node.level else node.module or ""
        if target.split(".")[0] != ROOT:
            return
        names = [a.name for a in node.names]
        if target == ROOT:  # `from dmae_hf import SmoothedClassifier`: an edge to the module that defines it
            exported = [n for n in names if f"{ROOT}.{n}" in EXPORTS]
            yield from ((EXPORTS[f"{ROOT}.{n}"], []) for n in exported)
            names = [n for n in names if n not in exported]
            if not names:
                return
        submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
        if submodules:  # `from . import commands`: an edge to each submodule
            yield from ((m, []) for m in submodules)
            names = [n for n in names if f"{target}.{n}" not in MODULES]
            if not names:
                return
        yield target, names


def imports(name: str):
    """(imported module, imported names) for every import of a dmae_hf module in `name`."""
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        yield from statement_imports(name, node)


EXPORTS = root_exports()


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


# ------------------------------------------------------------------------------------------------------------ layers
# Lowest first. A module imports its own layer and those below, never one above. A module belongs to the layer of
# the longest name below that is it or a package holding it; a new flat module must be placed here.
LAYERS = [
    ["dmae_hf.defaults"],
    ["dmae_hf.configuration_dmae", "dmae_hf.modeling_dmae", "dmae_hf.image_processing_dmae", "dmae_hf.smoothing",
     "dmae_hf.sampling", "dmae_hf.sequential", "dmae_hf.input_checks", "dmae_hf.load_report", "dmae_hf.remote_code",
     "dmae_hf.image_datasets", "dmae_hf.hub.reach"],
    ["dmae_hf.smoothed_classifier"],
    ["dmae_hf.pipeline_dmae"],
    ["dmae_hf.certification", "dmae_hf.hub", "dmae_hf.training"],
    ["dmae_hf.web"],
    ["dmae_hf.commands", "dmae_hf.cli", "dmae_hf.__main__"],
    [ROOT],  # the package root registers everything (lazily, in `register()`); importing it is exempt below
]
# The one upward edge: the model's `certify`/`predict` are thin calls that build g, imported inside the methods.
ALLOWED_UPWARD = {("dmae_hf.modeling_dmae", "dmae_hf.smoothed_classifier")}


def layer(name: str) -> int:
    placed = [(len(prefix), i) for i, names in enumerate(LAYERS) for prefix in names
              if name == prefix or name.startswith(prefix + ".")]
    assert placed, f"{name} has no layer: add it to LAYERS in tests/test_import_graph.py"
    return max(placed)[1]


def top_level_imports(name: str) -> set:
    """The dmae_hf modules `name` imports when it is imported (statements outside functions)."""
    tree = ast.parse(MODULES[name].read_text())
    lazy = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)}
    return {target for node in ast.walk(tree) if id(node) not in lazy
            for target, _ in statement_imports(name, node)}


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)
    assert layer("dmae_hf.hub.reach") < layer("dmae_hf.hub.names") == layer("dmae_hf.training.loop")


def test_no_module_imports_a_higher_layer():
    edges = graph()
    offences = [f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
                for name in sorted(edges) for target in sorted(edges[name])
                if target != ROOT and layer(target) > layer(name) and (name, target) not in ALLOWED_UPWARD]
    assert not offences, "\n".join(offences)


def test_the_allowed_upward_import_is_lazy():
    for name, target in ALLOWED_UPWARD:
        assert target in graph()[name], f"{name} no longer imports {target}: drop it from ALLOWED_UPWARD"
        assert target not in top_level_imports(name), f"{name} imports {target} at module level"
    assert layer("dmae_hf.web.app") > layer("dmae_hf.certification.dataset")  # the rule has teeth: web -> commands
    assert layer("dmae_hf.commands.serve") > layer("dmae_hf.web.app")  # is upward, commands -> web is not


# ---------------------------------------------------------------------------------------------------- remote code
def test_the_portable_set_imports_only_itself():
    """What the remote-code route copies next to a checkpoint (the custom pipeline and the flat files it imports, the
    model's files for `auto_map`) is flat and reaches into nothing else of the package."""
    from transformers.dynamic_module_utils import get_relative_import_files

    from dmae_hf.remote_code import portable_files

    auto_map = [PACKAGE / f"{m}.py" for m in ("modeling_dmae", "configuration_dmae", "image_processing_dmae")]
    files = {*portable_files(), *auto_map, *(Path(f) for m in auto_map for f in get_relative_import_files(m))}
    assert all(path.parent == PACKAGE and path.is_file() for path in files)
    portable = {f"{ROOT}.{path.stem}" for path in files}
    assert {"dmae_hf.pipeline_dmae", "dmae_hf.smoothed_classifier", "dmae_hf.modeling_dmae", "dmae_hf.smoothing",
            "dmae_hf.configuration_dmae", "dmae_hf.image_processing_dmae", "dmae_hf.defaults"} <= portable
    edges = graph()
    for name in sorted(portable):
        assert edges[name] <= portable, (f"{name} imports {sorted(edges[name] - portable)}, which remote code does "
                                         "not carry: transformers finds only `from .module import name` imports")
