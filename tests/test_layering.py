"""The library's imports point down: the foundation uses no part, and a part uses only the parts below it.

The order is the one `emojich/__init__.py` lists (the order data flows). Modules at the top of the
package (`cli`, `standins`) may use everything. Two parts at the same level never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import emojich

PACKAGE = Path(emojich.__file__).parent

# Lowest first. A part may import itself and any part with a smaller level.
LEVELS = {
    "foundation": 0,
    "text": 1,
    "data": 2,
    "models": 3,
    "fidelity": 4,
    "upscale": 5,
    "train": 6,
    "generate": 7,
    "segment": 8,
    "lineage": 9,
    "bot": 10,
}
TOP = 99  # emojich/cli.py, emojich/standins.py, emojich/__init__.py


def part_of(module: str) -> str | None:
    """`emojich.generate.cell` -> `generate`; a top-level module or a non-emojich name -> None."""
    parts = module.split(".")
    if parts[0] != "emojich" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LEVELS else None


def level_of(module: str) -> int:
    part = part_of(module)
    return LEVELS[part] if part else TOP


def module_name(path: Path, package: Path) -> str:
    relative = path.relative_to(package.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every emojich import in a file, function-local imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("emojich")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emojich"):
            if node.module == "emojich":  # `from emojich import standins` names a module
                found += [(node.lineno, f"emojich.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return sorted(found)


def violations(package: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(package.rglob("*.py")):
        importer = module_name(path, package)
        own = part_of(importer)
        if own is None:
            continue  # the top of the package may import anything
        for line, target in imported_modules(path):
            if target == "emojich.__version__":
                continue
            other = part_of(target)
            if other == own:
                continue
            if other is None or LEVELS[other] >= LEVELS[own]:
                where = path.relative_to(package.parent)
                problems.append(f"{where}:{line}: {own} (level {LEVELS[own]}) imports {target}")
    return problems


def test_every_file_belongs_to_a_part_or_the_top():
    loose = [path.name for path in PACKAGE.glob("*.py") if path.stem not in ("__init__", "cli", "standins")]
    assert not loose, f"modules in the emojich/ root that belong to a part: {loose}"
    folders = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert folders == set(LEVELS), (
        f"sub-packages without a level here, or levels without a package: {folders ^ set(LEVELS)}"
    )


def test_imports_point_down_only():
    problems = violations()
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_the_check_catches_an_upward_import(tmp_path):
    """The stand-in writer used to live in `models/` and import `segment` and the BPE tokenizer."""
    package = tmp_path / "emojich"
    (package / "models").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models" / "__init__.py").write_text("")
    (package / "models" / "standin.py").write_text(
        "from emojich.models.dalle import Dalle\n"
        "def write_unet():\n"
        "    from emojich.segment.unet import build_unet\n"
        "from emojich import standins\n"
    )
    (package / "foundation").mkdir()
    (package / "foundation" / "__init__.py").write_text("")
    (package / "foundation" / "storage.py").write_text("import emojich.text.bpe\n")
    found = violations(package)
    assert found == [
        "emojich/foundation/storage.py:1: foundation (level 0) imports emojich.text.bpe",
        "emojich/models/standin.py:3: models (level 3) imports emojich.segment.unet",
        "emojich/models/standin.py:4: models (level 3) imports emojich.standins",
    ]
