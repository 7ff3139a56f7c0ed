"""Table 8, deblurring: SAM-Deblur (NAFNet + Mask Average Pooling) with no prior / SAM prior / RobustSAM prior.

With no arguments: generates a small GoPro-like data set (robustprior.data.scenes), computes the priors of
the blurred images with the bundled tiny SAM and RobustSAM models, trains the three rows on the CPU
and writes report.md, report.json and grid.png into outputs/deblur. Real data and models::

    python recipes/deblur.py --config restoration/options/deblur_gopro.yaml --data-root /data/GoPro \\
        --sam-checkpoint sam_vit_h --robustsam-checkpoint robustsam_vit_h --output outputs/deblur_gopro
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from restoration.table8 import run_recipe  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_recipe("deblur", __doc__))
