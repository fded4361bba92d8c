"""Splits and ids survive a re-conversion (issue 19, item 4): one unreadable image moves no other patient
between splits and changes no other image's id; the report lists what changed."""

from __future__ import annotations

import shutil

import pytest

from meddet.data.coco import load_coco
from meddet.data.formats import convert_cbis_ddsm
from meddet.data.splits import split_by_patient
from meddet.synth import make_cbis_ddsm


def _state(out):
    """file_name -> (split, image id, annotation ids) of a converted folder."""
    state = {}
    for split in ("train", "val", "test"):
        coco = load_coco(out / f"{split}.json")
        anns = {}
        for a in coco["annotations"]:
            anns.setdefault(a["image_id"], []).append(a["id"])
        for im in coco["images"]:
            state[im["file_name"]] = (split, im["id"], sorted(anns.get(im["id"], [])))
    return state


def _convert(synth, out, split):
    return convert_cbis_ddsm(
        synth["mass_csvs"], synth["calc_csvs"], synth["dicom_root"], out, split=split, seed=5, progress=False
    )


@pytest.mark.parametrize("split", ["official", (0.5, 0.25, 0.25)])
def test_one_corrupt_dicom_moves_no_other_patient_and_no_other_id(tmp_path, split):
    synth = make_cbis_ddsm(tmp_path / "raw", n_patients=12, seed=3, image_size=(96, 64))
    out = tmp_path / "coco"
    first = _convert(synth, out, split)
    assert first.ok, first.summary()
    before = _state(out)
    assert {s for s, _, _ in before.values()} == {"train", "val", "test"}
    coco = load_coco(out / "all.json")
    victim = min(coco["images"], key=lambda im: im["id"])  # the first id: every later id shifted before
    dcm = synth["dicom_root"] / victim["source"]
    dcm.write_bytes(dcm.read_bytes()[:300])  # a truncated, unreadable DICOM

    again = _convert(synth, out, split)  # re-conversion into the same folder
    after = _state(out)
    assert set(before) - set(after) == {victim["file_name"]}
    for name, (s, image_id, ann_ids) in after.items():
        assert (s, image_id, ann_ids) == before[name], name  # same split, same image and annotation ids
    # the report says exactly what changed, and why
    assert len(again.skipped) == 1
    key = victim["file_name"].removeprefix("images/").removesuffix(".png")
    assert len(again.changes["removed"]) == 1 and again.changes["removed"][0].startswith(key)
    assert again.changes["added"] == again.changes["changed"] == again.changes["moved"] == []
    assert "1 removed" in again.summary() and key in (out / "changes.txt").read_text()

    # a conversion into a fresh folder puts every patient in the same split; with the id map copied,
    # every image keeps its id too
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(out / "ids.json", fresh / "ids.json")
    _convert(synth, fresh, split)
    assert _state(fresh) == after


def test_split_of_a_patient_does_not_depend_on_the_others():
    images = [{"id": i + 1, "patient_id": f"P{i // 3}", "file_name": f"{i}.png"} for i in range(300)]
    full = split_by_patient(images, (0.7, 0.15, 0.15), seed=11)
    where = {i: s for s, ids in full.items() for i in ids}
    for drop in ("P0", "P17", "P55"):  # remove one patient
        rest = [im for im in images if im["patient_id"] != drop]
        part = split_by_patient(rest, (0.7, 0.15, 0.15), seed=11)
        assert all(where[i] == s for s, ids in part.items() for i in ids)
    rest = images[1:]  # remove one image of a patient
    part = split_by_patient(rest, (0.7, 0.15, 0.15), seed=11)
    assert all(where[i] == s for s, ids in part.items() for i in ids)
    assert split_by_patient(images, (0.7, 0.15, 0.15), seed=12) != full  # the seed matters
