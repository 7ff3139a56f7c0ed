"""The run engine: what every trainer of this project shares, so each trainer holds only its step,
its data and its validation.

==================  ====================================================================================
module              what it gives
==================  ====================================================================================
``config``          :class:`Field` / :class:`Section` schemas; :func:`load_config` / :func:`validate_config`
                    fill defaults and raise one :class:`ConfigError` listing every unknown key (with the
                    closest valid one), wrong type and out-of-range value, before any work; keys of
                    another tool's files (:class:`Ignored`) are listed in one :class:`UnusedKeysWarning`;
                    :func:`read_config_file` is the one YAML reader of every config kind
``run_folder``      :class:`Run`: the run-folder policy (marker ``.robustprior-run``; create, resume or
                    overwrite only a run of this kind; never delete anything else), lock, clean-up of
                    interrupted writes, config comparison on resume (``--allow-config-change``,
                    ``config_changes.yaml``), CSV logs cut back to the checkpoint, checkpoints
``checkpoints``     checkpoints as safetensors weights + a ``weights_only`` state file + an atomic
                    pointer; a state file that would run code is refused (:class:`CheckpointError`)
``distributed``     :func:`setup_distributed` -> :class:`DistributedContext` (env-driven ``torchrun``; NCCL
                    on GPUs, gloo on the CPU); :func:`resolve_device` refuses unknown names and missing GPUs
``rng``             :func:`seed_everything`, :func:`capture_rng_state` / :func:`restore_rng_state` (Python,
                    numpy, torch, CUDA; safe to store)
``schedules``       :class:`LearningRateSchedule` from torch's schedulers (``constant`` / ``cosine`` /
                    ``step``, linear warmup), :data:`SCHEDULE_KINDS` for a schema's ``choices``
``csv_log``         :class:`CsvLog` (first column: iteration)
``errors``          :class:`RunSetupError` and its kinds; :func:`exit_on_setup_error` turns them into
                    ``error: MESSAGE`` (exit status 2) in a command line
``interrupt``       :func:`stop_on_signals`: SIGINT / SIGTERM raise :class:`Interrupted` (exit status 130 /
                    143); :func:`deferred_stop` lets a training loop checkpoint before it stops
``provenance``      :func:`git_commit`
``losses``          focal, dice and RobustSAM's consistency / distillation terms (both trainers' losses)
``tiny_sam``        the SAM-tiny pretraining recipe, a trainer written on this engine
``robustsam``       the RobustSAM trainer (``robustprior train`` / ``robustprior cache``) on this engine
==================  ====================================================================================

A trainer on the engine::

    SCHEMA = Section({"manual_seed": Field(int, 0, at_least=0), "device": Field(str, "auto", check=check_device_name),
                      "train": {"total_iter": Field(int, 1000, at_least=1), "lr": Field(float, 1e-3, above=0),
                                "schedule": Field(str, "cosine", choices=SCHEDULE_KINDS),
                                "log_every": Field(int, 10, at_least=1)}})

    @exit_on_setup_error
    def main():
        args = ...                                            # --config, --output, --resume / --overwrite,
        config = load_config(args.config, SCHEMA)             # --allow-config-change, --iterations
        context = setup_distributed(config["device"])         # no GPU for "cuda": an error, never the CPU
        with Run.open(args.output, kind="my_trainer", schema=SCHEMA, config=config, resume=args.resume,
                      overwrite=args.overwrite, allow_config_change=args.allow_config_change,
                      overrides={"train.total_iter": args.iterations} if args.iterations else {},
                      logs={"log.csv": ("iteration", "loss")}, context=context) as run:
            config = run.config                               # the effective config (saved in the run)
            seed_everything(config["manual_seed"])
            model, optimizer = ..., ...
            schedule = LearningRateSchedule(optimizer, ScheduleSpec(config["train"]["schedule"]),
                                            config["train"]["total_iter"])
            if run.resumed:
                model.load_state_dict(run.checkpoint.weights)
                optimizer.load_state_dict(run.checkpoint.state["optimizer"])
                schedule.load_state_dict(run.checkpoint.state["schedule"])
                run.restore_rng(reseed=config["manual_seed"] + run.start_iteration)
            for iteration in range(run.start_iteration + 1, config["train"]["total_iter"] + 1):
                ...                                           # the trainer's own step
                if context.is_main and iteration % config["train"]["log_every"] == 0:
                    run.log("log.csv").append([{"iteration": iteration, "loss": loss}])
                if iteration % 100 == 0:                      # every rank calls it (RNG states are gathered)
                    run.save_checkpoint(iteration, model.state_dict(),
                                        {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()})

Commands that only read a run (export, caches) use :func:`read_run_config` and
:func:`load_training_checkpoint`; only training writes a run's config.
"""
from __future__ import annotations

from .checkpoints import TrainingCheckpoint, load_state_file, load_training_checkpoint, save_training_checkpoint
from .config import (REQUIRED, Field, Ignored, Section, UnusedKeysWarning, apply_overrides, config_differences,
                     load_config, merge_config, migrate_config, read_config_file, validate_config,
                     validate_saved_config)
from .csv_log import CsvLog
from .distributed import DistributedContext, check_device_name, resolve_device, setup_distributed
from .errors import (CheckpointError, ConfigChangeError, ConfigError, DeviceError, RunExistsError, RunFolderError,
                     RunSetupError, exit_on_setup_error)
from .provenance import git_commit
from .rng import capture_rng_state, restore_rng_state, seed_everything
from .run_folder import RUN_MARKER, Run, read_run_config
from .schedules import SCHEDULE_KINDS, LearningRateSchedule, ScheduleSpec

__all__ = [
    "REQUIRED", "RUN_MARKER", "SCHEDULE_KINDS", "CheckpointError", "ConfigChangeError", "ConfigError", "CsvLog",
    "DeviceError", "DistributedContext", "Field", "Ignored", "LearningRateSchedule", "Run", "RunExistsError", "RunFolderError",
    "RunSetupError", "ScheduleSpec", "Section", "TrainingCheckpoint", "UnusedKeysWarning", "apply_overrides", "capture_rng_state",
    "check_device_name", "config_differences", "exit_on_setup_error", "git_commit", "load_config",
    "load_state_file", "load_training_checkpoint", "merge_config", "migrate_config", "read_config_file", "read_run_config", "resolve_device",
    "restore_rng_state", "save_training_checkpoint", "seed_everything", "setup_distributed", "validate_config",
    "validate_saved_config",
]
