"""Serve the meddet web app with waitress: `python webapp/web.py --model PATH_OR_REPO_ID [--port 8000]`.

The script form of `meddet web` / `meddet-web` (meddet.cli.web); meddet must be installed (`pip install -e .`)."""

from __future__ import annotations

import sys

from meddet.cli.web import main

if __name__ == "__main__":
    sys.exit(main())
