"""Serving the app with waitress: JSON error bodies with the app's security headers even for the errors
waitress answers itself (oversize or malformed requests), request bodies buffered in memory, and a private
temporary folder (mode 0700) for anything a library might still write, removed on exit and, when a
crashed run left it behind, at the next start."""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from meddet.data.parallel import process_alive

if TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger(__name__)

TMP_PREFIX = "meddet-web-"


def remove_stale_tmp(root: str | os.PathLike) -> list[Path]:
    """Remove this user's `meddet-web-*` folders under `root` whose server is gone (its pid is not running,
    or a folder of an older version, named without a pid); returns them."""
    removed = []
    for d in Path(root).glob(TMP_PREFIX + "*"):
        try:
            if not d.is_dir() or d.is_symlink() or d.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        suffix = d.name[len(TMP_PREFIX) :]
        if suffix.isdigit() and int(suffix) != os.getpid() and process_alive(int(suffix)):
            continue
        if suffix.isdigit() and int(suffix) == os.getpid():
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def private_tmp(root: str | os.PathLike | None = None) -> Path:
    """This process's private temporary folder (0700), made the default of `tempfile` and of child
    processes (TMPDIR); stale folders of crashed runs are removed first; removed on exit (normal
    exit, SIGTERM, SIGINT, SIGHUP; after SIGKILL, by the next start)."""
    root = Path(root or tempfile.gettempdir())
    for d in remove_stale_tmp(root):
        logger.warning("removed a temporary folder left by a server that stopped abnormally: %s", d.name)
    d = root / f"{TMP_PREFIX}{os.getpid()}"
    d.mkdir(mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    tempfile.tempdir = str(d)
    os.environ["TMPDIR"] = str(d)

    def cleanup() -> None:
        shutil.rmtree(d, ignore_errors=True)

    atexit.register(cleanup)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: (_ for _ in ()).throw(SystemExit(0)))
    return d


def _json_error_channel(max_upload_mb: float) -> type:
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    from webapp.app import SECURITY_HEADERS

    class JsonErrorTask(ErrorTask):
        """waitress's own error answers (413 over its body limit, 400 malformed, 431 headers too large) as
        the app's JSON error body with its security headers."""

        def execute(self) -> None:
            e = self.request.error
            code = int(getattr(e, "code", 400))
            if code == 413:
                message = f"upload too large: the limit is {max_upload_mb:g} MB"
            elif code == 431:
                message = "request headers too large"
            elif code >= 500:
                message = "internal server error"
            else:
                message = f"bad request: {str(getattr(e, 'body', '') or getattr(e, 'reason', '')).strip()}"
            body = json.dumps({"error": {"status": code, "message": message}}).encode("utf-8")
            self.status = f"{code} {e.reason}"
            self.response_headers.extend(
                [("Content-Type", "application/json"), ("Cache-Control", "no-store"), *SECURITY_HEADERS.items()]
            )
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JsonErrorChannel(HTTPChannel):
        error_task_class = JsonErrorTask

    return JsonErrorChannel


def serve_app(app: Flask, host: str, port: int, threads: int, max_upload_mb: float) -> None:
    """Serve `app` until interrupted. waitress's body limit is a little above the app's, so Flask answers
    most oversize uploads; larger declared bodies are answered by waitress, in the same JSON form."""
    from waitress.server import BaseWSGIServer, create_server

    body_limit = int(max_upload_mb * 1024 * 1024) + 1024 * 1024
    # request bodies and answers (which may hold the image, include_image=1) buffered in memory: waitress
    # would otherwise spool them to temporary files over 512 KB / 1 MB
    # recv_bytes: read uploads in 256 KB chunks (waitress's 8 KB makes a 14 MB DICOM take twice as long)
    server = create_server(
        app,
        host=host,
        port=port,
        threads=threads,
        max_request_body_size=body_limit,
        inbuf_overflow=body_limit,
        outbuf_overflow=2**40,
        recv_bytes=256 * 1024,
    )
    channel = _json_error_channel(max_upload_mb)
    servers = (
        [server]
        if isinstance(server, BaseWSGIServer)
        else [s for s in getattr(server, "map", {}).values() if isinstance(s, BaseWSGIServer)]
    )
    for s in servers:
        s.channel_class = channel
    try:
        server.run()
    except KeyboardInterrupt:
        pass
