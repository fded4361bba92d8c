"""The declared layers (docs/ARCHITECTURE.md, "Layers"; the import-linter contracts in pyproject.toml) hold:
no module imports from a higher layer and no sibling modules import each other in a cycle, in-function
imports included."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return subprocess.run(
        [exe, "--no-cache"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )


def test_the_layers_contract_is_kept():
    done = _lint_imports(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def _copy_with(tmp_path: Path, module: str, added: str) -> Path:
    """A copy of the packages and pyproject.toml with `added` (an in-function import) appended to `module`."""
    for name in ("meddet", "webapp"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _added():\n    {added}\n", encoding="utf-8")
    return tmp_path


def test_an_upward_import_breaks_the_contract(tmp_path):
    # The pixel reader reaching up to the applications.
    done = _lint_imports(_copy_with(tmp_path, "meddet.io.image", "from meddet.apps.predict import predict"))
    assert done.returncode != 0
    assert "meddet.io.image -> meddet.apps.predict" in done.stdout


def test_a_cycle_inside_a_layer_breaks_the_contract(tmp_path):
    # meddet.io.recipe imports meddet.io.dicom; the way back closes a cycle.
    done = _lint_imports(_copy_with(tmp_path, "meddet.io.dicom", "from meddet.io.recipe import PreprocessRecipe"))
    assert done.returncode != 0
    assert "No cycles are allowed in meddet.io" in done.stdout
