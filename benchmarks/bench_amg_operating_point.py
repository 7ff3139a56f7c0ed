"""The prior rows' automatic masks on a recipe's degraded test inputs, at the recipe's shared thresholds and
at each path's own operating point (restoration.operating_point), without training anything.

    python benchmarks/bench_amg_operating_point.py --task dehaze [--config FILE] [--work DIR] [--out results.json]

Generates the recipe's data (its ``recipe.generate`` spec; reused when ``--work`` already holds it), chooses
each path's thresholds on the degraded training images, and prints, for the SAM and RobustSAM rows under
both rules, the thresholds, masks per test image and the mean best IoU of the true instances
(restoration.prior_quality), with the CPU seconds it took.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from restoration.datasets import prepare_priors  # noqa: E402
from restoration.operating_point import choose_operating_points  # noqa: E402
from restoration.prior_quality import prior_quality  # noqa: E402
from restoration.table8 import ensure_generated_data, load_recipe_config, lq_paths, row_options  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("dehaze", "deblur"), required=True)
    parser.add_argument("--config", help="recipe config (default: the embedded one)")
    parser.add_argument("--work", type=Path, help="folder for the generated data and priors (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)
    started = time.process_time()
    with tempfile.TemporaryDirectory() as temporary:
        work = arguments.work or Path(temporary)
        config = load_recipe_config(arguments.task, arguments.config)
        ensure_generated_data(arguments.task, work / "data", config["recipe"]["generate"], progress=False)
        roots = {phase: template.format(data_root=work / "data") for phase, template in config["recipe"]["roots"].items()}
        options = {row: row_options(config, row, 0, roots, work / "prior_cache") for row in ("sam", "robustsam")}
        train, test = lq_paths(options["sam"], ("train",)), lq_paths(options["sam"], ("test",))
        chosen = choose_operating_points({row: value["prior"] for row, value in options.items()}, train)
        results = {"task": arguments.task, "test_images": len(set(test)), "rule": chosen["rule"],
                   "calibration": chosen["scores"], "rows": {}}
        for rule in ("config", "per_path"):
            for row, value in options.items():
                prior = {**value["prior"], **(chosen["settings"][row] if rule == "per_path" else {})}
                index = prepare_priors(prior, test, work / "prior_cache", progress=False)
                quality = prior_quality(index, test)
                results["rows"][f"{row}/{rule}"] = {
                    "pred_iou_thresh": prior["pred_iou_thresh"], "stability_score_thresh": prior["stability_score_thresh"],
                    "masks_per_image": quality["masks_per_image"], "mean_best_iou": quality["mean_best_iou"]}
    results["cpu_seconds"] = round(time.process_time() - started, 1)
    print(f"{'row / rule':<22}{'pred IoU':>9}{'stability':>10}{'masks/img':>10}{'best IoU':>9}")
    for name, row in results["rows"].items():
        print(f"{name:<22}{row['pred_iou_thresh']:>9}{row['stability_score_thresh']:>10}"
              f"{row['masks_per_image']:>10.1f}{row['mean_best_iou']:>9.3f}")
    print(f"{results['test_images']} test images; {results['cpu_seconds']} CPU s")
    if arguments.out:
        arguments.out.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
