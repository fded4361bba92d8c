"""`python -m meddet COMMAND ...`: the `meddet` command (meddet.cli)."""

import sys

from meddet.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m meddet"))
