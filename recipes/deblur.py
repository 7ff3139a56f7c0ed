"""Table 8, deblurring: the checkout's entry point of :mod:`restoration.recipes` (installed: ``robustprior-deblur``
or ``python -m restoration.recipes deblur``); ``--help`` lists the options."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from restoration.recipes import deblur_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(deblur_main())
