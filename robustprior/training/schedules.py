"""Learning-rate schedules built from PyTorch's schedulers, with a length that may change.

=============  ===========================================================================================
kind           learning rate at step ``s`` (``w`` warmup steps, ``T`` total, after the warmup)
=============  ===========================================================================================
``constant``   ``lr`` (``ConstantLR``)
``cosine``     ``lr * (r + (1 - r) * (1 + cos(pi * (s - w) / (T - w))) / 2)``, ``r = min_lr_ratio``
               (``CosineAnnealingLR`` with ``eta_min = r * lr``)
``step``       ``lr * gamma ** ((s - w) // step_size)`` (``StepLR``)
=============  ===========================================================================================

With ``warmup_iterations = w > 0`` the first ``w`` steps rise linearly, ``lr * (s + 1) / w``
(``LinearLR``), joined to the kind by ``SequentialLR``. Any other kind name is refused by the
config schema (:data:`SCHEDULE_KINDS` as a field's ``choices``), before any work.

A :class:`LearningRateSchedule` is a pure function of ``(spec, T, s)``: its state is ``{"total_iterations",
"steps"}``, and loading it (or changing ``T`` with :meth:`~LearningRateSchedule.set_total`, e.g.
to resume with a longer run) rebuilds the torch schedulers and replays the steps, which gives
the learning rates of an uninterrupted run bit for bit, and for a new ``T`` the rates that
schedule has at step ``s`` (a warm restart of the cosine).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import lr_scheduler

from .errors import CheckpointError, ConfigError

SCHEDULE_KINDS = ("constant", "cosine", "step")


@dataclass(frozen=True)
class ScheduleSpec:
    """What a schedule does (module docstring); ``min_lr_ratio`` only for ``cosine``, ``step_size``
    and ``gamma`` only for ``step``."""

    kind: str = "constant"
    warmup_iterations: int = 0
    min_lr_ratio: float = 0.0
    step_size: int = 1000
    gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULE_KINDS)}, got {self.kind!r}")
        if self.warmup_iterations < 0 or self.step_size < 1 or not 0 <= self.min_lr_ratio <= 1 or self.gamma <= 0:
            raise ConfigError(f"schedule {self}: needs warmup_iterations >= 0, step_size >= 1, "
                              "0 <= min_lr_ratio <= 1 and gamma > 0")


class LearningRateSchedule:
    """Drives ``optimizer``'s learning rates; call :meth:`step` after each ``optimizer.step()``."""

    def __init__(self, optimizer: torch.optim.Optimizer, spec: ScheduleSpec, total_iterations: int) -> None:
        self.optimizer, self.spec = optimizer, spec
        self.total_iterations, self.steps = int(total_iterations), 0
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self._scheduler = self._build()

    def _build(self) -> lr_scheduler.LRScheduler:
        spec, optimizer = self.spec, self.optimizer
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        warmup = spec.warmup_iterations
        if spec.kind == "cosine":
            base = max(group["initial_lr"] for group in optimizer.param_groups)
            main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.total_iterations - warmup),
                                                  eta_min=spec.min_lr_ratio * base)
        elif spec.kind == "step":
            main = lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=spec.gamma)
        else:
            main = lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        if warmup == 0:
            return main
        ramp = lr_scheduler.LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0,
                                     total_iters=max(1, warmup - 1))
        return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])

    def step(self) -> None:
        self._scheduler.step()
        self.steps += 1

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group for the next step."""
        return float(self.optimizer.param_groups[0]["lr"])

    def set_total(self, total_iterations: int) -> None:
        """Change the schedule's length; the rates become the new schedule's from the current step on."""
        self.total_iterations = int(total_iterations)
        self._replay(self.steps)

    def _replay(self, steps: int) -> None:
        self._scheduler = self._build()
        with warnings.catch_warnings():  # replaying steps without optimizer steps is what we mean here
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps):
                self._scheduler.step()
        self.steps = steps

    def state_dict(self) -> dict[str, Any]:
        return {"total_iterations": self.total_iterations, "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any], total_iterations: int | None = None) -> None:
        """Continue a saved schedule; ``total_iterations`` (when given) replaces the saved length."""
        try:
            saved_total, steps = int(state["total_iterations"]), int(state["steps"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"not a learning-rate schedule state: {state!r}") from None
        self.total_iterations = saved_total if total_iterations is None else int(total_iterations)
        self._replay(steps)
