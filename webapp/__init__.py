"""meddet web app: `create_app(model=...)` (Flask); serve with `python webapp/web.py --model PATH_OR_REPO_ID`."""

from webapp.app import create_app

__all__ = ["create_app"]
