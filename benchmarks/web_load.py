"""Load run of the web app on loopback against calling the predictor directly, in the same run.

    python benchmarks/web_load.py --model BUNDLE_OR_REPO_ID [--clients 4] [--requests 40]
    python benchmarks/web_load.py --model BUNDLE --image png --size 2048      # the older PNG run
    python benchmarks/web_load.py --synthetic-model 18 --single 4 --requests 8   # no bundle at hand

Generates one synthetic full-field mammogram with meddet.synth (default: `--rows` 4500 x `--cols` 2800,
16-bit, RLE-compressed DICOM, as a clinician's upload), starts `webapp/web.py` (waitress) as a subprocess on
a free loopback port and POSTs it as the page does (``display=1``: a screen-sized JPEG and boxes in original
pixels, the image kept in memory for zoom crops): first from one client, then `--requests` POSTs from
`--clients` concurrent clients. Prints bytes per response (and, for comparison, the older
``include_image=1`` full-resolution PNG answer), upload-to-result p50/p95 latency, throughput, errors and the
server's peak memory (VmHWM). The same file is then predicted directly (``predictor(predictor.read(path))``,
one at a time) and the web layer's overhead is reported for one client (latency) and for the concurrent
run (throughput: the server runs one image at a time). Targets (issue 14, 2 CPU cores): response <= 1 MB,
one-client p50 <= 2.0 s, web overhead <= 15%. Exit status 1 when any request failed.

`--synthetic-model DEPTH` serves a ResNet-DEPTH FPN Faster R-CNN with random weights at the default test
size (shortest edge 800, longest <= 1333) exported as a bundle in a temporary folder: the cost of a real
model of that size, with meaningless boxes (up to 100 per image), when no trained bundle is at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def _dicom(rows: int, cols: int, path: Path) -> bytes:
    """A synthetic 16-bit full-field mammogram, RLE Lossless, as a Part-10 file."""
    from pydicom.uid import RLELossless

    from meddet.synth.mammo import encode_dicom, render_mammogram, save_dicom

    img01, _ = render_mammogram(np.random.default_rng(0), rows, cols, "LEFT", "CC", 2, [("mass_high", 1)])
    ds = encode_dicom(img01, attributes={"Laterality": "L", "ViewPosition": "CC", "PatientOrientation": ["A", "R"]})
    try:
        ds.compress(RLELossless, encoding_plugin="pylibjpeg")  # fast when pylibjpeg-rle is installed
    except Exception:
        ds.compress(RLELossless)
    save_dicom(ds, path)
    return path.read_bytes()


def _synthetic_bundle(depth: int, root: Path) -> Path:
    """A bundle of a random-weight ResNet-`depth` FPN Faster R-CNN at the default test size (no download)."""
    import torch

    from meddet.config import load_config, save_config
    from meddet.hub import export_bundle
    from meddet.modeling import build_model

    run = root / "synthetic_run"
    run.mkdir(parents=True, exist_ok=True)
    cfg = load_config(
        str(REPO / "configs" / "Base-RCNN-FPN.yaml"),
        [
            "MODEL.DEVICE",
            "cpu",
            "MODEL.ENGINE",
            "torchvision",
            "MODEL.RESNETS.DEPTH",
            str(depth),
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "2",
            "DATASETS.CLASS_NAMES",
            "['mass', 'calcification']",
            "OUTPUT_DIR",
            str(run),
        ],
    )
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict(), "iteration": 0}, run / "model_final.pth")
    save_config(cfg, run / "config.yaml")
    return export_bundle(run, root / "synthetic_bundle", untuned=True)


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "meddetbenchboundary7f3a"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="bench"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def _post(
    url: str, body: bytes, ctype: str, sizes: list[int] | None = None, model_s: list[float] | None = None
) -> tuple[float, int]:
    """Upload-to-result seconds (the whole answer read) and the status; the answer's size is added to `sizes`,
    the server's own model time (inference_ms) to `model_s`."""
    t0 = time.perf_counter()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    elapsed = time.perf_counter() - t0
    if sizes is not None:
        sizes.append(len(raw))
    if model_s is not None and status == 200:
        model_s.append(json.loads(raw)["inference_ms"] / 1000)
    return elapsed, status


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) * 1000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model bundle folder or Hugging Face repo id")
    ap.add_argument(
        "--synthetic-model",
        type=int,
        metavar="DEPTH",
        choices=(18, 34, 50, 101),
        help="instead of --model: a random-weight ResNet-DEPTH FPN model at the default test size",
    )
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=16, help="requests in the concurrent run")
    ap.add_argument(
        "--image",
        choices=("dicom", "png"),
        default="dicom",
        help="dicom: a --rows x --cols 16-bit RLE mammogram (default); png: a --size² 8-bit PNG",
    )
    ap.add_argument("--rows", type=int, default=4500)
    ap.add_argument("--cols", type=int, default=2800)
    ap.add_argument("--size", type=int, default=2048, help="PNG side in pixels (--image png)")
    ap.add_argument("--single", type=int, default=10, help="requests of the one-client run")
    ap.add_argument("--display-max-side", type=int, default=2048, help="what the page asks (its screen)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if (args.model is None) == (args.synthetic_model is None):
        ap.error("give --model or --synthetic-model")

    tmp = Path(tempfile.mkdtemp(prefix="meddet-bench-"))
    model_name = args.model
    if args.synthetic_model is not None:
        args.model = str(_synthetic_bundle(args.synthetic_model, tmp))
        model_name = f"random-weight R{args.synthetic_model}-FPN (800 x 1333 test size)"
    if args.image == "dicom":
        png = tmp / "bench.dcm"
        data = _dicom(args.rows, args.cols, png)
        what = f"{args.cols}x{args.rows} 16-bit RLE DICOM ({len(data) / 1e6:.1f} MB)"
    else:
        png = tmp / "bench.png"
        data = _image(args.size, png)
        what = f"{args.size}x{args.size} PNG ({len(data) / 1e6:.1f} MB)"
    body, ctype = _multipart(data)
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "webapp" / "web.py"),
            "--model",
            args.model,
            "--port",
            str(port),
            "--device",
            args.device,
            "--threads",
            str(args.clients + 2),
            "--max-queue",
            str(args.clients * 2),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/api/v1/health", timeout=1).read()
                break
            except OSError:
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}") from None
                time.sleep(0.2)
        url = base + f"/api/v1/predict?display=1&display_max_side={args.display_max_side}"
        legacy_sizes: list[int] = []
        _post(url, body, ctype)  # warm-up
        _post(base + "/api/v1/predict?include_image=1", body, ctype, legacy_sizes)
        # One client, side by side with the direct call: each web request is followed by a direct
        # read + predict of the same file in this process (the server idle meanwhile), so both see the same
        # machine load (other processes on shared cores move both alike). The direct call runs in a worker
        # thread, as the server's predictions do (waitress threads), so that both use torch the same way.
        from concurrent.futures import ThreadPoolExecutor

        from meddet.hub import load_predictor

        predictor = load_predictor(args.model, device=args.device)

        def direct_call() -> float:
            t = time.perf_counter()
            predictor(predictor.read(png))
            return time.perf_counter() - t

        worker = ThreadPoolExecutor(1)
        worker.submit(direct_call).result()  # warm-up
        sizes: list[int] = []
        single, direct, server_model = [], [], []
        for _ in range(max(3, args.single)):
            single.append(_post(url, body, ctype, sizes, server_model))
            direct.append(worker.submit(direct_call).result())
        worker.shutdown()

        results: list[tuple[float, int]] = []
        lock = threading.Lock()
        counter = iter(range(args.requests))

        def client() -> None:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                r = _post(url, body, ctype, sizes)
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

    lat = [t for t, _ in results]
    errors = sum(1 for _, s in results + single if s != 200)
    single_lat = [t for t, _ in single]
    overhead = (statistics.median(single_lat) / statistics.median(direct) - 1) * 100
    paired = statistics.median(w / d for w, d in zip(single_lat, direct))
    report = {
        "image": what,
        "model": model_name,
        "cpu_threads": os.cpu_count(),
        "response_bytes_max": max(sizes),
        "response_bytes_p50": int(statistics.median(sizes)),
        "legacy_include_image_bytes": legacy_sizes[0] if legacy_sizes else None,
        "single_client_requests": len(single),
        "single_client_p50_ms": round(_pct(single_lat, 50), 1),
        "single_client_p95_ms": round(_pct(single_lat, 95), 1),
        "direct_p50_ms": round(_pct(direct, 50), 1),
        "direct_p95_ms": round(_pct(direct, 95), 1),
        "latency_overhead_pct": round(overhead, 1),
        "latency_overhead_paired_p50_pct": round((paired - 1) * 100, 1),
        # everything but the model call: upload, decoding, display picture, JSON, transfer (upload-to-result minus
        # the server's inference_ms); the direct call pays the decoding too
        "outside_model_p50_ms": round(statistics.median(t - m for t, m in zip(single_lat, server_model)) * 1000, 1),
        "server_model_p50_ms": round(statistics.median(server_model) * 1000, 1),
        "clients": args.clients,
        "requests": len(results),
        "errors": errors,
        "concurrent_p50_ms": round(_pct(lat, 50), 1),
        "concurrent_p95_ms": round(_pct(lat, 95), 1),
        "throughput_rps": round(len(results) / wall, 2),
        "throughput_overhead_pct": round(((1 / statistics.median(direct)) / (len(results) / wall) - 1) * 100, 1),
        "server_peak_rss_mb": round(peak, 1),
    }
    for k, v in report.items():
        print(f"{k:28s} {v}")
    targets = [
        ("response <= 1 MB", max(sizes) <= 1_000_000, f"{max(sizes) / 1e6:.3f} MB"),
        ("one-client p50 <= 2.0 s", _pct(single_lat, 50) <= 2000, f"{_pct(single_lat, 50) / 1000:.2f} s"),
        ("web overhead <= 15%", overhead <= 15, f"{overhead:.1f}%"),
    ]
    for name, ok, value in targets:
        print(f"target {name:26s} {value:>10s}  {'met' if ok else 'MISSED'}")
    print(json.dumps(report))
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
