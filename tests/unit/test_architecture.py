"""The floors of ARCHITECTURE.md are held by import contracts (`make lint` runs them): the tree
keeps them, and an upward import added on purpose breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("tooling", "deployments", "flows", "api", "gateway", "lakefs_local", "monitoring")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # import-linter is a pinned dev dependency, not an optional tool: missing, it is a failure.
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} is missing: `make install` installs it"
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_its_floors() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_floors(tmp_path: Path) -> None:
    """The core importing the tooling (the demo's market) is named as a broken contract."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in (*PACKAGES, "lakeloop"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "lakeloop" / "rowkeys.py").open("a") as module:
        module.write("\nfrom tooling import market  # upward, on purpose\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "lakeloop is not allowed to import tooling" in result.stdout
    assert "lakeloop.rowkeys -> tooling.market" in result.stdout
