"""robustprior.io.allocator: freed tensors stay in the process, so reallocating them costs no page faults."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import resource, sys, warnings
    import numpy as np, torch
    from robustprior.io.allocator import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "tuned" else False
    warnings.simplefilter("ignore")
    from robustprior.priors import SAMPrior
    prior = SAMPrior.from_pretrained("tiny", points_per_side=8, pred_iou_thresh=0.95, stability_score_thresh=0.95)
    image = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    prior(image)  # warm-up: the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    prior(image)  # 64 prompts: the two-way transformer's 32 MiB maps, allocated and freed again
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str) -> tuple[str, int]:
    env = {**os.environ, "ROBUSTPRIOR_DEFAULT_MALLOC": "", "OMP_NUM_THREADS": "1"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    output = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True,
                            env=env).stdout.split()
    return output[0], int(output[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tuned_allocator_lets_a_prior_reuse_its_memory_without_page_faults() -> None:
    applied, tuned = _faults("tuned")
    _, default = _faults("default")
    assert applied == "True"
    # glibc's defaults map the large blocks afresh and fault their pages in on every pass; the tuned heap
    # reuses its pages
    assert tuned * 10 < default, (default, tuned)


def test_opt_out_leaves_the_defaults() -> None:
    script = ("import robustprior.io.allocator as a; print(a.keep_freed_memory())")
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                            env={**os.environ, "ROBUSTPRIOR_DEFAULT_MALLOC": "1"}).stdout
    assert output.strip() == "False"
