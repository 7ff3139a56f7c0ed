"""Measure the bundled tiny models' automatic-mask settings on generated scenes and store them.

    python recipes/amg_settings.py                 # measure and print (SAM path and RobustSAM path)
    python recipes/amg_settings.py --write         # ... and store them in the bundled weights and cards

The command lives in :mod:`robustprior.evaluation.store_amg_settings`; this script is its entry point.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustprior.evaluation.store_amg_settings import main  # noqa: E402

if __name__ == "__main__":
    main()
