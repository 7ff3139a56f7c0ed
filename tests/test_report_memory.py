"""The Table 8 report's peak-memory clause: measured with getrusage, checked against a child process
that holds a known amount of memory."""
from __future__ import annotations

import resource
import subprocess
import sys

from restoration.report import _memory_words
from restoration.table8 import _peak_rss_gb


def test_peak_memory_of_children_sees_a_child_holding_300_mb() -> None:
    before = _peak_rss_gb(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", "import numpy; a = numpy.ones(300 * 2**20 // 8); print(a.sum())"],
                   check=True, capture_output=True)
    after = _peak_rss_gb(resource.RUSAGE_CHILDREN)
    assert after >= 0.3 and after >= before
    assert 0.01 < _peak_rss_gb(resource.RUSAGE_SELF) < 64


def test_memory_clause_names_both_processes() -> None:
    words = _memory_words({"recipe": 4.41, "largest_job": 1.06})
    assert words == ("; peak memory 4.4 GB in the recipe process (data, priors, evaluation), "
                     "1.1 GB in its largest child process (training jobs, data workers)")
    assert _memory_words(None) == ""
