"""JPEG / JPEG-LS frame headers, read without decoding (for image headers and DICOM fragments)."""

from __future__ import annotations

import io
import struct
from typing import IO

__all__ = ["jpeg_frame"]

# JPEG start-of-frame markers (C4 DHT, C8 JPG and CC DAC are not frames; F7 is JPEG-LS SOF55).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def jpeg_frame(f: IO[bytes]) -> tuple[int, int, int, int] | None:
    """(rows, columns, components, precision) of the first JPEG / JPEG-LS frame header, walking the
    markers from the start of ``f``; None when none is found."""
    if f.read(2) != b"\xff\xd8":
        return None
    while True:
        b = f.read(1)
        if not b:
            return None
        if b != b"\xff":
            raise ValueError("bad marker before the frame header")
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            return None
        m = marker[0]
        if m == 0x01 or 0xD0 <= m <= 0xD7:
            continue
        seg = f.read(2)
        if len(seg) < 2:
            return None
        length = int.from_bytes(seg, "big")
        if length < 2:
            raise ValueError("segment length below 2")
        if m in _JPEG_SOF:
            body = f.read(6)
            if len(body) < 6:
                return None
            precision, rows, cols, comps = body[0], *struct.unpack(">HH", body[1:5]), body[5]
            return rows, cols, comps, precision
        if m == 0xDA:  # start of scan before any frame header
            return None
        f.seek(length - 2, io.SEEK_CUR)
