"""Configs: _BASE_ inheritance, KEY VALUE overrides, clear errors for unknown keys."""

import pytest

from meddet.config import load_config, save_config
from meddet.errors import ConfigError


def test_base_inheritance_and_override(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("SOLVER:\n  BASE_LR: 0.5\n  MAX_ITER: 10\nMODEL:\n  RESNETS:\n    DEPTH: 18\n")
    child = tmp_path / "sub" / "child.yaml"
    child.parent.mkdir()
    child.write_text("_BASE_: ../base.yaml\nSOLVER:\n  MAX_ITER: 20\n")
    cfg = load_config(child, ["SOLVER.BASE_LR", "0.25", "INPUT.MIN_SIZE_TRAIN", "(256, 320)"])
    assert cfg.MODEL.RESNETS.DEPTH == 18  # from the base
    assert cfg.SOLVER.MAX_ITER == 20  # child wins over base
    assert cfg.SOLVER.BASE_LR == 0.25  # command line wins over files
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (256, 320)


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(None, ["SOLVER.BASE_LR", "0.125", "DATASETS.CLASS_NAMES", "['a', 'b']"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg


@pytest.mark.parametrize(
    "opts, needle",
    [
        (["SOLVER.BASE_LRR", "0.1"], "SOLVER.BASE_LRR"),
        (["NOPE", "1"], "NOPE"),
        (["SOLVER.BASE_LR"], "pairs"),
        (["SOLVER.MAX_ITER", "'many'"], "MAX_ITER"),
    ],
)
def test_bad_overrides_name_the_key(opts, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, opts)


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("SOLVER:\n  MAX_ITERS: 5\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "bad.yaml" in str(e.value) and "SOLVER.MAX_ITERS" in str(e.value)


def test_shipped_configs_load():
    from pathlib import Path

    for f in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        cfg = load_config(f)
        if cfg.MODEL.WEIGHTS:  # fine-tuning recipes keep the pretrained BatchNorm frozen, as detectron2
            assert cfg.MODEL.RESNETS.NORM == "FrozenBN", f"{f.name}: pretrained backbones keep FrozenBN"
            continue
        assert cfg.MODEL.RESNETS.NORM in ("BN", "GN", "SyncBN"), f"{f.name}: from-scratch needs trainable norm"
