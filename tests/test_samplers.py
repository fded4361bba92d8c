"""Training samplers: LVIS repeat factors, class-balanced sampling, seeded and resumable data order."""

import math
from collections import Counter

import numpy as np
import pytest
import torch

from meddet.config import load_config
from meddet.data.dataset import (
    ClassBalancedOrder,
    PermutationOrder,
    RepeatFactorOrder,
    TrainingBatchSampler,
    build_epoch_order,
    class_balanced_weights,
    repeat_factors,
)
from meddet.errors import ConfigError


def _rec(*classes):
    return {"annotations": [{"bbox": [0, 0, 1, 1], "category": c} for c in classes]}


def _toy():
    """20 images: class 0 in 17, class 1 (rare) in 2, class 2 in 4; two images without boxes."""
    recs = [_rec(0) for _ in range(12)]
    recs += [_rec(0, 1), _rec(1, 2), _rec(0, 2), _rec(0, 2, 2), _rec(2, 0), _rec(0), _rec(), _rec()]
    return recs


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def _flat(batches):
    return [i for b in batches for _, i in b]


def test_repeat_factors_follow_the_lvis_formula():
    recs = _toy()
    f = {0: 17 / 20, 1: 2 / 20, 2: 4 / 20}
    for t, sqrt in [(0.3, True), (0.3, False), (0.05, True)]:
        rc = {c: max(1.0, (t / fc) ** 0.5 if sqrt else t / fc) for c, fc in f.items()}
        expected = [max([rc[a["category"]] for a in r["annotations"]], default=1.0) for r in recs]
        np.testing.assert_allclose(repeat_factors(recs, t, sqrt), expected)
    # t = 0.3: the rare class is repeated sqrt(3) times, the common class not at all
    r = repeat_factors(recs, 0.3, True)
    assert r[0] == 1.0 and math.isclose(r[12], math.sqrt(3)) and r[-1] == 1.0
    with pytest.raises(ConfigError, match="REPEAT_THRESHOLD"):
        repeat_factors(recs, -0.1)


def _rare_share(order, recs, epochs=300):
    rare = {i for i, r in enumerate(recs) if any(a["category"] == 1 for a in r["annotations"])}
    drawn = [i for e in range(epochs) for i in order.indices(3, e)]
    return sum(i in rare for i in drawn) / len(drawn), len(drawn) / epochs


def test_repeat_factor_sampler_draws_the_rare_class_more_often():
    recs = _toy()
    factors = repeat_factors(recs, 0.5, True)
    rfs_share, rfs_len = _rare_share(RepeatFactorOrder(factors), recs)
    plain_share, plain_len = _rare_share(PermutationOrder(len(recs)), recs)
    assert plain_share == pytest.approx(2 / 20) and plain_len == 20
    assert rfs_share > 1.5 * plain_share
    # stochastic rounding: each image appears r_i times per epoch on average
    assert rfs_len == pytest.approx(factors.sum(), rel=0.03)
    counts = Counter(i for e in range(300) for i in RepeatFactorOrder(factors).indices(3, e))
    np.testing.assert_allclose([counts[i] / 300 for i in range(len(recs))], factors, rtol=0.1)


def test_class_balanced_sampler_frequencies():
    recs = _toy()
    w = class_balanced_weights(recs)
    # weight = 1 / (images holding the image's rarest class); images without boxes share one group
    assert w[0] == pytest.approx(1 / 17) and w[12] == pytest.approx(1 / 2) and w[14] == pytest.approx(1 / 4)
    assert w[-1] == pytest.approx(1 / 2)
    order = ClassBalancedOrder(w)
    assert len(order.indices(0, 0)) == len(recs)  # an epoch is as long as the dataset
    counts = Counter(i for e in range(2000) for i in order.indices(1, e))
    freq = np.array([counts[i] for i in range(len(recs))]) / (2000 * len(recs))
    np.testing.assert_allclose(freq, w / w.sum(), atol=0.006)
    # the rare class is drawn far more than its 10% of the dataset
    rare = [12, 13]
    assert freq[rare].sum() > 0.25


@pytest.mark.parametrize(
    "make",
    [
        lambda recs: None,
        lambda recs: RepeatFactorOrder(repeat_factors(recs, 0.5)),
        lambda recs: ClassBalancedOrder(class_balanced_weights(recs)),
    ],
)
def test_every_sampler_is_seeded_resumable_and_sharded(make):
    recs = _toy()
    full = _take(TrainingBatchSampler(len(recs), 4, seed=5, order=make(recs)), 40)  # several epochs
    assert full == _take(TrainingBatchSampler(len(recs), 4, seed=5, order=make(recs)), 40)
    assert _flat(full) != _flat(_take(TrainingBatchSampler(len(recs), 4, seed=6, order=make(recs)), 40))
    for start in (3, 7, 23):
        resumed = _take(TrainingBatchSampler(len(recs), 4, seed=5, start_iter=start, order=make(recs)), 40 - start)
        assert resumed == full[start:]
    r0 = _take(TrainingBatchSampler(len(recs), 4, seed=5, rank=0, world_size=2, order=make(recs)), 10)
    r1 = _take(TrainingBatchSampler(len(recs), 4, seed=5, rank=1, world_size=2, order=make(recs)), 10)
    assert [a + b for a, b in zip(r0, r1)] == full[:10]


def test_training_sampler_order_is_unchanged():
    """The default stream is torch.randperm seeded by seed + epoch, as before samplers were pluggable."""
    size, seed = 7, 11
    expected = [
        i for e in range(5) for i in torch.randperm(size, generator=torch.Generator().manual_seed(seed + e)).tolist()
    ]
    got = _flat(_take(TrainingBatchSampler(size, 5, seed), 7))
    assert got == expected
    cfg = load_config(None, ["DATALOADER.SAMPLER_TRAIN", "TrainingSampler"])
    order = build_epoch_order(cfg, [_rec()] * size)
    assert _flat(_take(TrainingBatchSampler(size, 5, seed, order=order), 7)) == expected


def test_build_epoch_order_from_config(caplog):
    recs = _toy()
    cfg = load_config(
        None,
        [
            "DATALOADER.SAMPLER_TRAIN",
            "RepeatFactorTrainingSampler",
            "DATALOADER.REPEAT_THRESHOLD",
            "0.3",
            "DATALOADER.REPEAT_SQRT",
            "False",
        ],
    )
    with caplog.at_level("INFO"):
        order = build_epoch_order(cfg, recs, ["a", "rare", "c"])
    assert isinstance(order, RepeatFactorOrder)
    np.testing.assert_allclose(order.int_part + order.frac_part, repeat_factors(recs, 0.3, sqrt=False))
    assert "rare: 10.0% ->" in caplog.text  # per-class effective frequency is logged
    cfg = load_config(None, ["DATALOADER.SAMPLER_TRAIN", "Balanced"])
    with pytest.raises(ConfigError, match="SAMPLER_TRAIN.*RepeatFactorTrainingSampler.*'Balanced'"):
        build_epoch_order(cfg, recs)


def _shares(recs, w):
    """Share of the drawn images holding each class, and of those without boxes (expected, from weights)."""
    from meddet.data.dataset import _class_presence

    p = _class_presence(recs)
    groups = np.column_stack([p, ~p.any(axis=1)])
    return (w[:, None] * groups).sum(axis=0) / w.sum()


def test_class_balanced_sampler_gives_every_class_an_equal_share():
    """The imbalanced toy set (class 0 in 17 of 20 images, class 1 in 2, class 2 in 4, mixed images, two
    without boxes): every class and the negatives end up in the same share of the drawn images (±5%),
    where weighting by the rarest class alone leaves 0.57 / 0.28 / 0.36."""
    from meddet.data.dataset import equal_share_weights, rarest_class_weights

    recs = _toy()
    w = equal_share_weights(recs)
    shares = _shares(recs, w)
    assert np.all(np.abs(shares - shares.mean()) <= 0.05 * shares.mean()), shares
    assert (w > 0).all()  # every image is still drawn now and then
    old = _shares(recs, rarest_class_weights(recs))[:3]
    assert old.max() - old.min() > 0.25  # what the rarest-class weights leave
    # Drawn for real over many epochs by the configured sampler: the same shares.
    cfg = load_config(None, ["DATALOADER.SAMPLER_TRAIN", "ClassBalancedSampler"])
    order = build_epoch_order(cfg, recs)
    drawn = np.array([i for e in range(1500) for i in order.indices(2, e)])
    empirical = _shares(recs, np.bincount(drawn, minlength=len(recs)).astype(float))
    assert np.all(np.abs(empirical - shares.mean()) <= 0.05 * shares.mean()), empirical


def test_rarest_class_sampler_keeps_the_former_class_balanced_weights():
    from meddet.data.dataset import rarest_class_weights

    recs = _toy()
    cfg = load_config(None, ["DATALOADER.SAMPLER_TRAIN", "RarestClassSampler"])
    np.testing.assert_allclose(build_epoch_order(cfg, recs).weights.numpy(), rarest_class_weights(recs))
