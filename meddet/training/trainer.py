"""The training loop (one loop for both engines) and its hooks.

Run folder (ARCHITECTURE.md): config.yaml, metrics.json (detectron2 JSON lines), TensorBoard events,
model_XXXXXXX.pth every SOLVER.CHECKPOINT_PERIOD, last_checkpoint, model_final.pth, model_best.pth,
training_done.json (the end-of-training steps finished).

Resume (meddet.training.resume): from the newest checkpoint that loads, whatever last_checkpoint says; a run
whose loop ended but whose final validation was killed repeats only the end-of-training steps. A checkpoint
is written after the iteration's evaluation and metrics line, so metrics.json after kills and resumes equals
an uninterrupted run's (the smoothing windows travel in the checkpoint; only the wall-clock `time`,
`data_time` and `eta_seconds` differ).
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from meddet.config import get_cfg, save_config
from meddet.data.coco import load_coco
from meddet.data.dataset import build_test_loader, build_train_loader, load_records
from meddet.data.tiling import TilingParams, tile_coco
from meddet.errors import ConfigError, MeddetError
from meddet.evaluation import evaluate, evaluation_kwargs
from meddet.inference import inference_on_dataset
from meddet.io.recipe import adopt_dataset_recipe
from meddet.modeling import build_model, load_model_weights, resolve_device
from meddet.modeling.build import resolve_engine
from meddet.modeling.checkpoint import load_checkpoint_for_resume, save_checkpoint
from meddet.modeling.summary import model_summary
from meddet.training import comm
from meddet.training.diagnosis import diagnose, format_findings
from meddet.training.events import EventStorage, JSONWriter, TensorboardWriter, truncate_metrics
from meddet.training.resume import (
    DONE_FILE,
    LAST_CHECKPOINT,
    checkpoint_files,
    find_resume_checkpoint,
    read_done,
    read_pointer,
    remove_stale_temporaries,
    set_aside,
    write_done,
)
from meddet.training.solver import build_lr_scheduler, build_optimizer, clip_gradients

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


class HookBase:
    """Called by the trainer around the loop. `self.trainer` is set when registered."""

    trainer: Trainer

    def before_train(self) -> None:
        """Before the first iteration (a no-op unless overridden)."""

    def after_step(self) -> None:
        """After every iteration; `self.trainer.iter` is the iteration just done (no-op unless overridden)."""

    def after_train(self) -> None:
        """After the loop ended normally, at the last iteration or by early stopping (no-op unless overridden)."""


class PeriodicWriter(HookBase):
    """Write metrics.json / TensorBoard every `period` iterations and at the end."""

    def __init__(self, writers: list, period: int = 20):
        self.writers = writers
        self.period = period

    def _write(self) -> None:
        for w in self.writers:
            w.write(self.trainer.storage)
        self.trainer.storage.clear_unsmoothed()

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it == self.trainer.max_iter - 1:
            self._write()

    def after_train(self) -> None:
        self._write()
        for w in self.writers:
            if hasattr(w, "close"):
                w.close()


class PeriodicCheckpointer(HookBase):
    """model_{iter:07d}.pth every SOLVER.CHECKPOINT_PERIOD iterations, after the iteration's other hooks
    (evaluation, metrics line), so a checkpoint holds everything its iteration did. model_final.pth is
    written by the trainer when the loop ends, before the end-of-training steps."""

    def __init__(self, period: int):
        self.period = period

    def after_step(self) -> None:
        it = self.trainer.iter
        if self.period > 0 and (it + 1) % self.period == 0 and it < self.trainer.max_iter - 1:
            self.trainer.save(f"model_{it:07d}.pth")


class EvalHook(HookBase):
    """Evaluate on DATASETS.VAL every TEST.EVAL_PERIOD iterations and at the end; results go to metrics.json.

    Keeps `model_best.pth` for TEST.BEST_METRIC (TEST.BEST_MODE max|min) and, with
    TEST.EARLY_STOP_PATIENCE > 0, stops training after that many evaluations without improvement."""

    def __init__(self, period: int, eval_fn, best_metric: str = "bbox/AP50", mode: str = "max", patience: int = 0):
        if mode not in ("max", "min"):
            raise ConfigError(f"TEST.BEST_MODE: expected 'max' or 'min', found {mode!r}")
        self.period = period
        self.eval_fn = eval_fn
        self.best_metric, self.mode, self.patience = best_metric, mode, patience
        self.best: float | None = None
        self.bad_evals = 0
        self.last_eval_iter = -1

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def before_train(self) -> None:
        """On resume: the best value, the evaluations without improvement and the last evaluated iteration,
        read back from metrics.json up to the iteration resumed from (as an uninterrupted run holds them)."""
        import json

        last = self.trainer.start_iter - 1
        path = self.trainer.output_dir / "metrics.json"
        if last < 0 or not path.is_file():
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            it = rec.get("iteration", -1) if isinstance(rec, dict) else -1
            if not isinstance(it, int) or it > last:
                continue
            if any(str(k).startswith(("bbox/", "val/")) for k in rec):
                self.last_eval_iter = max(self.last_eval_iter, it)
            v = rec.get(self.best_metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                if self._improved(v):
                    self.best, self.bad_evals = v, 0
                else:
                    self.bad_evals += 1

    def _run(self) -> None:
        self.last_eval_iter = self.trainer.iter
        results = self.eval_fn()
        for k, v in results.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.trainer.storage.put_scalar(k, v, smooth=False)
        value = results.get(self.best_metric)
        if value is None or not math.isfinite(value):
            self.trainer.flush_writers()  # every evaluation gets its own metrics.json line
            logger.warning(
                "TEST.BEST_METRIC %r is not among the validation results (%s); no model_best.pth",
                self.best_metric,
                ", ".join(sorted(results)[:12]),
            )
            return
        self._judge(value)
        # after model_best.pth: a resumed run that finds this line in metrics.json has the checkpoint too
        self.trainer.flush_writers()

    def _judge(self, value: float) -> None:
        if self._improved(value):
            self.best, self.bad_evals = value, 0
            if comm.is_main_process():
                self.trainer.save(
                    "model_best.pth", update_last=False, extra={"best_metric": self.best_metric, "best_value": value}
                )
            logger.info(
                "New best %s = %.4f at iteration %d (model_best.pth)", self.best_metric, value, self.trainer.iter
            )
        else:
            self.bad_evals += 1
            if self.patience and self.bad_evals >= self.patience:
                logger.info(
                    "Early stopping: %s has not improved on %.4f for %d evaluations",
                    self.best_metric,
                    self.best,
                    self.bad_evals,
                )
                self.trainer.stop_requested = True

    def after_step(self) -> None:
        it = self.trainer.iter
        if self.period > 0 and (it + 1) % self.period == 0 and it < self.trainer.max_iter - 1:
            self._run()

    def after_train(self) -> None:
        if self.last_eval_iter != self.trainer.iter:
            self._run()


class Trainer:
    """One loop: data → losses → backward (AMP on CUDA) → clip → step; hooks write, checkpoint, evaluate."""

    def __init__(self, cfg, resume: bool = False):
        cfg = cfg.clone()
        cfg.defrost()
        self.output_dir = Path(cfg.OUTPUT_DIR)
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        # last_checkpoint is advisory: the newest checkpoint that loads (ModelError if some exist but none
        # loads: starting again from iteration 0 would overwrite them).
        point = find_resume_checkpoint(self.output_dir) if resume else None
        ckpt = point.path if point is not None else None
        if resume and ckpt is None:
            _, problem = read_pointer(self.output_dir)
            logger.warning(
                "--resume: no checkpoint in %s%s; starting from iteration 0",
                self.output_dir,
                f" ({problem})" if problem else "",
            )
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
        # On resume keep the seed of the run being continued, so the data order goes on unchanged.
        if ckpt is not None and (self.output_dir / "config.yaml").is_file():
            prev = get_cfg()
            prev.merge_from_file(str(self.output_dir / "config.yaml"))
            if cfg.SEED < 0 or cfg.SEED != prev.SEED:
                cfg.SEED = prev.SEED
        cfg.SEED = seed_all(int(cfg.SEED) + 0)

        # Class names from the training data when the config has none (saved with the run).
        if not cfg.DATASETS.TRAIN:
            raise ConfigError("DATASETS.TRAIN: no training COCO file given")
        train_records, names = load_records(
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
        cfg.MODEL.ENGINE = resolve_engine(cfg.MODEL.ENGINE, ckpt or cfg.MODEL.WEIGHTS or None)
        cfg.freeze()
        self.cfg = cfg
        self.max_iter = int(cfg.SOLVER.MAX_ITER)

        self.device = resolve_device(cfg.MODEL.DEVICE)
        if self.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", comm.get_local_rank())
        if self.device.type == "cuda":  # detectron2 sets it for training (default_setup)
            torch.backends.cudnn.benchmark = bool(cfg.CUDNN_BENCHMARK)
        if cfg.VIS_PERIOD > 0:
            raise ConfigError(
                f"VIS_PERIOD: {cfg.VIS_PERIOD}; meddet draws no training visualizations, expected 0 "
                "(see the run's predictions with -c predict / -c evaluate's error galleries)"
            )
        self.model = build_model(cfg).to(self.device)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.amp = bool(cfg.SOLVER.AMP.ENABLED) and self.device.type == "cuda"
        if cfg.SOLVER.AMP.ENABLED and not self.amp:
            logger.info("SOLVER.AMP.ENABLED is set but the device is %s: AMP runs only on CUDA", self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

        self.start_iter = 0
        self._resume_rng: torch.Tensor | None = None
        self._resume_meta: dict = {}
        self._loop_done = self._finished = False
        if ckpt is not None:
            last = load_checkpoint_for_resume(ckpt, self.model, self.optimizer, self.scheduler, self.scaler)
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
                ckpt,
                self.start_iter,
                point.reason,
                f"; {dropped} metrics lines after it dropped: they are re-run" if dropped else "",
            )
            # The loop ended in that run (last iteration or early stop): only the end-of-training steps remain,
            # unless training_done.json says they finished too.
            self._loop_done = bool(point.meta.get("stopped_early")) or self.start_iter >= self.max_iter
            done = read_done(self.output_dir)
            self._finished = self._loop_done and bool(done) and done.get("iteration") == last
        elif cfg.MODEL.WEIGHTS:
            load_model_weights(self.model, cfg.MODEL.WEIGHTS, cfg)
        if resume and ckpt is None and comm.is_main_process():
            truncate_metrics(self.output_dir / "metrics.json", -1)  # lines of a run killed before its 1st checkpoint

        # One model object for checkpoints/evaluation; DistributedDataParallel only for the training step.
        self.train_model = self.model
        if self.world_size > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.train_loader, _ = build_train_loader(
            cfg, self.start_iter, self.rank, self.world_size, records=train_records
        )
        self.storage = EventStorage(self.start_iter)
        self.storage.load_history(self._resume_meta.get("storage_hist") or {})
        self.iter = self.start_iter
        self.stop_requested = False
        self._warned_loading = False
        self.hooks: list[HookBase] = []
        self._build_hooks()

    # ------------------------------------------------------------------ hooks
    def _build_hooks(self) -> None:
        cfg = self.cfg
        if cfg.TEST.EVAL_PERIOD > 0 and cfg.DATASETS.VAL:
            self.register(
                EvalHook(
                    int(cfg.TEST.EVAL_PERIOD),
                    self.evaluate_val,
                    cfg.TEST.BEST_METRIC,
                    cfg.TEST.BEST_MODE,
                    int(cfg.TEST.EARLY_STOP_PATIENCE),
                )
            )
        if comm.is_main_process():
            self.register(
                PeriodicWriter([JSONWriter(self.output_dir / "metrics.json"), TensorboardWriter(self.output_dir)])
            )
            # last: a checkpoint of iteration i is written after i's evaluation and metrics line
            self.register(PeriodicCheckpointer(int(cfg.SOLVER.CHECKPOINT_PERIOD)))

    def flush_writers(self) -> None:
        """Write pending metrics now (after an evaluation) instead of at the next write period."""
        for h in self.hooks:
            if isinstance(h, PeriodicWriter):
                h._write()

    def register(self, hook: HookBase) -> None:
        hook.trainer = self
        self.hooks.append(hook)

    # ------------------------------------------------------------------ evaluation
    def evaluate_val(self) -> dict:
        """bbox/* metrics and validation losses (val/total_loss, val/loss_*) on DATASETS.VAL."""
        out: dict = {}
        # A model trained on tiles is validated on every tile of the validation images (what it sees).
        tiled = bool(self.cfg.TILING.ENABLED)
        for path in self.cfg.DATASETS.VAL:
            loader, _, names = build_test_loader(
                self.cfg, path, with_boxes=True, rank=self.rank, world_size=self.world_size, tiles=tiled
            )
            gt = load_coco(path)
            if tiled:
                gt = tile_coco(gt, TilingParams.from_cfg(self.cfg, names).for_evaluation())
            cat_ids = [c["id"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
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
    def validation_loss(self, loader) -> dict:
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
        """Checkpoint with model, optimizer, scheduler, scaler, iteration and the torch RNG state (so a
        resumed run draws the same proposals/samples as an uninterrupted one)."""
        path = self.output_dir / name
        meta = {
            "class_names": list(self.cfg.DATASETS.CLASS_NAMES),
            "rng_torch": torch.get_rng_state(),
            "storage_hist": self.storage.history(),
            "stopped_early": bool(self.stop_requested),
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            meta["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        meta.update(extra or {})
        save_checkpoint(path, self.model, self.optimizer, self.scheduler, self.scaler, iteration=self.iter, extra=meta)
        if update_last:
            tmp = self.output_dir / f".{LAST_CHECKPOINT}.tmp"
            tmp.write_text(name, encoding="utf-8")
            os.replace(tmp, self.output_dir / LAST_CHECKPOINT)
        logger.info("Saved checkpoint %s (iteration %d)", path, self.iter)
        return path

    # ------------------------------------------------------------------ loop
    def run_step(self, data_iter) -> None:
        t0 = time.perf_counter()
        batch = next(data_iter)
        data_time = time.perf_counter() - t0
        self.last_batch_files = [b["file_name"] for b in batch]
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
            losses = self.train_model(batch)
        total = sum(losses.values())
        loss_values = comm.reduce_mean({k: float(v.detach()) for k, v in losses.items()})
        # detectron2's training statistics (fast_rcnn/cls_accuracy, rpn/num_pos_anchors, ...), this process's
        stats = {k: float(v) for k, v in (getattr(self.model, "training_stats", None) or {}).items()}
        total_value = sum(loss_values.values())
        if not math.isfinite(total_value):
            raise FloatingPointError(
                f"loss became {total_value} at iteration {self.iter} (losses: {loss_values}); lower "
                "SOLVER.BASE_LR, enable SOLVER.CLIP_GRADIENTS, or check MODEL.RESNETS.NORM / MODEL.PIXEL_STD"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        clip = self.cfg.SOLVER.CLIP_GRADIENTS
        if clip.ENABLED:  # detectron2's meaning of CLIP_TYPE (meddet.training.solver.clip_gradients)
            self.scaler.unscale_(self.optimizer)
            clip_gradients(clip, self.optimizer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        step_time = time.perf_counter() - t0
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.storage.put_scalars(total_loss=total_value, **loss_values, **stats, time=step_time, data_time=data_time)
        self.storage.put_scalar("lr", lr, smooth=False)
        remaining = self.max_iter - self.iter - 1
        self.storage.put_scalar("eta_seconds", remaining * (self.storage.median("time") or 0.0), smooth=False)

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
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if comm.is_main_process():
            save_config(self.cfg, self.output_dir / "config.yaml")
        if self._finished:
            logger.info("Nothing to do: the run already finished at iteration %d (%s)", self.start_iter - 1, DONE_FILE)
            return
        for h in self.hooks:
            h.before_train()
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
        for h in self.hooks:
            h.after_train()
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
        data_iter = iter(self.train_loader)  # draws a seed from the torch RNG, in a fresh run as on resume
        if self._resume_rng is not None:
            torch.set_rng_state(self._resume_rng)
        bar = tqdm(
            total=self.max_iter,
            initial=self.start_iter,
            desc="train",
            dynamic_ncols=True,
            mininterval=2,
            disable=not comm.is_main_process(),
        )
        try:
            for self.iter in range(self.start_iter, self.max_iter):  # noqa: B020 (detectron2 style)
                self.storage.iter = self.iter
                self.run_step(data_iter)
                for h in self.hooks:
                    h.after_step()
                if self.stop_requested:
                    break
                bar.update(1)
                self._check_loading()
                bar.set_postfix(
                    loss=f"{self.storage.median('total_loss'):.3f}",
                    lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                    refresh=False,
                )
        finally:
            bar.close()


def train(cfg, resume: bool = False) -> Path:
    """Train per `cfg`; returns the output folder. Raises MeddetError on bad config/data."""
    trainer = Trainer(cfg, resume=resume)
    trainer.train()
    return trainer.output_dir


__all__ = ["Trainer", "HookBase", "train", "seed_all", "last_checkpoint_path", "MeddetError"]
