"""A tiny trained run and its exported bundle, shared by the hub and web-app tests."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO, make_tiny_coco

METRICS = {"bbox/AP": 0.125, "bbox/AP50": 0.25}


def make_run(root: Path) -> Path:
    """Train the tiny model for 4 iterations (a real run folder), then give its final checkpoint the weights
    of the blob detector (tests/blob_detector.py), so the run detects the bright squares and discs of
    `make_tiny_coco` the same on every machine; add eval/metrics.json as the evaluator writes it."""
    import torch
    from blob_detector import BLOB_MODEL_OPTS, make_blob_detector

    from meddet.config import load_config
    from meddet.training import Trainer

    coco = make_tiny_coco(root / "data")
    cfg = load_config(
        str(REPO / "configs" / "Base-RCNN-FPN.yaml"),
        BLOB_MODEL_OPTS
        + [
            "DATASETS.TRAIN",
            f"('{coco}',)",
            "OUTPUT_DIR",
            str(root / "run"),
            "SOLVER.MAX_ITER",
            "4",
            "SOLVER.CHECKPOINT_PERIOD",
            "100",
            # every proposal kept, so the tests see many boxes to filter
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
            "TEST.CLASS_SCORE_THRESH",
            "[0.3, 0.4]",
        ],
    )
    trainer = Trainer(cfg)
    trainer.train()
    run = root / "run"
    final = run / "model_final.pth"
    ckpt = torch.load(final, map_location="cpu", weights_only=True)
    model = make_blob_detector(trainer.model)
    ckpt["model"] = model.state_dict()
    torch.save(ckpt, final)
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "metrics.json").write_text(json.dumps(METRICS))
    return run


_SHARED: dict[str, Path] = {}


def shared_run(tmp_path_factory) -> tuple[Path, Path]:
    """One tiny trained run and its bundle per test process (training is the slow part): (run, bundle)."""
    from meddet.hub import export_bundle

    if not _SHARED:
        root = tmp_path_factory.mktemp("tiny_bundle")
        _SHARED["run"] = make_run(root)
        _SHARED["bundle"] = export_bundle(_SHARED["run"], root / "bundle")
    return _SHARED["run"], _SHARED["bundle"]


def synthetic_dicom(path: Path, size: tuple[int, int] = (160, 128), seed: int = 0, pixels: bool = True) -> Path:
    """A synthetic 16-bit digital mammogram (left CC) with identifying tags a server must never echo."""
    import numpy as np

    from meddet.synth.mammo import encode_dicom, render_mammogram, save_dicom

    img01, _ = render_mammogram(np.random.default_rng(seed), size[0], size[1], "LEFT", "CC", 2, [("mass_high", 4)])
    ds = encode_dicom(
        img01,
        attributes={
            "PatientID": "P_SECRET_042",
            "PatientName": "Doe^Jane",
            "PatientBirthDate": "19600101",
            "Laterality": "L",
            "ViewPosition": "CC",
            "PatientOrientation": ["A", "R"],
        },
        uid_entropy=(str(seed),),
    )
    if not pixels:
        del ds.PixelData
    save_dicom(ds, path)
    return path
