"""Ablation of the RobustSAM-tiny training levers: each lever alone and all combined, vs SAM-tiny.

    python recipes/robustsam_tiny_ablation.py --output runs/ablation [--parallel 2] [--threads 1]
        [--variants baseline,all] [--iterations N] [--report docs/results/ablation_tiny]

The ablation lives in :mod:`robustprior.training.robustsam.ablation` (its docstring describes the
variants, the evaluation and the report); this script is its command line.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustprior.training.robustsam.ablation import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
