"""Tests of robustprior.data.datasets (readers, the RobustSAM dataset) and robustprior.data.prompts."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from scipy.optimize import linear_sum_assignment
from skimage.draw import disk, polygon

from robustprior.data.datasets import (
    CLEAR_KIND,
    CocoInstances,
    InstanceMaskFolder,
    InstanceRecord,
    RobustSegmentationDataset,
    collate_segmentation,
    read_rgb_image,
)
from robustprior.data.prompts import center_point, jitter_box, mask_to_box, sample_points

# ----------------------------------------------------------------------------- helpers


def rectangle_mask(shape: tuple[int, int], rows: tuple[int, int], columns: tuple[int, int]) -> np.ndarray:
    """HxW bool mask that is True on rows[0]..rows[1]-1 x columns[0]..columns[1]-1."""
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], columns[0] : columns[1]] = True
    return mask


def pairwise_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """K1 x K2 IoU matrix of two KxHxW bool stacks (plain numpy, independent of robustprior.evaluation.metrics)."""
    first = first.reshape(first.shape[0], -1).astype(np.int64)
    second = second.reshape(second.shape[0], -1).astype(np.int64)
    intersection = first @ second.T
    union = first.sum(1)[:, None] + second.sum(1)[None, :] - intersection
    return intersection / union


def column_major_runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts (runs over the column-major pixel order, starting with zeros)."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, length = [], 0, 0
    for value in flat:
        if value == current:
            length += 1
        else:
            counts.append(length)
            current, length = value, 1
    counts.append(length)
    return counts


class SyntheticSource:
    """In-memory instance source: one 24x32 image per entry, rectangles/disks as instances."""

    def __init__(self, instance_masks: list[np.ndarray]) -> None:
        self.instance_masks = instance_masks
        self.names = tuple(f"synthetic_{index}" for index in range(len(instance_masks)))
        self.loads = 0

    def __len__(self) -> int:
        return len(self.instance_masks)

    def instance_areas(self, index: int) -> np.ndarray:
        return self.instance_masks[index].sum(axis=(1, 2)).astype(np.int64)

    def __getitem__(self, index: int) -> InstanceRecord:
        self.loads += 1
        masks = self.instance_masks[index]
        image = np.full((*masks.shape[1:], 3), 40 * index, dtype=np.uint8)
        return InstanceRecord(image, masks, None, self.names[index], tuple(range(1, len(masks) + 1)))


def synthetic_source() -> SyntheticSource:
    shape = (24, 32)
    disk_mask = np.zeros(shape, dtype=bool)
    disk_mask[disk((12, 16), 6, shape=shape)] = True
    first = np.stack([rectangle_mask(shape, (2, 4), (3, 5)), disk_mask])  # areas 4 and ~113
    second = np.stack([rectangle_mask(shape, (5, 20), (4, 28)), rectangle_mask(shape, (0, 6), (0, 10))])
    return SyntheticSource([first, second])


# ----------------------------------------------------------------------------- prompts


def test_sample_points_inside_mask_and_deterministic():
    shape = (40, 50)
    mask = np.zeros(shape, dtype=bool)
    rows, columns = polygon([5, 30, 35, 8], [4, 10, 45, 30], shape=shape)
    mask[rows, columns] = True
    coords, labels = sample_points(mask, 3, np.random.default_rng(7), n_negative=2)
    assert coords.shape == (5, 2) and coords.dtype == np.float32
    assert labels.tolist() == [1, 1, 1, 0, 0] and labels.dtype == np.int64
    x, y = coords[:, 0].astype(int), coords[:, 1].astype(int)
    assert np.array_equal(coords, np.stack([x, y], axis=1))  # integer pixel coordinates
    assert mask[y[:3], x[:3]].all() and not mask[y[3:], x[3:]].any()
    many, _ = sample_points(mask, 200, np.random.default_rng(0))
    assert mask[many[:, 1].astype(int), many[:, 0].astype(int)].all()
    again, _ = sample_points(mask, 3, np.random.default_rng(7), n_negative=2)
    other, _ = sample_points(mask, 3, np.random.default_rng(8), n_negative=2)
    assert np.array_equal(coords, again) and not np.array_equal(coords, other)


def test_sample_points_small_and_empty_masks():
    single = np.zeros((6, 6), dtype=bool)
    single[4, 1] = True
    coords, _ = sample_points(single, 3, np.random.default_rng(0))
    assert coords.tolist() == [[1.0, 4.0]] * 3
    with pytest.raises(ValueError, match="empty"):
        sample_points(np.zeros((6, 6), dtype=bool), 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="negative"):
        sample_points(np.ones((6, 6), dtype=bool), 1, np.random.default_rng(0), n_negative=1)


def test_mask_to_box_of_rectangle():
    mask = rectangle_mask((30, 40), (3, 8), (10, 20))  # rows 3..7, columns 10..19
    assert mask_to_box(mask).tolist() == [10.0, 3.0, 19.0, 7.0]
    with pytest.raises(ValueError):
        mask_to_box(np.zeros((5, 5), dtype=bool))


def test_jitter_box_stays_in_image():
    height, width = 30, 40
    box = np.array([1.0, 2.0, 38.0, 28.0], dtype=np.float32)
    rng = np.random.default_rng(3)
    jittered = np.stack([jitter_box(box, rng, scale=0.5, image_size=(height, width)) for _ in range(200)])
    assert (jittered[:, [0, 2]] >= 0).all() and (jittered[:, [0, 2]] <= width - 1).all()
    assert (jittered[:, [1, 3]] >= 0).all() and (jittered[:, [1, 3]] <= height - 1).all()
    assert (jittered[:, 0] <= jittered[:, 2]).all() and (jittered[:, 1] <= jittered[:, 3]).all()
    assert not np.allclose(jittered, box)
    small = np.array([10.0, 10.0, 20.0, 14.0])
    moved = np.stack([jitter_box(small, rng, scale=0.1, image_size=(height, width)) for _ in range(200)])
    assert np.abs(moved - small).max(axis=0) == pytest.approx([1.0, 0.4, 1.0, 0.4], abs=0.05)
    assert jitter_box(small, rng, scale=0.0, image_size=(height, width)).tolist() == small.tolist()


def test_center_point_of_rectangles():
    odd = rectangle_mask((30, 40), (4, 11), (3, 18))  # rows 4..10, columns 3..17
    assert center_point(odd).tolist() == [10.0, 7.0]
    even = rectangle_mask((30, 40), (4, 12), (3, 17))  # centre at (9.5, 7.5): four tied pixels
    x, y = center_point(even)
    assert x in (9.0, 10.0) and y in (7.0, 8.0)
    touching_border = rectangle_mask((9, 40), (0, 9), (0, 9))  # the image border counts as boundary
    assert center_point(touching_border).tolist() == [4.0, 4.0]


# ----------------------------------------------------------------------------- image reading


def test_read_rgb_image_conversions(tmp_path: Path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert np.array_equal(read_rgb_image(tmp_path / "gray.png"), np.repeat(gray[:, :, None], 3, axis=2))

    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 7
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert read_rgb_image(tmp_path / "rgba.png")[0, 0].tolist() == [200, 100, 50]

    rgb = np.zeros((3, 4, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red
    Image.fromarray(rgb).save(tmp_path / "red.jpg", quality=100)
    red = read_rgb_image(tmp_path / "red.jpg")
    assert red.shape == (3, 4, 3) and red.dtype == np.uint8 and red[..., 0].min() > 240 and red[..., 2].max() < 15

    # value * 255 / 65535 = value / 257, rounded (not truncated, not value >> 8)
    deep_gray = np.array([[0, 200, 32768, 65280, 65535]], dtype=np.uint16)
    Image.fromarray(deep_gray).save(tmp_path / "gray16.png")
    assert read_rgb_image(tmp_path / "gray16.png")[0, :, 0].tolist() == [0, 1, 128, 254, 255]

    deep_rgb = np.zeros((2, 2, 3), dtype=np.uint16)
    deep_rgb[..., 0], deep_rgb[..., 1], deep_rgb[..., 2] = 65535, 514, 0  # red, green, blue
    cv2.imwrite(str(tmp_path / "rgb16.png"), deep_rgb[..., ::-1])  # OpenCV writes BGR
    converted = read_rgb_image(tmp_path / "rgb16.png")
    assert converted.dtype == np.uint8 and converted[0, 0].tolist() == [255, 2, 0]


def test_read_rgb_image_errors_name_the_file(tmp_path: Path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    with pytest.raises(ValueError, match="corrupt.png"):
        read_rgb_image(corrupt)
    with pytest.raises((ValueError, FileNotFoundError), match="absent.jpg"):
        read_rgb_image(tmp_path / "absent.jpg")


# ----------------------------------------------------------------------------- instance PNG folders


def write_folder(root: Path, instance_ids: np.ndarray, name: str = "sample", palette: bool = False) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "instances").mkdir(parents=True, exist_ok=True)
    height, width = instance_ids.shape
    Image.fromarray(np.full((height, width, 3), 90, dtype=np.uint8)).save(root / "images" / f"{name}.png")
    label_image = Image.fromarray(instance_ids)
    if palette:
        label_image = label_image.convert("P")  # identity palette: indices stay the ids
        label_image.putpalette([channel for index in range(256) for channel in (index, 255 - index, 7)])
    label_image.save(root / "instances" / f"{name}.png")


@pytest.mark.parametrize("palette", [False, True])
def test_uint8_instance_png_round_trip(tmp_path: Path, palette: bool):
    ids = np.zeros((12, 16), dtype=np.uint8)
    ids[1:5, 2:9] = 3
    ids[6:11, 4:15] = 1
    ids[5, :] = 255  # void line
    write_folder(tmp_path, ids, palette=palette)
    record = InstanceMaskFolder(tmp_path)[0]
    assert record.name == "sample" and record.image.shape == (12, 16, 3)
    assert record.instance_ids == (1, 3)
    assert np.array_equal(record.masks, np.stack([ids == 1, ids == 3]))
    assert np.array_equal(record.ignore, ids == 255)


def test_uint16_instance_png_round_trip(tmp_path: Path):
    ids = np.zeros((10, 12), dtype=np.uint16)
    ids[0:4, 0:4] = 1000
    ids[5:9, 2:11] = 300
    ids[9, 11] = 255  # an ordinary instance id in 16-bit masks
    write_folder(tmp_path, ids)
    source = InstanceMaskFolder(tmp_path)
    record = source[0]
    assert record.instance_ids == (255, 300, 1000)
    assert np.array_equal(record.masks, np.stack([ids == 255, ids == 300, ids == 1000]))
    assert record.ignore is None
    assert source.instance_areas(0).tolist() == [1, 36, 16]


def test_instance_folder_errors_name_the_file(tmp_path: Path):
    write_folder(tmp_path, np.ones((8, 8), dtype=np.uint8), name="good")
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "images" / "orphan.jpg")
    with pytest.raises(ValueError, match="orphan.png"):
        InstanceMaskFolder(tmp_path)
    (tmp_path / "images" / "orphan.jpg").unlink()
    Image.fromarray(np.ones((7, 8), dtype=np.uint8)).save(tmp_path / "instances" / "good.png")
    source = InstanceMaskFolder(tmp_path)
    with pytest.raises(ValueError, match="good.png"):
        source[0]


# ----------------------------------------------------------------------------- COCO JSON


def test_coco_polygons_rle_and_crowd(tmp_path: Path):
    height, width = 10, 12
    Image.fromarray(np.full((height, width, 3), 30, dtype=np.uint8)).save(tmp_path / "photo.png")
    polygon_mask = rectangle_mask((height, width), (3, 7), (2, 8))
    uncompressed_mask = rectangle_mask((height, width), (0, 2), (9, 12))
    compressed_mask = rectangle_mask((height, width), (8, 10), (0, 5))
    crowd_mask = rectangle_mask((height, width), (4, 6), (9, 11))
    compressed = coco_mask.encode(np.asfortranarray(compressed_mask.astype(np.uint8)))
    annotations = [
        {"id": 11, "image_id": 5, "iscrowd": 0, "segmentation": [[2, 3, 8, 3, 8, 7, 2, 7], [0, 0, 1, 1]]},
        {"id": 12, "image_id": 5, "iscrowd": 0,
         "segmentation": {"size": [height, width], "counts": column_major_runs(uncompressed_mask)}},
        {"id": 13, "image_id": 5, "iscrowd": 0,
         "segmentation": {"size": [height, width], "counts": compressed["counts"].decode()}},
        {"id": 14, "image_id": 5, "iscrowd": 1,
         "segmentation": {"size": [height, width], "counts": column_major_runs(crowd_mask)}},
    ]
    content = {
        "images": [{"id": 5, "file_name": "photo.png", "height": height, "width": width}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(content))
    source = CocoInstances(tmp_path / "annotations.json", tmp_path)
    record = source[0]
    assert source.names == ("photo",) and record.instance_ids == (11, 12, 13)
    assert np.array_equal(record.masks, np.stack([polygon_mask, uncompressed_mask, compressed_mask]))
    assert np.array_equal(record.ignore, crowd_mask)
    assert source.instance_areas(0).tolist() == [24, 6, 10]

    content["images"][0]["height"] = 11
    (tmp_path / "annotations.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match="photo.png"):
        CocoInstances(tmp_path / "annotations.json", tmp_path)[0]


# ----------------------------------------------------------------------------- real VOC sample


@pytest.fixture(scope="module")
def voc_sample(shared_data: Path) -> Path:
    root = shared_data / "voc-instances"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


def test_voc_and_coco_readers_agree(voc_sample: Path):
    voc = InstanceMaskFolder.voc(voc_sample / "voc")
    coco = CocoInstances(voc_sample / "coco" / "annotations.json", voc_sample / "coco")
    assert sorted(voc.names) == sorted(coco.names) and len(voc) == 3
    for index, name in enumerate(voc.names):
        voc_record, coco_record = voc[index], coco[coco.names.index(name)]
        assert voc_record.image.shape == coco_record.image.shape
        assert len(voc_record.masks) == len(coco_record.masks) > 0
        iou = pairwise_iou(voc_record.masks, coco_record.masks)
        rows, columns = linear_sum_assignment(-iou)
        assert iou[rows, columns].min() > 0.9, (name, iou[rows, columns])


def test_voc_void_and_palette_indices(voc_sample: Path):
    voc = InstanceMaskFolder.voc(voc_sample / "voc")
    for index, name in enumerate(voc.names):
        record = voc[index]
        raw_objects = np.array(Image.open(voc_sample / "voc" / "SegmentationObject" / f"{name}.png"))
        raw_classes = np.array(Image.open(voc_sample / "voc" / "SegmentationClass" / f"{name}.png"))
        expected_ids = sorted(set(np.unique(raw_objects).tolist()) - {0, 255})
        assert list(record.instance_ids) == expected_ids  # raw palette indices, not colours
        void = (raw_classes == 255) | (raw_objects == 255)
        if void.any():
            assert np.array_equal(record.ignore, void)
            assert not (record.ignore & record.masks.any(axis=0)).any()
        else:
            assert record.ignore is None
    assert voc[voc.names.index("2011_000003")].ignore.sum() > 1000


def test_coco_sample_ids_and_files_resolve(voc_sample: Path):
    annotation_path = voc_sample / "coco" / "annotations.json"
    content = json.loads(annotation_path.read_text())
    coco = CocoInstances(annotation_path, voc_sample / "coco")
    for index, image_entry in enumerate(content["images"]):
        assert (voc_sample / "coco" / image_entry["file_name"]).is_file()
        annotations = [entry for entry in content["annotations"] if entry["image_id"] == image_entry["id"]]
        record = coco[index]
        assert record.image.shape == (image_entry["height"], image_entry["width"], 3)
        assert record.instance_ids == tuple(entry["id"] for entry in annotations)
        assert coco.instance_areas(index) == pytest.approx([entry["area"] for entry in annotations], rel=0.1)


# ----------------------------------------------------------------------------- RobustSegmentationDataset


class RecordingDegradation:
    """Degradation stand-in: darkens the image by the seed's parity and records every call."""

    def __init__(self) -> None:
        self.seeds: list[int] = []

    def __call__(self, image: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
        self.seeds.append(seed)
        return (image // 2).astype(np.uint8), "darken" if seed % 2 else "darken_even"


def test_dataset_is_reproducible_and_epoch_dependent():
    first = RobustSegmentationDataset(synthetic_source(), None, prompt="points", seed=5, instances_per_image=None)
    second = RobustSegmentationDataset(synthetic_source(), None, prompt="points", seed=5, instances_per_image=None)
    assert len(first) == 4
    for index in range(len(first)):
        item, twin = first[index], second[index]
        assert np.array_equal(item["point_coords"], twin["point_coords"])
        assert np.array_equal(item["clear_image"], item["degraded_image"]) and item["degradation"] == CLEAR_KIND
        coords = item["point_coords"].astype(int)
        assert item["mask"][coords[:, 1], coords[:, 0]].all() and item["point_labels"].tolist() == [1, 1, 1]
    epoch_zero = [first[index]["point_coords"] for index in range(len(first))]
    first.set_epoch(1)
    epoch_one = [first[index]["point_coords"] for index in range(len(first))]
    assert not all(np.array_equal(a, b) for a, b in zip(epoch_zero, epoch_one))
    first.set_epoch(0)
    assert all(np.array_equal(a, first[index]["point_coords"]) for index, a in enumerate(epoch_zero))
    other_seed = RobustSegmentationDataset(synthetic_source(), None, seed=6, instances_per_image=None)
    assert not all(np.array_equal(a, other_seed[index]["point_coords"]) for index, a in enumerate(epoch_zero))


def test_dataset_calls_degradation_with_item_seed():
    degradation = RecordingDegradation()
    dataset = RobustSegmentationDataset(synthetic_source(), degradation, prompt="box", seed=9, instances_per_image=None)
    dataset.set_epoch(3)
    item = dataset[2]
    expected_seed = int(np.random.SeedSequence([9, 3, 2]).generate_state(1, dtype=np.uint32)[0])
    assert degradation.seeds == [expected_seed] and item["seed"] == expected_seed
    assert item["degradation"] == ("darken" if expected_seed % 2 else "darken_even")
    assert np.array_equal(item["degraded_image"], item["clear_image"] // 2)
    box = item["box"]
    assert box.shape == (4,) and 0 <= box[0] <= box[2] <= 31 and 0 <= box[1] <= box[3] <= 23
    exact = RobustSegmentationDataset(synthetic_source(), None, prompt="box", box_jitter=0.0, instances_per_image=None)
    assert exact[2]["box"].tolist() == mask_to_box(exact[2]["mask"]).tolist()


def test_dataset_index_area_filter_and_names():
    source = synthetic_source()
    areas = [source.instance_areas(index).tolist() for index in range(len(source))]
    assert areas[0][0] == 4 and areas[1] == [360, 60]
    filtered = RobustSegmentationDataset(source, None, min_area=50, instances_per_image=None)
    assert filtered.pairs == ((0, 1), (1, 0), (1, 1))
    assert source.loads == 0  # the index is built from areas, without loading records
    largest = RobustSegmentationDataset(source, None, min_area=1, instances_per_image=1)
    assert largest.pairs == ((0, 1), (1, 0))
    subset = RobustSegmentationDataset(source, None, instances_per_image=None, names=["synthetic_1"])
    assert [subset[index]["name"] for index in range(len(subset))] == ["synthetic_1", "synthetic_1"]
    with pytest.raises(ValueError, match="missing_name"):
        RobustSegmentationDataset(source, None, names=["missing_name"])


def test_collate_keeps_images_as_lists():
    small = SyntheticSource([rectangle_mask((10, 12), (2, 6), (3, 9))[None]])
    large = synthetic_source()
    items = [
        RobustSegmentationDataset(small, None, prompt="box")[0],
        RobustSegmentationDataset(large, None, prompt="box")[1],
    ]
    batch = collate_segmentation(items)
    assert isinstance(batch["box"], torch.Tensor) and batch["box"].shape == (2, 4)
    assert batch["box"].dtype == torch.float32 and batch["seed"].dtype == torch.int64
    assert [image.shape for image in batch["clear_image"]] == [(10, 12, 3), (24, 32, 3)]
    point_dataset = RobustSegmentationDataset(large, None, n_points=4, instances_per_image=None)
    loader = torch.utils.data.DataLoader(point_dataset, batch_size=3, collate_fn=collate_segmentation)
    point_batch = next(iter(loader))
    assert point_batch["point_coords"].shape == (3, 4, 2) and point_batch["point_labels"].shape == (3, 4)
    assert point_batch["name"] == ["synthetic_0", "synthetic_0", "synthetic_1"]


def test_mixed_prompts_follow_the_mix_and_each_kind_its_rule():
    source = SyntheticSource([np.stack([rectangle_mask((24, 32), (4, 20), (6, 26))] * 50)])  # one image, 50 instances
    dataset = RobustSegmentationDataset(source, None, prompt="mixed", n_points=3, seed=1, instances_per_image=None,
                                        prompt_mix={"points": 2, "box": 1, "single_point": 1})
    kinds = [dataset[index]["prompt_kind"] for index in range(len(dataset))]
    counts = {kind: kinds.count(kind) for kind in ("points", "box", "single_point")}
    assert sum(counts.values()) == 50 and 15 <= counts["points"] <= 35 and counts["box"] >= 5 and counts["single_point"] >= 5
    for index in range(len(dataset)):
        item = dataset[index]
        if item["prompt_kind"] == "box":
            assert "point_coords" not in item and item["box"].shape == (4,)
        else:
            assert len(item["point_coords"]) == (3 if item["prompt_kind"] == "points" else 1)
            coords = item["point_coords"].astype(int)
            assert item["mask"][coords[:, 1], coords[:, 0]].all()
    assert [dataset[index]["prompt_kind"] for index in range(len(dataset))] == kinds  # reproducible
    centre = RobustSegmentationDataset(source, None, prompt="center_point", instances_per_image=None)
    assert centre[0]["point_coords"].tolist() == [center_point(centre[0]["mask"]).tolist()]


@pytest.mark.parametrize("arguments, message", [
    ({"prompt": "mixed"}, "prompt_mix"),
    ({"prompt": "mixed", "prompt_mix": {"points": 1, "lasso": 1}}, "lasso"),
    ({"prompt": "mixed", "prompt_mix": {"points": 0}}, "not all zero"),
    ({"prompt": "points", "prompt_mix": {"points": 1}}, "only used with prompt: mixed"),
    ({"prompt": "scribble"}, "scribble"),
])
def test_bad_prompt_options_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        RobustSegmentationDataset(synthetic_source(), None, **arguments)


def test_collating_a_mixed_batch_is_refused_with_a_hint():
    source = SyntheticSource([np.stack([rectangle_mask((24, 32), (4, 20), (6, 26))] * 8)])
    dataset = RobustSegmentationDataset(source, None, prompt="mixed", instances_per_image=None,
                                        prompt_mix={"points": 1, "box": 1}, seed=3)
    items = [dataset[index] for index in range(len(dataset))]
    assert {item["prompt_kind"] for item in items} == {"points", "box"}
    with pytest.raises(ValueError, match="prompt_kind"):
        collate_segmentation(items)


def test_sample_preparer_groups_prompts_by_kind_and_keeps_their_items():
    from robustprior.load import build_robust_sam
    from robustprior.training.robustsam.samples import SamplePreparer

    source = SyntheticSource([np.stack([rectangle_mask((24, 32), (4, 20), (6, 26))] * 12)])
    dataset = RobustSegmentationDataset(source, None, prompt="mixed", n_points=3, seed=2, instances_per_image=None,
                                        prompt_mix={"points": 1, "box": 1, "single_point": 1})
    items = [dataset[index] for index in range(len(dataset))]
    groups = SamplePreparer(build_robust_sam("tiny", random_init=True)).prompt_groups(items)
    assert sorted(int(i) for group in groups for i in group.image_index) == list(range(12))
    for group in groups:
        kinds = {items[int(i)]["prompt_kind"] for i in group.image_index}
        assert kinds == {group.kind} and group.multimask == (group.kind == "single_point")
        if group.kind == "box":
            assert group.point_coords is None and group.boxes.shape == (len(group), 4)
        else:
            assert group.point_coords.shape == (len(group), 3 if group.kind == "points" else 1, 2)
