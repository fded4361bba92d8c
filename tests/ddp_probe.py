"""Run by tests/test_distributed.py under torchrun: the real Trainer, plus a hook that records which
images each rank trained on (written to OUTPUT_DIR/seen_rank<r>.json)."""

import json
import sys
from pathlib import Path

from meddet.config import load_config
from meddet.training import HookBase, Trainer, comm


class RecordImages(HookBase):
    def __init__(self):
        self.seen = []

    def after_step(self):
        self.seen.extend(self.trainer.last_batch_files)

    def after_train(self):
        out = Path(self.trainer.cfg.OUTPUT_DIR) / f"seen_rank{comm.get_rank()}.json"
        out.write_text(json.dumps(self.seen))


if __name__ == "__main__":
    comm.init_from_torchrun()
    cfg = load_config(sys.argv[1], sys.argv[2:])
    t = Trainer(cfg, hooks=[RecordImages()])
    try:
        t.train()
    finally:
        import torch.distributed as dist

        dist.destroy_process_group()
