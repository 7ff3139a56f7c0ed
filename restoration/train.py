"""The training loop of restoration networks with SAM / RobustSAM structure priors, on the run engine,
and its command line.

Driven by an options dict (YAML, BasicSR's vocabulary: ``name``, ``manual_seed``, ``network_g``,
``datasets.train`` / ``datasets.val``, ``train`` (``total_iter``, ``optim_g``, ``scheduler``,
``pixel_opt``: :mod:`restoration.losses`), ``val``, ``logger`` and our ``prior`` section) checked by
:func:`restoration.config.check_options` before any work (an unknown key, a wrong type or an
out-of-range value is one error naming the key and the closest valid one; keys of BasicSR files that
are not used are listed in one warning). Every network is called as ``network(lq, prior)``
(:mod:`restoration.archs`), the prior batch made by the dataset
(:class:`restoration.datasets.PriorPairedDataset`); the priors of the degraded inputs are computed
once, through the prior's disk cache, before training (:mod:`restoration.run_priors`).

The run folder is a :class:`robustprior.training.Run` of kind ``restoration``: created, resumed or
overwritten only when it carries the run marker (``--overwrite`` keeps ``prior_cache/``); a resume
with options that differ from the run's is refused unless ``--allow-config-change`` (``--iterations``
is an allowed, recorded override); checkpoints are safetensors weights plus a ``weights_only`` state
file (optimizer, schedule, every rank's RNG states: a resumed run continues exactly); the CSV logs
are cut back to the checkpoint on resume. The data layout is checked before the folder is touched.
SIGINT / SIGTERM during training (:mod:`robustprior.training.interrupt`) finish the current step, write
a checkpoint and stop with one line and exit status 130 / 143; ``--resume`` continues from there.
Outputs (:mod:`restoration.trained_run` reads them back): ``config.yaml``, ``checkpoints/``,
``train_log.csv``, ``val_log.csv``, ``results.json`` and ``images/`` (restored test images,
:mod:`restoration.evaluation`). Command line::

    python -m restoration.train -opt OPTIONS.yml [--output DIR] [--resume [--allow-config-change] | --overwrite]
        [--force_yml train:total_iter=20 datasets:train:batch_size_per_gpu=2 ...]
    torchrun --nproc_per_node 4 -m restoration.train -opt OPTIONS.yml      # DDP (NCCL on GPU, gloo on CPU)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from restoration.archs import build_network, prior_to
from restoration.config import (SCHEMA, check_options, dataset_options, load_options_file, parse_forced_options,
                                validate_options)
from restoration.datasets import PriorPairedDataset
from restoration.evaluation import evaluate_test_set
from restoration.inference import restore_image
from restoration.losses import pixel_loss
from restoration.run_priors import grey_level_scale, network_with_prior_channels, prepare_run_priors
from restoration.trained_run import PRIOR_CACHE_NAME, RESULTS_NAME, RUN_KIND, TRAIN_LOG, VAL_LOG, results_record
from robustprior.io.allocator import keep_freed_memory
from robustprior.io.atomic import write_text_atomically
from robustprior.training.config import UnusedKeysWarning, merge_config
from robustprior.training.distributed import setup_distributed
from robustprior.training.errors import CheckpointError, ConfigError, exit_on_setup_error
from robustprior.training.interrupt import (Interrupted, deferred_stop, interruption, stop_on_signals, stop_requested,
                                            stop_with_parent)
from robustprior.training.rng import seed_everything
from robustprior.training.run_folder import RUN_MARKER, Run
from robustprior.training.schedules import LearningRateSchedule, ScheduleSpec

__all__ = ["RestorationTrainer", "epoch_batches", "main", "schedule_spec"]

TRAIN_COLUMNS = ("iteration", "epoch", "lr", "loss", "train_seconds")
VAL_COLUMNS = ("iteration", "psnr", "ssim")


def epoch_batches(num_items: int, batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    """The global batches of one epoch: ``max(1, num_items // batch_size)`` batches drawn from seeded
    permutations of the items (concatenated while the data set is smaller than one batch)."""
    num_batches = max(1, num_items // batch_size)
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5A3D]))
    order: list[int] = []
    while len(order) < num_batches * batch_size:
        order.extend(rng.permutation(num_items).tolist())
    return [order[batch * batch_size : (batch + 1) * batch_size] for batch in range(num_batches)]


def schedule_spec(train_options: Mapping[str, Any]) -> ScheduleSpec:
    """``CosineAnnealingLR`` from ``lr`` to ``eta_min`` over the run, or a constant rate
    (:mod:`robustprior.training.schedules`)."""
    scheduler = train_options["scheduler"]
    if scheduler["type"] == "constant":
        return ScheduleSpec("constant")
    ratio = min(1.0, scheduler["eta_min"] / train_options["optim_g"]["lr"])
    return ScheduleSpec("cosine", min_lr_ratio=ratio)


# ----------------------------------------------------------------------------- trainer
class RestorationTrainer:
    """Trains ``network_g`` on ``datasets.train`` and evaluates it on ``datasets.test`` (module docstring).

    ``options``: validated here (:class:`ConfigError` before any work). ``resume`` / ``overwrite``:
    the run-folder policy of :class:`robustprior.training.Run` (``resume`` on a missing or empty folder
    starts the run, as a recipe resumed before this row began needs); a resume whose options differ from the
    run's is refused unless ``allow_config_change``; ``iterations`` overrides ``train.total_iter`` (an
    allowed override, recorded). ``device``: None/"auto", "cpu", "cuda", "cuda:N" (a missing GPU is an
    error; under ``torchrun`` each rank takes its local GPU). ``progress``: progress bars (rank 0 only).
    The run folder stays locked until :meth:`run` ends or :meth:`close`.
    """

    def __init__(
        self,
        options: Mapping[str, Any],
        run_dir: str | Path,
        *,
        resume: bool = False,
        overwrite: bool = False,
        device: str | torch.device | None = None,
        progress: bool = True,
        allow_config_change: bool = False,
        iterations: int | None = None,
    ) -> None:
        given = check_options(options)
        self.context = setup_distributed(device)
        self.device = self.context.device
        self.run_dir = Path(run_dir)
        self.progress = progress and self.context.is_main
        started = (self.run_dir / RUN_MARKER).exists() or (self.run_dir.is_dir() and any(self.run_dir.iterdir()))
        if resume and not started:
            if self.context.is_main:  # e.g. a recipe resumed before this row started
                print(f"[restoration] nothing to resume in {self.run_dir}: starting the run", file=sys.stderr)
            resume = False
        self.run_folder = Run.open(self.run_dir, kind=RUN_KIND, schema=SCHEMA, config=given, resume=resume,
                                   overwrite=overwrite, allow_config_change=allow_config_change,
                                   overrides={} if iterations is None else {"train.total_iter": iterations},
                                   keep=(PRIOR_CACHE_NAME,), logs={TRAIN_LOG: TRAIN_COLUMNS, VAL_LOG: VAL_COLUMNS},
                                   context=self.context)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        self.options = copy.deepcopy(self.run_folder.config)
        seed = self.options["manual_seed"]
        seed_everything(seed)  # the same on every rank: a randomly initialised prior model, then the network
        self.priors = prepare_run_priors(self.options, self.run_dir, self.device, progress=self.progress)
        self.network_options = network_with_prior_channels(self.options["network_g"], self.priors)
        seed_everything(seed)
        self.network = build_network(self.network_options).to(self.device)
        self.iteration, self.train_seconds = 0, 0.0
        state = self.run_folder.checkpoint.state if self.run_folder.resumed else {}
        self.grey_scale: int | None = state["grey_scale"] if self.run_folder.resumed else grey_level_scale(
            self.options, self.priors, progress=self.progress)
        if self.priors is not None:
            self.priors.grey_scale = self.grey_scale
        seed_everything(seed + self.context.rank)  # per-rank streams for training (mask dropout)
        self.train_set, self.test_set = self._build_datasets()
        train_options = self.options["train"]
        self.loss_function = pixel_loss(train_options["pixel_opt"])
        settings = train_options["optim_g"]
        optimizer_class = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam}[settings["type"]]
        self.optimizer = optimizer_class([p for p in self.network.parameters() if p.requires_grad], lr=settings["lr"],
                                         weight_decay=settings["weight_decay"], betas=tuple(settings["betas"]))
        self.schedule = LearningRateSchedule(self.optimizer, schedule_spec(train_options), train_options["total_iter"])
        if self.run_folder.resumed:
            self._restore(state)
        self.model: nn.Module = self.context.wrap(self.network)

    def _build_datasets(self) -> tuple[PriorPairedDataset | None, PriorPairedDataset]:
        train_set = None
        if self.options["datasets"]["train"]:
            train_set = PriorPairedDataset(dataset_options(self.options, "train"), self.priors)
        return train_set, PriorPairedDataset(dataset_options(self.options, "val"), self.priors)

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        """What a checkpoint holds besides the weights (all loadable with ``weights_only=True``)."""
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "train_seconds": self.train_seconds, "grey_scale": self.grey_scale,
                "prior_fingerprint": self.priors.description.get("fingerprint") if self.priors is not None else None,
                "prior": self.priors.description if self.priors is not None else {"kind": "none"},
                "network": self.network_options, "world_size": self.context.world_size}

    def save_checkpoint(self) -> None:
        """A checkpoint of the current iteration (every rank calls it: the RNG states are gathered)."""
        self.run_folder.save_checkpoint(self.iteration, self.network.state_dict(), self._state())

    def _restore(self, state: Mapping[str, Any]) -> None:
        """Continue from the run's checkpoint; refuses one made with another prior model."""
        current = self.priors.description.get("fingerprint") if self.priors is not None else None
        if state.get("prior_fingerprint") != current:
            raise CheckpointError(
                f"{self.run_dir} was trained with prior model fingerprint {state.get('prior_fingerprint')}, now it is "
                f"{current} (did the prior checkpoint change?); pass --overwrite to start again")
        try:
            self.network.load_state_dict(self.run_folder.checkpoint.weights)
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError, ValueError) as error:
            raise CheckpointError(f"the checkpoint in {self.run_dir} does not fit the network and optimizer of these "
                                  f"options ({str(error).splitlines()[0]})") from None
        self.schedule.load_state_dict(state["schedule"], total_iterations=self.options["train"]["total_iter"])
        self.iteration = self.run_folder.start_iteration
        self.train_seconds = float(state["train_seconds"])
        self.run_folder.restore_rng(reseed=self.options["manual_seed"] + self.context.rank + self.iteration)
        if self.context.is_main:
            print(f"[restoration] resuming {self.run_dir} at iteration {self.iteration}", file=sys.stderr)

    def close(self) -> None:
        """Release the run folder's lock."""
        self.run_folder.close()

    # ------------------------------------------------------------------ training
    def _batches_for_rank(self, epoch: int, first: int, count: int) -> list[list[int]]:
        """This rank's share of global batches ``first .. first + count - 1`` of ``epoch``."""
        per_rank = self.options["datasets"]["train"]["batch_size_per_gpu"]
        total_batch = per_rank * self.context.world_size
        batches = epoch_batches(len(self.train_set), total_batch, epoch, self.options["manual_seed"])
        start = self.context.rank * per_rank
        return [batch[start : start + per_rank] for batch in batches[first : first + count]]

    def _step(self, batch: Mapping[str, Any]) -> float:
        """One optimisation step on a collated batch; returns the loss."""
        lq, gt = batch["lq"].to(self.device, non_blocking=True), batch["gt"].to(self.device, non_blocking=True)
        restored = self.model(lq, prior_to(batch.get("prior"), self.device))
        loss = self.loss_function(restored, gt)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_clip = self.options["train"]["grad_clip"]
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), grad_clip)
        self.optimizer.step()
        self.schedule.step()
        return float(loss.detach())

    def fit(self, until: int | None = None) -> None:
        """Train up to ``train.total_iter`` iterations (or stop early at iteration ``until``, with a checkpoint)."""
        if self.train_set is None:
            raise ConfigError("options have no datasets.train")
        train_options = self.options["train"]
        total = train_options["total_iter"]
        stop = total if until is None else min(int(until), total)
        total_batch = self.options["datasets"]["train"]["batch_size_per_gpu"] * self.context.world_size
        batches_per_epoch = max(1, len(self.train_set) // total_batch)
        logger = self.options["logger"]
        log_freq, save_freq = logger["print_freq"], logger["save_checkpoint_freq"] or stop
        val_freq = self.options["val"]["val_freq"]
        losses: list[float] = []
        self.network.train()
        bar = tqdm(total=stop, initial=self.iteration, desc=f"train {self.options['name']}", unit="it",
                   disable=not self.progress, dynamic_ncols=True)
        # one process: a stop signal ends the step, a checkpoint is written, then Interrupted (several ranks
        # would have to agree on the step: there the signal interrupts at once, as without the engine)
        with deferred_stop() if self.context.world_size == 1 else contextlib.nullcontext():
            self._fit_loop(stop, batches_per_epoch, log_freq, save_freq, val_freq, losses, bar)
        bar.close()

    def _fit_loop(self, stop: int, batches_per_epoch: int, log_freq: int, save_freq: int, val_freq: int | None,
                  losses: list[float], bar: tqdm) -> None:
        """The steps of :meth:`fit`; after a step, a recorded stop signal writes a checkpoint and stops."""
        while self.iteration < stop:
            epoch, first = divmod(self.iteration, batches_per_epoch)
            self.train_set.set_epoch(epoch)
            loader = DataLoader(
                self.train_set,
                batch_sampler=self._batches_for_rank(epoch, first, min(batches_per_epoch - first, stop - self.iteration)),
                num_workers=self.options["datasets"]["train"]["num_worker_per_gpu"],
                pin_memory=self.device.type == "cuda",
                generator=torch.Generator().manual_seed(self.options["manual_seed"]),  # leaves the global RNG alone
            )
            for batch in loader:
                started = time.perf_counter()
                losses.append(self._step(batch))
                self.iteration += 1
                self.train_seconds += time.perf_counter() - started
                bar.update()
                if self.iteration % log_freq == 0 or self.iteration == stop:
                    mean_loss = self.context.mean(sum(losses) / len(losses))
                    losses = []
                    bar.set_postfix(loss=f"{mean_loss:.4f}")
                    if self.context.is_main:
                        self.run_folder.log(TRAIN_LOG).append([{
                            "iteration": self.iteration, "epoch": epoch, "lr": self.schedule.lr,
                            "loss": mean_loss, "train_seconds": round(self.train_seconds, 3)}])
                if val_freq and self.iteration % val_freq == 0 and self.iteration != stop:
                    self._validate()
                saved = self.iteration % save_freq == 0 or self.iteration == stop
                if saved:
                    self.save_checkpoint()
                if stop_requested() is not None:
                    if not saved:
                        self.save_checkpoint()
                    bar.close()
                    raise interruption()

    def _validate(self) -> None:
        """Periodic evaluation on (the first ``val.max_images`` of) the test set, logged to ``val_log.csv``."""
        metrics = self.evaluate(image_folder=None, max_images=self.options["val"]["max_images"])
        if metrics is not None:
            self.run_folder.log(VAL_LOG).append([{"iteration": self.iteration, "psnr": metrics["psnr"],
                                           "ssim": metrics["ssim"]}])
        self.network.train()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def restore(
        self, image: torch.Tensor, label_map: torch.Tensor | None = None, prior_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Restore one image with the (eval-mode) network: :func:`restore_image` with this run's
        grey-level scale and ``val.tile`` / ``val.overlap``."""
        return restore_image(self.network, image, label_map, prior_features, grey_scale=self.grey_scale,
                             tile=self.options["val"]["tile"], overlap=self.options["val"]["overlap"],
                             device=self.device)

    def evaluate(self, image_folder: str | None = "images", max_images: int | None = None) -> dict[str, Any] | None:
        """PSNR / SSIM of the network on the full test images, on rank 0
        (:func:`restoration.evaluation.evaluate_test_set`: SSIM of kind ``val.ssim``, restored images
        written to ``run_dir / image_folder`` unless None). Returns the metrics on rank 0, None on others."""
        metrics = None
        if self.context.is_main:
            self.network.eval()
            metrics = evaluate_test_set(self.restore, self.test_set, ssim_kind=self.options["val"]["ssim"],
                                        run_dir=self.run_dir, image_folder=image_folder, max_images=max_images,
                                        description=f"test {self.options['name']}", progress=self.progress)
        self.context.barrier()
        return metrics

    def results(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """What ``results.json`` holds (:func:`restoration.trained_run.results_record`)."""
        return results_record(self.options, metrics, iteration=self.iteration, network=self.network_options,
                              prior=self.priors.description if self.priors is not None else None,
                              grey_scale=self.grey_scale, world_size=self.context.world_size,
                              num_train_pairs=len(self.train_set) if self.train_set is not None else 0,
                              num_test_pairs=len(self.test_set), train_seconds=self.train_seconds, device=self.device)

    def run(self, until: int | None = None) -> dict[str, Any] | None:
        """Train (unless already done), evaluate on the test set, write ``results.json``; returns it on
        rank 0. Releases the run folder at the end."""
        try:
            if self.train_set is not None:
                self.fit(until)
            save_images = self.options["val"]["save_img"]
            metrics = self.evaluate(image_folder="images" if save_images else None)
            if metrics is None:
                return None
            results = self.results(metrics)
            write_text_atomically(self.run_dir / RESULTS_NAME, json.dumps(results, indent=2, default=str) + "\n")
            return results
        finally:
            self.close()


# ----------------------------------------------------------------------------- command line
@exit_on_setup_error
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and evaluate a restoration network with SAM/RobustSAM priors.")
    parser.add_argument("-opt", "--opt", required=True, help="YAML options file (BasicSR's vocabulary, restoration/options/)")
    parser.add_argument("--force_yml", nargs="+", default=[], metavar="KEY:SUBKEY=VALUE",
                        help="override option values (BasicSR's form), e.g. train:total_iter=20")
    parser.add_argument("--output", help="run folder (default: runs/<name>)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    group.add_argument("--overwrite", action="store_true", help="replace the run in the output folder")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue with options that differ from the run's (recorded)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    parser.add_argument("--iterations", type=int, help="override train.total_iter (allowed on --resume, recorded)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    keep_freed_memory()  # robustprior.io.allocator: freed tensors stay in the process
    options = load_options_file(args.opt, validate=False)
    with warnings.catch_warnings(record=True) as caught:  # unused keys: one line on stderr, not a traceback-like warning
        warnings.simplefilter("always", UnusedKeysWarning)
        options = validate_options(merge_config(options, parse_forced_options(args.force_yml)), source=str(args.opt))
    for warning in caught:
        if issubclass(warning.category, UnusedKeysWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    run_dir = Path(args.output or Path("runs") / str(options.get("name", SCHEMA.fields["name"].default)))
    with stop_on_signals():
        try:
            stop_with_parent()  # started by a recipe: stop (with a checkpoint) when it dies
            trainer = RestorationTrainer(options, run_dir, resume=args.resume, overwrite=args.overwrite,
                                         device=args.device, progress=not args.no_progress,
                                         allow_config_change=args.allow_config_change, iterations=args.iterations)
            results = trainer.run()
        except Interrupted as stop:
            print(f"[restoration] interrupted ({stop.name}); resume with --resume", file=sys.stderr, flush=True)
            return stop.exit_status
    if results is not None:
        metrics = results["metrics"]
        print(f"{results['name']}: PSNR {metrics['psnr']:.3f} dB, SSIM ({results['ssim_kind']}) {metrics['ssim']:.4f} "
              f"on {metrics['num_images']} images -> {run_dir / RESULTS_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
