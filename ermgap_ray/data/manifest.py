"""`manifest.csv`, the corpus format: its one reader and its one writer.

A manifest is a UTF-8 CSV with the schema's columns (a leading byte-order mark, as Excel saves
one, is accepted); its `audio` paths are relative to the manifest's folder on disk and absolute
in memory, so a corpus folder can be moved or copied.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd

from ermgap_ray.data.schema import COLUMNS
from ermgap_ray.errors import DataValidationError
from ermgap_ray.fs import atomic_write

MANIFEST = "manifest.csv"


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest CSV as strings, resolving `audio` against the manifest's folder.

    The csv module (not pandas) reads it so that a row with the wrong number of fields raises
    `DataValidationError` naming its line.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise DataValidationError(f"{path}: empty file, expected a header row")
            header = [h.strip() for h in header]
            rows = []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataValidationError(
                        f"{path} line {reader.line_num}: {len(row)} fields, header has "
                        f"{len(header)}"
                    )
                rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataValidationError(f"{path}: cannot read manifest ({err})") from err
    df = pd.DataFrame(rows, columns=header, dtype=str)
    if "audio" in df.columns:
        folder = path.parent.absolute()
        df["audio"] = [
            a if not a or os.path.isabs(a) else os.path.normpath(folder / a) for a in df["audio"]
        ]
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> Path:
    """Write atomically (temp file + os.replace), audio paths relative to the manifest's folder."""
    path = Path(path)
    folder = path.parent.absolute()
    folder.mkdir(parents=True, exist_ok=True)
    cols = list(COLUMNS) + [c for c in df.columns if c not in COLUMNS]
    out = df[cols].copy()
    out["audio"] = [Path(os.path.relpath(a, folder)).as_posix() for a in out["audio"]]
    with atomic_write(path, newline="") as fh:
        out.to_csv(fh, index=False)
    return path
