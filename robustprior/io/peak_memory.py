"""Peak resident memory (``getrusage``) of this process or of its largest finished child, in GB.

A forked child starts with its parent's resident pages counted as its own, so the children's figure is
at least the parent's resident size at the moment it forked (importing torch alone forks ``ldconfig``).
Imports nothing heavy: a fresh process can measure itself without torch.
"""
from __future__ import annotations

import resource
import sys

__all__ = ["peak_rss_gb"]


def peak_rss_gb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory in GB (10**9 bytes, two decimals) of this process (``resource.RUSAGE_SELF``) or
    of its largest finished child (``resource.RUSAGE_CHILDREN``); ``ru_maxrss`` is in KiB on Linux, bytes
    on macOS."""
    peak = resource.getrusage(who).ru_maxrss
    return round(peak / (1e9 if sys.platform == "darwin" else 1e9 / 1024), 2)
