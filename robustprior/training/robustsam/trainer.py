"""The RobustSAM training loop on the run engine: step, validation, checkpoints, the final weights."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from robustprior.io.atomic import write_text_atomically
from robustprior.io.checkpoint import save_checkpoint
from robustprior.evaluation.metrics import mask_iou
from ..config import validate_config
from ..distributed import DistributedContext, resolve_device, setup_distributed
from ..errors import CheckpointError, ConfigError, RunFolderError, RunSetupError
from ..losses import TERM_NAMES, LossWeights
from ..rng import seed_everything
from ..run_folder import RUN_MARKER, Run, prepare_run_folder, read_run_config
from ..schedules import LearningRateSchedule
from .batches import TrainingData, TrainingState, feature_cache_dir
from .config import FEATURE_CACHE_FOLDER, RUN_KIND, SCHEMA, schedule_spec
from .curve import CURVE_COLUMNS, CURVE_LOG, CURVE_PLOT, LearningCurve, plot_curve
from .model import load_base_model
from .objective import RobustTrainingStep

TRAIN_LOG, VAL_LOG = "log.csv", "val_log.csv"
FIT_PROBE = (10, 60)  # train.fit_minutes: median step time of steps 11-60 of this invocation fixes the length
FIT_MARGIN = 0.03  # share of the step time kept for checkpoints and logs
VAL_COLUMNS = ("iteration", "epoch", "val_iou_robust", "val_iou_sam")
OPTIMIZER_CLASSES = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _device_name(config: Mapping[str, Any] | None, output: Path) -> str:
    """The device of the given config, else of the run being resumed (its saved config)."""
    if config is not None:
        return config["device"]
    try:
        return read_run_config(output, SCHEMA)["device"]
    except RunSetupError:
        return "cpu"  # no saved config: opening the run reports what is wrong


def fit_iterations(budget_seconds: float, elapsed_seconds: float, done: int, step_seconds: float,
                   curve_every: int = 0, curve_seconds: float = 0.0, margin: float = FIT_MARGIN) -> int:
    """The length of a run that has trained ``done`` iterations in ``elapsed_seconds`` and must end
    within ``budget_seconds``: the largest ``n >= done`` whose remaining steps (``step_seconds`` each,
    plus ``margin`` of it) and learning-curve points (one every ``curve_every`` iterations and one at
    ``n``, ``curve_seconds`` each) fit the budget; ``done`` when none does."""
    step = step_seconds * (1 + margin)

    def seconds(length: int) -> float:
        points = 0
        if curve_every and length > done:
            points = length // curve_every - done // curve_every + (length % curve_every != 0)
        return elapsed_seconds + (length - done) * step + points * curve_seconds

    per_iteration = step + (curve_seconds / curve_every if curve_every else 0.0)
    length = done + max(0, int((budget_seconds - elapsed_seconds) / per_iteration))
    while length > done and seconds(length) > budget_seconds:
        length -= 1
    return length


class RobustSAMTrainer:
    """Train the robust parts of a RobustSAM per a config (:data:`~.config.SCHEMA`) in the run folder
    ``output_dir`` (:class:`~robustprior.training.Run`, kind ``robustsam``); every rank of a
    ``torchrun`` job builds one.

    ``config``: the training config (validated here); with ``resume`` it may be None (the run's own),
    and one that differs from the run's is refused unless ``allow_config_change``. ``iterations``
    overrides ``train.total_iter`` (allowed on resume, recorded). ``overwrite`` starts a run in
    ``output_dir`` again (its feature cache is kept). The run folder stays locked until
    :meth:`train` reaches the last iteration, or :meth:`close`.

    ``train.fit_minutes``: a fresh run times its steps (:data:`FIT_PROBE`) and then fixes
    ``train.total_iter`` (:func:`fit_iterations`, the schedule's length too) so that training ends
    within that many minutes, learning-curve points included; the number is written into the run's
    config, and a resumed run keeps it (an ``iterations`` override on resume replaces it)."""

    def __init__(self, config: Mapping[str, Any] | None, output_dir: str | Path, resume: bool = False,
                 overwrite: bool = False, *, allow_config_change: bool = False, iterations: int | None = None) -> None:
        given = None if config is None else validate_config(config, SCHEMA)
        self.output_dir, self.closed = Path(output_dir), False
        self._explicit_iterations = iterations is not None
        if given is not None and given["train"]["fit_minutes"] is not None and iterations is not None and not resume:
            raise ConfigError("give train.fit_minutes or an iteration count, not both")
        if given is not None and resume:
            given = self._with_fitted_iterations(given)
        self.context = setup_distributed(_device_name(given, self.output_dir))  # a missing GPU: an error here
        self.device = self.context.device
        self.run = Run.open(self.output_dir, kind=RUN_KIND, schema=SCHEMA, config=given, resume=resume,
                            overwrite=overwrite, allow_config_change=allow_config_change,
                            overrides={} if iterations is None else {"train.total_iter": iterations},
                            keep=(FEATURE_CACHE_FOLDER,), logs={TRAIN_LOG: None, VAL_LOG: VAL_COLUMNS, CURVE_LOG: CURVE_COLUMNS},
                            context=self.context)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _with_fitted_iterations(self, given: dict) -> dict:
        """``given`` with the run's fitted ``train.total_iter`` when both ask for the same fit_minutes
        (resuming with the YAML file a fitted run started from is no config change)."""
        try:
            saved = read_run_config(self.output_dir, SCHEMA)
        except RunSetupError:
            return given
        minutes = given["train"]["fit_minutes"]
        if minutes is None or saved["train"]["fit_minutes"] != minutes:
            return given
        adopted = copy.deepcopy(given)
        adopted["train"]["total_iter"] = saved["train"]["total_iter"]
        return adopted

    def _build(self) -> None:
        self.config = copy.deepcopy(self.run.config)
        train_config = self.config["train"]
        seed_everything(self.config["manual_seed"])
        self.model = load_base_model(self.config["model"]).to(self.device)
        self.model.train()
        self.data = TrainingData(self.config, self.model, feature_cache_dir(self.config, self.output_dir), self.context)
        self.weights = LossWeights(**train_config["loss_weights"])
        self.step_module = RobustTrainingStep(self.model, self.weights, train_config["consistency"])
        # the image stage leaves the decoder-side parameters without gradients
        self.wrapped = self.context.wrap(self.step_module,
                                         **({"find_unused_parameters": True} if train_config["image_stage_iterations"] else {}))
        trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        self.optimizer = OPTIMIZER_CLASSES[train_config["optimizer"]](trainable, lr=train_config["lr"],
                                                                      weight_decay=train_config["weight_decay"])
        self.schedule = LearningRateSchedule(self.optimizer, schedule_spec(train_config), train_config["total_iter"])
        self.state = TrainingState()
        # grad_/share_ columns of log.csv (blank until the first measurement), fixed so every row has them
        weighted = [name for name in TERM_NAMES if getattr(self.weights, name)]
        self._last_gradient_norms: dict[str, float | str] = (
            {f"{prefix}_{name}": "" for prefix in ("grad", "share") for name in weighted}
            if train_config["grad_share_every"] else {})
        self._batch_wait = 0.0  # seconds this invocation waited for its batches (metrics.json batch_seconds)
        self.curve = None
        if self.config["curve"]["every"] and self.context.is_main:
            self.curve = LearningCurve(self.model, self.config["curve"])
        if self.run.resumed:
            self._restore()
        if self._explicit_iterations:
            self.state.fitted = True  # an explicit number replaces the fit

    def _restore(self) -> None:
        checkpoint = self.run.checkpoint
        try:
            self.model.robust.load_state_dict(checkpoint.weights)
            self.optimizer.load_state_dict(checkpoint.state["optimizer"])
            self.state = TrainingState(**checkpoint.state["training"])
        except (RuntimeError, KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"the checkpoint in {self.output_dir} does not fit the model and optimizer of this "
                                  f"config ({str(error).splitlines()[0]})") from None
        self.schedule.load_state_dict(checkpoint.state["schedule"], total_iterations=self.config["train"]["total_iter"])
        saved_norms = checkpoint.state.get("gradient_norms", {})
        self._last_gradient_norms.update({name: saved_norms[name] for name in self._last_gradient_norms
                                          if name in saved_norms})
        self.run.restore_rng(reseed=self.config["manual_seed"] + self.run.start_iteration)
        if self.context.is_main:
            print(f"[robustprior] resuming {self.output_dir} at iteration {self.state.iteration}")

    def close(self) -> None:
        """Release the run folder (its lock); training with this object is over."""
        self.run.close()
        self.closed = True

    def __enter__(self) -> RobustSAMTrainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ checkpoints and logs
    def _sync_buffers(self) -> None:
        """Give every rank rank 0's BatchNorm running statistics (each rank updated them with its
        own batches; DDP only re-broadcasts them at the next forward)."""
        if self.context.distributed:
            for buffer in self.model.robust.buffers():
                dist.broadcast(buffer, src=0)

    def _save_checkpoint(self) -> None:
        self._sync_buffers()
        self.run.save_checkpoint(self.state.iteration, self.model.robust.state_dict(), {
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "training": dataclasses.asdict(self.state), "gradient_norms": dict(self._last_gradient_norms)})

    def _log(self, row: dict[str, Any], name: str = TRAIN_LOG) -> None:
        if self.context.is_main:
            self.run.log(name).append([row])

    # ------------------------------------------------------------------ loops
    def fill_cache(self, progress: bool = True) -> dict[str, int]:
        """Encode every training / validation image and all its degradation variants into the cache."""
        return self.data.fill_cache(progress)

    def _autocast(self):
        train = self.config["train"]
        if self.device.type == "cuda" and train["amp"]:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        if self.device.type == "cpu" and train["cpu_amp"]:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    def measure_curve(self) -> dict[str, Any] | None:
        """One learning-curve point at the current iteration (rank 0; ``curve.csv`` and ``curve.png``);
        None when the curve is off or this rank does not measure it."""
        if self.curve is None:
            return None
        row = self.curve.measure(self.state.iteration)
        log = self.run.log(CURVE_LOG)
        log.append([row])
        rows = log.rows()
        plot_curve(rows, self.output_dir / CURVE_PLOT,
                   f"{self.output_dir.name}: {len(self.curve.images)} held-out images, {self.curve.instance_count} "
                   f"instances, {len(self.curve.kinds)} kinds",
                   {stage: "image stage ends"} if (stage := self.config["train"]["image_stage_iterations"]) else None)
        tqdm.write(f"[robustprior] curve at {row['iteration']}: robust - SAM degrade {row['gain_degrade']:+.2f} "
                   f"[{row['gain_degrade_low']:+.2f}, {row['gain_degrade_high']:+.2f}], clear {row['gain_clear']:+.2f}")
        return row

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean single-mask IoU on the validation set's degraded copies (variant 0), robust vs SAM path,
        with the validation prompts (``data.val_prompt``, by default the evaluation's centre point)."""
        val_set = self.data.val_set
        if val_set is None:
            return {}
        self.model.eval()
        scores: dict[str, list[float]] = {"robust": [], "sam": []}
        batch = self.config["train"]["batch_size_per_gpu"]
        for start in range(0, len(val_set), batch):
            indices = list(range(start, min(start + batch, len(val_set))))
            _, degraded, groups, _ = self.data.batch(val_set, indices, variant=0)
            for prompts in groups:
                points = (prompts.point_coords, prompts.point_labels) if prompts.point_coords is not None else None
                sparse, dense = self.model.encode_prompts(points=points, boxes=prompts.boxes)
                for path in scores:
                    logits = self.model.decode(degraded, sparse, dense, prompts.image_index, path=path).mask_logits[:, 0]
                    scores[path].extend(mask_iou(logits > 0, prompts.targets > 0.5,
                                                 ignore=prompts.pixel_weights <= 0).tolist())
        self.model.train()
        return {f"val_iou_{path}": float(np.mean(values)) for path, values in scores.items()}

    def train(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``train.total_iter`` (or stop, with a checkpoint, at iteration ``stop_after``, as an
        interruption would); returns the final metrics (:meth:`_finish`), or ``{"iterations"}`` when
        stopped early. Reaching the last iteration releases the run folder."""
        if self.closed:
            raise RunFolderError(f"this trainer has released {self.output_dir}; continue the run with "
                                 "RobustSAMTrainer(None, output_dir, resume=True) (robustprior train --resume)")
        try:
            return self._train(stop_after)
        except BaseException:
            self.close()
            raise

    def _train(self, stop_after: int | None) -> dict[str, Any]:
        config = self.config["train"]
        total = config["total_iter"]
        fit_minutes = None if self.state.fitted else config["fit_minutes"]
        if fit_minutes is not None:  # the steps that time the fit run whatever the given length
            total = max(total, self.state.iteration + FIT_PROBE[1])
        end = total if stop_after is None else min(total, stop_after)
        trainable = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        progress = tqdm(total=total, initial=self.state.iteration, disable=not self.context.is_main, desc="train",
                        dynamic_ncols=True)
        started, seconds_before = time.time(), self.state.seconds
        step_seconds: list[float] = []  # this invocation's steps (batch included; curve and checkpoints not)
        curve_seconds = 0.0  # the longest learning-curve point so far
        curve_every = self.config["curve"]["every"]
        if curve_every and self.state.iteration == 0 and end > 0:
            measured = time.time()
            self.measure_curve()  # the starting point (robust_init: sam starts at SAM's own scores)
            self.context.barrier()
            curve_seconds = time.time() - measured
        batches = self.data.training_batches(self.state)  # made ahead by data.workers without the cache
        try:
            while self.state.iteration < end:
                step_started = time.time()
                job, (clear, degraded, groups, _) = next(batches)
                self._batch_wait += time.time() - step_started  # batch making, and its encoding
                self.state.epoch, self.state.position = job.epoch, job.position
                image_stage = self.state.iteration < config["image_stage_iterations"]
                with self._autocast():
                    terms = self.wrapped(clear, degraded, groups, image_stage=image_stage)
                self.optimizer.zero_grad(set_to_none=True)
                share_every = config["grad_share_every"]
                gradient_norms = {}
                if share_every and (self.state.iteration + 1) % share_every == 0 and not self.context.distributed:
                    gradient_norms = self._gradient_norms(terms, trainable)
                terms["total"].backward()
                for parameter in trainable:  # as the release does, a NaN gradient is zeroed rather than applied
                    if parameter.grad is not None:
                        torch.nan_to_num_(parameter.grad, nan=0.0, posinf=0.0, neginf=0.0)
                if config["grad_clip"]:
                    torch.nn.utils.clip_grad_norm_(trainable, config["grad_clip"])
                self.optimizer.step()
                self.schedule.step()
                self.state.iteration += 1
                values = {name: float(terms[name].detach()) for name in ("total", *TERM_NAMES) if name in terms}
                values.update({name: float(terms[name].detach()) for name in terms if name.startswith("mfc_")})
                step_seconds.append(time.time() - step_started)  # float() above waited for the device
                self.state.seconds = seconds_before + time.time() - started
                if fit_minutes is not None and len(step_seconds) == FIT_PROBE[1]:
                    total = self._fix_length(fit_minutes, step_seconds, curve_seconds)
                    end = total if stop_after is None else min(total, stop_after)
                    progress.total = total
                    progress.refresh()
                if image_stage:  # the same log columns as a full step's: the terms it does not compute blank
                    values = {name: values.get(name, "") for name in self._full_step_terms()}
                progress.update(1)
                progress.set_postfix({key: f"{value:.3g}" for key, value in values.items() if value != ""})
                if self.state.iteration % config["log_every"] == 0 or self.state.iteration == total:
                    self._log({"iteration": self.state.iteration, "epoch": self.state.epoch,
                               "lr": self.optimizer.param_groups[0]["lr"], **values, **self._last_gradient_norms,
                               "elapsed_s": round(self.state.seconds, 2)})
                if self.data.val_set is not None and (self.state.iteration % config["val_every"] == 0
                                                      or self.state.iteration == total):
                    self._validate_and_keep_best()
                if curve_every and (self.state.iteration % curve_every == 0 or self.state.iteration == total):
                    measured = time.time()
                    self.measure_curve()
                    self.context.barrier()
                    curve_seconds = max(curve_seconds, time.time() - measured)
                if gradient_norms:
                    self._last_gradient_norms.update(gradient_norms)
                if self.state.iteration % config["checkpoint_every"] == 0 or self.state.iteration == end:
                    self.state.seconds = seconds_before + time.time() - started
                    self._save_checkpoint()
        finally:
            batches.close()  # stops the loader's worker processes
        progress.close()
        self.state.seconds = seconds_before + time.time() - started
        if self.state.iteration < total:
            return {"iterations": self.state.iteration}
        metrics = self._finish()
        self.close()
        return metrics

    def _fix_length(self, fit_minutes: float, step_seconds: list[float], curve_seconds: float) -> int:
        """Fix ``train.total_iter`` for ``train.fit_minutes`` from the timed steps (:func:`fit_iterations`)
        in the run's config and the schedule; returns it."""
        config = self.config["train"]
        per_step = float(np.median(step_seconds[FIT_PROBE[0]:]))
        length = fit_iterations(60 * fit_minutes, self.state.seconds, self.state.iteration, per_step,
                                self.config["curve"]["every"] if self.curve is not None else 0, curve_seconds)
        length = min(self.context.all_gather(length))  # DDP ranks (their times differ a little) agree
        config["total_iter"] = length
        self.run.save_config(self.config)  # later checkpoints carry it: a resumed run keeps the length
        self.schedule.set_total(length)
        self.state.fitted = True
        if self.context.is_main:
            tqdm.write(f"[robustprior] train.fit_minutes {fit_minutes:g}: {1000 * per_step:.1f} ms per step "
                       f"(median of steps {FIT_PROBE[0] + 1}-{FIT_PROBE[1]}), {curve_seconds:.1f} s per curve "
                       f"point: {length} iterations")
        return length

    def _full_step_terms(self) -> list[str]:
        """The loss values a full training step logs (``total``, the weighted terms, Eq. 1's parts)."""
        names = ["total", *(name for name in TERM_NAMES if name != "distill" or self.weights.distill)]
        if self.config["train"]["consistency"] == "paper":
            names += ["mfc_mask_feature", "mfc_embedding", "mfc_complementary"]
        return names

    def _gradient_norms(self, terms: dict[str, torch.Tensor], parameters: list[nn.Parameter]) -> dict[str, float]:
        """Gradient norm of each weighted loss term on the trainable parameters (``grad_<term>``), and
        each term's share of their sum (``share_<term>``): which loss drives training."""
        norms = {}
        for name in TERM_NAMES:
            weight = getattr(self.weights, name)
            if name not in terms or not weight:
                continue
            gradients = torch.autograd.grad(weight * terms[name], parameters, retain_graph=True, allow_unused=True)
            squares = [gradient.float().pow(2).sum() for gradient in gradients if gradient is not None]
            norms[name] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
        total = sum(norms.values()) or 1.0
        return {**{f"grad_{name}": round(value, 6) for name, value in norms.items()},
                **{f"share_{name}": round(value / total, 4) for name, value in norms.items()}}

    def _validate_and_keep_best(self) -> None:
        if self.context.is_main:
            metrics = self.validate()
            self._log({"iteration": self.state.iteration, "epoch": self.state.epoch, **metrics}, VAL_LOG)
            if metrics["val_iou_robust"] > self.state.best_iou:
                self.state.best_iou = metrics["val_iou_robust"]
                save_checkpoint(self.model, self.output_dir / "best.safetensors",
                                {"iteration": str(self.state.iteration), "val_iou_robust": f"{self.state.best_iou:.6f}"})
        self.context.barrier()

    def robust_state_hash(self) -> str:
        """SHA-256 of the robust parts' tensors (equal on every rank of a DDP run)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.robust.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def _finish(self) -> dict[str, Any]:
        """``metrics.json`` and ``final.safetensors`` of a finished run; returns the metrics."""
        self._sync_buffers()
        hashes = self.context.all_gather(self.robust_state_hash())
        metrics: dict[str, Any] = {
            "iterations": self.state.iteration, "epochs": self.state.epoch, "seconds": round(self.state.seconds, 2),
            "world_size": self.context.world_size, "rank_weight_hashes": hashes, "ranks_agree": len(set(hashes)) == 1,
            "best_val_iou_robust": self.state.best_iou,
            "batch_seconds": round(self._batch_wait, 2),  # of this invocation: batches made (or waited for), encoded
        }
        cache = self.data.cache
        if cache is not None:
            metrics["feature_cache"] = {"hits": cache.hits, "misses": cache.misses, "dir": str(cache.directory)}
        if self.data.val_set is not None and self.context.is_main:
            metrics.update(self.validate())
        if self.context.is_main:
            save_checkpoint(self.model, self.output_dir / "final.safetensors", {"iterations": str(self.state.iteration)})
            write_text_atomically(self.output_dir / "metrics.json", json.dumps(metrics, indent=2))
            print(f"[robustprior] training done: {self.output_dir / 'final.safetensors'} ({json.dumps(metrics)})")
        self.context.barrier()
        return metrics


def fill_feature_cache(config: Mapping[str, Any], output: str | Path, progress: bool = True
                       ) -> tuple[Path, dict[str, int]]:
    """``robustprior cache``: encode every training / validation image of ``config`` and each of its
    degradation variants into the feature cache; returns the cache's folder and ``{"hits", "misses"}``.

    The config is used as given and saved nowhere (only training writes a run's config). The cache
    goes to ``feature_cache.dir``, else ``OUTPUT/feature_cache``; then ``OUTPUT`` must be new, empty or
    a RobustSAM run folder not in use (a new one holds only its marker and the cache, and training
    starts in it as in an empty folder)."""
    config = validate_config(config, SCHEMA)
    cache_dir = feature_cache_dir(config, output)
    if cache_dir is None:
        raise ConfigError("the feature cache is disabled in this config (feature_cache.enabled: false)")
    device = resolve_device(config["device"])
    lock = None
    if config["feature_cache"]["dir"] is None:
        folder = Path(output)
        lock = prepare_run_folder(folder, RUN_KIND, resume=(folder / RUN_MARKER).is_file(), overwrite=False,
                                  keep=(FEATURE_CACHE_FOLDER,))
    try:
        seed_everything(config["manual_seed"])
        model = load_base_model(config["model"]).to(device)
        model.train()
        data = TrainingData(config, model, cache_dir, DistributedContext(0, 1, device))  # one process
        return data.cache.directory, data.fill_cache(progress)
    finally:
        if lock is not None:
            lock.close()


RobustSamTrainer = RobustSAMTrainer  # the name before 0.2; kept for one release
