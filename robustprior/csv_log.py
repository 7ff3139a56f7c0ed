"""CSV run logs shared by the RobustSAM and restoration trainers (first column: iteration)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping

from .atomic import write_text_atomically


def append_csv(path: Path, row: Mapping[str, Any]) -> None:
    """Append ``row`` to a CSV file, writing the header first when the file is new; a row whose
    columns differ from the file's header is an error (it would be misread)."""
    new = not path.exists()
    if not new:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle), [])
        if header and header != list(row):
            raise ValueError(f"{path} has columns {header}; this row has {list(row)}")
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def truncate_csv(path: Path, iteration: int) -> None:
    """Drop the rows of a log written after ``iteration`` (a resumed run redoes them), atomically."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows[:1] + [row for row in rows[1:] if int(row[0]) <= iteration])
    write_text_atomically(path, buffer.getvalue())
