"""The Table 8 report's peak-memory clause: measured with getrusage, checked against a child process
that holds a known amount of memory."""
from __future__ import annotations

import subprocess
import sys

from restoration.report import _memory_words


def test_peak_memory_of_children_sees_a_child_holding_half_a_gb_more() -> None:
    """In a fresh process (the suite's earlier children do not count there), a child that holds 0.5 GB more
    than the largest child so far raises the figure by 0.5 to 0.6 GB."""
    code = ("import resource, subprocess, sys; from robustprior.io.peak_memory import peak_rss_gb; "
            "before = peak_rss_gb(resource.RUSAGE_CHILDREN); "
            "held = int((before + 0.5) * 1e9) // 8; "
            "subprocess.run([sys.executable, '-c', f'import numpy; a = numpy.ones({held}); print(a.sum())'], "
            "check=True, capture_output=True); "
            "print(before, peak_rss_gb(resource.RUSAGE_CHILDREN), peak_rss_gb(resource.RUSAGE_SELF))")
    measured = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    before, after, own = (float(value) for value in measured.stdout.split()[-3:])
    assert before + 0.5 <= after < before + 0.6
    assert 0.01 < own < 64


def test_memory_clause_names_both_processes() -> None:
    words = _memory_words({"recipe": 4.41, "largest_job": 1.06})
    assert words == ("; peak memory 4.4 GB in the recipe process (data, priors, evaluation), "
                     "1.1 GB in its largest child process (training jobs, data workers)")
    assert _memory_words(None) == ""
