"""RobustSAM-tiny on one GPU in one command: scenes, training for a wall-clock budget, held-out evaluation.

On the lent GPU machine: the device tool's ``run`` runs this in the repository root of the session's
checkout, ``$OUT`` is the folder whose files (at most 8) come back, ``timeout_s`` 600 and
``carry: [".whl"]``, the wheels of the packages that machine lacks, fetched here beforehand with
``bash benchmarks/gpu_wheels.sh`` (docs/results/robustsam_tiny_gpu/README.md has the budget)::

    set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; ROBUSTPRIOR_GIT_COMMIT=COMMIT PYTHONUNBUFFERED=1 TQDM_MININTERVAL=5 python3 recipes/train_robustsam_tiny_gpu.py --output $OUT/robustsam_tiny_gpu --fit-minutes 7 2>&1 | tee $OUT/log.txt

(``COMMIT``: the hash of the commit sent; the tree travels without ``.git``.)

On a CPU, the same steps at toy size (the CI check, tests/test_train_robustsam_tiny_gpu.py)::

    python recipes/train_robustsam_tiny_gpu.py --small --output /tmp/robustsam_tiny_gpu_small

The run lives in :mod:`robustprior.training.robustsam.gpu_run` (its docstring describes the steps and
the output folder); this script is its command line.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from robustprior.training.robustsam.gpu_run import main  # noqa: E402

if __name__ == "__main__":
    main()
