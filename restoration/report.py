"""Table-8-style reports of the prior comparison: ``report.md``, ``report.json`` and ``grid.png``.

Rows are *No prior*, *SAM prior*, *RobustSAM prior* and, on generated data, the control rows
*ground-truth masks* and *shuffled masks*; a row may have several training seeds (one run folder each,
read from its ``results.json``). The RobustSAM-vs-SAM verdict is the paired analysis of
:mod:`restoration.verdict`: "held" only when its 95 % interval lies above 0. Our PSNR / SSIM stand beside
the paper's Table 8 numbers, which were measured under another protocol (full-size models, real data,
full training) and are for reference only.
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

from restoration.paired_data import read_rgb  # noqa: E402
from restoration.trained_run import RESULTS_NAME  # noqa: E402
from restoration.verdict import (MDD_FORMULA, paired_image_verdict, paired_seed_verdict, power_sentence,  # noqa: E402
                                 verdict_sentence)
from robustprior.io.atomic import atomic_path, write_text_atomically  # noqa: E402

ROW_LABELS: dict[str, str] = {"none": "No prior", "sam": "SAM prior", "robustsam": "RobustSAM prior",
                              "gt_masks": "Ground-truth masks (control)", "shuffled_masks": "Shuffled masks (control)"}
ROWS: tuple[tuple[str, str], ...] = tuple(ROW_LABELS.items())
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
# Learning targets of the default recipes (issue: a task that learns, a network that reads its prior).
TARGETS = {"no_prior_gain_db": {"deblur": 1.5}, "gt_masks_zeroing_cost_db": {"dehaze": 0.3, "deblur": 0.3}}


def load_results(run_dirs: Mapping[tuple[str, int], str | Path]) -> dict[str, dict[int, dict[str, Any]]]:
    """``results.json`` of each run folder: ``{row: {seed: results}}``."""
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for (row, seed), folder in run_dirs.items():
        results.setdefault(row, {})[seed] = json.loads((Path(folder) / RESULTS_NAME).read_text())
    return results


def _per_image_psnr(result: Mapping[str, Any]) -> dict[str, float]:
    return {record["name"]: record["psnr"] for record in result["metrics"]["per_image"]}


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _mean_segments(result: Mapping[str, Any]) -> float | None:
    counts = [record["segments"] for record in result["metrics"]["per_image"] if record.get("segments") is not None]
    return sum(counts) / len(counts) if counts else None


def _input_scores(result: Mapping[str, Any]) -> dict[str, float]:
    """Mean PSNR / SSIM of the degraded inputs themselves against the ground truth (the trainer's records)."""
    records = result["metrics"]["per_image"]
    return {"psnr": statistics.fmean(record["input_psnr"] for record in records),
            "ssim": statistics.fmean(record["input_ssim"] for record in records)}


def _call_string(settings: Mapping[str, Any], skip: tuple[str, ...] = ()) -> str:
    """``{"type": "AdamW", "lr": 0.001}`` -> ``"AdamW(lr=0.001)"``."""
    arguments = ", ".join(f"{key}={value}" for key, value in settings.items() if key not in ("type", *skip))
    return f"{settings.get('type', '?')}({arguments})"


def _difference_to_none(results: Mapping[str, Mapping[int, Any]], row: str) -> float | None:
    """Mean paired per-image PSNR of ``row`` minus the no-prior row, over the seeds both have."""
    if row not in results or "none" not in results:
        return None
    seeds = sorted(set(results[row]) & set(results["none"]))
    if not seeds:
        return None
    return paired_seed_verdict({seed: _per_image_psnr(results["none"][seed]) for seed in seeds},
                               {seed: _per_image_psnr(results[row][seed]) for seed in seeds})["mean"]


def ceiling_verdict(results: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, Any] | None:
    """Ground-truth masks minus SAM prior, the ceiling of what a better mask prior can give (retrain
    design): paired over seeds when both rows have at least 2 seeds in common, else over the test
    images of their first common seed (images as replicates: seed noise not included, said in
    ``method``). None without both rows or a common seed."""
    if "gt_masks" not in results or "sam" not in results:
        return None
    seeds = sorted(set(results["gt_masks"]) & set(results["sam"]))
    if not seeds:
        return None
    if len(seeds) >= 2:
        ceiling = paired_seed_verdict({seed: _per_image_psnr(results["sam"][seed]) for seed in seeds},
                                      {seed: _per_image_psnr(results["gt_masks"][seed]) for seed in seeds})
        ceiling["per_seed"] = {str(seed): value for seed, value in ceiling["per_seed"].items()}
        return ceiling
    ceiling = paired_image_verdict(_per_image_psnr(results["sam"][seeds[0]]),
                                   _per_image_psnr(results["gt_masks"][seeds[0]]), design="retrain")
    ceiling["method"] += f" (one training seed, {seeds[0]}: the seed-to-seed noise is not in this interval)"
    ceiling.pop("per_image")
    return ceiling


def build_report(task: str, results: Mapping[str, Mapping[int, Mapping[str, Any]]], setup: Mapping[str, Any],
                 quality: Mapping[str, Mapping[str, Any]] | None = None,
                 reliance: Mapping[str, Mapping[str, Any]] | None = None,
                 swap: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The content of ``report.json``.

    ``results``: ``{row: {seed: results.json}}``; ``setup``: recipe facts copied into the report;
    ``quality``: :func:`restoration.prior_quality.prior_quality` per prior row; ``reliance``:
    :func:`restoration.prior_reliance.prior_reliance` per prior row; ``swap``:
    :func:`restoration.prior_swap.prior_swap` per source row (the test-time prior swap design).
    """
    quality, reliance = quality or {}, reliance or {}
    paper = PAPER_TABLE8[task]
    rows: dict[str, dict[str, Any]] = {}
    for row, label in ROWS:
        if row not in results:
            continue
        per_seed = {seed: {"psnr": result["metrics"]["psnr"], "ssim": result["metrics"]["ssim"]}
                    for seed, result in sorted(results[row].items())}
        psnr_mean, psnr_sd = _mean_sd([value["psnr"] for value in per_seed.values()])
        ssim_mean, ssim_sd = _mean_sd([value["ssim"] for value in per_seed.values()])
        first = results[row][min(results[row])]
        paper_psnr, paper_ssim = paper.get(row, (None, None))
        rows[row] = {
            "label": label, "seeds": per_seed, "psnr": psnr_mean, "psnr_sd": psnr_sd, "ssim": ssim_mean,
            "ssim_sd": ssim_sd, "paper_psnr": paper_psnr, "paper_ssim": paper_ssim,
            "num_images": first["metrics"]["num_images"], "iterations": first["iterations"],
            "mean_segments": _mean_segments(first), "prior_model": first["prior"].get("model", "none"),
            "prior_fingerprint": first["prior"].get("fingerprint"), "quality": quality.get(row),
            "reliance": reliance.get(row),
            "train_seconds": [result["train"]["train_seconds"] for result in results[row].values()],
        }
    reference = next(iter(results.get("none", {}).values()), None) or next(iter(next(iter(results.values())).values()))
    prior_reference = next((next(iter(results[row].values())) for row in ("sam", "robustsam") if row in results), reference)
    degraded = _input_scores(reference)
    report: dict[str, Any] = {
        "task": task,
        "dataset": paper["dataset"],
        "rows": rows,
        "protocol": {
            "metrics": f"{reference['metrics']['protocol']}; mean over {reference['metrics']['num_images']} test images",
            "ssim_kind": reference.get("ssim_kind", "basicsr"),
            "method": paper["method"],
            "network": _call_string(reference["network"], skip=("prior",)),
            "network_prior": prior_reference["network"].get("prior"),
            "train": reference["train"],
            "test": reference["test"],
            "prior_settings": prior_reference.get("prior", {}).get("settings"),
            "prior_settings_per_row": {row: next(iter(results[row].values())).get("prior", {}).get("settings")
                                       for row in ("sam", "robustsam") if row in results},
            "num_segments": {row: next(iter(results[row].values())).get("num_segments") for row in results},
            "device": reference["device"],
            "world_size": reference["world_size"],
        },
        "degraded_input": degraded,
        "paper": {"table": "RobustSAM (CVPR 2024) Table 8", "sam": paper["sam"], "robustsam": paper["robustsam"]},
        "setup": dict(setup),
        "controls": {row: _difference_to_none(results, row) for row in ("gt_masks", "shuffled_masks", "sam", "robustsam")
                     if row in results},
    }
    if task == "deblur":
        report["paper"]["sam_deblur_readme_gopro"] = SAM_DEBLUR_README
    if "sam" in results and "robustsam" in results:
        seeds = sorted(set(results["sam"]) & set(results["robustsam"]))
        report["verdict"] = paired_seed_verdict({seed: _per_image_psnr(results["sam"][seed]) for seed in seeds},
                                                {seed: _per_image_psnr(results["robustsam"][seed]) for seed in seeds})
        report["verdict"]["per_seed"] = {str(seed): value for seed, value in report["verdict"]["per_seed"].items()}
    report["power"] = {"formula": MDD_FORMULA, "ceiling": ceiling_verdict(results),
                       "seed_sd": {row: rows[row]["psnr_sd"] for row in ("sam", "robustsam", "gt_masks") if row in rows}}
    report["swap"] = {row: dict(value) for row, value in (swap or {}).items()}
    targets: dict[str, Any] = {}
    if "none" in rows and task in TARGETS["no_prior_gain_db"]:
        gain = rows["none"]["psnr"] - degraded["psnr"]
        required = TARGETS["no_prior_gain_db"][task]
        targets["no_prior_gain_db"] = {"value": gain, "required": required, "met": gain >= required}
    if "gt_masks" in rows and rows["gt_masks"]["reliance"] is not None:
        cost = rows["gt_masks"]["reliance"]["cost_db"]
        required = TARGETS["gt_masks_zeroing_cost_db"][task]
        targets["gt_masks_zeroing_cost_db"] = {"value": cost, "required": required, "met": cost >= required}
    report["targets"] = targets
    return report


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _with_sd(mean: float, sd: float | None, digits: int) -> str:
    return _number(mean, digits) + ("" if sd is None else f" ± {sd:.{digits}f}")


def _augmentation(setup: Mapping[str, Any]) -> str:
    """" with flips and 90-degree rotations" / " with flips" / "" from the recipe's ``augment`` facts."""
    augment = setup.get("augment") or {}
    parts = [name for key, name in (("use_flip", "flips"), ("use_rot", "90-degree rotations")) if augment.get(key)]
    return f" with {' and '.join(parts)}" if parts else ""


def _verdict_section(report: Mapping[str, Any]) -> list[str]:
    verdict = report.get("verdict")
    if verdict is None:
        return ["The SAM / RobustSAM comparison cannot be made: a row is missing."]
    models = " ".join(row["prior_model"] for row in report["rows"].values())
    power = report.get("power") or {}
    lines = ["**Design: retrain per prior** (the paper's: one network trained per prior and seed).", "",
             verdict_sentence({**verdict, "per_seed": {int(seed): value for seed, value in verdict["per_seed"].items()}}),
             "", f"Method: {verdict['method']}. The paper's ordering (RobustSAM prior > SAM prior) counts as held only "
                 "when the interval lies above 0."]
    if "mdd" in verdict:
        lines += ["", power_sentence(verdict, power.get("ceiling")) + _seed_sd_text(power)]
    if "UNTRAINED" in models or "RANDOMLY INITIALISED" in models:
        lines += ["", "This is not a test of the paper's claim: a prior model was untrained or random (see the warnings)."]
    return lines


def _seed_sd_text(power: Mapping[str, Any]) -> str:
    """`` Seed sd of each row's mean PSNR: ...`` (rows with at least 2 seeds)."""
    known = {row: sd for row, sd in (power.get("seed_sd") or {}).items() if sd is not None}
    if not known:
        return ""
    return " Seed sd of each row's mean PSNR: " + ", ".join(f"{ROW_LABELS[row]} {sd:.3f} dB" for row, sd in known.items()) + "."


def _swap_section(report: Mapping[str, Any]) -> list[str]:
    """The test-time prior swap design (:mod:`restoration.prior_swap`), one paragraph per source row."""
    swaps = report.get("swap") or {}
    if not swaps:
        return []
    lines = ["## Verdict: RobustSAM prior vs SAM prior, test-time prior swap", "",
             "**Design: test-time prior swap** (ours): a network trained once with one prior is evaluated on the "
             "degraded test inputs with SAM's and with RobustSAM's masks; the paired per-image difference has no "
             "training-seed noise (the images are the replicates).", ""]
    for row, swap in swaps.items():
        psnr = swap["psnr"]
        seeds = ", ".join(map(str, swap["seeds"]))
        lines += [f"Network trained with: {ROW_LABELS.get(row, row).replace(' (control)', '')} (seed(s) {seeds}; "
                  f"per-image PSNR averaged over these networks): {psnr['own']:.3f} dB with its own prior, "
                  f"{psnr['sam']:.3f} dB with SAM's, {psnr['robustsam']:.3f} dB with RobustSAM's.", "",
                  verdict_sentence(swap["verdict"]), "",
                  power_sentence(swap["verdict"], swap.get("ceiling")), ""]
        if swap.get("ceiling") is None:
            lines += ["(No swap ceiling: the network was not trained with ground-truth masks; the retrain "
                      "design's ceiling is in the section above.)", ""]
    return lines


def _settings_text(protocol: Mapping[str, Any]) -> str:
    """The automatic-mask settings of the prior rows: one for both when they agree, else per row."""
    per_row = protocol.get("prior_settings_per_row") or {}
    if len(per_row) == 2 and per_row["sam"] != per_row["robustsam"]:
        return "; ".join(f"{ROW_LABELS[row]} {settings}" for row, settings in per_row.items())
    return f"(SAM and RobustSAM) {protocol['prior_settings']}"


def _operating_point_text(setup: Mapping[str, Any]) -> str:
    """How the per-row thresholds were chosen (``recipe.amg_operating_point: per_path``), with the chosen
    pairs' F1 and masks per calibration image; empty when both rows used the config's thresholds."""
    chosen = setup.get("amg_operating_point")
    if not chosen:
        return " (the recipe's prior section, the same thresholds for both rows)"
    scores = "; ".join(f"{ROW_LABELS[row]} F1 {score['f1']:.2f}, {score['mean_masks']:.1f} masks / image, mean best "
                       f"IoU {score['mean_best_iou']:.3f}" for row, score in chosen["scores"].items())
    return f"; thresholds chosen per row: {chosen['rule']}; on those images: {scores}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: per-seed table, prior quality and reliance, targets, verdict, protocol and caveats."""
    task, dataset, protocol, setup = report["task"], report["dataset"], report["protocol"], report["setup"]
    title = {"dehaze": "Dehazing", "deblur": "Deblurring"}[task]
    seeds = sorted({int(seed) for row in report["rows"].values() for seed in row["seeds"]})
    lines = [
        f"# {title} with SAM / RobustSAM structure priors (Table 8 layout)", "",
        f"| Prior | {' | '.join(f'PSNR seed {seed}' for seed in seeds)} | PSNR mean ± sd | SSIM mean ± sd | "
        f"paper PSNR / SSIM ({dataset}) | masks / image | best IoU of true instances | zeroing the prior costs |",
        "|---|" + "---:|" * (len(seeds) + 6),
        f"| {INPUT_LABEL[task]} (no restoration) | {' | '.join('' for _ in seeds)} | "
        f"{_number(report['degraded_input']['psnr'], 3)} | {_number(report['degraded_input']['ssim'], 4)} | | | | |",
    ]
    for key, row in report["rows"].items():
        per_seed = " | ".join(_number(row["seeds"][str(seed)]["psnr"] if str(seed) in row["seeds"] else
                                      row["seeds"].get(seed, {}).get("psnr"), 3) for seed in seeds)
        paper = (f"{_number(row['paper_psnr'], 3)} / {_number(row['paper_ssim'], 4)}" if row["paper_psnr"] else "")
        quality, reliance = row.get("quality") or {}, row.get("reliance") or {}
        lines.append(
            f"| {row['label']} | {per_seed} | {_with_sd(row['psnr'], row['psnr_sd'], 3)} | "
            f"{_with_sd(row['ssim'], row['ssim_sd'], 4)} | {paper} | {_number(quality.get('masks_per_image'), 1)} | "
            f"{_number(quality.get('mean_best_iou'), 3)} | "
            f"{'' if not reliance else _number(reliance['cost_db'], 3) + ' dB'} |")
    lines += ["", "## Verdict: RobustSAM prior vs SAM prior", "", *_verdict_section(report), "",
              *_swap_section(report)]
    controls = report.get("controls") or {}
    if controls:
        lines += ["## Reading the rows against no prior", "",
                  "Mean paired per-image PSNR difference to the no-prior row (same seeds): " + "; ".join(
                      f"{ROW_LABELS[row]} {value:+.3f} dB" for row, value in controls.items() if value is not None) +
                  ". Ground-truth masks are the ceiling of what a mask prior can give this network; shuffled masks "
                  "(another image's true instances) show what a wrong prior costs.", ""]
    dropped = setup.get("dropped_rows") or {}
    for row, reason in dropped.items():
        lines.append(f"- {ROW_LABELS[row]} left out: {reason}.")
    warnings = [f"{row['label']} averages {row['quality']['masks_per_image']:.1f} masks per image (fewer than 1): "
                "its network mostly sees an empty prior" for key, row in report["rows"].items()
                if row.get("quality") and row["quality"]["masks_per_image"] < 1]
    for warning in warnings:
        lines.append(f"- **Warning**: {warning}.")
    targets = report.get("targets") or {}
    if targets:
        lines += ["", "## Learning targets", ""]
        names = {"no_prior_gain_db": f"no-prior row over the {INPUT_LABEL[task]}",
                 "gt_masks_zeroing_cost_db": "zeroing the label map of the trained ground-truth-mask row costs"}
        for name, target in targets.items():
            lines.append(f"- {names[name]}: {target['value']:+.3f} dB (target >= {target['required']} dB): "
                         f"**{'met' if target['met'] else 'not met'}**")
    train = protocol["train"]
    models = "; ".join(f"{row['label']}: {row['prior_model']}" for key, row in report["rows"].items() if key != "none")
    lines += [
        "", "## Our protocol", "",
        f"- **Metrics**: {protocol['metrics']} (SSIM: {protocol['ssim_kind']}).",
        f"- **Data**: {setup.get('data', protocol['test'].get('dataroot_lq'))}; {train['num_pairs']} training pairs, "
        f"{protocol['test']['num_pairs']} test pairs (full images).",
        f"- **Method**: {protocol['method']}; prior rows use `prior: {protocol['network_prior']}`, the no-prior row "
        "the same network without prior input.",
        f"- **Network**: {protocol['network']}.",
        f"- **Training** (each run): {train['total_iter']} iterations, batch {train['batch_size']}, "
        f"{train['crop_size']} px crops{_augmentation(setup)}, loss {train['loss']}, "
        f"{_call_string(train['optimizer'])}, {_call_string(train['scheduler'])} over the run; device {protocol['device']} "
        f"x {protocol['world_size']}. Seeds: {', '.join(map(str, setup.get('seeds', seeds)))} for the SAM and RobustSAM "
        "rows, the first seed for the others.",
        f"- **Priors** (computed once on the degraded inputs, cached): {models}. Automatic mask generator "
        f"settings: {_settings_text(protocol)}{_operating_point_text(setup)}.",
        f"- **Grey-level coding scale** (`num_segments`): {protocol['num_segments']}.",
        "- **Paper columns**: RobustSAM (CVPR 2024) Table 8, for reference only; another protocol (full-size SAM / "
        "RobustSAM, the real dataset, full-length training), not comparable to ours.",
    ]
    if task == "deblur":
        lines.append(f"- SAM-Deblur's own README reports GoPro {SAM_DEBLUR_README['none'][0]}/{SAM_DEBLUR_README['none'][1]} "
                     f"without and {SAM_DEBLUR_README['sam'][0]}/{SAM_DEBLUR_README['sam'][1]} with SAM masks: about "
                     "5 dB above Table 8, so the two protocols differ as well.")
    if train["total_iter"] < 10000:
        lines.append("- **Smoke scale**: a small network and a short CPU schedule; this reproduces the table's layout "
                     "and tests whether an effect is visible at this scale, not the paper's numbers.")
    if any("RANDOMLY INITIALISED" in row["prior_model"] or "UNTRAINED" in row["prior_model"]
           for row in report["rows"].values()):
        lines.append("- **Warning**: a prior came from a randomly initialised or untrained model: its row measures "
                     "nothing about SAM or RobustSAM.")
    if "wall_seconds" in setup:
        load = setup.get("load_average") or {}
        lines.append(f"- **Time**: {setup['wall_seconds'] / 60:.1f} min wall for the whole recipe "
                     f"({setup.get('parallel', 1)} jobs at a time, {setup.get('threads', '?')} torch threads each; "
                     f"1-minute load average {load.get('start')} at the start, {load.get('end')} at the end); "
                     f"{setup.get('cpu_seconds', 0) / 60:.1f} CPU minutes in all, so about "
                     f"{setup.get('idle_two_core_estimate_seconds', 0) / 60:.1f} min on 2 otherwise idle cores "
                     "(an estimate: CPU time / 2)" + _memory_words(setup.get("peak_memory_gb")) + ".")
    lines += ["", "![grid](grid.png)", ""]
    return "\n".join(lines)


def _memory_words(peak: Mapping[str, float] | None) -> str:
    """The report's peak-memory clause: the recipe process (data, priors, evaluation) and its largest child
    process (a training job, or a forked data worker, which counts the pages it shares with the recipe)."""
    if not peak:
        return ""
    return (f"; peak memory {peak['recipe']:.1f} GB in the recipe process (data, priors, evaluation), "
            f"{peak['largest_job']:.1f} GB in its largest child process (training jobs, data workers)")


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
    """A PNG grid, one test image per line: input / each row (its first seed) / ground truth, PSNR in the titles.

    ``results`` / ``run_dirs``: one run per row."""
    names = _grid_names(results, count)
    if not names:
        raise ValueError("no restored test images were saved (val.save_img: false?)")
    records = {row: {record["name"]: record for record in result["metrics"]["per_image"]} for row, result in results.items()}
    first = records[next(iter(records))]
    columns = ["input", *[row for row, _ in ROWS if row in results], "gt"]
    labels = {"input": INPUT_LABEL[task], "gt": "ground truth", **{row: label.replace(" (control)", "")
                                                                    for row, label in ROW_LABELS.items()}}
    figure, axes = plt.subplots(len(names), len(columns), figsize=(2.4 * len(columns), 2.7 * len(names)), squeeze=False)
    for row_index, name in enumerate(names):
        target = read_rgb(first[name]["gt_path"])
        for column_index, column in enumerate(columns):
            if column == "input":
                image = read_rgb(first[name]["lq_path"])
                title = f"{labels[column]}\n{first[name]['input_psnr']:.2f} dB"
            elif column == "gt":
                parts = name.split("/")
                image, title = target, f"{labels[column]}\n{'/'.join(parts[-3::2]) if len(parts) > 2 else name}"
            else:
                record = records[column][name]
                image = read_rgb(Path(run_dirs[column]) / record["output"])
                title = f"{labels[column]}\n{record['psnr']:.2f} dB"
            axis = axes[row_index][column_index]
            axis.imshow(image)
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)
    return path


def write_report(
    task: str,
    output_dir: str | Path,
    run_dirs: Mapping[tuple[str, int], str | Path],
    setup: Mapping[str, Any] | None = None,
    quality: Mapping[str, Mapping[str, Any]] | None = None,
    reliance: Mapping[str, Mapping[str, Any]] | None = None,
    grid_images: int = 4,
    swap: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and ``grid.png`` into ``output_dir`` from the runs
    ``{(row, seed): folder}`` (``swap``: see :func:`build_report`)."""
    if task not in PAPER_TABLE8:
        raise ValueError(f"task must be one of {sorted(PAPER_TABLE8)}, got {task!r}")
    output_dir = Path(output_dir)
    results = load_results(run_dirs)
    report = build_report(task, results, setup or {}, quality, reliance, swap)
    paths = {"report.md": output_dir / "report.md", "report.json": output_dir / "report.json",
             "grid.png": output_dir / "grid.png"}
    write_text_atomically(paths["report.json"], json.dumps(report, indent=2, default=str) + "\n")
    write_text_atomically(paths["report.md"], render_markdown(json.loads(paths["report.json"].read_text())))
    first = {row: min(seeds) for row, seeds in ((row, [seed for r, seed in run_dirs if r == row]) for row in results)}
    render_grid(task, {row: results[row][seed] for row, seed in first.items()},
                {row: run_dirs[(row, seed)] for row, seed in first.items()}, paths["grid.png"], grid_images)
    return paths


def format_table(report: Mapping[str, Any]) -> str:
    """The rows as plain text, for the console, and the verdict."""
    lines = [f"{'prior':<30}{'PSNR':>16}{'SSIM':>18}{'masks':>7}{'best IoU':>10}",
             f"{INPUT_LABEL[report['task']]:<30}{_number(report['degraded_input']['psnr'], 3):>16}"
             f"{_number(report['degraded_input']['ssim'], 4):>18}"]
    for row in report["rows"].values():
        quality = row.get("quality") or {}
        lines.append(f"{row['label']:<30}{_with_sd(row['psnr'], row['psnr_sd'], 3):>16}"
                     f"{_with_sd(row['ssim'], row['ssim_sd'], 4):>18}{_number(quality.get('masks_per_image'), 1):>7}"
                     f"{_number(quality.get('mean_best_iou'), 3):>10}")
    verdicts = [("retrain per prior", report.get("verdict"))]
    verdicts += [(f"swap, trained with {row}", swap["verdict"]) for row, swap in (report.get("swap") or {}).items()]
    ceiling = (report.get("power") or {}).get("ceiling")
    if ceiling is not None:
        verdicts.append(("ceiling: ground-truth masks - SAM", ceiling))
    for design, verdict in verdicts:
        if verdict is None:
            continue
        interval = verdict["interval"]
        mdd = verdict.get("mdd")
        name = "RobustSAM - SAM" if not design.startswith("ceiling") else ""
        lines.append(f"{name + ' ' if name else ''}({design}): {verdict['mean']:+.3f} dB, 95 % interval "
                     f"{'none' if interval is None else f'[{interval[0]:+.3f}, {interval[1]:+.3f}]'}, "
                     f"MDD {'—' if mdd is None else f'{mdd:.3f}'} dB: {verdict['verdict']}")
    return "\n".join(lines)
