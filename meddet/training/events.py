"""Training events: the metric store (EventStorage) and its writers (EventWriter: metrics.json, TensorBoard)."""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict, deque
from pathlib import Path
from statistics import median

logger = logging.getLogger(__name__)


class EventStorage:
    """Scalars per iteration; smoothed values are medians over the last `window` puts (as detectron2)."""

    def __init__(self, start_iter: int = 0, window: int = 20):
        self.iter = start_iter
        self.window = window
        self._hist: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))
        self._latest: dict[str, tuple[float, int, bool]] = {}
        self.write_requested = False  # set by request_write(); cleared once written (clear_unsmoothed)

    def put_scalar(self, name: str, value: float, smooth: bool = True) -> None:
        value = float(value)
        self._hist[name].append(value)
        self._latest[name] = (value, self.iter, smooth)

    def put_scalars(self, smooth: bool = True, **kv: float) -> None:
        for k, v in kv.items():
            self.put_scalar(k, v, smooth)

    def latest_smoothed(self) -> dict[str, tuple[float, int]]:
        """name → (value, iteration): median of the window for smoothed scalars, else the last value."""
        out = {}
        for k, (v, it, smooth) in self._latest.items():
            out[k] = (median(self._hist[k]) if smooth else v, it)
        return out

    def latest(self, name: str) -> tuple[float, int] | None:
        """(last value put, its iteration) of one scalar, or None if none was put since it was last cleared."""
        if name not in self._latest:
            return None
        value, it, _ = self._latest[name]
        return value, it

    def request_write(self) -> None:
        """Ask the PeriodicWriter to write at the end of this iteration's hooks, whatever its period (every
        evaluation gets its own metrics.json line)."""
        self.write_requested = True

    def median(self, name: str) -> float | None:
        h = self._hist.get(name)
        return median(h) if h else None

    def history(self) -> dict[str, list[float]]:
        """The smoothing windows, saved with a checkpoint so that a resumed run writes the same medians."""
        return {k: list(v) for k, v in self._hist.items()}

    def load_history(self, hist: dict) -> None:
        for k, values in (hist or {}).items():
            self._hist[str(k)] = deque((float(v) for v in values), maxlen=self.window)

    def clear_unsmoothed(self) -> None:
        """Forget one-off values (e.g. evaluation results) once they have been written."""
        self._latest = {k: v for k, v in self._latest.items() if v[2]}
        self.write_requested = False


class EventWriter:
    """Writes what an EventStorage holds somewhere (detectron2's EventWriter). Subclass it and add it to
    Trainer.build_writers() to send metrics elsewhere."""

    def write(self, storage: EventStorage) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release files or connections (a no-op unless overridden)."""


class JSONWriter(EventWriter):
    """Append one JSON line per write to metrics.json with detectron2's keys."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._last_written: dict[str, int] = {}

    def write(self, storage: EventStorage) -> None:
        by_iter: dict[int, dict] = defaultdict(dict)
        for k, (v, it) in storage.latest_smoothed().items():
            if self._last_written.get(k, -1) >= it:
                continue
            by_iter[it][k] = v
            self._last_written[k] = it
        if not by_iter:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for it in sorted(by_iter):
                f.write(json.dumps({"iteration": it, **by_iter[it]}, sort_keys=False) + "\n")
            f.flush()


class TensorboardWriter(EventWriter):
    """TensorBoard event files in `log_dir`."""

    def __init__(self, log_dir: str | os.PathLike):
        from torch.utils.tensorboard import SummaryWriter

        self._w = SummaryWriter(str(log_dir))
        self._last_written: dict[str, int] = {}

    def write(self, storage: EventStorage) -> None:
        for k, (v, it) in storage.latest_smoothed().items():
            if self._last_written.get(k, -1) >= it:
                continue
            self._w.add_scalar(k, v, it)
            self._last_written[k] = it
        self._w.flush()

    def close(self) -> None:
        self._w.close()


def truncate_metrics(path: str | os.PathLike, last_iter: int) -> int:
    """Drop lines after `last_iter` (they are re-run on resume); returns how many lines were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            it = json.loads(line).get("iteration", -1)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if it <= last_iter:
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(l + "\n" for l in kept), encoding="utf-8")
    os.replace(tmp, path)
    return dropped


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All lines of a metrics.json (JSON lines)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out
