"""The ``robustprior segment`` command: prompted masks, automatic masks in amg.py's layout, traps."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from robustprior import load
from robustprior.cli import main
from robustprior.data.image_io import read_rgb_image
from robustprior.io.mask_outputs import METADATA_COLUMNS
from robustprior.data.scenes import SceneConfig, write_instance_dataset

PERMISSIVE = ["--points-per-side", "4", "--pred-iou-thresh", "0.3", "--stability-thresh", "0.5", "--no-progress"]
HONESTY = ("warning: the bundled {} model was trained on generated scenes; on real photos use --checkpoint "
           "robustsam_vit_b (or _l / _h; downloaded once)")


@pytest.fixture(autouse=True)
def fresh_domain_warnings(monkeypatch) -> None:
    monkeypatch.setattr(load, "_warned_domains", set())


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    """Two generated 96 x 96 scenes written by robustprior.data.scenes (their folder carries its marker)."""
    root = tmp_path_factory.mktemp("scenes")
    return write_instance_dataset(root, 2, seed=7, config=SceneConfig(image_size=(96, 96)), progress=False) / "images"


def test_segment_with_a_point_writes_mask_and_overlay_and_warns_once_on_a_photo(tmp_path: Path, capsys) -> None:
    assert main(["segment", "skimage:astronaut", "--points", "260,180", "--output", str(tmp_path)]) == 0
    mask = read_rgb_image(tmp_path / "astronaut_mask.png")[:, :, 0]
    overlay = read_rgb_image(tmp_path / "astronaut_overlay.png")
    assert mask.shape == overlay.shape[:2] == (512, 512)
    assert set(np.unique(mask)) <= {0, 255}
    captured = capsys.readouterr()
    assert "astronaut_mask.png" in captured.out and "RobustSAM-tiny" in captured.out
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert warnings == [HONESTY.format("RobustSAM-tiny")]
    assert str(load.BUNDLED["tiny"]) in captured.err  # the notice names the file actually used


def test_segment_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    arguments = ["segment", "skimage:coffee", "--box", "100,50,400,350", "--output", str(tmp_path)]
    assert main(arguments) == 0
    before = (tmp_path / "coffee_mask.png").read_bytes()
    assert main(arguments) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "coffee_mask.png").read_bytes() == before
    assert main(arguments + ["--overwrite"]) == 0


def test_automatic_masks_in_amg_layout_on_a_generated_scene(scenes: Path, tmp_path: Path, capsys) -> None:
    image = scenes / "000001.png"
    assert main(["segment", str(image), "--output", str(tmp_path), *PERMISSIVE]) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err  # a generated scene: the bundled model's own domain
    assert "pred_iou_thresh=0.3" in captured.err and "stability_score_thresh=0.5" in captured.err
    with open(tmp_path / "000001" / "metadata.csv") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == METADATA_COLUMNS and len(rows) > 1
    masks = []
    for row in rows[1:]:
        values = dict(zip(METADATA_COLUMNS, row))
        mask = read_rgb_image(tmp_path / "000001" / f"{values['id']}.png")[:, :, 0]
        assert set(np.unique(mask)) <= {0, 255} and mask.shape == (96, 96)
        assert int(values["area"]) == int((mask == 255).sum())
        columns = np.flatnonzero((mask == 255).any(axis=0))
        assert float(values["bbox_x0"]) == columns[0] and float(values["bbox_w"]) == columns[-1] - columns[0]
        assert [float(values[key]) for key in ("crop_box_x0", "crop_box_y0", "crop_box_w", "crop_box_h")] == [0, 0, 96, 96]
        masks.append(mask == 255)
    assert sorted(p.name for p in (tmp_path / "000001").iterdir()) == sorted(
        ["metadata.csv"] + [f"{i}.png" for i in range(len(masks))])
    assert read_rgb_image(tmp_path / "000001_overlay.png").shape == (96, 96, 3)
    assert f"{len(masks)} masks (RobustSAM-tiny)" in captured.out

    assert main(["segment", str(image), "--output", str(tmp_path / "rle"), "--output-mode", "coco_rle", *PERMISSIVE]) == 0
    records = json.loads((tmp_path / "rle" / "000001.json").read_text())
    decoded = [mask_utils.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
               for r in records]
    assert len(decoded) == len(masks) and all(np.array_equal(a.astype(bool), b) for a, b in zip(decoded, masks))
    assert {"area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"} <= set(records[0])


def test_a_folder_gives_one_output_per_image_and_refuses_prompts(scenes: Path, tmp_path: Path, capsys) -> None:
    assert main(["segment", str(scenes), "--output", str(tmp_path), *PERMISSIVE]) == 0
    assert (tmp_path / "000001" / "metadata.csv").is_file() and (tmp_path / "000002" / "metadata.csv").is_file()
    assert main(["segment", str(scenes), "--points", "10,10", "--output", str(tmp_path / "p")]) == 2
    assert "folder" in capsys.readouterr().err


def test_progress_bar_in_automatic_mode(scenes: Path, tmp_path: Path, capsys) -> None:
    arguments = [arg for arg in PERMISSIVE if arg != "--no-progress"]
    assert main(["segment", str(scenes / "000002.png"), "--output", str(tmp_path), *arguments]) == 0
    assert "automatic masks (robust path)" in capsys.readouterr().err


def test_multimask_writes_all_three_masks_with_their_scores(scenes: Path, tmp_path: Path) -> None:
    assert main(["segment", str(scenes / "000001.png"), "--points", "48,48", "--multimask", "--output", str(tmp_path)]) == 0
    with open(tmp_path / "000001_scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == ["0", "1", "2"] and sum(int(row["best"]) for row in rows) == 1
    best = next(row for row in rows if row["best"] == "1")
    assert float(best["predicted_iou"]) == max(float(row["predicted_iou"]) for row in rows)
    masks = [read_rgb_image(tmp_path / f"000001_mask_{i}.png")[:, :, 0] for i in range(3)]
    assert [int((m == 255).sum()) for m in masks] == [int(row["area"]) for row in rows]
    assert np.array_equal(masks[int(best["id"])], read_rgb_image(tmp_path / "000001_mask.png")[:, :, 0])


def test_zero_masks_is_a_warning_naming_the_thresholds(scenes: Path, tmp_path: Path, capsys) -> None:
    assert main(["segment", str(scenes / "000001.png"), "--output", str(tmp_path), "--points-per-side", "2",
                 "--pred-iou-thresh", "5", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "0 masks" in captured.out
    assert "warning: no masks" in captured.err and "pred_iou_thresh=5.0" in captured.err
    assert (tmp_path / "000001" / "metadata.csv").read_text().strip() == ",".join(METADATA_COLUMNS)


def test_prompts_and_settings_are_checked_before_the_model_loads(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    cases = [
        ([str(broken), "--points", "1,1"], "corrupt"),
        (["skimage:coffee", "--points", "9999,1"], "outside"),
        (["skimage:coffee", "--points", "1,1;2,2", "--labels", "1"], "labels"),
        (["skimage:coffee", "--labels", "1"], "--labels go with --points"),  # not automatic masks in silence
        (["skimage:coffee", "--points", "1,1", "--labels", "3"], "1 (foreground) or 0"),
        (["skimage:coffee", "--box", "50,50,10,10"], "x1 < x0"),
        (["skimage:coffee", "--stability-thresh", "2"], "stability_score_thresh"),
        (["skimage:coffee", "--points-per-side", "0"], "points_per_side"),
    ]
    for arguments, message in cases:
        assert main(["segment", *arguments, "--output", str(tmp_path / "out")]) == 2, arguments
        assert message in capsys.readouterr().err, arguments


def test_model_traps(tmp_path: Path, capsys) -> None:
    point = ["skimage:coffee", "--points", "200,200"]
    assert main(["segment", *point, "--model-type", "vit_b", "--output", str(tmp_path / "a")]) == 2
    assert "contradicts" in capsys.readouterr().err
    assert main(["segment", *point, "--checkpoint", "sam_tiny", "--output", str(tmp_path / "b")]) == 2
    assert "UNTRAINED" in capsys.readouterr().err
    assert main(["segment", *point, "--checkpoint", "robustsam_vit_z", "--output", str(tmp_path / "c")]) == 2
    error = capsys.readouterr().err
    assert "sam_tiny" in error and "robustsam_vit_b" in error
    assert main(["segment", *point, "--sam-baseline", "--output", str(tmp_path / "d")]) == 0
    captured = capsys.readouterr()
    assert "RobustSAM" not in captured.err and "SAM-tiny" in captured.err and "(SAM-tiny" in captured.out
    assert str(load.BUNDLED["sam_tiny"]) in captured.err


def test_an_output_that_is_a_file_or_unwritable_is_refused_before_the_model_loads(
        tmp_path: Path, unwritable_folder: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    (tmp_path / "a_file").write_text("mine")
    cases = [(tmp_path / "a_file", "is a file, not a folder"), (unwritable_folder, "is not writable"),
             (unwritable_folder / "new", "is not writable"), (tmp_path / "a_file" / "new", "a_file is a file")]
    for output, message in cases:
        for prompt in (["--points", "200,200"], []):  # prompted and automatic
            assert main(["segment", "skimage:coffee", *prompt, "--output", str(output)]) == 2, output
            error = capsys.readouterr().err
            assert error.startswith("error: --output") and error.count("\n") == 1 and message in error, error
    assert (tmp_path / "a_file").read_text() == "mine"
    from robustprior.evaluation import evaluate  # robustprior eval: the same check before its model loads

    monkeypatch.setattr(evaluate, "_load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    config = Path(evaluate.__file__).parents[1] / "configs" / "eval_tiny.yaml"
    for output, message in cases[:2]:
        assert main(["eval", str(config), "--output", str(output)]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: --output") and error.count("\n") == 1 and message in error, error


@pytest.mark.parametrize(("values", "message"), [
    ([0.5, np.nan], "1 NaN or infinite float sample(s)"),
    ([0.5, np.inf], "NaN or infinite"),
    ([0.0, 1.5], "float samples in [0, 1.5], outside [0, 1]"),
    ([-0.25, 1.0], "float samples in [-0.25, 1], outside [0, 1]"),
])
def test_float_images_with_bad_samples_are_refused(tmp_path: Path, monkeypatch, capsys, values, message) -> None:
    import cv2

    from restoration.paired_data import read_rgb_float

    image = np.full((8, 8, 3), 0.25, np.float32)
    image[0, 0, 0], image[1, 1, 1] = values
    path = tmp_path / "float.tiff"
    assert cv2.imwrite(str(path), image)
    for reader in (read_rgb_image, read_rgb_float):
        with pytest.raises(ValueError, match=re.escape(message)):
            reader(path)
    monkeypatch.setattr(load, "load_model", lambda *a, **k: pytest.fail("the model was loaded before the check"))
    assert main(["segment", str(path), "--points", "2,2", "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(path) in error and message in error


def test_float_images_in_range_read_as_their_8_and_32_bit_values(tmp_path: Path) -> None:
    import cv2

    from restoration.paired_data import read_rgb_float

    rng = np.random.default_rng(0)
    image = rng.random((6, 5, 3), dtype=np.float32)
    image[0, 0] = (0.0, 1.0, 0.5)
    path = tmp_path / "float.tiff"
    assert cv2.imwrite(str(path), image)
    rgb = image[..., ::-1]  # cv2 writes BGR
    np.testing.assert_array_equal(read_rgb_float(path), rgb)
    np.testing.assert_array_equal(read_rgb_image(path), np.rint(rgb * 255.0).astype(np.uint8))
