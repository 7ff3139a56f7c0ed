"""RobustSAM-tiny learning curves: short runs at several learning rates, one figure, one table.

Each run trains ``robustprior/configs/robustsam_tiny_curve.yaml`` (or ``--config``) with one learning rate,
measuring the held-out robust-minus-SAM point IoU every ``curve.every`` iterations; all runs share one
feature cache (the frozen encoder's outputs are encoded once). Runs are resumable run folders
(``robustprior train --resume``), so an interrupted sweep continues where it stopped.

    python recipes/robustsam_tiny_curve.py --output runs/curve_sweep --lrs 3e-4 1e-3 3e-3 --iterations 120
    python recipes/robustsam_tiny_curve.py --output runs/curve_sweep --summary-only   # redraw from the runs
    python recipes/robustsam_tiny_curve.py --output runs/ceiling --ceiling --ceiling-images 24

``--ceiling`` measures what restoring each of SAM-tiny's per-prompt decoder inputs could give at most on
held-out degraded scenes (:meth:`robustprior.training.robustsam.curve.LearningCurve.ceiling`) into
``OUTPUT/ceiling.md`` / ``ceiling.json``.

Writes ``OUTPUT/lr_<lr>/`` (each run, with its curve.csv / curve.png), ``OUTPUT/curves.png`` and
``OUTPUT/summary.md``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from robustprior.training.robustsam.sweep import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
