"""Bundle a finished RobustSAM-tiny run: float16 weights plus a model card.

    robustprior train robustprior/configs/robustsam_tiny.yaml --output runs/robustsam_tiny
    python recipes/export_robustsam_tiny.py --run runs/robustsam_tiny
    robustprior eval robustprior/configs/eval_tiny.yaml --output docs/results/robustness_tiny
    python recipes/export_robustsam_tiny.py --run runs/robustsam_tiny --eval docs/results/robustness_tiny
    python benchmarks/bench_real_photos.py --card robustprior/weights/robustsam_tiny.md robustprior/weights/sam_tiny.md

The second call rewrites the card with the held-out evaluation (the weights are rewritten
identically); the last puts the real-photo numbers back into the cards. Writes ``robustprior/weights/robustsam_tiny.safetensors`` and ``robustsam_tiny.md``
unless ``--weights`` names another file (the card goes beside it, same stem, ``.md``). The weights'
metadata and the card carry the automatic-mask settings measured on generated scenes for both
decoder paths (:func:`robustprior.evaluation.amg_settings.measure_on_scenes`, ``--amg-scenes``; a few minutes
on a CPU), which priors and ``robustprior segment`` use by default.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from robustprior.training.provenance import git_commit
from robustprior.evaluation.amg_settings import measure_for_bundle, settings_metadata
from robustprior.io.atomic import write_text_atomically
from robustprior.io.checkpoint import read_state_dict, save_checkpoint
from robustprior.evaluation.evaluate import SUMMARY_ROWS
from robustprior.load import BUNDLED, ROBUST_PARTS_KEY, load_model
from robustprior.training import read_run_config
from robustprior.training.robustsam.config import SCHEMA


def evaluation_table(report: dict, prompt_type: str = "point") -> str:
    """The Table-2 block (IoU / PA for Degrade / Clear / Average, percent) of a ``robustprior eval``
    ``report.json`` for one prompt type, as Markdown."""
    labels = {"sam": "SAM-tiny", "robust": "RobustSAM-tiny"}
    header = "| Model | " + " | ".join(f"{row} {metric}" for row in SUMMARY_ROWS for metric in ("IoU", "PA")) + " |"
    lines = [header, "|" + "---|" * (1 + 2 * len(SUMMARY_ROWS))]
    for path, label in labels.items():
        if prompt_type not in report["results"].get(path, {}):
            continue
        table = report["results"][path][prompt_type]["table"]
        lines.append(f"| {label} | " + " | ".join(
            "-" if table[row][metric] is None else f"{100 * table[row][metric]:.2f}"
            for row in SUMMARY_ROWS for metric in ("IoU", "PA")) + " |")
    return "\n".join(lines)


ROBUST_INIT_WORDS = {
    "default": "at random except the Robust Output Tokens (copies of SAM's mask tokens)",
    "sam": "as SAM's decoder (`model.robust_init: sam`: tokens, classifier MLP and mask feature start as SAM's)",
}


def model_card(run: Path, weights: Path, metadata: dict, evaluation: Path | None, which: str = "best",
               amg_section: str | None = None) -> str:
    """The Markdown model card of an exported RobustSAM-tiny run."""
    config = read_run_config(run, SCHEMA)
    metrics = json.loads((run / "metrics.json").read_text())
    train, data, degradations = config["train"], config["data"], config["degradations"]
    lines = [
        "# robustsam_tiny: RobustSAM trained on top of the bundled SAM-tiny",
        "",
        f"`{weights.name}` ({weights.stat().st_size / 1024:.0f} KiB, float16; loading casts to float32) holds a full "
        "`RobustSAM` of type `tiny`: the SAM parts are the frozen SAM-tiny base "
        f"(`{config['model']['checkpoint']}`, see `sam_tiny.md`), the robust parts (AMFG with Fourier Degradation "
        "Suppression, AOTG, Robust Output Token, feature fusion) were trained by this project's RobustSAM trainer "
        "with the paper's recipe (frozen SAM, degradations, consistency + segmentation losses; the weights "
        "are below and in the run's `config.yaml`). `RobustSAMPrior.from_pretrained(\"tiny\")` and every command without "
        "`--checkpoint` load it; the `sam` path of the same weights is SAM-tiny.",
        "",
        "## Training",
        "",
        f"Data: generated scenes ({data['train']}), validation {data['val']}; prompts: {data['prompt']}"
        + (f" {data['prompt_mix']}" if data.get("prompt_mix") else "")
        + f" ({data['n_points']} point(s) per multi-point prompt; single points scored by the best of three masks). "
        f"Degradations: {degradations['kinds']} (15 kinds + identity) at severity {degradations['severity']}, "
        + (f"pixel sizes scaled to a {degradations['reference_size']:g}-px reference, "
           if degradations.get("reference_size") else "the release's raw pixel sizes, ")
        + f"{degradations['variants_per_image']} cached variants per image. "
        f"{metrics['iterations']} iterations of {train['batch_size_per_gpu']} images x up to "
        f"{train.get('prompts_per_image', 1)} prompts, {train['optimizer']} lr {train['lr']} "
        f"({train['schedule']}, warmup {train['warmup_iter']}), {train.get('consistency', 'release')} consistency, "
        f"loss weights {train['loss_weights']} "
        "(mask-feature and token consistency against the clear image, Dice + Focal, distillation of SAM's "
        "clear-image logits when weighted). "
        f"Robust parts initialised {ROBUST_INIT_WORDS[config['model'].get('robust_init', 'default')]}. "
        f"Wall time {metrics['seconds'] / 60:.1f} min on the CPU. Git commit `{metadata['git_commit']}`.",
        "",
        "Validation (single point, degraded images, mean IoU) at the end: "
        f"RobustSAM {metrics.get('val_iou_robust', float('nan')):.4f}, SAM {metrics.get('val_iou_sam', float('nan')):.4f}; "
        f"best RobustSAM {metrics.get('best_val_iou_robust', float('nan')):.4f}. These weights: "
        + ("the best validation checkpoint (`best.safetensors`, iteration "
           f"{metadata['iterations']})." if which == "best" else "the final iteration (`final.safetensors`)."),
        "",
        "Reproduce:",
        "",
        "```",
        f"robustprior train robustprior/configs/robustsam_tiny.yaml --output {run.as_posix()}",
        f"python recipes/export_robustsam_tiny.py --run {run.as_posix()} --which {which}",
        "```",
    ]
    if evaluation is not None:
        report = json.loads((evaluation / "report.json").read_text())
        protocol = report["protocol"]
        lines += [
            "",
            "## Held-out evaluation (the paper's Table 2 in miniature, point prompts)",
            "",
            f"{protocol.get('images')} held-out scenes, {protocol.get('instances')} instances, "
            f"{len(report['kinds'])} kinds (identity = Clear) at severity {protocol.get('severity')}; one centre point per "
            "instance, single-mask output; percent. Full report: "
            f"`{evaluation.as_posix()}/report.md`.",
            "",
            evaluation_table(report, "point"),
            "",
            "Reproduce: `robustprior eval robustprior/configs/eval_tiny.yaml --output "
            f"{evaluation.as_posix()}`.",
        ]
    if amg_section:
        lines += ["", amg_section.rstrip("\n")]
    return "\n".join(lines) + "\n"


def export(run: Path, weights: Path, evaluation: Path | None = None, which: str = "best", amg_scenes: int = 8,
           amg_settings: dict | None = None) -> tuple[Path, Path]:
    """Write ``weights`` (float16) from the finished run's ``best.safetensors`` (highest validation
    IoU of the robust path on degraded images) or ``final.safetensors``, and its model card; returns
    both paths. The automatic-mask settings are measured on ``amg_scenes`` generated scenes, unless
    ``amg_settings`` (``{"sam": {...}, "robust": {...}}``) gives them."""
    if which not in ("best", "final"):
        raise ValueError(f"which must be 'best' or 'final', got {which!r}")
    if not (run / "final.safetensors").is_file():
        raise FileNotFoundError(f"{run / 'final.safetensors'} not found: the run in {run} has not finished")
    final = run / f"{which}.safetensors"
    if not final.is_file():
        raise FileNotFoundError(f"{final} not found (the run had no validation set?): use --which final")
    if evaluation is not None and not (evaluation / "report.json").is_file():
        raise FileNotFoundError(f"no report.json in {evaluation} (write it with robustprior eval --output)")
    model = load_model(final, announce=False)[0]
    run_metadata = read_state_dict(final)[1]
    metadata = {"trained_by": "robustprior train + recipes/export_robustsam_tiny.py", "git_commit": git_commit(),
                "iterations": run_metadata.get("iterations") or run_metadata.get("iteration", "unknown"),
                ROBUST_PARTS_KEY: "trained"}
    if amg_settings is None:
        settings_entry, amg_section = measure_for_bundle(
            model, ("sam", "robust"), amg_scenes, command=f"python recipes/export_robustsam_tiny.py --amg-scenes {amg_scenes}")
    else:
        settings_entry, amg_section = settings_metadata(amg_settings), None
    metadata.update(settings_entry)
    save_checkpoint(model, weights, extra_metadata=metadata, dtype=torch.float16)
    card = weights.with_suffix(".md")
    write_text_atomically(card, model_card(run, weights, metadata, evaluation, which, amg_section))
    for path in (weights, card):
        path.chmod(0o644)  # the atomic writers' temporary files are private (0600); bundled files are not
    return weights, card


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/robustsam_tiny"), help="finished `robustprior train` run")
    parser.add_argument("--weights", type=Path, default=BUNDLED["tiny"], help="where to write the float16 weights")
    parser.add_argument("--eval", type=Path, help="a `robustprior eval` output folder to put in the card")
    parser.add_argument("--which", choices=("best", "final"), default="best",
                        help="best validation checkpoint (default) or the last iteration")
    parser.add_argument("--amg-scenes", type=int, default=8,
                        help="generated scenes on which the automatic-mask settings are measured")
    arguments = parser.parse_args(argv)
    for path in export(arguments.run, arguments.weights, arguments.eval, arguments.which, arguments.amg_scenes):
        print(f"[robustprior] wrote {path}")


if __name__ == "__main__":
    main()
