#!/usr/bin/env python
"""Convert medical detection datasets to meddet's COCO layout, or generate a synthetic one.

  python convert_dataset.py cbis-ddsm --mass-csv mass_train.csv mass_test.csv \\
      --calc-csv calc_train.csv calc_test.csv --dicom-root CBIS-DDSM --out data/cbis
  python convert_dataset.py boxes --csv boxes.csv --images imgs/ --out data/boxes
  python convert_dataset.py synth --out data/synth --patients 40 --seed 0

Output: OUT/images/*.png, OUT/all.json and patient-level OUT/{train,val,test}.json.
Exit codes: 0 done; 1 done but some items were skipped (listed at the end); 2 bad input or options.
"""

from __future__ import annotations

import argparse
import logging
import sys

from meddet.cli import run_cli, setup_logging


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (images/ and the COCO JSON files)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="PNG bit depth (default 8)")
    p.add_argument(
        "--gamma", type=float, default=0.8, help="out = max*(x/max)**gamma after normalization (default 0.8)"
    )
    p.add_argument(
        "--normalize",
        choices=("minmax", "percentile", "zscore", "fixed"),
        default="minmax",
        help="DICOM intensity normalization (default minmax)",
    )
    p.add_argument("--no-voi", action="store_true", help="ignore VOI LUT / window tags in DICOM files")
    p.add_argument("--window-index", type=int, default=0, help="which VOI LUT / window to apply (default 0)")
    p.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=(0.7, 0.15, 0.15),
        metavar=("TRAIN", "VAL", "TEST"),
        help="patient-level split fractions (default 0.7 0.15 0.15)",
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the patient-level split (default 42)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convert_dataset.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{cbis-ddsm,boxes,synth}")

    p = sub.add_parser("cbis-ddsm", help="CBIS-DDSM description CSVs + DICOM tree -> COCO")
    p.add_argument("--mass-csv", nargs="+", default=[], metavar="CSV", help="mass description CSV(s)")
    p.add_argument("--calc-csv", nargs="+", default=[], metavar="CSV", help="calcification description CSV(s)")
    p.add_argument("--dicom-root", required=True, help="folder the CSV paths are relative to")
    p.add_argument(
        "--classes",
        choices=("suspicion", "lesion", "pathology"),
        default="suspicion",
        help="suspicion: calcification/mass_low/mass_high (default); lesion: calcification/mass; "
        "pathology: benign/malignant",
    )
    p.add_argument(
        "--mass-high-min-assessment",
        type=int,
        default=4,
        help="BI-RADS assessment from which a mass is mass_high (default 4)",
    )
    _add_common(p)

    p = sub.add_parser("boxes", help="box CSV (image,x,y,width,height,class[,patient_id]) + images -> COCO")
    p.add_argument("--csv", required=True, help="the box CSV")
    p.add_argument("--images", required=True, help="folder the CSV's image paths are relative to")
    p.add_argument(
        "--classes",
        nargs="+",
        default=None,
        metavar="NAME",
        help="class names in id order (default: the CSV's classes, sorted)",
    )
    _add_common(p)

    p = sub.add_parser("synth", help="write a synthetic CBIS-DDSM release (DICOM tree + CSVs)")
    p.add_argument("--out", required=True, help="output folder (CSVs and CBIS-DDSM/)")
    p.add_argument("--patients", type=int, default=20, help="number of patients (default 20)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--height", type=int, default=1024, help="mammogram height in pixels (default 1024)")
    p.add_argument("--width", type=int, default=640, help="mammogram width in pixels (default 640)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _pixels(args: argparse.Namespace):
    from meddet.io.dicom import PixelOptions

    return PixelOptions(
        apply_voi=not args.no_voi,
        window_index=args.window_index,
        normalize=args.normalize,
        gamma=args.gamma,
        bit_depth=args.bit_depth,
    )


def main(args: argparse.Namespace) -> int:
    if args.command == "synth":
        from meddet.synth import make_cbis_ddsm

        info = make_cbis_ddsm(args.out, n_patients=args.patients, seed=args.seed, image_size=(args.height, args.width))
        print(
            f"{info['n_images']} mammograms, {info['n_abnormalities']} abnormalities of {info['n_patients']} patients"
        )
        print(f"DICOM root: {info['dicom_root']}")
        print("mass CSVs: " + " ".join(str(p) for p in info["mass_csvs"]))
        print("calc CSVs: " + " ".join(str(p) for p in info["calc_csvs"]))
        return 0
    if args.command == "cbis-ddsm":
        from meddet.data.formats.cbis_ddsm import ClassMapping, convert_cbis_ddsm

        report = convert_cbis_ddsm(
            args.mass_csv,
            args.calc_csv,
            args.dicom_root,
            args.out,
            classes=ClassMapping(args.classes, args.mass_high_min_assessment),
            pixels=_pixels(args),
            split=args.split,
            seed=args.seed,
            progress=not args.no_progress,
        )
    else:
        from meddet.data.formats.box_csv import convert_box_csv

        report = convert_box_csv(
            args.csv,
            args.images,
            args.out,
            classes=args.classes,
            pixels=_pixels(args),
            split=args.split,
            seed=args.seed,
            progress=not args.no_progress,
        )
    print(report.summary())
    return 0 if report.ok else 1


def entry(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO)
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger()]):  # log lines do not break progress bars
        return run_cli(lambda: main(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(entry())
