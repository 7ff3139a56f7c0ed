"""Measure the bundled tiny models' automatic-mask settings on generated scenes and store them in the
bundled weights' metadata and model cards: the command line of ``python recipes/amg_settings.py``.

    python recipes/amg_settings.py                 # measure and print (SAM path and RobustSAM path)
    python recipes/amg_settings.py --write         # ... and store them in the bundled weights and cards

Measures ``robustprior/weights/robustsam_tiny.safetensors`` on both decoder paths
(:func:`robustprior.evaluation.amg_settings.measure_on_scenes`). ``sam_tiny.safetensors`` holds the same SAM
parts (checked), so it gets the SAM-path settings. ``--write`` changes only the files' metadata
(``amg_settings`` and ``robust_parts``; tensors byte for byte unchanged) and the
``## Automatic mask settings`` section of each model card; the measurement also goes to
``--report`` (``report.json``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from robustprior.evaluation.amg_settings import (
    MEASURE_SEED,
    POINTS_PER_SIDE_GRID,
    card_section,
    measure_on_scenes,
    replace_card_section,
    settings_metadata,
)
from robustprior.io.atomic import write_text_atomically
from robustprior.io.checkpoint import read_state_dict, update_metadata
from robustprior.load import BUNDLED, ROBUST_PARTS_KEY, load_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=8, help="generated scenes to measure on")
    parser.add_argument("--seed", type=int, default=MEASURE_SEED, help="their seed stream")
    parser.add_argument("--points-per-side", type=int, nargs="+", default=list(POINTS_PER_SIDE_GRID),
                        help="point grids to try")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", type=Path, default=Path("docs/results/amg_settings"))
    parser.add_argument("--write", action="store_true", help="store the settings in the bundled files and cards")
    arguments = parser.parse_args(argv)
    torch.set_num_threads(arguments.threads)

    model, _ = load_model("tiny")
    robust_state, _ = read_state_dict(BUNDLED["tiny"])
    base_state, _ = read_state_dict(BUNDLED["sam_tiny"])
    if any(not torch.equal(value, base_state[key]) for key, value in robust_state.items() if not key.startswith("robust.")):
        raise SystemExit("sam_tiny and robustsam_tiny hold different SAM parts: measure sam_tiny separately")
    chosen, scores = measure_on_scenes(model, ("sam", "robust"), arguments.scenes, arguments.seed,
                                       tuple(arguments.points_per_side))
    defaults = (8, MEASURE_SEED, list(POINTS_PER_SIDE_GRID))
    command = "python recipes/amg_settings.py --write" + (
        "" if (arguments.scenes, arguments.seed, arguments.points_per_side) == defaults else
        f" --scenes {arguments.scenes} --seed {arguments.seed} --points-per-side "
        + " ".join(map(str, arguments.points_per_side)))
    section = card_section(chosen, scores, arguments.scenes, arguments.seed, command)
    print(section)
    arguments.report.mkdir(parents=True, exist_ok=True)
    write_text_atomically(arguments.report / "report.json", json.dumps(
        {"scenes": arguments.scenes, "seed": arguments.seed, "chosen": chosen,
         "scores": {path: [score.to_dict() for score in path_scores] for path, path_scores in scores.items()}},
        indent=1) + "\n")
    print(f"[robustprior] wrote {arguments.report / 'report.json'}")
    if not arguments.write:
        return
    files = {BUNDLED["tiny"]: ({"sam": chosen["sam"], "robust": chosen["robust"]}, "trained"),
             BUNDLED["sam_tiny"]: ({"sam": chosen["sam"]}, "untrained")}
    for weights, (per_path, robust_parts) in files.items():
        update_metadata(weights, {**settings_metadata(per_path), ROBUST_PARTS_KEY: robust_parts})
        card = weights.with_suffix(".md")
        card_text = card_section(per_path, {path: scores[path] for path in per_path}, arguments.scenes, arguments.seed,
                                 command)
        write_text_atomically(card, replace_card_section(card.read_text(), card_text))
        for path in (weights, card):
            path.chmod(0o644)
        print(f"[robustprior] wrote the settings into {weights} and {card}")
