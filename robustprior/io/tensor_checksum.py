"""Checksums of stored tensors: a cache file that changed after it was written is never used.

Cache files (structure priors, encoder features) are safetensors whose header metadata carries
``tensors_sha256``: SHA-256 over every tensor's name, dtype, shape and bytes, in name order. Header
and size checks catch truncated or foreign files; this catches a same-length change inside the data
(a flipped bit on disk, a partial copy over an old file), which otherwise decodes silently.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

CHECKSUM_KEY = "tensors_sha256"


class ChecksumError(ValueError):
    """A stored file's tensors do not match the checksum written with them."""


def update_with_tensors(digest: "hashlib._Hash", tensors: Mapping[str, torch.Tensor]) -> None:
    """Feed every tensor's name, dtype, shape and bytes (name order) into ``digest``."""
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        if tensor.numel():
            digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().data)


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of ``tensors`` (see :func:`update_with_tensors`)."""
    digest = hashlib.sha256()
    update_with_tensors(digest, tensors)
    return digest.hexdigest()


def with_checksum(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> dict[str, str]:
    """``metadata`` plus the ``tensors_sha256`` entry for ``tensors``."""
    return {**(metadata or {}), CHECKSUM_KEY: tensors_sha256(tensors)}


def load_checked(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header metadata of a safetensors file whose checksum matches.

    Raises :class:`ChecksumError` when the file carries no checksum or its tensors do not match it;
    unreadable files raise what safetensors raises."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    tensors = load_file(str(path))
    expected = metadata.get(CHECKSUM_KEY)
    if expected is None:
        raise ChecksumError(f"{path} carries no {CHECKSUM_KEY} (written by an older version)")
    actual = tensors_sha256(tensors)
    if actual != expected:
        raise ChecksumError(f"{path}: its tensors changed after it was written (checksum {actual[:12]}... "
                            f"instead of {expected[:12]}...)")
    return tensors, metadata
