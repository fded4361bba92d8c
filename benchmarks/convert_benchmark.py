"""DICOM -> PNG conversion speed and memory: meddet against the naive loop, on the same files.

The naive loop is what most conversion scripts do per file::

    ds = pydicom.dcmread(path); arr = apply_voi_lut(ds.pixel_array, ds)      # read, VOI
    u8 = min-max of arr to uint8 (float64 math); u8 = 255 * (u8 / 255) ** gamma  # gamma (float pow)
    cv2.imwrite(out, u8)

meddet's path (``convert_dataset.py images``: ``meddet.data.formats.convert_images``) does the
same display chain (plus MONOCHROME1, padding, manifest, hashes, atomic writes) but evaluates
rescale / VOI / normalization / gamma once per distinct stored value (at most 65,536) and maps
every pixel with one table lookup, instead of several float64 passes over every pixel.

The files are synthetic mammograms (meddet.synth) stored like full-field digital ones: 16-bit
MONOCHROME2, every other one 12-bit with a window (Window Center/Width), no compression.

Printed: images/s of the naive loop, of meddet in one process and with --workers processes (and
the ratios), the largest pixel difference between the two outputs, a per-step time breakdown, and
the peak resident memory of a meddet conversion of --rss-files files (main process, largest
worker, and all its processes together, sampled from /proc; Linux only) to show it does not grow
with the number of files.

    python benchmarks/convert_benchmark.py                        # 50 files of 2048 x 1536, RSS for 50 and 500
    python benchmarks/convert_benchmark.py --files 20 --size 1024 768 --rss-files 20 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.pixels import apply_voi_lut

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Worker processes import this script again (spawn / fork server): keep its top level light.

from meddet.data.formats.images import convert_images  # noqa: E402
from meddet.data.parallel import RunOptions  # noqa: E402
from meddet.io import PixelOptions, load_dicom, write_png  # noqa: E402
from meddet.io.dicom import dicom_to_array  # noqa: E402

GAMMA = 0.8


def make_files(folder: Path, n: int, size: tuple[int, int], n_distinct: int = 50) -> list[Path]:
    """``n`` distinct DICOM files: ``n_distinct`` rendered mammograms, then variants of them
    (a different constant offset), so contents and hashes differ without rendering each."""
    # imported here: worker processes re-import this script, and the generator pulls in pandas
    from meddet.synth import encode_dicom, render_mammogram, save_dicom

    folder.mkdir(parents=True, exist_ok=True)
    bases = []
    for k in range(min(n, n_distinct)):
        rng = np.random.default_rng(k)
        side = "LEFT" if k % 2 else "RIGHT"
        img, _ = render_mammogram(
            rng, size[0], size[1], side, "CC" if k % 3 else "MLO", 1 + k % 4, [("mass_high", 1), ("calcification", 1)]
        )
        bases.append(img)
    paths = []
    for k in range(n):
        img = np.clip(bases[k % len(bases)] * (1.0 - 0.001 * (k // len(bases))), 0, 1)
        if k % 2:  # 12-bit with a window, as many FFDM "for presentation" images
            ds = encode_dicom(img, bits_stored=12, windows=[(2048.0, 3500.0)])
        else:  # 16-bit full range, no window tags (as CBIS-DDSM)
            ds = encode_dicom(img, bits_stored=16)
        path = folder / f"img_{k:04d}.dcm"
        save_dicom(ds, path)
        paths.append(path)
    return paths


def naive(src: Path, dst: Path, steps: dict[str, float]) -> None:
    t0 = time.perf_counter()
    ds = pydicom.dcmread(src)
    arr = ds.pixel_array
    t1 = time.perf_counter()
    arr = apply_voi_lut(arr, ds)
    t2 = time.perf_counter()
    arr = arr.astype(np.float64)
    u8 = np.rint((arr - arr.min()) / (arr.max() - arr.min()) * 255).astype(np.uint8)
    t3 = time.perf_counter()
    u8 = np.rint(255 * (u8 / 255.0) ** GAMMA).astype(np.uint8)
    t4 = time.perf_counter()
    cv2.imwrite(str(dst), u8)
    t5 = time.perf_counter()
    for name, a, b in (
        ("read+decode", t0, t1),
        ("VOI (apply_voi_lut)", t1, t2),
        ("min-max (float64)", t2, t3),
        ("gamma (float pow)", t3, t4),
        ("PNG write", t4, t5),
    ):
        steps[name] = steps.get(name, 0.0) + (b - a)


def meddet_steps(files: list[Path], out: Path) -> dict[str, float]:
    """meddet's own steps timed on the same files (the product path adds manifest and hashing)."""
    steps: dict[str, float] = {}
    opts = PixelOptions(gamma=GAMMA).as_kwargs()
    for src in files:
        t0 = time.perf_counter()
        ds = load_dicom(src)
        _ = ds.PixelData
        t1 = time.perf_counter()
        img = dicom_to_array(ds, source=src, **opts)
        t2 = time.perf_counter()
        write_png(out / f"{src.stem}.png", img)
        t3 = time.perf_counter()
        for name, a, b in (("read", t0, t1), ("decode + display chain (table)", t1, t2), ("PNG write + hash", t2, t3)):
            steps[name] = steps.get(name, 0.0) + (b - a)
    return steps


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of ``fn()``."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        out += kids
        frontier += kids
    return out


def _status_mb(pid: int | str, field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident of the process image) in MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_child(src: str, out: str, workers: int) -> None:
    """Run one conversion and print its peak memory as JSON (called in a fresh process).

    Main process: its ``VmHWM`` (``ru_maxrss`` would include the parent it was forked from).
    Workers (children of the fork server): their ``VmHWM``, read every 20 ms while they live;
    all processes together: the largest sampled sum of ``VmRSS``."""
    peaks = {"total": 0.0, "worker": 0.0}
    stop = threading.Event()
    me = os.getpid()

    def sample() -> None:
        while not stop.is_set():
            kids = _descendants(me)
            peaks["worker"] = max([peaks["worker"], *(_status_mb(p, "VmHWM") for p in kids)])
            peaks["total"] = max(peaks["total"], _status_mb(me, "VmRSS") + sum(_status_mb(p, "VmRSS") for p in kids))
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    report = convert_images(src, out, pixels=PixelOptions(gamma=GAMMA), run=RunOptions(workers=workers), progress=False)
    stop.set()
    thread.join()
    print(
        json.dumps(
            {
                "images": report.n_images,
                "main_mb": _status_mb("self", "VmHWM"),
                "worker_mb": peaks["worker"],
                "total_mb": peaks["total"],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=50, help="files timed (default 50)")
    ap.add_argument(
        "--size", type=int, nargs=2, default=(2048, 1536), metavar=("H", "W"), help="mammogram size (default 2048 1536)"
    )
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the parallel run (default 2)")
    ap.add_argument("--rss-files", type=int, nargs="+", default=[50, 500], help="file counts of the memory runs")
    ap.add_argument("--dir", default=None, help="working folder (default: a temporary one, deleted)")
    ap.add_argument("--_rss-child", nargs=3, metavar=("SRC", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._rss_child:
        rss_child(args._rss_child[0], args._rss_child[1], int(args._rss_child[2]))
        return

    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="meddet-convert-bench-"))
    try:
        n_all = max([args.files, *args.rss_files])
        print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} on {os.cpu_count()} cores")
        t = time.perf_counter()
        files = make_files(work / "all", n_all, tuple(args.size))
        print(f"wrote {n_all} DICOM files of {args.size[0]}x{args.size[1]} in {time.perf_counter() - t:.0f} s")
        timed_dir = work / f"src_{args.files}"
        timed_dir.mkdir()
        for p in files[: args.files]:
            os.link(p, timed_dir / p.name)
        timed_files = sorted(timed_dir.glob("*.dcm"))
        n = len(timed_files)

        (work / "naive").mkdir()
        steps: dict[str, float] = {}
        naive_wall, naive_cpu = timed(lambda: [naive(p, work / "naive" / f"{p.stem}.png", steps) for p in timed_files])
        one_wall, one_cpu = timed(
            lambda: convert_images(
                timed_dir, work / "one", pixels=PixelOptions(gamma=GAMMA), run=RunOptions(workers=1), progress=False
            )
        )
        par_wall, _ = timed(
            lambda: convert_images(
                timed_dir,
                work / "par",
                pixels=PixelOptions(gamma=GAMMA),
                run=RunOptions(workers=args.workers),
                progress=False,
            )
        )
        (work / "steps").mkdir()
        mine = meddet_steps(timed_files, work / "steps")

        diff = 0
        for p in timed_files:
            a = cv2.imread(str(work / "naive" / f"{p.stem}.png"), cv2.IMREAD_UNCHANGED).astype(int)
            b = cv2.imread(str(work / "one" / "images" / f"{p.stem}.png"), cv2.IMREAD_UNCHANGED).astype(int)
            diff = max(diff, int(np.abs(a - b).max()))

        print(f"\n{n} files, 8-bit PNG, min-max + gamma {GAMMA}")
        print(f"  naive loop            {n / naive_wall:7.2f} images/s   (CPU {naive_cpu / n * 1000:.0f} ms/image)")
        print(
            f"  meddet, 1 process     {n / one_wall:7.2f} images/s   (CPU {one_cpu / n * 1000:.0f} ms/image)"
            f"   x{naive_wall / one_wall:.2f} the naive loop (CPU time x{naive_cpu / one_cpu:.2f})"
        )
        print(
            f"  meddet, {args.workers} workers     {n / par_wall:7.2f} images/s"
            f"                        x{naive_wall / par_wall:.2f} the naive loop"
        )
        print(
            f"  largest pixel difference between the two outputs: {diff} grey level(s)"
            " (the naive loop rounds twice: to uint8, then after gamma)"
        )
        print("\n  where the time goes (ms per image)")
        for name, total in steps.items():
            print(f"    naive   {name:32s} {total / n * 1000:7.1f}")
        for name, total in mine.items():
            print(f"    meddet  {name:32s} {total / n * 1000:7.1f}")

        print(f"\npeak resident memory of a meddet conversion, {args.workers} workers")
        for count in args.rss_files:
            src = work / f"rss_{count}"
            src.mkdir()
            for p in files[:count]:
                os.link(p, src / p.name)
            out = subprocess.run(
                [sys.executable, __file__, "--_rss-child", str(src), str(work / f"rss_out_{count}"), str(args.workers)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"  {count:5d} files: main {r['main_mb']:6.0f} MB, largest worker {r['worker_mb']:6.0f} MB, "
                f"all processes {r['total_mb']:6.0f} MB ({r['images']} images written)"
            )
            shutil.rmtree(work / f"rss_out_{count}")
        print(f"\nload average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
