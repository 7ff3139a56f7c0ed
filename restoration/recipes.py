"""The two Table 8 recipes as commands, the same in a checkout and in an installed package.

    python -m restoration.recipes dehaze [OPTIONS]      # or: robustprior-dehaze [OPTIONS]
    python -m restoration.recipes deblur [OPTIONS]      # or: robustprior-deblur [OPTIONS]
    python recipes/dehaze.py [OPTIONS]                  # a checkout's entry points call the same functions

Every option is :func:`restoration.table8.run_recipe`'s (``--help``); the embedded default configs ship
inside the package (``restoration/options/{dehaze,deblur}_default.yaml``).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from restoration.table8 import run_recipe

DESCRIPTIONS: dict[str, str] = {
    "dehaze": """Table 8, dehazing: SAM-guided dehazing (channel expansion) with no prior / SAM prior / RobustSAM prior.

With no arguments: generates a small SOTS-like data set (robustprior.data.scenes), computes the priors of
the hazy images with the bundled tiny SAM and RobustSAM models, trains the rows on the CPU and writes
report.md, report.json and grid.png into outputs/dehaze. Real data and models::

    robustprior-dehaze --config restoration/options/dehaze_sots.yaml --data-root /data/RESIDE \\
        --sam-checkpoint sam_vit_h --robustsam-checkpoint robustsam_vit_h --output outputs/dehaze_sots
""",
    "deblur": """Table 8, deblurring: SAM-Deblur (NAFNet + Mask Average Pooling) with no prior / SAM prior / RobustSAM prior.

With no arguments: generates a small GoPro-like data set (robustprior.data.scenes), computes the priors of
the blurred images with the bundled tiny SAM and RobustSAM models, trains the rows on the CPU and writes
report.md, report.json and grid.png into outputs/deblur. Real data and models::

    robustprior-deblur --config restoration/options/deblur_gopro.yaml --data-root /data/GoPro \\
        --sam-checkpoint sam_vit_h --robustsam-checkpoint robustsam_vit_h --output outputs/deblur_gopro
""",
}


def dehaze_main(argv: Sequence[str] | None = None) -> int:
    """The dehazing recipe (``robustprior-dehaze``); returns the exit status."""
    return run_recipe("dehaze", DESCRIPTIONS["dehaze"], argv)


def deblur_main(argv: Sequence[str] | None = None) -> int:
    """The deblurring recipe (``robustprior-deblur``); returns the exit status."""
    return run_recipe("deblur", DESCRIPTIONS["deblur"], argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m restoration.recipes {dehaze,deblur} [OPTIONS]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in DESCRIPTIONS:
        print(f"usage: python -m restoration.recipes {{{','.join(DESCRIPTIONS)}}} [OPTIONS]  (--help after the task "
              "lists the options)", file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return {"dehaze": dehaze_main, "deblur": deblur_main}[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
