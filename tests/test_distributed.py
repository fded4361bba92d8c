"""torchrun with 2 CPU processes (gloo): data sharded per rank, one writer, checkpoint resumable alone."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_MODEL_OPTS

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e")]


def test_torchrun_two_ranks_then_single_process_resume(tiny_coco, tmp_path):
    out = tmp_path / "run"
    opts = TINY_MODEL_OPTS + [
        "DATASETS.TRAIN",
        f"('{tiny_coco}',)",
        "OUTPUT_DIR",
        str(out),
        "SOLVER.IMS_PER_BATCH",
        "4",
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        str(REPO / "tests" / "ddp_probe.py"),
        str(REPO / "configs" / "Base-RCNN-FPN.yaml"),
        *opts,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((out / f"seen_rank{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 4 * 2  # 4 iterations x 2 images per rank (global batch 4)
    # each global batch is split across the ranks: different images at every step
    for i in range(0, 8, 2):
        assert not set(seen[0][i : i + 2]) & set(seen[1][i : i + 2])
    lines = [json.loads(l) for l in (out / "metrics.json").read_text().splitlines()]
    its = [l["iteration"] for l in lines]
    assert its == sorted(set(its)), "each iteration logged once (rank 0 only)"
    assert (out / "model_final.pth").is_file()

    # the distributed checkpoint resumes in a plain single-process run
    single = subprocess.run(
        [
            sys.executable,
            str(REPO / "detectron.py"),
            "-c",
            "train",
            "--config-file",
            str(REPO / "configs" / "Base-RCNN-FPN.yaml"),
            *opts[:-4],
            "SOLVER.MAX_ITER",
            "6",
            "SOLVER.CHECKPOINT_PERIOD",
            "2",
            "--resume",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert "at iteration 4" in single.stderr
