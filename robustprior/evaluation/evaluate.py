"""Prompted-segmentation evaluation of SAM vs RobustSAM per degradation (the paper's Table 2 report).

Protocol (:func:`evaluate_segmentation`): every image of a source is degraded with every kind
(``identity`` = the clear image) using a seed derived from ``(seed, image name, kind)``, so a
(image, kind) pair gets the same degraded image whatever other kinds or images are evaluated. The
degraded image is encoded ONCE; every ground-truth instance is then prompted

* ``point``: one positive point at the instance's interior centre (:func:`robustprior.data.prompts.center_point`,
  the pixel farthest from the boundary, as in SAM's single-point protocol);
* ``box``: its tight ground-truth box (:func:`robustprior.data.prompts.mask_to_box`, XYXY),

and decoded with each path (``sam``: SAM's own tokens; ``robust``: RobustSAM) in single-mask mode
(``multimask_output=False``, mask token 0, as the official RobustSAM ``eval.py`` decodes; SAM's
paper instead keeps the most confident of three masks for a single point, which is not done here).
IoU / Dice / PA against the mask (ignore regions excluded) go into one
:class:`~robustprior.evaluation.metrics.SegmentationMeter` per (path, prompt type): "Degrade" = mean over the
degraded kinds of each kind's mean, "Clear" = identity, "Average" = mean over all kinds. Box-prompt
masks, scored by their predicted IoU, also give class-agnostic COCO mask AP per kind, summarised the
same way.

:func:`run_evaluation` is the ``robustprior eval CONFIG`` entry point: it loads the model and the
data from a config and writes ``report.md``, ``report.json``, ``iou_per_degradation.png`` and the
``config.yaml`` used.
"""
from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from robustprior.modeling.build import MODEL_CONFIGS
from robustprior.data.sources import build_instance_source, check_source_config
from robustprior.data.datasets import CLEAR_KIND, InstanceSource
from robustprior.data.degrade import DEGRADATIONS, degradation_seed, degrade
from robustprior.load import ModelSource, load_model
from robustprior.evaluation.metrics import ImagePredictions, SegmentationMeter, box_prompt_ap, paired_bootstrap_interval
from robustprior.modeling.fourier_degradation_suppression import FOURIER_MODES
from robustprior.modeling.robust_sam import RobustSAM
from robustprior.predictor import RobustSAMPredictor
from robustprior.data.prompts import center_point, mask_to_box
from robustprior.data.scenes import is_generated_scene_file
from robustprior.training.config import REQUIRED, Field, Section, load_config, validate_config
from robustprior.training.distributed import check_device_name, resolve_device

__all__ = [
    "AP_NAMES",
    "DECODER_PATHS",
    "PATH_LABELS",
    "PROMPT_TYPES",
    "REPORT_FILES",
    "EvaluationResult",
    "degradation_seed",
    "EVAL_SCHEMA",
    "evaluate_segmentation",
    "load_eval_config",
    "predict_instance_masks",
    "run_evaluation",
]

PROMPT_TYPES = ("point", "box")
DECODER_PATHS = ("sam", "robust")
PATH_LABELS = {"sam": "SAM", "robust": "RobustSAM"}
AP_NAMES = ("AP", "AP50", "AP75")
SUMMARY_ROWS = ("Degrade", "Clear", "Average")
REPORT_FILES = ("report.md", "report.json", "iou_per_degradation.png", "config.yaml")

PROMPT_DESCRIPTIONS = {
    "point": "one positive point at the instance's interior centre (farthest from its boundary)",
    "box": "the instance's tight ground-truth box",
}


@torch.no_grad()
def predict_instance_masks(
    model: RobustSAM,
    image: np.ndarray,
    point_coords: np.ndarray,
    boxes: np.ndarray,
    prompt_types: Sequence[str] = PROMPT_TYPES,
    paths: Sequence[str] = DECODER_PATHS,
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """Masks for K instances of one image, encoding the image once and decoding every path.

    ``image``: HxWx3 uint8; ``point_coords``: K x 2 (x, y) and ``boxes``: K x 4 XYXY, in image
    pixels. Both prompt types share the shape of their sparse embeddings (one point + SAM's padding
    point, or two box corners), so each path decodes all ``len(prompt_types) x K`` prompts in ONE
    single-mask batch. Returns ``{(path, prompt_type): (masks K x H x W bool, predicted IoU K float32)}``.
    """
    predictor = RobustSAMPredictor(model)
    predictor.set_image(image)
    device, size = model.device, predictor.original_size
    sparse_parts, dense_parts = [], []
    for prompt_type in prompt_types:
        if prompt_type == "point":
            coords = predictor.transform.apply_coords(np.asarray(point_coords, dtype=np.float32), size)
            coords_tensor = torch.as_tensor(coords, dtype=torch.float, device=device)[:, None, :]
            labels = torch.ones(coords_tensor.shape[:2], dtype=torch.int, device=device)
            sparse, dense = model.encode_prompts(points=(coords_tensor, labels))
        else:
            transformed_boxes = predictor.transform.apply_boxes(np.asarray(boxes, dtype=np.float32), size)
            sparse, dense = model.encode_prompts(boxes=torch.as_tensor(transformed_boxes, dtype=torch.float, device=device))
        sparse_parts.append(sparse)
        dense_parts.append(dense)
    sparse, dense = torch.cat(sparse_parts), torch.cat(dense_parts)
    instance_count = len(point_coords)
    predictions = {}
    for path in paths:
        output = model.decode(predictor.features, sparse, dense, multimask_output=False, path=path)
        logits = model.postprocess_masks(output.mask_logits, predictor.input_size, size)
        masks = (logits[:, 0] > model.mask_threshold).cpu().numpy()
        scores = output.iou_predictions[:, 0].float().cpu().numpy()
        for position, prompt_type in enumerate(prompt_types):
            chosen = slice(position * instance_count, (position + 1) * instance_count)
            predictions[(path, prompt_type)] = (masks[chosen], scores[chosen])
    return predictions


@dataclass
class _PackedMasks:
    """KxHxW bool masks stored 8 pixels per byte (AP needs every box-prompt mask until the end)."""

    bits: np.ndarray
    shape: tuple[int, ...]

    @classmethod
    def pack(cls, masks: np.ndarray) -> "_PackedMasks":
        return cls(np.packbits(masks, axis=None), masks.shape)

    def unpack(self) -> np.ndarray:
        return np.unpackbits(self.bits, count=math.prod(self.shape)).reshape(self.shape).astype(bool)


def _summary(per_kind: Mapping[str, Mapping[str, float]], names: Sequence[str], clear_kind: str) -> dict[str, dict[str, float]]:
    """Degrade / Clear / Average rows (means of per-kind values, as ``SegmentationMeter.table``)."""
    groups = {
        "Degrade": [values for kind, values in per_kind.items() if kind != clear_kind],
        "Clear": [values for kind, values in per_kind.items() if kind == clear_kind],
        "Average": list(per_kind.values()),
    }
    return {
        row: {name: float(np.mean([values[name] for values in group])) if group else math.nan for name in names}
        for row, group in groups.items()
    }


def _json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None (strict JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _percent(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return "\n".join(lines)


@dataclass
class EvaluationResult:
    """Scores of :func:`evaluate_segmentation`.

    ``meters[(path, prompt_type)]`` holds IoU / Dice / PA per kind; ``box_ap[path][kind]`` the
    box-prompt ``{"AP", "AP50", "AP75"}`` (fractions; empty without box prompts); ``protocol`` the
    settings and counts.
    """

    kinds: tuple[str, ...]
    prompt_types: tuple[str, ...]
    paths: tuple[str, ...]
    meters: dict[tuple[str, str], SegmentationMeter]
    box_ap: dict[str, dict[str, dict[str, float]]]
    protocol: dict[str, Any] = field(default_factory=dict)
    clear_kind: str = CLEAR_KIND

    def box_ap_table(self, path: str) -> dict[str, dict[str, float]]:
        """``{"Degrade" | "Clear" | "Average": {"AP", "AP50", "AP75"}}`` of ``path`` (means of per-kind AP)."""
        return _summary(self.box_ap[path], AP_NAMES, self.clear_kind)

    def instance_iou(self, path: str, prompt_type: str) -> dict[str, np.ndarray]:
        """``{kind: N IoU values}``, one per evaluated instance, in the same instance order for every kind."""
        return {kind: np.asarray(values) for kind, values in self.meters[(path, prompt_type)].samples.items()}

    def paired_difference(self, prompt_type: str, path: str = "robust", baseline: str = "sam", n_resamples: int = 10_000,
                          seed: int = 0) -> dict[str, dict[str, float]]:
        """``path`` minus ``baseline`` IoU per summary row with a 95 % paired bootstrap interval, instances
        resampled: ``{"Degrade" | "Clear" | "Average": {"diff", "low", "high", "instances"}}`` (fractions).

        Every kind scores the same instances, so a row's difference (a mean over kinds of per-kind means)
        equals the mean over instances of each instance's difference averaged over the row's kinds."""
        ours, theirs = self.instance_iou(path, prompt_type), self.instance_iou(baseline, prompt_type)
        groups = {"Degrade": [k for k in self.kinds if k != self.clear_kind], "Clear": [self.clear_kind],
                  "Average": list(self.kinds)}
        rows = {}
        for row, kinds in groups.items():
            kinds = [kind for kind in kinds if kind in ours]
            if not kinds:
                continue
            per_instance = np.mean([ours[kind] - theirs[kind] for kind in kinds], axis=0)
            diff, low, high = paired_bootstrap_interval(per_instance, n_resamples, seed=seed)
            rows[row] = {"diff": diff, "low": low, "high": high, "instances": int(per_instance.size)}
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-able report: ``{"protocol", "kinds", "results": {path: {prompt_type: {"table", "per_kind"},
        "box_ap": {"table", "per_kind"}}}, "paired": {prompt_type: paired_difference(...)}}`` with
        fractions in [0, 1] and None for undefined rows (``paired`` only when both paths were evaluated)."""
        results: dict[str, Any] = {}
        for path in self.paths:
            results[path] = {prompt_type: self.meters[(path, prompt_type)].to_dict() for prompt_type in self.prompt_types}
            if self.box_ap.get(path):
                results[path]["box_ap"] = {"table": self.box_ap_table(path), "per_kind": self.box_ap[path]}
        report = {"protocol": self.protocol, "kinds": list(self.kinds), "results": results}
        if set(DECODER_PATHS) <= set(self.paths):
            report["paired"] = {prompt_type: self.paired_difference(prompt_type) for prompt_type in self.prompt_types}
        return _json_safe(report)

    def to_markdown(self) -> str:
        """The report: per prompt type a Table-2 block (rows SAM / RobustSAM; Degrade / Clear /
        Average for IoU and PA), the IoU per kind, and the box-prompt AP, all in percent."""
        protocol = self.protocol
        sections = [
            "# Prompted segmentation: SAM vs RobustSAM",
            (
                f"Protocol: {protocol.get('images', '?')} images, {protocol.get('instances', '?')} instances, "
                f"{len(self.kinds)} degradation kinds (identity = clear) at severity {protocol.get('severity', '?')}"
                + (f" with pixel sizes scaled to a {protocol['reference_size']:g}-px reference (degrade.reference_size)"
                   if protocol.get("reference_size") else " with the release's raw pixel sizes")
                + ", "
                f"seed {protocol.get('seed', '?')}; each instance prompted with "
                + " / ".join(f"{prompt_type}: {PROMPT_DESCRIPTIONS[prompt_type]}" for prompt_type in self.prompt_types)
                + "; single-mask output. Degrade = mean over the degraded kinds of each kind's mean, "
                "Clear = identity, Average = mean over all kinds. Values in percent."
            ),
        ]
        if protocol.get("model"):
            sections.append(f"Model: {protocol['model']}.")
        columns = [(row, metric) for row in SUMMARY_ROWS for metric in ("IoU", "PA")]
        for prompt_type in self.prompt_types:
            rows = []
            for path in self.paths:
                table = self.meters[(path, prompt_type)].table()
                rows.append([PATH_LABELS[path]] + [_percent(table[row][metric]) for row, metric in columns])
            header = ["Model"] + [f"{row} {metric}" for row, metric in columns]
            sections.append(f"## {prompt_type.capitalize()} prompts\n\n" + _markdown_table(header, rows))
        if set(DECODER_PATHS) <= set(self.paths):
            rows = []
            for prompt_type in self.prompt_types:
                paired = self.paired_difference(prompt_type)
                rows.append([prompt_type] + [
                    f"{100 * paired[row]['diff']:+.2f} [{100 * paired[row]['low']:+.2f}, {100 * paired[row]['high']:+.2f}]"
                    for row in SUMMARY_ROWS])
            sections.append(
                "## RobustSAM minus SAM\n\nIoU difference in points with its 95 % paired bootstrap interval "
                "(instances resampled, 10 000 times; each instance's difference averaged over the row's kinds).\n\n"
                + _markdown_table(["Prompt"] + [f"{row} IoU" for row in SUMMARY_ROWS], rows))
        per_kind = {key: meter.per_kind() for key, meter in self.meters.items()}
        keys = [(path, prompt_type) for prompt_type in self.prompt_types for path in self.paths]
        rows = [
            [kind] + [_percent(per_kind[key].get(kind, {}).get("IoU", math.nan)) for key in keys] for kind in self.kinds
        ]
        header = ["Degradation"] + [f"{PATH_LABELS[path]} {prompt_type} IoU" for path, prompt_type in keys]
        sections.append("## IoU per degradation\n\n" + _markdown_table(header, rows))
        ap_paths = [path for path in self.paths if self.box_ap.get(path)]
        if ap_paths:
            rows = []
            for path in ap_paths:
                table = self.box_ap_table(path)
                rows.append(
                    [PATH_LABELS[path]]
                    + [_percent(table[row]["AP"]) for row in SUMMARY_ROWS]
                    + [_percent(table["Average"][name]) for name in ("AP50", "AP75")]
                )
            header = ["Model", "Degrade AP", "Clear AP", "Average AP", "Average AP50", "Average AP75"]
            sections.append(
                "## Box-prompt mask AP\n\nClass-agnostic COCO mask AP of the box-prompted masks, scored by their "
                "predicted IoU, computed per kind and averaged like the tables above.\n\n"
                + _markdown_table(header, rows)
            )
        return "\n\n".join(sections) + "\n"

    def plot_iou_per_kind(self, path_png: str | Path, prompt_type: str = "point") -> Path:
        """Saves a bar chart of the mean IoU (%) per kind, one bar per decoder path side by side."""
        from matplotlib.figure import Figure  # object-oriented: no pyplot state, no GUI backend

        if prompt_type not in self.prompt_types:
            raise ValueError(f"no {prompt_type!r} prompts were evaluated (evaluated: {', '.join(self.prompt_types)})")
        path_png = Path(path_png)
        figure = Figure(figsize=(max(6.0, 0.6 * len(self.kinds) + 2.0), 4.5), layout="constrained")
        axes = figure.add_subplot()
        positions = np.arange(len(self.kinds))
        width = 0.8 / len(self.paths)
        for offset, path in enumerate(self.paths):
            per_kind = self.meters[(path, prompt_type)].per_kind()
            values = [100 * per_kind[kind]["IoU"] if kind in per_kind else math.nan for kind in self.kinds]
            shift = (offset - (len(self.paths) - 1) / 2) * width
            axes.bar(positions + shift, values, width, label=PATH_LABELS[path])
        axes.set_xticks(positions, self.kinds, rotation=45, ha="right")
        axes.set_xlabel("degradation")
        axes.set_ylabel("mean IoU (%)")
        axes.set_ylim(0, 100)
        axes.set_title(f"IoU per degradation ({prompt_type} prompts)")
        axes.legend()
        axes.grid(axis="y", alpha=0.3)
        figure.savefig(path_png, dpi=120)
        return path_png


def _checked_choices(values: Sequence[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """``values`` as a non-empty tuple of distinct members of ``allowed`` (ValueError otherwise)."""
    values = tuple(dict.fromkeys(values))
    unknown = [value for value in values if value not in allowed]
    if not values or unknown:
        raise ValueError(f"{what} must be a non-empty list of {', '.join(allowed)}; got {list(values)}")
    return values


def _instance_selection(masks: np.ndarray, min_area: int, max_instances: int | None) -> np.ndarray:
    """Indices (sorted) of the instances with >= ``min_area`` pixels, the ``max_instances`` largest if set."""
    areas = masks.reshape(masks.shape[0], -1).sum(axis=1)
    kept = [index for index in np.argsort(-areas, kind="stable") if areas[index] >= min_area]
    if max_instances is not None:
        kept = kept[:max_instances]
    return np.sort(np.asarray(kept, dtype=np.int64))


def evaluate_segmentation(
    model: RobustSAM,
    source: InstanceSource,
    kinds: Sequence[str] = DEGRADATIONS,
    prompt_types: Sequence[str] = PROMPT_TYPES,
    paths: Sequence[str] = DECODER_PATHS,
    seed: int = 0,
    severity: float = 1.0,
    max_instances_per_image: int | None = None,
    min_area: int = 1,
    progress: bool = True,
    reference_size: float | None = None,
) -> EvaluationResult:
    """Evaluates ``paths`` x ``prompt_types`` on every (image, kind) of ``source`` (module docstring).

    Instances with fewer than ``min_area`` pixels are skipped; ``max_instances_per_image`` keeps
    the largest ones. Images without an eligible instance are skipped (counted in the protocol).
    ``reference_size`` scales the degradations' pixel sizes to the image (:mod:`robustprior.data.degrade`).
    """
    kinds = _checked_choices(kinds, DEGRADATIONS, "kinds")
    prompt_types = _checked_choices(prompt_types, PROMPT_TYPES, "prompt types")
    paths = _checked_choices(paths, DECODER_PATHS, "paths")
    if max_instances_per_image is not None and max_instances_per_image < 1:
        raise ValueError(f"max_instances_per_image must be at least 1 or None, got {max_instances_per_image}")
    min_area = max(1, int(min_area))
    meters = {(path, prompt_type): SegmentationMeter(CLEAR_KIND) for path in paths for prompt_type in prompt_types}
    ground_truth: list[tuple[_PackedMasks, np.ndarray | None]] = []
    box_predictions: dict[str, dict[str, list[tuple[_PackedMasks, np.ndarray]]]] = {
        path: {kind: [] for kind in kinds} for path in paths
    }
    evaluated_images = skipped_images = instance_count = 0
    for index in tqdm(range(len(source)), desc="evaluate", unit="image", disable=not progress):
        record = source[index]
        selected = _instance_selection(record.masks, min_area, max_instances_per_image)
        if selected.size == 0:
            skipped_images += 1
            continue
        masks = record.masks[selected]
        point_coords = np.stack([center_point(mask) for mask in masks])
        boxes = np.stack([mask_to_box(mask) for mask in masks])
        evaluated_images += 1
        instance_count += len(masks)
        if "box" in prompt_types:
            ground_truth.append((_PackedMasks.pack(masks), record.ignore))
        for kind in kinds:
            image = degrade(record.image, kind, degradation_seed(seed, record.name, kind), severity, reference_size)
            predictions = predict_instance_masks(model, image, point_coords, boxes, prompt_types, paths)
            for (path, prompt_type), (predicted_masks, scores) in predictions.items():
                meters[(path, prompt_type)].update(kind, predicted_masks, masks, record.ignore)
                if prompt_type == "box":
                    box_predictions[path][kind].append((_PackedMasks.pack(predicted_masks), scores))
    if evaluated_images == 0:
        raise ValueError(f"the source has no instance with at least {min_area} pixels to evaluate")
    box_ap: dict[str, dict[str, dict[str, float]]] = {path: {} for path in paths}
    if "box" in prompt_types:
        gt_masks = [packed.unpack() for packed, _ in ground_truth]
        ignores = [ignore for _, ignore in ground_truth]
        for path in paths:
            for kind in kinds:
                image_predictions = [
                    ImagePredictions(packed.unpack(), scores) for packed, scores in box_predictions[path][kind]
                ]
                box_ap[path][kind] = box_prompt_ap(image_predictions, gt_masks, ignores)
    protocol = {
        "point_prompt": PROMPT_DESCRIPTIONS["point"] if "point" in prompt_types else None,
        "box_prompt": PROMPT_DESCRIPTIONS["box"] if "box" in prompt_types else None,
        "multimask_output": False,
        "seed": seed,
        "severity": severity,
        "reference_size": reference_size,
        "min_area": min_area,
        "max_instances_per_image": max_instances_per_image,
        "images": evaluated_images,
        "skipped_images": skipped_images,
        "instances": instance_count,
        "clear_kind": CLEAR_KIND,
    }
    return EvaluationResult(kinds, prompt_types, paths, meters, box_ap, protocol)


def _check_names(allowed: Sequence[str], what: str) -> Any:
    def check(values: str | list[str]) -> None:
        names = [values] if isinstance(values, str) else values
        unknown = [name for name in names if name not in allowed]
        if not names or unknown:
            raise ValueError(f"{what} must be {'all or ' if what == 'kinds' else ''}a non-empty list of "
                             f"{', '.join(allowed)}; got {values!r}")
    return check


def _check_kinds(kinds: str | list[str]) -> None:
    if kinds != "all":
        _check_names(DEGRADATIONS, "kinds")(kinds)


def _check_data_sections(data: dict) -> None:
    """``data``: named data sections (``test``, ``val``, ...; each null or a section of
    :mod:`robustprior.data.sources`)."""
    for name, section in data.items():
        if section is not None:
            check_source_config(section, section=f"data.{name}")


def _check_split(config: dict) -> None:
    """The section to evaluate exists: ``eval.split``, else ``data.test`` or ``data.val``."""
    _data_section(config, config["eval"]["split"])


EVAL_OPTIONS = Section({
    "split": Field(str, None, doc="the data section to evaluate; null: test, else val"),
    "kinds": Field((str, list), "all", items=str, check=_check_kinds, doc="all, a kind or a list of kinds"),
    "prompts": Field(list, list(PROMPT_TYPES), items=str, check=_check_names(PROMPT_TYPES, "prompts")),
    "paths": Field(list, list(DECODER_PATHS), items=str, check=_check_names(DECODER_PATHS, "paths")),
    "seed": Field(int, 0, at_least=0, doc="degradation seeds derive from (seed, image name, kind)"),
    "severity": Field(float, 1.0, at_least=0),
    "reference_size": Field(float, None, above=0, doc="pixel sizes scaled to the image; null: raw"),
    "min_area": Field(int, 1, at_least=1),
    "max_instances_per_image": Field(int, None, at_least=1, doc="null: every instance"),
    "device": Field(str, "cpu", check=check_device_name),
})

EVAL_SCHEMA = Section({
    "model": {
        "type": Field(str, None, choices=tuple(MODEL_CONFIGS), doc="null: from the checkpoint (bundled: tiny)"),
        "checkpoint": Field(str, None, doc="file path or known name; --checkpoint overrides it; null: bundled tiny"),
        "fourier_mode": Field(str, None, choices=FOURIER_MODES, doc="null: what the checkpoint says"),
        "allow_untrained_robust": Field(bool, False, doc="evaluate a model whose robust parts are untrained"),
    },
    "data": Field(dict, REQUIRED, check=_check_data_sections, doc="data sections by name (test, val, ...)"),
    "eval": EVAL_OPTIONS,
}, check=_check_split)


def load_eval_config(path: str | Path) -> dict:
    """An evaluation YAML file validated against :data:`EVAL_SCHEMA` (defaults filled in): an unknown
    key, a wrong type or an out-of-range value is one :class:`~robustprior.training.ConfigError`."""
    return load_config(path, EVAL_SCHEMA)


def _evaluation_options(eval_config: Mapping[str, Any]) -> dict[str, Any]:
    """``evaluate_segmentation`` keyword arguments from a config's ``eval`` section."""
    eval_config = validate_config(eval_config, EVAL_OPTIONS, source="eval")
    kinds = eval_config["kinds"]
    return {
        "kinds": DEGRADATIONS if kinds == "all" else ([kinds] if isinstance(kinds, str) else kinds),
        "prompt_types": eval_config["prompts"],
        "paths": eval_config["paths"],
        "seed": eval_config["seed"],
        "severity": eval_config["severity"],
        "reference_size": eval_config["reference_size"],
        "min_area": eval_config["min_area"],
        "max_instances_per_image": eval_config["max_instances_per_image"],
    }


def _data_section(config: Mapping[str, Any], split: str | None) -> tuple[str, Mapping[str, Any]]:
    """(name, section) of the data to evaluate: ``data[split]``, by default ``data.test`` else ``data.val``."""
    data = config.get("data")
    if not isinstance(data, Mapping):
        raise ValueError("the config has no 'data' section")
    candidates = [split] if split is not None else ["test", "val"]
    for name in candidates:
        if data.get(name) is not None:
            return f"data.{name}", data[name]
    raise ValueError(f"the config has no data.{' or data.'.join(candidates)} section to evaluate")


def _load_model(config: Mapping[str, Any], checkpoint: str | None, device: str) -> tuple[RobustSAM, ModelSource]:
    """The model of a validated ``config["model"]`` (``checkpoint`` overrides ``model.checkpoint``) and its source.

    ``model.allow_untrained_robust: true`` evaluates a model whose robust parts are untrained (e.g.
    a SAM checkpoint); otherwise such a model is refused, as everywhere (:func:`robustprior.load.load_model`)."""
    model_config = config["model"]
    checkpoint = checkpoint if checkpoint is not None else model_config["checkpoint"]
    model_type = model_config["type"]
    if checkpoint is None and model_type not in (None, "tiny"):
        raise ValueError(
            f"model.type {model_type!r} needs a checkpoint (--checkpoint or model.checkpoint); "
            "only 'tiny' has bundled weights"
        )
    return load_model(checkpoint, model_type, fourier_mode=model_config.get("fourier_mode"), device=device,
                      allow_untrained_robust=bool(model_config.get("allow_untrained_robust", False)))


def _is_generated_data(section: Mapping[str, Any]) -> bool:
    """Whether a data section holds generated scenes (``format: scenes``, or a folder written by
    :mod:`robustprior.data.scenes`, which carries its marker)."""
    if section.get("format", "scenes") == "scenes":
        return True
    root = section.get("root") or section.get("image_root")
    return root is not None and is_generated_scene_file(Path(root) / "_")


def run_evaluation(
    config: Mapping[str, Any],
    checkpoint: str | None,
    output_dir: Path,
    overwrite: bool = False,
    *,
    cache_root: Path | None = None,
    progress: bool = True,
) -> EvaluationResult:
    """Evaluates the config's model on ``data.test`` (or ``data.val``; ``eval.split`` picks another).

    Writes ``report.md``, ``report.json``, ``iou_per_degradation.png`` (point prompts, else box) and
    ``config.yaml`` (the config with the checkpoint actually used) into ``output_dir``; raises
    FileExistsError before any work when one of them exists and ``overwrite`` is False.
    ``cache_root`` receives generated scenes (see :func:`robustprior.data.sources.build_instance_source`).
    """
    config = validate_config(config, EVAL_SCHEMA)
    output_dir = Path(output_dir)
    existing = [output_dir / name for name in REPORT_FILES if (output_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(map(str, existing))} already exist(s); pass overwrite (--overwrite) to replace"
        )
    eval_config = config["eval"]
    options = _evaluation_options(eval_config)
    device = str(resolve_device(eval_config["device"]))  # a missing GPU: an error before any work
    section_name, section = _data_section(config, eval_config["split"])
    source = build_instance_source(section, cache_root, section=section_name, progress=progress)
    model, model_source = _load_model(config, checkpoint, device)
    if not _is_generated_data(section):
        model_source.warn_outside_domain("robust")
    used_checkpoint = checkpoint if checkpoint is not None else config["model"]["checkpoint"]
    used_checkpoint = None if used_checkpoint is None else str(used_checkpoint)
    result = evaluate_segmentation(model, source, **options, progress=progress)
    result.protocol.update({"data": section_name, "checkpoint": used_checkpoint,
                            "model": model_source.describe("robust"), "model_file": str(model_source.path)})
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "report.md").write_text(result.to_markdown())
    (output_dir / "report.json").write_text(json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n")
    plotted_prompt = "point" if "point" in result.prompt_types else result.prompt_types[0]
    result.plot_iou_per_kind(output_dir / "iou_per_degradation.png", plotted_prompt)
    used_config = copy.deepcopy(config)
    used_config["model"]["checkpoint"] = used_checkpoint
    (output_dir / "config.yaml").write_text(yaml.safe_dump(used_config, sort_keys=False))
    return result
