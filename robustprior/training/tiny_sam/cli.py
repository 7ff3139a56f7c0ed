"""Command line of ``recipes/train_tiny_sam.py`` (see the package docstring)."""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..errors import exit_on_setup_error
from . import __doc__ as PACKAGE_DOC
from .config import DEFAULT_CONFIG, DEFAULT_CONFIG_PATH, load_config
from .export import export_finished_run
from .loop import train


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=PACKAGE_DOC.split("\n\n")[0],
                                     prog="python recipes/train_tiny_sam.py")
    parser.add_argument("--config", help=f"recipe YAML (default {DEFAULT_CONFIG}; with --resume: the run's own)")
    parser.add_argument("--output", default="runs/tiny_sam")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in OUTPUT from its checkpoint")
    mode.add_argument("--overwrite", action="store_true", help="start the run in OUTPUT again (keeps its scene cache)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume and --config: continue with a config that differs from the run's "
                             "(recorded in OUTPUT/config_changes.yaml)")
    parser.add_argument("--iterations", type=int, help="override the schedule length (train.total_iter)")
    parser.add_argument("--stop-after", type=int, help="stop (with a checkpoint) at this iteration")
    parser.add_argument("--threads", type=int, help="override the config's CPU thread count")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the config's device")
    parser.add_argument("--workers", type=int, default=1, help="processes that generate the scenes")
    parser.add_argument("--fit-minutes", type=float,
                        help="fresh runs: set the schedule length to what fits in this many minutes of training")
    parser.add_argument("--no-export", action="store_true", help="do not write the weights and model card")
    parser.add_argument("--export-only", action="store_true",
                        help="only export the finished run in --output (trained with --no-export)")
    parser.add_argument("--reevaluate", action="store_true",
                        help="with --export-only: re-run the held-out evaluation first and rewrite metrics.json")
    return parser


@exit_on_setup_error
def main(argv: Sequence[str] | None = None) -> None:
    command = parser()
    arguments = command.parse_args(argv)
    if arguments.reevaluate and not arguments.export_only:
        command.error("--reevaluate goes with --export-only (training always evaluates its final weights)")
    if arguments.export_only:
        export_finished_run(arguments.output, reevaluate=arguments.reevaluate)
        return
    if arguments.allow_config_change and not (arguments.resume and arguments.config):
        command.error("--allow-config-change goes with --resume and --config")
    config_path = arguments.config or (None if arguments.resume else DEFAULT_CONFIG)
    config_file = arguments.config or (None if arguments.resume else DEFAULT_CONFIG_PATH)
    train(None if config_file is None else load_config(config_file), arguments.output, resume=arguments.resume,
          iterations=arguments.iterations, stop_after=arguments.stop_after, export=not arguments.no_export,
          threads=arguments.threads, device=arguments.device, workers=arguments.workers,
          fit_minutes=arguments.fit_minutes, config_path=None if arguments.resume else config_path,
          overwrite=arguments.overwrite, allow_config_change=arguments.allow_config_change)
