"""Importing meddet (training included) sends nothing over the network: albumentations' update check, which
asks PyPI on import unless NO_ALBUMENTATIONS_UPDATE is set, is turned off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import socket, sys
opened = []
def connect(self, address):
    opened.append(address)
    raise OSError("network blocked by the test")
socket.socket.connect = connect
import meddet.data.transforms, meddet.training, meddet.apps.predict  # noqa: F401
print("CONNECTS", opened)
"""


def test_importing_meddet_opens_no_connection():
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    assert "CONNECTS []" in out, out
