"""Training: the loop, its hooks, solver, events and resume."""

from meddet.training.trainer import HookBase, Trainer, last_checkpoint_path, seed_all, train

__all__ = ["Trainer", "HookBase", "train", "seed_all", "last_checkpoint_path"]
