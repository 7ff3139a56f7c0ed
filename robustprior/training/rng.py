"""Seeding and the full state of a process's random number generators.

:func:`capture_rng_state` returns Python's, numpy's (legacy global), torch's CPU and every CUDA
device's generator state as plain containers and tensors, so that a checkpoint holding it loads
with ``torch.load(weights_only=True)``; :func:`restore_rng_state` puts it back.
"""
from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (torch also seeds every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """This process's generator states: ``{"python", "numpy", "torch"[, "cuda"]}``."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                  "pos": int(numpy_state["state"]["pos"]), "has_gauss": int(numpy_state["has_gauss"]),
                  "gauss": float(numpy_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; a state without CUDA entries leaves the GPUs' alone."""
    try:
        python = state["python"]
        random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
        numpy = state["numpy"]
        np.random.set_state({"bit_generator": "MT19937",
                             "state": {"key": numpy["key"].numpy().astype(np.uint32), "pos": numpy["pos"]},
                             "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]})
        torch.set_rng_state(state["torch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"the checkpoint's random generator state is not usable ({error!r})") from None
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn(f"the checkpoint holds the generator states of {len(state['cuda'])} GPU(s), this machine "
                          f"has {torch.cuda.device_count()}: CUDA generators keep their seeds (not bit-exact)")
