"""Segmentation masks as structure priors for image restoration.

Masks are carried as a **label map**: an integer map (``H x W``, or ``B x H x W`` when batched) where
0 means "covered by no mask" and ``k >= 1`` means "belongs to region k". :func:`masks_to_label_map`
builds one from a stack of (possibly overlapping) binary masks such as SAM's automatic generator
returns; every other function here consumes label maps and is vectorised over regions
(``scatter_add`` / ``bincount``, no Python loop over regions).

* :func:`structure_map`: SAM-Deblur's image-domain prior (each region filled with its mean colour).
* :func:`region_mean_pool`: the pooling of SAM-Deblur's Mask Average Pooling (MAP) unit.
* :func:`grayscale_segment_coding`: the one-channel mask coding of SAM-guided dehazing (Jin et al. 2023).
* :func:`drop_masks`: SAM-Deblur's mask dropout.
* :func:`resample_prior_features`: aligns a low-resolution prior feature map (e.g. a SAM embedding)
  with a grid over the image or over a tile of it.
"""
from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

MaskArray = TypeVar("MaskArray", np.ndarray, torch.Tensor)


def masks_to_label_map(masks: MaskArray) -> MaskArray:
    """Turn ``K x H x W`` binary masks into an ``H x W`` int64 label map of the same kind.

    Masks are painted from the largest area to the smallest, so each pixel gets the label of the
    smallest mask covering it; label ``k + 1`` stands for ``masks[k]`` (a mask entirely hidden by
    smaller ones leaves no pixel with its label). Equal areas: the later mask in the input wins.
    Pixels covered by no mask get 0; ``K = 0`` gives all zeros. Any nonzero value counts as
    "inside". A numpy input gives a numpy array, a tensor gives a tensor on the same device.
    """
    if not isinstance(masks, (np.ndarray, torch.Tensor)):
        raise TypeError(f"masks must be a numpy array or a torch tensor, got {type(masks).__name__}")
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape K x H x W, got shape {tuple(masks.shape)}")
    binary = masks != 0
    if isinstance(binary, np.ndarray):
        label_map = np.zeros(binary.shape[1:], dtype=np.int64)
        paint_order = np.argsort(-binary.sum(axis=(1, 2)), kind="stable").tolist()
    else:
        label_map = torch.zeros(binary.shape[1:], dtype=torch.int64, device=masks.device)
        paint_order = torch.argsort(-binary.sum(dim=(1, 2)), stable=True).tolist()
    # One full-image assignment per mask (not per region of the output): memory stays O(H x W).
    for mask_index in paint_order:
        label_map[binary[mask_index]] = mask_index + 1
    return label_map


def _check_label_map(label_map: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """Validate a ``B x H x W`` integer label map against features of size B x . x H x W; returns it as long."""
    if label_map.dtype.is_floating_point or label_map.dtype == torch.bool or label_map.is_complex():
        raise TypeError(f"label_map must have an integer dtype, got {label_map.dtype}")
    if tuple(label_map.shape) != (batch, height, width):
        raise ValueError(
            f"label_map shape {tuple(label_map.shape)} does not match B x H x W = {(batch, height, width)}"
        )
    label_map = label_map.long()
    if label_map.numel() and int(label_map.min()) < 0:
        raise ValueError("label_map must be non-negative (0 = uncovered, 1..K = regions)")
    return label_map


def region_mean_pool(
    features: torch.Tensor,
    label_map: torch.Tensor,
    uncovered: Literal["mean", "keep"] = "mean",
) -> torch.Tensor:
    """Replace every channel inside every region by its mean there (the MAP unit's pooling).

    ``features``: B x C x H x W float; ``label_map``: B x H x W integer (0 = uncovered). Returns
    B x C x H x W. Uncovered pixels (label 0) get the mean over all uncovered pixels of their sample
    (``uncovered="mean"``, SAM-Deblur's MAP unit) or keep their input (``uncovered="keep"``, the
    structure map). Differentiable with respect to ``features``.
    """
    if features.ndim != 4 or not features.dtype.is_floating_point:
        raise ValueError(f"features must be a float B x C x H x W tensor, got {features.dtype} {tuple(features.shape)}")
    if uncovered not in ("mean", "keep"):
        raise ValueError(f"uncovered must be 'mean' or 'keep', got {uncovered!r}")
    batch, channels, height, width = features.shape
    labels = _check_label_map(label_map, batch, height, width).to(features.device).reshape(batch, 1, height * width)
    num_labels = int(labels.max()) + 1 if labels.numel() else 1
    flat = features.reshape(batch, channels, height * width)
    index = labels.expand(batch, channels, height * width)
    sums = flat.new_zeros(batch, channels, num_labels).scatter_add(2, index, flat)
    counts = flat.new_zeros(batch, 1, num_labels).scatter_add(2, labels, torch.ones_like(labels, dtype=flat.dtype))
    means = sums / counts.clamp_min(1)
    pooled = means.gather(2, index)
    if uncovered == "keep":
        pooled = torch.where(index > 0, pooled, flat)
    return pooled.reshape(batch, channels, height, width)


def structure_map(image: MaskArray, label_map: MaskArray) -> MaskArray:
    """SAM-Deblur's structure map: each region (label > 0) filled with the image's mean colour there.

    Uncovered pixels (label 0) keep the input. numpy: ``image`` H x W x C (uint8 or float) with an
    H x W label map; uint8 means are rounded half to even (``np.rint``) and the result is uint8,
    float input keeps its dtype (means accumulated in float64). torch: ``image`` B x C x H x W float
    with a B x H x W label map (or C x H x W with H x W); means accumulated in the image's dtype.
    """
    if isinstance(image, torch.Tensor):
        if not isinstance(label_map, torch.Tensor):
            raise TypeError("a tensor image needs a tensor label_map")
        if image.ndim == 3:
            return region_mean_pool(image[None], label_map[None], uncovered="keep")[0]
        return region_mean_pool(image, label_map, uncovered="keep")
    if not isinstance(image, np.ndarray) or not isinstance(label_map, np.ndarray):
        raise TypeError("image and label_map must both be numpy arrays or both torch tensors")
    if image.ndim != 3 or label_map.shape != image.shape[:2]:
        raise ValueError(f"need an H x W x C image and an H x W label map, got {image.shape} and {label_map.shape}")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise TypeError(f"label_map must have an integer dtype, got {label_map.dtype}")
    if label_map.size and label_map.min() < 0:
        raise ValueError("label_map must be non-negative (0 = uncovered, 1..K = regions)")
    height, width, channels = image.shape
    labels = label_map.reshape(-1).astype(np.int64)
    num_labels = int(labels.max()) + 1 if labels.size else 1
    pixels = image.reshape(-1, channels).astype(np.float64)
    # One bincount over (label, channel) pairs: bin = label * C + channel.
    bins = (labels[:, None] * channels + np.arange(channels)[None, :]).reshape(-1)
    sums = np.bincount(bins, weights=pixels.reshape(-1), minlength=num_labels * channels).reshape(num_labels, channels)
    counts = np.bincount(labels, minlength=num_labels)
    means = sums / np.maximum(counts, 1)[:, None]
    filled = np.where(labels[:, None] > 0, means[labels], pixels)
    if image.dtype == np.uint8:
        filled = np.clip(np.rint(filled), 0, 255)
    return filled.astype(image.dtype).reshape(height, width, channels)


def grayscale_segment_coding(label_map: torch.Tensor, num_segments: int | None = None) -> torch.Tensor:
    """One-channel mask coding of SAM-guided dehazing: B x H x W labels -> B x 1 x H x W float in [0, 1].

    Segment ``k`` (label k >= 1) gets the grey level ``max(1, round(255 * k / num_segments))`` (half
    rounded up), i.e. the segment index spread over 0..255 as an 8-bit mask image would store it,
    divided by 255; uncovered pixels (label 0) are 0. ``num_segments`` defaults to each sample's
    largest label. Pass the full image's value when coding a crop or tile, so that a segment keeps
    its grey level. With more than 255 segments neighbouring segments share grey levels.
    """
    if label_map.ndim != 3:
        raise ValueError(f"label_map must have shape B x H x W, got {tuple(label_map.shape)}")
    batch, height, width = label_map.shape
    labels = _check_label_map(label_map, batch, height, width).reshape(batch, height * width)
    if num_segments is None:
        segments = labels.amax(dim=1, keepdim=True).clamp_min(1) if labels.numel() else labels.new_ones(batch, 1)
    else:
        if labels.numel() and int(labels.max()) > num_segments:
            raise ValueError(f"label {int(labels.max())} exceeds num_segments={num_segments}")
        segments = labels.new_full((batch, 1), max(1, num_segments))
    level = torch.div(255 * labels + segments // 2, segments, rounding_mode="floor").clamp_min(1) * (labels > 0)
    return (level.to(torch.float32) / 255.0).reshape(batch, 1, height, width)


def drop_masks(label_map: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """SAM-Deblur's mask dropout: each region of each sample set to 0 (uncovered) with probability ``p``.

    ``label_map``: B x H x W integer. Regions are dropped independently (Bernoulli(p) per sample and
    label), so with ``p = 0.5`` half the masks of a sample are dropped in expectation; dropped pixels
    join the uncovered group. Deterministic for a given seeded ``generator`` (global RNG when None;
    the draw is made on the generator's device). Returns a new B x H x W long tensor.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability must lie in [0, 1], got {p}")
    if label_map.ndim != 3:
        raise ValueError(f"label_map must have shape B x H x W, got {tuple(label_map.shape)}")
    batch, height, width = label_map.shape
    labels = _check_label_map(label_map, batch, height, width)
    num_labels = int(labels.max()) + 1 if labels.numel() else 1
    draw_device = generator.device if generator is not None else labels.device
    keep = torch.rand(batch, num_labels, generator=generator, device=draw_device) >= p
    keep = keep.to(labels.device)
    return labels * keep.gather(1, labels.reshape(batch, -1)).reshape(batch, height, width)


def resample_prior_features(
    features: torch.Tensor,
    image_size: tuple[int, int],
    output_size: tuple[int, int],
    region: tuple[float, float, float, float] | None = None,
) -> torch.Tensor:
    """Bilinearly sample a prior feature map over a region of the image it describes.

    ``features``: B x C x h x w covering the whole ``image_size = (H, W)`` image (any h, w, e.g. a
    64 x 64 SAM embedding). ``region = (top, left, height, width)`` in image pixels (default: the whole
    image; it may extend past the image, where the border is replicated) is divided into an
    ``output_size = (oh, ow)`` grid of cells and the features are sampled at the cell centres
    (``align_corners=False`` geometry, as :func:`torch.nn.functional.interpolate`). Returns B x C x oh x ow.
    Sampling a sub-region gives exactly the matching crop of sampling the whole image on the same grid.
    """
    if features.ndim != 4 or not features.dtype.is_floating_point:
        raise ValueError(f"features must be a float B x C x h x w tensor, got {features.dtype} {tuple(features.shape)}")
    image_height, image_width = image_size
    top, left, region_height, region_width = region if region is not None else (0.0, 0.0, image_height, image_width)
    out_height, out_width = output_size
    kwargs = {"device": features.device, "dtype": torch.float64}
    centres_y = top + (torch.arange(out_height, **kwargs) + 0.5) * (region_height / out_height)
    centres_x = left + (torch.arange(out_width, **kwargs) + 0.5) * (region_width / out_width)
    grid_y = (2.0 * centres_y / image_height - 1.0)[:, None].expand(out_height, out_width)
    grid_x = (2.0 * centres_x / image_width - 1.0)[None, :].expand(out_height, out_width)
    grid = torch.stack((grid_x, grid_y), dim=-1).unsqueeze(0).expand(features.shape[0], -1, -1, -1)
    return F.grid_sample(features, grid.to(features.dtype), mode="bilinear", padding_mode="border", align_corners=False)
