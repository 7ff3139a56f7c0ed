"""Where a result came from: the git commit of this checkout (written into model cards and metrics)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    """``git rev-parse HEAD`` of the repository; in a copy without ``.git`` (a tree shipped to a GPU
    machine) the commit it was copied from, ``$ROBUSTPRIOR_GIT_COMMIT``; else ``"unknown"``."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("ROBUSTPRIOR_GIT_COMMIT", "unknown")
