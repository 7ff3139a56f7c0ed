"""The wheel outside the checkout (.ci/wheel_smoke.sh): built, installed without dependencies into a
temporary folder, and run from another working folder: imports come from the wheel, the packaged configs
are there, ``robustprior segment`` segments a generated scene and a dehazing recipe runs."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 90 s on 2 busy cores: a wheel build, a segmentation and a 5-job recipe
@pytest.mark.skipif(shutil.which("bash") is None, reason="the smoke script is a bash script")
def test_the_wheel_runs_outside_the_checkout() -> None:
    environment = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(Path.home())}
    completed = subprocess.run(["bash", str(REPO_ROOT / ".ci" / "wheel_smoke.sh")], capture_output=True, text=True,
                               timeout=600, env=environment)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    assert "[wheel smoke] passed" in completed.stdout
