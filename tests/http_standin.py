"""A loopback HTTP file server for download tests: serves bytes by path, honours ``Range: bytes=N-`` (206),
and can cut a response half-way (sends the full Content-Length, writes half, closes the connection).
Requests are recorded as (path, Range header or None)."""

from __future__ import annotations

import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class LoopbackServer:
    """A threaded HTTP server on a free loopback port, started by ``with``; subclasses give `_handler()`
    (a BaseHTTPRequestHandler class) and call `_listen()` at the end of their ``__init__``."""

    def _listen(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class FileServer(LoopbackServer):
    """``with FileServer() as srv: srv.files["/a/b.pkl"] = data; url = srv.url + "/a/b.pkl"``.

    ``srv.cut.add(path)`` cuts the next response for ``path`` half-way; ``srv.ranges = False`` ignores
    Range headers (answers 200 with the whole file)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.ranges = True
        self.requests: list[tuple[str, str | None]] = []
        self._listen()

    def _handler(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = unquote(urlparse(self.path).path)
                rng = self.headers.get("Range")
                srv.requests.append((path, rng))
                data = srv.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if m and srv.ranges:
                    start = int(m.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                if path in srv.cut:
                    srv.cut.discard(path)
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.end_headers()
                self.wfile.write(body)

        return Handler
