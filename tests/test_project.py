"""The project's own hygiene: lint, format, types, and the README's promises to CI."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, check=False
    )


def test_ruff_finds_nothing_to_lint():
    result = run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing_to_format():
    result = run("ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_finds_no_type_error_in_the_package():
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^(?:\$ )?(python3 -m venv .+)$", section, flags=re.MULTILINE)


def test_the_readme_quickstart_is_exactly_two_commands():
    commands = quickstart_commands()
    assert len(commands) == 2, commands
    assert any("demo" in c for c in commands)
    assert any("pytest" in c for c in commands)


def test_ci_runs_the_readme_test_command_unchanged():
    (test_command,) = [c for c in quickstart_commands() if "pytest" in c]
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci_script.splitlines()


def test_no_code_cites_a_document_outside_the_repository():
    # The contract the code follows is the README's; a reader of the code has no other file.
    citing = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("monitor", "tests", "bench", "migrations")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "SPEC" + ".md" in line or "SPEC" + " §" in line
    ]
    assert citing == []
