"""Train the tiny SAM base (the SAM parts of ``build_robust_sam("tiny")``) from scratch on the scene world.

    python recipes/train_tiny_sam.py --config robustprior/configs/tiny_sam.yaml --output runs/tiny_sam
        [--resume [--config C --allow-config-change] | --overwrite] [--iterations N] [--stop-after N]
        [--threads T] [--device auto|cpu|cuda] [--workers W] [--fit-minutes M] [--no-export]
        [--export-only [--reevaluate]]

The recipe lives in :mod:`robustprior.training.tiny_sam` (its docstring describes the data, the loss
and the run folder); this script is its command line.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustprior.training.tiny_sam.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
