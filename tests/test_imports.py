"""The package's import graph: no cycles, and imports at the top of files.

Every `import` / `from ... import` of a tf_mistral module is read from the source (wherever it
sits: at the top or inside a function), as the module it names. A submodule's import of one of
its own parent packages (`import tf_mistral` inside `tf_mistral.export.saved_model`) is not an
edge: a package's `__init__` runs before its submodules, and `tf_mistral`'s only maps names lazily.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Source folder -> package it installs as (`export/` installs as tf_mistral.export, see setup.py).
PACKAGES = {ROOT / "tf_mistral": "tf_mistral", ROOT / "export": "tf_mistral.export"}


def module_files():
    """{module name: path} of every .py file of the package (export/ included)."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = module_files()
# Modules allowed to import tf_mistral modules inside functions, and why.
LAZY = {
    "tf_mistral.tflite_runner": "LiteRT alone runs prefill / decode; TensorFlow (sampling, the tokenizer) loads on "
                                "the first generate, so a 7B int8 file runs with little more memory than its size",
}


def imported_modules(name, path):
    """[(imported tf_mistral module, line, at top)] of the module `name` at `path`."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for target in targets:
            if target in MODULES:
                found.append((target, node.lineno, id(node) in top))
    return found


def import_graph():
    """{module: {imported module: line}}, without a submodule's imports of its own parents."""
    graph = {}
    for name, path in MODULES.items():
        edges = {}
        for target, line, _ in imported_modules(name, path):
            if target != name and not name.startswith(target + "."):
                edges.setdefault(target, line)
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state = {}  # module -> "open" while on the path, "done" after

    def visit(node, path):
        state[node] = "open"
        for target in graph[node]:
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target, path + [target])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_walker_sees_every_package_and_the_exporters():
    assert {"tf_mistral", "tf_mistral.cli", "tf_mistral.export.tflite", "tf_mistral.tokenizer.loading"} <= set(MODULES)
    graph = import_graph()
    assert "tf_mistral.tokenizer" in graph["tf_mistral.export.saved_model"]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}}) is None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])
    ) + f" -> {cycle[-1]}"


@pytest.mark.parametrize("name", sorted(set(MODULES) - set(LAZY)))
def test_tf_mistral_modules_are_imported_at_the_top(name):
    inside = [
        f"line {line}: {target}" for target, line, at_top in imported_modules(name, MODULES[name]) if not at_top
    ]
    assert not inside, f"{name} imports tf_mistral modules inside functions: {inside}"
