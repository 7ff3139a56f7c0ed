"""Where a result came from: the git commit of this checkout (written into model cards and metrics)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    """``$ROBUSTPRIOR_GIT_COMMIT`` when set (a copy of the tree shipped to another machine, whose
    ``.git``, if any, need not be current), else ``git rev-parse HEAD`` of the repository, else
    ``"unknown"``."""
    if os.environ.get("ROBUSTPRIOR_GIT_COMMIT"):
        return os.environ["ROBUSTPRIOR_GIT_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
