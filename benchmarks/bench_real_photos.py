"""The bundled tiny models on real photos, against trivial baselines, side by side in one run.

    python benchmarks/bench_real_photos.py [--root ../shared/data/voc-instances/voc] [--out results.json]
                                           [--card robustprior/weights/robustsam_tiny.md ...]

Data: the PASCAL VOC photos with instance masks in ``../shared/data/voc-instances`` (3 images, 12
objects; VOC's void border pixels ignored). Per object, mean IoU of

* a centre click (:func:`robustprior.data.prompts.center_point`): SAM-tiny and RobustSAM-tiny, single-mask
  output (what ``robustprior segment --points`` writes) and the best-scored of three masks
  (``--multimask``), against a **square around the click**: of a quarter of the image's short side
  (blind to the object), and of the object's own area (side ``sqrt(area)``; told the object's size),
  both clipped to the image;
* the tight box (:func:`robustprior.data.prompts.mask_to_box`): both models (single mask) against **the box
  itself as the mask**.

A model that does not beat these baselines does not segment those photos: that is what the bundled
models' honesty warning says (they know generated scenes only). ``--card`` writes the table into the
``## On real photos`` section of the given model cards.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from robustprior.evaluation.amg_settings import replace_card_section  # noqa: E402
from robustprior.io.atomic import write_text_atomically  # noqa: E402
from robustprior.data.datasets import InstanceMaskFolder  # noqa: E402
from robustprior.load import REAL_PHOTO_ADVICE  # noqa: E402
from robustprior.evaluation.evaluate import predict_instance_masks  # noqa: E402
from robustprior.load import load_model  # noqa: E402
from robustprior.evaluation.metrics import mask_iou  # noqa: E402
from robustprior.predictor import RobustSAMPredictor  # noqa: E402
from robustprior.data.prompts import center_point, mask_to_box  # noqa: E402

SHARED_DATA = Path(os.environ.get("ROBUSTPRIOR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
LABELS = {"sam": "SAM-tiny", "robust": "RobustSAM-tiny"}


def square_around(point: np.ndarray, area: int, shape: tuple[int, int]) -> np.ndarray:
    """An ``H x W`` bool square of side ``round(sqrt(area))`` centred on ``point`` (x, y), clipped."""
    half = max(1, round(np.sqrt(area))) / 2
    x, y = point
    mask = np.zeros(shape, dtype=bool)
    mask[max(0, round(y - half)):max(0, round(y + half)), max(0, round(x - half)):max(0, round(x + half))] = True
    return mask


def box_mask(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The inclusive XYXY ``box`` filled, as an ``H x W`` bool mask."""
    x0, y0, x1, y1 = (int(v) for v in box)
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1 + 1, x0:x1 + 1] = True
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=SHARED_DATA / "voc-instances" / "voc")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON")
    parser.add_argument("--card", type=Path, nargs="*", default=[], help="model cards to write the table into")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    model, source = load_model("tiny")
    rows: dict[str, list[float]] = {}

    def add(name: str, values) -> None:
        rows.setdefault(name, []).extend(float(v) for v in np.atleast_1d(values))

    records = InstanceMaskFolder.voc(arguments.root)
    for index in range(len(records)):
        record = records[index]
        shape = record.image.shape[:2]
        points = np.stack([center_point(mask) for mask in record.masks])
        boxes = np.stack([mask_to_box(mask) for mask in record.masks])
        predictions = predict_instance_masks(model, record.image, points, boxes)
        for path, label in LABELS.items():
            add(f"centre click, {label}, single mask", mask_iou(predictions[(path, "point")][0], record.masks, record.ignore))
            add(f"tight box, {label}, single mask", mask_iou(predictions[(path, "box")][0], record.masks, record.ignore))
            predictor = RobustSAMPredictor(model, path=path)
            predictor.set_image(record.image)
            for point, mask in zip(points, record.masks):
                masks, scores, _ = predictor.predict(point[None], np.ones(1), multimask_output=True)
                add(f"centre click, {label}, best of 3", mask_iou(masks[int(np.argmax(scores))], mask, record.ignore))
        for point, box, mask in zip(points, boxes, record.masks):
            add("centre click, baseline: square of side 1/4 of the short image side around the click",
                mask_iou(square_around(point, round(min(shape) / 4) ** 2, shape), mask, record.ignore))
            add("centre click, baseline: square of the object's area around the click",
                mask_iou(square_around(point, int(mask.sum()), shape), mask, record.ignore))
            add("tight box, baseline: the box itself as the mask", mask_iou(box_mask(box, shape), mask, record.ignore))

    objects = len(next(iter(rows.values())))
    table = "| prompt, model | mean IoU |\n|---|---|\n" + "".join(
        f"| {name} | {np.mean(values):.3f} |\n" for name, values in rows.items())
    print(f"{source.describe('robust')} on {arguments.root} ({len(records)} photos, {objects} objects); mean IoU:\n")
    print(table)
    section = (
        "## On real photos\n\n"
        f"Trained on generated scenes only: on real photos the masks are no better than trivial shapes. "
        f"{len(records)} PASCAL VOC photos with instance masks (`../shared/data/voc-instances`, {objects} objects, "
        f"VOC's void border ignored), mean IoU per object, measured on `{source.path.name}`: its SAM decoder path is "
        "SAM-tiny (the same SAM weights as `sam_tiny.safetensors`), its RobustSAM decoder path RobustSAM-tiny:\n\n"
        + table + "\n"
        "Every command and `from_pretrained(\"tiny\")` says so in one line when this model meets input that is not a "
        f"generated scene: {REAL_PHOTO_ADVICE}. Reproduce: `python benchmarks/bench_real_photos.py --card "
        + " ".join(card.as_posix() for card in arguments.card) + "`.\n")
    for card in arguments.card:
        write_text_atomically(card, replace_card_section(card.read_text(), section))
        card.chmod(0o644)
        print(f"[robustprior] wrote the table into {card}")
    if arguments.out:
        arguments.out.write_text(json.dumps({"objects": objects, "mean_iou": {k: float(np.mean(v)) for k, v in rows.items()},
                                             "per_object": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
