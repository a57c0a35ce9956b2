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
    assert "2 kept, 0 broken" in result.stdout


def _tree_with(tmp_path: Path, *, module: str, line: str) -> Path:
    """A copy of the tree's packages and contracts in ``tmp_path``, ``line`` added to
    ``module`` (a path under the root)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in (*PACKAGES, "lakeloop"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / module).open("a") as source:
        source.write(f"\n{line}\n")
    return tmp_path


def test_an_upward_import_breaks_the_floors(tmp_path: Path) -> None:
    """The core importing the tooling (the demo's market) is named as a broken contract."""
    tree = _tree_with(
        tmp_path, module="lakeloop/rowkeys.py", line="from tooling import market  # upward"
    )
    result = _lint_imports(tree)
    assert result.returncode != 0
    assert "lakeloop is not allowed to import tooling" in result.stdout
    assert "lakeloop.rowkeys -> tooling.market" in result.stdout


def test_a_core_module_importing_litestar_breaks_the_web_free_core(tmp_path: Path) -> None:
    """Only ``lakeloop.swagger`` (the services' Swagger page) may bring Litestar into the core."""
    tree = _tree_with(
        tmp_path, module="lakeloop/serving.py", line="from litestar import Litestar  # noqa"
    )
    result = _lint_imports(tree)
    assert result.returncode != 0
    assert "lakeloop is not allowed to import litestar" in result.stdout
    assert "lakeloop.serving -> litestar" in result.stdout
