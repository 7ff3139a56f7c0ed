"""CSV run logs whose first column is the iteration.

A resumed run redoes the iterations after its checkpoint, so the log is cut back to the checkpoint's
iteration first (:meth:`CsvLog.truncate`; to 0, the header alone, when the run was stopped before
its first checkpoint): no row is ever written twice.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from robustprior.io.atomic import write_text_atomically


class CsvLog:
    """Rows appended to ``path``; ``columns`` fixes the header (default: the existing file's header,
    else the first row's keys). A row with a key outside the header is an error."""

    def __init__(self, path: str | Path, columns: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        self.columns = list(columns) if columns is not None else None

    def _header(self) -> list[str] | None:
        if not self.path.is_file():
            return None
        with open(self.path, newline="") as handle:
            return next(csv.reader(handle), None)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Append ``rows`` (the header first when the file is new or empty)."""
        rows = list(rows)
        if not rows:
            return
        header = self._header()
        columns = self.columns or header or list(rows[0])
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            if header is None:
                writer.writeheader()
            writer.writerows(rows)

    def truncate(self, iteration: int) -> None:
        """Drop the rows after ``iteration``, atomically (a missing file stays missing)."""
        if not self.path.is_file():
            return
        with open(self.path, newline="") as handle:
            rows = list(csv.reader(handle))
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(
            rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= iteration])
        write_text_atomically(self.path, buffer.getvalue())

    def rows(self) -> list[dict[str, str]]:
        """The logged rows as dicts of strings (empty when there is no file)."""
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))


def append_csv(path: Path, row: Mapping[str, Any]) -> None:
    """Append one ``row`` to a CSV file, writing the header first when the file is new."""
    CsvLog(path).append([row])


def truncate_csv(path: Path, iteration: int) -> None:
    """Drop the rows of a log written after ``iteration`` (a resumed run redoes them), atomically."""
    CsvLog(path).truncate(iteration)
