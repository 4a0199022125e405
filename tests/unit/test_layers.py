"""The package's layers are what its folders say: data -> experts -> specialists -> generate -> signals -> router
-> evaluate -> serve, over a foundation of top-level modules (params, schemas, file I/O, paths), with the entry
points (cli, ask, demo) on top. A module imports only its own layer or lower ones, and the import graph has no
cycle. Every import counts, lazy ones (inside functions) included: a lazy import hides a cycle, not removes it.
"""
import ast
from pathlib import Path

import pytest
from conftest import REPO

PACKAGE = REPO / "der_pipeline"
LAYERS = ["data", "experts", "specialists", "generate", "signals", "router", "evaluate", "serve"]
FOUNDATION = {"config", "schemas", "io", "writer_lock", "params_trace", "tree_store", "resumable", "artifacts"}
ENTRY = {"cli", "ask", "demo"}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every der_pipeline module ``path`` imports, anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("der_pipeline"):
            base = node.module.removeprefix("der_pipeline").lstrip(".")
            for alias in node.names:  # `from der_pipeline.router import ppo` imports the module ppo
                sub = f"{base}.{alias.name}" if base else alias.name
                out.add(sub if (PACKAGE / sub.replace(".", "/")).with_suffix(".py").exists() else base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("der_pipeline."):
                    out.add(alias.name.removeprefix("der_pipeline."))
    return {m for m in out if m}


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    return {module_name(f): imports_of(f) for f in package.rglob("*.py") if module_name(f)}


def rank(module: str) -> int:
    top = module.split(".")[0]
    if top in ENTRY:
        return len(LAYERS) + 1
    if top in LAYERS:
        return LAYERS.index(top) + 1
    assert top in FOUNDATION, f"{module}: a top-level module that is neither foundation nor an entry point"
    return 0


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(g.get(m, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    assert find_cycle(graph()) is None, f"import cycle: {' -> '.join(find_cycle(graph()))}"


def test_no_module_imports_a_higher_layer():
    bad = [f"{m} imports {d}" for m, deps in graph().items() for d in deps if rank(d) > rank(m)]
    assert not bad, "layering violations:\n" + "\n".join(sorted(bad))


def test_artifacts_holds_paths_and_loaders_only():
    deps = graph()["artifacts"]
    assert not any(d.split(".")[0] in LAYERS for d in deps), deps


@pytest.mark.parametrize("module, allowed", [("router.ppo", {"config", "router.arrays", "router.env"}),
                                             ("router.arrays", {"config", "schemas"})])
def test_the_algorithm_and_the_arrays_import_only_what_they_need(module, allowed):
    assert graph()[module] <= allowed, graph()[module] - allowed


def test_the_checker_finds_the_cycle_the_architecture_issue_reported(tmp_path):
    """The old layout's cycle (artifacts -> router.ppo -> router.arrays -> artifacts, the first lazily)."""
    pkg = tmp_path / "der_pipeline"
    (pkg / "router").mkdir(parents=True)
    (pkg / "artifacts.py").write_text("def load_policy():\n    from der_pipeline.router.ppo import Agent\n")
    (pkg / "router" / "ppo.py").write_text("from der_pipeline.router.arrays import TreeArrays\n")
    (pkg / "router" / "arrays.py").write_text("from der_pipeline.artifacts import dataset_params\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, pkg
    try:
        cycle = find_cycle(graph(pkg))
    finally:
        PACKAGE = saved
    assert cycle is not None and set(cycle) == {"artifacts", "router.ppo", "router.arrays"}
