"""Clean crashes: when a converting process is killed (SIGKILL), its fork server, worker processes and
resource tracker go with it within seconds (they used to run on for minutes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import REPO

# parents killed, children watched for seconds: `make test-fast` leaves them out
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]


def _session(sid: int) -> list[int]:
    """Processes of session `sid` (the killed parent started it: its children stay in it when orphaned)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.getsid(int(name)) == sid:
                    state = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        out.append(int(name))
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                pass
    return out


def test_workers_die_with_a_killed_parent():
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from meddet.data.parallel import parallel_map
        for item, res in parallel_map(time.sleep, [60] * 4, workers=2):
            pass
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while len(_session(parent.pid)) < 5 and time.time() < deadline:  # parent, tracker, server, 2 workers
            time.sleep(0.2)
        assert len(_session(parent.pid)) >= 5, "the pool did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.time() + 5
        while _session(parent.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert _session(parent.pid) == []
    finally:
        for pid in _session(parent.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
