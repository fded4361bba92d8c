"""Training: the loop and its hooks (loop.py, hooks.py), the optimization step (step.py), the Trainer that
sets a run up from a config (trainer.py), solver, events (metrics and writers), resume."""

from meddet.training.events import EventStorage, EventWriter
from meddet.training.hooks import BestCheckpointer, EarlyStopping, EvalHook, PeriodicCheckpointer, PeriodicWriter
from meddet.training.loop import HookBase, TrainerBase
from meddet.training.step import AMPStep, SimpleStep
from meddet.training.trainer import Trainer, last_checkpoint_path, seed_all, train

__all__ = [
    "Trainer",
    "TrainerBase",
    "HookBase",
    "train",
    "seed_all",
    "last_checkpoint_path",
    "SimpleStep",
    "AMPStep",
    "EvalHook",
    "BestCheckpointer",
    "EarlyStopping",
    "PeriodicWriter",
    "PeriodicCheckpointer",
    "EventStorage",
    "EventWriter",
]
