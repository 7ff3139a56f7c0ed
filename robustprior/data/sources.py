"""Instance-segmentation sources from the ``data`` sections of YAML configs (training and evaluation).

One data section is a mapping with a ``format`` and that format's keys (paths are used as given:
relative paths are relative to the working directory, ``~`` is expanded):

================  ==========================================  ===============================================
format            required keys                               optional keys
================  ==========================================  ===============================================
instance_folder   ``root``                                    ``image_dir`` ("images"), ``mask_dir``
                                                              ("instances"), ``ignore_dir``, ``names``
voc               ``root`` (a VOC-style folder)               ``split`` (ImageSets/Segmentation/SPLIT.txt),
                                                              ``names``
coco              ``annotations`` (JSON), ``image_root``      ``names``
scenes            ``n_images``, ``seed``                      ``root``, ``scene`` (SceneConfig fields),
                                                              ``names``
================  ==========================================  ===============================================

``names`` keeps only the listed records (in source order). ``scenes`` is the generated scene world
of :mod:`robustprior.data.scenes`: it is written once into ``root`` (or into
``cache_root/scenes-N-SEED[-HASH]``, HASH naming non-default ``scene`` options) together with
``scenes_params.json``, and reused as long as that file records the same parameters; a folder
written with other parameters, or not written by this module, is never replaced: it is an error.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from robustprior.data.datasets import CocoInstances, InstanceMaskFolder, InstanceRecord, InstanceSource
from robustprior.io.hub import cache_dir
from robustprior.data.scenes import SceneConfig, TextureBank, write_instance_dataset

__all__ = ["SCENES_PARAMS_FILE", "SOURCE_FORMATS", "NamedSubset", "build_instance_source", "check_source_config",
           "default_data_cache"]

SCENES_PARAMS_FILE = "scenes_params.json"
SCENES_PARAMS_VERSION = 1

# format -> (required keys, optional keys); "format" itself is implied.
SOURCE_FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "instance_folder": (("root",), ("image_dir", "mask_dir", "ignore_dir", "names")),
    "voc": (("root",), ("split", "names")),
    "coco": (("annotations", "image_root"), ("names",)),
    "scenes": (("n_images", "seed"), ("root", "scene", "names")),
}


def default_data_cache() -> Path:
    """Where generated data goes when no ``cache_root`` is given: ``robustprior.io.hub.cache_dir() / "datasets"``."""
    return cache_dir() / "datasets"


class NamedSubset:
    """The records of ``source`` whose names are in ``names``, in source order (an ``InstanceSource``)."""

    def __init__(self, source: InstanceSource, names: Sequence[str]) -> None:
        wanted = set(names)
        unknown = sorted(wanted - set(source.names))
        if unknown:
            raise ValueError(f"names not in the source: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        self.source = source
        self.indices = tuple(index for index, name in enumerate(source.names) if name in wanted)
        self.names = tuple(source.names[index] for index in self.indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> InstanceRecord:
        return self.source[self.indices[index]]

    def instance_areas(self, index: int) -> np.ndarray:
        """Pixel areas (K int64) of record ``index``'s instances."""
        return self.source.instance_areas(self.indices[index])


def _checked_keys(config: Mapping[str, Any], section: str) -> str:
    """Validates ``format`` and the key set of a data section; returns the format."""
    if not isinstance(config, Mapping):
        raise ValueError(f"{section} must be a mapping with a 'format' key, got {type(config).__name__}")
    source_format = config.get("format")
    if source_format not in SOURCE_FORMATS:
        raise ValueError(
            f"{section}.format is {source_format!r}; expected one of {', '.join(SOURCE_FORMATS)}"
        )
    required, optional = SOURCE_FORMATS[source_format]
    unknown = sorted(set(config) - {"format", *required, *optional})
    if unknown:
        allowed = (*required, *optional)
        named = [key + "".join(f" (did you mean '{close}'?)"
                               for close in difflib.get_close_matches(str(key), allowed, n=1)) for key in unknown]
        raise ValueError(
            f"{section} (format {source_format}) has unknown key(s) {', '.join(named)}; "
            f"allowed: {', '.join(allowed)}"
        )
    missing = [key for key in required if config.get(key) is None]
    if missing:
        raise ValueError(f"{section} (format {source_format}) is missing {', '.join(missing)}")
    return source_format


def check_source_config(config: Mapping[str, Any], section: str = "data") -> None:
    """Raise ValueError naming the problem unless ``config`` is a well-formed data section: a known
    format with its required keys, no unknown key (the closest valid one is named), and for scenes
    valid counts, seed and ``scene`` fields. Reads no file: paths are checked when the source is
    built (:func:`build_instance_source`). A config schema's ``check`` for a data section."""
    source_format = _checked_keys(config, section)
    if source_format == "scenes":
        _integer(config, "n_images", section, minimum=1)
        _integer(config, "seed", section, minimum=0)
        _scene_config(config.get("scene"), section)
    names = config.get("names")
    if names is not None and (isinstance(names, str) or not isinstance(names, Sequence)):
        raise ValueError(f"{section}.names must be a list of record names, got {names!r}")


def _existing_path(config: Mapping[str, Any], key: str, section: str, directory: bool) -> Path:
    """``config[key]`` as a Path that must exist (a folder when ``directory``, else a file)."""
    path = Path(str(config[key])).expanduser()
    exists = path.is_dir() if directory else path.is_file()
    if not exists:
        kind = "folder" if directory else "file"
        raise FileNotFoundError(f"{section}.{key}: {kind} {path} does not exist")
    return path


def _integer(config: Mapping[str, Any], key: str, section: str, minimum: int) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{section}.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _scene_config(options: Mapping[str, Any] | None, section: str) -> SceneConfig:
    """A SceneConfig from YAML options (lists become tuples); unknown fields name the key."""
    if options is None:
        return SceneConfig()
    if not isinstance(options, Mapping):
        raise ValueError(f"{section}.scene must be a mapping of SceneConfig fields, got {type(options).__name__}")
    fields = {field.name for field in dataclasses.fields(SceneConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"{section}.scene has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(fields))}")
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in options.items()}
    try:
        return SceneConfig(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{section}.scene: {error}") from error


def _scenes_params(n_images: int, seed: int, scene_config: SceneConfig) -> dict[str, Any]:
    """What a written scenes folder must record to be reused (JSON-normalised)."""
    textures = TextureBank.load(scene_config.texture_source)
    params = {
        "generator": "robustprior.data.scenes.write_instance_dataset",
        "version": SCENES_PARAMS_VERSION,
        "n_images": n_images,
        "seed": seed,
        "scene": dataclasses.asdict(scene_config),
        # Photo names rather than the folder path: the same photos in another checkout match.
        "texture_photos": list(textures.names),
    }
    return json.loads(json.dumps(params))


def _scenes_folder_name(n_images: int, seed: int, scene_config: SceneConfig) -> str:
    """``scenes-N-SEED``, plus a short hash of the scene options when they are not the defaults."""
    name = f"scenes-{n_images}-{seed}"
    if scene_config == SceneConfig():
        return name
    options = json.dumps(dataclasses.asdict(scene_config), sort_keys=True)
    return f"{name}-{hashlib.sha256(options.encode()).hexdigest()[:8]}"


def _flattened(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys (``scene.image_size``), for readable differences."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flattened(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_scenes_folder(root: Path, expected: dict[str, Any], section: str) -> None:
    """Raises ValueError unless ``root`` holds scenes written with exactly ``expected``."""
    params_path = root / SCENES_PARAMS_FILE
    if not params_path.is_file():
        raise ValueError(
            f"{section}: {root} is not empty and has no {SCENES_PARAMS_FILE}, so it was not written by "
            "build_instance_source; choose another root or delete the folder"
        )
    recorded = json.loads(params_path.read_text())
    if recorded != expected:
        recorded_flat, expected_flat = _flattened(recorded), _flattened(expected)
        differences = [
            f"{key}: folder {recorded_flat.get(key)!r} vs config {expected_flat.get(key)!r}"
            for key in sorted(set(recorded_flat) | set(expected_flat))
            if recorded_flat.get(key) != expected_flat.get(key)
        ]
        raise ValueError(
            f"{section}: scenes folder {root} was written with other parameters ({'; '.join(differences)}); "
            "it is not regenerated over: delete it or choose another root"
        )


def _scenes_root(config: Mapping[str, Any], cache_root: Path | None, section: str, progress: bool,
                 workers: int = 1) -> Path:
    """The folder of the generated scenes, written first when missing (see the module docstring)."""
    n_images = _integer(config, "n_images", section, minimum=1)
    seed = _integer(config, "seed", section, minimum=0)
    scene_config = _scene_config(config.get("scene"), section)
    if config.get("root") is not None:
        root = Path(str(config["root"])).expanduser()
    else:
        root = Path(cache_root or default_data_cache()) / _scenes_folder_name(n_images, seed, scene_config)
    expected = _scenes_params(n_images, seed, scene_config)
    if root.is_dir() and any(root.iterdir()):
        _check_scenes_folder(root, expected, section)
        return root
    # Written beside the target and renamed into place, so an interrupted run leaves no half folder.
    partial = root.with_name(f".{root.name}.partial-{os.getpid()}")
    if partial.exists():
        shutil.rmtree(partial)
    write_instance_dataset(partial, n_images, seed, scene_config, progress=progress, workers=workers)
    (partial / SCENES_PARAMS_FILE).write_text(json.dumps(expected, indent=1) + "\n")
    try:
        if root.is_dir():
            root.rmdir()  # empty (checked above)
        partial.rename(root)
    except OSError:
        # Another process filled ``root`` meanwhile: keep its folder if it matches.
        shutil.rmtree(partial, ignore_errors=True)
        _check_scenes_folder(root, expected, section)
    return root


def build_instance_source(
    config: Mapping[str, Any],
    cache_root: Path | None = None,
    *,
    section: str = "data",
    progress: bool = True,
    workers: int = 1,
) -> InstanceSource:
    """The instance source described by one data section (see the module docstring).

    ``cache_root`` receives generated scenes without a ``root`` (default
    :func:`default_data_cache`). ``section`` names the section in error messages (e.g.
    ``"data.test"``). Raises ValueError for an unknown format, missing/unknown/ill-typed keys or a
    mismatching scenes folder, and FileNotFoundError naming the key of a missing path. ``workers``
    processes write generated scenes (the same files as one process).
    """
    check_source_config(config, section)
    source_format = config["format"]
    source: InstanceSource
    if source_format == "instance_folder":
        root = _existing_path(config, "root", section, directory=True)
        image_dir = str(config.get("image_dir", "images"))
        mask_dir = str(config.get("mask_dir", "instances"))
        for key, folder in (("image_dir", image_dir), ("mask_dir", mask_dir), ("ignore_dir", config.get("ignore_dir"))):
            if folder is not None and not (root / str(folder)).is_dir():
                raise FileNotFoundError(f"{section}.{key}: folder {root / str(folder)} does not exist")
        source = InstanceMaskFolder(root, image_dir, mask_dir, ignore_dir=config.get("ignore_dir"))
    elif source_format == "voc":
        root = _existing_path(config, "root", section, directory=True)
        for folder in ("JPEGImages", "SegmentationObject"):
            if not (root / folder).is_dir():
                raise FileNotFoundError(f"{section}.root: {root} has no {folder} folder (not a VOC layout)")
        split = config.get("split")
        if split is not None and not (root / "ImageSets" / "Segmentation" / f"{split}.txt").is_file():
            raise FileNotFoundError(f"{section}.split: {root}/ImageSets/Segmentation/{split}.txt does not exist")
        source = InstanceMaskFolder.voc(root, split=split)
    elif source_format == "coco":
        annotations = _existing_path(config, "annotations", section, directory=False)
        image_root = _existing_path(config, "image_root", section, directory=True)
        source = CocoInstances(annotations, image_root)
    else:
        source = InstanceMaskFolder(_scenes_root(config, cache_root, section, progress, workers))
    names = config.get("names")
    if names is not None:
        try:
            source = NamedSubset(source, [str(name) for name in names])
        except ValueError as error:
            raise ValueError(f"{section}.names: {error}") from error
    return source
