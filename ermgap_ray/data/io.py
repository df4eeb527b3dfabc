"""Manifest files and `resolve_data`, the single entry point from a `data` spec to records.

A manifest is a UTF-8 CSV with the schema's columns; its `audio` paths are relative to the
manifest's folder on disk and absolute in memory, so a corpus folder can be moved or copied.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from ermgap_ray.data.manifest import MANIFEST, read_manifest
from ermgap_ray.data.schema import COLUMNS
from ermgap_ray.data.validate import DataValidationError, validate_records

MELD_PREFIX = "meld-st:"


def default_cache_root() -> Path:
    """`$ERMGAP_CACHE`, else `~/.cache/ermgap_ray`."""
    env = os.environ.get("ERMGAP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "ermgap_ray"


def data_fingerprint(df: pd.DataFrame, root: str | Path, mtimes: bool = True) -> str:
    """sha256 over the records plus each clip's size (and mtime_ns when `mtimes`).

    Audio paths enter relative to `root`, so a moved corpus keeps its fingerprint; sizes and
    mtimes stand in for content hashes, which would read gigabytes of MELD-ST. The generated
    synthetic twin passes `mtimes=False`: its bytes are a function of its version and seed, so
    every node of a cluster agrees on it.
    """
    h = hashlib.sha256()
    root = Path(root).absolute()
    for row in df[list(COLUMNS)].itertuples(index=False):
        st = os.stat(row.audio)
        rel = Path(os.path.relpath(row.audio, root)).as_posix()
        stamp = f"{st.st_size}:{st.st_mtime_ns if mtimes else 0}"
        fields = [*row[: COLUMNS.index("audio")], rel, *row[COLUMNS.index("audio") + 1 :], stamp]
        h.update(("\x1f".join(fields) + "\x1e").encode())
    return h.hexdigest()


def _synthetic_default(cache_root: Path | None) -> Path:
    """The default twin's folder, generated once; concurrent callers race to one rename."""
    from ermgap_ray.data.synthetic import SYNTHETIC_VERSION, make_corpus

    target = (cache_root or default_cache_root()) / "data" / f"synthetic-{SYNTHETIC_VERSION}-seed0"
    if (target / MANIFEST).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        make_corpus(tmp, seed=0)
        os.rename(tmp, target)
    except OSError:
        if not (target / MANIFEST).exists():
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_data(
    spec: str | None, cache_root: Path | None = None, check_audio: bool = True
) -> tuple[pd.DataFrame, str]:
    """(validated records, fingerprint) for a `data` spec.

    spec: None → the default synthetic twin under `<cache_root>/data/synthetic-<version>-seed0/`
    (generated into a temp folder and renamed, so no reader sees half a corpus);
    a folder holding manifest.csv, or a manifest .csv path; or `meld-st:ROOT`.
    """
    if spec is None:
        folder = _synthetic_default(cache_root)
        source = str(folder / MANIFEST)
        try:
            df = validate_records(read_manifest(source), source, check_audio=check_audio)
        except DataValidationError as err:
            raise DataValidationError(f"{err} (delete {folder} to regenerate it)") from err
        return df, data_fingerprint(df, folder, mtimes=False)
    if spec.startswith(MELD_PREFIX):
        from ermgap_ray.data.meld_st import load_meld_st

        root = Path(spec[len(MELD_PREFIX) :]).expanduser()
        if not root.is_dir():
            raise DataValidationError(f"data spec {spec!r}: {root} is not a directory")
        df = validate_records(load_meld_st(root), spec, check_audio=check_audio)
        return df, data_fingerprint(df, root)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / MANIFEST
    if path.suffix != ".csv" or not path.is_file():
        raise DataValidationError(
            f"data spec {spec!r}: expected a folder with {MANIFEST}, a manifest .csv, "
            f"or {MELD_PREFIX}ROOT; {path} does not exist"
        )
    df = validate_records(read_manifest(path), str(path), check_audio=check_audio)
    return df, data_fingerprint(df, path.parent)
