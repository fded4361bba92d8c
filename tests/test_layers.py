"""The declared layers (docs/ARCHITECTURE.md, "Layers"; the import-linter contract in pyproject.toml) hold:
no module imports from a higher layer, in-function imports included."""
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
    return subprocess.run([exe, "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_layers_contract_is_kept():
    done = _lint_imports(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    # A copy of the package with one new upward import (the pixel reader reaching up to the applications).
    for name in ("meddet", "webapp"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    image = tmp_path / "meddet" / "io" / "image.py"
    image.write_text(image.read_text(encoding="utf-8") + "\n\ndef _up():\n    from meddet.tasks import predict\n",
                     encoding="utf-8")
    done = _lint_imports(tmp_path)
    assert done.returncode != 0
    assert "meddet.io.image -> meddet.tasks" in done.stdout
