"""Fuzz the served web app with hostile uploads, on loopback only, bounded in count and time.

Starts `webapp/web.py` (waitress on 127.0.0.1, a free port) with a model bundle (default: the tests' tiny
blob-detector bundle, built in a temporary folder), sends `--count` generated uploads from `--clients`
threads (decompression bombs in each format and bit depth, the 8900x8900 16-bit RGB PNG of issue 19,
truncations, header lies, random bytes, field floods, slow and oversize bodies, malformed requests) and
reports the status counts, 5xx answers other than 503, whether the server crashed, and its peak RSS
(VmHWM) against its idle RSS with the model loaded plus the configured request memory budget.

    python benchmarks/web_fuzz.py [--model BUNDLE] [--count 1000] [--clients 4] [--max-memory 1024]
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's meddet, the one the server runs


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(w: int, h: int, depth: int, colour: int, full: bool = False) -> bytes:
    """A PNG declaring w x h; `full`: its IDAT really decompresses to the whole (zero) image."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = 1 + w * channels * depth // 8
    if full:
        comp = zlib.compressobj(9)
        zero_rows = b"\x00" * (row * 64)
        parts = [comp.compress(zero_rows) for _ in range(h // 64)]
        parts.append(comp.compress(b"\x00" * (row * (h % 64))))
        parts.append(comp.flush())
        idat = b"".join(parts)
    else:
        idat = zlib.compress(b"\x00" * 4096)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def make_corpus(rng: random.Random, tmp: Path) -> dict[str, list[bytes]]:
    import cv2
    import numpy as np

    sys.path.insert(0, str(REPO / "tests"))
    from bundle_fixture import synthetic_dicom

    nrng = np.random.default_rng(0)
    grey = nrng.integers(0, 40, (96, 120), dtype=np.uint8)
    grey[20:50, 30:60] = 220
    valid = [
        cv2.imencode(".png", grey)[1].tobytes(),
        cv2.imencode(".jpg", grey)[1].tobytes(),
        cv2.imencode(".png", (grey.astype(np.uint16) * 257))[1].tobytes(),
        cv2.imencode(".png", np.dstack([grey] * 3).astype(np.uint16) * 257)[1].tobytes(),
        synthetic_dicom(tmp / "a.dcm", size=(160, 128)).read_bytes(),
    ]
    bombs = []
    for depth, colour in ((8, 0), (16, 0), (8, 2), (16, 2), (8, 6), (16, 6), (8, 4), (16, 4)):
        for side in (9000, 20000, 65535):
            bombs.append(png_bomb(side, side, depth, colour))
    jpg = bytearray(valid[1])
    sof = jpg.index(b"\xff\xc0")
    for h, w in ((60000, 50000), (65535, 65535), (9000, 9000)):
        j = bytearray(jpg)
        j[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
        bombs.append(bytes(j))
    for bits in (8, 16):  # TIFF headers declaring huge images
        entries = [(256, 4, 1, 60000), (257, 4, 1, 60000), (258, 3, 1, bits), (277, 3, 1, 3)]
        ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
        bombs.append(b"II*\x00" + struct.pack("<I", 8) + ifd)
    import pydicom

    lies = []
    for rows, cols, bits in ((60000, 60000, 16), (40000, 40000, 8), (8, 8, 16), (5000, 5000, 32)):
        ds = pydicom.dcmread(tmp / "a.dcm")
        ds.Rows, ds.Columns, ds.BitsAllocated = rows, cols, bits
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=False)
        lies.append(buf.getvalue())
    try:
        from pydicom.data import get_testdata_file

        j2k = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
        for r in (8, 30000):
            j2k.Rows = j2k.Columns = r
            buf = io.BytesIO()
            j2k.save_as(buf, enforce_file_format=False)
            lies.append(buf.getvalue())
    except Exception:
        pass
    truncs = []
    for data in valid:
        for _ in range(6):
            truncs.append(data[: rng.randrange(1, len(data))])
    big = [png_bomb(8900, 8900, 16, 2, full=True), png_bomb(8900, 8900, 8, 0, full=True)]
    return {"valid": valid, "bomb": bombs, "lie": lies, "trunc": truncs, "big": big}


def multipart(fields: list[tuple[str, bytes, bool]], boundary: str = "fuzzb0undary") -> tuple[bytes, str]:
    out = io.BytesIO()
    for name, value, is_file in fields:
        out.write(f"--{boundary}\r\n".encode())
        if is_file:
            out.write(
                f'Content-Disposition: form-data; name="{name}"; filename="x"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n".encode()
            )
        else:
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def send(port: int, raw: bytes, slow: bool = False, timeout: float = 60) -> int:
    """One request on its own connection; the status code, or 0 when no answer came (closed, timeout)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            if slow:
                step = max(1, len(raw) // 8)
                for i in range(0, len(raw), step):
                    s.sendall(raw[i : i + step])
                    time.sleep(0.1)
            else:
                s.sendall(raw)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = None
            for line in head.split(b"\r\n")[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            while length is None or len(body) < length:  # the whole answer (keep-alive or not)
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
    except (OSError, ValueError):
        return 0
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def post(body: bytes, ctype: str, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return (
        f"POST /api/v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {n}\r\n\r\n"
    ).encode() + body


def one_request(rng: random.Random, corpus: dict, state: dict) -> tuple[str, bytes, bool]:
    """(kind, raw request, slow) of one generated hostile request."""
    r = rng.random()
    if r < 0.03 and state["big_left"] > 0:
        state["big_left"] -= 1
        kind, data = "big_8900", rng.choice(corpus["big"])
    elif r < 0.30:
        kind, data = "bomb", rng.choice(corpus["bomb"])
    elif r < 0.42:
        kind, data = "header_lie", rng.choice(corpus["lie"])
    elif r < 0.57:
        kind, data = "truncated", rng.choice(corpus["trunc"])
    elif r < 0.67:
        kind, data = "valid", rng.choice(corpus["valid"])
    elif r < 0.74:
        kind, data = "random_bytes", bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 3000)))
    elif r < 0.82:
        n = rng.choice([50, 150, 1000, 3000])
        body, ctype = multipart([(f"f{i}", b"x", False) for i in range(n)] + [("file", corpus["valid"][0], True)])
        return "field_flood", post(body, ctype), False
    elif r < 0.88:
        body, ctype = multipart([("file", rng.choice(corpus["valid"] + corpus["bomb"]), True)])
        return "slow_body", post(body, ctype), True
    elif r < 0.93:
        return (
            "oversize",
            post(b"x" * 1024, "multipart/form-data; boundary=x", length=rng.choice([70 * 2**20, 2**31, 10**12])),
            False,
        )
    else:
        junk = rng.choice(
            [
                b"GARBAGE\r\n\r\n",
                b"POST /api/v1/predict HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                b"POST /api/v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
            ]
        )
        return "malformed", junk, False
    body, ctype = multipart([("file", data, True)])
    return kind, post(body, ctype), False


def peak_rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS VmHWM) of a process in MiB, from /proc."""
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":")
            vals[k] = int(v.split()[0]) / 1024
    return vals.get("VmRSS", 0.0), vals.get("VmHWM", 0.0)


def build_bundle(root: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from bundle_fixture import make_run

    from meddet.hub import export_bundle

    return export_bundle(make_run(root), root / "bundle")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="bundle folder (default: build the tests' tiny bundle)")
    ap.add_argument("--count", type=int, default=1000, help="uploads to send (default 1000)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--max-memory", type=float, default=1024, help="server's --max-memory in MB (default 1024)")
    ap.add_argument("--max-seconds", type=float, default=600, help="stop sending after this long (default 600)")
    ap.add_argument("--big", type=int, default=6, help="how many real 8900x8900 PNGs to send (default 6)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="meddet-fuzz-") as tmpdir:
        tmp = Path(tmpdir)
        model = Path(args.model) if args.model else build_bundle(tmp / "model")
        corpus = make_corpus(rng, tmp)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server_tmp = tmp / "server_tmp"
        server_tmp.mkdir()
        proc = subprocess.Popen(
            [
                sys.executable,
                str(REPO / "webapp" / "web.py"),
                "--model",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--device",
                "cpu",
                "--threads",
                "4",
                "--max-memory",
                str(args.max_memory),
            ],
            env={**os.environ, "TMPDIR": str(server_tmp)},
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "server.log", "wb"),
        )
        try:
            deadline = time.time() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=1):
                        break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        print((tmp / "server.log").read_text()[-3000:])
                        return 2
                    time.sleep(0.3)
            idle_rss, _ = peak_rss_mb(proc.pid)
            counts: collections.Counter = collections.Counter()
            by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
            lock = threading.Lock()
            state = {"sent": 0, "big_left": args.big}
            stop_at = time.time() + args.max_seconds
            t0 = time.time()

            def client(seed: int) -> None:
                crng = random.Random(seed)
                while True:
                    with lock:
                        if state["sent"] >= args.count or time.time() > stop_at or proc.poll() is not None:
                            return
                        state["sent"] += 1
                        kind, raw, slow = one_request(crng, corpus, state)
                    status = send(port, raw, slow)
                    with lock:
                        counts[status] += 1
                        by_kind[kind][status] += 1

            threads = [threading.Thread(target=client, args=(args.seed * 100 + i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.time() - t0
            alive = proc.poll() is None
            healthy = False
            if alive:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/health", timeout=5) as r:
                        healthy = r.status == 200
                except OSError:
                    pass
                _, peak = peak_rss_mb(proc.pid)
            else:
                peak = float("nan")
            leftovers = [p for p in server_tmp.rglob("*") if p.is_file()]
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        sent = sum(counts.values())
        bad_5xx = sum(n for s, n in counts.items() if s >= 500 and s != 503)
        print(f"uploads sent: {sent} from {args.clients} clients in {elapsed:.1f} s (loopback, port {port})")
        print("status counts: " + ", ".join(f"{s or 'no answer'}: {n}" for s, n in sorted(counts.items())))
        for kind in sorted(by_kind):
            print(f"  {kind:13s} " + ", ".join(f"{s or 'none'}: {n}" for s, n in sorted(by_kind[kind].items())))
        print(f"5xx other than 503: {bad_5xx}")
        print(f"server crashed: {'no' if alive else 'YES'}; healthy after: {'yes' if healthy else 'NO'}")
        print(f"files left in the server's temporary folder: {len(leftovers)}")
        bound = idle_rss + args.max_memory
        print(
            f"peak RSS {peak:,.0f} MiB; idle RSS with the model {idle_rss:,.0f} MiB + budget {args.max_memory:,.0f} MiB"
            f" = {bound:,.0f} MiB -> {'within' if peak <= bound else 'OVER'}"
        )
        return 0 if (alive and healthy and bad_5xx == 0 and peak <= bound and not leftovers) else 1


if __name__ == "__main__":
    sys.exit(main())
