"""Overlapping-tile inference for fully-convolutional restoration networks on large images.

Windows of ``tile x tile`` pixels start every ``tile - overlap`` pixels from the top-left corner;
the last window of a row/column is cut at the image border (an image side shorter than ``tile`` is
one window). With ``tile`` and ``overlap`` multiples of the network's size multiple (2**levels), every
window lies on the untiled network's downsampling grid, and the only windows the network pads
internally are cut at the bottom/right border, where the untiled network pads as well.

Each window's output is weighted by a separable profile that is 0 in the ``overlap // 4`` pixels
next to an edge shared with another window, ramps linearly to 1 across the rest of the shared
strip, and is 1 elsewhere (the image border counts as no neighbour); weighted outputs are summed
and normalised by the summed weights. Consequence: a network whose output at a pixel depends only on
inputs within ``r`` pixels gives exactly its untiled output when ``overlap // 4 >= r``.

Approximations: image-level operations run per window. NAFNet's global channel attention sees window
statistics (its test-time local pooling is the matching remedy); region priors (structure map, MAP
unit) average each region over its part inside the window; the grayscale coding keeps its levels only
when given the full image's ``num_segments``; prior feature maps of another resolution than the image
are resampled over each window's footprint and then again inside the network (two bilinear steps).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from robustprior.data.structure import resample_prior_features


def _tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """``(start, length)`` of the windows along one axis: starts ``0, s, 2s, ...`` with stride
    ``s = tile - overlap``, the last window cut at the border (shorter than ``tile``)."""
    spans, start = [], 0
    while True:
        end = min(start + tile, size)
        spans.append((start, end - start))
        if end == size:
            return spans
        start += tile - overlap


def _axis_weights(spans: list[tuple[int, int]], discard: int) -> list[torch.Tensor]:
    """Blending profile (float64, one per window) along one axis."""

    def ramp(distance_from_edge: torch.Tensor, shared: int) -> torch.Tensor:
        # 0 for the `discard` pixels at the edge, then linear to 1 across the `shared` strip less its
        # far `discard` pixels; the two windows sharing a strip have profiles summing to 1 there.
        return ((distance_from_edge - discard + 1) / (shared - 2 * discard + 1)).clamp(0.0, 1.0)

    profiles = []
    for index, (start, length) in enumerate(spans):
        positions = torch.arange(length, dtype=torch.float64)
        profile = torch.ones(length, dtype=torch.float64)
        if index > 0:
            previous_start, previous_length = spans[index - 1]
            profile = torch.minimum(profile, ramp(positions, previous_start + previous_length - start))
        if index < len(spans) - 1:
            profile = torch.minimum(profile, ramp(length - 1 - positions, start + length - spans[index + 1][0]))
        profiles.append(profile)
    return profiles


def _crop_aux(
    aux: torch.Tensor | None, image_size: tuple[int, int], top: int, left: int, height: int, width: int
) -> torch.Tensor | None:
    """The part of an auxiliary map under one window.

    Maps of the image's size (label maps B x H x W, per-pixel maps B x C x H x W) are cropped.
    Float maps of another size (prior features B x C x h x w covering the image) are resampled over
    the window's footprint at their own density, ``round(height * h / H) x round(width * w / W)``.
    """
    if aux is None:
        return None
    if tuple(aux.shape[-2:]) == image_size:
        return aux[..., top : top + height, left : left + width]
    if aux.ndim != 4 or not aux.dtype.is_floating_point:
        raise ValueError(
            f"auxiliary map of shape {tuple(aux.shape)} neither matches the image size {image_size} "
            "nor is a float B x C x h x w feature map"
        )
    feature_height, feature_width = aux.shape[-2:]
    output_size = (
        max(1, round(height * feature_height / image_size[0])),
        max(1, round(width * feature_width / image_size[1])),
    )
    return resample_prior_features(aux, image_size, output_size, region=(top, left, height, width))


def tiled_forward(
    model_fn: Callable[..., torch.Tensor],
    image: torch.Tensor,
    *aux_maps: torch.Tensor | None,
    tile: int = 512,
    overlap: int = 32,
    multiple: int = 16,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Run ``model_fn(image_tile, *aux_tiles)`` over overlapping tiles and blend: B x C x H x W -> B x C' x H x W.

    ``image``: B x C x H x W (typically 1 x 3 x H x W). ``aux_maps``: per-image inputs passed after
    the image, cropped or resampled per window (see :func:`_crop_aux`); ``None`` passes through.
    ``tile`` and ``overlap`` must be multiples of ``multiple`` (the network's size multiple,
    2**levels; 1 for networks without downsampling). One window is processed at a time under ``torch.no_grad``
    on ``device`` (default: the image's device); the blended result stays on the image's device.
    Put the model in eval mode first.
    """
    if image.ndim != 4:
        raise ValueError(f"image must have shape B x C x H x W, got {tuple(image.shape)}")
    if multiple <= 0 or tile <= 0 or tile % multiple or overlap % multiple:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of multiple ({multiple})")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must lie in [0, tile), got {overlap}")
    height, width = image.shape[-2:]
    device = torch.device(device) if device is not None else image.device
    row_spans, column_spans = _tile_spans(height, tile, overlap), _tile_spans(width, tile, overlap)
    discard = overlap // 4
    row_weights, column_weights = _axis_weights(row_spans, discard), _axis_weights(column_spans, discard)

    output: torch.Tensor | None = None
    weight_sum = torch.zeros(height, width, dtype=torch.float64, device=image.device)
    with torch.no_grad():
        for (top, tile_height), row_weight in zip(row_spans, row_weights):
            for (left, tile_width), column_weight in zip(column_spans, column_weights):
                window = (top, left, tile_height, tile_width)
                image_tile = image[..., top : top + tile_height, left : left + tile_width].to(device)
                aux_tiles = [_crop_aux(aux, (height, width), *window) for aux in aux_maps]
                aux_tiles = [aux.to(device) if aux is not None else None for aux in aux_tiles]
                restored = model_fn(image_tile, *aux_tiles)
                if restored.ndim != 4 or tuple(restored.shape[-2:]) != (tile_height, tile_width):
                    raise ValueError(
                        f"model output {tuple(restored.shape)} does not match the tile {(tile_height, tile_width)}"
                    )
                if output is None:
                    output = torch.zeros(
                        *restored.shape[:2], height, width, dtype=restored.dtype, device=image.device
                    )
                weight = torch.outer(row_weight, column_weight).to(image.device)
                weighted = restored.to(image.device) * weight.to(restored.dtype)
                output[..., top : top + tile_height, left : left + tile_width] += weighted
                weight_sum[top : top + tile_height, left : left + tile_width] += weight
                del restored, weighted, image_tile, aux_tiles
    assert output is not None
    if not bool((weight_sum > 0).all()):
        raise RuntimeError("tile blending left pixels without weight; increase tile or decrease overlap")
    return output / weight_sum.to(output.dtype)
