"""Training batches made ahead by worker processes: fresh degraded images every step, no feature cache.

Without the feature cache every step degrades its images anew (variant ``epoch % variants_per_image``
of each image, so with many variants an image's degraded copy rarely repeats) and runs the frozen
encoder; on a GPU the encoder costs little and the CPU side of a batch is the bottleneck: reading each
image and its masks, degrading, resizing to the model frame and drawing the prompts (about 10 ms per
image and per item on one core). :func:`prepare_batch` is that CPU side, a pure function of (dataset,
epoch, indices, variant); :class:`BatchLoader` runs it in ``data.workers`` processes (batches
delivered in order) on the next batches while the device trains on this one,
and the main process only normalises the images on the device and encodes them
(:meth:`~.batches.TrainingData.encode_prepared`). Any number of workers gives the same batches.
"""
from __future__ import annotations

import copy
import itertools
import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from robustprior.data.datasets import InstanceRecord, RobustSegmentationDataset
from robustprior.data.degrade import RandomDegradation
from .samples import PromptBatch, SamplePreparer


def image_degradation_seed(dataset: RobustSegmentationDataset, index: int, variant: int) -> int:
    """Seed of variant ``variant`` of the image behind item ``index`` (shared by the image's instances)."""
    record = dataset.pairs[index][0]
    sequence = np.random.SeedSequence([dataset.seed, record, variant])
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


@dataclass
class BatchJob:
    """One training batch to make: its items, the degradation variant, the dataset epoch its prompts are
    drawn in, and where training stands after it (``TrainingState.epoch`` / ``position``)."""

    indices: list[int]
    variant: int
    epoch: int
    position: int


@dataclass
class PreparedBatch:
    """The CPU side of a batch of items showing U distinct images (in order of first appearance).

    ``clear`` / ``degraded``: ``U x S x S x 3`` uint8, each image resized to the model frame (long side
    S, as SAM's predictor) and zero-padded to S x S; ``sizes``: each image's (h, w) before padding;
    ``kinds``: the degradation applied to each; ``groups``: the items' prompts, one
    :class:`PromptBatch` per prompt kind, ``image_index`` pointing into the U images."""

    clear: torch.Tensor
    degraded: torch.Tensor
    sizes: list[tuple[int, int]]
    kinds: list[str]
    groups: list[PromptBatch]
    job: BatchJob | None = None


class _RecordsOfOneBatch:
    """A source whose records are read once for one batch (items of one image share its record)."""

    def __init__(self, source: Any) -> None:
        self.source, self.records = source, {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> InstanceRecord:
        if index not in self.records:
            self.records[index] = self.source[index]
        return self.records[index]


def _padded(image: np.ndarray, size: int) -> np.ndarray:
    """``h x w x 3`` uint8 (long side at most ``size``) -> ``size x size x 3``, zeros below and right."""
    padded = np.zeros((size, size, 3), np.uint8)
    padded[: image.shape[0], : image.shape[1]] = image
    return padded


def prepare_batch(dataset: RobustSegmentationDataset, degradation: RandomDegradation, preparer: SamplePreparer,
                  indices: list[int], variant: int) -> PreparedBatch:
    """The CPU side of the batch of items ``indices`` of ``dataset`` (in its current epoch), degraded with
    variant ``variant`` of each image (seed :func:`image_degradation_seed`)."""
    view = copy.copy(dataset)  # the same items, each image read once
    view.source = _RecordsOfOneBatch(dataset.source)
    items = [view[index] for index in indices]
    records = [dataset.pairs[index][0] for index in indices]
    unique = list(dict.fromkeys(records))  # images in order of first appearance
    first = [records.index(record) for record in unique]
    clear, degraded, sizes, kinds = [], [], [], []
    for position in first:
        image = items[position]["clear_image"]
        seed = image_degradation_seed(dataset, indices[position], variant)
        degraded_image = degradation(image, seed)[0]
        kinds.append(degradation.name(seed))
        resized = [preparer.transform.apply_image(picture) for picture in (image, degraded_image)]
        sizes.append(resized[0].shape[:2])
        clear.append(_padded(resized[0], preparer.image_size))
        degraded.append(_padded(resized[1], preparer.image_size))
    groups = preparer.prompt_groups(items)
    image_of_item = torch.tensor([unique.index(record) for record in records])
    for group in groups:
        group.image_index = image_of_item[group.image_index]
    return PreparedBatch(torch.from_numpy(np.stack(clear)), torch.from_numpy(np.stack(degraded)), sizes, kinds, groups)


def normalise_images(images: torch.Tensor, sizes: list[tuple[int, int]], pixel_mean: torch.Tensor,
                     pixel_std: torch.Tensor) -> torch.Tensor:
    """``B x S x S x 3`` uint8 padded images (on any device) -> the encoder's ``B x 3 x S x S`` input:
    ``(x - mean) / std`` inside each image's ``sizes[i]`` and 0 in its padding, the numbers
    :meth:`SamplePreparer.image_tensor` gives for each image alone."""
    normalised = (images.permute(0, 3, 1, 2).float() - pixel_mean.reshape(1, 3, 1, 1)) / pixel_std.reshape(1, 3, 1, 1)
    size = images.shape[1]
    rows = torch.arange(size, device=images.device)
    heights = torch.tensor([h for h, _ in sizes], device=images.device)
    widths = torch.tensor([w for _, w in sizes], device=images.device)
    inside = (rows[None, :, None] < heights[:, None, None]) & (rows[None, None, :] < widths[:, None, None])
    return torch.where(inside[:, None], normalised, torch.zeros((), dtype=normalised.dtype, device=images.device))


class _Jobs:
    """What a worker needs to make any batch: the dataset, the degradation and the sample preparer."""

    def __init__(self, dataset: RobustSegmentationDataset, degradation: RandomDegradation,
                 preparer: SamplePreparer) -> None:
        self.dataset, self.degradation, self.preparer = dataset, degradation, preparer

    def __call__(self, job: BatchJob) -> PreparedBatch:
        self.dataset.set_epoch(job.epoch)
        prepared = prepare_batch(self.dataset, self.degradation, self.preparer, job.indices, job.variant)
        prepared.job = job
        return prepared


_WORKER_JOBS: _Jobs | None = None  # a worker process's _Jobs, set once when it starts


def _start_worker(jobs: _Jobs) -> None:
    global _WORKER_JOBS
    _WORKER_JOBS = jobs
    torch.set_num_threads(1)  # one core per worker
    cv2.setNumThreads(1)


def _make_batch(job: BatchJob) -> PreparedBatch:
    assert _WORKER_JOBS is not None, "a batch worker was not started by BatchLoader"
    return _WORKER_JOBS(job)


class BatchLoader:
    """The batches of ``jobs`` (an iterator of :class:`BatchJob`, read in order as batches are asked
    for), made by ``workers`` processes with ``prefetch`` batches per worker in flight; ``workers`` 1
    makes each in this process when asked. Iterating gives :class:`PreparedBatch` es in the order of
    the jobs; stopping the iteration (or deleting it) lets the batches being made finish and ends the
    workers.

    The workers are fresh processes (``spawn``): a forked copy of a process whose OpenCV or OpenMP
    thread pools (or CUDA) are running can deadlock, as ``cv2.setNumThreads`` did in one. A worker's
    error is raised here with its traceback."""

    def __init__(self, dataset: RobustSegmentationDataset, degradation: RandomDegradation, preparer: SamplePreparer,
                 jobs: Iterator[BatchJob], workers: int, prefetch: int = 2) -> None:
        self.make = _Jobs(dataset, degradation, preparer)
        self.jobs, self.workers, self.depth = jobs, workers, max(1, workers * prefetch)

    def __iter__(self) -> Iterator[PreparedBatch]:
        if self.workers <= 1:
            for job in self.jobs:
                yield self.make(job)
            return
        executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_start_worker, initargs=(self.make,))
        try:
            pending = deque(executor.submit(_make_batch, job) for job in itertools.islice(self.jobs, self.depth))
            while pending:
                batch = pending.popleft().result()
                following = next(self.jobs, None)
                if following is not None:
                    pending.append(executor.submit(_make_batch, following))
                yield batch
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
