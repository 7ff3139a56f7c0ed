"""Device choice and the distributed context of a training process.

Without ``torchrun`` a process is rank 0 of 1. Under ``torchrun`` (``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK`` in the environment) :func:`setup_distributed` joins the process group once: NCCL when
the device is a GPU, gloo on the CPU; each rank takes GPU ``LOCAL_RANK``. The group is destroyed when
the process exits.

Device names: ``auto`` (this rank's GPU when CUDA is available, else the CPU), ``cpu``, ``cuda``
(this rank's GPU) or ``cuda:N``. Anything else, or a GPU that this machine does not have, is an
error before any work: a run never falls back to the CPU silently.
"""
from __future__ import annotations

import atexit
import datetime
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import ConfigError, DeviceError

DEVICE_NAMES = "auto, cpu or cuda (or cuda:N)"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a device name this engine knows (a config ``check``)."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ValueError(f"device must be {DEVICE_NAMES}, got {name!r}")


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """The ``torch.device`` for a device name (module docstring); ``None`` is ``auto``.

    Raises :class:`ConfigError` for an unknown name and :class:`DeviceError` for a GPU that is not there."""
    name = "auto" if name is None else str(name)
    try:
        check_device_name(name)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {name}: PyTorch sees no CUDA device on this machine; use device cpu "
                          "(--device cpu or the config's device)")
    device = torch.device(name)
    if device.index is None:
        device = torch.device("cuda", local_rank)
    if device.index >= torch.cuda.device_count():
        raise DeviceError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass(frozen=True)
class DistributedContext:
    """Rank, world size and device of this process (rank 0 of 1 without ``torchrun``)."""

    rank: int
    world_size: int
    device: torch.device
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def mean(self, value: float) -> float:
        """The mean of a scalar over the ranks."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def wrap(self, module: nn.Module, **options: Any) -> nn.Module:
        """``module`` in ``DistributedDataParallel`` when there are several ranks, else unchanged."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, **options)

    def run_on_main(self, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``action`` on rank 0 only and return its result there (None on the other ranks); an
        exception it raises is raised on every rank (e.g. a refusal to use a run folder), so no rank
        goes on alone. Also a barrier."""
        result, error = None, None
        if self.is_main:
            try:
                result = action(*args, **kwargs)
            except Exception as raised:  # noqa: BLE001 (handed to every rank, then raised)
                error = raised
        error = self.all_gather(error)[0]
        if error is not None:
            raise error
        return result


def _leave_process_group() -> None:
    """Destroy the process group at interpreter exit. Left to the C++ destructors, gloo's worker
    threads can abort the process (``terminate called without an active exception``, SIGABRT) after
    the script's work has finished, and ``torchrun`` then reports the whole job as failed."""
    if dist.is_initialized():
        dist.destroy_process_group()


def setup_distributed(device: str | torch.device | None = "auto",
                      timeout: datetime.timedelta = datetime.timedelta(hours=4)) -> DistributedContext:
    """This process's :class:`DistributedContext`: joins the ``torchrun`` process group once (NCCL for
    GPUs, gloo on the CPU) and picks this rank's device (:func:`resolve_device`). ``timeout``: how
    long ranks wait for each other (rank 0 may evaluate alone for a while)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", timeout=timeout)
        atexit.register(_leave_process_group)
    rank = dist.get_rank() if dist.is_initialized() else 0
    size = dist.get_world_size() if dist.is_initialized() else 1
    return DistributedContext(rank, size, resolved, local_rank)
