"""pyproject.toml: what the node imports, `./giaoban.sh serve` installs.

The serve command installs the project's dependencies only (not the test extra): a package the
node's code imports but only the test extra names works in CI and fails for a newcomer.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = ("server", "recording", "signaling")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules(package: str) -> dict[str, set[str]]:
    """Top-level modules imported by `package`'s files (absolute imports), with the files."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OURS:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_package_the_node_imports_is_a_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {
        _normal(re.split(r"[\[=<>!~ ;]", d, maxsplit=1)[0]) for d in project["dependencies"]
    }
    distributions = packages_distributions()
    imported: dict[str, set[str]] = {}
    for package in OURS:
        for module, files in _imported_modules(package).items():
            imported.setdefault(module, set()).update(files)
    assert {"aiortc", "aiohttp", "av"} <= set(imported), "the scan finds the node's imports"
    undeclared = {
        module: sorted(files)
        for module, files in imported.items()
        if not {_normal(d) for d in distributions.get(module, [])} & declared
    }
    assert undeclared == {}
