"""Sliced inference: tiles batched through the model, boxes back in image pixels, split objects merged,
and the Predictor / dataset paths that use it."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from conftest import seeded

from meddet.data.tiling import tile_windows
from meddet.inference.merge import merge_detections
from meddet.inference.predictor import prepare_image
from meddet.inference.sliced import sliced_predict


class BlobDetector(torch.nn.Module):
    """A perfect 'detector' of bright blobs: the bounding box of every connected bright region of each
    input, mapped back to the input's height/width as meddet models do; records the batch sizes."""

    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def forward(self, batch):
        self.calls.append(len(batch))
        out = []
        for x in batch:
            img = x["image"][0].numpy()
            sy, sx = x["height"] / img.shape[0], x["width"] / img.shape[1]
            n, _, stats, _ = cv2.connectedComponentsWithStats((img > 128).astype(np.uint8))
            st = stats[1:].astype(np.float32)
            boxes = np.stack(
                [st[:, 0] * sx, st[:, 1] * sy, (st[:, 0] + st[:, 2]) * sx, (st[:, 1] + st[:, 3]) * sy], 1
            ).reshape(-1, 4)
            out.append(
                {
                    "boxes": torch.from_numpy(boxes),
                    "scores": torch.linspace(0.9, 0.8, n - 1),
                    "classes": torch.zeros(n - 1, dtype=torch.int64),
                }
            )
        return out


def _cfg(**tiling):
    from meddet.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_list(["INPUT.MIN_SIZE_TEST", 128, "INPUT.MAX_SIZE_TEST", 1333])
    for k, v in tiling.items():
        setattr(cfg.TILING, k, v)
    return cfg


def _blob_image():
    img = np.zeros((200, 200), np.uint8)
    img[50:90, 90:130] = 255  # crosses the right edge (x=128) of the first tile column
    img[150:170, 10:30] = 255  # inside one tile only
    return img


def test_object_cut_by_tile_edge_comes_back_whole():
    cfg = _cfg(SIZE=128, OVERLAP=0.25, MERGE="greedy_nmm", MATCH_METRIC="ios", MATCH_THRESH=0.5)
    det = sliced_predict(BlobDetector(), _blob_image(), cfg)
    got = sorted(map(tuple, det["boxes"].round().astype(int).tolist()))
    assert got == [(10, 150, 30, 170), (90, 50, 130, 90)]
    # Without merging, the tiles' copies (and the cut part) are all there.
    raw = sliced_predict(BlobDetector(), _blob_image(), _cfg(SIZE=128, OVERLAP=0.25, MERGE="none"))
    assert len(raw["boxes"]) > 2
    assert [90, 50, 128, 90] in raw["boxes"].round().astype(int).tolist()


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_tiles_go_through_the_model_in_batches(batch_size):
    cfg = _cfg(SIZE=64, OVERLAP=0.2, BATCH_SIZE=batch_size)
    n_tiles = len(tile_windows(200, 200, 64, 0.2))
    model = BlobDetector()
    sliced_predict(model, _blob_image(), cfg)
    assert len(model.calls) == math.ceil(n_tiles / batch_size)
    assert sum(model.calls) == n_tiles and max(model.calls) <= batch_size
    model = BlobDetector()
    sliced_predict(model, _blob_image(), cfg, full_image_pass=True)
    assert sum(model.calls) == n_tiles + 1  # plus the whole image, downscaled


def test_full_image_pass_finds_an_object_larger_than_a_tile():
    img = np.zeros((200, 200), np.uint8)
    img[20:180, 20:180] = 255
    cfg = _cfg(SIZE=64, OVERLAP=0.2, FULL_IMAGE_PASS=True, MATCH_METRIC="ios")
    det = sliced_predict(BlobDetector(), img, cfg)
    assert [20, 20, 180, 180] == det["boxes"][0].round().astype(int).tolist()


@pytest.fixture
def tiny_weights(tiny_cfg, tmp_path):
    """Random weights with SCORE_THRESH_TEST 0: every proposal's softmax score is above 0, so the model gives
    boxes on any image by construction; the tests compare paths through the same weights, never what they
    detect."""
    from meddet.modeling import build_model

    torch.manual_seed(seeded(0))
    path = tmp_path / "random.pth"
    torch.save(build_model(tiny_cfg).state_dict(), path)
    tiny_cfg.merge_from_list(["MODEL.WEIGHTS", str(path), "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0])
    return tiny_cfg


def test_one_tile_equals_plain_prediction(tiny_weights):
    from meddet.inference import Predictor

    image = np.random.default_rng(0).integers(0, 255, (96, 96), dtype=np.uint8)
    cfg = tiny_weights.clone()
    cfg.merge_from_list(["TILING.SIZE", 96, "TILING.MERGE", "none"])
    p = Predictor(cfg)
    plain = p(image)
    assert len(plain["boxes"]) > 0
    sliced = sliced_predict(p.model, image, cfg)
    np.testing.assert_allclose(sliced["boxes"], plain["boxes"], atol=1e-4)
    np.testing.assert_allclose(sliced["scores"], plain["scores"], atol=1e-6)
    np.testing.assert_array_equal(sliced["classes"], plain["classes"])
    # With a merge rule, the one tile's detections are merged exactly like any other set.
    cfg.merge_from_list(["TILING.MERGE", "greedy_nmm"])
    merged = sliced_predict(p.model, image, cfg)
    b, s, c = merge_detections(plain["boxes"], plain["scores"], plain["classes"], "greedy_nmm", "ios", 0.5)
    np.testing.assert_allclose(merged["boxes"], b, atol=1e-4)
    np.testing.assert_array_equal(merged["classes"], c)


def test_predictor_with_tiling_enabled_predicts_by_slicing(tiny_weights):
    from meddet.inference import Predictor

    image = np.random.default_rng(1).integers(0, 255, (96, 96), dtype=np.uint8)
    cfg = tiny_weights.clone()
    cfg.merge_from_list(["TILING.ENABLED", True, "TILING.SIZE", 64, "TILING.BATCH_SIZE", 3])
    p = Predictor(cfg)
    assert p.tiled
    seen: list[list[int]] = []
    p.inference_model.register_forward_pre_hook(lambda m, args: seen.append([x["height"] for x in args[0]]))
    out = p(image)
    assert sorted(seen) == [[64], [64, 64, 64]]  # 4 tiles of 64 px, 3 per pass
    assert set(out) >= {"boxes", "scores", "classes", "labels"}
    assert len(out["labels"]) == len(out["boxes"]) > 0
    assert (out["boxes"] >= 0).all() and (out["boxes"] <= 96).all()
    seen.clear()
    expected = sliced_predict(p.inference_model, image, p.cfg)
    np.testing.assert_allclose(out["boxes"], expected["boxes"], atol=1e-4)
    # prepare() still gives the whole-image input (used by explain).
    assert p.prepare(image)["image"].shape[-2:] == (96, 96)


def test_sliced_inference_on_records_gives_coco_results(tiny_weights, tiny_coco):
    from meddet.data.coco import coco_to_records, load_coco
    from meddet.inference import Predictor, sliced_inference_on_records

    cfg = tiny_weights.clone()
    cfg.merge_from_list(["TILING.SIZE", 64])
    records = coco_to_records(load_coco(tiny_coco), tiny_coco)[:2]
    results = sliced_inference_on_records(Predictor(cfg), records, [1, 2])
    assert results and {r["image_id"] for r in results} <= {r["image_id"] for r in records}
    assert {r["category_id"] for r in results} <= {1, 2}
    for r in results:
        x, y, w, h = r["bbox"]
        assert x >= 0 and y >= 0 and w >= 0 and h >= 0 and x + w <= 96.01 and y + h <= 96.01


def _randomize_norm_statistics(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm / FrozenBatchNorm statistics and affine parameters, so folding them matters."""
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "running_var") and m.running_var is not None:
                n = m.running_var.numel()
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def _norm_layers(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if hasattr(m, "running_var")]


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_optimized_model_detects_the_same_boxes_and_leaves_the_model_untouched(tiny_cfg, norm):
    from meddet.inference import optimize_for_inference
    from meddet.modeling import build_model

    cfg = tiny_cfg.clone()
    cfg.merge_from_list(["MODEL.RESNETS.NORM", norm, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0])
    torch.manual_seed(seeded(0))
    model = build_model(cfg)
    _randomize_norm_statistics(model)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = _norm_layers(model)
    assert norms
    fast = optimize_for_inference(model)
    # Every norm layer of the ResNet (stem, blocks, downsample) is folded away in the copy only.
    assert _norm_layers(fast) == [] and _norm_layers(model) == norms
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    assert any("folded into 20 convolutions" in s for s in fast.inference_optimizations)
    image = np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)
    model.eval()
    with torch.no_grad():
        ref, got = model([prepare_image(image, cfg)])[0], fast([prepare_image(image, cfg)])[0]
    assert len(ref["boxes"]) > 10
    torch.testing.assert_close(got["boxes"], ref["boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(got["scores"], ref["scores"], atol=1e-4, rtol=1e-4)
    assert torch.equal(got["classes"], ref["classes"])


def test_detectron2_style_conv_norm_is_folded():
    from torchvision.ops.misc import FrozenBatchNorm2d

    from meddet.inference import optimize_for_inference

    class NormConv(torch.nn.Conv2d):
        """detectron2.layers.Conv2d's contract: `norm` applied after the convolution unless None."""

        def __init__(self, *args, norm=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.norm = norm

        def forward(self, x):
            x = super().forward(x)
            return self.norm(x) if self.norm is not None else x

    torch.manual_seed(seeded(0))
    net = torch.nn.Sequential(
        NormConv(3, 4, 3, bias=False, norm=FrozenBatchNorm2d(4)),
        torch.nn.ReLU(),
        NormConv(4, 2, 1, norm=torch.nn.GroupNorm(2, 2)),
    ).eval()
    _randomize_norm_statistics(net)
    fast = optimize_for_inference(net, channels_last=False)
    assert fast[0].norm is None and isinstance(fast[2].norm, torch.nn.GroupNorm)  # GroupNorm cannot be folded
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(fast(x), net(x), atol=1e-5, rtol=1e-5)
    assert isinstance(net[0].norm, FrozenBatchNorm2d)


def test_tile_parallel_workers_give_the_same_reproducible_detections(tiny_weights):
    from meddet.inference import Predictor

    cfg = tiny_weights.clone()
    cfg.merge_from_list(["TILING.SIZE", 64, "TILING.OVERLAP", 0.25, "TILING.BATCH_SIZE", 1, "TILING.MERGE", "none"])
    p = Predictor(cfg)
    image = np.random.default_rng(2).integers(0, 255, (160, 160), dtype=np.uint8)
    threads = torch.get_num_threads()
    one = sliced_predict(p.inference_model, image, cfg, workers=1)
    two = sliced_predict(p.inference_model, image, cfg, workers=2)
    again = sliced_predict(p.inference_model, image, cfg, workers=2)
    assert torch.get_num_threads() == threads and torch.is_grad_enabled()
    assert len(two["boxes"]) == len(one["boxes"]) > 0
    # Tiles come back in tile order; per tile only float rounding of the intra-op thread count differs.
    np.testing.assert_allclose(two["boxes"], one["boxes"], atol=1e-3)
    np.testing.assert_allclose(two["scores"], one["scores"], atol=1e-5)
    for k in ("boxes", "scores", "classes"):
        np.testing.assert_array_equal(again[k], two[k])
    with pytest.raises(ValueError, match="workers"):
        sliced_predict(p.inference_model, image, cfg, workers=0)


def test_predictor_predicts_with_the_optimized_copy_and_keeps_the_plain_model(tiny_weights):
    from meddet.inference import Predictor

    p = Predictor(tiny_weights)
    plain = Predictor(tiny_weights, optimize=False)
    assert plain.inference_model is plain.model and p.inference_model is not p.model
    before = {k: v.clone() for k, v in p.model.state_dict().items()}
    norms = _norm_layers(p.model)
    image = np.random.default_rng(4).integers(0, 255, (96, 96), dtype=np.uint8)
    got, ref = p(image), plain(image)
    assert len(ref["boxes"]) > 0
    np.testing.assert_allclose(got["boxes"], ref["boxes"], atol=1e-3)
    np.testing.assert_allclose(got["scores"], ref["scores"], atol=1e-4)
    np.testing.assert_array_equal(got["classes"], ref["classes"])
    assert _norm_layers(p.model) == norms and _norm_layers(p.inference_model) == []
    assert all(torch.equal(v, p.model.state_dict()[k]) for k, v in before.items())
