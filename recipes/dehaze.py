"""Table 8, dehazing: the checkout's entry point of :mod:`restoration.recipes` (installed: ``robustprior-dehaze``
or ``python -m restoration.recipes dehaze``); ``--help`` lists the options."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from restoration.recipes import dehaze_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(dehaze_main())
