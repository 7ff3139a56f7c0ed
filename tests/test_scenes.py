"""The scene-world generator: determinism, exact ground truth, degradations and dataset writers."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from restoration.paired_data import PairedImageDataset, pair_gopro, pair_sots, read_rgb
from robustprior.data.scenes import (
    Scene,
    SceneConfig,
    TextureBank,
    average_frames,
    derive_seed,
    generate_scene,
    pan_velocity,
    render_frame,
    render_hazy,
    render_motion_blur,
    render_motion_frames,
    render_object,
    write_gopro_dataset,
    write_instance_dataset,
    write_sots_dataset,
)

CONFIG = SceneConfig(image_size=(96, 128))
SEEDS = (0, 1, 2, 3)
# sha256 (first 16 hex) of the first four default 64 x 64 scenes: scikit-image 0.26 photos, OpenCV 5.1
DEFAULT_WORLD_FINGERPRINT = "bcff084a16a0536b"


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [generate_scene(seed, CONFIG) for seed in SEEDS]


def _scene_arrays(scene: Scene) -> list[np.ndarray]:
    return [scene.image, scene.instances, scene.depth, scene.masks, scene.boxes, scene.motion]


def test_same_seed_is_byte_identical(scenes: list[Scene]) -> None:
    again = generate_scene(SEEDS[0], CONFIG)
    for first, second in zip(_scene_arrays(scenes[0]), _scene_arrays(again)):
        assert first.dtype == second.dtype and first.tobytes() == second.tobytes()
    assert render_hazy(again, 0.1, 0.9).tobytes() == render_hazy(scenes[0], 0.1, 0.9).tobytes()
    blurred, _ = render_motion_blur(again, 5, seed=3, camera_shake=0.5)
    assert blurred.tobytes() == render_motion_blur(scenes[0], 5, seed=3, camera_shake=0.5)[0].tobytes()


def test_different_seeds_differ(scenes: list[Scene]) -> None:
    images = [scene.image.tobytes() for scene in scenes]
    assert len(set(images)) == len(images)


def test_scene_shapes_and_types(scenes: list[Scene]) -> None:
    for scene in scenes:
        count = scene.object_count
        assert scene.image.shape == (96, 128, 3) and scene.image.dtype == np.uint8
        assert scene.instances.shape == (96, 128) and scene.instances.dtype == np.int32
        assert scene.depth.dtype == np.float32 and scene.masks.shape == (count, 96, 128)
        assert scene.motion.shape == (count, 2) and scene.boxes.shape == (count, 4)
        assert CONFIG.object_count_range[0] <= count <= CONFIG.object_count_range[1]
        assert set(scene.kinds) <= set(CONFIG.shape_kinds)


def test_masks_are_exact_and_partition_the_objects(scenes: list[Scene]) -> None:
    for scene in scenes:
        masks = scene.masks
        counts = np.bincount(scene.instances.ravel(), minlength=scene.object_count + 1)
        assert scene.instances.max() == scene.object_count
        np.testing.assert_array_equal(masks.sum(axis=(1, 2)), counts[1:])
        assert masks.sum(axis=0).max() <= 1, "masks must be disjoint"
        np.testing.assert_array_equal(masks.any(axis=0), scene.instances > 0)
        assert (counts[1:] >= CONFIG.min_object_area).all()
        for mask, (x_min, y_min, x_max, y_max) in zip(masks, scene.boxes.astype(int)):
            assert mask[y_min:y_max, x_min:x_max].sum() == mask.sum()
            assert mask[y_min].any() and mask[y_max - 1].any() and mask[:, x_min].any() and mask[:, x_max - 1].any()


def test_object_rendered_alone_matches_its_visible_mask(scenes: list[Scene]) -> None:
    for scene in scenes:
        for index, visible in enumerate(scene.masks):
            alone, full_mask = render_object(scene, index)
            occluded = scene.instances > index + 1
            np.testing.assert_array_equal(full_mask & ~occluded, visible)
            np.testing.assert_array_equal(alone[visible], scene.image[visible])
            assert not alone[~full_mask].any()


def test_depth_orders_objects_in_front_of_the_background(scenes: list[Scene]) -> None:
    for scene in scenes:
        background = scene.depth[scene.instances == 0]
        object_depths = [scene.depth[mask] for mask in scene.masks]
        for depths in object_depths:
            assert depths.max() < CONFIG.background_depth_range[0] <= background.min()
            assert depths.max() - depths.min() <= CONFIG.depth_tilt + 1e-5
        assert background.max() <= CONFIG.background_depth_range[1] + 1e-5
        means = [depths.mean() for depths in object_depths]
        assert means == sorted(means, reverse=True), "later (occluding) objects are nearer"


def test_haze_follows_the_scattering_model(scenes: list[Scene]) -> None:
    scene, beta, airlight = scenes[1], 0.12, 0.85
    hazy = render_hazy(scene, beta, airlight)
    rng = np.random.default_rng(0)
    for row, column in zip(rng.integers(0, 96, 20), rng.integers(0, 128, 20)):
        transmission = math.exp(-beta * float(scene.depth[row, column]))
        for channel in range(3):
            clear = scene.image[row, column, channel] / 255.0
            expected = clear * transmission + airlight * (1.0 - transmission)
            assert hazy[row, column, channel] == round(expected * 255.0)
    assert abs(hazy.astype(float).mean() - airlight * 255) < abs(scene.image.astype(float).mean() - airlight * 255)


def test_middle_frame_of_motion_blur_is_the_sharp_image(scenes: list[Scene]) -> None:
    scene = scenes[2].with_motion(camera_motion=(1.5, -0.5))
    for n_frames in (7, 4):
        blurred, sharp = render_motion_blur(scene, n_frames, seed=1, camera_shake=0.4)
        frames = render_motion_frames(scene, n_frames, seed=1, camera_shake=0.4)
        assert sharp.tobytes() == scene.image.tobytes() == frames[n_frames // 2].tobytes()
        assert np.abs(blurred.astype(int) - sharp).mean() > 1.0, "a moving scene must blur"
    shifted, _ = render_frame(scene, time=5.0)
    assert render_motion_blur(scene, 3, center_time=5.0)[1].tobytes() == shifted.tobytes()


def test_static_object_stays_sharp_while_the_rest_blurs(scenes: list[Scene]) -> None:
    scene = scenes[3]
    velocities = np.full((scene.object_count, 2), (2.0, -1.5))
    velocities[-1] = 0.0  # the last-painted object is never occluded
    moving = scene.with_motion(velocities, camera_motion=(1.5, 0.5))
    top = scene.masks[-1]
    for gamma in (2.2, 1.0):
        blurred, sharp = render_motion_blur(moving, 9, gamma=gamma)
        np.testing.assert_array_equal(blurred[top], sharp[top])
        assert np.abs(blurred.astype(int) - sharp)[~top].mean() > 1.0


def _still(scene: Scene) -> Scene:
    """``scene`` with every layer at rest."""
    return scene.with_motion(np.zeros((scene.object_count, 2)), camera_motion=(0.0, 0.0))


def test_camera_pan_moves_the_whole_frame_steadily(scenes: list[Scene]) -> None:
    still = _still(scenes[1])
    speed, seed = 1.5, 7
    velocity = np.array(pan_velocity(speed, seed))
    assert math.isclose(float(np.hypot(*velocity)), speed)
    assert pan_velocity(speed, seed + 1) != tuple(velocity), "the pan direction is drawn from the seed"
    np.testing.assert_allclose(pan_velocity(2.0, seed, angle=90.0), (0.0, 2.0), atol=1e-12)  # a fixed direction
    np.testing.assert_allclose(pan_velocity(2.0, seed + 1, angle=180.0), (-2.0, 0.0), atol=1e-12)
    right = render_motion_frames(still, 3, seed=seed, camera_pan=2.0, camera_pan_angle=0.0)
    np.testing.assert_array_equal(right[2][:, 12:-12], still.image[:, 10:-14])  # content 2 px further right
    frames = render_motion_frames(still, 5, seed=seed, camera_pan=speed)
    assert frames[2].tobytes() == still.image.tobytes(), "the middle (sharp) frame is not panned"
    steady = render_motion_frames(still, 5, seed=seed, camera_pan=1.0, camera_pan_angle=0.0)
    width = still.image.shape[1]
    for index in (0, 1, 3, 4):  # each sub-frame's content moved (index - 2) px along the pan, exactly
        shift = index - 2
        np.testing.assert_array_equal(steady[index][:, 4 + shift:width - 4 + shift], still.image[:, 4:width - 4])
    # a pan is the same as adding its velocity to every layer of the still scene
    moved = still.with_motion(np.tile(velocity, (still.object_count, 1)), camera_motion=tuple(velocity))
    assert np.abs(frames.astype(int) - render_motion_frames(moved, 5)).mean() < 0.05


def test_blur_width_grows_with_the_pan_speed(scenes: list[Scene]) -> None:
    still = _still(scenes[2])
    blurred, sharp = render_motion_blur(still, 5, seed=3, camera_pan=0.0)
    assert blurred.tobytes() == sharp.tobytes(), "no pan, no shake, no motion: no blur"
    errors = []
    for speed in (0.5, 1.0, 2.0):
        blurred, sharp = render_motion_blur(still, 5, seed=3, camera_pan=speed)
        errors.append(np.abs(blurred.astype(int) - sharp).mean())
    assert errors[0] > 0.5 and errors[0] < errors[1] < errors[2]
    # so does the number of sub-frames at a fixed speed
    wider = np.abs(np.subtract(*render_motion_blur(still, 9, seed=3, camera_pan=1.0), dtype=int)).mean()
    assert wider > errors[1]
    with pytest.raises(ValueError, match="camera_pan"):
        render_motion_frames(still, 5, camera_pan=-1.0)


def test_gopro_writer_pans_and_records_it(tmp_path: Path) -> None:
    small = SceneConfig(image_size=(48, 64), object_count_range=(4, 4), max_object_speed=0.5, max_camera_speed=0.0)
    root = write_gopro_dataset(tmp_path, 1, 2, seed=9, blur_frames=5, camera_shake=0.0, camera_pan=1.0, config=small,
                               progress=False)
    record = json.loads((root / "test" / "generation.json").read_text())
    assert record["camera_pan"] == 1.0 and record["camera_shake"] == 0.0
    scene = generate_scene(record["sequences"]["GOPR0001_11_00"]["scene_seed"], small)
    assert scene.object_count == 4 and scene.camera_motion == (0.0, 0.0)
    assert np.all(np.hypot(*scene.motion.T) <= 0.5)
    for frame_index, (blur_path, sharp_path) in enumerate(pair_gopro(root, "test")):
        frames = render_motion_frames(scene, 5, seed=derive_seed(9, 0, frame_index), center_time=frame_index * 5.0,
                                      camera_pan=1.0)
        np.testing.assert_array_equal(read_rgb(blur_path), average_frames(frames, gamma=1.0))
        np.testing.assert_array_equal(read_rgb(sharp_path), frames[2])
        unpanned = render_motion_frames(scene, 5, seed=derive_seed(9, 0, frame_index), center_time=frame_index * 5.0)
        assert np.abs(read_rgb(blur_path).astype(int) - average_frames(unpanned, gamma=1.0)).mean() > 1.0


def test_objects_move_by_their_velocity(scenes: list[Scene]) -> None:
    scene = scenes[0].with_motion(np.tile((3.0, -2.0), (scenes[0].object_count, 1)))
    _, start = render_object(scene, 0, time=0.0)
    _, later = render_object(scene, 0, time=2.0)  # shifted by (+6, -4) px
    np.testing.assert_array_equal(later[:-4, 6:], start[4:, :-6])


def test_skimage_texture_source_is_deterministic() -> None:
    bank = TextureBank.load("skimage")
    assert bank.source == "skimage" and len(bank) == 8
    config = SceneConfig(image_size=(48, 64), texture_source="skimage")
    assert generate_scene(5, config).image.tobytes() == generate_scene(5, config, bank).image.tobytes()


def test_sots_outdoor_writer_round_trips_through_the_loaders(tmp_path: Path) -> None:
    root = write_sots_dataset(tmp_path / "sots", n_clear=2, seed=7, hazy_per_clear=2, config=CONFIG, progress=False)
    record = json.loads((root / "outdoor" / "generation.json").read_text())
    pairs = pair_sots(root, "outdoor")
    assert len(pairs) == 4
    for hazy_path, gt_path in pairs:
        name, airlight, beta = re.fullmatch(r"(\d{4})_([\d.]+)_([\d.]+)\.jpg", hazy_path.name).groups()
        assert gt_path.name == f"{name}.png" and gt_path.parent.name == "gt"
        assert record["hazy"][hazy_path.name] == {"gt": gt_path.name, "airlight": float(airlight), "beta": float(beta)}
        scene = generate_scene(record["scene_seeds"][name], CONFIG)
        np.testing.assert_array_equal(read_rgb(gt_path), scene.image)
        expected = render_hazy(scene, float(beta), float(airlight)).astype(float)
        assert np.abs(read_rgb(hazy_path) - expected).mean() < 3.0  # JPEG
    dataset = PairedImageDataset.from_kwargs(root, "sots", split="outdoor")
    item = dataset[0]
    assert item["key"] == pairs[0][0].stem and item["gt_path"] == str(pairs[0][1])
    np.testing.assert_allclose(item["gt"].permute(1, 2, 0).numpy(), read_rgb(pairs[0][1]) / 255.0, atol=1e-6)


def test_sots_indoor_writer_uses_level_names(tmp_path: Path) -> None:
    root = write_sots_dataset(tmp_path, n_clear=1, seed=2, split="indoor", hazy_per_clear=3, config=CONFIG, progress=False)
    pairs = pair_sots(root, "indoor")
    assert [(hazy.name, gt.name) for hazy, gt in pairs] == [(f"1400_{level}.png", "1400.png") for level in (1, 2, 3)]
    record = json.loads((root / "indoor" / "generation.json").read_text())
    scene = generate_scene(record["scene_seeds"]["1400"], CONFIG)
    for hazy_path, _ in pairs:
        parameters = record["hazy"][hazy_path.name]
        np.testing.assert_array_equal(read_rgb(hazy_path), render_hazy(scene, parameters["beta"], parameters["airlight"]))


def test_gopro_writer_round_trips_through_the_loaders(tmp_path: Path) -> None:
    root = write_gopro_dataset(tmp_path, n_sequences=2, frames_per_sequence=2, seed=4, blur_frames=5, config=CONFIG, progress=False)
    record = json.loads((root / "test" / "generation.json").read_text())
    pairs = pair_gopro(root, "test")
    names = [blur.relative_to(root).as_posix() for blur, _ in pairs]
    assert names == [f"test/GOPR000{s}_11_00/blur/00000{f}.png" for s in (1, 2) for f in (1, 2)]
    for sequence_index, sequence_name in enumerate(("GOPR0001_11_00", "GOPR0002_11_00")):
        scene = generate_scene(record["sequences"][sequence_name]["scene_seed"], CONFIG)
        for frame_index in range(2):
            blur_path, sharp_path = pairs[2 * sequence_index + frame_index]
            assert sharp_path == blur_path.parent.parent / "sharp" / blur_path.name
            np.testing.assert_array_equal(read_rgb(sharp_path), render_frame(scene, time=frame_index * 5.0)[0])
            frames = render_motion_frames(
                scene, 5, seed=derive_seed(4, sequence_index, frame_index), center_time=frame_index * 5.0, camera_shake=record["camera_shake"]
            )
            np.testing.assert_array_equal(read_rgb(blur_path), average_frames(frames, gamma=1.0))
            gamma_path = blur_path.parent.parent / "blur_gamma" / blur_path.name
            np.testing.assert_array_equal(read_rgb(gamma_path), average_frames(frames, gamma=2.2))
    assert len(pair_gopro(root, "test", blur_dir="blur_gamma")) == 4
    dataset = PairedImageDataset.from_kwargs(root, "gopro", split="test", phase="train", crop_size=48, use_flip=True, use_rot=True)
    item = dataset[3]
    assert item["lq"].shape == item["gt"].shape == (3, 48, 48)
    assert item["key"] == "GOPR0002_11_00/blur/000002"  # relative to dataroot_lq, the split folder


def test_coco_annotations_decode_to_the_instance_masks(tmp_path: Path) -> None:
    root = write_instance_dataset(tmp_path, n_images=2, seed=11, config=CONFIG, progress=False)
    coco = json.loads((root / "annotations.json").read_text())
    assert coco["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    for image_entry in coco["images"]:
        scene = generate_scene(image_entry["scene_seed"], CONFIG)
        instance_map = cv2.imread(str(root / "instances" / image_entry["file_name"]), cv2.IMREAD_UNCHANGED)
        assert instance_map.dtype == np.uint8
        np.testing.assert_array_equal(instance_map, scene.instances)
        np.testing.assert_array_equal(read_rgb(root / "images" / image_entry["file_name"]), scene.image)
        annotations = [a for a in coco["annotations"] if a["image_id"] == image_entry["id"]]
        assert [a["instance_id"] for a in annotations] == list(range(1, scene.object_count + 1))
        for annotation, mask, box in zip(annotations, scene.masks, scene.boxes):
            np.testing.assert_array_equal(mask_utils.decode(annotation["segmentation"]).astype(bool), mask)
            assert annotation["area"] == mask.sum() and annotation["iscrowd"] == 0
            x_min, y_min, x_max, y_max = box
            assert annotation["bbox"] == [x_min, y_min, x_max - x_min, y_max - y_min]


def test_writers_refuse_non_empty_folders(tmp_path: Path) -> None:
    small = SceneConfig(image_size=(32, 40), object_count_range=(1, 2), min_object_area=16)
    (tmp_path / "instances_root").mkdir()
    (tmp_path / "instances_root" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="instances_root"):
        write_instance_dataset(tmp_path / "instances_root", 1, seed=0, config=small, progress=False)
    write_instance_dataset(tmp_path / "instances_root", 2, seed=0, config=small, overwrite=True, progress=False)
    write_instance_dataset(tmp_path / "instances_root", 1, seed=0, config=small, overwrite=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "instances_root" / "images").iterdir()) == ["000001.png"]
    assert (tmp_path / "instances_root" / "notes.txt").exists()

    write_sots_dataset(tmp_path / "sots", 1, seed=0, config=small, progress=False)
    with pytest.raises(FileExistsError, match="outdoor"):
        write_sots_dataset(tmp_path / "sots", 1, seed=0, config=small, progress=False)
    write_sots_dataset(tmp_path / "sots", 1, seed=0, split="indoor", hazy_per_clear=1, config=small, progress=False)

    write_gopro_dataset(tmp_path / "gopro", 1, 1, seed=0, blur_frames=3, config=small, progress=False)
    with pytest.raises(FileExistsError, match="gopro"):
        write_gopro_dataset(tmp_path / "gopro", 1, 1, seed=0, blur_frames=3, config=small, progress=False)


def test_scene_arrays_are_the_same_from_parallel_workers() -> None:
    from robustprior.data.scenes import generate_scene_arrays

    serial = generate_scene_arrays(3, 70, workers=1)  # two blocks of 64 and 6 scenes
    parallel = generate_scene_arrays(3, 70, workers=2)
    assert np.array_equal(serial[0], parallel[0]) and np.array_equal(serial[1], parallel[1])
    assert serial[2] == parallel[2]
    scene = generate_scene(derive_seed(3, 65))
    assert np.array_equal(parallel[0][65], scene.image)
    assert np.array_equal(parallel[1][65], scene.instances) and parallel[2][65] == scene.kinds
    with pytest.raises(ValueError, match="count must be positive"):
        generate_scene_arrays(3, 0)


def test_default_world_does_not_depend_on_shared_data(monkeypatch, tmp_path) -> None:
    """One world for everyone: the default scenes are scikit-image-textured whether or not photos lie in
    ../shared beside the checkout or $ROBUSTPRIOR_SHARED_DATA names a folder; only a named folder changes them."""
    import hashlib

    from robustprior.data.scenes import TextureBank, _cached_texture_bank

    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "flat.png"), np.full((64, 64, 3), 200, np.uint8))
    monkeypatch.setenv("ROBUSTPRIOR_SHARED_DATA", str(tmp_path))
    _cached_texture_bank.cache_clear()
    assert TextureBank.load().source == "skimage"
    config = SceneConfig(image_size=(64, 64))
    default = generate_scene(derive_seed(0, 1), config)
    named_skimage = generate_scene(derive_seed(0, 1), SceneConfig(image_size=(64, 64), texture_source="skimage"))
    named_folder = generate_scene(derive_seed(0, 1), SceneConfig(image_size=(64, 64), texture_source=str(photos)))
    assert np.array_equal(default.image, named_skimage.image)
    assert not np.array_equal(default.image, named_folder.image)
    # the fingerprint of the default world (scikit-image photos, this OpenCV): changes only with those packages
    digest = hashlib.sha256()
    for index in range(4):
        scene = generate_scene(derive_seed(0, index), config)
        digest.update(scene.image.tobytes())
        digest.update(scene.instances.tobytes())
    assert digest.hexdigest()[:16] == DEFAULT_WORLD_FINGERPRINT
