"""Table 8, dehazing: SAM-guided dehazing (channel expansion) with no prior / SAM prior / RobustSAM prior.

With no arguments: generates a small SOTS-like data set (robustprior.data.scenes), computes the priors of
the hazy images with the bundled tiny SAM and RobustSAM models, trains the three rows on the CPU and
writes report.md, report.json and grid.png into outputs/dehaze. Real data and models::

    python recipes/dehaze.py --config restoration/options/dehaze_sots.yaml --data-root /data/RESIDE \\
        --sam-checkpoint sam_vit_h --robustsam-checkpoint robustsam_vit_h --output outputs/dehaze_sots
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restoration.table8 import run_recipe  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_recipe("dehaze", __doc__))
