"""Paired (degraded, clean) image data for restoration: SOTS/RESIDE dehazing and GoPro deblurring.

* ``list_pairs`` lists the ``(degraded, clean)`` file pairs of a data section (BasicSR's
  ``dataroot_lq`` / ``dataroot_gt`` in one of :data:`LAYOUTS`) and fails loudly on files without a
  partner; ``locate_dataset`` finds those folders in a SOTS/RESIDE or GoPro dataset root as released
  (``pair_sots`` / ``pair_gopro``: both at once).
* ``read_rgb`` / ``read_rgb_float`` decode any 8/16-bit, grayscale/RGB/RGBA image to RGB.
* ``match_clean_size`` is the one rule for a ground truth larger than its input (centre crop);
  :func:`read_pair` applies it, and so does everything that scores an input or a restored image.
* ``PairedImageDataset`` serves the pairs as tensors, with aligned random crops and dihedral
  augmentation for training.

A folder that does not hold the layout asked for is a :class:`DataLayoutError` (a
:class:`~robustprior.training.RunSetupError`: one line, raised before any run folder is made).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from robustprior.data.image_io import check_float_samples, read_native_rgb, read_rgb_image
from robustprior.training.errors import RunSetupError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
SOTS_HAZY_FOLDERS: tuple[str, ...] = ("hazy",)
SOTS_CLEAN_FOLDERS: tuple[str, ...] = ("gt", "GT", "clear", "clean")
GOPRO_SHARP_FOLDER = "sharp"
LAYOUTS: tuple[str, ...] = ("folders", "sots", "gopro")
PHASES: tuple[str, ...] = ("train", "val", "test")
LISTED_UNMATCHED = 5  # how many unmatched file names an error message spells out


class DataLayoutError(RunSetupError, ValueError):
    """A data folder does not hold the layout (or split) it was given as; the message says what was found."""


# ----------------------------------------------------------------------------- reading
def read_rgb(path: str | Path) -> np.ndarray:
    """H x W x 3 uint8 RGB. 16-bit samples become ``round(v / 257)`` (the inverse of the usual 8->16 ``v * 257``);
    float samples (in [0, 1], else a ``ValueError``) are scaled by 255."""
    return read_rgb_image(path)


def read_rgb_float(path: str | Path) -> np.ndarray:
    """H x W x 3 float32 RGB in [0, 1] at full precision (8-bit / 255, 16-bit / 65535, float as it is: NaN / Inf
    or values outside [0, 1] are a one-line ``ValueError``, :func:`robustprior.data.image_io.check_float_samples`)."""
    image = read_native_rgb(path)
    if image.dtype == np.float32:
        check_float_samples(image, str(path))
        return image
    return (image.astype(np.float32) / float(np.iinfo(image.dtype).max)).astype(np.float32)


# ----------------------------------------------------------------------------- pairing
def _natural_key(path: Path) -> list[Any]:
    """Sort key ordering ``1400_2`` before ``1400_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def _image_files(folder: Path) -> list[Path]:
    """Visible image files directly inside ``folder``, naturally sorted."""
    files = [
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    return sorted(files, key=_natural_key)


def _describe_unmatched(unmatched: list[Path], what: str) -> str:
    listed = ", ".join(str(path) for path in unmatched[:LISTED_UNMATCHED])
    more = f" (+{len(unmatched) - LISTED_UNMATCHED} more)" if len(unmatched) > LISTED_UNMATCHED else ""
    return f"{len(unmatched)} {what}: {listed}{more}"


def _index_by_stem(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` keyed by stem; two files sharing a stem is an error."""
    index: dict[str, Path] = {}
    for path in _image_files(folder):
        if path.stem in index:
            raise DataLayoutError(f"ambiguous ground truth: {index[path.stem]} and {path} share the name {path.stem!r}")
        index[path.stem] = path
    return index


def _pair_by_key(
    degraded_folder: Path, clean_folder: Path, key_of: Callable[[str], str], what: str,
    clean: dict[str, Path] | None = None,
) -> list[tuple[Path, Path]]:
    """Pair each degraded image with the clean image whose stem is ``key_of(degraded_stem)`` (in
    ``clean``, default the clean folder's images by stem)."""
    degraded = _image_files(degraded_folder)
    if not degraded:
        raise DataLayoutError(f"no {what} images found in {degraded_folder}")
    if clean is None:
        clean = _index_by_stem(clean_folder) if clean_folder.is_dir() else {}
    unmatched = [path for path in degraded if key_of(path.stem) not in clean]
    if unmatched:
        raise DataLayoutError(_describe_unmatched(unmatched, f"{what} image(s) have no clean partner in {clean_folder}"))
    return [(path, clean[key_of(path.stem)]) for path in degraded]


def _child_named(folder: Path, names: Iterable[str]) -> Path | None:
    for name in names:
        if (folder / name).is_dir():
            return folder / name
    return None


def _is_sots_folder(folder: Path) -> bool:
    return _child_named(folder, SOTS_HAZY_FOLDERS) is not None and _child_named(folder, SOTS_CLEAN_FOLDERS) is not None


def _find_sots_folder(base: Path) -> Path:
    """``base`` itself if it holds ``hazy/`` and a clean folder, else its single such (grand)child."""
    if _is_sots_folder(base):
        return base
    children = sorted(path for path in base.iterdir() if path.is_dir())
    found = [child for child in children if _is_sots_folder(child)]
    if not found:
        grandchildren = [path for child in children for path in sorted(child.iterdir()) if path.is_dir()]
        found = [grandchild for grandchild in grandchildren if _is_sots_folder(grandchild)]
    if not found:
        raise DataLayoutError(f"no folder with hazy/ and one of {SOTS_CLEAN_FOLDERS} found in or under {base}")
    if len(found) > 1:
        names = ", ".join(str(path.relative_to(base)) for path in found)
        raise DataLayoutError(f"several SOTS folders under {base} ({names}); pass split= to choose one")
    return found[0]


def _pair_folders(lq_folder: Path, gt_folder: Path, filename_tmpl: str) -> list[tuple[Path, Path]]:
    """BasicSR's paired folders: each ground truth ``NAME.*`` of ``gt_folder`` pairs with the input
    ``filename_tmpl.format(NAME).*`` of ``lq_folder``; inputs without a partner are an error."""
    for folder, what in ((lq_folder, "dataroot_lq"), (gt_folder, "dataroot_gt")):
        if not folder.is_dir():
            raise DataLayoutError(f"{what} {folder} is not a folder")
    clean = _index_by_stem(gt_folder)
    try:
        by_input = {filename_tmpl.format(stem): path for stem, path in clean.items()}
    except (IndexError, KeyError, ValueError) as error:
        raise DataLayoutError(f"filename_tmpl {filename_tmpl!r} is not a format string of one name ({error})") from None
    return _pair_by_key(lq_folder, gt_folder, lambda stem: stem, "input",
                        clean=by_input)


def _pair_gopro_sequences(lq_root: Path, gt_root: Path, blur_dir: str) -> list[tuple[Path, Path]]:
    """GoPro's release layout: ``lq_root/SEQUENCE/{blur_dir}/X.png`` with ``gt_root/SEQUENCE/sharp/X.png``."""
    if not lq_root.is_dir():
        raise DataLayoutError(f"no GoPro data: {lq_root} is not a folder (expected SEQUENCE/{blur_dir}/ folders in it)")
    sequences = sorted((p for p in lq_root.iterdir() if p.is_dir()), key=_natural_key)
    if not sequences:
        raise DataLayoutError(f"no sequence folders found in {lq_root}")
    missing = [sequence for sequence in sequences if not (sequence / blur_dir).is_dir()]
    if missing:
        raise DataLayoutError(_describe_unmatched(missing, f"sequence folder(s) lack a {blur_dir}/ folder"))
    return [pair for sequence in sequences
            for pair in _pair_by_key(sequence / blur_dir, gt_root / sequence.name / GOPRO_SHARP_FOLDER,
                                     lambda stem: stem, "blurred")]


def list_pairs(layout: str, dataroot_lq: str | Path, dataroot_gt: str | Path, blur_dir: str = "blur",
               filename_tmpl: str = "{}") -> list[tuple[Path, Path]]:
    """The (degraded, clean) pairs of a data section, naturally sorted by degraded path.

    ``layout``: ``folders`` (BasicSR's paired folders: ``dataroot_lq`` and ``dataroot_gt`` hold the
    images, ``filename_tmpl`` maps a ground truth's name to its input's), ``sots`` (RESIDE:
    ``dataroot_lq`` the hazy folder, ``dataroot_gt`` the clear one; ``NAME_anything`` pairs with
    ``NAME``, many hazy images may share one ground truth) or ``gopro`` (GoPro's release: both roots
    a split folder of ``SEQUENCE/{blur_dir}/`` and ``SEQUENCE/sharp/``). :class:`DataLayoutError`
    for a missing folder, no images, or an input without a partner."""
    if layout not in LAYOUTS:
        raise DataLayoutError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    lq_root, gt_root = Path(dataroot_lq), Path(dataroot_gt)
    if not lq_root.is_dir():
        raise DataLayoutError(f"data folder {lq_root} does not exist")
    if layout == "folders":
        return _pair_folders(lq_root, gt_root, filename_tmpl)
    if layout == "sots":
        return _pair_by_key(lq_root, gt_root, lambda stem: stem.split("_")[0], "hazy")
    return _pair_gopro_sequences(lq_root, gt_root, blur_dir)


def locate_dataset(layout: str, root: str | Path, split: str | None = None, blur_dir: str = "blur") -> dict[str, str]:
    """``{"layout", "dataroot_lq", "dataroot_gt"}`` of a dataset root as the datasets are released.

    ``sots``: ``root`` (with ``split`` such as ``"outdoor"``/``"indoor"``, or without when it holds one
    split) or directly a folder with ``hazy/`` and ``gt/`` (also ``clear/``, ``clean/``; found up to
    two levels down). ``gopro``: ``root/SPLIT/SEQUENCE/{blur_dir}/`` with ``.../sharp/`` (``split``
    ``"train"`` or ``"test"``; without a split ``root`` may be such a split folder), or a flat ``root/{blur_dir}/`` with ``root/sharp/`` (``split`` None;
    the ``folders`` layout). A flat folder given a split is an error: a flat folder has no train /
    test split, and reading the same files for both would train on the test set."""
    root = Path(root)
    if layout == "sots":
        base = root / split if split is not None else root
        if not base.is_dir():
            raise DataLayoutError(f"SOTS folder {base} does not exist")
        folder = _find_sots_folder(base)
        return {"layout": "sots", "dataroot_lq": str(_child_named(folder, SOTS_HAZY_FOLDERS)),
                "dataroot_gt": str(_child_named(folder, SOTS_CLEAN_FOLDERS))}
    if layout != "gopro":
        raise DataLayoutError(f"a dataset root's layout is sots or gopro, got {layout!r}")
    flat = (root / blur_dir).is_dir()
    if split is None:
        if flat:
            return {"layout": "folders", "dataroot_lq": str(root / blur_dir), "dataroot_gt": str(root / GOPRO_SHARP_FOLDER)}
        if root.is_dir() and any((child / blur_dir).is_dir() for child in root.iterdir() if child.is_dir()):
            return {"layout": "gopro", "dataroot_lq": str(root), "dataroot_gt": str(root)}  # a split folder itself
        splits = sorted(path.name for path in root.iterdir() if path.is_dir()) if root.is_dir() else []
        raise DataLayoutError(f"no GoPro data in {root}: no {blur_dir}/ folder (a flat layout); for the "
                              f"ROOT/SPLIT/SEQUENCE/{blur_dir}/ layout give split (folders here: {', '.join(splits) or 'none'})")
    split_folder = root / split
    if not split_folder.is_dir():
        if flat:
            raise DataLayoutError(f"{root} is a flat GoPro folder ({blur_dir}/ and sharp/, no {split}/ folder): it has no "
                                  f"'{split}' split, and both splits would read the same files (training on the test "
                                  f"set); use ROOT/train/SEQUENCE/{blur_dir}/ and ROOT/test/SEQUENCE/{blur_dir}/, or "
                                  "split: null for a flat folder used for one purpose")
        raise DataLayoutError(f"no GoPro data: {split_folder} is not a folder (expected {root}/{split}/SEQUENCE/{blur_dir}/)")
    return {"layout": "gopro", "dataroot_lq": str(split_folder), "dataroot_gt": str(split_folder)}


def pair_sots(root: str | Path, split: str | None = None) -> list[tuple[Path, Path]]:
    """(hazy, gt) pairs of a RESIDE/SOTS dataset root (:func:`locate_dataset`), naturally sorted by hazy
    path: ``1400_1.png`` -> ``1400.png``, ``0001_0.8_0.2.jpg`` -> ``0001.png``, ITS ``1_1_0.90179.png``
    -> ``1.png``."""
    return list_pairs(**locate_dataset("sots", root, split))


def pair_gopro(root: str | Path, split: str | None = None, blur_dir: str = "blur") -> list[tuple[Path, Path]]:
    """(blurred, sharp) pairs of a GoPro dataset root (:func:`locate_dataset`), naturally sorted;
    files pair by stem."""
    return list_pairs(**locate_dataset("gopro", root, split, blur_dir), blur_dir=blur_dir)


# ----------------------------------------------------------------------------- dataset
def match_clean_size(degraded: np.ndarray, clean: np.ndarray, pair: tuple[Path | str, Path | str] = ("lq", "gt")
                     ) -> np.ndarray:
    """The one crop rule: ``clean`` (H' x W' x C) centre-cropped to ``degraded``'s H x W when it is at
    least as large in both sides (RESIDE ITS keeps a 10-px border on the clean images; the crop
    starts at ``((H' - H) // 2, (W' - W) // 2)``). A clean image smaller in a side is an error."""
    height, width = degraded.shape[:2]
    clean_height, clean_width = clean.shape[:2]
    if (clean_height, clean_width) == (height, width):
        return clean
    if clean_height < height or clean_width < width:
        raise ValueError(f"size mismatch: {pair[0]} is {width}x{height} but {pair[1]} is {clean_width}x{clean_height}")
    top, left = (clean_height - height) // 2, (clean_width - width) // 2
    return clean[top : top + height, left : left + width]


def read_pair(lq_path: str | Path, gt_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """An (input, ground truth) pair as H x W x 3 uint8 RGB arrays of the same size (:func:`match_clean_size`)."""
    lq = read_rgb(lq_path)
    return lq, match_clean_size(lq, read_rgb(gt_path), (lq_path, gt_path))


def _pad_to(images: list[np.ndarray], size: int) -> list[np.ndarray]:
    """Mirror-pad each H x W x C image at the bottom/right so both sides are at least ``size``."""
    height, width = images[0].shape[:2]
    padding = ((0, max(0, size - height)), (0, max(0, size - width)), (0, 0))
    return [np.pad(image, padding, mode="symmetric") for image in images]


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 float32 array -> 3 x H x W tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


class PairedImageDataset(Dataset):
    """(lq, gt) pairs of a data section as 3 x H x W float32 tensors in [0, 1].

    ``opt`` (BasicSR's keys): ``dataroot_lq``, ``dataroot_gt``, ``layout`` (:func:`list_pairs`;
    default ``folders``), ``filename_tmpl`` (folders), ``blur_dir`` (gopro), ``phase`` ("train" |
    "val" | "test"), ``gt_size`` (training crops; None = full images), ``use_flip`` (horizontal
    flips), ``use_rot`` (vertical flips and transposes, together with flips all 8
    rotations/reflections), ``seed``.

    Training items are cropped at the same place in lq and gt (images smaller than the crop are
    mirror-padded first) and augmented identically, from a generator seeded with
    ``(seed, epoch, index)``: call ``set_epoch`` each epoch for fresh yet reproducible crops.
    """

    def __init__(self, opt: dict[str, Any]):
        super().__init__()
        self.opt = dict(opt)
        self.layout = self.opt.get("layout", "folders")
        self.phase = self.opt.get("phase", "test")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")
        missing = [key for key in ("dataroot_lq", "dataroot_gt") if not self.opt.get(key)]
        if missing:
            raise ValueError(f"opt needs {' and '.join(missing)}")
        self.root = Path(self.opt["dataroot_lq"])
        self.crop_size: int | None = self.opt.get("gt_size")
        self.use_flip = bool(self.opt.get("use_flip", False))
        self.use_rot = bool(self.opt.get("use_rot", False))
        self.seed = int(self.opt.get("seed", 0))
        self.epoch = 0
        self.pairs = list_pairs(self.layout, self.root, self.opt["dataroot_gt"], self.opt.get("blur_dir", "blur"),
                                self.opt.get("filename_tmpl", "{}"))

    @classmethod
    def from_kwargs(
        cls,
        dataroot: str | Path,
        layout: str,
        split: str | None = None,
        phase: str = "test",
        crop_size: int | None = None,
        use_flip: bool = False,
        use_rot: bool = False,
        seed: int = 0,
        blur_dir: str = "blur",
    ) -> PairedImageDataset:
        """The data of a SOTS or GoPro dataset root as released (:func:`locate_dataset`)."""
        opt = {**locate_dataset(layout, dataroot, split, blur_dir), "phase": phase, "gt_size": crop_size,
               "use_flip": use_flip, "use_rot": use_rot, "seed": seed, "blur_dir": blur_dir}
        return cls(opt)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops/augmentations ``__getitem__`` draws (set before building workers)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.pairs)

    def key(self, index: int) -> str:
        """Stable id of item ``index``: its degraded path relative to ``dataroot_lq``, without suffix."""
        lq_path = self.pairs[index][0]
        return lq_path.relative_to(self.root).with_suffix("").as_posix()

    def augment(self, lq: np.ndarray, gt: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Aligned random crop and dihedral augmentation of H x W x C lq and gt: item ``index``'s draw
        for the current epoch, so any other array of that item (e.g. a prior map) can get the same."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))
        images = [lq, gt]
        if self.crop_size is not None:
            images = _pad_to(images, self.crop_size)
            height, width = images[0].shape[:2]
            top = int(rng.integers(0, height - self.crop_size + 1))
            left = int(rng.integers(0, width - self.crop_size + 1))
            images = [image[top : top + self.crop_size, left : left + self.crop_size] for image in images]
        if self.use_flip and rng.random() < 0.5:
            images = [image[:, ::-1] for image in images]
        if self.use_rot:
            if rng.random() < 0.5:
                images = [image[::-1] for image in images]
            if rng.random() < 0.5:
                images = [image.transpose(1, 0, 2) for image in images]
        return images[0], images[1]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``{"lq", "gt"}``: 3 x H x W float32 tensors; ``lq_path``, ``gt_path``, ``key``: str."""
        pair = self.pairs[index]
        lq = read_rgb_float(pair[0])
        gt = match_clean_size(lq, read_rgb_float(pair[1]), pair)
        if self.phase == "train":
            lq, gt = self.augment(lq, gt, index)
        return {
            "lq": _to_tensor(lq),
            "gt": _to_tensor(gt),
            "lq_path": str(pair[0]),
            "gt_path": str(pair[1]),
            "key": self.key(index),
        }

