"""Where a resumed run continues from, checked rather than trusted.

``OUTPUT_DIR/last_checkpoint`` (detectron2's pointer: one file name) is advisory. On ``--resume`` every
checkpoint of the run folder (``model_XXXXXXX.pth``, ``model_final.pth``, ``model_best.pth``) is a
candidate; the newest one (by the iteration stored in it) that passes a load test (a complete
``torch.load`` with model, optimizer, scheduler and iteration) is the one resumed from, and the log says
which, and why when it is not the file the pointer names (pointer missing, unreadable, naming a missing
or damaged file). Damaged checkpoints newer than the one chosen are renamed ``<name>.damaged`` (never
overwritten by the resumed run, kept for inspection). When checkpoints exist but none loads, resuming is
an error listing each file and its fault: training again from iteration 0 would overwrite them.

``OUTPUT_DIR/training_done.json`` marks a run whose end-of-training steps (final checkpoint, final
validation, ``model_best.pth``, final metrics) all finished; a resumed run whose loop had already ended
but which has no such mark (killed during the final validation) repeats only those steps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meddet.errors import ModelError
from meddet.modeling.checkpoint import read_checkpoint

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
DONE_FILE = "training_done.json"
PERIODIC_RE = re.compile(r"^model_(\d{7})\.pth$")
NAMED = ("model_final.pth", "model_best.pth")  # iteration known only from the file
_RANK = {"model_final.pth": 2, "model_best.pth": 0}  # among equal iterations: final, periodic (1), best


def read_pointer(output_dir: str | os.PathLike) -> tuple[str | None, str | None]:
    """(file name in OUTPUT_DIR/last_checkpoint, None) or (None, why it cannot be used); (None, None) if absent."""
    f = Path(output_dir) / LAST_CHECKPOINT
    if not f.is_file():
        return None, None
    raw = f.read_bytes()
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None, f"{f} is not text ({len(raw)} bytes that are not UTF-8; expected a checkpoint file name)"
    if not name or "\n" in name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
        shown = name if len(name) <= 60 else name[:57] + "..."
        return None, f"{f} holds {shown!r}; expected the name of a checkpoint file in {Path(output_dir)}"
    if not (Path(output_dir) / name).is_file():
        return None, f"{f} names {name}, which does not exist in {Path(output_dir)}"
    return name, None


def checkpoint_files(output_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoint files (periodic, final, best), in no particular order."""
    d = Path(output_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and (PERIODIC_RE.match(p.name) or p.name in NAMED))


def _first_sentence(text: str) -> str:
    """The first sentence of an error text (library messages run on for lines): never cut mid-word."""
    text = " ".join(str(text).split())
    m = re.match(r"(.+?[.;:!?])(\s|$)", text)
    first = (m.group(1) if m else text).rstrip(".;: ")
    return first if len(first) <= 240 else first[: first.rfind(" ", 0, 240)] + " ..."


def probe(path: Path) -> dict[str, Any]:
    """Load test: the checkpoint's ``iteration`` and ``meddet`` metadata if it reads completely and holds
    everything a resume needs; ModelError (one sentence, naming the file) if not."""
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty file (0 bytes)")
    ckpt = read_checkpoint(path)
    missing = [k for k in ("iteration", "optimizer", "scheduler") if k not in ckpt or ckpt[k] is None]
    if missing:
        raise ModelError(f"{path}: no {', '.join(missing)} entry; not a training checkpoint written by meddet")
    return {"iteration": int(ckpt["iteration"]), "meddet": dict(ckpt.get("meddet") or {})}


@dataclass
class ResumePoint:
    path: Path
    iteration: int
    meta: dict[str, Any]
    reason: str
    damaged: list[tuple[Path, str]] = field(default_factory=list)  # newer files that failed the load test


def find_resume_checkpoint(output_dir: str | os.PathLike) -> ResumePoint | None:
    """The newest checkpoint of the run folder that loads; None when it holds no checkpoint file.

    Raises ModelError (one line listing every file and its fault) when checkpoints exist but none loads."""
    output_dir = Path(output_dir)
    files = checkpoint_files(output_dir)
    if not files:
        return None
    pointed, pointer_problem = read_pointer(output_dir)
    faults: dict[Path, str] = {}
    probed: dict[Path, dict] = {}

    def check(p: Path) -> dict | None:
        if p in probed:
            return probed[p]
        if p in faults:
            return None
        try:
            probed[p] = probe(p)
            return probed[p]
        except (ModelError, OSError) as e:
            msg = str(e)
            msg = msg[len(str(p)) + 2 :] if msg.startswith(f"{p}: ") else _first_sentence(msg)
            unreadable = re.match(r"cannot be read as a PyTorch checkpoint.*? \((.*)\); expected", msg)
            faults[p] = f"unreadable as a PyTorch checkpoint: {unreadable.group(1)}" if unreadable else msg
            return None

    # Periodic files carry their iteration in the name; final/best must be opened to know theirs.
    order: list[tuple[int, int, Path]] = []
    for p in files:
        m = PERIODIC_RE.match(p.name)
        if m:
            order.append((int(m.group(1)), 1, p))
        else:
            info = check(p)
            order.append((info["iteration"] if info else -1, _RANK[p.name], p))
    order.sort(key=lambda t: (t[0], t[1]), reverse=True)
    for _, _, p in order:
        info = check(p)
        if info is None:
            continue
        damaged = [(q, faults[q]) for _, _, q in order if q in faults]
        newer = [f"{q.name} ({why})" for q, why in damaged]
        if p.name == pointed:
            reason = "named by last_checkpoint and loads"
        elif pointer_problem:
            reason = f"the newest checkpoint that loads; {pointer_problem}"
        elif pointed is None:
            reason = f"the newest checkpoint that loads; there is no {LAST_CHECKPOINT} file"
        else:
            reason = f"the newest checkpoint that loads; last_checkpoint names {pointed}"
        if newer:
            reason += f"; skipped damaged: {'; '.join(newer)}"
        return ResumePoint(p, info["iteration"], info["meddet"], reason, damaged)
    listing = "; ".join(f"{q.name}: {faults[q]}" for _, _, q in order)
    raise ModelError(
        f"cannot resume {output_dir}: none of its {len(files)} checkpoint(s) loads ({listing}); training "
        "again from iteration 0 would overwrite them: move them out of the folder to start over, or choose "
        "another OUTPUT_DIR"
    )


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint to ``<name>.damaged`` (``.damaged.1``, ... if taken); returns the new path."""
    target = path.with_name(path.name + ".damaged")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged.{n}")
    os.replace(path, target)
    return target


def remove_stale_temporaries(output_dir: str | os.PathLike) -> list[str]:
    """Delete the temporary files a killed save leaves (``.model_*.pth.*.tmp``, ``.last_checkpoint.tmp``)."""
    removed = []
    for p in Path(output_dir).glob(".*.tmp"):
        if p.name.startswith((".model_", f".{LAST_CHECKPOINT}", f".{DONE_FILE}")) and p.is_file():
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p.name)
    return removed


def read_done(output_dir: str | os.PathLike) -> dict | None:
    """The content of OUTPUT_DIR/training_done.json, or None if absent or unreadable."""
    f = Path(output_dir) / DONE_FILE
    try:
        done = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return done if isinstance(done, dict) else None


def write_done(output_dir: str | os.PathLike, record: dict) -> None:
    f = Path(output_dir) / DONE_FILE
    tmp = f.with_name(f".{DONE_FILE}.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, f)
