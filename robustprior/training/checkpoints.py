"""Training checkpoints that load without running code.

A checkpoint lives in a run's ``checkpoints/`` folder as two files and a pointer::

    checkpoints/weights-00001200-3fa2c1.safetensors   model tensors (safetensors)
    checkpoints/state-00001200-3fa2c1.pt              optimizer, schedule, RNG and other state:
                                                      tensors and plain containers only, read with
                                                      torch.load(weights_only=True)
    checkpoints/latest.json                           {"iteration", "weights", "state", sizes, SHA-256s}

Each file is written atomically under a fresh name; rewriting ``latest.json`` (atomically) is the
commit point, so a process killed at any moment leaves the previous checkpoint whole. Files that
``latest.json`` does not name are leftovers of such a kill and are deleted the next time the run
folder is opened (:func:`remove_unreferenced`). Loading checks sizes and hashes, and a state file
holding anything that would run code when unpickled is refused (:class:`CheckpointError`).
"""
from __future__ import annotations

import json
import pickle
import re
import secrets
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from robustprior.io.atomic import save_safetensors_atomically, save_torch_atomically, write_text_atomically
from robustprior.io.hub import file_sha256
from .errors import CheckpointError

CHECKPOINT_FOLDER = "checkpoints"
POINTER_NAME = "latest.json"
FORMAT = "robustprior-training-checkpoint"
FORMAT_VERSION = 1
_PLAIN = (type(None), bool, int, float, str, torch.dtype, torch.Size)


def check_loadable_state(value: Any, where: str = "state") -> None:
    """Raise ``TypeError`` naming the first entry of ``value`` that ``torch.load(weights_only=True)``
    would refuse (anything but tensors, numbers, strings, ``None`` and lists / tuples / dicts of them)."""
    if isinstance(value, _PLAIN) or isinstance(value, torch.Tensor):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_loadable_state(item, f"{where}[{index}]")
        return
    if isinstance(value, (dict, OrderedDict)):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"{where} has a key of type {type(key).__name__} ({key!r}); use str or int keys")
            check_loadable_state(item, f"{where}[{key!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__name__}, which a safe checkpoint "
                    "cannot hold; store tensors, numbers, strings and lists / dicts of them")


@dataclass
class TrainingCheckpoint:
    """A loaded checkpoint: ``weights`` (name -> tensor, CPU) and ``state`` (what the trainer saved)."""

    iteration: int
    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    folder: Path

    def rng_state(self, rank: int, world_size: int) -> dict[str, Any] | None:
        """Rank ``rank``'s generator states when the checkpoint was made by ``world_size`` ranks
        (saved under ``state["rng"]``, one entry per rank), else None (the caller reseeds)."""
        states = self.state.get("rng")
        if not isinstance(states, list) or len(states) != world_size:
            return None
        return states[rank]


def _pointer(folder: Path) -> dict[str, Any] | None:
    path = folder / CHECKPOINT_FOLDER / POINTER_NAME
    if not path.is_file():
        return None
    try:
        pointer = json.loads(path.read_text())
        if pointer.get("format") != FORMAT:
            raise ValueError(f"format {pointer.get('format')!r}")
        int(pointer["iteration"])
        for record in (pointer["weights"], pointer["state"]):
            str(record["name"]), int(record["bytes"]), str(record["sha256"])
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not a robustprior checkpoint pointer ({error}); the run cannot be "
                              "resumed: start it again with --overwrite") from None
    return pointer


def _file_record(path: Path) -> dict[str, Any]:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def save_training_checkpoint(folder: str | Path, iteration: int, weights: Mapping[str, torch.Tensor],
                             state: Mapping[str, Any]) -> Path:
    """Write a checkpoint of ``iteration`` into ``folder/checkpoints`` and make it the latest; the
    previous one is deleted once the new one is committed. ``weights`` are saved as contiguous CPU
    tensors in safetensors; ``state`` must hold only tensors and plain containers
    (:func:`check_loadable_state`). Returns the pointer file."""
    folder = Path(folder)
    check_loadable_state(dict(state))
    directory = folder / CHECKPOINT_FOLDER
    directory.mkdir(parents=True, exist_ok=True)
    previous = _pointer(folder)
    tag = f"{iteration:08d}-{secrets.token_hex(3)}"
    weights_path, state_path = directory / f"weights-{tag}.safetensors", directory / f"state-{tag}.pt"
    tensors = {name: tensor.detach().to("cpu", copy=True).contiguous() for name, tensor in weights.items()}
    save_safetensors_atomically(tensors, weights_path, {"format": FORMAT, "iteration": str(iteration)})
    save_torch_atomically({"format": FORMAT, "version": FORMAT_VERSION, "iteration": iteration, **state}, state_path)
    pointer = {"format": FORMAT, "version": FORMAT_VERSION, "iteration": iteration,
               "weights": _file_record(weights_path), "state": _file_record(state_path)}
    pointer_path = directory / POINTER_NAME
    write_text_atomically(pointer_path, json.dumps(pointer, indent=2) + "\n")
    if previous is not None:
        for record in (previous["weights"], previous["state"]):
            if record["name"] not in (weights_path.name, state_path.name):
                (directory / record["name"]).unlink(missing_ok=True)
    return pointer_path


def _checked_file(directory: Path, record: Mapping[str, Any]) -> Path:
    path = directory / str(record["name"])
    if not path.is_file():
        raise CheckpointError(f"{path} named by {directory / POINTER_NAME} is missing; the run cannot be resumed: "
                              "start it again with --overwrite")
    if path.stat().st_size != record["bytes"] or file_sha256(path) != record["sha256"]:
        raise CheckpointError(f"{path} is not the file its checkpoint was written with (size or SHA-256 differ): "
                              "it was changed or damaged; refusing to resume from it")
    return path


def load_state_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training state file read with ``torch.load(weights_only=True)``; anything else is a
    :class:`CheckpointError` that says what the file is."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol of a file it is about to refuse
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        code = re.search(r"GLOBAL (\S+)", str(error))
        if code:
            raise CheckpointError(
                f"refusing to load {path}: it holds Python objects ({code.group(1)}) that would run code when "
                "unpickled, which a robustprior checkpoint never does (did someone place this file here?)") from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        raise CheckpointError(
            f"refusing to load {path}: torch.load(weights_only=True) cannot read it ("
            f"{detail.group(1).strip() if detail else 'not a tensor file'}): a damaged file, or a pickle of Python "
            "objects, which is never unpickled here") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint ({str(error).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a robustprior training checkpoint")
    return state


def load_training_checkpoint(folder: str | Path, map_location: str | torch.device = "cpu"
                             ) -> TrainingCheckpoint | None:
    """The latest checkpoint in ``folder/checkpoints`` (None when there is none yet)."""
    folder = Path(folder)
    pointer = _pointer(folder)
    if pointer is None:
        return None
    directory = folder / CHECKPOINT_FOLDER
    weights_path = _checked_file(directory, pointer["weights"])
    state_path = _checked_file(directory, pointer["state"])
    try:
        weights = load_file(weights_path, device=str(map_location))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file ({error})") from None
    state = load_state_file(state_path, map_location)
    if state["iteration"] != pointer["iteration"]:
        raise CheckpointError(f"{state_path} is for iteration {state['iteration']}, {directory / POINTER_NAME} "
                              f"says {pointer['iteration']}")
    for key in ("format", "version", "iteration"):
        state.pop(key)
    return TrainingCheckpoint(int(pointer["iteration"]), weights, state, folder)


def remove_unreferenced(folder: str | Path) -> list[Path]:
    """Delete checkpoint files in ``folder/checkpoints`` that the pointer does not name (left by a
    process killed between writing them and committing the pointer); returns them."""
    directory = Path(folder) / CHECKPOINT_FOLDER
    if not directory.is_dir():
        return []
    pointer = _pointer(Path(folder))
    kept = {POINTER_NAME} | ({pointer["weights"]["name"], pointer["state"]["name"]} if pointer else set())
    removed = []
    for path in directory.iterdir():
        if path.is_file() and path.name not in kept and path.name.startswith(("weights-", "state-")):
            path.unlink()
            removed.append(path)
    return removed
