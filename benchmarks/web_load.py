"""Load run of the web app on loopback against calling the predictor directly, in the same run.

    python benchmarks/web_load.py --model BUNDLE_OR_REPO_ID [--clients 4] [--requests 40] [--size 2048]

Starts `webapp/web.py` (waitress) as a subprocess on a free loopback port, sends `--requests` POSTs of one
synthetic `--size`² PNG from `--clients` concurrent clients, and prints p50/p95 latency, throughput,
errors and the server's peak memory (VmHWM). The same image is then predicted directly (read + predict,
one at a time) and the web layer's overhead is reported both for one client (latency) and for the
concurrent run (throughput, the server runs one image at a time). Exit status 1 when any request failed.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image(size: int, path: Path) -> bytes:
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (size, size), dtype=np.uint8), (0, 0), 8)
    cv2.circle(img, (size // 2, size // 2), size // 10, 230, -1)
    cv2.imwrite(str(path), img)
    return path.read_bytes()


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "meddetbenchboundary7f3a"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench.png\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _post(url: str, body: bytes, ctype: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return time.perf_counter() - t0, status


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model bundle folder or Hugging Face repo id")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=40, help="requests in the concurrent run")
    ap.add_argument("--size", type=int, default=2048, help="image side in pixels")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="meddet-bench-"))
    png = tmp / "bench.png"
    data = _image(args.size, png)
    body, ctype = _multipart(data)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, str(REPO / "webapp" / "web.py"), "--model", args.model, "--port", str(port),
         "--device", args.device, "--threads", str(args.clients + 2), "--max-queue", str(args.clients * 2)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/api/v1/health", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
                time.sleep(0.2)
        url = base + "/api/v1/predict"
        _post(url, body, ctype)  # warm-up
        single = [_post(url, body, ctype) for _ in range(max(5, args.requests // 4))]

        results: list[tuple[float, int]] = []
        lock = threading.Lock()
        counter = iter(range(args.requests))

        def client() -> None:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                r = _post(url, body, ctype)
                with lock:
                    results.append(r)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        peak = _peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(30)

    from meddet.hub import load_predictor

    predictor = load_predictor(args.model, device=args.device)
    predictor(predictor.read(png))  # warm-up
    direct = []
    for _ in range(len(single)):
        t = time.perf_counter()
        predictor(predictor.read(png))
        direct.append(time.perf_counter() - t)

    lat = [t for t, _ in results]
    errors = sum(1 for _, s in results + single if s != 200)
    single_lat = [t for t, _ in single]
    report = {
        "image": f"{args.size}x{args.size} PNG ({len(data) / 1e6:.1f} MB)",
        "clients": args.clients,
        "requests": len(results),
        "errors": errors,
        "concurrent_p50_ms": round(_pct(lat, 50), 1),
        "concurrent_p95_ms": round(_pct(lat, 95), 1),
        "throughput_rps": round(len(results) / wall, 2),
        "server_peak_rss_mb": round(peak, 1),
        "single_client_p50_ms": round(_pct(single_lat, 50), 1),
        "direct_p50_ms": round(_pct(direct, 50), 1),
        "latency_overhead_pct": round((statistics.median(single_lat) / statistics.median(direct) - 1) * 100, 1),
        "throughput_overhead_pct": round(((1 / statistics.median(direct)) / (len(results) / wall) - 1) * 100, 1),
    }
    for k, v in report.items():
        print(f"{k:24s} {v}")
    print(json.dumps(report))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
