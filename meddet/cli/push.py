"""Push a model bundle to the Hugging Face Hub.

meddet push --bundle bundles/run --repo-id ORG/NAME [--private] [--revision BRANCH]
"""

from __future__ import annotations

import argparse

from meddet.cli.base import add_debug

HELP = "push a model bundle to the Hugging Face Hub"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default="", metavar="DIR", help="the bundle folder")
    p.add_argument("--repo-id", default="", metavar="ORG/NAME", help="Hugging Face repository")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", default=None, help="branch to commit to")
    add_debug(p)


def run(args: argparse.Namespace) -> int:
    from meddet.errors import ConfigError
    from meddet.hub import push_bundle

    if not args.bundle or not args.repo_id:
        raise ConfigError("push needs --bundle BUNDLE_DIR and --repo-id ORG/NAME")
    url = push_bundle(args.bundle, args.repo_id, private=args.private, revision=args.revision)
    print(f"pushed {args.bundle} -> {url}")
    return 0
