"""Breast cropping and side-from-pixels on synthetic films with real-film artefacts.

Each image is a synthetic mammogram (meddet.synth.render_film) with a random mix of artefacts
(bright film-border rows/columns, burned-in labels, laterality markers, rulers, tape, scanner edge
gradients, dense low-contrast breasts, MONOCHROME1), stored as a 12- or 16-bit DICOM and read back
through meddet's display chain (so MONOCHROME1 is inverted by the reader, as in real use). Then
meddet.io.breast crops it to the breast and finds the chest-wall side from the pixels alone.

Printed (the acceptance figures of issue 13):
- boxes kept: share of annotated lesion boxes entirely inside the crop (target 100%);
- label/marker pixels excluded: share of burned-in label and marker pixels outside the crop (>= 95%);
- side agreement: share of images whose chest-wall side from the pixels matches Laterality (100%);
and, for information: breast tissue pixels kept, ruler/tape pixels excluded, crop area, whole-image
fallbacks (no plausible breast), and the worst images of each measure.

    python benchmarks/breast_crop_benchmark.py                    # 240 images of 320 x 256, seed 0
    python benchmarks/breast_crop_benchmark.py --images 400 --size 640 512 --seed 3
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meddet.io import breast_region, chest_wall_side, read_dicom  # noqa: E402
from meddet.synth import ARTEFACTS, encode_dicom, render_film, save_dicom  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=240, help="number of synthetic films (default 240)")
    ap.add_argument("--size", type=int, nargs=2, default=(320, 256), metavar=("H", "W"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--margin", type=float, default=0.02, help="crop margin (default 0.02)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    rng = np.random.default_rng(args.seed)
    h, w = args.size
    boxes_in = boxes_total = 0
    label_out = label_total = strip_out = strip_total = tissue_in = tissue_total = 0
    side_ok = fallbacks = 0
    areas, worst = [], {"boxes": [], "labels": [], "side": [], "tissue": []}
    counts = dict.fromkeys(ARTEFACTS, 0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.images):
            side = "LEFT" if rng.random() < 0.5 else "RIGHT"
            view = "CC" if rng.random() < 0.5 else "MLO"
            arts = tuple(a for a in ARTEFACTS if rng.random() < 0.5)
            for a in arts:
                counts[a] += 1
            film = render_film(
                rng, h, w, side, view, [("mass_high", 1), ("calcification", 1)], arts, density=int(rng.integers(1, 5))
            )
            ds = encode_dicom(
                film.image,
                bits_stored=12 if i % 2 else 16,
                photometric=film.photometric,
                attributes={"Laterality": side[0]},
                uid_entropy=(str(i),),
            )
            path = Path(tmp) / f"{i}.dcm"
            save_dicom(ds, path)
            img = read_dicom(path, bit_depth=16 if i % 3 == 0 else 8)
            x, y, cw, ch = breast_region(img, args.margin, source=str(path))
            if (cw, ch) == (w, h):
                fallbacks += 1
            inside = np.zeros((h, w), bool)
            inside[y : y + ch, x : x + cw] = True
            areas.append(cw * ch / (w * h))
            kept = sum(bx >= x and by >= y and bx + bw <= x + cw and by + bh <= y + ch for bx, by, bw, bh in film.boxes)
            boxes_in += kept
            boxes_total += len(film.boxes)
            if kept < len(film.boxes):
                worst["boxes"].append((i, arts))
            n_lab = int(film.labels.sum())
            if n_lab:
                out = int((film.labels & ~inside).sum())
                label_out += out
                label_total += n_lab
                if out < 0.95 * n_lab:
                    worst["labels"].append((i, arts, round(out / n_lab, 3)))
            strip_total += int(film.strips.sum())
            strip_out += int((film.strips & ~inside).sum())
            t_all = int(film.tissue.sum())
            t_in = int((film.tissue & inside).sum())
            tissue_in += t_in
            tissue_total += t_all
            if t_in < t_all:
                worst["tissue"].append((i, arts, round(t_in / t_all, 4)))
            found = chest_wall_side(img)
            if found == side.lower():
                side_ok += 1
            else:
                worst["side"].append((i, arts))
    elapsed = time.perf_counter() - t0

    def pct(a: int, b: int) -> str:
        return f"{100.0 * a / b:.2f}%" if b else "n/a"

    print(
        f"{args.images} synthetic films of {h} x {w} (seed {args.seed}), artefacts drawn: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    print(f"boxes kept in the crop:          {pct(boxes_in, boxes_total)} ({boxes_in}/{boxes_total})   target 100%")
    print(f"label/marker pixels excluded:    {pct(label_out, label_total)} ({label_out}/{label_total})   target >= 95%")
    print(f"side from pixels = Laterality:   {pct(side_ok, args.images)} ({side_ok}/{args.images})   target 100%")
    print(f"breast tissue pixels kept:       {pct(tissue_in, tissue_total)}")
    print(f"ruler/tape pixels excluded:      {pct(strip_out, strip_total)}")
    print(
        f"crop area (share of the image):  mean {np.mean(areas):.3f}, max {np.max(areas):.3f}; "
        f"whole-image fallbacks {fallbacks}"
    )
    print(f"time: {elapsed:.1f} s ({1000 * elapsed / args.images:.1f} ms per image, DICOM write + read included)")
    for k, v in worst.items():
        if v:
            print(f"worst {k}: {v[:8]}")
    ok = boxes_in == boxes_total and label_out >= 0.95 * label_total and side_ok == args.images
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
