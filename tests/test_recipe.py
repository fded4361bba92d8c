"""One preprocessing recipe from conversion to serving: recorded in the COCO info, the run config and the
bundle; replayed on original files with boxes reported in the original file's pixels."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO

DISC = (40, 90, 10)  # x, y, radius of the bright finding in the ORIGINAL image (a right breast)
SIZE = (160, 128)  # rows, columns


def breast_dicom(path: Path, artefact: str = "", seed: int = 0) -> Path:
    """A right breast (chest wall on the right) with one bright disc: the blob detector finds it."""
    from meddet.synth.mammo import encode_dicom, save_dicom

    h, w = SIZE
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    cv2.ellipse(img, (w - 1, h // 2), (int(w * 0.8), int(h * 0.42)), 0, 0, 360, 0.3, -1)
    img += np.where(img > 0, rng.normal(0, 0.01, img.shape), 0).astype(np.float32)
    x, y, r = DISC
    cv2.circle(img, (x, y), r, 1.0, -1)
    if artefact == "border":
        img[0:2, :] = 1.0  # a bright film-border row along the top
    elif artefact == "label":
        img[6:14, 4:22] = 1.0  # a burned-in film label away from the breast
    ds = encode_dicom(
        np.clip(img, 0, 1),
        bits_stored=12,
        attributes={"Laterality": "R", "ViewPosition": "CC", "PatientOrientation": ["P", "L"]},
        uid_entropy=(str(path), artefact),
    )
    save_dicom(ds, path)
    return path


def blob_weights(path: Path) -> Path:
    import torch
    from blob_detector import make_blob_detector

    from meddet.modeling import build_model

    model = make_blob_detector(build_model(blob_cfg()))
    torch.save({"model": model.state_dict()}, path)
    return path


def blob_cfg(opts=()):
    from blob_detector import BLOB_MODEL_OPTS

    from meddet.config import load_config

    return load_config(
        str(REPO / "configs" / "Base-RCNN-FPN.yaml"),
        BLOB_MODEL_OPTS
        + [
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "1",
            "DATASETS.CLASS_NAMES",
            "['mass']",
            "INPUT.MIN_SIZE_TEST",
            "112",
            "INPUT.MAX_SIZE_TEST",
            "1000",
            *opts,
        ],
    )


def top(det: dict, thresh: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    keep = np.asarray(det["scores"]) >= thresh
    order = np.argsort(-np.asarray(det["scores"])[keep], kind="stable")
    return np.asarray(det["boxes"])[keep][order], np.asarray(det["scores"])[keep][order]


def test_recipe_serialises_and_maps_to_the_config():
    from meddet.config import get_cfg
    from meddet.io import PixelOptions, PreprocessRecipe

    r = PreprocessRecipe(
        pixels=PixelOptions(normalize="percentile", percentiles=(2.0, 98.0), gamma=1.0, bit_depth=16),
        flip_left="pixels",
        crop_breast=True,
        crop_margin=0.05,
    )
    d = json.loads(json.dumps(r.to_dict()))
    assert PreprocessRecipe.from_dict(d) == r
    cfg = get_cfg()
    cfg.merge_from_list(r.config_opts())
    assert PreprocessRecipe.from_cfg(cfg).same_steps(r)
    with pytest.raises(Exception, match="FLIP_LEFT"):
        PreprocessRecipe(flip_left="sideways")


@pytest.mark.parametrize(
    "flip,crop,artefact", [("tags", False, ""), ("", True, "label"), ("tags", True, "border"), ("pixels", True, "")]
)
def test_dicom_gives_the_boxes_of_its_converted_png_in_original_pixels(tmp_path, flip, crop, artefact):
    """Convert a DICOM with flip / crop; a model (blob detector) on the converted PNG and the same model
    handed the original DICOM agree on boxes (0.5 px) and scores (1e-4), both in the DICOM's pixels."""
    from meddet.data.formats.images import convert_images
    from meddet.inference import Predictor
    from meddet.io.recipe import TaggedImage, adopt_dataset_recipe, geometry_from_record

    src = tmp_path / "src"
    src.mkdir()
    dcm = breast_dicom(src / "a.dcm", artefact)
    convert_images(src, tmp_path / "out", flip_left=flip, crop_breast=crop, progress=False)
    coco = json.loads((tmp_path / "out" / "all.json").read_text())
    rec = coco["images"][0]
    assert coco["info"]["preprocess"]["flip_left"] == flip and coco["info"]["preprocess"]["crop_breast"] == crop
    if flip:
        assert rec["flipped"] is True
    if crop:
        assert rec["width"] * rec["height"] < SIZE[0] * SIZE[1]

    cfg = blob_cfg()
    cfg.defrost()
    adopt_dataset_recipe(cfg, [tmp_path / "out" / "all.json"])  # what the trainer does
    assert cfg.PREPROCESS.FLIP_LEFT == flip and cfg.PREPROCESS.CROP_BREAST == crop
    p = Predictor(cfg, weights=blob_weights(tmp_path / "w.pth"))

    png = p.read(tmp_path / "out" / rec["file_name"])
    on_png = p(TaggedImage(png, {"preprocessed": True}))  # as evaluate sees a converted record
    png_boxes, png_scores = top(on_png)
    png_boxes = geometry_from_record(rec).to_original(png_boxes)
    dcm_boxes, dcm_scores = top(p(dcm))
    assert len(dcm_boxes) >= 1 and len(dcm_boxes) == len(png_boxes)
    np.testing.assert_allclose(dcm_boxes, png_boxes, atol=0.5)
    np.testing.assert_allclose(dcm_scores, png_scores, atol=1e-4)
    x, y, r = DISC  # the finding, in the original DICOM's pixels
    bx = dcm_boxes[0]
    assert abs((bx[0] + bx[2]) / 2 - x) < 4 and abs((bx[1] + bx[3]) / 2 - y) < 4


def test_bundle_of_a_flip_crop_run_serves_a_raw_dicom_in_original_pixels(tmp_path):
    """A bundle whose config flips and crops records the recipe in meddet.json; the web API handed the raw
    DICOM answers with boxes in the DICOM's own pixels."""
    from meddet.hub import load_predictor, save_predictor
    from meddet.inference import Predictor
    from webapp import create_app

    cfg = blob_cfg(["PREPROCESS.FLIP_LEFT", "tags", "PREPROCESS.CROP_BREAST", "True"])
    bundle = save_predictor(Predictor(cfg, weights=blob_weights(tmp_path / "w.pth")), tmp_path / "bundle")
    meta = json.loads((Path(bundle) / "meddet.json").read_text())
    assert meta["input"]["preprocess"]["flip_left"] == "tags" and meta["input"]["preprocess"]["crop_breast"]
    loaded = load_predictor(bundle)
    assert loaded.recipe.geometric
    dcm = breast_dicom(tmp_path / "a.dcm")
    client = create_app(loaded).test_client()
    r = client.post(
        "/api/v1/predict", data={"file": (io.BytesIO(dcm.read_bytes()), "a.dcm")}, content_type="multipart/form-data"
    )
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert body["image"]["width"] == SIZE[1] and body["image"]["height"] == SIZE[0]
    best = max(body["detections"], key=lambda d: d["score"])
    x1, y1, x2, y2 = best["box"]
    x, y, _ = DISC
    assert abs((x1 + x2) / 2 - x) < 4 and abs((y1 + y2) / 2 - y) < 4
    direct = loaded(loaded.read(dcm))
    np.testing.assert_allclose(best["box"], top(direct)[0][0], atol=0.01)
    # meddet.json's recipe is the one replayed (as its tiling is)
    meta["input"]["preprocess"]["crop_breast"] = False
    (Path(bundle) / "meddet.json").write_text(json.dumps(meta))
    assert not load_predictor(bundle).recipe.crop_breast


@pytest.mark.parametrize("artefact", ["border", "label", "marker", "ruler", "tape", "gradient", "dense", "monochrome1"])
def test_round_trip_with_each_film_artefact(tmp_path, artefact):
    """Flip (by tags) + crop of a right-breast film with one artefact of real films: the original DICOM
    and its converted PNG give the same detections in the DICOM's pixels."""
    from meddet.data.formats.images import convert_images
    from meddet.inference import Predictor
    from meddet.io.recipe import TaggedImage, adopt_dataset_recipe, geometry_from_record
    from meddet.synth import encode_dicom, render_film, save_dicom

    film = render_film(np.random.default_rng(7), 192, 160, "RIGHT", "CC", [("mass_high", 1)], (artefact,))
    src = tmp_path / "src"
    src.mkdir()
    dcm = src / "a.dcm"
    save_dicom(
        encode_dicom(film.image, photometric=film.photometric, bits_stored=12, attributes={"Laterality": "R"}), dcm
    )
    convert_images(src, tmp_path / "out", flip_left="tags", crop_breast=True, progress=False)
    rec = json.loads((tmp_path / "out" / "all.json").read_text())["images"][0]
    assert rec["flipped"] and rec["crop"] and rec["crop"][2] * rec["crop"][3] < 192 * 160
    cfg = blob_cfg()
    cfg.defrost()
    adopt_dataset_recipe(cfg, [tmp_path / "out" / "all.json"])
    p = Predictor(cfg, weights=blob_weights(tmp_path / "w.pth"))
    on_png = p(TaggedImage(p.read(tmp_path / "out" / rec["file_name"]), {"preprocessed": True}))
    png_boxes, png_scores = top(on_png, 0.05)
    dcm_boxes, dcm_scores = top(p(dcm), 0.05)
    assert len(dcm_boxes) == len(png_boxes)
    np.testing.assert_allclose(dcm_boxes, geometry_from_record(rec).to_original(png_boxes), atol=0.5)
    np.testing.assert_allclose(dcm_scores, png_scores, atol=1e-4)
    assert (dcm_boxes[:, 2] <= 160 + 0.5).all() and (dcm_boxes[:, 0] >= -0.5).all()


def test_explanations_of_a_flip_crop_model_are_in_original_pixels(tmp_path):
    """-c explain and explain_detections (the web app's) explain what the model saw (flipped, cropped)
    and return maps and boxes in the original image's frame: the map peaks on the finding."""
    from meddet.inference import Predictor
    from meddet.xai import explain_detections
    from meddet.xai.explain import explain

    cfg = blob_cfg(["PREPROCESS.FLIP_LEFT", "tags", "PREPROCESS.CROP_BREAST", "True"])
    weights = blob_weights(tmp_path / "w.pth")
    p = Predictor(cfg, weights=weights)
    dcm = breast_dicom(tmp_path / "a.dcm")
    image = p.read(dcm)
    boxes, _ = top(p(image))
    for max_side in (None, 80):
        cams = explain_detections(p, image, boxes[:1], [0], max_side=max_side)
        s = 1.0 if max_side is None else 80 / SIZE[0]
        assert cams[0].heatmap.shape == (round(SIZE[0] * s), round(SIZE[1] * s))
        np.testing.assert_allclose(cams[0].box, boxes[0] * s, atol=0.5)
        assert cams[0].energy_inside() > 0.5  # the map lies on the finding in the original frame
        assert cams[0].heatmap[:, -round(SIZE[1] * s) // 3 :].sum() < 0.1 * cams[0].heatmap.sum()  # not mirrored
    written = explain(cfg, [dcm], tmp_path / "xai", weights=weights)
    assert cv2.imread(str(written[0])).shape[:2] == SIZE


def test_loaders_replay_the_recipe_on_raw_records(tmp_path):
    """A COCO file listing original DICOMs (boxes in their pixels): the training mapper flips / crops image
    and boxes together; evaluation predictions come back in the original pixels."""
    from meddet.apps.predictors import predict_dataset
    from meddet.data.coco import coco_to_records
    from meddet.data.dataset import DatasetMapper

    breast_dicom(tmp_path / "a.dcm")
    x, y, r = DISC
    coco = {
        "images": [{"id": 1, "file_name": "a.dcm", "height": SIZE[0], "width": SIZE[1]}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 1,
                "bbox": [x - r, y - r, 2 * r + 1, 2 * r + 1],
                "area": 441,
                "iscrowd": 0,
            }
        ],
        "categories": [{"id": 1, "name": "mass"}],
    }
    path = tmp_path / "raw.json"
    path.write_text(json.dumps(coco))
    cfg = blob_cfg(
        [
            "PREPROCESS.FLIP_LEFT",
            "tags",
            "PREPROCESS.CROP_BREAST",
            "True",
            "MODEL.WEIGHTS",
            str(blob_weights(tmp_path / "w.pth")),
        ]
    )
    rec = coco_to_records(coco, path)[0]
    out = DatasetMapper(cfg, is_train=False, with_boxes=True)(rec)
    assert out["geometry"].flipped and out["geometry"].crop
    img = out["image"].float().mean(0).numpy()
    bx = out["boxes"][0].numpy() * img.shape[1] / out["width"]
    cx, cy = int((bx[0] + bx[2]) / 2), int((bx[1] + bx[3]) / 2)
    assert img[cy, cx] > img.mean() + 2 * img.std()  # the moved box still frames the bright finding
    results = predict_dataset(cfg, path)
    best = max(results, key=lambda d: d["score"])
    bxx, byy, bw, bh = best["bbox"]
    assert abs(bxx + bw / 2 - x) < 4 and abs(byy + bh / 2 - y) < 4


def test_cbis_conversion_recipe_reaches_the_run_config_and_the_bundle(tmp_path):
    """convert_dataset.py cbis-ddsm --flip-left --crop-breast records the recipe; a run trained on it saves
    it in config.yaml (PREPROCESS.*, DICOM.*) and its bundle's meddet.json; the bundle's Predictor replays it."""
    import yaml
    from blob_detector import BLOB_MODEL_OPTS

    from convert_dataset import entry
    from meddet.config import load_config
    from meddet.hub import export_bundle, load_predictor
    from meddet.synth import make_cbis_ddsm
    from meddet.training import Trainer

    synth = make_cbis_ddsm(tmp_path / "raw", n_patients=2, seed=1, image_size=(160, 112))
    rc = entry(
        [
            "cbis-ddsm",
            "--mass-csv",
            *map(str, synth["mass_csvs"]),
            "--calc-csv",
            *map(str, synth["calc_csvs"]),
            "--dicom-root",
            str(synth["dicom_root"]),
            "--out",
            str(tmp_path / "data"),
            "--flip-left",
            "--crop-breast",
            "--gamma",
            "1.0",
            "--resplit",
            "--split",
            "1",
            "0",
            "0",
            "--no-progress",
        ]
    )
    assert rc == 0
    info = json.loads((tmp_path / "data" / "train.json").read_text())["info"]["preprocess"]
    assert info["flip_left"] == "tags" and info["crop_breast"] and info["gamma"] == 1.0
    cfg = load_config(
        str(REPO / "configs" / "Base-RCNN-FPN.yaml"),
        BLOB_MODEL_OPTS
        + [
            "MODEL.ROI_HEADS.NUM_CLASSES",
            "3",
            "DATASETS.TRAIN",
            f"('{tmp_path / 'data' / 'train.json'}',)",
            "OUTPUT_DIR",
            str(tmp_path / "run"),
            "SOLVER.MAX_ITER",
            "1",
            "SOLVER.IMS_PER_BATCH",
            "1",
            "INPUT.MIN_SIZE_TRAIN",
            "(96,)",
            "INPUT.MIN_SIZE_TEST",
            "96",
        ],
    )
    Trainer(cfg).train()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["PREPROCESS"]["FLIP_LEFT"] == "tags" and saved["PREPROCESS"]["CROP_BREAST"] is True
    assert saved["DICOM"]["GAMMA"] == 1.0
    bundle = export_bundle(tmp_path / "run", tmp_path / "bundle")
    meta = json.loads((bundle / "meddet.json").read_text())
    assert meta["input"]["preprocess"]["flip_left"] == "tags" and meta["input"]["preprocess"]["gamma"] == 1.0
    assert "cropped to the breast" in (bundle / "README.md").read_text()
    p = load_predictor(bundle)
    assert p.recipe.flip_left == "tags" and p.recipe.crop_breast and p.recipe.pixels.gamma == 1.0


def test_images_command_has_the_geometry_options_of_cbis_ddsm(tmp_path):
    from convert_dataset import build_parser, entry

    src = tmp_path / "src"
    src.mkdir()
    breast_dicom(src / "a.dcm")
    assert (
        entry(
            [
                "images",
                "--src",
                str(src),
                "--out",
                str(tmp_path / "out"),
                "--flip-left",
                "pixels",
                "--crop-breast",
                "--bit-depth",
                "16",
                "--no-progress",
            ]
        )
        == 0
    )
    coco = json.loads((tmp_path / "out" / "all.json").read_text())
    assert coco["info"]["preprocess"]["flip_left"] == "pixels" and coco["info"]["preprocess"]["bit_depth"] == 16
    assert coco["images"][0]["flipped"] is True and coco["images"][0]["original_size"] == list(SIZE)
    options = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["images"]._actions}
    cbis = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["cbis-ddsm"]._actions}
    assert {"flip_left", "crop_breast", "gamma", "normalize", "bit_depth", "no_voi", "window_index"} <= options & cbis
