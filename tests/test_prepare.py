"""One test-time preparation: the dataset loader (evaluate, validation) gives the model exactly the input the
Predictor (predict, web app, sliced tiles) gives it for the same file, so both paths score the same model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from meddet.config import get_cfg
from meddet.data.dataset import DatasetMapper
from meddet.data.transforms import prepare_image
from meddet.io import read_image


@pytest.mark.parametrize(
    "shape,dtype", [((200, 150), np.uint8), ((40, 30), np.uint8), ((200, 150), np.uint16), ((120, 90, 3), np.uint8)]
)
def test_loader_and_predictor_prepare_the_same_input(tmp_path, shape, dtype):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 100  # downscale the large images, upscale the small
    image = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, shape).astype(dtype)
    path = tmp_path / "im.png"
    assert cv2.imwrite(str(path), image)
    record = {
        "file_name": str(path),
        "height": shape[0],
        "width": shape[1],
        "image_id": 1,
        "annotations": [{"bbox": [10.0, 8.0, 30.0, 24.0], "category": 0}],
    }  # records: xyxy
    loaded = DatasetMapper(cfg, is_train=False, with_boxes=True)(record)
    direct = prepare_image(read_image(path), cfg)
    assert torch.equal(loaded["image"], direct["image"])
    assert (loaded["height"], loaded["width"]) == (direct["height"], direct["width"]) == shape[:2]
    # validation-loss boxes scaled with the image
    nh, nw = direct["image"].shape[1:]
    sx, sy = nw / shape[1], nh / shape[0]
    np.testing.assert_allclose(loaded["boxes"].numpy(), [[10 * sx, 8 * sy, 30 * sx, 24 * sy]], rtol=1e-5)
