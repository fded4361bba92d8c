"""Training data: exact boxes under augmentation, resize, seeded and resumable data order."""

import numpy as np
import pytest

from meddet.config import load_config
from meddet.data.dataset import TrainingBatchSampler
from meddet.data.transforms import apply_augmentation, build_augmentation, shortest_edge_size


def _aug(opts):
    return build_augmentation(load_config(None, opts))


@pytest.mark.parametrize(
    "flip, expected",
    [
        ("horizontal", [100 - 30, 10, 100 - 10, 50]),
        ("vertical", [10, 60 - 50, 30, 60 - 10]),
    ],
)
def test_flips_keep_boxes_exact(flip, expected):
    aug = _aug(["INPUT.RANDOM_FLIP", flip, "AUG.FLIP_PROB", "1.0"])
    img = np.zeros((60, 100, 3), np.float32)
    img[10:50, 10:30] = 1.0  # the object, exactly where its box is
    out, boxes, classes = apply_augmentation(aug, img, np.array([[10, 10, 30, 50]], np.float32), np.array([2]), seed=3)
    np.testing.assert_allclose(boxes[0], expected, atol=1e-3)
    ys, xs = np.nonzero(out[:, :, 0] > 0.5)  # the box still encloses the moved object tightly
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], boxes[0], atol=1e-3)
    assert classes.tolist() == [2]


def test_rot90_keeps_boxes_on_the_object():
    aug = _aug(["AUG.ROT90_PROB", "1.0", "INPUT.RANDOM_FLIP", "none"])
    img = np.zeros((40, 70, 3), np.float32)
    img[5:15, 20:45] = 1.0
    for seed in range(6):
        out, boxes, _ = apply_augmentation(aug, img, np.array([[20, 5, 45, 15]], np.float32), np.array([0]), seed)
        ys, xs = np.nonzero(out[:, :, 0] > 0.5)
        np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], boxes[0], atol=1e-3)


def test_augmentation_is_seeded():
    aug = _aug(["AUG.BRIGHTNESS", "0.3", "AUG.CONTRAST", "0.3", "AUG.GAMMA", "(0.7, 1.3)", "AUG.PROB", "1.0"])
    img = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    a = apply_augmentation(aug, img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), seed=11)[0]
    b = apply_augmentation(aug, img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), seed=11)[0]
    c = apply_augmentation(aug, img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), seed=12)[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_shortest_edge_resize_caps_long_side():
    assert shortest_edge_size(1000, 600, 300, 2000) == (500, 300)
    assert shortest_edge_size(5000, 3000, 800, 1333) == (1333, 800)


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_data_order_is_seeded_and_resume_continues_it():
    full = _take(TrainingBatchSampler(10, 4, seed=5), 8)
    again = _take(TrainingBatchSampler(10, 4, seed=5), 8)
    assert full == again
    assert _take(TrainingBatchSampler(10, 4, seed=6), 8) != full
    resumed = _take(TrainingBatchSampler(10, 4, seed=5, start_iter=3), 5)
    assert resumed == full[3:]
    # every image once per epoch
    flat = [idx for batch in full for _, idx in batch]
    assert sorted(flat[:10]) == list(range(10))


def test_ranks_get_disjoint_shards_of_each_global_batch():
    r0 = _take(TrainingBatchSampler(12, 4, seed=1, rank=0, world_size=2), 3)
    r1 = _take(TrainingBatchSampler(12, 4, seed=1, rank=1, world_size=2), 3)
    full = _take(TrainingBatchSampler(12, 4, seed=1), 3)
    for a, b, f in zip(r0, r1, full):
        assert a + b == f and not set(a) & set(b)
