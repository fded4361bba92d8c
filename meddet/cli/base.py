"""Shared plumbing of the command-line front ends (`meddet`, detectron.py, convert_dataset.py, the demos):
logging set-up, one-line errors, and the options several commands share."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from meddet.errors import MeddetError

if TYPE_CHECKING:
    from meddet.config import CfgNode

logger = logging.getLogger("meddet")

# A config key (UPPER.CASE dotted) in the KEY VALUE overrides.
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


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


# ---------------------------------------------------------------------------- options shared by commands
def add_config(p: argparse.ArgumentParser, what: str = "YAML config (may use _BASE_)") -> None:
    """--config-file and the KEY VALUE overrides."""
    p.add_argument("--config-file", default="", metavar="FILE", help=what)
    p.add_argument(
        "opts",
        nargs="*",
        metavar="KEY VALUE",
        help="config overrides, e.g. SOLVER.BASE_LR 0.001 OUTPUT_DIR output/x (options may come before or after them)",
    )


def add_ensemble(p: argparse.ArgumentParser, help: str) -> None:
    """--ensemble MODEL ...; a config key after the members starts the overrides (see `split_ensemble`)."""
    p.add_argument("--ensemble", nargs="+", default=[], metavar="MODEL", help=help)


ENSEMBLE_HELP = (
    "more models fused with the configured one by ENSEMBLE.* (run config YAMLs, run folders, bundle folders "
    "or Hub repo ids); classes are matched by name"
)


def add_untuned(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--untuned",
        action="store_true",
        help="ignore the run's tune/tuned_config.yaml (from tune) and use the thresholds of the config as it is",
    )


def add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def split_ensemble(args: argparse.Namespace) -> argparse.Namespace:
    """`--ensemble A B KEY VALUE ...`: nargs="+" also takes the overrides after the members; a config key
    (UPPER.CASE dotted) ends the member list."""
    members = getattr(args, "ensemble", None) or []
    for i, item in enumerate(members):
        if CONFIG_KEY.match(item):
            args.opts = members[i:] + list(getattr(args, "opts", []))
            args.ensemble = members[:i]
            break
    return args


def load_cfg(args: argparse.Namespace) -> CfgNode:
    """The config of --config-file with the KEY VALUE overrides."""
    from meddet.config import load_config

    return load_config(args.config_file or None, args.opts)


def load_run_cfg(args: argparse.Namespace) -> CfgNode:
    """A run's config as predict and evaluate use it: with the run's tuned thresholds unless --untuned
    (`meddet.config.tuned.load_run_config`)."""
    from meddet.config.tuned import load_run_config

    return load_run_config(args.config_file or None, args.opts, tuned=not args.untuned, ensemble=bool(args.ensemble))
