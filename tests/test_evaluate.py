"""Tests of robustprior.evaluation.evaluate (SAM vs RobustSAM report) and robustprior.data.sources (data sections)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import robustprior.data.sources as data_config
import robustprior.evaluation.evaluate as evaluate
from robustprior.load import build_robust_sam
from robustprior.data.sources import SCENES_PARAMS_FILE, build_instance_source
from robustprior.data.datasets import InstanceRecord
from robustprior.data.degrade import degrade
from robustprior.evaluation.evaluate import EvaluationResult, degradation_seed, evaluate_segmentation, run_evaluation

SMALL_SCENES = {"image_size": [96, 128], "object_count_range": [1, 3]}


# ----------------------------------------------------------------------------- fixtures and helpers


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def scenes_source(tmp_path_factory: pytest.TempPathFactory):
    """Two small generated scenes (96 x 128, 1-3 objects)."""
    config = {"format": "scenes", "n_images": 2, "seed": 7, "scene": SMALL_SCENES}
    return build_instance_source(config, tmp_path_factory.mktemp("cache"), progress=False)


@pytest.fixture(scope="module")
def tiny_model():
    """A randomly initialised tiny RobustSAM (fixed seed)."""
    torch.manual_seed(0)
    return build_robust_sam("tiny", random_init=True)


def plain_iou(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-instance IoU of two KxHxW bool stacks (plain numpy, independent of robustprior.evaluation.metrics)."""
    intersection = (predicted & truth).sum(axis=(1, 2))
    union = (predicted | truth).sum(axis=(1, 2))
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def assert_valid_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels.std() > 0  # not a blank canvas


class RectangleSource:
    """Two 40 x 48 images of 8 x 10 rectangles (plus a 2 x 2 speck), image 1 with a 4 x 10 ignore band."""

    shape = (40, 48)
    rectangles = ([(5, 5), (20, 25), (30, 2)], [(15, 10)])  # (top, left); the (30, 2) one is the speck
    ignore_pixels = 40

    def __init__(self) -> None:
        self.names = ("first", "second")

    def __len__(self) -> int:
        return 2

    def instance_areas(self, index: int) -> np.ndarray:
        return self[index].masks.reshape(len(self.rectangles[index]), -1).sum(axis=1)

    def __getitem__(self, index: int) -> InstanceRecord:
        masks = np.zeros((len(self.rectangles[index]), *self.shape), dtype=bool)
        for position, (top, left) in enumerate(self.rectangles[index]):
            height, width = (2, 2) if (top, left) == (30, 2) else (8, 10)
            masks[position, top : top + height, left : left + width] = True
        ignore = None
        if index == 1:
            ignore = np.zeros(self.shape, dtype=bool)
            ignore[34:38, 30:40] = True
        image = np.random.default_rng(index).integers(0, 256, (*self.shape, 3), dtype=np.uint8)
        return InstanceRecord(image, masks, ignore, self.names[index], tuple(range(1, len(masks) + 1)))


def box_oracle(degraded_shift: int):
    """A ``predict_instance_masks`` stand-in: each instance's mask is its prompt box filled (exact for
    rectangles), moved ``degraded_shift`` pixels right when the image is not a clear RectangleSource image."""
    clear_images = [record.image for record in RectangleSource()]

    def predict(model, image, point_coords, boxes, prompt_types, paths):
        shift = 0 if any(np.array_equal(image, clear) for clear in clear_images) else degraded_shift
        masks = np.zeros((len(boxes), *image.shape[:2]), dtype=bool)
        for mask, point, (x0, y0, x1, y1) in zip(masks, point_coords, boxes.astype(int)):
            assert x0 <= point[0] <= x1 and y0 <= point[1] <= y1  # the centre point lies in the instance
            mask[y0 : y1 + 1, x0 + shift : x1 + 1 + shift] = True
        scores = np.linspace(0.9, 0.5, len(boxes))
        return {(path, prompt_type): (masks, scores) for path in paths for prompt_type in prompt_types}

    return predict


# ----------------------------------------------------------------------------- evaluate_segmentation


def test_random_model_report_aggregates_per_kind_means(scenes_source, tiny_model, monkeypatch, tmp_path) -> None:
    kinds = ("identity", "fog", "gauss_noise")
    recorded = []
    real_predict = evaluate.predict_instance_masks

    def spy(*args, **kwargs):
        outputs = real_predict(*args, **kwargs)
        recorded.append(outputs)
        return outputs

    degradations = []

    def degrade_spy(image, kind, seed, severity=1.0, reference_size=None):
        degradations.append((kind, seed))
        return degrade(image, kind, seed, severity, reference_size)

    monkeypatch.setattr(evaluate, "predict_instance_masks", spy)
    monkeypatch.setattr(evaluate, "degrade", degrade_spy)
    result = evaluate_segmentation(tiny_model, scenes_source, kinds=kinds, seed=3, progress=False)
    assert degradations == [(kind, degradation_seed(3, name, kind)) for name in scenes_source.names for kind in kinds]
    report = result.to_dict()
    json.dumps(report, allow_nan=False)
    assert report["protocol"]["images"] == 2
    assert report["protocol"]["instances"] == sum(len(scenes_source[i].masks) for i in range(2))

    # Calls go image by image, kind by kind: recompute every per-kind mean and summary row by hand.
    assert len(recorded) == 2 * len(kinds)
    for path in ("sam", "robust"):
        for prompt_type in ("point", "box"):
            ious = {kind: [] for kind in kinds}
            for call, outputs in enumerate(recorded):
                truth = scenes_source[call // len(kinds)].masks
                ious[kinds[call % len(kinds)]].extend(plain_iou(outputs[(path, prompt_type)][0], truth))
            per_kind = {kind: float(np.mean(values)) for kind, values in ious.items()}
            section = report["results"][path][prompt_type]
            for kind in kinds:
                assert section["per_kind"][kind]["IoU"] == pytest.approx(per_kind[kind], abs=1e-12)
                for metric in ("IoU", "Dice", "PA"):
                    assert np.isfinite(section["per_kind"][kind][metric])
            table = section["table"]
            assert table["Clear"]["IoU"] == pytest.approx(per_kind["identity"], abs=1e-12)
            assert table["Degrade"]["IoU"] == pytest.approx((per_kind["fog"] + per_kind["gauss_noise"]) / 2, abs=1e-12)
            assert table["Average"]["IoU"] == pytest.approx(np.mean(list(per_kind.values())), abs=1e-12)
        assert set(report["results"][path]["box_ap"]["table"]) == {"Degrade", "Clear", "Average"}
        assert all(0.0 <= value <= 1.0 for value in report["results"][path]["box_ap"]["table"]["Average"].values())

    markdown = result.to_markdown()
    for text in ("## Point prompts", "## Box prompts", "| SAM |", "| RobustSAM |", "Degrade IoU", "Clear PA",
                 "Average IoU", "| fog |", "| gauss_noise |", "Box-prompt mask AP", "Protocol:"):
        assert text in markdown
    robust_point = report["results"]["robust"]["point"]["table"]
    assert f"{100 * robust_point['Degrade']['IoU']:.2f}" in markdown
    plot = result.plot_iou_per_kind(tmp_path / "iou.png")
    assert_valid_png(plot)


def test_oracle_masks_score_one(monkeypatch) -> None:
    monkeypatch.setattr(evaluate, "predict_instance_masks", box_oracle(degraded_shift=0))
    result = evaluate_segmentation(None, RectangleSource(), kinds=("identity", "rain"), min_area=10, progress=False)
    report = result.to_dict()
    assert report["protocol"]["instances"] == 3  # the 2 x 2 speck is below min_area
    for path in ("sam", "robust"):
        for prompt_type in ("point", "box"):
            for row in ("Degrade", "Clear", "Average"):
                assert report["results"][path][prompt_type]["table"][row] == {"IoU": 1.0, "Dice": 1.0, "PA": 1.0}
        assert report["results"][path]["box_ap"]["table"]["Average"] == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}
    largest = evaluate_segmentation(None, RectangleSource(), kinds=("identity",), max_instances_per_image=1,
                                    prompt_types=("box",), progress=False)
    assert largest.to_dict()["protocol"]["instances"] == 2


def test_shifted_masks_give_hand_computed_scores(monkeypatch) -> None:
    monkeypatch.setattr(evaluate, "predict_instance_masks", box_oracle(degraded_shift=2))
    result = evaluate_segmentation(None, RectangleSource(), kinds=("identity", "contrast", "rain"), min_area=10,
                                   paths=("robust",), progress=False)
    # Degraded kinds: 8 x 10 rectangles moved 2 px: intersection 8 x 8, union 8 x 12, 2 x 16 pixels disagree.
    pixels = 40 * 48
    accuracy = (2 * (pixels - 32) / pixels + (pixels - 40 - 32) / (pixels - 40)) / 3  # ignore band excluded
    table = result.to_dict()["results"]["robust"]["point"]["table"]
    assert table["Clear"] == {"IoU": 1.0, "Dice": 1.0, "PA": 1.0}
    assert table["Degrade"] == pytest.approx({"IoU": 2 / 3, "Dice": 0.8, "PA": accuracy})
    assert table["Average"] == pytest.approx({"IoU": 7 / 9, "Dice": 2.6 / 3, "PA": (1 + 2 * accuracy) / 3})
    # IoU 2/3 passes the thresholds 0.50, 0.55, 0.60, 0.65 of COCO's ten: AP = 0.4 for a degraded kind.
    ap = result.box_ap_table("robust")
    assert ap["Clear"] == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}
    assert ap["Degrade"] == pytest.approx({"AP": 0.4, "AP50": 1.0, "AP75": 0.0})
    assert ap["Average"] == pytest.approx({"AP": 0.6, "AP50": 1.0, "AP75": 1 / 3})
    markdown = result.to_markdown()
    assert "| RobustSAM | 66.67 | " in markdown and "| SAM |" not in markdown
    assert "| RobustSAM | 40.00 | 100.00 | 60.00 | 100.00 | 33.33 |" in markdown


def test_same_seed_same_report_and_seeds_per_image_and_kind(scenes_source, tiny_model) -> None:
    first_image = data_config.NamedSubset(scenes_source, scenes_source.names[:1])
    options = {"prompt_types": ("point", "box"), "seed": 5, "progress": False}
    first = evaluate_segmentation(tiny_model, first_image, kinds=("fog", "identity"), **options)
    again = evaluate_segmentation(tiny_model, first_image, kinds=("fog", "identity"), **options)
    assert first.to_dict() == again.to_dict()
    fog_only = evaluate_segmentation(tiny_model, first_image, kinds=("fog",), **options).to_dict()
    assert fog_only["results"]["robust"]["point"]["per_kind"]["fog"] == first.to_dict()["results"]["robust"]["point"]["per_kind"]["fog"]
    assert fog_only["results"]["robust"]["point"]["table"]["Clear"]["IoU"] is None  # no identity: undefined, not NaN
    image = scenes_source[0].image
    name = scenes_source.names[0]
    assert np.array_equal(degrade(image, "fog", degradation_seed(5, name, "fog")),
                          degrade(image, "fog", degradation_seed(5, name, "fog")))
    assert degradation_seed(5, name, "fog") != degradation_seed(6, name, "fog")
    assert degradation_seed(5, name, "fog") != degradation_seed(5, name, "snow")
    assert degradation_seed(5, name, "fog") != degradation_seed(5, scenes_source.names[1], "fog")


def test_evaluate_rejects_bad_options(scenes_source) -> None:
    with pytest.raises(ValueError, match="kinds"):
        evaluate_segmentation(None, scenes_source, kinds=("haze",), progress=False)
    with pytest.raises(ValueError, match="prompt types"):
        evaluate_segmentation(None, scenes_source, prompt_types=("scribble",), progress=False)
    with pytest.raises(ValueError, match="no instance"):
        evaluate_segmentation(None, scenes_source, min_area=10**9, progress=False)


def test_predict_instance_masks_matches_the_predictor(scenes_source, tiny_model) -> None:
    from robustprior.predictor import RobustSAMPredictor
    from robustprior.data.prompts import center_point, mask_to_box

    record = scenes_source[1]
    points = np.stack([center_point(mask) for mask in record.masks])
    boxes = np.stack([mask_to_box(mask) for mask in record.masks])
    batched = evaluate.predict_instance_masks(tiny_model, record.image, points, boxes)
    for path in ("sam", "robust"):
        predictor = RobustSAMPredictor(tiny_model, path=path)
        predictor.set_image(record.image)
        for index in sorted({0, len(points) - 1}):
            point_mask, point_score, _ = predictor.predict(points[index : index + 1], np.ones(1), multimask_output=False)
            box_mask, box_score, _ = predictor.predict(box=boxes[index], multimask_output=False)
            assert np.array_equal(batched[(path, "point")][0][index], point_mask[0])
            assert np.array_equal(batched[(path, "box")][0][index], box_mask[0])
            assert batched[(path, "point")][1][index] == pytest.approx(point_score[0], abs=1e-5)
            assert batched[(path, "box")][1][index] == pytest.approx(box_score[0], abs=1e-5)


# ----------------------------------------------------------------------------- build_instance_source


def test_scenes_are_written_once_and_reused(tmp_path, monkeypatch) -> None:
    config = {"format": "scenes", "n_images": 2, "seed": 3, "scene": SMALL_SCENES}
    source = build_instance_source(config, tmp_path, progress=False)
    (root,) = [path for path in tmp_path.iterdir()]
    assert root.name.startswith("scenes-2-3-") and (root / SCENES_PARAMS_FILE).is_file()
    assert len(source) == 2 and source[0].masks.shape[1:] == (96, 128)

    def no_writing(*args, **kwargs):
        raise AssertionError("scenes were regenerated")

    monkeypatch.setattr(data_config, "write_instance_dataset", no_writing)
    again = build_instance_source(config, tmp_path, progress=False)
    assert again.names == source.names and np.array_equal(again[1].masks, source[1].masks)
    with pytest.raises(ValueError, match="n_images"):
        build_instance_source({**config, "n_images": 3, "root": str(root)}, progress=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("not scenes")
    with pytest.raises(ValueError, match=SCENES_PARAMS_FILE):
        build_instance_source({**config, "root": str(tmp_path / "foreign")}, progress=False)


def test_folder_voc_and_coco_sources(scenes_source, shared_data) -> None:
    scenes_root = scenes_source.root
    folder = build_instance_source({"format": "instance_folder", "root": str(scenes_root)})
    assert folder.names == scenes_source.names
    subset = build_instance_source({"format": "instance_folder", "root": str(scenes_root), "names": [folder.names[1]]})
    assert len(subset) == 1 and subset[0].name == folder.names[1]
    assert np.array_equal(subset.instance_areas(0), folder.instance_areas(1))

    voc_root = shared_data / "voc-instances" / "voc"
    voc = build_instance_source({"format": "voc", "root": str(voc_root)})
    coco_root = shared_data / "voc-instances" / "coco"
    coco = build_instance_source(
        {"format": "coco", "annotations": str(coco_root / "annotations.json"), "image_root": str(coco_root),
         "names": ["2011_000025", "2011_000003"]}
    )
    assert len(voc) == 3 and coco.names == ("2011_000003", "2011_000025")  # source order kept
    assert coco[0].masks.shape[0] > 0 and voc[0].masks.shape[1:] == coco[0].masks.shape[1:]


def test_data_section_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data\.test\.root"):
        build_instance_source({"format": "voc", "root": str(tmp_path / "missing")}, section="data.test")
    with pytest.raises(ValueError, match="instance_folder, voc, coco, scenes"):
        build_instance_source({"format": "kitti", "root": str(tmp_path)})
    with pytest.raises(ValueError, match="image_root"):
        build_instance_source({"format": "coco", "annotations": "a.json"})
    with pytest.raises(ValueError, match="colour"):
        build_instance_source({"format": "instance_folder", "root": str(tmp_path), "colour": "red"})
    with pytest.raises(ValueError, match="n_images"):
        build_instance_source({"format": "scenes", "n_images": 0, "seed": 1}, tmp_path)
    with pytest.raises(ValueError, match="object_colour"):
        build_instance_source({"format": "scenes", "n_images": 1, "seed": 1, "scene": {"object_colour": 1}}, tmp_path)
    with pytest.raises(ValueError, match="names"):
        build_instance_source({"format": "scenes", "n_images": 1, "seed": 1, "scene": SMALL_SCENES,
                               "names": ["nope"]}, tmp_path, progress=False)


# ----------------------------------------------------------------------------- run_evaluation


def test_run_evaluation_writes_the_report_and_refuses_to_overwrite(tmp_path) -> None:
    config = {
        "model": {"type": "tiny", "checkpoint": None},
        "data": {"test": {"format": "scenes", "n_images": 1, "seed": 1000, "scene": SMALL_SCENES}},
        "eval": {"kinds": ["identity", "brightness"], "prompts": ["box"], "seed": 0},
    }
    output = tmp_path / "report"
    result = run_evaluation(config, None, output, cache_root=tmp_path / "cache", progress=False)
    assert isinstance(result, EvaluationResult)
    assert sorted(path.name for path in output.iterdir()) == sorted(evaluate.REPORT_FILES)
    report = json.loads((output / "report.json").read_text(), parse_constant=lambda constant: pytest.fail(constant))
    assert report["kinds"] == ["identity", "brightness"] and report["protocol"]["data"] == "data.test"
    assert "| RobustSAM |" in (output / "report.md").read_text()
    saved = yaml.safe_load((output / "config.yaml").read_text())["eval"]  # the config used, defaults filled in
    assert saved == {**saved, **config["eval"]} and saved["paths"] == ["sam", "robust"] and saved["split"] is None
    assert_valid_png(output / "iou_per_degradation.png")

    before = (output / "report.md").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        run_evaluation(config, None, output, cache_root=tmp_path / "cache", progress=False)
    assert (output / "report.md").read_bytes() == before
    with pytest.raises(ValueError, match="colour"):
        run_evaluation({**config, "eval": {"colour": 1}}, None, tmp_path / "other", progress=False)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        run_evaluation({**config, "model": {"type": "vit_b"}}, None, tmp_path / "other",
                       cache_root=tmp_path / "cache", progress=False)
    again = run_evaluation(config, None, output, overwrite=True, cache_root=tmp_path / "cache", progress=False)
    assert again.to_dict() == json.loads((output / "report.json").read_text())
    assert again.to_dict()["results"] == report["results"]  # the random fallback model is seeded


def test_example_config_is_valid() -> None:
    config = yaml.safe_load((Path(evaluate.__file__).parents[1] / "configs" / "eval_tiny.yaml").read_text())
    options = evaluate._evaluation_options(config["eval"])
    assert len(options["kinds"]) == 16 and options["prompt_types"] == ["point", "box"]
    assert config["data"]["test"] == {"format": "scenes", "n_images": 40, "seed": 1000}


def test_paired_difference_is_the_mean_instance_difference_with_a_bootstrap_interval() -> None:
    from robustprior.evaluation.evaluate import EvaluationResult
    from robustprior.evaluation.metrics import SegmentationMeter, paired_bootstrap_interval

    rng = np.random.default_rng(0)
    kinds = ("identity", "fog", "snow")
    meters = {("sam", "point"): SegmentationMeter(), ("robust", "point"): SegmentationMeter()}
    truth = np.zeros((20, 6, 6), bool)
    truth[:, :3] = True
    iou = {}
    for kind in kinds:  # predictions covering k of the 6 rows: IoU = min(k, 3) / max(k, 3)
        for path in ("sam", "robust"):
            rows = rng.integers(1, 7, 20)
            predicted = np.arange(6)[None, :, None] < rows[:, None, None]
            predicted = np.broadcast_to(predicted, truth.shape)
            meters[(path, "point")].update(kind, predicted, truth)
            iou[(path, kind)] = np.minimum(rows, 3) / np.maximum(rows, 3)
    result = EvaluationResult(kinds, ("point",), ("sam", "robust"), meters, {})
    paired = result.paired_difference("point", n_resamples=2000)
    degrade = np.mean([iou[("robust", k)] - iou[("sam", k)] for k in ("fog", "snow")], axis=0)
    assert paired["Degrade"]["diff"] == pytest.approx(degrade.mean())
    assert paired["Clear"]["diff"] == pytest.approx((iou[("robust", "identity")] - iou[("sam", "identity")]).mean())
    table = {path: meters[(path, "point")].table() for path in ("sam", "robust")}
    assert paired["Degrade"]["diff"] == pytest.approx(table["robust"]["Degrade"]["IoU"] - table["sam"]["Degrade"]["IoU"])
    assert paired["Degrade"]["low"] < paired["Degrade"]["diff"] < paired["Degrade"]["high"]
    assert paired["Degrade"]["instances"] == 20
    assert paired_bootstrap_interval(np.full(10, 0.25)) == (0.25, 0.25, 0.25)
    # about 95 % of intervals from normal samples cover the true mean (0 here)
    covered = sum(low <= 0 <= high for _, low, high in (
        paired_bootstrap_interval(np.random.default_rng(seed).normal(size=40), 2000, seed=seed) for seed in range(200)))
    assert 180 <= covered <= 199


def test_generated_data_is_told_apart_from_real_data(shared_data, tmp_path) -> None:
    from robustprior.data.scenes import SceneConfig, write_instance_dataset

    written = write_instance_dataset(tmp_path / "scenes", 1, seed=1, config=SceneConfig(image_size=(32, 32)), progress=False)
    assert evaluate._is_generated_data({"format": "scenes", "n_images": 1, "seed": 1})
    assert evaluate._is_generated_data({"format": "instance_folder", "root": str(written)})
    assert not evaluate._is_generated_data({"format": "voc", "root": str(shared_data / "voc-instances" / "voc")})
