"""Each stage of dvc.yaml depends on exactly the library code it runs: the files `stages/<name>.py`
imports, directly or through other library modules (a folder stands for all of its files).

A missing dependency lets a code change leave stale outputs behind; a surplus one re-runs a stage
for code it never runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("scrape", "prepare", "upscale", "tokenize", "finetune", "generate", "segment", "stickers")


def module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def library_closure(start: Path) -> set[Path]:
    """Every emojich module file reached from `start` (package `__init__`s on the way included)."""
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported(path):
            parts = name.split(".")
            if parts[0] != "emojich":
                continue
            for end in range(2, len(parts) + 1):
                found = module_file(".".join(parts[:end]))
                if found is not None and found not in seen:
                    todo.append(found)
    return {path for path in seen if path.is_relative_to(ROOT / "emojich")}


def runs_code(path: Path) -> bool:
    """An `__init__` holding only a docstring (and `__version__`) runs nothing a stage depends on."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return path.name != "__init__.py" or any(not isinstance(node, ast.Expr | ast.Assign) for node in body)


def declared(stage: str) -> set[Path]:
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]["deps"]
    files: set[Path] = set()
    for dep in deps:
        path = ROOT / dep
        if not dep.startswith("emojich/") or (path.is_file() and path.suffix != ".py"):
            continue  # data a stage reads (a pinned file list, say), not code
        files |= set(path.rglob("*.py")) if path.is_dir() else {path}
    return files


@pytest.mark.parametrize("stage", STAGES)
def test_stage_deps_are_the_code_it_runs(stage):
    runs = {path for path in library_closure(ROOT / "stages" / f"{stage}.py") if runs_code(path)}
    listed = {path for path in declared(stage) if runs_code(path)}
    missing = sorted(str(path.relative_to(ROOT)) for path in runs - listed)
    surplus = sorted(str(path.relative_to(ROOT)) for path in listed - runs)
    assert not missing, f"{stage} runs code dvc.yaml does not list: {missing}"
    assert not surplus, f"{stage} lists code it never runs: {surplus}"
