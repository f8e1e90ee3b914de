"""The package layout follows the data flow: each package imports only those before it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "monitor"

#: The packages in the order data flows through them; `cli` and the root come last.
ORDER = ("core", "config", "aws", "store", "exposition", "alerts", "poll", "service", "demo")


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "monitor" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in ORDER else None


def _imports() -> set[tuple[str, str]]:
    """(importing package, imported package) for every import between two packages."""
    found: set[tuple[str, str]] = set()
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        importer = _package_of(".".join(relative.parts))
        if importer is None:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                imported = _package_of(name)
                if imported is not None and imported != importer:
                    found.add((importer, imported))
    return found


def test_every_module_lives_in_a_package_of_the_data_flow() -> None:
    loose = sorted(
        path.name
        for path in PACKAGE.glob("*.py")
        if path.name not in {"__init__.py", "__main__.py", "cli.py"}
    )
    assert loose == []
    assert {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()} == set(
        ORDER
    )


def test_no_package_imports_one_that_comes_after_it() -> None:
    back_up = {
        (importer, imported)
        for importer, imported in _imports()
        if ORDER.index(imported) > ORDER.index(importer)
    }
    assert back_up == set()


def test_every_package_says_what_it_owns() -> None:
    for name in ORDER:
        docstring = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert docstring, f"monitor/{name}/__init__.py has no docstring"
