"""Shared plumbing for the thin command-line front ends (detectron.py, convert_dataset.py)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from meddet.errors import MeddetError

logger = logging.getLogger("meddet")


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines to stderr for the CLIs (the library itself only logs, never configures)."""
    root = logging.getLogger()
    if not any(getattr(h, "_meddet", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("[%(asctime)s %(name)s %(levelname)s] %(message)s", "%H:%M:%S"))
        h._meddet = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)
    for noisy in ("PIL", "matplotlib", "urllib3", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_cli(main: Callable[[], int | None], debug: bool = False) -> int:
    """Run a CLI body: MeddetError and common OS errors become one line on stderr and exit code 2;
    a traceback only with --debug."""
    try:
        rc = main()
        return int(rc or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (MeddetError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        if debug:
            raise
        msg = str(e)
        if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)) and e.filename:
            msg = f"{e.filename}: {e.strerror}"
        print(f"error: {msg}", file=sys.stderr)
        return 2
