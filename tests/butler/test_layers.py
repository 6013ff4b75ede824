"""butler imports only downwards: no import cycle, and the layers of docs/design.md.

Every module (or subpackage) of ``butler/`` has a place in ORDER; it may import only
modules placed after it.  Imports inside functions count too: a late import that
hides a cycle is still a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "butler"

#: Top to bottom: a module may import only modules listed after it.
ORDER = [
    "cli",
    "demo",
    "view",
    "maintenance",
    "butler",
    "resolver",
    "ordering",
    "aggregator",
    "transaction",
    "removal",
    "steps",
    "prepare",
    "recovery",
    "apply",
    "repository",
    "settle",
    "locks",
    "group",
    "postgres",
    "registry",
    "journal",
    "durable",
    "confine",
    "policy",
    "overlap",
    "formats",
    "template",
    "config",
    "yamlio",
    "suggest",
    "progress",
    "layout",
    "faults",
    "errors",
]

#: Names a module may take from the package itself (``from butler import X``).
PACKAGE_NAMES = {"Butler": "butler", "DataRepository": "repository", "DatasetRef": "resolver"}


def unit_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "butler":
                for alias in node.names:
                    if alias.name != "__version__":
                        names.add(PACKAGE_NAMES.get(alias.name, alias.name))
            elif node.module.startswith("butler."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(
                alias.name.split(".")[1] for alias in node.names if alias.name.startswith("butler.")
            )
    return names


def test_every_module_is_placed() -> None:
    units = {unit_of(path) for path in PACKAGE.rglob("*.py")} - {"__init__", "__main__"}
    assert units == set(ORDER)


def test_imports_go_downwards() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = unit_of(path)
        if unit in ("__init__", "__main__"):
            continue
        below = set(ORDER[ORDER.index(unit) + 1 :]) | {unit}
        wrong = imported(path) - below
        assert not wrong, f"{path.relative_to(PACKAGE.parent)} imports {wrong} from above it"


def test_each_module_imports_alone() -> None:
    """Each module imports first, in a fresh interpreter (a cycle would fail here)."""
    modules = [f"butler.{name}" for name in ORDER]
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)"
    for module in modules:
        done = subprocess.run(
            [sys.executable, "-c", script, module], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"{module}: {done.stderr}"


def test_the_library_stays_free_of_the_mount_and_of_heavy_imports() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, butler; "
            "print(sorted(m for m in ('trio', 'pyfuse3', 'astropy', 'numpy', 'h5py') "
            "if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
