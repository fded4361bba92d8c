"""Running a conversion at dataset scale: worker processes, a progress bar, resumable outputs, a
manifest, an error report, and shards for cluster schedulers.

A converter turns its inputs into :class:`Job` s (one per output image, cheap to build) and a
top-level function ``convert(job, out_dir) -> Converted`` that does the pixel work and writes
the image (atomically, :func:`meddet.io.write_png`). :func:`run_jobs` then

- keeps only this shard's jobs (``RunOptions.shard``: ``crc32(key) % n == i``, stable whatever
  the dataset's order);
- reuses every output that is complete and valid: the manifest of an earlier run lists it with
  the same fingerprint (the converter's settings and the job itself, e.g. its CSV rows), the
  file's SHA-256 still matches, and its input files still have the size and modification time
  they had. Anything else is converted again;
- runs the rest in ``RunOptions.workers`` processes (a bounded number in flight, so memory does
  not grow with the dataset), streaming each finished entry to a partial manifest so a killed
  run loses at most the images in flight; a worker that dies (out of memory, a crashing decoder)
  costs only the items it held, which are retried one at a time so the culprit is named;
- writes ``manifest.jsonl`` (one JSON object per output: key, source, output, shape, bit depth,
  SHA-256, input stamps, settings fingerprint, and the COCO record and annotations, so the COCO
  files can be rebuilt without touching pixels) and records each failure in the report;
- compares the new manifest with the one an earlier run left (whether or not its outputs were
  reused): the report's ``changes`` and ``changes.txt`` list each output added, removed (with the
  reason: the error that skipped it, or gone from the inputs) and changed (other pixels, record or
  boxes).

:func:`write_error_report` writes ``errors.txt``: one line per skipped item with the reason.
Sharded runs write ``manifest.shard-I-of-N.jsonl`` / ``errors.shard-I-of-N.txt``; a later run
without ``--shard`` reuses every shard's outputs and writes the dataset's COCO files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import re
import sys
import traceback
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from meddet import __version__
from meddet.data.convert import ConversionReport, write_changes
from meddet.errors import ConfigError, MeddetError

logger = logging.getLogger(__name__)

__all__ = [
    "Converted",
    "Job",
    "RunOptions",
    "WorkerCrashed",
    "file_stamps",
    "fingerprint",
    "load_manifest",
    "manifest_changes",
    "manifest_name",
    "parallel_map",
    "parse_shard",
    "run_jobs",
    "write_error_report",
]

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; raises :class:`ConfigError` otherwise."""
    m = _SHARD.match(str(text))
    if not m:
        raise ConfigError(f"--shard: expected I/N such as 0/4, found {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
    if not 0 <= i < n:
        raise ConfigError(f"--shard: expected 0 <= I < N, found {i}/{n}")
    return i, n


@dataclass(frozen=True)
class RunOptions:
    """How a conversion runs: ``workers`` processes (1 = in this process), an optional ``shard``
    ``(i, n)``, and ``resume`` (reuse complete and valid outputs of an earlier run)."""

    workers: int = 1
    shard: tuple[int, int] | None = None
    resume: bool = True

    def __post_init__(self) -> None:
        if int(self.workers) < 1:
            raise ConfigError(f"--workers: expected at least 1, found {self.workers}")
        if self.shard is not None and not (len(self.shard) == 2 and 0 <= self.shard[0] < self.shard[1]):
            raise ConfigError(f"--shard: expected (i, n) with 0 <= i < n, found {self.shard}")


@dataclass(frozen=True)
class Job:
    """One output image to make: ``key`` (unique, stable: sorting, sharding, the manifest),
    ``output`` (path relative to the output folder), ``item`` (how messages name it) and the
    converter's picklable ``payload``."""

    key: str
    output: str
    item: str
    payload: Any


@dataclass
class Converted:
    """What a converter's worker function returns for one job."""

    source: str  # what the image was made from (the dataset's own relative path)
    record: dict[str, Any]  # the COCO image record, without "id"
    annotations: list[dict[str, Any]]  # COCO annotations, without "id"/"image_id"
    sha256: str  # of the written file
    shape: list[int]  # of the written image
    bit_depth: int
    inputs: dict[str, list[int]] = field(default_factory=dict)  # file -> [size, mtime_ns]
    warnings: list[str] = field(default_factory=list)


class WorkerCrashed(RuntimeError):
    """A worker process died while it held the item (killed, out of memory, a crashing decoder)."""


def file_stamps(paths: Iterable[str | os.PathLike]) -> dict[str, list[int]]:
    """``{path: [size, mtime_ns]}`` of existing files, to notice inputs that changed."""
    out = {}
    for p in paths:
        st = os.stat(p)
        out[str(p)] = [int(st.st_size), int(st.st_mtime_ns)]
    return out


def fingerprint(settings: dict[str, Any]) -> str:
    """A short hash of a converter's settings (and meddet's version): outputs made with other
    settings are not reused."""
    text = json.dumps({"meddet": __version__, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def manifest_name(shard: tuple[int, int] | None, partial: bool = False) -> str:
    """``manifest.jsonl``, ``manifest.shard-I-of-N.jsonl`` (and their ``.partial`` twins)."""
    stem = "manifest" if shard is None else f"manifest.shard-{shard[0]}-of-{shard[1]}"
    return f"{stem}{'.partial' if partial else ''}.jsonl"


def _errors_name(shard: tuple[int, int] | None) -> str:
    return "errors.txt" if shard is None else f"errors.shard-{shard[0]}-of-{shard[1]}.txt"


def load_manifest(out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Every manifest entry found in ``out_dir`` (final, shard and partial manifests; the newest
    file wins for a key). A line cut short by a killed run is ignored."""
    entries: dict[str, dict[str, Any]] = {}
    files = sorted(Path(out_dir).glob("manifest*.jsonl"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    for path in files:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    entry = json.loads(line)
                    entries[str(entry["key"])] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.debug("%s line %d: not a manifest entry (a run killed mid-line?); ignored", path, n)
    return entries


def _still_valid(entry: dict[str, Any], out_dir: Path) -> bool:
    path = out_dir / entry["output"]
    try:
        for src, stamp in entry.get("inputs", {}).items():
            st = os.stat(src)
            if [int(st.st_size), int(st.st_mtime_ns)] != list(stamp):
                return False
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return False
    return digest.hexdigest() == entry.get("sha256")


def _work(task: tuple[Callable[[Job, Path], Converted], Job, Path, dict | None, str]) -> tuple[str, Any, str]:
    """Runs in a worker: reuse ``previous`` if still valid, else convert. Never raises; returns
    ``("ok" | "reused" | "error", entry | message, traceback or "")``."""
    convert, job, out_dir, previous, fp = task
    if previous is not None and _still_valid(previous, out_dir):
        return "reused", previous, ""
    try:
        conv = convert(job, out_dir)
    except MeddetError as e:
        return "error", str(e), ""
    except Exception as e:  # a bug or an unexpected library error: report it, keep converting
        return "error", f"unexpected {type(e).__name__}: {e}", traceback.format_exc()
    entry = {"key": job.key, "output": job.output, "fingerprint": fp, **asdict(conv)}
    return "ok", entry, ""


# --- workers die with their parent -----------------------------------------------------------------
# A killed run must not leave its fork server, workers and resource tracker running: the fork server and
# every worker ask the kernel for SIGKILL when their parent dies (Linux PR_SET_PDEATHSIG), and each worker
# also watches the converting process from a thread (any platform; the fork server stays single-threaded).
# The fork server learns which process it belongs to from this variable, set before it starts.
_PARENT_ENV = "MEDDET_POOL_PARENT"
_WATCH_S = 0.5


def _die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):  # no libc prctl: the watchdog thread still applies to workers
        pass


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, killed but not yet reaped, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _watch_parent(owner: int, parent: int) -> None:
    import time

    while True:
        time.sleep(_WATCH_S)
        if os.getppid() != parent or not process_alive(owner):
            os._exit(1)


def _init_worker(owner: int | None = None) -> None:
    import threading

    import cv2

    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would oversubscribe
    if owner is not None:
        parent = os.getppid()
        _die_with_parent()
        if not process_alive(owner) or not process_alive(parent):  # the parent died before the request took effect
            os._exit(1)
        threading.Thread(target=_watch_parent, args=(owner, parent), name="meddet-parent-watch", daemon=True).start()


if (
    os.environ.get(_PARENT_ENV) == str(os.getppid())
    and sys.argv[:1] == ["-c"]
    and "multiprocessing.forkserver" in sys.modules
):
    # imported (preloaded) by the fork server of the converting process: die with it
    _die_with_parent()


# Modules the fork server imports once, so each worker starts warm.
_PRELOAD = ["numpy", "cv2", "pydicom", "meddet.io", "meddet.data.parallel"]


def _context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """Workers are never forked from this process: a fork inherits other libraries' thread pools
    in a broken state (OpenCV's deadlocks the child). A fork server (started once per process,
    then forking clean, warm workers quickly) where the platform has one, else spawn."""
    os.environ[_PARENT_ENV] = str(os.getpid())  # read by the fork server when it starts (see above)
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([*_PRELOAD, *preload])  # used when the server starts
        return ctx
    return multiprocessing.get_context("spawn")


def _pool(workers: int, preload: Sequence[str] = ()) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=_context(preload), initializer=_init_worker, initargs=(os.getpid(),)
    )


def parallel_map(
    fn: Callable[[Any], Any], items: Iterable[Any], workers: int, *, preload: Sequence[str] = ()
) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item))`` pairs as they finish, from ``workers`` processes (in this process
    when ``workers == 1``).

    ``items`` is consumed lazily and at most ``2 * workers`` items are in flight, so memory stays
    flat. ``fn`` must be a top-level function; ``preload`` names modules the workers need (imported
    once by the fork server). When a worker dies, the items in flight are
    retried one at a time in a fresh process; an item that kills its process again comes back
    with a :class:`WorkerCrashed` instead of a result (as does any exception ``fn`` raises).
    """
    it = iter(items)
    if workers <= 1:
        for item in it:
            yield item, fn(item)
        return
    suspects: list[Any] = []
    pending: dict[Future, Any] = {}
    pool = _pool(workers, preload)
    try:
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * workers:
                try:
                    item = next(it)
                except StopIteration:
                    exhausted = True
                    break
                pending[pool.submit(fn, item)] = item
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                item = pending.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    suspects.append(item)
                    broken = True
                    continue
                except Exception as e:
                    result = e
                yield item, result
            if broken:
                logger.warning(
                    "a worker process died; retrying the %d item(s) it may have held one by one",
                    len(suspects) + len(pending),
                )
                suspects.extend(pending.values())
                pending.clear()
                pool.shutdown(wait=False, cancel_futures=True)
                pool = _pool(workers, preload)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    for item in suspects:
        with _pool(1) as single:
            try:
                result = single.submit(fn, item).result()
            except BrokenProcessPool:
                result = WorkerCrashed(
                    "the worker process died while converting this item (killed, out of memory, or a crashing decoder)"
                )
            except Exception as e:
                result = e
        yield item, result


def _remove_stale_temporaries(out_dir: Path, outputs: Sequence[str]) -> None:
    """Delete temporary files a killed run left for this run's outputs (``.NAME.tmpPID``)."""
    by_folder: dict[Path, set[str]] = {}
    for rel in outputs:
        p = out_dir / rel
        by_folder.setdefault(p.parent, set()).add(p.name)
    for folder, names in by_folder.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if entry.name.startswith(".") and ".tmp" in entry.name:
                target = entry.name[1 : entry.name.rindex(".tmp")]
                if target in names:
                    logger.debug("removing %s left by an interrupted run", entry.path)
                    os.unlink(entry.path)


def run_jobs(
    jobs: Iterable[Job],
    convert: Callable[[Job, Path], Converted],
    out_dir: str | os.PathLike,
    *,
    settings: dict[str, Any],
    options: RunOptions,
    report: ConversionReport,
    progress: bool = True,
    desc: str = "convert",
) -> list[dict[str, Any]]:
    """Run ``convert`` over this shard's jobs (see the module docstring) and return the manifest
    entries of the outputs now complete, sorted by key.

    ``report`` receives each failure
    (``skip``), each warning a converter attached to an output (``warn``), the counts of
    converted and reused outputs, and the path of the error report written at the end
    (``files["errors"]``: every item skipped so far, CSV-level ones included). ``settings`` is what the
    outputs depend on besides the inputs
    (pixel options, class rules, ...); it becomes the manifest's fingerprint.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(settings)
    todo = sorted(jobs, key=lambda j: j.key)
    keys = [j.key for j in todo]
    if len(set(keys)) != len(keys) or len({j.output for j in todo}) != len(todo):
        raise ConfigError(f"{desc}: two jobs share a key or an output file (keys must be unique)")
    if options.shard is not None:
        i, n = options.shard
        todo = [j for j in todo if zlib.crc32(j.key.encode()) % n == i]
        logger.info("shard %d/%d: %d of %d image(s)", i, n, len(todo), len(keys))
    before = load_manifest(out)  # for the change report, even when nothing is reused
    previous = before if options.resume else {}
    failed: dict[str, str] = {}
    _remove_stale_temporaries(out, [j.output for j in todo])

    def tasks() -> Iterator[tuple]:
        for job in todo:
            # the job's own inputs (e.g. its CSV rows) count too: a fixed row re-makes its image
            job_fp = hashlib.sha256(f"{fp}|{job.output}|{job.payload!r}".encode()).hexdigest()[:16]
            prev = previous.get(job.key)
            usable = prev is not None and prev.get("fingerprint") == job_fp and prev.get("output") == job.output
            yield convert, job, out, prev if usable else None, job_fp

    entries: dict[str, dict[str, Any]] = {}
    partial = out / manifest_name(options.shard, partial=True)
    with (
        open(partial, "a", encoding="utf-8") as mf,
        tqdm(total=len(todo), desc=desc, unit="image", disable=not progress) as bar,
    ):
        for task, result in parallel_map(_work, tasks(), options.workers, preload=[convert.__module__]):
            job = task[1]
            bar.update()
            if isinstance(result, BaseException):
                report.skip(job.item, str(result))
                failed[job.key] = str(result)
                continue
            status, payload, detail = result
            if status == "error":
                if detail:
                    logger.debug("%s: %s", job.item, detail)
                report.skip(job.item, payload)
                failed[job.key] = str(payload)
                continue
            entries[job.key] = payload
            if status == "ok":
                report.n_converted += 1
                mf.write(json.dumps(payload) + "\n")
                mf.flush()
            else:
                report.n_reused += 1
            for w in payload.get("warnings", []):
                report.warn(job.item, w)
    ordered = [entries[k] for k in sorted(entries)]
    final = out / manifest_name(options.shard)
    _write_lines_atomic(final, (json.dumps(e) for e in ordered))
    partial.unlink()
    if options.shard is None:  # the full manifest now holds every shard's and partial run's entries
        for stale in out.glob("manifest*.jsonl"):
            if stale != final:
                stale.unlink()
    if report.n_reused:
        logger.info(
            "%s: %d output(s) reused from an earlier run, %d converted", desc, report.n_reused, report.n_converted
        )
    report.files["errors"] = write_error_report(out, report, options.shard)
    if options.shard is None and before:
        report.changes.update(manifest_changes(before, entries, failed))
        write_changes(out, report)
    return ordered


def manifest_changes(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]], failed: dict[str, str] | None = None
) -> dict[str, list[str]]:
    """What changed from one manifest (``{key: entry}``) to the next: ``added`` and ``removed`` keys
    (a removed one with why: the error that skipped it, else gone from the inputs) and ``changed`` ones
    (other output file, pixels, COCO record or boxes), each sorted."""
    failed = failed or {}

    def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
        return all(a.get(k) == b.get(k) for k in ("output", "sha256", "record", "annotations"))

    removed = []
    for k in sorted(set(before) - set(after)):
        why = failed.get(k, "no longer among the inputs (or skipped before conversion: see errors.txt)")
        removed.append(f"{k} ({' '.join(why.split())})")
    return {
        "added": sorted(set(after) - set(before)),
        "removed": removed,
        "changed": sorted(k for k in set(before) & set(after) if not same(before[k], after[k])),
    }


def _write_lines_atomic(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def write_error_report(
    out_dir: str | os.PathLike, report: ConversionReport, shard: tuple[int, int] | None = None
) -> Path:
    """Write ``errors.txt`` (or the shard's): one line ``ITEM: REASON`` per skipped item, sorted
    (empty when nothing was skipped, so a fixed rerun leaves no stale report). Returns its path."""
    path = Path(out_dir) / _errors_name(shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = sorted(" ".join(str(s).split()) for s in report.skipped)
    _write_lines_atomic(path, lines)
    return path
