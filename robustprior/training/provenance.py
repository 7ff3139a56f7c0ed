"""Where a result came from: the git commit of the checkout the package runs from (written into model
cards and metrics), only when the package really lies in a git checkout."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder holding the robustprior package
REPO_ROOT = PACKAGE_PARENT  # a checkout's root when run from one (the exporter writes the bundled weights there)


def git_commit() -> str:
    """``$ROBUSTPRIOR_GIT_COMMIT`` when set (a copy of the tree shipped to another machine, whose
    ``.git``, if any, need not be current); else ``git rev-parse HEAD`` when the package's parent folder
    is the top of a git checkout (not when the package is installed, e.g. in a virtual environment
    inside some repository); else ``"unknown"``. Never raises."""
    if os.environ.get("ROBUSTPRIOR_GIT_COMMIT"):
        return os.environ["ROBUSTPRIOR_GIT_COMMIT"]
    if not (PACKAGE_PARENT / ".git").exists():  # a folder in a checkout, a file in a git worktree
        return "unknown"
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=PACKAGE_PARENT, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        if Path(top).resolve() != PACKAGE_PARENT:
            return "unknown"
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE_PARENT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
