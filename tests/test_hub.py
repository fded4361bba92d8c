"""Model bundles: export from a run, load locally and through the Hugging Face client, exact round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bundle_fixture import METRICS, shared_run

from meddet.errors import DataError


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    return shared_run(tmp_path_factory)[0]


@pytest.fixture(scope="session")
def bundle(tmp_path_factory):
    return shared_run(tmp_path_factory)[1]


@pytest.fixture(scope="session")
def image():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 40, (96, 112), dtype=np.uint8)
    img[20:50, 30:60] = 220
    return img


def _same(a: dict, b: dict) -> None:
    assert len(a["scores"]) > 0
    np.testing.assert_array_equal(a["boxes"], b["boxes"])
    np.testing.assert_array_equal(a["scores"], b["scores"])
    np.testing.assert_array_equal(a["classes"], b["classes"])
    assert a["labels"] == b["labels"]


def test_bundle_holds_everything_needed(bundle):
    meta = json.loads((bundle / "meddet.json").read_text())
    assert sorted(p.name for p in bundle.iterdir()) == ["README.md", "config.yaml", "meddet.json", "model.pth"]
    assert [c["name"] for c in meta["classes"]] == ["square", "disc"]
    assert [c["score_thresh"] for c in meta["classes"]] == [0.3, 0.4]
    assert all(c["color"].startswith("#") and len(c["color"]) == 7 for c in meta["classes"])
    assert meta["engine"] == "torchvision"
    assert meta["input"]["dicom"]["gamma"] == 0.8 and meta["input"]["min_size_test"] == 96
    assert meta["input"]["tiling"] == {}
    assert meta["metrics"] == METRICS
    assert meta["training_data"]["images"] == 8
    assert sum(meta["training_data"]["annotations_per_class"].values()) == meta["training_data"]["annotations"]
    card = (bundle / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: meddet\n")
    assert "Not a medical device" in card and "| bbox/AP50 | 0.2500 |" in card and "| 1 | disc |" in card
    # Only the model weights travel, not the optimizer state.
    import torch

    weights = torch.load(bundle / "model.pth", weights_only=True)
    assert set(weights) == {"model", "meddet"}
    # ... with the engine and architecture that made them, so they load into that model anywhere.
    assert weights["meddet"]["engine"] == "torchvision" and weights["meddet"]["num_classes"] == 2
    assert weights["meddet"]["architecture"]["depth"] == 18


def test_round_trip_reproduces_predictions_exactly(run_dir, bundle, image):
    from meddet.config import load_config
    from meddet.hub import from_pretrained
    from meddet.inference import Predictor

    cfg = load_config(run_dir / "config.yaml")
    direct = Predictor(cfg, weights=run_dir / "model_final.pth")
    loaded = from_pretrained(bundle, device="cpu")
    _same(direct(image), loaded(image))
    assert loaded.class_names == ["square", "disc"]
    assert loaded.bundle["metrics"] == METRICS


def test_export_refuses_bad_input(run_dir, bundle, tmp_path):
    from meddet.hub import export_bundle, load_predictor

    with pytest.raises(DataError, match="config.yaml"):
        export_bundle(tmp_path, tmp_path / "b")
    with pytest.raises(DataError, match="not empty"):
        export_bundle(run_dir, bundle)
    with pytest.raises(DataError, match="model.pth missing"):
        load_predictor(run_dir)
    with pytest.raises(DataError, match="not a bundle folder and not a Hugging Face repo id"):
        load_predictor(tmp_path / "nothing" / "here" / "at-all")


# ----------------------------------------------------------------- Hugging Face push / pull (stand-in Hub)
_CLIENT = r"""
import json, os, sys
import numpy as np
from meddet.hub import from_pretrained, push_bundle
mode, arg, out = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "push":
    print(push_bundle(arg, "org/tiny-mammo", private=True))
else:
    p = from_pretrained(arg, device="cpu")
    d = p(np.load(os.path.join(os.path.dirname(out), "pred.in.npy")))
    np.savez(out, boxes=d["boxes"], scores=d["scores"], classes=d["classes"])
    print(json.dumps(p.class_names))
"""


def _client(tmp_path, env_extra, *args):
    import os
    import subprocess
    import sys

    from conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=str(REPO), **env_extra)
    return subprocess.run([sys.executable, "-c", _CLIENT, *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # four CLI subprocesses, each importing torch (~25 s)
def test_push_and_pull_through_the_hub_client(bundle, image, tmp_path):
    from hf_standin import HubStandIn

    from meddet.hub import from_pretrained

    local = from_pretrained(bundle, device="cpu")(image)
    np.save(tmp_path / "pred.in.npy", image)
    with HubStandIn(token="hf_test_token") as hub:
        # Without a token the Hub refuses the push and the user gets a ModelError naming the repo.
        r = _client(tmp_path, {"HF_ENDPOINT": hub.url}, "push", str(bundle), str(tmp_path / "x"))
        assert r.returncode != 0 and "org/tiny-mammo: push to the Hugging Face Hub failed" in r.stderr
        r = _client(
            tmp_path, {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test_token"}, "push", str(bundle), str(tmp_path / "x")
        )
        assert r.returncode == 0, r.stderr
        assert hub.repos["org/tiny-mammo"]["private"] is True
        sha = hub.repos["org/tiny-mammo"]["refs"]["main"]
        files = hub.repos["org/tiny-mammo"]["commits"][sha]
        assert {n: files[n] for n in files} == {p.name: p.read_bytes() for p in bundle.iterdir()}
        # Pull (private repo: the token comes from the environment) and predict.
        r = _client(
            tmp_path,
            {"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_test_token"},
            "pull",
            "org/tiny-mammo",
            str(tmp_path / "online"),
        )
        assert r.returncode == 0, r.stderr
        assert any(m == "GET" and "/resolve/" in p and auth for m, p, auth in hub.requests)
    # Hub gone: offline mode loads from the cache.
    r = _client(
        tmp_path, {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "1"}, "pull", "org/tiny-mammo", str(tmp_path / "offline")
    )
    assert r.returncode == 0, r.stderr
    for name in ("online", "offline"):
        got = dict(np.load(tmp_path / f"{name}.npz"))
        _same(local, {**got, "labels": [["square", "disc"][c] for c in got["classes"]]})
    # Not in the cache and offline: a clear error.
    r = _client(
        tmp_path, {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "1"}, "pull", "org/other-model", str(tmp_path / "none")
    )
    assert r.returncode != 0 and "org/other-model: not in the local Hugging Face cache" in r.stderr


def test_tiled_bundle_says_so_and_loads_as_sliced(run_dir, tmp_path):
    """A model trained on tiles: meddet.json records the slicing, and the loaded Predictor slices."""
    import shutil

    from meddet.config import load_config
    from meddet.hub import export_bundle, load_predictor

    run = tmp_path / "tiled_run"
    shutil.copytree(run_dir, run)
    cfg = load_config(
        run / "config.yaml",
        [
            "TILING.ENABLED",
            "True",
            "TILING.SIZE",
            "64",
            "TILING.OVERLAP",
            "0.25",
            "TILING.MERGE",
            "nms",
            "TILING.MATCH_METRIC",
            "iou",
        ],
    )
    (run / "config.yaml").write_text(cfg.dump())
    bundle = export_bundle(run, tmp_path / "bundle")
    tiling = json.loads((bundle / "meddet.json").read_text())["input"]["tiling"]
    assert tiling["tile_size"] == 64 and tiling["overlap"] == 0.25 and tiling["merge"] == "nms"
    assert "64-pixel tiles" in (bundle / "README.md").read_text()
    predictor = load_predictor(bundle, device="cpu")
    assert predictor.tiled and predictor.cfg.TILING.SIZE == 64 and predictor.cfg.TILING.MATCH_METRIC == "iou"
    # The bundle's meddet.json is what decides: a bundle saying "whole image" predicts on whole images.
    meta = json.loads((bundle / "meddet.json").read_text())
    meta["input"]["tiling"] = {}
    (bundle / "meddet.json").write_text(json.dumps(meta))
    assert not load_predictor(bundle, device="cpu").tiled
    meta["input"]["tiling"] = {"tile_size": "big"}
    (bundle / "meddet.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="input.tiling.tile_size"):
        load_predictor(bundle, device="cpu")


def test_predictor_from_pretrained_points_to_the_hub(bundle):
    # meddet.inference sits below meddet.hub: the old classmethod says where loading a bundle went.
    from meddet.inference import Predictor

    with pytest.raises(AttributeError, match="meddet.hub import from_pretrained"):
        Predictor.from_pretrained(bundle, device="cpu")
