"""The served web app (webapp/web.py under waitress, a real process): no upload left on disk after a kill,
JSON errors with security headers for what waitress answers itself, too many form fields named as such."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from bundle_fixture import shared_run, synthetic_dicom
from conftest import REPO

# real waitress servers in subprocesses, killed and restarted (~25 s): `make test-fast` leaves them out
pytestmark = pytest.mark.slow

SECRET = b"P_SECRET_042"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return shared_run(tmp_path_factory)[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(bundle: Path, tmp: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "webapp" / "web.py"),
            "--model",
            str(bundle),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--max-upload-mb",
            "1",
            "--max-memory",
            "512",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode())
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("server did not start")


def _raw(port: int, request: bytes) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _files_with(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_kill_mid_upload_leaves_nothing_and_a_restart_cleans_up(bundle, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dcm = synthetic_dicom(tmp_path / "d.dcm", size=(600, 500)).read_bytes()
    assert SECRET in dcm
    port = _free_port()
    proc = _start(bundle, tmp, port)
    private = tmp / f"meddet-web-{proc.pid}"
    assert private.is_dir() and (private.stat().st_mode & 0o777) == 0o700
    boundary = "b0und4ry"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.dcm"\r\n'
            f"Content-Type: application/dicom\r\n\r\n"
        ).encode()
        + dcm
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
        f"multipart/form-data; boundary={boundary}"
        f"\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + body[: len(body) - 100])  # the patient data is sent, the request not finished
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert _files_with(tmp, SECRET) == []
    assert private.is_dir()  # a crashed run's folder stays until the next start
    proc2 = _start(bundle, tmp, _free_port())
    try:
        assert not private.exists()  # stale folder removed at startup
        assert [p.name for p in tmp.iterdir()] == [f"meddet-web-{proc2.pid}"]
    finally:
        proc2.terminate()
        proc2.wait(20)
    assert list(tmp.iterdir()) == []  # removed on a clean exit (SIGTERM)


def test_every_server_error_is_json_with_security_headers(bundle, tmp_path):
    port = _free_port()
    proc = _start(bundle, tmp_path, port)
    try:
        # a declared body over waitress's own limit: waitress answers before the app sees it
        status, headers, body = _raw(
            port,
            b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
            b"multipart/form-data; boundary=b\r\nContent-Length: 50000000\r\n\r\n",
        )
        assert status == 413 and headers["content-type"] == "application/json"
        assert (
            headers["x-content-type-options"] == "nosniff" and "frame-ancestors" in headers["content-security-policy"]
        )
        assert "upload too large: the limit is 1 MB" in json.loads(body)["error"]["message"]
        # a body over the app's limit but under waitress's: Flask answers, the same way
        status, headers, body = _raw(
            port,
            b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
            b"multipart/form-data; boundary=b\r\nContent-Length: 1500000\r\n\r\n" + b"x" * 1_500_000,
        )
        assert status == 413 and "upload too large" in json.loads(body)["error"]["message"]
        assert headers["x-content-type-options"] == "nosniff"
        # malformed request: waitress's 400
        status, headers, body = _raw(
            port, b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: abc\r\n\r\n"
        )
        assert status == 400 and headers["content-type"] == "application/json"
        assert headers["x-frame-options"] == "DENY" and json.loads(body)["error"]["status"] == 400
    finally:
        proc.terminate()
        proc.wait(20)


def test_too_many_form_fields_says_so(tmp_path_factory):
    from meddet.hub import load_predictor
    from webapp import create_app

    predictor = load_predictor(shared_run(tmp_path_factory)[1], device="cpu")
    client = create_app(predictor, max_upload_mb=64).test_client()
    fields = {f"f{i}": "x" for i in range(300)}
    fields["file"] = (io.BytesIO(b"\x89PNG\r\n\x1a\n"), "x.png")
    r = client.post("/api/v1/predict", data=fields, content_type="multipart/form-data")
    assert r.status_code == 413
    msg = r.get_json()["error"]["message"]
    assert "too many form fields" in msg and "upload too large" not in msg
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_app_errors_are_json_with_security_headers(tmp_path_factory):
    from meddet.hub import load_predictor
    from webapp import create_app

    predictor = load_predictor(shared_run(tmp_path_factory)[1], device="cpu")
    app = create_app(predictor)
    client = app.test_client()

    class Broken:
        class_names = predictor.class_names

        def read(self, data, **kwargs):
            raise RuntimeError("boom /secret/path")

    app.config["MEDDET_SERVICE"].predictor = Broken()
    png = b"\x89PNG\r\n\x1a\n" + bytes.fromhex("0000000d49484452000000080000000808000000004b6d29de")
    for method, path, status in (
        ("get", "/nope", 404),
        ("get", "/api/v1/predict", 405),
        ("post", "/api/v1/predict", 500),
    ):
        kwargs = (
            {"data": {"file": (io.BytesIO(png), "x.png")}, "content_type": "multipart/form-data"}
            if method == "post"
            else {}
        )
        r = getattr(client, method)(path, **kwargs)
        assert r.status_code == status and r.is_json, (path, r.status_code)
        assert r.get_json()["error"]["status"] == status
        assert r.headers["X-Content-Type-Options"] == "nosniff" and "Content-Security-Policy" in r.headers
        assert "secret" not in r.get_data(as_text=True)
