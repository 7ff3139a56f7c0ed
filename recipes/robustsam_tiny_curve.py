"""RobustSAM-tiny learning curves: a learning-rate sweep, its figure and table, and the ceiling.

    python recipes/robustsam_tiny_curve.py --output runs/curve_sweep --lrs 3e-4 1e-3 3e-3 --iterations 120
    python recipes/robustsam_tiny_curve.py --output runs/ceiling --ceiling --ceiling-images 24

The sweep lives in :mod:`robustprior.training.robustsam.sweep` (its docstring describes the runs and what they
write); this script is its command line.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from robustprior.training.robustsam.sweep import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
