"""The command-line front ends: `meddet <command>` (console script; `python -m meddet`), detectron.py's
`-c <command>` form, `meddet-convert` (convert_dataset.py) and `meddet-web` (webapp/web.py).

One module per command (train, evaluate, predict, tune, compare, explain, export, push, convert_weights,
experiment, convert, web): `add_arguments(parser)` declares its options, `run(args)` calls the application
(meddet.apps, meddet.hub, meddet.training, ...) and prints. `base` holds the shared plumbing (logging set-up,
one-line errors), `dispatch` the parsing and running of a command. Importing them imports no torch: the
commands import what they need when they run."""

from meddet.cli.base import run_cli, setup_logging
from meddet.cli.dispatch import COMMANDS, execute, main, parse_args, parse_dash_c, run_command

__all__ = ["COMMANDS", "execute", "main", "parse_args", "parse_dash_c", "run_cli", "run_command", "setup_logging"]
