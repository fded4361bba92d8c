"""Features that connect, end to end on tiny models: an ensemble evaluates, tunes, exports as a bundle of
bundles and is served by the web app; a run's tuned thresholds reach predict, evaluate, its bundle and the
web app, and follow classes by name through ensembles. Nothing here depends on what the tiny models
learned: only that each stage runs and the stages agree with each other."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, TINY_MODEL_OPTS, make_tiny_coco

# two tiny models trained, then evaluate/tune/export/serve end to end (~20 s)
pytestmark = pytest.mark.slow


def _detectron():
    spec = importlib.util.spec_from_file_location("detectron_cli", REPO / "detectron.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cli(*args) -> int:
    """detectron.py in this process (as `python detectron.py ARGS`, without the interpreter start-up)."""
    mod = _detectron()
    return mod.main(mod.parse_args([str(a) for a in args]))


def _set_yaml(path: Path, **keys) -> None:
    """Set dotted KEY: value in a saved config YAML."""
    data = yaml.safe_load(path.read_text())
    for key, value in keys.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path.write_text(yaml.safe_dump(data))


def _train(root: Path, name: str, coco: Path, seed: int) -> Path:
    """A tiny model trained 4 iterations on `coco`, every proposal kept (SCORE_THRESH_TEST 0) so it has
    boxes to fuse and to filter; returns its run folder."""
    from meddet.config import load_config
    from meddet.training import Trainer

    cfg = load_config(
        str(REPO / "configs" / "Base-RCNN-FPN.yaml"),
        TINY_MODEL_OPTS
        + [
            "DATASETS.TRAIN",
            f"('{coco}',)",
            "DATASETS.VAL",
            f"('{coco}',)",
            "DATASETS.TEST",
            f"('{coco}',)",
            "OUTPUT_DIR",
            str(root / name),
            "SEED",
            str(seed),
            "SOLVER.MAX_ITER",
            "4",
            "SOLVER.CHECKPOINT_PERIOD",
            "100",
            "TEST.EVAL_PERIOD",
            "0",
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
            "EVAL.BOOTSTRAP_SAMPLES",
            "0",
            "EVAL.GALLERY_SIZE",
            "0",
        ],
    )
    Trainer(cfg).train()
    return root / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A (classes square, disc), run B (A's weights in another run folder: a model fused with itself)
    and run C (another tiny model, trained on classes square and blob: a member that adds the class
    "blob"). Each run's config.yaml points at its own folder."""
    root = tmp_path_factory.mktemp("ens_e2e")
    coco = make_tiny_coco(root / "data", n_images=4)
    a = _train(root, "a", coco, seed=7)
    c = _train(root, "c", make_tiny_coco(root / "data_c", n_images=4, seed=1, names=("square", "blob")), seed=3)
    b = root / "b"
    b.mkdir()
    shutil.copy2(a / "model_final.pth", b / "model_final.pth")
    shutil.copy2(a / "config.yaml", b / "config.yaml")
    _set_yaml(b / "config.yaml", OUTPUT_DIR=str(b))
    return {"a": a, "b": b, "c": c, "coco": coco}


def _cfg(run: Path, *opts):
    from meddet.config import load_config

    return load_config(run / "config.yaml", list(opts))


def _sorted(det: dict) -> np.ndarray:
    rows = np.column_stack([det["boxes"], det["scores"], det["classes"]]).astype(np.float64)
    return rows[np.lexsort(rows.T[::-1])]


def test_ensemble_of_a_model_with_itself_is_the_model(runs):
    """Fusing a model with a copy of itself changes nothing: the model's own NMS left no same-class pair
    overlapping by more than its NMS IoU (0.5), below the fusion IoU, so each fused cluster is one box and
    its copy (NMS keeps one; WBF averages two equal boxes with equal scores)."""
    from meddet.apps.predictors import build_predictor

    image = np.asarray(__import__("cv2").imread(str(runs["coco"].parent / "images" / "img_000.png"), 0))
    single = build_predictor(_cfg(runs["a"]))
    alone = single(image)
    assert len(alone["scores"]) > 0
    for method in ("nms", "wbf"):
        ens = build_predictor(_cfg(runs["a"], "ENSEMBLE.METHOD", method, "ENSEMBLE.IOU_THRESH", 0.55), [runs["b"]])
        fused = ens(image)
        np.testing.assert_allclose(_sorted(fused), _sorted(alone), atol=1e-3, err_msg=method)
        assert fused["labels"] == [ens.class_names[c] for c in fused["classes"]]


def test_one_predictor_interface(runs):
    from meddet.apps.predictors import build_predictor
    from meddet.hub import export_bundle, load_predictor
    from meddet.inference import DetectorLike

    single = build_predictor(_cfg(runs["a"]))
    tiled = build_predictor(_cfg(runs["a"], "TILING.ENABLED", True, "TILING.SIZE", 64))
    ens = build_predictor(_cfg(runs["a"]), [runs["c"]])
    for p in (single, tiled, ens):
        assert isinstance(p, DetectorLike)
    assert tiled.tiled and not single.tiled and not ens.tiled
    assert ens.class_names == ["square", "disc", "blob"]
    assert list(ens.cfg.DATASETS.CLASS_NAMES) == ens.class_names
    bundle = export_bundle(runs["a"], runs["a"].parent / "iface_bundle", untuned=True)
    assert isinstance(load_predictor(bundle, device="cpu"), DetectorLike)


def test_evaluate_tune_export_and_serve_an_ensemble(runs, tmp_path, capsys):
    from meddet.hub import load_predictor
    from webapp import create_app

    a, b, c, coco = runs["a"], runs["b"], runs["c"], runs["coco"]
    # -c evaluate --ensemble (crashed before): runs and, for a model with a copy of itself fused by NMS,
    # scores exactly what the model alone scores.
    assert (
        cli(
            "-c",
            "evaluate",
            "--config-file",
            a / "config.yaml",
            "--ensemble",
            b,
            "--output",
            tmp_path / "ens",
            "--untuned",
            "ENSEMBLE.METHOD",
            "nms",
        )
        == 0
    )
    assert cli("-c", "evaluate", "--config-file", a / "config.yaml", "--output", tmp_path / "one", "--untuned") == 0
    ens_m = json.loads((tmp_path / "ens" / "metrics.json").read_text())
    one_m = json.loads((tmp_path / "one" / "metrics.json").read_text())
    for key in ("bbox/AP", "bbox/AP50", "prf1/F1"):
        assert ens_m[key] == pytest.approx(one_m[key], abs=1e-6), key

    def results(folder):
        rows = json.loads((tmp_path / folder / "coco_instances_results.json").read_text())
        return np.array(sorted([r["image_id"], r["category_id"], *r["bbox"], r["score"]] for r in rows))

    assert len(results("one")) > 0
    np.testing.assert_allclose(results("ens"), results("one"), atol=1e-3)

    # -c tune --ensemble: written beside the run's own tune/, for the ensemble's (the data's) classes.
    assert cli("-c", "tune", "--config-file", a / "config.yaml", "--ensemble", b, "ENSEMBLE.METHOD", "nms") == 0
    tuned = yaml.safe_load((a / "tune_ensemble" / "tuned_config.yaml").read_text())["TEST"]
    assert tuned["CLASS_SCORE_THRESH_NAMES"] == ["square", "disc"]
    assert not (a / "tune").exists()

    # -c export --run A --ensemble C: a bundle of bundles; C adds the class "blob".
    out = tmp_path / "bundle"
    assert cli("-c", "export", "--run", a, "--ensemble", c, "--output", out, "ENSEMBLE.METHOD", "nms") == 0
    meta = json.loads((out / "meddet.json").read_text())
    assert meta["kind"] == "ensemble" and [m["folder"] for m in meta["members"]] == ["member_0", "member_1"]
    assert meta["ensemble"]["method"] == "nms"
    assert (out / "member_0" / "model.pth").is_file() and (out / "member_1" / "meddet.json").is_file()
    assert meta["thresholds"]["tuned"] == "tune_ensemble/tuned_config.yaml"
    by_name = {cl["name"]: cl["score_thresh"] for cl in meta["classes"]}
    assert list(by_name) == ["square", "disc", "blob"]
    assert [by_name["square"], by_name["disc"]] == pytest.approx(tuned["CLASS_SCORE_THRESH"])
    assert by_name["blob"] == pytest.approx(tuned["SCORE_THRESH"])  # the added class: the default threshold

    # Loaded back (load_predictor / from_pretrained): the same detections as built from the runs.
    from meddet.apps.predictors import build_predictor
    from meddet.hub import from_pretrained
    from meddet.inference import EnsemblePredictor

    loaded = from_pretrained(out, device="cpu")
    assert isinstance(loaded, EnsemblePredictor) and loaded.class_names == ["square", "disc", "blob"]
    direct = build_predictor(_cfg(a, "ENSEMBLE.METHOD", "nms"), [c])
    image = np.asarray(__import__("cv2").imread(str(coco.parent / "images" / "img_001.png"), 0))
    np.testing.assert_allclose(_sorted(loaded(image)), _sorted(direct(image)), atol=1e-4)

    # Served by the web app: the model API lists the ensemble's classes with their thresholds.
    client = create_app(load_predictor(out, device="cpu")).test_client()
    info = client.get("/api/v1/model").get_json()
    assert [(cl["name"], cl["score_thresh"]) for cl in info["classes"]] == [
        (n, pytest.approx(t)) for n, t in by_name.items()
    ]
    assert info["engine"] == "ensemble" and info["ensemble"]["method"] == "nms"
    assert [m["classes"] for m in info["members"]] == [["square", "disc"], ["square", "blob"]]
    for page in ("/", "/model"):
        assert client.get(page).status_code == 200, page
    import io

    import cv2

    png = cv2.imencode(".png", image)[1].tobytes()
    r = client.post("/api/v1/predict", data={"file": (io.BytesIO(png), "x.png")}, content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    dets = r.get_json()["detections"]
    assert len(dets) == len(loaded(image)["scores"])
    assert {d["label"] for d in dets} <= {"square", "disc", "blob"}
    # Explanations need one model's layers: an ensemble says so instead of failing.
    r = client.post(
        "/api/v1/predict",
        query_string={"explain": "1"},
        data={"file": (io.BytesIO(png), "x.png")},
        content_type="multipart/form-data",
    )
    assert r.status_code == 422 and "ensemble" in r.get_json()["error"]["message"]


def test_tuned_thresholds_reach_predict_evaluate_bundle_and_web_app(runs, tmp_path, caplog):
    import logging

    from meddet.config.tuned import load_run_config
    from meddet.hub import load_predictor
    from webapp import create_app

    src = runs["a"]
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("tune*", "eval"))
    _set_yaml(run / "config.yaml", OUTPUT_DIR=str(run))
    assert cli("-c", "tune", "--config-file", run / "config.yaml") == 0
    frag = yaml.safe_load((run / "tune" / "tuned_config.yaml").read_text())
    tuned = dict(zip(frag["TEST"]["CLASS_SCORE_THRESH_NAMES"], frag["TEST"]["CLASS_SCORE_THRESH"]))
    assert list(tuned) == ["square", "disc"]

    # predict / evaluate on the run use them unless --untuned; explicit overrides still win.
    cfg = load_run_config(run / "config.yaml")
    assert list(cfg.TEST.CLASS_SCORE_THRESH) == list(tuned.values())
    assert cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST == frag["MODEL"]["ROI_HEADS"]["NMS_THRESH_TEST"]
    assert list(load_run_config(run / "config.yaml", tuned=False).TEST.CLASS_SCORE_THRESH) == []
    assert load_run_config(run / "config.yaml", ["TEST.SCORE_THRESH", "0.77"]).TEST.SCORE_THRESH == 0.77
    image_dir = runs["coco"].parent / "images"
    assert (
        cli(
            "-c",
            "predict",
            "--config-file",
            run / "config.yaml",
            "--input",
            image_dir / "img_000.png",
            "--output",
            tmp_path / "pred",
        )
        == 0
    )
    assert json.loads((tmp_path / "pred" / "images.json").read_text())["score_thresh"] == pytest.approx(
        list(tuned.values())
    )
    assert (
        cli(
            "-c",
            "predict",
            "--config-file",
            run / "config.yaml",
            "--input",
            image_dir / "img_000.png",
            "--output",
            tmp_path / "pred_untuned",
            "--untuned",
        )
        == 0
    )
    assert json.loads((tmp_path / "pred_untuned" / "images.json").read_text())["score_thresh"] == [0.5, 0.5]
    # With an ensemble member that adds a class: the tuned thresholds follow the classes by name.
    assert (
        cli(
            "-c",
            "predict",
            "--config-file",
            run / "config.yaml",
            "--input",
            image_dir / "img_000.png",
            "--output",
            tmp_path / "pred_ens",
            "--ensemble",
            runs["c"],
        )
        == 0
    )
    ens_images = json.loads((tmp_path / "pred_ens" / "images.json").read_text())
    assert [cat["name"] for cat in ens_images["categories"]] == ["square", "disc", "blob"]
    assert ens_images["score_thresh"] == pytest.approx([*tuned.values(), frag["TEST"]["SCORE_THRESH"]])
    assert cli("-c", "evaluate", "--config-file", run / "config.yaml") == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert [metrics["prf1/score_thresh-square"], metrics["prf1/score_thresh-disc"]] == pytest.approx(
        list(tuned.values())
    )

    # -c export picks up tune/ and says so (log and meddet.json); the web app serves the tuned thresholds.
    with caplog.at_level(logging.INFO, logger="meddet"):
        assert cli("-c", "export", "--run", run, "--output", tmp_path / "bundle") == 0
    assert "tune/tuned_config.yaml" in caplog.text
    meta = json.loads((tmp_path / "bundle" / "meddet.json").read_text())
    assert meta["thresholds"]["tuned"] == "tune/tuned_config.yaml"
    assert meta["thresholds"]["nms_thresh"] == frag["MODEL"]["ROI_HEADS"]["NMS_THRESH_TEST"]
    info = create_app(load_predictor(tmp_path / "bundle", device="cpu")).test_client().get("/api/v1/model").get_json()
    assert {cl["name"]: cl["score_thresh"] for cl in info["classes"]} == pytest.approx(tuned)
    assert info["score_thresh"] == pytest.approx(frag["TEST"]["SCORE_THRESH"])
    # The bundle evaluates at them too (any predictor evaluates: meddet.apps.evaluate.evaluate_predictor).
    from meddet.apps.evaluate import evaluate_predictor

    m = evaluate_predictor(load_predictor(tmp_path / "bundle", device="cpu"), runs["coco"], tmp_path / "bundle_eval")
    assert [m["prf1/score_thresh-square"], m["prf1/score_thresh-disc"]] == pytest.approx(list(tuned.values()))
    assert (tmp_path / "bundle_eval" / "coco_instances_results.json").is_file()
    # --untuned: the run config's own thresholds.
    assert cli("-c", "export", "--run", run, "--output", tmp_path / "bundle_untuned", "--untuned") == 0
    meta = json.loads((tmp_path / "bundle_untuned" / "meddet.json").read_text())
    assert meta["thresholds"]["tuned"] is None and [cl["score_thresh"] for cl in meta["classes"]] == [0.5, 0.5]


def test_any_predictor_saves_as_a_bundle_and_loads_back(runs, tmp_path):
    """save_predictor: a single, a tiled and an ensemble predictor built in Python become bundles that
    load_predictor loads back to the same detections, thresholds and kind."""
    from meddet.apps.predictors import build_predictor
    from meddet.hub import load_predictor, save_predictor
    from meddet.inference import EnsemblePredictor
    from meddet.inference.base import score_thresholds as class_thresholds

    image = np.asarray(__import__("cv2").imread(str(runs["coco"].parent / "images" / "img_002.png"), 0))
    cases = {
        "single": build_predictor(_cfg(runs["a"], "TEST.CLASS_SCORE_THRESH", [0.2, 0.6])),
        "tiled": build_predictor(_cfg(runs["a"], "TILING.ENABLED", True, "TILING.SIZE", 64)),
        "ensemble": build_predictor(
            _cfg(runs["a"], "ENSEMBLE.METHOD", "wbf", "TEST.CLASS_SCORE_THRESH", [0.2, 0.6]), [runs["c"]]
        ),
    }
    for name, p in cases.items():
        back = load_predictor(save_predictor(p, tmp_path / name), device="cpu")
        assert type(back) is type(p) and back.class_names == p.class_names and back.tiled == p.tiled, name
        np.testing.assert_allclose(_sorted(back(image)), _sorted(p(image)), atol=1e-4, err_msg=name)
        np.testing.assert_allclose(
            class_thresholds(back.cfg, back.class_names), class_thresholds(p.cfg, p.class_names), err_msg=name
        )
    assert isinstance(load_predictor(tmp_path / "ensemble"), EnsemblePredictor)
    assert class_thresholds(cases["ensemble"].cfg, ["square", "disc", "blob"]).tolist() == [0.2, 0.6, 0.5]
    with pytest.raises(Exception, match="not empty"):
        save_predictor(cases["single"], tmp_path / "single")
