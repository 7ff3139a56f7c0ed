"""Bundle a finished RobustSAM-tiny run: float16 weights plus a model card.

    python recipes/export_robustsam_tiny.py --run runs/robustsam_tiny [--eval docs/results/robustness_tiny]

The export lives in :mod:`robustprior.training.robustsam.export` (its docstring gives the whole
sequence of commands); this script is its command line.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustprior.training.robustsam.export import main  # noqa: E402

if __name__ == "__main__":
    main()
