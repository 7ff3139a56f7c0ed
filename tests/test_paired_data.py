"""Paired restoration data: SOTS/GoPro pairing, image decoding and the augmenting dataset."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from restoration.paired_data import (
    DataLayoutError,
    PairedImageDataset,
    locate_dataset,
    match_clean_size,
    pair_gopro,
    pair_sots,
    read_pair,
    read_rgb,
    read_rgb_float,
)


def _write(path: Path, array: np.ndarray) -> Path:
    """Write an OpenCV-ordered (BGR/BGRA/gray) array, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def _touch_images(folder: Path, names: list[str]) -> None:
    for name in names:
        _write(folder / name, np.zeros((4, 4, 3), np.uint8))


def _coordinate_image(height: int, width: int) -> np.ndarray:
    """H x W x 3 uint8 (BGR order on disk) whose channels encode (row, column, noise)."""
    rows, columns = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(0).integers(0, 256, (height, width))
    return np.stack([noise, columns, rows], axis=2).astype(np.uint8)  # written BGR -> read RGB = (row, column, noise)


def _synthetic_pair_root(root: Path, height: int = 70, width: int = 90) -> Path:
    """A flat SOTS folder whose gt is the photographic negative of lq."""
    lq = _coordinate_image(height, width)
    _write(root / "hazy" / "0001_0.9_0.1.png", lq)
    _write(root / "gt" / "0001.png", 255 - lq)
    return root


# ----------------------------------------------------------------------------- pairing
def test_pair_sots_on_the_real_sample(shared_data: Path) -> None:
    pairs = pair_sots(shared_data / "sots-outdoor-sample")
    assert [(hazy.name, gt.name) for hazy, gt in pairs] == [("0001_0.8_0.2.jpg", "0001.png"), ("0002_0.8_0.08.jpg", "0002.png")]
    assert all(gt.parent.name == "gt" and hazy.parent.name == "hazy" for hazy, gt in pairs)


def test_pair_gopro_on_the_real_sample(shared_data: Path) -> None:
    pairs = pair_gopro(shared_data / "gopro-style-sample")
    assert [(blur.parent.name, blur.name, sharp.parent.name, sharp.name) for blur, sharp in pairs] == [
        ("blur", "Flower.png", "sharp", "Flower.png"),
        ("blur", "Istanbul.png", "sharp", "Istanbul.png"),
    ]


def test_dataset_on_the_real_samples(shared_data: Path) -> None:
    sots = PairedImageDataset.from_kwargs(shared_data / "sots-outdoor-sample", "sots")
    item = sots[1]
    assert item["lq"].shape == item["gt"].shape == (3, 413, 550)
    assert item["key"] == "0002_0.8_0.08" and item["gt_path"].endswith("gt/0002.png")
    gopro = PairedImageDataset.from_kwargs(shared_data / "gopro-style-sample", "gopro", phase="train", crop_size=64, seed=3)
    item = gopro[0]
    assert item["lq"].shape == item["gt"].shape == (3, 64, 64)
    assert item["lq"].dtype == item["gt"].dtype and 0.0 <= float(item["lq"].min()) <= float(item["lq"].max()) <= 1.0


def test_unmatched_hazy_image_is_named(tmp_path: Path) -> None:
    _touch_images(tmp_path / "hazy", ["0001_0.9_0.1.jpg", "0003_1_0.2.jpg"])
    _touch_images(tmp_path / "gt", ["0001.png"])
    with pytest.raises(ValueError, match=r"1 hazy image\(s\).*0003_1_0\.2\.jpg"):
        pair_sots(tmp_path)
    _touch_images(tmp_path / "hazy", [f"{index:04d}_1_0.2.jpg" for index in range(10, 18)])
    with pytest.raises(ValueError, match=r"9 hazy image\(s\).*\(\+4 more\)"):
        pair_sots(tmp_path)


def test_empty_or_missing_folders_raise(tmp_path: Path) -> None:
    (tmp_path / "hazy").mkdir()
    (tmp_path / "gt").mkdir()
    with pytest.raises(ValueError, match="no hazy images"):
        pair_sots(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        pair_sots(tmp_path, "indoor")
    with pytest.raises(ValueError, match="no GoPro data"):
        pair_gopro(tmp_path)


def test_pair_sots_layouts(tmp_path: Path) -> None:
    _touch_images(tmp_path / "indoor" / "hazy", ["1400_1.png", "1400_10.png", "1400_2.png", "1401_1.png"])
    _touch_images(tmp_path / "indoor" / "gt", ["1400.png", "1401.png"])
    _touch_images(tmp_path / "outdoor" / "hazy", ["0001_0.8_0.2.jpg"])
    _touch_images(tmp_path / "outdoor" / "gt", ["0001.jpg"])
    indoor = pair_sots(tmp_path, "indoor")
    assert [(hazy.name, gt.name) for hazy, gt in indoor] == [
        ("1400_1.png", "1400.png"), ("1400_2.png", "1400.png"), ("1400_10.png", "1400.png"), ("1401_1.png", "1401.png")
    ]
    assert [(hazy.name, gt.name) for hazy, gt in pair_sots(tmp_path, "outdoor")] == [("0001_0.8_0.2.jpg", "0001.jpg")]
    with pytest.raises(ValueError, match="several SOTS folders.*indoor, outdoor"):
        pair_sots(tmp_path)
    # ITS: hazy/ with clear/, nested one level below the split (like SOTS indoor/nyuhaze500)
    _touch_images(tmp_path / "ITS" / "train" / "hazy", ["1_1_0.90179.png", "1_2_0.85.png"])
    _touch_images(tmp_path / "ITS" / "train" / "clear", ["1.png"])
    assert [(hazy.name, gt.name) for hazy, gt in pair_sots(tmp_path, "ITS")] == [("1_1_0.90179.png", "1.png"), ("1_2_0.85.png", "1.png")]


def test_pair_gopro_layouts(tmp_path: Path) -> None:
    for sequence in ("GOPR0384_11_00", "GOPR0396_11_00"):
        for folder in ("blur", "blur_gamma", "sharp"):
            _touch_images(tmp_path / "test" / sequence / folder, ["000001.png", "000002.png"])
    pairs = pair_gopro(tmp_path, "test")
    assert [blur.relative_to(tmp_path).as_posix() for blur, _ in pairs][:2] == [
        "test/GOPR0384_11_00/blur/000001.png", "test/GOPR0384_11_00/blur/000002.png"
    ]
    assert all(sharp == blur.parent.parent / "sharp" / blur.name for blur, sharp in pairs) and len(pairs) == 4
    assert all(blur.parent.name == "blur_gamma" for blur, _ in pair_gopro(tmp_path, "test", blur_dir="blur_gamma"))
    (tmp_path / "test" / "GOPR0396_11_00" / "sharp" / "000002.png").unlink()
    with pytest.raises(DataLayoutError, match=r"1 blurred image\(s\).*GOPR0396_11_00/blur/000002\.png"):
        pair_gopro(tmp_path, "test")
    with pytest.raises(DataLayoutError, match="no GoPro data"):
        pair_gopro(tmp_path, split="train")
    with pytest.raises(DataLayoutError, match="give split .*folders here: test"):
        pair_gopro(tmp_path)  # a nested layout needs its split


def test_a_flat_gopro_folder_has_no_train_or_test_split(tmp_path: Path) -> None:
    """Today both splits of a flat folder would read the same files: training on the test set."""
    for folder in ("blur", "sharp"):
        _touch_images(tmp_path / folder, ["000001.png"])
    assert len(pair_gopro(tmp_path)) == 1  # split null: the flat folder, for one purpose
    for split in ("train", "test"):
        with pytest.raises(DataLayoutError, match=f"flat GoPro folder.*no '{split}' split.*training on the test set"):
            pair_gopro(tmp_path, split)
        with pytest.raises(DataLayoutError):
            PairedImageDataset.from_kwargs(tmp_path, "gopro", split=split)


# ----------------------------------------------------------------------------- decoding
def test_read_rgb_converts_bgr_gray_rgba_and_16_bit(tmp_path: Path) -> None:
    bgr = np.zeros((5, 6, 3), np.uint8)
    bgr[..., 0], bgr[..., 2] = 10, 200  # blue 10, red 200
    np.testing.assert_array_equal(read_rgb(_write(tmp_path / "color.png", bgr))[0, 0], [200, 0, 10])

    gray = np.arange(30, dtype=np.uint8).reshape(5, 6)
    rgb = read_rgb(_write(tmp_path / "gray.png", gray))
    assert rgb.shape == (5, 6, 3) and all((rgb[..., c] == gray).all() for c in range(3))

    bgra = np.dstack([bgr, np.full((5, 6), 7, np.uint8)])
    np.testing.assert_array_equal(read_rgb(_write(tmp_path / "rgba.png", bgra)), read_rgb(tmp_path / "color.png"))

    deep = (np.arange(90, dtype=np.uint16).reshape(5, 6, 3) * 257 * 2 + 300).astype(np.uint16)
    deep[0, 0] = (65535, 0, 257 * 128)
    path = _write(tmp_path / "deep.png", deep)
    rgb = read_rgb(path)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], [128, 0, 255])
    np.testing.assert_array_equal(rgb, np.rint(deep[..., ::-1] / 257.0).astype(np.uint8))
    as_float = read_rgb_float(path)
    assert as_float.dtype == np.float32
    np.testing.assert_allclose(as_float, deep[..., ::-1] / 65535.0, atol=1e-7)

    deep_gray = read_rgb_float(_write(tmp_path / "deep_gray.png", np.full((3, 4), 65535, np.uint16)))
    assert deep_gray.shape == (3, 4, 3) and (deep_gray == 1.0).all()


def test_corrupt_or_missing_files_are_named(tmp_path: Path) -> None:
    root = _synthetic_pair_root(tmp_path)
    (root / "hazy" / "0002_1_0.2.png").write_bytes(b"definitely not a png")
    _write(root / "gt" / "0002.png", np.zeros((8, 8, 3), np.uint8))
    (root / "hazy" / "0003_1_0.2.png").write_bytes(b"")
    _write(root / "gt" / "0003.png", np.zeros((8, 8, 3), np.uint8))
    dataset = PairedImageDataset.from_kwargs(root, "sots")
    with pytest.raises(ValueError, match=r"0002_1_0\.2\.png"):
        dataset[1]
    with pytest.raises(ValueError, match=r"0003_1_0\.2\.png"):
        dataset[2]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_rgb(tmp_path / "missing.png")


def test_mixed_bit_depths_and_channels_in_one_pair(tmp_path: Path) -> None:
    gray = np.random.default_rng(1).integers(0, 256, (12, 10)).astype(np.uint8)
    _write(tmp_path / "hazy" / "0001_1_0.1.png", gray)
    _write(tmp_path / "gt" / "0001.png", np.dstack([gray, gray, gray, np.zeros_like(gray)]).astype(np.uint16) * 257)
    item = PairedImageDataset.from_kwargs(tmp_path, "sots")[0]
    assert item["lq"].shape == item["gt"].shape == (3, 12, 10)
    np.testing.assert_allclose(item["lq"].numpy(), item["gt"].numpy(), atol=1e-6)


def test_larger_gt_is_centre_cropped_and_smaller_gt_rejected(tmp_path: Path) -> None:
    clean = _coordinate_image(40, 50)
    _write(tmp_path / "its" / "hazy" / "1_1_0.9.png", clean[10:30, 10:40])
    _write(tmp_path / "its" / "clear" / "1.png", clean)
    item = PairedImageDataset.from_kwargs(tmp_path / "its", "sots")[0]
    np.testing.assert_array_equal(item["lq"].numpy(), item["gt"].numpy())
    _write(tmp_path / "bad" / "hazy" / "1_1_0.9.png", clean)
    _write(tmp_path / "bad" / "gt" / "1.png", clean[:30])
    with pytest.raises(ValueError, match="size mismatch"):
        PairedImageDataset.from_kwargs(tmp_path / "bad", "sots")[0]


def test_one_crop_rule_for_a_larger_ground_truth(tmp_path: Path) -> None:
    """The centre crop starts at ((H' - H) // 2, (W' - W) // 2); read_pair (used to score inputs) and
    the dataset apply the same rule."""
    clean = _coordinate_image(41, 52)
    cropped = match_clean_size(np.zeros((20, 30, 3), np.uint8), clean)
    np.testing.assert_array_equal(cropped, clean[10:30, 11:41])  # (41 - 20) // 2 = 10, (52 - 30) // 2 = 11
    assert match_clean_size(clean, clean) is clean
    lq_path = _write(tmp_path / "its" / "hazy" / "1_1_0.9.png", clean[10:30, 11:41][..., ::-1].copy())
    gt_path = _write(tmp_path / "its" / "clear" / "1.png", clean[..., ::-1].copy())
    lq, gt = read_pair(lq_path, gt_path)
    np.testing.assert_array_equal(lq, gt)
    item = PairedImageDataset.from_kwargs(tmp_path / "its", "sots")[0]
    np.testing.assert_array_equal(_as_image(item["gt"]), gt)
    with pytest.raises(ValueError, match="size mismatch"):
        match_clean_size(clean, clean[:30])


# ----------------------------------------------------------------------------- dataset
def _as_image(tensor) -> np.ndarray:
    """3 x H x W tensor in [0, 1] -> H x W x 3 uint8."""
    return np.rint(tensor.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)


def _is_dihedral_block(crop: np.ndarray, size: int) -> bool:
    """Whether the (row, column) codes of an H x W x 3 crop form a size x size block, possibly flipped/transposed."""
    rows, columns = crop[..., 0].astype(int), crop[..., 1].astype(int)
    if np.all(np.abs(np.diff(rows, axis=0)) == 0):  # transposed: rows vary along columns
        rows, columns = rows.T, columns.T
    row_steps, column_steps = np.diff(rows, axis=0), np.diff(columns, axis=1)
    return (
        np.all(np.abs(row_steps) == 1) and len(np.unique(row_steps)) == 1
        and np.all(np.abs(column_steps) == 1) and len(np.unique(column_steps)) == 1
        and len(np.unique(rows)) == size and len(np.unique(columns)) == size
    )


def test_train_crops_are_aligned_and_augmented_identically(tmp_path: Path) -> None:
    root = _synthetic_pair_root(tmp_path)
    dataset = PairedImageDataset.from_kwargs(root, "sots", phase="train", crop_size=32, use_flip=True, use_rot=True, seed=5)
    orientations = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        item = dataset[0]
        lq, gt = _as_image(item["lq"]), _as_image(item["gt"])
        assert lq.shape == (32, 32, 3)
        np.testing.assert_array_equal(gt, 255 - lq)  # same region, same flips
        assert _is_dihedral_block(lq, 32)
        orientations.add((bool(lq[1, 0, 0] > lq[0, 0, 0]), bool(lq[0, 1, 1] > lq[0, 0, 1]), bool(lq[0, 1, 0] != lq[0, 0, 0])))
    assert len(orientations) >= 3, "flips/transposes should vary across epochs"


def test_train_crops_are_reproducible_under_the_seed(tmp_path: Path) -> None:
    root = _synthetic_pair_root(tmp_path)

    def crops(seed: int, epoch: int) -> list[np.ndarray]:
        dataset = PairedImageDataset({**locate_dataset("sots", root), "phase": "train", "gt_size": 24, "use_flip": True,
                                      "use_rot": True, "seed": seed})
        dataset.set_epoch(epoch)
        return [dataset[0]["lq"].numpy() for _ in range(2)]

    first, again = crops(1, 0), crops(1, 0)
    assert all(np.array_equal(a, b) for a, b in zip(first + first, again + again))
    others = [crops(seed, epoch)[0] for seed, epoch in ((1, 1), (2, 0), (3, 0), (1, 2))]
    assert any(not np.array_equal(first[0], other) for other in others)


def test_small_images_are_padded_to_the_crop(tmp_path: Path) -> None:
    root = _synthetic_pair_root(tmp_path, height=20, width=26)
    item = PairedImageDataset.from_kwargs(root, "sots", phase="train", crop_size=32)[0]
    lq, gt = _as_image(item["lq"]), _as_image(item["gt"])
    assert lq.shape == gt.shape == (32, 32, 3)
    np.testing.assert_array_equal(gt, 255 - lq)
    np.testing.assert_array_equal(lq[:20, :26], _coordinate_image(20, 26)[..., ::-1])


def test_test_phase_returns_full_images(tmp_path: Path) -> None:
    root = _synthetic_pair_root(tmp_path)
    dataset = PairedImageDataset({**locate_dataset("sots", root), "phase": "val", "gt_size": 16})
    assert len(dataset) == 1
    item = dataset[0]
    assert item["lq"].shape == (3, 70, 90) and item["key"] == "0001_0.9_0.1"
    np.testing.assert_array_equal(_as_image(item["lq"]), _coordinate_image(70, 90)[..., ::-1])
    with pytest.raises(ValueError, match="layout"):
        PairedImageDataset.from_kwargs(root, "rain")


def test_basicsr_paired_folders_and_dataset_roots(tmp_path: Path) -> None:
    """layout folders: BasicSR's dataroot_lq / dataroot_gt with filename_tmpl; locate_dataset finds the
    folders of a GoPro split folder and of a flat one."""
    from restoration.paired_data import list_pairs

    image = np.zeros((4, 4, 3), np.uint8)
    for folder, names in (("input", ["a_blur", "b_blur"]), ("target", ["a", "b"])):
        (tmp_path / folder).mkdir()
        for name in names:
            cv2.imwrite(str(tmp_path / folder / f"{name}.png"), image)
    pairs = list_pairs("folders", tmp_path / "input", tmp_path / "target", filename_tmpl="{}_blur")
    assert [(lq.name, gt.name) for lq, gt in pairs] == [("a_blur.png", "a.png"), ("b_blur.png", "b.png")]
    with pytest.raises(DataLayoutError, match="2 input image\\(s\\) have no clean partner"):
        list_pairs("folders", tmp_path / "input", tmp_path / "target")  # the default template '{}'
    with pytest.raises(DataLayoutError, match="dataroot_gt .*missing is not a folder"):
        list_pairs("folders", tmp_path / "input", tmp_path / "missing")
    for split in ("train", "test"):
        for folder in ("blur", "sharp"):
            (tmp_path / "GoPro" / split / "GOPR0001_11_00" / folder).mkdir(parents=True)
            cv2.imwrite(str(tmp_path / "GoPro" / split / "GOPR0001_11_00" / folder / "000001.png"), image)
    split_folder = str(tmp_path / "GoPro" / "train")
    assert locate_dataset("gopro", tmp_path / "GoPro", "train") == locate_dataset("gopro", split_folder) == {
        "layout": "gopro", "dataroot_lq": split_folder, "dataroot_gt": split_folder}
    sequence = tmp_path / "GoPro" / "test" / "GOPR0001_11_00"
    assert locate_dataset("gopro", sequence) == {"layout": "folders", "dataroot_lq": str(sequence / "blur"),
                                                 "dataroot_gt": str(sequence / "sharp")}
    assert len(list_pairs(**locate_dataset("gopro", split_folder))) == 1
