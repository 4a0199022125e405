"""The code each DVC stage really runs: the package files its entry script reaches through imports (lazy ones
included), so dvc.yaml can list exactly those and a change to the report does not rerun training.

    python scripts/stage_deps.py           # print each stage's code deps
    python scripts/stage_deps.py --write   # rewrite the `der_pipeline/...` deps of every stage in dvc.yaml

The walk starts at stages/<stage>.py's import of der_pipeline.cli, follows the stage command's function in
cli.py (and the cli helpers it calls), then every der_pipeline import of every module reached. It is checked
against dvc.yaml by tests/test_stage_deps.py.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "der_pipeline"


def _module_file(module: str) -> Path | None:
    rel = module.removeprefix("der_pipeline").lstrip(".").replace(".", "/")
    for cand in (PACKAGE / f"{rel}.py", PACKAGE / rel / "__init__.py"):
        if rel and cand.exists():
            return cand
    return None


def _imports(nodes) -> set[str]:
    """Every der_pipeline module imported anywhere under ``nodes`` (a module imported as a name counts)."""
    out = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("der_pipeline"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if _module_file(sub) else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("der_pipeline.")}
    return {m for m in out if _module_file(m)}


def _closure(modules: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        if m == "der_pipeline.cli":  # its commands' imports are followed one command at a time
            continue
        package = m.rsplit(".", 1)[0]
        if package != m and _module_file(package):  # importing a.b runs a/__init__.py too
            todo.append(package)
        todo += sorted(_imports([ast.parse(_module_file(m).read_text())]))
    return seen


def _command_imports(command: str) -> set[str]:
    """The modules cli.py's ``command`` function (and the cli helpers it calls) imports, and cli's own
    module-level imports."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    name = {"cross-task": "cross_task"}.get(command, command)
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    reached, todo = set(), [name]
    while todo:
        f = todo.pop()
        if f in reached or f not in funcs:
            continue
        reached.add(f)
        todo += [c.func.id for c in ast.walk(funcs[f]) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)]
        todo += [n.id for n in ast.walk(funcs[f]) if isinstance(n, ast.Name) and n.id in funcs]  # passed as values
    return _imports(top + [funcs[f] for f in reached]) | {"der_pipeline.cli"}


def stage_command(stage: str) -> str:
    """The cli command a stage script runs (stages/<stage>.py calls app([...command...]))."""
    text = (REPO / "stages" / f"{stage}.py").read_text()
    return re.search(r'app\(\["([a-z-]+)"', text).group(1)


def stage_deps(stage: str) -> list[str]:
    """The package files stage ``stage`` runs, as paths relative to the repository."""
    script = ast.parse((REPO / "stages" / f"{stage}.py").read_text())
    modules = _closure(_command_imports(stage_command(stage)) | _imports([script]))
    return sorted({"der_pipeline/__init__.py", *(str(_module_file(m).relative_to(REPO)) for m in modules)})


def main() -> None:
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    if "--write" not in sys.argv:
        for stage in stages:
            print(f"{stage}: {' '.join(stage_deps(stage))}")
        return
    text = (REPO / "dvc.yaml").read_text()
    for stage in stages:
        block = re.search(rf"(?ms)^  {stage}:.*?^    deps:\n(.*?)(?=^    \w)", text)
        old = block.group(1)
        kept = [line for line in old.splitlines() if not line.strip().startswith("- der_pipeline")]
        new = [kept[0], *[f"      - {d}" for d in stage_deps(stage)], *kept[1:]]
        text = text[:block.start(1)] + "\n".join(new) + "\n" + text[block.end(1):]
    (REPO / "dvc.yaml").write_text(text)


if __name__ == "__main__":
    main()
