#!/usr/bin/env bash
# CI: the wheel works outside the checkout. Builds it (pip wheel --no-deps), installs it without
# dependencies into a folder outside the checkout (pip install --target: the dependencies are the ones
# already installed beside this python), then, from a temporary working folder with only that folder on
# PYTHONPATH: checks that the packages import from the wheel, segments a generated scene with the bundled
# model (robustprior segment) and runs a seconds-long dehazing recipe from the packaged default config.
#   .ci/wheel_smoke.sh            (WHEEL_SMOKE_KEEP=1 keeps the work folder and prints it)
set -euo pipefail
checkout="$(cd "$(dirname "$0")/.." && pwd)"
python="$(command -v python)"
work="$(mktemp -d)"
if [[ "${WHEEL_SMOKE_KEEP:-0}" == 1 ]]; then echo "work folder: $work"; else trap 'rm -rf "$work"' EXIT; fi

# Build from a copy of the source files (tracked and untracked-but-not-ignored): an in-tree build would leave
# build/ and *.egg-info in the checkout, and a stale build/lib could carry deleted modules into the wheel.
"$python" - "$checkout" "$work/src" <<'PY'
import shutil, subprocess, sys
from pathlib import Path
checkout, source = Path(sys.argv[1]), Path(sys.argv[2])
listed = subprocess.run(["git", "-C", str(checkout), "ls-files", "-co", "--exclude-standard", "-z"],
                        capture_output=True, check=True).stdout.decode().split("\0")
for name in filter(None, listed):
    if (checkout / name).is_file():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(checkout / name, source / name)
PY
"$python" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$work/dist" "$work/src"
"$python" -m pip install -q --no-deps --no-compile --target "$work/site" "$work"/dist/robustprior-*.whl
cd "$work"
export PYTHONPATH="$work/site" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

"$python" - "$work/site" <<'PY'
import sys
from pathlib import Path
import restoration, robustprior
from restoration.table8 import CONFIG_DIR
site = Path(sys.argv[1]).resolve()
for module in (robustprior, restoration):
    assert Path(module.__file__).resolve().is_relative_to(site), f"{module.__name__} imported from {module.__file__}"
for name in ("dehaze_default.yaml", "deblur_default.yaml", "dehaze_sots.yaml", "deblur_gopro.yaml", "sam_deblur_gopro.yml"):
    assert (CONFIG_DIR / name).is_file(), f"{name} is not in the wheel"
from robustprior.training.provenance import git_commit
assert git_commit() == "unknown", git_commit()  # not a checkout: no git, no failure
import cv2
from robustprior.data.scenes import SceneConfig, generate_scene, render_frame
image, _ = render_frame(generate_scene(7, SceneConfig(image_size=(96, 96))))
cv2.imwrite("scene.png", image[..., ::-1])
PY

echo "[wheel smoke] built and installed in ${SECONDS} s"
"$work/site/bin/robustprior" segment scene.png --points-per-side 8 --pred-iou-thresh 0.35 --stability-thresh 0.5 \
    --output segments --no-progress
test -f segments/scene_overlay.png && test "$(wc -l < segments/scene/metadata.csv)" -gt 1  # a header and masks
echo "[wheel smoke] segmented by ${SECONDS} s"

"$python" - <<'PY'
import yaml
from restoration.table8 import load_recipe_config
config = load_recipe_config("dehaze", None)  # the packaged embedded default, shrunk to seconds
config["threads"] = 1
config["recipe"].update(generate={"image_size": [48, 48], "train_images": 4, "test_images": 2, "seed": 5},
                        grid_images=2, seeds=[0, 1], parallel=1, rows=["none", "sam", "robustsam"])
config["network_g"].update(width=4, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
config["datasets"]["train"].update(gt_size=32, batch_size_per_gpu=2)
config["prior"].update(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0)
open("smoke.yaml", "w").write(yaml.safe_dump(config))
PY
"$python" -m restoration.recipes dehaze --config smoke.yaml --output recipe --iterations 2 --no-progress
test -f recipe/report.md && test -f recipe/report.json
"$work/site/bin/robustprior-deblur" --help > /dev/null
echo "[wheel smoke] passed in ${SECONDS} s ($(ls "$work"/dist))"
