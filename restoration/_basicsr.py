"""The one place that imports basicsr.

basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor`` (removed from
torchvision >= 0.17) from ``basicsr/__init__`` through its degradations module, so
every basicsr import (even the metrics) fails on a modern torchvision. We alias the
module to its successor ``torchvision.transforms.functional`` before importing basicsr.
Import basicsr objects from here, never ``basicsr`` directly. Only BasicSR's metrics are used
(see :mod:`restoration` on why nothing is registered in BasicSR's registries).
"""
from __future__ import annotations

import sys

import torchvision.transforms.functional as _tv_functional

sys.modules.setdefault("torchvision.transforms.functional_tensor", _tv_functional)

from basicsr.metrics.psnr_ssim import calculate_psnr, calculate_ssim  # noqa: E402

__all__ = ["calculate_psnr", "calculate_ssim"]
