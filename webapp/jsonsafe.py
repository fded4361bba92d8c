"""Valid JSON everywhere: NaN and infinities (undefined metrics, empty evaluations) become ``null``.

Python's json writes ``NaN``/``Infinity``, which no JSON parser reads (a browser's ``response.json()``
throws); the app's JSON provider passes every response through :func:`finite` and refuses any that
would still hold one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from flask.json.provider import DefaultJSONProvider


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, +-inf; Python or NumPy) replaced by None, recursively
    through dicts, lists and tuples; NumPy scalars and arrays become plain Python values."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite(obj.tolist())
    if isinstance(obj, np.generic):
        return finite(obj.item())
    return obj


class FiniteJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with NaN/inf written as null (and never as bare NaN)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(finite(obj), **kwargs)
