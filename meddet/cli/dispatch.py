"""The `meddet` command (`meddet <command> [options]`, `python -m meddet`) and detectron.py's
`-c <command>` form of the same commands: one module per command in meddet.cli, each with its own options,
so `--help` of a command shows only that command's options."""

from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType

from meddet import __version__
from meddet.cli import (
    compare,
    convert,
    convert_weights,
    evaluate,
    experiment,
    explain,
    export,
    predict,
    push,
    train,
    tune,
    web,
)
from meddet.cli.base import run_cli, setup_logging, split_ensemble

# command name -> module (add_arguments(parser), run(args) -> exit code; optionally execute(args), which then
# sets up logging and error reporting itself, and SPLIT_ENSEMBLE: the --ensemble members end at a config key)
COMMANDS: dict[str, ModuleType] = {
    "train": train,
    "evaluate": evaluate,
    "predict": predict,
    "tune": tune,
    "compare": compare,
    "explain": explain,
    "export": export,
    "push": push,
    "convert-weights": convert_weights,
    "experiment": experiment,
    "convert": convert,
    "web": web,
}
# The commands of detectron.py's -c form (convert and web have their own scripts there).
DASH_C_COMMANDS = tuple(c for c in COMMANDS if c not in ("convert", "web"))

_NO_INTERMIXED = ("convert", "web")  # subcommands of their own / no positional arguments


def _command_parser(name: str, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    COMMANDS[name].add_arguments(parser)
    return parser


def _new_parser(name: str, prog: str) -> argparse.ArgumentParser:
    mod = COMMANDS[name]
    return argparse.ArgumentParser(
        prog=prog, description=mod.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def build_parser(prog: str = "meddet") -> argparse.ArgumentParser:
    """`meddet` with one subcommand per command (its `--help` lists them)."""
    return _build(prog)[0]


def _build(prog: str) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    p = argparse.ArgumentParser(
        prog=prog,
        description=f"meddet: object detection in medical images. `{prog} COMMAND --help` shows a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="detectron.py -c COMMAND ... runs the same commands (except convert and web: convert_dataset.py, "
        "webapp/web.py).",
    )
    p.add_argument("--version", action="version", version=f"meddet {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parsers = {}
    for name, mod in COMMANDS.items():
        sp = sub.add_parser(
            name, help=mod.HELP, description=mod.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        parsers[name] = _command_parser(name, sp)
    return p, parsers


def _parse_command(name: str, parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    if name in _NO_INTERMIXED:
        args = parser.parse_args(argv)
    else:
        args = parser.parse_intermixed_args(argv)  # options may come before or after the KEY VALUE overrides
    args.command = name
    if getattr(COMMANDS[name], "SPLIT_ENSEMBLE", False):
        split_ensemble(args)
    return args


def parse_args(argv: list[str] | None = None, prog: str = "meddet") -> argparse.Namespace:
    """`meddet COMMAND [options]` -> the command's namespace (`command` names it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top, parsers = _build(prog)
    if not argv or argv[0] not in COMMANDS:
        return top.parse_args(argv)  # --help, --version, or argparse's error naming the commands
    return _parse_command(argv[0], parsers[argv[0]], argv[1:])


def run_command(args: argparse.Namespace) -> int:
    """Run a parsed command (errors propagate: `execute` turns them into one line and an exit code)."""
    return COMMANDS[args.command].run(args)


def execute(args: argparse.Namespace) -> int:
    """Run a parsed command as a CLI: logging to stderr, a MeddetError as one line and exit code 2
    (a traceback with --debug)."""
    mod = COMMANDS[args.command]
    if hasattr(mod, "execute"):
        return mod.execute(args)
    debug = bool(getattr(args, "debug", False))
    setup_logging(logging.DEBUG if debug else logging.INFO)
    return run_cli(lambda: mod.run(args), debug=debug)


def main(argv: list[str] | None = None, prog: str = "meddet") -> int:
    """The `meddet` console script."""
    return execute(parse_args(argv, prog))


# ---------------------------------------------------------------------------- detectron.py -c COMMAND
def _pop_command(argv: list[str]) -> tuple[str | None, list[str]]:
    """The value of -c/--command (anywhere in `argv`, as argparse reads it) and the other arguments."""
    for i, tok in enumerate(argv):
        if tok == "--":
            break
        if tok == "-c" or (len(tok) >= 5 and "--command".startswith(tok)):
            if i + 1 < len(argv):
                return argv[i + 1], argv[:i] + argv[i + 2 :]
            return None, argv
        if tok.startswith("--command="):
            return tok.split("=", 1)[1], argv[:i] + argv[i + 1 :]
        if tok.startswith("-c") and not tok.startswith("--"):
            return tok[2:].lstrip("="), argv[:i] + argv[i + 1 :]
    return None, argv


def dash_c_parser(prog: str = "detectron.py", description: str | None = None) -> argparse.ArgumentParser:
    """detectron.py's own parser: -c COMMAND (its --help lists the commands)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"`{prog} -c COMMAND --help` shows a command's options. Commands:\n"
        + "\n".join(f"  {n:16s} {COMMANDS[n].HELP}" for n in DASH_C_COMMANDS),
    )
    p.add_argument("-c", "--command", required=True, choices=DASH_C_COMMANDS, help="what to do")
    return p


def parse_dash_c(
    argv: list[str] | None = None, prog: str = "detectron.py", description: str | None = None
) -> argparse.Namespace:
    """`detectron.py -c COMMAND [options] [KEY VALUE ...]` -> the command's namespace, as `parse_args`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    name, rest = _pop_command(argv)
    if name not in DASH_C_COMMANDS:
        return dash_c_parser(prog, description).parse_args(argv)  # --help, or the error of a missing/unknown -c
    return _parse_command(name, _command_parser(name, _new_parser(name, f"{prog} -c {name}")), rest)
