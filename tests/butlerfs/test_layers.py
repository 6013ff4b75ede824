"""butlerfs imports only downwards (the order of butlerfs/__init__.py), and butler never
imports butlerfs: the FUSE layer stays a thin client of the library."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "butlerfs"
LIBRARY = PACKAGE.parent / "butler"

#: Top to bottom: a module may import only modules listed after it.
ORDER = [
    "demo",
    "cli",
    "daemon",
    "operations",
    "live",
    "access",
    "passthrough",
    "handles",
    "attributes",
    "xattrs",
    "writes",
    "tree",
    "entries",
    "scratch",
    "inodes",
    "worker",
    "errors",
    "logbook",
    "exits",
    "options",
    "systemd",
]


def imported(path: Path, package: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == package:
                names.update(alias.name for alias in node.names)
            elif node.module.startswith(package + "."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(
                alias.name.split(".")[1]
                for alias in node.names
                if alias.name.startswith(package + ".")
            )
    return names


def test_every_module_is_placed() -> None:
    modules = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert modules == set(ORDER)


def test_imports_go_downwards() -> None:
    for index, name in enumerate(ORDER):
        below = set(ORDER[index + 1 :]) | {"__version__"}
        wrong = imported(PACKAGE / f"{name}.py", "butlerfs") - below
        assert not wrong, f"butlerfs.{name} imports {wrong} from above it"


def test_the_library_never_imports_the_mount() -> None:
    for path in LIBRARY.rglob("*.py"):
        source = path.read_text()
        assert "import butlerfs" not in source and "from butlerfs" not in source, path


def test_the_mount_asks_the_view_not_the_resolver() -> None:
    """butlerfs uses butler.view.View (and the Butler's public API), never the resolver's
    attributes: what the mount needs from the library is a View method."""
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                assert node.attr != "resolver", f"{path.name}:{node.lineno} reads .resolver"
            if isinstance(node, ast.ImportFrom) and node.module == "butler.resolver":
                names = {alias.name for alias in node.names}
                assert names <= {"DatasetRef"}, f"{path.name} imports {names} from the resolver"
