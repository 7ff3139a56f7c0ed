"""The tiny-SAM recipe's training loop on the run engine: step, periodic evaluation, checkpoints."""
from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from robustprior.io.atomic import write_text_atomically
from ..config import validate_config
from ..distributed import resolve_device
from ..errors import ConfigError
from ..provenance import git_commit
from ..rng import seed_everything
from ..run_folder import Run
from ..schedules import LearningRateSchedule, ScheduleSpec
from .batches import cached_scenes, training_batches
from .config import SCHEMA
from .evaluation import evaluate, held_out_scenes
from .export import export_model
from .model import parameter_groups, trainable_model
from .objective import training_step_loss

RUN_KIND = "tiny_sam"
LOSS_LOG, EVALUATION_LOG = "losses.csv", "evaluations.csv"
LOSS_COLUMNS = ("iteration", "lr", "loss", "focal", "dice", "iou_mse", "seconds")
EVALUATION_COLUMNS = ("iteration", "objects", "single_point_iou", "single_point_oracle_iou", "token0_iou", "box_iou")
SCENE_CACHE_PATTERN = "scenes_seed*_n*.npz"  # kept by --overwrite: the same scenes for the same seed and count
FIT_PROBE = (10, 40)  # --fit-minutes times the steps after the first 10 and fixes the length at step 40


def fitted_iterations(step_seconds: list[float], minutes: float, skip: int = FIT_PROBE[0]) -> int:
    """Schedule length that fits ``minutes`` of training after the steps timed in ``step_seconds``:
    those steps plus what the remaining time allows at the median step time (the first ``skip``
    steps, with their one-off start-up costs, left out of the median), plus 3 % for evaluations
    and checkpoints."""
    per_step = float(np.median(step_seconds[skip:])) * 1.03
    return len(step_seconds) + max(1, int((minutes * 60 - sum(step_seconds)) / per_step))


def schedule_spec(train_config: Mapping[str, Any]) -> ScheduleSpec:
    """Linear warmup (``train.warmup_iter``), then cosine down to ``lr * min_lr_ratio``
    (:mod:`robustprior.training.schedules`)."""
    return ScheduleSpec("cosine", warmup_iterations=train_config["warmup_iter"],
                        min_lr_ratio=train_config["min_lr_ratio"])


def train(config: Mapping[str, Any] | None, output: str | Path, resume: bool = False, iterations: int | None = None,
          stop_after: int | None = None, export: bool = True, threads: int | None = None,
          device: str | None = None, workers: int = 1, fit_minutes: float | None = None,
          config_path: str | None = None, overwrite: bool = False, allow_config_change: bool = False) -> dict:
    """Run (or resume) the recipe in the run folder ``output``; returns ``{"iteration", "last_loss",
    "metrics", ...}``.

    ``config``: the recipe config (validated against :data:`~.config.SCHEMA`); with ``resume`` it
    may be None (the run's own config), and one that differs from the run's is refused unless
    ``allow_config_change`` (:class:`~robustprior.training.run_folder.Run`). ``overwrite`` starts a
    finished or interrupted run again (its scene cache is kept). ``iterations`` overrides the
    schedule length, ``train.total_iter`` (resuming with a longer one restarts the cosine from where
    the longer schedule stands); ``threads`` overrides ``config["threads"]`` (the process's torch
    thread count is restored on return); ``device`` overrides ``config["device"]``: these three are
    command-line overrides, allowed on resume and recorded. ``stop_after`` ends the run early at that
    iteration with a checkpoint (as an interruption would); ``export`` writes the weights and model card named in
    ``config["export"]`` after the final evaluation. ``workers`` processes generate the scenes and make
    the training batches; ``fit_minutes`` (a fresh run only) sets the schedule length at step 40 from
    the timed steps 11-40 (:func:`fitted_iterations`). Every call appends ``{start_iteration,
    schedule_iterations, threads, device}`` (and ``config_path``, the YAML file a fresh run was read
    from) to ``config["history"]`` for the model card; a run that starts from iteration 0 starts a
    new history."""
    if fit_minutes is not None and resume:
        raise ConfigError("--fit-minutes sets the length of a fresh run; resume with --iterations instead")
    if config is not None:
        config = validate_config(config, SCHEMA)
    if device is not None or config is not None:
        resolve_device(device or config["device"])  # a missing GPU is an error before the folder is touched
    overrides = {key: value for key, value in (("train.total_iter", iterations), ("threads", threads),
                                               ("device", device)) if value is not None}
    with Run.open(output, kind=RUN_KIND, schema=SCHEMA, config=config, resume=resume, overwrite=overwrite,
                  allow_config_change=allow_config_change, overrides=overrides, keep=(SCENE_CACHE_PATTERN,),
                  logs={LOSS_LOG: LOSS_COLUMNS, EVALUATION_LOG: EVALUATION_COLUMNS}) as run:
        config = copy.deepcopy(run.config)
        run_device = resolve_device(config["device"])
        # one entry per invocation, so the model card can print the exact commands that made the weights
        history_entry = {"start_iteration": run.start_iteration,
                         "schedule_iterations": config["train"]["total_iter"], "threads": config["threads"],
                         "device": run_device.type}
        if not run.resumed:
            config["history"] = []  # the history of this run's weights starts here
            if config_path is not None:
                history_entry["config"] = str(config_path)
        config["history"].append(history_entry)
        run.save_config(config)
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(config["threads"])
        try:
            return _train(run, run_device, history_entry, stop_after, export, workers, fit_minutes)
        finally:
            torch.set_num_threads(previous_threads)


def _train(run: Run, run_device: torch.device, history_entry: dict, stop_after: int | None, export: bool,
           workers: int, fit_minutes: float | None) -> dict:
    config = run.config
    data, train_config = config["data"], config["train"]
    total = train_config["total_iter"]
    seed_everything(config["manual_seed"])
    train_images, train_instances = cached_scenes(run.folder, data["train_seed"], data["train_scenes"], workers)
    test_images, test_instances, test_kinds = held_out_scenes(data["test_seed"], data["test_scenes"], workers)
    quick = slice(0, data["quick_eval_scenes"])

    model = trainable_model(config["model_type"], config["aligned_attention_init"], config["model_overrides"])
    model.to(run_device)
    optimizer = torch.optim.AdamW(parameter_groups(model, train_config["weight_decay"]),
                                  lr=train_config["lr"], betas=tuple(train_config["betas"]))
    schedule = LearningRateSchedule(optimizer, schedule_spec(train_config), total)
    iteration, elapsed = 0, 0.0
    if run.resumed:
        state = run.checkpoint.state
        model.load_state_dict(run.checkpoint.weights)
        optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
        schedule.load_state_dict(state["schedule"], total_iterations=total)
        run.restore_rng(reseed=config["manual_seed"] + run.start_iteration)
        iteration, elapsed = run.start_iteration, float(state["elapsed_seconds"])

    def checkpoint() -> None:
        run.save_checkpoint(iteration, model.state_dict(), {
            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "elapsed_seconds": elapsed})

    logging = config["logging"]
    end = total if stop_after is None else min(total, stop_after)
    pending: list[dict] = []
    last_checkpoint = time.monotonic()
    last_loss = float("nan")
    probe: list[float] = []  # step seconds for --fit-minutes
    progress = tqdm(total=total, initial=iteration, desc="train", mininterval=10, dynamic_ncols=False)
    batches = training_batches(train_images, train_instances, config, iteration, workers)
    model.train()
    while iteration < end:
        started = time.monotonic()
        images, groups = next(batches)
        loss, logged = training_step_loss(model, images, groups, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.sam_parameters(), train_config["gradient_clip"])
        learning_rate = schedule.lr
        optimizer.step()
        schedule.step()
        iteration += 1
        if run_device.type == "cuda":
            torch.cuda.synchronize()  # honest step times
        seconds = time.monotonic() - started
        elapsed += seconds
        if fit_minutes is not None:
            probe.append(seconds)
            if iteration == FIT_PROBE[1]:
                total = max(fitted_iterations(probe, fit_minutes), train_config["warmup_iter"] + 1)
                train_config["total_iter"] = history_entry["schedule_iterations"] = total
                schedule.set_total(total)
                end = total if stop_after is None else min(total, stop_after)
                progress.total = total
                run.save_config(config)
                progress.write(f"--fit-minutes {fit_minutes}: {total} iterations")
        last_loss = logged["loss"]
        pending.append({"iteration": iteration, "lr": f"{learning_rate:.3e}", "seconds": f"{seconds:.3f}",
                        **{name: f"{value:.6f}" for name, value in logged.items()}})
        progress.update(1)
        progress.set_postfix({name: f"{value:.3f}" for name, value in logged.items()} | {"s/it": f"{seconds:.2f}"},
                             refresh=False)
        due_checkpoint = time.monotonic() - last_checkpoint > 60 * logging["checkpoint_minutes"] or iteration == end
        if iteration % logging["log_every"] == 0 or due_checkpoint:
            run.log(LOSS_LOG).append(pending)
            pending = []
        if iteration % logging["quick_eval_every"] == 0 and iteration < total:
            scores = evaluate(model, test_images[quick], test_instances[quick])
            model.train()
            run.log(EVALUATION_LOG).append([{"iteration": iteration, **scores}])
            progress.write(f"[{iteration}] quick eval: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        if due_checkpoint:
            checkpoint()
            last_checkpoint = time.monotonic()
    progress.close()
    result = {"iteration": iteration, "last_loss": last_loss, "elapsed_seconds": elapsed}
    if iteration < total:
        return result

    metrics = evaluate(model, test_images, test_instances, test_kinds)
    run.log(EVALUATION_LOG).append([{"iteration": iteration, **{name: metrics[name] for name in EVALUATION_COLUMNS[1:]}}])
    losses = run.log(LOSS_LOG).rows()
    step_time = float(np.median([float(row["seconds"]) for row in losses])) if losses else float("nan")
    summary = {
        "metrics": metrics, "iterations": iteration, "train_seconds": elapsed, "median_step_seconds": step_time,
        "train_scenes": data["train_scenes"], "test_scenes": data["test_scenes"], "git_commit": git_commit(),
    }
    write_text_atomically(run.folder / "metrics.json", json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if export:
        export_model(model, config, summary)
    return {**result, "metrics": metrics}
