"""restoration.control_priors: ground-truth and shuffled instance masks as priors, on hand-made maps and
on the generator's own datasets."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from restoration.control_priors import (
    MissingInstanceMapsError,
    has_instance_maps,
    instance_map_path,
    read_instance_map,
    scene_key,
    shuffled_partners,
    shuffled_sources,
)
from restoration.datasets import describe_prior_model, prepare_priors
from restoration.paired_data import pair_gopro, pair_sots
from robustprior.data.scenes import SceneConfig, derive_seed, generate_scene, render_frame, write_gopro_dataset, write_sots_dataset


def _hand_made(folder: Path) -> list[Path]:
    """Three 'hazy' images with instance maps: image i has a square labelled 1 at column 4 i, and
    image 2 also a second object labelled 2."""
    paths = []
    for index in range(3):
        hazy = folder / "hazy" / f"{index + 1:04d}_0.8_0.1.png"
        hazy.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(hazy), np.full((16, 20, 3), 40 * index, np.uint8))
        instances = np.zeros((16, 20), np.uint16)
        instances[2:6, 4 * index:4 * index + 4] = 1
        if index == 2:
            instances[10:14, 10:18] = 2
        (folder / "instances").mkdir(exist_ok=True)
        cv2.imwrite(str(folder / "instances" / f"{index + 1:04d}.png"), instances)
        paths.append(hazy)
    return paths


def test_gt_masks_prior_is_the_instance_map(tmp_path: Path) -> None:
    paths = _hand_made(tmp_path / "data")
    index = prepare_priors({"kind": "gt_masks"}, paths, tmp_path / "cache", progress=False)
    for path in paths:
        prior = index.load(path)
        instances = read_instance_map(instance_map_path(path))
        assert prior.num_masks == len(np.unique(instances)) - 1
        # regions are the objects (relabelled), background stays 0
        assert np.array_equal(prior.label_map > 0, instances > 0)
        for region in np.unique(prior.label_map[prior.label_map > 0]):
            assert len(np.unique(instances[prior.label_map == region])) == 1
    assert index.description["model"] == describe_prior_model("gt_masks", None)


def test_shuffled_masks_come_from_another_image(tmp_path: Path) -> None:
    paths = _hand_made(tmp_path / "data")
    partners = shuffled_sources(paths, seed=4)
    assert sorted(partners) == sorted(partners.values()) == sorted(str(path) for path in paths)
    assert all(source != target for source, target in partners.items())
    index = prepare_priors({"kind": "shuffled_masks", "shuffle_seed": 4}, paths, tmp_path / "cache", progress=False)
    for path in paths:
        other = read_instance_map(instance_map_path(partners[str(path)]))
        assert np.array_equal(index.load(path).label_map > 0, other > 0)
    assert shuffled_partners(["a", "b", "c", "d"], 1) == shuffled_partners(["a", "b", "c", "d"], 1)
    with pytest.raises(ValueError, match="at least 2 scenes"):
        shuffled_partners(["a"], 0)


def test_shuffling_pairs_scenes_so_no_frame_gets_its_own_sequence() -> None:
    frames = [f"/d/test/GOPR{sequence:04d}_11_00/blur/{frame:06d}.png" for sequence in (1, 2, 3) for frame in (1, 2)]
    sources = shuffled_sources(frames, seed=0)
    assert all(scene_key(frame) != scene_key(source) for frame, source in sources.items())
    assert sorted(sources.values()) == sorted(frames)  # every map used once
    hazy = ["/d/outdoor/hazy/0001_0.8_0.1.jpg", "/d/outdoor/hazy/0001_0.9_0.2.jpg", "/d/outdoor/hazy/0002_0.8_0.1.jpg"]
    assert scene_key(hazy[0]) == scene_key(hazy[1]) != scene_key(hazy[2])
    assert all(scene_key(path) != scene_key(source) for path, source in shuffled_sources(hazy, 1).items())


def test_data_without_instance_maps_is_a_one_line_error(tmp_path: Path) -> None:
    paths = _hand_made(tmp_path / "data")
    instance_map_path(paths[1]).unlink()
    assert not has_instance_maps(paths) and has_instance_maps([paths[0]]) and not has_instance_maps([])
    with pytest.raises(MissingInstanceMapsError, match="gt_masks control row needs the scene generator's instance "
                                                       "maps.*real data does not"):
        prepare_priors({"kind": "gt_masks"}, paths, tmp_path / "cache", progress=False)


def test_generated_sots_and_gopro_carry_their_true_instances(tmp_path: Path) -> None:
    config = SceneConfig(image_size=(48, 56))
    write_sots_dataset(tmp_path / "sots", 2, seed=3, config=config, progress=False)
    pairs = pair_sots(tmp_path / "sots")
    assert len(pairs) == 2 and has_instance_maps([lq for lq, _ in pairs])
    first = read_instance_map(instance_map_path(pairs[0][0]))
    assert np.array_equal(first, generate_scene(derive_seed(3, 0), config).instances)
    write_gopro_dataset(tmp_path / "gopro", 1, 2, seed=3, split="test", config=config, progress=False)
    pairs = pair_gopro(tmp_path / "gopro", "test")
    assert len(pairs) == 2 and has_instance_maps([lq for lq, _ in pairs])
    scene = generate_scene(derive_seed(3, 0), config)
    sharp, instances = render_frame(scene, 7.0)  # frame 2 of 7 sub-frames: the sharp middle sub-frame at time 7
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(pairs[1][1])), cv2.COLOR_BGR2RGB), sharp)
    assert np.array_equal(read_instance_map(instance_map_path(pairs[1][0])), instances)
