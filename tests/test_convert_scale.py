"""Conversion at scale: worker processes give the same dataset as one process, reruns reuse
complete and valid outputs only, a killed run leaves no half file and resumes, shards split the
work and a final run assembles them, a crashing worker costs only its own item."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from meddet.data.coco import load_coco
from meddet.data.formats import convert_cbis_ddsm, convert_images
from meddet.data.parallel import RunOptions, WorkerCrashed, parallel_map, parse_shard
from meddet.errors import ConfigError
from meddet.io import PixelOptions
from meddet.synth import make_cbis_ddsm

REPO = Path(__file__).resolve().parents[1]
SIZE = (192, 128)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_cbis_ddsm(tmp_path_factory.mktemp("scale") / "raw", n_patients=6, seed=4, image_size=SIZE)


def convert(synth, out: Path, **kw):
    return convert_cbis_ddsm(synth["mass_csvs"], synth["calc_csvs"], synth["dicom_root"], out, progress=False, **kw)


def files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_workers_write_exactly_what_one_process_writes(synth, tmp_path):
    one = convert(synth, tmp_path / "one")
    two = convert(synth, tmp_path / "two", run=RunOptions(workers=2))
    assert one.ok and two.ok and one.n_converted == two.n_converted == synth["n_images"]
    assert files(tmp_path / "one") == files(tmp_path / "two")


def test_manifest_lists_every_output_with_its_hash(synth, tmp_path):
    convert(synth, tmp_path / "o", pixels=PixelOptions(bit_depth=16))
    entries = [json.loads(line) for line in (tmp_path / "o" / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == synth["n_images"]
    for e in entries:
        png = cv2.imread(str(tmp_path / "o" / e["output"]), cv2.IMREAD_UNCHANGED)
        assert e["sha256"] == sha(tmp_path / "o" / e["output"])
        assert e["shape"] == list(png.shape) and e["bit_depth"] == 16 and png.dtype.itemsize == 2
        assert (synth["dicom_root"] / e["source"]).is_file() and e["record"]["file_name"] == e["output"]
    assert (tmp_path / "o" / "errors.txt").read_text() == ""
    assert not list((tmp_path / "o").glob("*partial*"))


def test_rerun_reuses_valid_outputs_and_redoes_broken_or_changed_ones(synth, tmp_path):
    csvs = []
    for src in synth["mass_csvs"] + synth["calc_csvs"]:  # copies: one gets corrected below
        csvs.append(tmp_path / Path(src).name)
        csvs[-1].write_bytes(Path(src).read_bytes())

    def run(**kw):
        return convert_cbis_ddsm(csvs[:2], csvs[2:], synth["dicom_root"], out, progress=False, **kw)

    out = tmp_path / "o"
    run()
    before = files(out)
    again = run()
    assert again.n_reused == synth["n_images"] and again.n_converted == 0 and files(out) == before
    pngs = sorted((out / "images").glob("*.png"))
    pngs[0].write_bytes(pngs[0].read_bytes()[:100])  # truncated by hand
    pngs[1].unlink()
    (out / "images" / f".{pngs[2].name}.tmp999").write_bytes(b"half a file from a killed run")
    fixed = run()
    assert fixed.n_converted == 2 and fixed.n_reused == synth["n_images"] - 2
    assert files(out) == before  # the leftover temporary is gone, the damage repaired
    rows = csvs[0].read_text().splitlines()
    fields = rows[1].split(",")
    fields[8] = "5" if fields[8] != "5" else "4"  # a corrected assessment: that image's record changes
    csvs[0].write_text("\n".join([rows[0], ",".join(fields), *rows[2:]]) + "\n")
    changed = run()
    assert changed.n_converted == 1 and changed.n_reused == synth["n_images"] - 1
    other = run(pixels=PixelOptions(gamma=1.0))  # other settings: nothing reusable
    assert other.n_converted == synth["n_images"] and other.n_reused == 0
    fresh = run(pixels=PixelOptions(gamma=1.0), run=RunOptions(resume=False))
    assert fresh.n_converted == synth["n_images"]


def test_shards_split_the_work_and_a_final_run_assembles_the_dataset(synth, tmp_path):
    reference = tmp_path / "ref"
    convert(synth, reference)
    out = tmp_path / "sharded"
    parts = [convert(synth, out, run=RunOptions(shard=(i, 3))) for i in range(3)]
    assert sum(p.n_converted for p in parts) == synth["n_images"] and all(p.n_converted for p in parts)
    assert not (out / "all.json").exists()  # a shard cannot know the whole dataset
    assert len(list(out.glob("manifest.shard-*-of-3.jsonl"))) == 3
    final = convert(synth, out)
    assert final.n_converted == 0 and final.n_reused == synth["n_images"]
    assert load_coco(out / "all.json") == load_coco(reference / "all.json")
    assert [p.name for p in out.glob("manifest*")] == ["manifest.jsonl"]


def test_a_killed_run_leaves_no_half_file_and_resumes(tmp_path):
    raw = make_cbis_ddsm(tmp_path / "raw", n_patients=10, seed=2, image_size=(512, 320))
    out = tmp_path / "o"
    cmd = [
        sys.executable,
        str(REPO / "convert_dataset.py"),
        "cbis-ddsm",
        "--mass-csv",
        *map(str, raw["mass_csvs"]),
        "--calc-csv",
        *map(str, raw["calc_csvs"]),
        "--dicom-root",
        str(raw["dicom_root"]),
        "--out",
        str(out),
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / "manifest.partial.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_text().count("\n") >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "all.json").exists(), "the run was killed before its end"
    for png in (out / "images").glob("*.png"):  # every PNG on disk is whole
        assert cv2.imread(str(png), cv2.IMREAD_UNCHANGED) is not None, png
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "reused from an earlier run" in done.stdout  # the images done before the kill were kept
    coco = load_coco(out / "all.json")
    assert len(coco["images"]) == raw["n_images"]
    entries = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(e["sha256"] == sha(out / e["output"]) for e in entries)
    assert not [p for p in (out / "images").iterdir() if p.name.startswith(".")]


def _crash_on_three(x: int) -> int:
    if x == 3:
        os._exit(1)  # a decoder segfault, an OOM kill
    return x * 10


def test_a_crashing_worker_costs_only_the_item_that_crashed():
    results = dict(parallel_map(_crash_on_three, range(8), workers=2))
    assert sorted(results) == list(range(8))
    assert isinstance(results[3], WorkerCrashed)
    assert all(results[i] == i * 10 for i in range(8) if i != 3)


def test_images_command_converts_a_folder_and_reports_bad_files(synth, tmp_path):
    src = tmp_path / "src"
    for i, p in enumerate(sorted(Path(synth["dicom_root"]).rglob("*.dcm"))[:4]):
        (src / f"s{i}").mkdir(parents=True)
        (src / f"s{i}" / "IM0001").write_bytes(p.read_bytes())  # archives often drop the .dcm suffix
    (src / "notes.txt").write_text("not an image")
    (src / "broken.dcm").write_text("not a DICOM")
    report = convert_images(src, tmp_path / "o", run=RunOptions(workers=2), progress=False)
    assert report.n_images == 4 and [s.item for s in report.skipped] == ["broken.dcm"]
    coco = load_coco(tmp_path / "o" / "all.json")
    assert sorted(im["file_name"] for im in coco["images"]) == [f"images/s{i}_IM0001.png" for i in range(4)]
    assert (tmp_path / "o" / "errors.txt").read_text().startswith("broken.dcm: ")


def test_shard_and_worker_options_are_checked():
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "1", "-1/3", "a/b"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)
    with pytest.raises(ConfigError, match="--workers"):
        RunOptions(workers=0)
