"""Convert medical detection datasets to meddet's COCO layout, check them, or generate a synthetic one.

  meddet-convert cbis-ddsm --mass-csv mass_case_description_train_set.csv mass_..._test_set.csv \\
      --calc-csv calc_..._train_set.csv calc_..._test_set.csv --dicom-root CBIS-DDSM --out data/cbis --workers 8
  meddet-convert cbis-ddsm --dicom-info cbis-jpeg/csv/dicom_info.csv --dicom-root cbis-jpeg --out data/cbis
  meddet-convert mias --info all-mias/Info.txt --images all-mias --out data/mias
  meddet-convert inbreast --root "INbreast Release 1.0" --out data/inbreast
  meddet-convert boxes --csv boxes.csv --images imgs/ --out data/boxes
  meddet-convert images --src dicoms/ --out data/pngs --workers 8
  meddet-convert yolo2coco --data data.yaml --out data/coco
  meddet-convert coco2yolo --coco data/cbis/train.json data/cbis/val.json --out data/yolo
  meddet-convert merge data/a/all.json data/b/all.json --out data/merged.json
  meddet-convert subset data/cbis/test.json --out data/cc.json --where view=CC --classes mass_high
  meddet-convert check data/cbis/train.json data/cbis/val.json data/cbis/test.json
  meddet-convert synth --out data/synth --patients 40 --seed 0

(The same commands: `meddet convert CMD ...`, `python convert_dataset.py CMD ...`.)

Conversions write OUT/images/*.png, OUT/all.json and OUT/{train,val,test}.json, OUT/manifest.jsonl
(source -> output, shape, bit depth, SHA-256) and OUT/errors.txt (one line per skipped item).
A rerun reuses every output that is complete and valid; --shard I/N converts one share of the
images (run once more without --shard to write the COCO files).
Exit codes: 0 done; 1 done but some items were skipped (listed at the end and in errors.txt), or
check found errors; 2 bad input or options.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from meddet.cli.base import run_cli, setup_logging

if TYPE_CHECKING:
    from meddet.data.convert import ConversionReport
    from meddet.data.parallel import RunOptions
    from meddet.io.dicom import PixelOptions

HELP = "convert datasets to COCO, check them, or make a synthetic one"

COMMANDS = (
    "cbis-ddsm",
    "mias",
    "inbreast",
    "boxes",
    "images",
    "yolo2coco",
    "coco2yolo",
    "merge",
    "subset",
    "check",
    "synth",
)


def _add_pixels(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pixels (DICOM images)")
    g.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="PNG bit depth (default 8)")
    g.add_argument(
        "--gamma", type=float, default=0.8, help="out = max*(x/max)**gamma after normalization (default 0.8)"
    )
    g.add_argument(
        "--normalize",
        choices=("minmax", "percentile", "zscore", "fixed"),
        default="minmax",
        help="what maps to black/white, from the whole image (default minmax)",
    )
    g.add_argument(
        "--percentiles",
        type=float,
        nargs=2,
        default=(1.0, 99.0),
        metavar=("LOW", "HIGH"),
        help="percentiles for --normalize percentile (default 1 99)",
    )
    g.add_argument(
        "--fixed-range",
        type=float,
        nargs=2,
        default=None,
        metavar=("LOW", "HIGH"),
        help="value range for --normalize fixed (default: the file's full range)",
    )
    g.add_argument("--no-voi", action="store_true", help="ignore VOI LUT / window tags in DICOM files")
    g.add_argument("--window-index", type=int, default=0, help="which VOI LUT / window to apply (default 0)")


def _add_geometry(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("geometry (recorded with the pixels in the COCO info as the preprocessing recipe)")
    g.add_argument(
        "--flip-left",
        nargs="?",
        const="tags",
        default="",
        choices=("tags", "pixels"),
        help="mirror breasts so the chest wall is on the left; the side from the tags "
        "(PatientOrientation, else laterality; the default) or from the pixels",
    )
    g.add_argument("--crop-breast", action="store_true", help="crop images to the breast (boxes move with it)")


def _add_split(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=(0.7, 0.15, 0.15),
        metavar=("TRAIN", "VAL", "TEST"),
        help="patient-level split fractions (default 0.7 0.15 0.15)",
    )
    p.add_argument("--seed", type=int, default=42, help="seed of the split (default 42)")


def _add_run(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("running")
    g.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    g.add_argument("--shard", default=None, metavar="I/N", help="convert only share I of N (0 <= I < N)")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="convert everything again (default: reuse valid outputs); ids.json keeps the ids",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The standalone parser (meddet-convert, convert_dataset.py)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The conversion commands as subcommands of `parser` (`meddet convert CMD`, `meddet-convert CMD`)."""
    sub = parser.add_subparsers(dest="convert_command", required=True, metavar="{" + ",".join(COMMANDS) + "}")

    p = sub.add_parser("cbis-ddsm", help="CBIS-DDSM (TCIA DICOM tree, or the JPEG re-release) -> COCO")
    p.add_argument("--mass-csv", nargs="+", default=[], metavar="CSV", help="mass description CSV(s)")
    p.add_argument("--calc-csv", nargs="+", default=[], metavar="CSV", help="calcification description CSV(s)")
    p.add_argument(
        "--dicom-root",
        required=True,
        help="folder the CSV paths are relative to (with --dicom-info: the re-release's root)",
    )
    p.add_argument(
        "--dicom-info",
        default=None,
        metavar="CSV",
        help="the JPEG re-release's csv/dicom_info.csv (default CSVs: the four in its folder)",
    )
    p.add_argument(
        "--classes",
        choices=("suspicion", "type", "pathology"),
        default="suspicion",
        help="suspicion: calcification/mass_low/mass_high (default); type: calcification/mass; "
        "pathology: benign/malignant",
    )
    p.add_argument(
        "--mass-high-min-assessment",
        type=int,
        default=4,
        help="BI-RADS assessment from which a mass is mass_high (default 4)",
    )
    p.add_argument(
        "--benign-without-callback",
        choices=("benign", "separate"),
        default="benign",
        help="pathology classes: BENIGN_WITHOUT_CALLBACK is benign (default) or its own class",
    )
    p.add_argument(
        "--resplit",
        action="store_true",
        help="patient-level re-split with --split fractions instead of the official train/test split",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.15,
        help="official split: share of training images (by patient) kept for validation (default 0.15)",
    )
    _add_geometry(p)
    p.add_argument("--out", required=True, help="output folder")
    _add_pixels(p)
    _add_split(p)
    _add_run(p)
    _add_debug(p)

    p = sub.add_parser("mias", help="MIAS Info.txt + PGM images -> COCO")
    p.add_argument("--info", required=True, help="Info.txt")
    p.add_argument("--images", required=True, help="folder holding mdbNNN.pgm")
    p.add_argument(
        "--classes",
        choices=("abnormality", "type", "pathology"),
        default="abnormality",
        help="abnormality: the six MIAS classes (default); type: calcification/mass; pathology",
    )
    p.add_argument("--out", required=True, help="output folder")
    _add_split(p)
    _add_run(p)
    _add_debug(p)

    p = sub.add_parser("inbreast", help="INbreast (INbreast.csv, AllDICOMs/, AllXML/) -> COCO")
    p.add_argument("--root", required=True, help="the release folder (INbreast Release 1.0)")
    p.add_argument(
        "--classes",
        choices=("type", "abnormality"),
        default="type",
        help="type: calcification/mass (default); abnormality: also distortion/asymmetry",
    )
    p.add_argument("--point-size", type=int, default=14, help="box size in px of single-point ROIs (default 14)")
    p.add_argument("--out", required=True, help="output folder")
    _add_pixels(p)
    _add_split(p)
    _add_run(p)
    _add_debug(p)

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
    p.add_argument("--out", required=True, help="output folder")
    _add_pixels(p)
    _add_split(p)
    _add_run(p)
    _add_debug(p)

    p = sub.add_parser("images", help="a folder of DICOM/PNG/JPEG images -> PNGs (no annotations)")
    p.add_argument("--src", required=True, help="folder searched recursively")
    p.add_argument("--out", required=True, help="output folder")
    _add_pixels(p)
    _add_geometry(p)
    _add_run(p)
    _add_debug(p)

    p = sub.add_parser("yolo2coco", help="Ultralytics YOLO dataset (data.yaml) -> one COCO file per split")
    p.add_argument("--data", required=True, help="the dataset YAML")
    p.add_argument("--out", required=True, help="output folder for the COCO files")
    _add_debug(p)

    p = sub.add_parser("coco2yolo", help="COCO files (one per split, named by split) -> Ultralytics YOLO layout")
    p.add_argument("--coco", nargs="+", required=True, help="COCO files; the split is the file name (train.json ...)")
    p.add_argument("--out", required=True, help="output folder (images/, labels/, data.yaml)")
    p.add_argument("--image-root", default="", help="folder file_name is relative to (default: the JSON's folder)")
    p.add_argument("--symlink", action="store_true", help="link the images instead of copying them")
    _add_debug(p)

    p = sub.add_parser("merge", help="merge COCO files (classes matched by name)")
    p.add_argument("coco", nargs="+", help="COCO files")
    p.add_argument("--out", required=True, help="the merged COCO file")
    _add_debug(p)

    p = sub.add_parser("subset", help="a subset of a COCO file (classes, image attributes, a sample)")
    p.add_argument("coco", help="COCO file")
    p.add_argument("--out", required=True, help="the subset COCO file")
    p.add_argument("--classes", nargs="+", default=None, metavar="NAME", help="keep only these classes")
    p.add_argument(
        "--where",
        nargs="+",
        default=[],
        metavar="FIELD=V1,V2",
        help="keep images whose FIELD is one of the values, e.g. view=CC laterality=LEFT",
    )
    p.add_argument("--max-images", type=int, default=None, help="then keep at most N images (random sample)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    p.add_argument("--image-root", default="", help="folder file_name is relative to (default: the JSON's folder)")
    _add_debug(p)

    p = sub.add_parser("check", help="check COCO files and their images; exit 1 on errors")
    p.add_argument("coco", nargs="+", help="COCO files, one per split (the file name is the split name)")
    p.add_argument("--image-root", default="", help="folder file_name is relative to (default: the JSON's folder)")
    p.add_argument(
        "--report-dir", default=None, help="where check_report.json/.md go (default: the first COCO file's folder)"
    )
    p.add_argument("--no-images", action="store_true", help="check the annotations only, do not open images")
    p.add_argument("--workers", type=int, default=1, help="processes reading images (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_debug(p)

    p = sub.add_parser("synth", help="write a synthetic CBIS-DDSM release (DICOM tree + CSVs)")
    p.add_argument("--out", required=True, help="output folder (CSVs and CBIS-DDSM/)")
    p.add_argument("--patients", type=int, default=20, help="number of patients (default 20)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--height", type=int, default=1024, help="mammogram height in pixels (default 1024)")
    p.add_argument("--width", type=int, default=640, help="mammogram width in pixels (default 640)")
    p.add_argument(
        "--quirks",
        action="store_true",
        help="break it like real downloads: a corrupt DICOM, a missing file, a mismatched mask size",
    )
    p.add_argument("--jpeg-release", action="store_true", help="write the JPEG re-release layout (csv/, jpeg/)")
    _add_debug(p)


def _pixels(args: argparse.Namespace) -> PixelOptions:
    from meddet.io.dicom import PixelOptions

    return PixelOptions(
        apply_voi=not args.no_voi,
        window_index=args.window_index,
        normalize=args.normalize,
        percentiles=tuple(args.percentiles),
        fixed_range=tuple(args.fixed_range) if args.fixed_range else None,
        gamma=args.gamma,
        bit_depth=args.bit_depth,
    )


def _run(args: argparse.Namespace) -> RunOptions:
    from meddet.data.parallel import RunOptions, parse_shard

    return RunOptions(
        workers=args.workers, shard=parse_shard(args.shard) if args.shard else None, resume=not args.overwrite
    )


def _convert(args: argparse.Namespace) -> ConversionReport:
    """Run a conversion command; returns its ConversionReport."""
    run_opts, progress = _run(args), not args.no_progress
    if args.convert_command == "cbis-ddsm":
        from meddet.data.formats.cbis_ddsm import ClassMapping, convert_cbis_ddsm

        mass, calc = args.mass_csv, args.calc_csv
        if args.dicom_info and not (mass or calc):
            folder = Path(args.dicom_info).parent
            mass = sorted(str(p) for p in folder.glob("mass_case_description_*.csv"))
            calc = sorted(str(p) for p in folder.glob("calc_case_description_*.csv"))
        return convert_cbis_ddsm(
            mass,
            calc,
            args.dicom_root,
            args.out,
            classes=ClassMapping(args.classes, args.mass_high_min_assessment, args.benign_without_callback),
            pixels=_pixels(args),
            split=args.split if args.resplit else "official",
            val_fraction=args.val_fraction,
            seed=args.seed,
            dicom_info=args.dicom_info,
            flip_left=args.flip_left,
            crop_breast=args.crop_breast,
            run=run_opts,
            progress=progress,
        )
    if args.convert_command == "mias":
        from meddet.data.formats.mias import convert_mias

        return convert_mias(
            args.info,
            args.images,
            args.out,
            scheme=args.classes,
            split=args.split,
            seed=args.seed,
            run=run_opts,
            progress=progress,
        )
    if args.convert_command == "inbreast":
        from meddet.data.formats.inbreast import convert_inbreast

        return convert_inbreast(
            args.root,
            args.out,
            scheme=args.classes,
            point_size=args.point_size,
            pixels=_pixels(args),
            split=args.split,
            seed=args.seed,
            run=run_opts,
            progress=progress,
        )
    if args.convert_command == "boxes":
        from meddet.data.formats.box_csv import convert_box_csv

        return convert_box_csv(
            args.csv,
            args.images,
            args.out,
            classes=args.classes,
            pixels=_pixels(args),
            split=args.split,
            seed=args.seed,
            run=run_opts,
            progress=progress,
        )
    from meddet.data.formats.images import convert_images

    return convert_images(
        args.src,
        args.out,
        pixels=_pixels(args),
        flip_left=args.flip_left,
        crop_breast=args.crop_breast,
        run=run_opts,
        progress=progress,
    )


def _where(items: list[str]) -> dict[str, list[str]]:
    from meddet.errors import ConfigError

    out = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--where: expected FIELD=VALUE[,VALUE...], found {item!r}")
        out[key] = values.split(",")
    return out


def run(args: argparse.Namespace) -> int:
    if args.convert_command == "synth":
        from meddet.synth import make_cbis_ddsm, make_cbis_ddsm_jpeg

        size = (args.height, args.width)
        if args.jpeg_release:
            info = make_cbis_ddsm_jpeg(args.out, n_patients=args.patients, seed=args.seed, image_size=size)
            print(f"{info['n_images']} mammograms (JPEG re-release layout); dicom_info: {info['dicom_info']}")
            return 0
        info = make_cbis_ddsm(args.out, n_patients=args.patients, seed=args.seed, image_size=size, quirks=args.quirks)
        print(
            f"{info['n_images']} mammograms, {info['n_abnormalities']} abnormalities of {info['n_patients']} patients"
        )
        print(f"DICOM root: {info['dicom_root']}")
        print("mass CSVs: " + " ".join(str(p) for p in info["mass_csvs"]))
        print("calc CSVs: " + " ".join(str(p) for p in info["calc_csvs"]))
        if args.quirks:
            print("quirks: " + ", ".join(f"{k} {v}" for k, v in info["quirks"].items()))
        return 0
    if args.convert_command == "check":
        from meddet.data.check import check_dataset

        checked = check_dataset(
            args.coco,
            image_root=args.image_root,
            check_images=not args.no_images,
            workers=args.workers,
            progress=not args.no_progress,
        )
        print(checked.table())
        paths = checked.write(args.report_dir or Path(args.coco[0]).parent)
        print(f"\nreport: {paths[0]} and {paths[1]}")
        return 1 if checked.errors else 0
    if args.convert_command == "yolo2coco":
        from meddet.data.formats.yolo import yolo_to_coco

        converted = yolo_to_coco(args.data, args.out)
        print(converted.summary())
        return 0 if converted.ok else 1
    if args.convert_command == "coco2yolo":
        from meddet.data.formats.yolo import coco_to_yolo

        print(
            coco_to_yolo({Path(p).stem: p for p in args.coco}, args.out, image_root=args.image_root, link=args.symlink)
        )
        return 0
    if args.convert_command == "merge":
        from meddet.data.formats.coco_tools import merge_coco

        merged = merge_coco(args.coco, args.out)
        print(
            f"{len(merged['images'])} images, {len(merged['annotations'])} boxes, "
            f"classes {[c['name'] for c in merged['categories']]} -> {args.out}"
        )
        return 0
    if args.convert_command == "subset":
        from meddet.data.coco import load_coco, save_json_atomic
        from meddet.data.formats.coco_tools import filter_coco, rebase_file_names

        sub = filter_coco(
            load_coco(args.coco),
            categories=args.classes,
            where=_where(args.where),
            max_images=args.max_images,
            seed=args.seed,
        )
        save_json_atomic(rebase_file_names(sub, args.coco, args.out, args.image_root), args.out)
        print(f"{len(sub['images'])} images, {len(sub['annotations'])} boxes -> {args.out}")
        return 0
    report = _convert(args)
    print(report.summary())
    return 0 if report.ok else 1


def execute(args: argparse.Namespace) -> int:
    """Run a parsed conversion command as a CLI: log lines to stderr (not through progress bars), one
    error line and exit 2 on bad input (a traceback with --debug)."""
    setup_logging(logging.INFO)
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(loggers=[logging.getLogger()]):  # log lines do not break progress bars
        return run_cli(lambda: run(args), debug=args.debug)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`meddet-convert` (and convert_dataset.py): parse `argv` and run."""
    return execute(build_parser(prog).parse_args(argv))
