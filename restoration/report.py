"""Table-8-style reports of the prior comparison: ``report.md``, ``report.json`` and ``grid.png``.

Rows are *No prior*, *SAM prior* and *RobustSAM prior* (one trained run each, read from its
``results.json``); our PSNR / SSIM stand beside the paper's Table 8 numbers, which were measured
under another protocol (full-size models, real data, full training) and are for reference only.
"""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from restoration.metrics import psnr, ssim  # noqa: E402
from restoration.paired_data import read_rgb  # noqa: E402
from restoration.train import RESULTS_NAME, write_json  # noqa: E402
from robustprior.io.atomic import atomic_path, write_text_atomically  # noqa: E402

ROWS: tuple[tuple[str, str], ...] = (("none", "No prior"), ("sam", "SAM prior"), ("robustsam", "RobustSAM prior"))
# RobustSAM (CVPR 2024) Table 8: (PSNR, SSIM) with each prior; the paper has no no-prior row there.
PAPER_TABLE8: dict[str, dict[str, Any]] = {
    "dehaze": {"dataset": "SOTS", "sam": (21.677, 0.8451), "robustsam": (23.159, 0.8685),
               "method": "SAM-guided dehazing (Jin et al. 2023): SAM masks as one grayscale channel concatenated "
                         "to the hazy input (channel expansion)"},
    "deblur": {"dataset": "GoPro", "sam": (27.491, 0.9066), "robustsam": (29.351, 0.9229),
               "method": "SAM-Deblur (Li et al. 2023): NAFNet with a Mask Average Pooling structure map, "
                         "mask dropout 0.5 in training"},
}
# SAM-Deblur's own README, GoPro, NAFNet without / with SAM masks (another protocol than Table 8).
SAM_DEBLUR_README = {"none": (32.85, 0.960), "sam": (32.83, 0.960)}
INPUT_LABEL = {"dehaze": "hazy input", "deblur": "blurred input"}


def load_results(run_dirs: Mapping[str, str | Path]) -> dict[str, dict[str, Any]]:
    """``results.json`` of each run folder, keyed by row (``none``, ``sam``, ``robustsam``)."""
    return {row: json.loads((Path(folder) / RESULTS_NAME).read_text()) for row, folder in run_dirs.items()}


def _mean_segments(result: Mapping[str, Any]) -> float | None:
    counts = [record["segments"] for record in result["metrics"]["per_image"] if record.get("segments") is not None]
    return sum(counts) / len(counts) if counts else None


def _paired_difference(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, Any]:
    """Per-image PSNR of ``second`` minus ``first`` over the images both scored: mean, standard error, wins."""
    first_psnr = {record["name"]: record["psnr"] for record in first["metrics"]["per_image"]}
    differences = [
        record["psnr"] - first_psnr[record["name"]]
        for record in second["metrics"]["per_image"]
        if record["name"] in first_psnr and math.isfinite(record["psnr"]) and math.isfinite(first_psnr[record["name"]])
    ]
    if not differences:
        return {"images": 0, "mean_db": math.nan, "standard_error_db": math.nan, "wins": 0}
    spread = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else math.nan
    return {"images": len(differences), "mean_db": statistics.fmean(differences), "standard_error_db": spread,
            "wins": sum(difference > 0 for difference in differences)}


def _input_scores(result: Mapping[str, Any]) -> dict[str, float]:
    """Mean PSNR / SSIM of the degraded inputs themselves against the ground truth (no restoration)."""
    pairs = [(read_rgb(record["lq_path"]), read_rgb(record["gt_path"])) for record in result["metrics"]["per_image"]]
    if not pairs:
        return {"psnr": math.nan, "ssim": math.nan}
    return {"psnr": statistics.fmean(psnr(lq, gt) for lq, gt in pairs),
            "ssim": statistics.fmean(ssim(lq, gt) for lq, gt in pairs)}


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _call_string(settings: Mapping[str, Any], skip: tuple[str, ...] = ()) -> str:
    """``{"type": "AdamW", "lr": 0.001}`` -> ``"AdamW(lr=0.001)"``."""
    arguments = ", ".join(f"{key}={value}" for key, value in settings.items() if key not in ("type", *skip))
    return f"{settings.get('type', '?')}({arguments})"


def build_report(task: str, results: Mapping[str, Mapping[str, Any]], setup: Mapping[str, Any]) -> dict[str, Any]:
    """The content of ``report.json``: rows, protocol, the paper's numbers and the ordering check.

    ``results``: ``results.json`` per row; ``setup``: recipe facts (``data`` description, ``wall_seconds``,
    ``threads``, ``embedded_defaults``, ...), copied into the report.
    """
    paper = PAPER_TABLE8[task]
    rows: dict[str, dict[str, Any]] = {}
    for row, label in ROWS:
        if row not in results:
            continue
        result = results[row]
        paper_psnr, paper_ssim = paper.get(row, (None, None))
        rows[row] = {
            "label": label,
            "psnr": result["metrics"]["psnr"],
            "ssim": result["metrics"]["ssim"],
            "paper_psnr": paper_psnr,
            "paper_ssim": paper_ssim,
            "num_images": result["metrics"]["num_images"],
            "iterations": result["iterations"],
            "mean_segments": _mean_segments(result),
            "prior_model": result["prior"].get("model", "none"),
            "prior_fingerprint": result["prior"].get("fingerprint"),
            "train_seconds": result["train"]["train_seconds"],
        }
    reference = results.get("none") or next(iter(results.values()))
    report: dict[str, Any] = {
        "task": task,
        "dataset": paper["dataset"],
        "rows": rows,
        "protocol": {
            "metrics": f"{reference['metrics']['protocol']}; mean over {reference['metrics']['num_images']} test images",
            "method": paper["method"],
            "network": _call_string(reference["network"], skip=("prior",)),
            "network_prior": (results.get("sam") or results.get("robustsam") or reference)["network"].get("prior"),
            "train": reference["train"],
            "test": reference["test"],
            "prior_settings": (results.get("sam") or results.get("robustsam") or {}).get("prior", {}).get("settings"),
            "num_segments": {row: results[row].get("num_segments") for row in results},
            "device": reference["device"],
            "world_size": reference["world_size"],
        },
        "degraded_input": _input_scores(reference),
        "paper": {"table": "RobustSAM (CVPR 2024) Table 8", "sam": paper["sam"], "robustsam": paper["robustsam"]},
        "setup": dict(setup),
    }
    if task == "deblur":
        report["paper"]["sam_deblur_readme_gopro"] = SAM_DEBLUR_README
    if "sam" in results and "robustsam" in results:
        psnr_gap = rows["robustsam"]["psnr"] - rows["sam"]["psnr"]
        ssim_gap = rows["robustsam"]["ssim"] - rows["sam"]["ssim"]
        report["ordering"] = {
            "robustsam_minus_sam_psnr": psnr_gap,
            "robustsam_minus_sam_ssim": ssim_gap,
            "paper_ordering_held": bool(psnr_gap > 0 and ssim_gap > 0),
            "paired_psnr": _paired_difference(results["sam"], results["robustsam"]),
        }
    return report


def _ordering_sentence(report: Mapping[str, Any]) -> str:
    ordering = report.get("ordering")
    if ordering is None:
        return "The SAM / RobustSAM ordering cannot be checked: a row is missing."
    paired = ordering["paired_psnr"]
    if ordering["robustsam_minus_sam_psnr"] == 0 and ordering["robustsam_minus_sam_ssim"] == 0:
        return ("The paper's ordering (RobustSAM prior > SAM prior) **could not be tested**: the two rows are "
                "identical (same masks, e.g. none at all, hence the same network inputs and training).")
    verdict = "held" if ordering["paper_ordering_held"] else "did not hold"
    models = " ".join(row["prior_model"] for row in report["rows"].values())
    caveat = (" This is not a test of the paper's claim: a prior model was untrained or random (see the warnings)."
              if "UNTRAINED" in models or "RANDOMLY INITIALISED" in models else "")
    sign = lambda value: f"{value:+.3f}"  # noqa: E731
    return (
        f"The paper's ordering (RobustSAM prior > SAM prior in PSNR and SSIM) **{verdict}** here: RobustSAM minus "
        f"SAM is {sign(ordering['robustsam_minus_sam_psnr'])} dB PSNR and {sign(ordering['robustsam_minus_sam_ssim'])} "
        f"SSIM (paired per image: {sign(paired['mean_db'])} ± {paired['standard_error_db']:.3f} dB standard error, "
        f"RobustSAM better on {paired['wins']} of {paired['images']} images). One training run per row (one seed): "
        "differences within about two standard errors are not evidence either way." + caveat
    )


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: the table, the protocol, caveats and the ordering sentence."""
    task, dataset, protocol, setup = report["task"], report["dataset"], report["protocol"], report["setup"]
    title = {"dehaze": "Dehazing", "deblur": "Deblurring"}[task]
    lines = [
        f"# {title} with SAM / RobustSAM structure priors (Table 8 layout)",
        "",
        f"| Prior | PSNR (ours) | SSIM (ours) | PSNR (paper, {dataset}) | SSIM (paper, {dataset}) | masks per test image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"].values():
        lines.append(
            f"| {row['label']} | {_number(row['psnr'], 3)} | {_number(row['ssim'], 4)} | {_number(row['paper_psnr'], 3)} "
            f"| {_number(row['paper_ssim'], 4)} | {_number(row['mean_segments'], 1)} |"
        )
    train = protocol["train"]
    models = "; ".join(f"{row['label']}: {row['prior_model']}" for key, row in report["rows"].items() if key != "none")
    lines += [
        "",
        "Paper columns: RobustSAM (CVPR 2024) Table 8, for reference only; they come from another protocol "
        "(full-size SAM / RobustSAM, the real dataset, full-length training) and are not comparable to ours.",
    ]
    if task == "deblur":
        lines.append(
            f"SAM-Deblur's own README reports GoPro {SAM_DEBLUR_README['none'][0]}/{SAM_DEBLUR_README['none'][1]} "
            f"without and {SAM_DEBLUR_README['sam'][0]}/{SAM_DEBLUR_README['sam'][1]} with SAM masks: about 5 dB above "
            "Table 8, so the two protocols differ as well."
        )
    lines += [
        "",
        "## Our protocol",
        "",
        f"- **Metrics**: {protocol['metrics']}.",
        f"- **Data**: {setup.get('data', protocol['test']['dataroot'])}; {train['num_pairs']} training pairs, "
        f"{protocol['test']['num_pairs']} test pairs (full images).",
        f"- **Degraded input** (no restoration) scores {_number(report['degraded_input']['psnr'], 3)} dB / "
        f"{_number(report['degraded_input']['ssim'], 4)} on the same test images.",
        f"- **Method**: {protocol['method']}; prior rows use `prior: {protocol['network_prior']}`, the no-prior row "
        "the same network without prior input.",
        f"- **Network**: {protocol['network']}.",
        f"- **Training** (each row, same seed): {train['total_iter']} iterations, batch {train['batch_size']}, "
        f"{train['crop_size']} px crops with flips/rotations, loss {train['loss']}, "
        f"{_call_string(train['optimizer'])}, {_call_string(train['scheduler'])} over the run; device {protocol['device']} "
        f"x {protocol['world_size']}.",
        f"- **Priors** (computed once on the degraded inputs, cached): {models}. Automatic mask generator "
        f"settings (both priors): {protocol['prior_settings']}.",
    ]
    if any(value for value in protocol["num_segments"].values()):
        lines.append(f"- **Grayscale coding scale** (`num_segments`, dataset-wide): {protocol['num_segments']}.")
    if setup.get("embedded_defaults"):
        lines.append("- **Embedded defaults**: the bundled tiny SAM / RobustSAM models on small generated data with "
                     "a small network and short training; a smoke-scale reproduction of the table's layout, not of "
                     "its numbers.")
    if any("RANDOMLY INITIALISED" in row["prior_model"] for row in report["rows"].values()):
        lines.append("- **Warning**: a prior came from a RANDOMLY INITIALISED tiny model (bundled weights missing): "
                     "its masks carry no image structure, so its row measures nothing about SAM or RobustSAM.")
    if any("UNTRAINED robust path" in row["prior_model"] for row in report["rows"].values()):
        lines.append("- **Warning**: the RobustSAM row used the SAM-tiny base with an UNTRAINED robust path (the "
                     "bundled RobustSAM-tiny was missing): it is not a RobustSAM prior, so the SAM / RobustSAM "
                     "comparison below does not test the paper's claim.")
    empty = [row["label"] for key, row in report["rows"].items() if key != "none" and row["mean_segments"] == 0]
    if empty:
        lines.append(f"- **Warning**: {', '.join(empty)} produced no masks on any test image: such a row is the "
                     "no-prior network plus constant extra input channels (its difference to the no-prior row "
                     "comes from the different input layer and initialisation, not from structure).")
    if "wall_seconds" in setup:
        load = setup.get("load_average") or {}
        lines.append(f"- **Wall time**: {setup['wall_seconds'] / 60:.1f} min for the whole recipe "
                     f"({setup.get('threads', '?')} torch threads; 1-minute load average {load.get('start')} at the "
                     f"start, {load.get('end')} at the end).")
    lines += ["", "## Result", "", _ordering_sentence(report), "", "![grid](grid.png)", ""]
    return "\n".join(lines)


def _grid_names(results: Mapping[str, Mapping[str, Any]], count: int) -> list[str]:
    """``count`` test images spread evenly over the test set (names present in every row)."""
    per_row = [[record["name"] for record in result["metrics"]["per_image"] if "output" in record]
               for result in results.values()]
    common = [name for name in per_row[0] if all(name in names for names in per_row[1:])]
    if len(common) <= count:
        return common
    return [common[round(index * (len(common) - 1) / max(1, count - 1))] for index in range(count)]


def render_grid(task: str, results: Mapping[str, Mapping[str, Any]], run_dirs: Mapping[str, str | Path],
                path: str | Path, count: int = 4) -> Path:
    """A PNG grid, one test image per row: input / no prior / SAM / RobustSAM / ground truth, PSNR in the titles."""
    names = _grid_names(results, count)
    if not names:
        raise ValueError("no restored test images were saved (val.save_images: false?)")
    records = {row: {record["name"]: record for record in result["metrics"]["per_image"]} for row, result in results.items()}
    first = records[next(iter(records))]
    columns = ["input", *[row for row, _ in ROWS if row in results], "gt"]
    labels = {"input": INPUT_LABEL[task], "gt": "ground truth", **dict(ROWS)}
    figure, axes = plt.subplots(len(names), len(columns), figsize=(2.6 * len(columns), 2.8 * len(names)), squeeze=False)
    for row_index, name in enumerate(names):
        target = read_rgb(first[name]["gt_path"])
        for column_index, column in enumerate(columns):
            if column == "input":
                image = read_rgb(first[name]["lq_path"])
                title = f"{labels[column]}\n{psnr(image, target):.2f} dB"
            elif column == "gt":
                parts = name.split("/")
                image, title = target, f"{labels[column]}\n{'/'.join(parts[-3::2]) if len(parts) > 2 else name}"
            else:
                record = records[column][name]
                image = read_rgb(Path(run_dirs[column]) / record["output"])
                title = f"{labels[column]}\n{record['psnr']:.2f} dB"
            axis = axes[row_index][column_index]
            axis.imshow(image)
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
    return path


def write_report(
    task: str,
    output_dir: str | Path,
    run_dirs: Mapping[str, str | Path],
    setup: Mapping[str, Any] | None = None,
    grid_images: int = 4,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and ``grid.png`` into ``output_dir`` from the rows' run folders."""
    if task not in PAPER_TABLE8:
        raise ValueError(f"task must be one of {sorted(PAPER_TABLE8)}, got {task!r}")
    output_dir = Path(output_dir)
    results = load_results(run_dirs)
    report = build_report(task, results, setup or {})
    paths = {"report.md": output_dir / "report.md", "report.json": output_dir / "report.json",
             "grid.png": output_dir / "grid.png"}
    write_json(paths["report.json"], report)
    write_text_atomically(paths["report.md"], render_markdown(report))
    render_grid(task, results, run_dirs, paths["grid.png"], grid_images)
    return paths


def format_table(report: Mapping[str, Any]) -> str:
    """The rows as plain text, for the console."""
    lines = [f"{'prior':<18}{'PSNR':>9}{'SSIM':>9}{'paper PSNR':>12}{'paper SSIM':>12}"]
    for row in report["rows"].values():
        lines.append(f"{row['label']:<18}{_number(row['psnr'], 3):>9}{_number(row['ssim'], 4):>9}"
                     f"{_number(row['paper_psnr'], 3):>12}{_number(row['paper_ssim'], 4):>12}")
    return "\n".join(lines)

