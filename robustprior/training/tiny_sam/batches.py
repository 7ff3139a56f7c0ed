"""The tiny-SAM recipe's training data: a cached scene set, and per-step images and prompts that depend
only on ``(seed, step)`` (exact resume, the same batches with any number of loader workers)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustprior.io.atomic import atomic_path
from robustprior.data.prompts import jitter_box, mask_to_box, sample_points
from robustprior.data.scenes import TextureBank, generate_scene_arrays

PAD_LABEL = -1  # SAM's label for a padding point (ignored by the prompt encoder)


def cached_scenes(folder: Path, seed: int, count: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The training scenes, generated once into ``folder/scenes_seed{seed}_n{count}.npz``."""
    path = folder / f"scenes_seed{seed}_n{count}.npz"
    source = str(TextureBank.load(None).source)
    if path.is_file():
        with np.load(path) as cache:
            if str(cache["texture_source"]) == source:
                return cache["images"], cache["instances"]
    images, instances, _ = generate_scene_arrays(seed, count, "generating train scenes", workers)
    with atomic_path(path, suffix=".npz") as temporary:
        np.savez(temporary, images=images, instances=instances, texture_source=np.array(source))
    return images, instances


@dataclass
class PromptGroup:
    """Prompts of one kind for a training step (P prompts over B images)."""

    image_index: torch.Tensor  # P long: which image of the batch
    targets: torch.Tensor  # P x 1 x H x W bool: the object's exact mask
    point_coords: torch.Tensor | None = None  # P x N x 2 (x, y), padded with PAD_LABEL points
    point_labels: torch.Tensor | None = None  # P x N int
    boxes: torch.Tensor | None = None  # P x 4 XYXY
    single_point: torch.Tensor | None = None  # P bool: one positive point (multimask supervision)

    def __len__(self) -> int:
        return self.image_index.shape[0]

    def to(self, device: torch.device) -> PromptGroup:
        """The group with every tensor on ``device``."""
        moved = {name: None if value is None else value.to(device, non_blocking=True)
                 for name, value in self.__dict__.items()}
        return PromptGroup(**moved)


def sample_prompt_groups(instances: np.ndarray, rng: np.random.Generator, batch: dict) -> list[PromptGroup]:
    """Draw ``prompts_per_image`` prompts per image of ``instances`` (``B x H x W``): a point group
    (single and multi-point prompts) and a box group; empty groups are left out."""
    kinds = list(batch["prompt_mix"])
    probabilities = np.array([batch["prompt_mix"][kind] for kind in kinds], dtype=np.float64)
    probabilities /= probabilities.sum()
    height, width = instances.shape[1:]
    points: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, bool]] = []
    boxes: list[tuple[int, np.ndarray, np.ndarray]] = []
    for image_index, instance_map in enumerate(instances):
        object_ids = np.unique(instance_map)
        object_ids = object_ids[object_ids > 0]
        if object_ids.size == 0:
            continue
        for _ in range(batch["prompts_per_image"]):
            mask = instance_map == rng.choice(object_ids)
            kind = kinds[rng.choice(len(kinds), p=probabilities)]
            if kind == "box":
                box = jitter_box(mask_to_box(mask), rng, batch["box_jitter"], image_size=(height, width))
                boxes.append((image_index, mask, box))
            elif kind == "single_point":
                coords, labels = sample_points(mask, 1, rng)
                points.append((image_index, mask, coords, labels, True))
            else:
                negatives = int(rng.random() < batch["negative_probability"] and not mask.all())
                coords, labels = sample_points(mask, int(rng.integers(2, 4)), rng, n_negative=negatives)
                points.append((image_index, mask, coords, labels, False))
    groups = []
    if points:
        longest = max(len(labels) for _, _, _, labels, _ in points)
        coords = np.zeros((len(points), longest, 2), dtype=np.float32)
        labels = np.full((len(points), longest), PAD_LABEL, dtype=np.int64)
        for row, (_, _, point_coords, point_labels, _) in enumerate(points):
            coords[row, : len(point_labels)] = point_coords
            labels[row, : len(point_labels)] = point_labels
        groups.append(PromptGroup(
            image_index=torch.tensor([entry[0] for entry in points]),
            targets=torch.from_numpy(np.stack([entry[1] for entry in points])[:, None]),
            point_coords=torch.from_numpy(coords),
            point_labels=torch.from_numpy(labels),
            single_point=torch.tensor([entry[4] for entry in points]),
        ))
    if boxes:
        groups.append(PromptGroup(
            image_index=torch.tensor([entry[0] for entry in boxes]),
            targets=torch.from_numpy(np.stack([entry[1] for entry in boxes])[:, None]),
            boxes=torch.from_numpy(np.stack([entry[2] for entry in boxes])),
        ))
    return groups


class TrainingBatches(torch.utils.data.IterableDataset):
    """The training steps' inputs from ``start`` on: step ``i`` draws its images, flips and prompts
    with ``np.random.default_rng([seed, i])``, so a step's batch does not depend on which process
    made it or on earlier steps (exact resume; identical with any number of loader workers, which
    take the steps round-robin, the order a ``DataLoader`` returns them in)."""

    def __init__(self, images: np.ndarray, instances: np.ndarray, config: dict, start: int) -> None:
        self.images, self.instances = images, instances
        self.batch, self.flips = config["batch"], config["data"]["flip_augmentation"]
        self.seed, self.start = int(config["manual_seed"]), start

    def step(self, index: int) -> tuple[np.ndarray, list[PromptGroup]]:
        """Step ``index``: images ``B x H x W x 3`` uint8 and their prompt groups."""
        rng = np.random.default_rng([self.seed, index])
        chosen = rng.choice(len(self.images), size=self.batch["images"], replace=False)
        images, instances = self.images[chosen], self.instances[chosen]
        if self.flips:
            if rng.random() < 0.5:
                images, instances = images[:, :, ::-1], instances[:, :, ::-1]
            if rng.random() < 0.5:
                images, instances = images[:, ::-1], instances[:, ::-1]
        return np.ascontiguousarray(images), sample_prompt_groups(np.ascontiguousarray(instances), rng, self.batch)

    def __iter__(self):
        """Steps as ``(images, [group fields as dicts])``: plain containers, which loader workers can
        send whatever module this file was imported as."""
        info = torch.utils.data.get_worker_info()
        index, stride = (self.start, 1) if info is None else (self.start + info.id, info.num_workers)
        while True:
            images, groups = self.step(index)
            yield images, [dict(group.__dict__) for group in groups]
            index += stride


def training_batches(images: np.ndarray, instances: np.ndarray, config: dict, start: int, workers: int):
    """Iterator over the steps of :class:`TrainingBatches` from ``start`` on, as ``(images,
    [PromptGroup])`` with images a ``B x H x W x 3`` uint8 tensor, made by ``workers`` processes
    (``workers <= 1``: in this process)."""
    dataset = TrainingBatches(images, instances, config, start)
    stream = iter(dataset) if workers <= 1 else iter(torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, prefetch_factor=4))
    return ((torch.as_tensor(images), [PromptGroup(**fields) for fields in groups]) for images, groups in stream)

