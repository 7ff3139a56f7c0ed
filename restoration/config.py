"""The options schema of :mod:`restoration.train` (``restoration/options/*.yaml``).

Every key the trainer reads is declared here with its default; :func:`validate_options` reports an
unknown key (with the closest valid one, also inside ``network_g``, whose keys are the network
class's arguments), a wrong type or an out-of-range value as one
:class:`~robustprior.training.ConfigError`, before any work. The sections::

    name: deblur_gopro                  # run name (default output folder runs/NAME)
    manual_seed: 0
    network_g: {type: SAMDeblurNet, ...}                     # restoration.archs.NETWORKS + arguments
    datasets: {train: DATA or null, test: DATA}              # DATA: DATA_SCHEMA below
    train: {total_iter, batch_size, optim_g, scheduler, loss, grad_clip, log_freq, save_freq}
    val: {val_freq, max_images, tile, overlap, save_images, ssim}
    prior: restoration.datasets.PRIOR_SCHEMA
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from restoration.archs import check_network_options
from restoration.datasets import PRIOR_SCHEMA
from restoration.metrics import SSIM_KINDS
from restoration.paired_data import LAYOUTS
from robustprior.training.config import REQUIRED, Field, Section, load_config, validate_config

LOSS_NAMES = ("psnr", "l1")
OPTIMIZERS = ("AdamW", "Adam")
SCHEDULERS = ("CosineAnnealingLR", "constant")


def _data_section(nullable: bool) -> Section:
    return Section({
        "layout": Field(str, REQUIRED, choices=LAYOUTS),
        "dataroot": Field(str, REQUIRED, doc="the data folder (recipes fill it from --data-root)"),
        "split": Field(str, None, doc="SOTS: outdoor / indoor / null; GoPro: train / test, or null for a flat folder"),
        "blur_dir": Field(str, "blur", doc="GoPro: blur or blur_gamma"),
        "crop_size": Field(int, None, at_least=1, doc="training crops (null: full images)"),
        "use_flip": Field(bool, False),
        "use_rot": Field(bool, False),
        "num_workers": Field(int, 0, at_least=0),
    }, nullable=nullable)


def _check_betas(betas: list[float]) -> None:
    if not all(0.0 <= beta < 1.0 for beta in betas):
        raise ValueError(f"betas must lie in [0, 1), got {betas}")


def _check_tiles(val: dict) -> None:
    if val["tile"] is not None and val["overlap"] >= val["tile"]:
        raise ValueError(f"overlap ({val['overlap']}) must be smaller than tile ({val['tile']})")


SCHEMA = Section({
    "name": Field(str, "restoration"),
    "manual_seed": Field(int, 0, at_least=0),
    "network_g": Field(dict, {"type": "SAMDeblurNet"}, check=check_network_options,
                       doc="type (restoration.archs.NETWORKS) and the network's arguments"),
    "datasets": {
        "train": _data_section(nullable=True),
        "test": _data_section(nullable=False),
    },
    "train": {
        "total_iter": Field(int, 1000, at_least=1),
        "batch_size": Field(int, 8, at_least=1, doc="total over all DDP ranks"),
        "optim_g": {
            "type": Field(str, "AdamW", choices=OPTIMIZERS),
            "lr": Field(float, 1e-3, above=0),
            "weight_decay": Field(float, 1e-3, at_least=0),
            "betas": Field(list, [0.9, 0.9], items=float, length=2, check=_check_betas),
        },
        "scheduler": {
            "type": Field(str, "CosineAnnealingLR", choices=SCHEDULERS),
            "eta_min": Field(float, 1e-7, at_least=0, doc="cosine: the final learning rate"),
        },
        "loss": Field(str, "psnr", choices=LOSS_NAMES, doc="psnr: 10/ln10 * log(MSE + 1e-8) (SAM-Deblur); l1"),
        "grad_clip": Field(float, None, above=0, doc="gradient-norm clip (NAFNet's fork: 0.01); null: none"),
        "log_freq": Field(int, 10, at_least=1),
        "save_freq": Field(int, 1000, at_least=1, nullable=True, doc="checkpoint every N iterations; null: at the end"),
    },
    "val": Section({
        "val_freq": Field(int, None, at_least=1, doc="evaluate every N iterations; null: only at the end"),
        "max_images": Field(int, None, at_least=1, doc="periodic evaluations use the first N test images"),
        "tile": Field(int, None, at_least=1, doc="tiled inference above this side (restoration.tiling)"),
        "overlap": Field(int, 32, at_least=0),
        "save_images": Field(bool, True),
        "ssim": Field(str, "basicsr", choices=SSIM_KINDS, doc="the SSIM results report (restoration.metrics)"),
    }, check=_check_tiles),
    "prior": PRIOR_SCHEMA,
})


def validate_options(options: Mapping[str, Any], source: str = "options") -> dict[str, Any]:
    """``options`` checked against :data:`SCHEMA`, every default filled in (a new dict)."""
    return validate_config(options, SCHEMA, source=source)


def load_options_file(path: str | Path) -> dict[str, Any]:
    """A YAML options file validated against :data:`SCHEMA` (errors name the file)."""
    return load_config(path, SCHEMA)
