"""A restoration network scored on a test set: PSNR / SSIM per image and overall, restored images saved.

:meth:`restoration.train.RestorationTrainer.evaluate` runs it on rank 0 after training and for the
periodic validations.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from restoration.datasets import PriorPairedDataset
from restoration.metrics import MetricAccumulator, psnr, tensor_to_uint8
from robustprior.io.mask_outputs import write_png

__all__ = ["evaluate_test_set"]

Restore = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"], torch.Tensor]


@torch.no_grad()
def evaluate_test_set(restore: Restore, test_set: PriorPairedDataset, *, ssim_kind: str, run_dir: str | Path,
                      image_folder: str | None = "images", max_images: int | None = None, description: str = "test",
                      progress: bool = True) -> dict[str, Any]:
    """PSNR / SSIM (:class:`~restoration.metrics.MetricAccumulator`, SSIM of kind ``ssim_kind``) of
    ``restore(lq 1 x 3 x H x W, label_map 1 x H x W | None, features 1 x C x h x w | None) -> 1 x 3 x H x W``
    on the full images of ``test_set`` (its first ``max_images`` when given).

    Restored images are written as PNG (atomically) to ``run_dir / image_folder / <key>.png`` unless
    ``image_folder`` is None. Returns ``MetricAccumulator.to_dict()``; per-image records add
    ``lq_path``, ``gt_path``, ``output``, ``segments`` and the degraded input's own ``input_psnr`` /
    ``input_ssim`` (ground truth cropped by the one crop rule,
    :func:`restoration.paired_data.match_clean_size`).
    """
    accumulator = MetricAccumulator(ssim_kind=ssim_kind)
    count = len(test_set) if max_images is None else min(int(max_images), len(test_set))
    for index in tqdm(range(count), desc=description, unit="image", disable=not progress):
        item = test_set[index]
        prior = item.get("prior", {})
        label_map = prior["label_map"][None] if "label_map" in prior else None
        features = prior["features"][None] if "features" in prior else None
        restored = tensor_to_uint8(restore(item["lq"][None], label_map, features))
        target, degraded = tensor_to_uint8(item["gt"]), tensor_to_uint8(item["lq"])
        record = accumulator.update(restored, target, name=item["key"])
        record.update(lq_path=item["lq_path"], gt_path=item["gt_path"],
                      segments=int(label_map.max()) if label_map is not None else None,
                      input_psnr=psnr(degraded, target),
                      input_ssim=accumulator.score_ssim(degraded, target))
        if image_folder is not None:
            output = Path(image_folder) / f"{item['key']}.png"
            write_png(Path(run_dir) / output, restored)
            record["output"] = output.as_posix()
    return accumulator.to_dict()
