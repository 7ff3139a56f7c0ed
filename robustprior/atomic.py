"""Atomic file writes: write a temporary file beside the target, then rename it into place.

Readers (another DDP rank, a resumed run, a user) never see half a file, and an interrupted write
leaves the previous version intact.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import save_file


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[str]:
    """Yields a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text_atomically(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        Path(temporary).write_text(text)


def save_torch_atomically(payload: Any, path: str | Path) -> None:
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def save_safetensors_atomically(tensors: Mapping[str, torch.Tensor], path: str | Path,
                                metadata: Mapping[str, str] | None = None) -> None:
    with atomic_path(path) as temporary:
        save_file(dict(tensors), temporary, metadata=dict(metadata or {}))
