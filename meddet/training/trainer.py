"""Trainer: the setup of a training run around the loop (meddet.training.loop) and its hooks.

Run folder (docs/ARCHITECTURE.md): config.yaml, metrics.json (detectron2 JSON lines), TensorBoard events,
model_XXXXXXX.pth every SOLVER.CHECKPOINT_PERIOD, last_checkpoint, model_final.pth, model_best.pth,
training_done.json (the end-of-training steps finished).

Resume (meddet.training.resume): from the newest checkpoint that loads; a run whose loop ended but whose
final validation was killed repeats only the end-of-training steps. A checkpoint is written after all of its
iteration's hooks and holds their state, the RNG and the smoothing windows, so metrics.json after kills and
resumes equals an uninterrupted run's (except the wall-clock `time`, `data_time` and `eta_seconds`).
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from meddet import modeling
from meddet.config import CfgNode, get_cfg, save_config
from meddet.data import dataset
from meddet.data.coco import category_ids, load_coco
from meddet.data.tiling import TilingParams, tile_coco
from meddet.errors import ConfigError
from meddet.evaluation import evaluate, evaluation_kwargs
from meddet.inference import inference_on_dataset
from meddet.io.recipe import adopt_dataset_recipe
from meddet.modeling.build import resolve_engine
from meddet.modeling.checkpoint import load_checkpoint_for_resume, save_checkpoint
from meddet.modeling.summary import model_summary
from meddet.training import comm, solver
from meddet.training.diagnosis import diagnose, format_findings
from meddet.training.events import EventStorage, EventWriter, JSONWriter, TensorboardWriter, truncate_metrics
from meddet.training.hooks import BestCheckpointer, EarlyStopping, EvalHook, PeriodicCheckpointer, PeriodicWriter
from meddet.training.loop import HookBase, TrainerBase
from meddet.training.resume import (
    DONE_FILE,
    LAST_CHECKPOINT,
    ResumePoint,
    checkpoint_files,
    find_resume_checkpoint,
    read_done,
    read_pointer,
    remove_stale_temporaries,
    set_aside,
    write_done,
)
from meddet.training.step import AMPStep, SimpleStep

logger = logging.getLogger(__name__)


def seed_all(seed: int) -> int:
    """Seed Python, NumPy and torch; a negative seed draws one (returned, to be saved in the config)."""
    if seed < 0:
        seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return seed


def last_checkpoint_path(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint named in OUTPUT_DIR/last_checkpoint (detectron2's convention), if it exists; None (and
    a warning saying why) when the pointer is missing, unreadable or names a missing file."""
    name, problem = read_pointer(output_dir)
    if problem:
        logger.warning("%s", problem)
    return Path(output_dir) / name if name else None


class Trainer(TrainerBase):
    """meddet's trainer: the setup (resume point, seed, class checks, builders) around TrainerBase's loop.

    Subclass it and override a builder (build_model, build_optimizer, build_lr_scheduler, build_train_loader,
    build_step, build_writers, build_hooks) to change one part; `hooks` are added after the default hooks
    (before the periodic checkpointer, which stays last)."""

    def __init__(self, cfg: CfgNode, resume: bool = False, hooks: Sequence[HookBase] = ()) -> None:
        super().__init__()
        self.output_dir = Path(cfg.OUTPUT_DIR)
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self.resume_point = self._resume_point(resume)
        self.cfg = self.setup_config(cfg, self.resume_point)
        self.max_iter = int(self.cfg.SOLVER.MAX_ITER)
        self.device = self._device()
        self.model = self.build_model(self.cfg).to(self.device)
        self.optimizer = self.build_optimizer(self.cfg, self.model)
        self.scheduler = self.build_lr_scheduler(self.cfg, self.optimizer)
        # One model object for checkpoints/evaluation; DistributedDataParallel only for the training step.
        self.train_model = self.model
        if self.world_size > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.step = self.build_step(self.cfg)
        self._resume_or_load(resume)
        self.train_loader = self.build_train_loader(self.cfg)
        self.storage = EventStorage(self.start_iter)
        self.storage.load_history(self._resume_meta.get("storage_hist") or {})
        self.iter = self.start_iter
        self.writers = self.build_writers()
        self.register_hooks(self.build_hooks())
        self.register_hooks(hooks)
        self._bar: tqdm | None = None
        self._warned_loading = False

    # ------------------------------------------------------------------ setup
    def _resume_point(self, resume: bool) -> ResumePoint | None:
        """With resume: the newest checkpoint that loads (last_checkpoint is advisory; ModelError if some exist
        but none loads: starting again from iteration 0 would overwrite them). Without: refuse a used folder."""
        if not resume:
            metrics = self.output_dir / "metrics.json"
            held = [p.name for p in checkpoint_files(self.output_dir)]
            held += [n for n in (LAST_CHECKPOINT,) if (self.output_dir / n).exists()]
            if metrics.is_file() and metrics.stat().st_size:
                held.append(metrics.name)
            if held:
                raise ConfigError(
                    f"OUTPUT_DIR {self.output_dir} already holds a run ({', '.join(sorted(held)[:4])}); pass "
                    "--resume to continue it, or choose another OUTPUT_DIR (nothing is overwritten)"
                )
            return None
        point = find_resume_checkpoint(self.output_dir)
        if point is None:
            _, problem = read_pointer(self.output_dir)
            logger.warning(
                "--resume: no checkpoint in %s%s; starting from iteration 0",
                self.output_dir,
                f" ({problem})" if problem else "",
            )
        return point

    def setup_config(self, cfg: CfgNode, point: ResumePoint | None) -> CfgNode:
        """The run's frozen config: the seed (the resumed run's, so the data order goes on unchanged), class
        names and preprocessing recipe from the training data (checked against the config), the engine.
        Loads the training records (self.train_records)."""
        cfg = cfg.clone()
        cfg.defrost()
        if point is not None and (self.output_dir / "config.yaml").is_file():
            prev = get_cfg()
            prev.merge_from_file(str(self.output_dir / "config.yaml"))
            if cfg.SEED < 0 or cfg.SEED != prev.SEED:
                cfg.SEED = prev.SEED
        cfg.SEED = seed_all(int(cfg.SEED))
        if not cfg.DATASETS.TRAIN:
            raise ConfigError("DATASETS.TRAIN: no training COCO file given")
        self.train_records, names = dataset.load_records(
            list(cfg.DATASETS.TRAIN), cfg.DATASETS.IMAGE_ROOT, bool(cfg.DATASETS.STRICT_BOXES)
        )
        if cfg.DATASETS.CLASS_NAMES and list(cfg.DATASETS.CLASS_NAMES) != names:
            raise ConfigError(
                f"DATASETS.CLASS_NAMES {list(cfg.DATASETS.CLASS_NAMES)} differ from the training data's "
                f"categories {names}"
            )
        cfg.DATASETS.CLASS_NAMES = names
        adopt_dataset_recipe(cfg, list(cfg.DATASETS.TRAIN))  # the data's preprocessing recipe, saved with the run
        if cfg.MODEL.ROI_HEADS.NUM_CLASSES != len(names):
            raise ConfigError(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} but the training data "
                f"has {len(names)} categories {names}"
            )
        # The engine that trains, recorded in config.yaml (auto: the engine of the weights it starts from).
        cfg.MODEL.ENGINE = resolve_engine(
            cfg.MODEL.ENGINE, (point.path if point else None) or cfg.MODEL.WEIGHTS or None
        )
        if cfg.VIS_PERIOD > 0:
            raise ConfigError(
                f"VIS_PERIOD: {cfg.VIS_PERIOD}; meddet draws no training visualizations, expected 0 "
                "(see the run's predictions with -c predict / -c evaluate's error galleries)"
            )
        cfg.freeze()
        return cfg

    def _device(self) -> torch.device:
        device = modeling.resolve_device(self.cfg.MODEL.DEVICE)
        if self.world_size > 1 and device.type == "cuda":
            device = torch.device("cuda", comm.get_local_rank())
        if device.type == "cuda":  # detectron2 sets it for training (default_setup)
            torch.backends.cudnn.benchmark = bool(self.cfg.CUDNN_BENCHMARK)
        return device

    def _resume_or_load(self, resume: bool) -> None:
        """Model, optimizer, scheduler, scaler, RNG and the loop's position from the resume checkpoint; else the
        MODEL.WEIGHTS to start from."""
        point = self.resume_point
        self.start_iter = 0
        self._resume_rng: torch.Tensor | None = None
        self._resume_meta: dict = {}
        self._loop_done = self._finished = False
        if point is None:
            if self.cfg.MODEL.WEIGHTS:
                modeling.load_model_weights(self.model, self.cfg.MODEL.WEIGHTS, self.cfg)
            if resume and comm.is_main_process():
                truncate_metrics(
                    self.output_dir / "metrics.json", -1
                )  # lines of a run killed before its 1st checkpoint
            return
        last = load_checkpoint_for_resume(point.path, self.model, self.optimizer, self.scheduler, self.step.scaler)
        self._resume_rng = torch.get_rng_state()  # as saved; re-applied once the data iterator exists
        self._resume_meta = point.meta
        self.start_iter = last + 1
        dropped = 0
        if comm.is_main_process():
            for bad, why in point.damaged:  # the resumed run must not overwrite them: kept aside
                if bad.exists():
                    logger.warning("%s is damaged (%s); renamed to %s", bad, why, set_aside(bad).name)
            remove_stale_temporaries(self.output_dir)
            dropped = truncate_metrics(self.output_dir / "metrics.json", last)
        logger.info(
            "Resuming from %s at iteration %d (%s)%s",
            point.path,
            self.start_iter,
            point.reason,
            f"; {dropped} metrics lines after it dropped: they are re-run" if dropped else "",
        )
        # The loop ended in that run (last iteration or early stop): only the end-of-training steps remain,
        # unless training_done.json says they finished too.
        self._loop_done = bool(point.meta.get("stopped_early")) or self.start_iter >= self.max_iter
        done = read_done(self.output_dir)
        self._finished = self._loop_done and done is not None and done.get("iteration") == last

    # ------------------------------------------------------------------ builders (override one in a subclass)
    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """The detector (meddet.modeling.build_model); the trainer moves it to its device."""
        return modeling.build_model(cfg)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """SGD or AdamW over detectron2's parameter groups (meddet.training.solver.build_optimizer)."""
        return solver.build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """Warmup × multi-step or cosine, stepped once per iteration (meddet.training.solver)."""
        return solver.build_lr_scheduler(cfg, optimizer)

    def build_train_loader(self, cfg: CfgNode) -> Iterable[list[dict]]:
        """An endless loader of training batches that starts at self.start_iter (this rank's share)."""
        loader, _ = dataset.build_train_loader(
            cfg, self.start_iter, self.rank, self.world_size, records=self.train_records
        )
        return loader

    def build_step(self, cfg: CfgNode) -> SimpleStep:
        """AMPStep with SOLVER.AMP.ENABLED on CUDA, else SimpleStep; SOLVER.CLIP_GRADIENTS when enabled."""
        amp = bool(cfg.SOLVER.AMP.ENABLED) and self.device.type == "cuda"
        if cfg.SOLVER.AMP.ENABLED and not amp:
            logger.info("SOLVER.AMP.ENABLED is set but the device is %s: AMP runs only on CUDA", self.device)
        clip = cfg.SOLVER.CLIP_GRADIENTS if cfg.SOLVER.CLIP_GRADIENTS.ENABLED else None
        return (AMPStep if amp else SimpleStep)(self.train_model, self.optimizer, clip)

    def build_writers(self) -> list[EventWriter]:
        """metrics.json and TensorBoard on the main process; none on the others."""
        if not comm.is_main_process():
            return []
        return [JSONWriter(self.output_dir / "metrics.json"), TensorboardWriter(self.output_dir)]

    def build_hooks(self) -> list[HookBase]:
        """The default hooks, in the order they run (meddet.training.hooks)."""
        cfg = self.cfg
        hooks: list[HookBase] = []
        if cfg.TEST.EVAL_PERIOD > 0 and cfg.DATASETS.VAL:
            metric, mode = cfg.TEST.BEST_METRIC, cfg.TEST.BEST_MODE
            hooks.append(EvalHook(int(cfg.TEST.EVAL_PERIOD), self.evaluate_val, expected=[metric]))
            if cfg.TEST.EARLY_STOP_PATIENCE < 0:
                raise ConfigError(
                    f"TEST.EARLY_STOP_PATIENCE: {cfg.TEST.EARLY_STOP_PATIENCE}; expected 0 (no early stopping) "
                    "or the number of evaluations without improvement that stop training"
                )
            if cfg.TEST.EARLY_STOP_PATIENCE > 0:
                hooks.append(EarlyStopping(metric, mode, int(cfg.TEST.EARLY_STOP_PATIENCE)))
            hooks.append(BestCheckpointer(metric, mode))
        if comm.is_main_process():
            hooks.append(PeriodicWriter(self.writers))
            hooks.append(PeriodicCheckpointer(int(cfg.SOLVER.CHECKPOINT_PERIOD)))
        return hooks

    def flush_writers(self) -> None:
        """Write pending metrics now instead of at the next write period."""
        for w in self.writers:
            w.write(self.storage)
        self.storage.clear_unsmoothed()

    # ------------------------------------------------------------------ evaluation
    def evaluate_val(self) -> dict:
        """bbox/* metrics and validation losses (val/total_loss, val/loss_*) on DATASETS.VAL."""
        out: dict = {}
        # A model trained on tiles is validated on every tile of the validation images (what it sees).
        tiled = bool(self.cfg.TILING.ENABLED)
        for path in self.cfg.DATASETS.VAL:
            loader, _, names = dataset.build_test_loader(
                self.cfg, path, with_boxes=True, rank=self.rank, world_size=self.world_size, tiles=tiled
            )
            gt = load_coco(path)
            if tiled:
                gt = tile_coco(gt, TilingParams.from_cfg(self.cfg, names).for_evaluation())
            cat_ids = category_ids(gt)
            preds = inference_on_dataset(self.model, loader, cat_ids, desc="validation")
            losses = self.validation_loss(loader)
            gathered = comm.all_gather_object((preds, losses))
            if comm.is_main_process():
                preds = [p for part, _ in gathered for p in part]
                kwargs = evaluation_kwargs(self.cfg)
                kwargs["bootstrap_samples"] = 0  # CIs belong to the final evaluation, not to every period
                # COCO only: `out` keeps bbox/* (and the val/* losses), all that TEST.BEST_METRIC can name
                metrics = evaluate(gt, preds, None, views=("coco",), **kwargs)
                out.update({k: v for k, v in metrics.items() if k.startswith("bbox/")})
                n = sum(l.get("_images", 0) for _, l in gathered)
                if n:
                    keys = {k for _, l in gathered for k in l if k != "_images"}
                    out.update({k: sum(l.get(k, 0.0) * l["_images"] for _, l in gathered if l) / n for k in keys})
                logger.info(
                    "Validation on %s at iteration %d: AP %.2f, AP50 %.2f, loss %.4f",
                    path,
                    self.iter,
                    metrics.get("bbox/AP", float("nan")),
                    metrics.get("bbox/AP50", float("nan")),
                    out.get("val/total_loss", float("nan")),
                )
        return comm.broadcast_object(out)

    @torch.no_grad()
    def validation_loss(self, loader: Iterable[list[dict]]) -> dict:
        """Mean training losses on a loader, with normalization layers in eval mode (no statistics update)."""
        model = self.model
        was_training = model.training
        model.train()
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.eval()
        sums: dict[str, float] = {}
        n = 0
        # fork_rng: proposal sampling here must not shift the training run's random stream
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for batch in loader:
                batch = [b for b in batch if len(b["boxes"])]
                if not batch:
                    continue
                losses = model(batch)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(batch)
                n += len(batch)
        model.train(was_training)
        if not n:
            return {}
        out = {f"val/{k}": v / n for k, v in sums.items()}
        out["val/total_loss"] = sum(sums.values()) / n
        out["_images"] = n  # for the weighted mean over ranks
        return out

    # ------------------------------------------------------------------ checkpoints
    def save(self, name: str, update_last: bool = True, extra: dict | None = None) -> Path:
        """Checkpoint with model, optimizer, scheduler, scaler, iteration, the torch RNG state (so a resumed
        run draws the same proposals/samples as an uninterrupted one), the smoothing windows and every hook's
        state_dict()."""
        path = self.output_dir / name
        meta = {
            "class_names": list(self.cfg.DATASETS.CLASS_NAMES),
            "rng_torch": torch.get_rng_state(),
            "storage_hist": self.storage.history(),
            "stopped_early": bool(self.stop_requested),
            "hooks": self.hooks_state_dict(),
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            meta["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        meta.update(extra or {})
        save_checkpoint(
            path, self.model, self.optimizer, self.scheduler, self.step.scaler, iteration=self.iter, extra=meta
        )
        if update_last:
            tmp = self.output_dir / f".{LAST_CHECKPOINT}.tmp"
            tmp.write_text(name, encoding="utf-8")
            os.replace(tmp, self.output_dir / LAST_CHECKPOINT)
        logger.info("Saved checkpoint %s (iteration %d)", path, self.iter)
        return path

    # ------------------------------------------------------------------ loop
    def run_step(self) -> None:
        """One iteration: the next batch, the step object (forward … optimizer step), the LR schedule, metrics."""
        t0 = time.perf_counter()
        batch = next(self._data_iter)
        data_time = time.perf_counter() - t0
        self.last_batch_files = [b["file_name"] for b in batch]
        loss_values = self.step(batch, self.iter, self.after_backward)
        # detectron2's training statistics (fast_rcnn/cls_accuracy, rpn/num_pos_anchors, ...), this process's
        stats = {k: float(v) for k, v in (getattr(self.model, "training_stats", None) or {}).items()}
        step_time = time.perf_counter() - t0
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        total = sum(loss_values.values())
        scalars = {"total_loss": total, **loss_values, **stats, "time": step_time, "data_time": data_time}
        for name, value in scalars.items():
            self.storage.put_scalar(name, value)
        self.storage.put_scalar("lr", lr, smooth=False)
        remaining = self.max_iter - self.iter - 1
        self.storage.put_scalar("eta_seconds", remaining * (self.storage.median("time") or 0.0), smooth=False)

    def after_step(self) -> None:
        super().after_step()
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(
                loss=f"{self.storage.median('total_loss'):.3f}",
                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                refresh=False,
            )
        self._check_loading()

    def _check_loading(self) -> None:
        """Warn (once) when data loading takes over 20% of each iteration: the GPU/CPU waits for data."""
        if self._warned_loading or self.iter - self.start_iter < 20:
            return
        dt, t = self.storage.median("data_time"), self.storage.median("time")
        if dt is not None and t and dt / t > 0.2:
            self._warned_loading = True
            logger.warning(
                "Data loading takes %.0f%% of each iteration (data_time/time): raise "
                "DATALOADER.NUM_WORKERS or pre-convert images to smaller PNGs",
                100 * dt / t,
            )

    def train(self) -> None:
        """Run the loop from start_iter (or only the end-of-training steps a resumed run still lacks), then
        write model_final.pth, the end-of-training hooks and training_done.json."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if comm.is_main_process():
            save_config(self.cfg, self.output_dir / "config.yaml")
        if self._finished:
            logger.info("Nothing to do: the run already finished at iteration %d (%s)", self.start_iter - 1, DONE_FILE)
            return
        if self.resume_point is not None:  # checkpoints written before hooks saved their state have none
            self.load_hooks_state_dict(self._resume_meta.get("hooks") or {})
        self.before_train()
        start = time.perf_counter()
        if not self._loop_done:
            self._loop()
            if comm.is_main_process():  # before the end-of-training steps: a kill during them loses no training
                self.save("model_final.pth", extra={"loop_done": True})
        else:
            self.iter = self.storage.iter = self.start_iter - 1
            logger.info(
                "The training loop of %s already ended at iteration %d%s; repeating the end-of-training "
                "steps that did not finish (final validation, model_best.pth, final metrics)",
                self.output_dir,
                self.iter,
                " (early stop)" if self._resume_meta.get("stopped_early") else "",
            )
            if comm.is_main_process() and not self._resume_meta.get("loop_done"):
                self.save("model_final.pth", extra={"loop_done": True})
        self.after_train()
        if comm.is_main_process():
            write_done(
                self.output_dir,
                {
                    "iteration": self.iter,
                    "checkpoint": "model_final.pth",
                    "stopped_early": bool(self.stop_requested or self._resume_meta.get("stopped_early")),
                },
            )
        elapsed = time.perf_counter() - start
        done = max(self.iter + 1 - self.start_iter, 0)
        logger.info(
            "Training finished: %d iterations in %s (%.3f s/it)",
            done,
            datetime.timedelta(seconds=int(elapsed)),
            elapsed / max(done, 1),
        )
        if comm.is_main_process() and (self.output_dir / "metrics.json").is_file():
            logger.info("Training diagnosis:\n%s", format_findings(diagnose(self.output_dir / "metrics.json")))

    def _loop(self) -> None:
        logger.info(
            "Training %s from iteration %d to %d on %s (output: %s)",
            self.cfg.MODEL.ENGINE,
            self.start_iter,
            self.max_iter,
            self.device,
            self.output_dir,
        )
        if comm.is_main_process():
            logger.info("Model summary:\n%s", model_summary(self.model, self.cfg))
            (self.output_dir / DONE_FILE).unlink(missing_ok=True)  # an extended run is not finished
        self.model.train()
        self._data_iter = iter(self.train_loader)  # draws a seed from the torch RNG, in a fresh run as on resume
        if self._resume_rng is not None:
            torch.set_rng_state(self._resume_rng)
        self._bar = tqdm(
            total=self.max_iter,
            initial=self.start_iter,
            desc="train",
            dynamic_ncols=True,
            mininterval=2,
            disable=not comm.is_main_process(),
        )
        try:
            self.run_loop()
        finally:
            self._bar.close()
            self._bar = None


def train(cfg: CfgNode, resume: bool = False, hooks: Sequence[HookBase] = ()) -> Path:
    """Train per `cfg`; returns the output folder. `hooks` run after the default hooks (before the periodic
    checkpointer). Raises MeddetError on bad config/data."""
    trainer = Trainer(cfg, resume=resume, hooks=hooks)
    trainer.train()
    return trainer.output_dir
