"""Atomic file writes: write a temporary file beside the target, then rename it into place.

Readers (another DDP rank, a resumed run, a user) never see half a file, and an interrupted write
leaves the previous version intact. The temporary file is named ``.TARGET.XXXXXXXX.partial[SUFFIX]``
(:func:`is_temporary` recognises the pattern): an exception removes it, and a process killed while
writing leaves one that :func:`remove_temporaries` deletes (the run engine does so when a run folder
is opened).
"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import save_file


TEMPORARY_TAG = ".partial"
# mkstemp's random part is 8 characters of [a-z0-9_]
_TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}" + re.escape(TEMPORARY_TAG) + r"(\.[A-Za-z0-9]+)?$")


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_path`'s temporary names."""
    return _TEMPORARY_NAME.match(name) is not None


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left anywhere below ``folder``;
    returns them. Only for folders no other process is writing to (a locked run folder)."""
    removed = []
    for root, _, files in os.walk(folder):
        for name in files:
            if is_temporary(name):
                path = Path(root) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    ``suffix`` is appended to the temporary name, for writers that insist on an extension
    (``np.savez`` appends ``.npz`` to a name without it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_TAG + suffix)
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
