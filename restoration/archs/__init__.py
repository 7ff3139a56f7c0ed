"""Restoration networks with segmentation structure priors, registered in BasicSR's ``ARCH_REGISTRY``.

Importing this package registers ``NAFNet``, ``SAMDeblurNet`` and ``SAMGuidedDehazeNet`` so that a
BasicSR option file can name them as ``network_g: {type: SAMDeblurNet, ...}``.
"""
from __future__ import annotations

from typing import TypeVar

from restoration._basicsr import ARCH_REGISTRY

ArchClass = TypeVar("ArchClass", bound=type)


def register_arch(cls: ArchClass) -> ArchClass:
    """Register ``cls`` in BasicSR's ``ARCH_REGISTRY`` under its class name; safe on module re-import.

    Re-registering a class with the same module and name (``importlib.reload``) replaces the entry;
    a different class claiming a taken name is an error, as in BasicSR.
    """
    name = cls.__name__
    if name in ARCH_REGISTRY:
        registered = ARCH_REGISTRY.get(name)
        if (registered.__module__, registered.__qualname__) != (cls.__module__, cls.__qualname__):
            raise KeyError(f"ARCH_REGISTRY already holds a different {name!r} from {registered.__module__}")
        ARCH_REGISTRY._obj_map[name] = cls  # BasicSR's Registry has no public replace
        return cls
    ARCH_REGISTRY.register(cls)
    return cls


# Imported after register_arch is defined: the submodules use it at import time.
from restoration.archs.nafnet import NAFNet, MaskAveragePooling, SAMDeblurNet  # noqa: E402
from restoration.archs.dehaze import SAMGuidedDehazeNet  # noqa: E402

__all__ = ["register_arch", "NAFNet", "MaskAveragePooling", "SAMDeblurNet", "SAMGuidedDehazeNet"]
