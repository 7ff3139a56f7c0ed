"""One image through a restoration network: the prior batch it reads, whole or as overlapping tiles.

Shared by the trainer's evaluation (:meth:`restoration.train.RestorationTrainer.restore`) and a
finished run read back (:meth:`restoration.trained_run.TrainedRun.restore_file`).
"""
from __future__ import annotations

import torch
from torch import nn

from restoration.archs import PriorBatch
from restoration.tiling import tiled_forward

__all__ = ["prior_batch", "restore_image", "size_multiple"]


def size_multiple(network: nn.Module) -> int:
    """The input-size multiple of a U-Net (``2**levels``), for tiling."""
    backbone = getattr(network, "backbone", network)
    return 2 ** getattr(backbone, "num_levels", 0)


def prior_batch(label_map: torch.Tensor | None, features: torch.Tensor | None,
                grey_scale: int | None) -> PriorBatch | None:
    """The :data:`~restoration.archs.PriorBatch` of B x H x W labels, B x C x h x w features and a run's
    grey-level scale (None when there is no prior)."""
    prior: dict[str, torch.Tensor] = {}
    if label_map is not None:
        prior["label_map"] = label_map
        if grey_scale is not None:
            prior["grey_scale"] = torch.full((label_map.shape[0],), grey_scale, dtype=torch.int64,
                                             device=label_map.device)
    if features is not None:
        prior["features"] = features
    return prior or None  # type: ignore[return-value]


@torch.no_grad()
def restore_image(network: nn.Module, image: torch.Tensor, label_map: torch.Tensor | None = None,
                  features: torch.Tensor | None = None, *, grey_scale: int | None = None, tile: int | None = None,
                  overlap: int = 32, device: torch.device | str = "cpu") -> torch.Tensor:
    """Restore one image with an eval-mode ``network``: 1 x 3 x H x W -> 1 x 3 x H x W on the CPU.

    ``label_map`` 1 x H x W (the prior's regions, :meth:`restoration.datasets.PriorIndex.label_map`);
    ``features`` 1 x C x h x w over the image; ``grey_scale`` the run's grey-level scale. Images with a
    side above ``tile`` run as overlapping tiles (:func:`restoration.tiling.tiled_forward`)."""
    def model_function(image_part: torch.Tensor, labels: torch.Tensor | None,
                       feature_part: torch.Tensor | None) -> torch.Tensor:
        return network(image_part, prior_batch(labels, feature_part, grey_scale))

    if tile and max(image.shape[-2:]) > tile:
        return tiled_forward(model_function, image.cpu(), label_map, features, tile=tile, overlap=overlap,
                             multiple=size_multiple(network), device=device)
    inputs = [tensor.to(device) if tensor is not None else None for tensor in (image, label_map, features)]
    return model_function(*inputs).cpu()
