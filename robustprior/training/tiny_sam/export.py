"""Export of a finished tiny-SAM run: fp16 safetensors weights and the model card."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from robustprior.io.atomic import write_text_atomically
from robustprior.io.checkpoint import save_checkpoint
from ...modeling.robust_sam import RobustSAM
from ..checkpoints import load_training_checkpoint
from ..config import validate_saved_config
from ..errors import CheckpointError
from ..provenance import REPO_ROOT
from .config import DEFAULT_CONFIG, SCHEMA
from .evaluation import evaluate, held_out_scenes
from .model import trainable_model


def export_model(model: RobustSAM, config: dict, summary: dict) -> None:
    """Write the fp16 safetensors weights and the model card named in ``config["export"]``."""
    model.cpu()
    with torch.no_grad():
        model.robust.output_tokens.weight.copy_(model.mask_decoder.mask_tokens.weight)
    metrics = summary["metrics"]
    weights_path = REPO_ROOT / config["export"]["weights"]
    metadata = {
        "trained_by": "recipes/train_tiny_sam.py",
        "git_commit": summary["git_commit"],
        "iterations": str(summary["iterations"]),
        "train_scenes": str(summary["train_scenes"]),
        **{name: f"{value:.4f}" if isinstance(value, float) else json.dumps(value) if isinstance(value, dict) else str(value)
           for name, value in metrics.items()},
    }
    save_checkpoint(model, weights_path, extra_metadata=metadata, dtype=torch.float16)
    card_path = REPO_ROOT / config["export"]["model_card"]
    write_text_atomically(card_path, model_card(config, summary, weights_path))
    for path in (weights_path, card_path):
        path.chmod(0o644)  # the atomic writers' temporary files are private (0600); bundled files are not


def export_finished_run(output: str | Path, reevaluate: bool = False) -> None:
    """Export the weights and model card of a finished run in ``output`` (one trained with ``--no-export``).

    ``reevaluate``: first re-run the held-out evaluation of the final weights and rewrite
    ``metrics.json`` with it (e.g. after the evaluation gained a breakdown)."""
    output = Path(output)
    checkpoint = load_training_checkpoint(output)
    if checkpoint is None:
        raise CheckpointError(f"{output} has no checkpoint: train it first")
    config = validate_saved_config(checkpoint.state["config"], SCHEMA, source=f"the config saved in {output}")
    if checkpoint.iteration < config["train"]["total_iter"]:
        raise CheckpointError(f"{output} stopped at iteration {checkpoint.iteration} of "
                              f"{config['train']['total_iter']}; finish it with --resume first")
    if not (output / "metrics.json").is_file():
        raise CheckpointError(f"{output} has no metrics.json: its final evaluation did not run; resume it first")
    summary = json.loads((output / "metrics.json").read_text())
    if summary["iterations"] != checkpoint.iteration:
        raise CheckpointError(f"{output / 'metrics.json'} is for iteration {summary['iterations']}, the checkpoint "
                              f"for {checkpoint.iteration}")
    model = trainable_model(config["model_type"], overrides=config["model_overrides"])
    model.load_state_dict(checkpoint.weights)
    if reevaluate:
        data = config["data"]
        summary["metrics"] = evaluate(model, *held_out_scenes(data["test_seed"], data["test_scenes"]))
        write_text_atomically(output / "metrics.json", json.dumps(summary, indent=2))
    export_model(model.eval(), config, summary)


def reproduce_commands(config: dict) -> str:
    """The commands that re-run a run's schedule history (one per invocation)."""
    commands = []
    for entry in config.get("history") or [{"start_iteration": 0,
                                            "schedule_iterations": config["train"]["total_iter"],
                                            "threads": config["threads"]}]:
        command = "python recipes/train_tiny_sam.py"
        if entry["start_iteration"] > 0:
            command += " --output runs/tiny_sam --resume"
        else:
            command += f" --config {entry.get('config', DEFAULT_CONFIG)} --output runs/tiny_sam"
        command += f" --iterations {entry['schedule_iterations']} --threads {entry['threads']}"
        if entry.get("device", "cpu") != "cpu":
            command += f" --device {entry['device']}"
        commands.append(command)
    return "\n".join(commands)


def per_kind_table(metrics: dict) -> str:
    """The card's single-click IoU per shape kind (empty when the run's metrics have no breakdown)."""
    if "single_point_iou_per_kind" not in metrics:
        return ""
    rows = [f"| {kind} | {metrics['objects_per_kind'][kind]} | {iou:.4f} |"
            for kind, iou in metrics["single_point_iou_per_kind"].items()]
    return "\n".join(["", "Single click (as above) per shape kind:", "", "| shape | objects | IoU |", "|---|---|---|",
                      *rows, ""])


def model_card(config: dict, summary: dict, weights_path: Path) -> str:
    """The markdown model card of an exported run."""
    data, batch, metrics = config["data"], config["batch"], summary["metrics"]
    size_kib = weights_path.stat().st_size / 1024
    return f"""# sam_tiny: the tiny SAM base, trained from scratch

`{weights_path.name}` holds a full `RobustSAM` of type `tiny` ({size_kib:.0f} KiB, float16; loading casts to
float32): SAM parts (image encoder, prompt encoder, mask decoder) trained by `recipes/train_tiny_sam.py`; the
robust parts are fresh (untrained), with the Robust Output Tokens copied from SAM's mask tokens, as when a
SAM checkpoint is loaded. Load it with `robustprior.load.load_model("sam_tiny", decoder_path="sam")` (its RobustSAM path is refused: untrained).

## Data

The scene world of `robustprior.data.scenes` (default `SceneConfig`: 256 x 256, 2-6 textured objects on a photo
background, textures from the shared photos). Train: {data['train_scenes']} scenes
`generate_scene(derive_seed({data['train_seed']}, i))`, random flips. Held-out test: {data['test_scenes']} scenes
`generate_scene(derive_seed({data['test_seed']}, i))` ({metrics['objects']} objects), a different seed stream.

## Training

{summary['iterations']} iterations of {batch['images']} images x {batch['prompts_per_image']} prompts
(mix {batch['prompt_mix']}), AdamW lr {config['train']['lr']} (warmup {config['train']['warmup_iter']},
cosine), weight decay {config['train']['weight_decay']}, gradient clip {config['train']['gradient_clip']},
bf16 autocast {config['train']['bf16_autocast']}, decoder attention initialised with `W_k = W_q`
(`aligned_attention_init: {config['aligned_attention_init']}`); loss {config['loss']['focal']} x focal + {config['loss']['dice']} x dice
(+ IoU MSE) {"on the logits upsampled to 256 x 256 against the exact masks" if config['loss'].get('full_resolution')
             else "on the 128 x 128 logits against area-averaged masks"}, multimask min-loss for single points.
Architecture: `tiny`{f" with {config['model_overrides']}" if config.get('model_overrides') else ""}.
Wall time {summary['train_seconds'] / 60:.1f} min of training on {", ".join(sorted({entry.get("device", "cpu") for entry in config.get("history", [])}) or ["cpu"])}
(CPU threads: {config['threads']}; median step {summary['median_step_seconds']:.3f} s).
Git commit `{summary['git_commit']}`. Full config: `{(config.get("history") or [{}])[0].get("config", DEFAULT_CONFIG)}`.

Reproduce (one command per invocation of the run; a resume with a longer `--iterations` continues the
cosine schedule of that length from where it stands, i.e. a warm restart):

```
{reproduce_commands(config)}
```

## Held-out metrics (mean IoU over {metrics['objects']} objects)

| prompt | IoU |
|---|---|
| single click at `center_point`, multimask, highest predicted IoU | {metrics['single_point_iou']:.4f} |
| same click, oracle best of the 3 masks | {metrics['single_point_oracle_iou']:.4f} |
| same click, single output (token 0) | {metrics['token0_iou']:.4f} |
| tight box, single output | {metrics['box_iou']:.4f} |
{per_kind_table(metrics)}"""

