"""The data side of RobustSAM training: datasets, degradations, the feature cache and the batches.

Each item pairs a clear image (teacher: SAM's own decoder) with a degraded copy (student: the robust
path). Degraded copies are drawn from a fixed set of ``variants_per_image`` seeds per image (epoch
``e`` uses variant ``e % V``), like the release's pre-rendered degradation folders, so the frozen
encoder's features can be cached (:mod:`.feature_cache`) and reused across epochs.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from robustprior.data.sources import build_instance_source
from robustprior.data.datasets import RobustSegmentationDataset
from robustprior.data.degrade import DEGRADATIONS_VERSION
from ...modeling.robust_sam import ImageFeatures, RobustSAM
from ..distributed import DistributedContext
from ..errors import ConfigError
from .config import FEATURE_CACHE_FOLDER, build_degradation
from .feature_cache import FeatureCache, image_hash
from .loader import BatchJob, BatchLoader, PreparedBatch, image_degradation_seed, normalise_images, prepare_batch
from .samples import PromptBatch, SamplePreparer


@dataclass
class TrainingState:
    """Where training stands (saved in every checkpoint)."""

    iteration: int = 0
    epoch: int = 0
    position: int = 0  # index into the epoch's permutation of the global batch start
    best_iou: float = -1.0
    seconds: float = 0.0  # training time of every invocation so far
    fitted: bool = False  # train.fit_minutes has fixed train.total_iter


def feature_cache_dir(config: Mapping[str, Any], output: str | Path) -> Path | None:
    """Where a config's feature cache lives: ``feature_cache.dir``, else ``OUTPUT/feature_cache``;
    None when the cache is disabled."""
    cache = config["feature_cache"]
    if not cache["enabled"]:
        return None
    return Path(cache["dir"]) if cache["dir"] is not None else Path(output) / FEATURE_CACHE_FOLDER


def build_datasets(config: Mapping[str, Any], global_batch: int
                   ) -> tuple[RobustSegmentationDataset, RobustSegmentationDataset | None]:
    """The training and (when ``data.val`` is set) validation datasets of a validated config; the
    training set must fill one global batch (``global_batch`` images or items)."""
    data, seed = config["data"], config["manual_seed"]
    options = dict(n_points=data["n_points"], box_jitter=data["box_jitter"], min_area=data["min_area"],
                   instances_per_image=data["instances_per_image"])
    train_source = build_instance_source(data["train"], None, section="data.train", workers=data["workers"])
    train = RobustSegmentationDataset(train_source, None, seed=seed, prompt=data["prompt"],
                                      prompt_mix=data["prompt_mix"], **options)
    units = len({record for record, _ in train.pairs}) if config["train"]["prompts_per_image"] > 1 else len(train)
    if units < global_batch:
        what = "images" if config["train"]["prompts_per_image"] > 1 else "items (image, instance)"
        raise ConfigError(f"data.train has {units} {what}, fewer than one global batch of {global_batch} "
                          "(train.batch_size_per_gpu x processes): use more data or a smaller batch")
    val = None
    if data["val"] is not None:
        val = RobustSegmentationDataset(build_instance_source(data["val"], None, section="data.val",
                                                              workers=data["workers"]),
                                        None, seed=seed + 1, prompt=data["val_prompt"], **options)
    return train, val


class TrainingData:
    """Datasets, degradation and feature cache of one config, and the batches they make: clear and
    degraded encoder features (``B x ...``, B distinct images) with the prompt groups of their items.

    ``cache_dir``: the feature cache (None: encode every time)."""

    def __init__(self, config: Mapping[str, Any], model: RobustSAM, cache_dir: str | Path | None,
                 context: DistributedContext) -> None:
        self.config, self.model, self.context = config, model, context
        self.preparer = SamplePreparer(model)
        self.degradation = build_degradation(config["degradations"])
        self.train_set, self.val_set = build_datasets(config, config["train"]["batch_size_per_gpu"] * context.world_size)
        self.cache = None if cache_dir is None else FeatureCache(cache_dir, model)
        self._item_groups: list[list[int]] | None = None

    degradation_seed = staticmethod(image_degradation_seed)

    def encode(self, keys: list[str], images: list[Callable[[], np.ndarray]], metadata: list[dict]
               ) -> tuple[ImageFeatures, list[dict]]:
        """Features of lazily produced images (``images[i]()`` -> H x W x 3 uint8) through the feature
        cache (only a missing image is produced and encoded)."""

        def make_inputs(indices: list[int]) -> tuple[torch.Tensor, list[dict]]:
            tensors = torch.stack([self.preparer.image_tensor(images[i]()) for i in indices])
            return tensors, [metadata[i] for i in indices]

        if self.cache is None:
            raise ConfigError("the feature cache is disabled in this config (feature_cache.enabled: false)")
        return self.cache.features(keys, make_inputs)

    def batch(self, dataset: RobustSegmentationDataset, indices: list[int], variant: int
              ) -> tuple[ImageFeatures, ImageFeatures, list[PromptBatch], list[str]]:
        """Clear features, degraded features, prompt groups and degradation names for dataset items.

        Items of the same image share one clear and one degraded encoding (the degradation seed
        depends on the image and the variant only); each prompt's ``image_index`` points at it.
        Without the feature cache: :meth:`encode_prepared` of :func:`~.loader.prepare_batch`."""
        if self.cache is None:
            return self.encode_prepared(prepare_batch(dataset, self.degradation, self.preparer, indices, variant))
        items = [dataset[i] for i in indices]
        records = [dataset.pairs[i][0] for i in indices]
        unique = list(dict.fromkeys(records))  # images in order of first appearance
        first = [records.index(record) for record in unique]
        clear_images = [items[position]["clear_image"] for position in first]
        clear_keys = [image_hash(image) for image in clear_images]
        spec = f"v{DEGRADATIONS_VERSION}|{self.degradation!r}"  # code version + kinds / severity / identity share
        seeds = [self.degradation_seed(dataset, indices[position], variant) for position in first]
        degraded_keys = [hashlib.sha256(f"{key}|{spec}|{seed}".encode()).hexdigest()
                         for key, seed in zip(clear_keys, seeds)]
        degraded_images = [lambda image=image, seed=seed: self.degradation(image, seed)[0]
                           for image, seed in zip(clear_images, seeds)]
        kinds = [self.degradation.name(seed) for seed in seeds]
        clear, _ = self.encode(clear_keys, [lambda image=image: image for image in clear_images],
                               [{"kind": "identity"}] * len(unique))
        degraded, _ = self.encode(degraded_keys, degraded_images, [{"kind": kind} for kind in kinds])
        groups = self.preparer.prompt_groups(items)
        image_of_item = torch.tensor([unique.index(record) for record in records])
        for group in groups:
            group.image_index = image_of_item[group.image_index]
        return clear, degraded, [group.to(self.context.device) for group in groups], kinds

    @torch.no_grad()
    def encode_prepared(self, prepared: PreparedBatch
                        ) -> tuple[ImageFeatures, ImageFeatures, list[PromptBatch], list[str]]:
        """:meth:`batch` of a :class:`~.loader.PreparedBatch`: its images normalised on the device and
        encoded (clear and degraded in one encoder pass), its prompts moved to the device."""
        device = self.context.device
        images = torch.cat([prepared.clear, prepared.degraded]).to(device, non_blocking=True)
        tensors = normalise_images(images, prepared.sizes * 2, self.preparer.pixel_mean.to(device),
                                   self.preparer.pixel_std.to(device))
        features = self.model.encode_image(tensors)
        count = len(prepared.sizes)
        clear = ImageFeatures(features.embedding[:count], features.complementary[:count])
        degraded = ImageFeatures(features.embedding[count:], features.complementary[count:])
        return clear, degraded, [group.to(device) for group in prepared.groups], prepared.kinds

    def training_batches(self, state: TrainingState) -> Iterator[tuple[BatchJob, tuple[
            ImageFeatures, ImageFeatures, list[PromptBatch], list[str]]]]:
        """The training batches from ``state`` on, endlessly, each with its :class:`~.loader.BatchJob`
        (``state`` itself is left as it is: set its epoch / position from the job of the batch used).

        Without the feature cache and with ``data.workers`` > 1 the batches are made ahead by that many
        processes (:class:`~.loader.BatchLoader`); the same batches either way."""
        variants = self.config["degradations"]["variants_per_image"]
        ahead = dataclasses.replace(state)

        def jobs() -> Iterator[BatchJob]:
            while True:
                indices = self.rank_indices(ahead)
                yield BatchJob(indices, ahead.epoch % variants, ahead.epoch, ahead.position)

        workers = self.config["data"]["workers"]
        if self.cache is None and workers > 1:
            loader = iter(BatchLoader(self.train_set, self.degradation, self.preparer, jobs(), workers))
            try:
                for prepared in loader:
                    yield prepared.job, self.encode_prepared(prepared)
            finally:
                loader.close()  # the batches being made finish, the workers end
        else:
            for job in jobs():
                self.train_set.set_epoch(job.epoch)
                yield job, self.batch(self.train_set, job.indices, job.variant)

    def rank_indices(self, state: TrainingState) -> list[int]:
        """This rank's items of the next global batch; advances ``state``'s epoch / position (drop-last).

        With ``train.prompts_per_image: K > 1`` a batch is ``batch_size_per_gpu`` images (a permutation of the
        images per epoch), each with up to K of its instances drawn for the epoch; otherwise
        ``batch_size_per_gpu`` items of a permutation of all (image, instance) items."""
        train, seed = self.config["train"], self.config["manual_seed"]
        per_image = train["prompts_per_image"]
        global_batch = train["batch_size_per_gpu"] * self.context.world_size
        units = self.items_by_image() if per_image > 1 else None
        count = len(units) if units is not None else len(self.train_set)
        if state.position + global_batch > count:
            state.epoch += 1
            state.position = 0
        generator = torch.Generator().manual_seed(seed * 1_000_003 + state.epoch)
        permutation = torch.randperm(count, generator=generator).tolist()
        chosen = permutation[state.position : state.position + global_batch]
        state.position += global_batch
        chosen = chosen[self.context.rank :: self.context.world_size]
        if units is None:
            return chosen
        indices = []
        for unit in chosen:
            items = units[unit]
            rng = np.random.default_rng([seed, state.epoch, unit])
            indices.extend(sorted(rng.choice(items, size=min(per_image, len(items)), replace=False).tolist()))
        return indices

    def items_by_image(self) -> list[list[int]]:
        """The training items grouped by image (record), in record order."""
        if self._item_groups is None:
            groups: dict[int, list[int]] = {}
            for index, (record, _) in enumerate(self.train_set.pairs):
                groups.setdefault(record, []).append(index)
            self._item_groups = list(groups.values())
        return self._item_groups

    def fill_cache(self, progress: bool = True) -> dict[str, int]:
        """Encode every training / validation image and all its degradation variants into the cache;
        returns ``{"hits", "misses"}``."""
        if self.cache is None:
            raise ConfigError("the feature cache is disabled in this config (feature_cache.enabled: false)")
        variants = self.config["degradations"]["variants_per_image"]
        batch = self.config["train"]["batch_size_per_gpu"]
        datasets = [dataset for dataset in (self.train_set, self.val_set) if dataset is not None]
        jobs = [(dataset, start, variant) for dataset in datasets
                for variant in range(variants if dataset is self.train_set else 1)
                for start in range(0, len(dataset), batch)]
        shown = progress and self.context.is_main
        for dataset, start, variant in tqdm(jobs, desc="feature cache", disable=not shown):
            self.batch(dataset, list(range(start, min(start + batch, len(dataset)))), variant)
        return {"hits": self.cache.hits, "misses": self.cache.misses}
