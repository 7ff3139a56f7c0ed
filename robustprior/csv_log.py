"""CSV run logs: moved to :mod:`robustprior.training.csv_log` (this name stays until every trainer uses the engine)."""
from __future__ import annotations

from .training.csv_log import CsvLog, append_csv, truncate_csv

__all__ = ["CsvLog", "append_csv", "truncate_csv"]
