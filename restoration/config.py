"""The options schema of :mod:`restoration.train` and the Table 8 recipes (``restoration/options/*.yaml``).

One vocabulary: BasicSR's option keys wherever BasicSR has the key, so that a BasicSR / NAFNet /
SAM-Deblur option file reads as it is (its paths edited); this project's own keys only for what
BasicSR lacks (the ``prior`` section, the data ``layout``, tiled evaluation). Keys of such files that
this project does not use (``model_type``, ``io_backend``, ``logger.use_tb_logger``, ``dist_params``,
...) are accepted and listed once in a :class:`~robustprior.training.config.UnusedKeysWarning`;
any other unknown key is a :class:`~robustprior.training.ConfigError` naming the closest valid key.
The sections::

    name: deblur_gopro                   # run name (default output folder runs/NAME)
    manual_seed: 0
    network_g: {type: SegNAFNetLocal, width: 32, enc_blk_nums: [1, 1, 1, 28], ...}   # NETWORK_TYPES
    datasets:
      train: {dataroot_lq, dataroot_gt, layout, gt_size, use_flip, use_rot, batch_size_per_gpu, num_worker_per_gpu}
      val:   {dataroot_lq, dataroot_gt, layout}                   # ``test:`` is read as ``val:``
    train: {total_iter, warmup_iter, optim_g, scheduler, pixel_opt, grad_clip}
    val: {val_freq, save_img, max_images, tile, overlap, ssim}
    logger: {print_freq, save_checkpoint_freq}
    prior: restoration.datasets.PRIOR_SCHEMA                      # ours: the SAM / RobustSAM structure prior;
                                                                  # kind defaults to sam for a network with a prior

``network_g`` takes NAFNet's and SAM-Deblur's names (types ``NAFNet``, ``NAFNetLocal``,
``SegNAFNet``, ``SegNAFNetLocal``; arguments ``enc_blk_nums``, ``middle_blk_num``, ``dec_blk_nums``,
``seg_channel``) beside this project's networks (:data:`restoration.archs.NETWORKS`);
:func:`network_options` translates them to the classes' own arguments, which the validated options
hold. A recipe config adds ``task``, ``threads`` and ``recipe`` (:data:`RECIPE_KEYS`, read by
:mod:`restoration.table8`; :func:`load_options_file` accepts and sets them aside).

Reading and checking: :func:`load_options_file` (``validate=False``: a file as written), :func:`parse_forced_options`
(``--force_yml``), :func:`check_options` (everything checkable before any work: the schema, network
and prior agreeing, the data layout) and :func:`dataset_options` (one phase's dataset options).
"""
from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from restoration.archs import NETWORKS, check_network_options
from restoration.datasets import PRIOR_SCHEMA
from restoration.metrics import SSIM_KINDS
from restoration.paired_data import LAYOUTS, list_pairs
from robustprior.training.config import (REQUIRED, Field, Ignored, Section, read_config_file,
                                         validate_config)
from robustprior.training.errors import ConfigError

__all__ = ["SCHEMA", "RECIPE_KEYS", "NETWORK_TYPES", "PIXEL_LOSSES", "network_options", "network_prior", "validate_options",
           "load_options_file", "split_recipe_keys", "parse_forced_options", "check_options",
           "check_options_agree", "check_data", "dataset_options"]

PIXEL_LOSSES = ("PSNRLoss", "L1Loss")
OPTIMIZERS = ("AdamW", "Adam")
SCHEDULERS = ("CosineAnnealingLR", "TrueCosineAnnealingLR", "constant")
DATASET_TYPES = ("PairedImageDataset", "PairedImageGroupMaskDataset")
RECIPE_KEYS = ("task", "threads", "recipe")  # keys of a recipe config that only restoration.table8 reads

# NAFNet's / SAM-Deblur's network_g vocabulary -> this project's classes and arguments.
NETWORK_TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    "NAFNetLocal": ("NAFNet", {"local_pool": True}),
    "SegNAFNet": ("SAMDeblurNet", {"prior": "structure", "mask_dropout_mode": "exact"}),
    "SegNAFNetLocal": ("SAMDeblurNet", {"prior": "structure", "mask_dropout_mode": "exact", "local_pool": True}),
}
NETWORK_ARGUMENTS: dict[str, str] = {"enc_blk_nums": "enc_blocks", "middle_blk_num": "middle_blocks",
                                     "dec_blk_nums": "dec_blocks", "seg_channel": "structure_channels"}


def network_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A ``network_g`` section in this project's terms: NAFNet / SAM-Deblur type names
    (:data:`NETWORK_TYPES`) and argument names (:data:`NETWORK_ARGUMENTS`) translated, NAFNet's
    ``img_channel: 3`` dropped (RGB is what every network restores). A new dict."""
    translated = dict(options)
    network_type = translated.get("type")
    if network_type in NETWORK_TYPES:
        target, implied = NETWORK_TYPES[network_type]
        translated = {**implied, **translated, "type": target}
    for name, argument in NETWORK_ARGUMENTS.items():
        if name in translated:
            if argument in translated:
                raise ValueError(f"network_g.{name} and network_g.{argument} are the same argument: give one")
            translated[argument] = translated.pop(name)
    if "img_channel" in translated and translated.get("type") in ("NAFNet", "SAMDeblurNet"):
        if translated.pop("img_channel") != 3:
            raise ValueError("network_g.img_channel must be 3 (RGB images)")
    return translated


def network_prior(network: Mapping[str, Any]) -> str:
    """The prior a (translated) ``network_g`` section's network reads (its ``prior`` argument or that
    argument's default; ``"none"`` for networks without one), known before the network is built."""
    parameters = inspect.signature(NETWORKS[network["type"]]).parameters
    if "prior" not in parameters:
        return "none"
    return network.get("prior", parameters["prior"].default)


def _check_network(options: dict) -> None:
    check_network_options(network_options(options))


def _data_section(nullable: bool, train: bool) -> Section:
    fields: dict[str, Any] = {
        "name": Field(str, None, doc="a name for logs (BasicSR)"),
        "type": Field(str, "PairedImageDataset", choices=DATASET_TYPES,
                      doc="paired images; the prior comes from the prior section (PairedImageGroupMaskDataset's "
                          "precomputed masks are not read)"),
        "dataroot_lq": Field(str, REQUIRED, doc="degraded images (recipes fill it from --data-root)"),
        "dataroot_gt": Field(str, REQUIRED, doc="ground truth images"),
        "layout": Field(str, "folders", choices=LAYOUTS,
                        doc="folders (BasicSR's paired folders), sots (hazy NAME_x -> NAME), gopro (SEQUENCE/blur/)"),
        "filename_tmpl": Field(str, "{}", doc="folders: a ground truth NAME pairs with the input filename_tmpl.format(NAME)"),
        "blur_dir": Field(str, "blur", doc="gopro: blur or blur_gamma"),
        "io_backend": Section({"type": Field(str, "disk", choices=("disk",), doc="image files (no lmdb)")}),
        "dataroot_mask": Ignored("the masks are computed by the prior section (SAM / RobustSAM)"),
        "use_shuffle": Ignored("training batches are always shuffled (seeded)"),
        "dataset_enlarge_ratio": Ignored("iterations, not epochs, set the length of a run"),
        "prefetch_mode": Ignored("data loading has no prefetcher"),
        "pin_memory": Ignored("pinned on CUDA"),
    }
    if train:
        fields.update({
            "gt_size": Field(int, None, at_least=1, doc="training crops (null: full images)"),
            "use_flip": Field(bool, False),
            "use_rot": Field(bool, False),
            "batch_size_per_gpu": Field(int, 8, at_least=1, doc="per process (DDP rank): the total is this x ranks"),
            "num_worker_per_gpu": Field(int, 0, at_least=0),
        })
    return Section(fields, nullable=nullable, renamed={
        "dataroot": "dataroot_lq and dataroot_gt (the folders themselves; a dataset root: restoration.paired_data.locate_dataset)",
        "split": "dataroot_lq / dataroot_gt pointing into the split",
        "crop_size": "'gt_size'" if train else "nothing: the evaluation set is not cropped",
        "num_workers": "'num_worker_per_gpu'" if train else "nothing: one image at a time"})


def _check_betas(betas: list[float]) -> None:
    if not all(0.0 <= beta < 1.0 for beta in betas):
        raise ValueError(f"betas must lie in [0, 1), got {betas}")


def _check_tiles(val: dict) -> None:
    if val["tile"] is not None and val["overlap"] >= val["tile"]:
        raise ValueError(f"overlap ({val['overlap']}) must be smaller than tile ({val['tile']})")


def _refuse(reason: str):
    """A check that refuses any (non-null) value, saying ``reason``."""
    def check(value: Any) -> None:
        raise ValueError(reason)
    return check


def _check_warmup(value: int) -> None:
    if value > 0:
        raise ValueError(f"learning-rate warm-up is not implemented: use -1 or 0 (none), got {value}")


SCHEMA = Section({
    "name": Field(str, "restoration"),
    "manual_seed": Field(int, 0, at_least=0),
    "model_type": Ignored("one model: network_g trained on pixel_opt"),
    "scale": Field(int, 1, choices=(1,), doc="restoration keeps the size"),
    "num_gpu": Ignored("devices come from --device and torchrun"),
    "grouped_masks": Ignored("masks are grouped by prior.grouping"),
    "is_train": Ignored("set by the command"),
    "dist_params": Ignored("torchrun sets the process group"),
    "path": Section({
        "pretrain_network_g": Field(str, None, check=_refuse("starting a training run from weights is not supported: "
                                                             "leave it null")),
        "strict_load_g": Ignored("weights always load strictly"),
        "resume_state": Field(str, None, check=_refuse("resume with --resume (the run folder holds its state)")),
        "experiments_root": Ignored("the run folder is --output"),
    }),
    "network_g": Field(dict, {"type": "SAMDeblurNet"}, check=_check_network,
                       doc="type (restoration.archs.NETWORKS or NETWORK_TYPES) and the network's arguments"),
    "datasets": Section({
        "train": _data_section(nullable=True, train=True),
        "val": _data_section(nullable=False, train=False),
    }, aliases={"test": "val"}),
    "train": Section({
        "total_iter": Field(int, 1000, at_least=1),
        "warmup_iter": Field(int, -1, check=_check_warmup, doc="-1: none (NAFNet's setting)"),
        "optim_g": {
            "type": Field(str, "AdamW", choices=OPTIMIZERS),
            "lr": Field(float, 1e-3, above=0),
            "weight_decay": Field(float, 1e-3, at_least=0),
            "betas": Field(list, [0.9, 0.9], items=float, length=2, check=_check_betas),
        },
        "scheduler": {
            "type": Field(str, "CosineAnnealingLR", choices=SCHEDULERS,
                          doc="CosineAnnealingLR and TrueCosineAnnealingLR: one cosine from lr to eta_min over total_iter"),
            "eta_min": Field(float, 1e-7, at_least=0, doc="cosine: the final learning rate"),
            "T_max": Ignored("the cosine spans train.total_iter"),
        },
        "pixel_opt": {
            "type": Field(str, "PSNRLoss", choices=PIXEL_LOSSES, doc="PSNRLoss: 10/ln10 * log(MSE + 1e-8) (NAFNet); L1Loss"),
            "loss_weight": Field(float, 1.0, above=0),
            "reduction": Field(str, "mean", choices=("mean",)),
        },
        "grad_clip": Field(float, None, above=0, doc="gradient-norm clip (NAFNet's fork: 0.01); null: none"),
        "use_grad_clip": Ignored("set grad_clip (a norm) instead"),
    }, renamed={"batch_size": "'datasets.train.batch_size_per_gpu' (per process, not the total)",
                "loss": "'train.pixel_opt.type' (PSNRLoss or L1Loss)", "log_freq": "'logger.print_freq'",
                "save_freq": "'logger.save_checkpoint_freq'"}),
    "val": Section({
        "val_freq": Field(int, None, at_least=1, doc="evaluate every N iterations; null: only at the end"),
        "save_img": Field(bool, True, doc="write the restored test images"),
        "max_images": Field(int, None, at_least=1, doc="periodic evaluations use the first N test images"),
        "tile": Field(int, None, at_least=1, doc="tiled inference above this side (restoration.tiling)"),
        "overlap": Field(int, 32, at_least=0),
        "ssim": Field(str, "basicsr", choices=SSIM_KINDS, doc="the SSIM results report (restoration.metrics)"),
        "metrics": Ignored("PSNR and SSIM (val.ssim) are always computed, on RGB without a border crop"),
        "grids": Ignored("images are restored whole or as val.tile tiles"),
        "rgb2bgr": Ignored("images are read as RGB"),
    }, check=_check_tiles, renamed={"save_images": "'val.save_img'"}),
    "logger": {
        "print_freq": Field(int, 10, at_least=1, doc="train_log.csv row every N iterations"),
        "save_checkpoint_freq": Field(int, 1000, at_least=1, nullable=True,
                                      doc="checkpoint every N iterations; null: at the end"),
        "use_tb_logger": Ignored("the logs are CSV files in the run folder"),
        "wandb": Ignored("the logs are CSV files in the run folder"),
    },
    "prior": PRIOR_SCHEMA,
})


def _translated(options: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``network_g`` translated (:func:`network_options`); without a ``prior.kind``, the prior is SAM's
    (``sam``) for a network that reads one, ``none`` otherwise (a BasicSR file has no prior section)."""
    options = dict(options)
    network = options.get("network_g")
    if isinstance(network, Mapping):
        try:
            options["network_g"] = network = network_options(network)
        except ValueError as error:
            raise ConfigError(f"{source}: {error}") from None
        prior = options.get("prior")
        if (prior is None or isinstance(prior, Mapping) and "kind" not in prior) and network.get("type") in NETWORKS:
            options["prior"] = {**(prior or {}), "kind": "none" if network_prior(network) == "none" else "sam"}
    return options


def validate_options(options: Mapping[str, Any], source: str = "options") -> dict[str, Any]:
    """``options`` checked against :data:`SCHEMA`, every default filled in, ``network_g`` in the
    network classes' terms (:func:`network_options`): a new dict."""
    return validate_config(_translated(options, source), SCHEMA, source=source)


def split_recipe_keys(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(training options, recipe keys)`` of a recipe config or options file (:data:`RECIPE_KEYS`)."""
    options = {key: copy.deepcopy(value) for key, value in values.items() if key not in RECIPE_KEYS}
    return options, {key: copy.deepcopy(values[key]) for key in RECIPE_KEYS if key in values}


def load_options_file(path: str | Path, validate: bool = True) -> dict[str, Any]:
    """A YAML options file (:func:`robustprior.training.config.read_config_file`) without its recipe
    keys, validated against :data:`SCHEMA` (errors name the file); ``validate=False`` returns it as
    written (a recipe fills in its data roots first)."""
    options, _ = split_recipe_keys(read_config_file(path))
    return validate_options(options, source=str(path)) if validate else options


def parse_forced_options(assignments: Sequence[str]) -> dict[str, Any]:
    """BasicSR's ``--force_yml`` assignments (``train:total_iter=20``, ``network_g:enc_blk_nums=[1, 1]``;
    values read as YAML) as a nested override mapping (:func:`robustprior.training.merge_config`)."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        if not separator or not key:
            raise ConfigError(f"--force_yml takes KEY:SUBKEY=VALUE, got {assignment!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError(f"--force_yml {assignment!r}: the value is not YAML ({error})") from None
        *parents, leaf = key.split(":")
        target = overrides
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--force_yml {assignment!r}: {parent} is given a value and keys")
        target[leaf] = value
    return overrides


def check_options_agree(options: Mapping[str, Any]) -> None:
    """Network and prior options that contradict each other: a :class:`ConfigError`."""
    wanted, kind = network_prior(options["network_g"]), options["prior"]["kind"]
    if wanted == "none" and kind != "none":
        raise ConfigError(f"prior.kind is {kind!r} but the network takes no prior (network_g.prior: none); "
                          "set prior.kind: none")
    if wanted != "none" and kind == "none":
        raise ConfigError(f"the network's prior is {wanted!r}: set prior.kind to sam or robustsam")
    if wanted == "features" and options["prior"]["features"] is None:
        raise ConfigError("a 'features' network needs prior.features: mask_feature or embedding")
    if wanted != "features" and options["prior"]["features"] is not None:
        raise ConfigError(f"prior.features is {options['prior']['features']!r} but the network's prior is {wanted!r} "
                          "(only network_g.prior: features reads latent maps); set prior.features: null")


def check_data(options: Mapping[str, Any]) -> None:
    """List the pairs of every data section: a wrong layout or split is a one-line
    :class:`~restoration.paired_data.DataLayoutError` before any run folder is made."""
    for phase in ("train", "val"):
        section = options["datasets"][phase]
        if section is not None:
            list_pairs(section["layout"], section["dataroot_lq"], section["dataroot_gt"], section["blur_dir"],
                       section["filename_tmpl"])


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Everything that can be checked before any work, in one call (a recipe calls it for every row
    before it writes anything): the schema (:func:`validate_options`), network and prior agreeing
    (:func:`check_options_agree`) and the data layout (:func:`check_data`). Returns the validated
    options; raises a :class:`~robustprior.training.RunSetupError` (one message)."""
    validated = validate_options(options)
    check_options_agree(validated)
    check_data(validated)
    return validated


def dataset_options(options: Mapping[str, Any], phase: str) -> dict[str, Any]:
    """The :class:`~restoration.datasets.PriorPairedDataset` options of phase ``train`` or ``val`` of
    validated options (the evaluation set without crops or flips)."""
    section = dict(options["datasets"][phase])
    section.update(seed=options["manual_seed"], phase=phase)
    if phase != "train":
        section.update(gt_size=None, use_flip=False, use_rot=False)
    return section
