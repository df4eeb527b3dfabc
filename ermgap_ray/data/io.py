"""`resolve_data`, the single entry point from a `data` spec to validated records.

The manifest format itself (read_manifest / write_manifest) lives in `manifest.py`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

from ermgap_ray.data.manifest import MANIFEST, read_manifest
from ermgap_ray.data.schema import COLUMNS
from ermgap_ray.data.validate import DataValidationError, validate_records
from ermgap_ray.fs import atomic_dir, cache_root

MELD_PREFIX = "meld-st:"


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


def _synthetic_default(root: Path | None, bias: str, seed: int) -> Path:
    """The twin's folder for (bias, seed), generated once; concurrent callers race to one
    rename.

    The generator is imported here, not at module level, so that `python -m
    ermgap_ray.data.synthetic` does not find its own module already imported via the package.
    """
    from ermgap_ray.data.synthetic import make_corpus, twin_folder_name

    target = (root or cache_root()) / "data" / twin_folder_name(bias, seed)
    if not (target / MANIFEST).exists():
        with atomic_dir(target) as tmp:
            make_corpus(tmp, seed=seed, bias=bias)
        if not (target / MANIFEST).exists():
            raise DataValidationError(
                f"{target} exists without {MANIFEST}; delete it to regenerate"
            )
    return target


def resolve_data(
    spec: str | None,
    cache_root: Path | None = None,
    check_audio: bool = True,
    modality: str | None = None,
    max_seconds: float | None = None,
    twin_bias: str = "spurious",
    twin_seed: int = 0,
) -> tuple[pd.DataFrame, str]:
    """(validated records, fingerprint) for a `data` spec.

    spec: None → the synthetic twin with bias mechanism `twin_bias` and generator seed
    `twin_seed`, under `<cache_root>/data/synthetic-<version>-<bias>-seed<seed>/` (generated
    into a temp folder and renamed, so no reader sees half a corpus);
    a folder holding manifest.csv, or a manifest .csv path; or `meld-st:ROOT`.
    `modality` checks the transcripts an audio+text run needs, and `max_seconds` (the
    backbone's audio window) warns about clips it cuts; see `validate_records`.
    """
    checks = {"check_audio": check_audio, "modality": modality, "max_seconds": max_seconds}
    if spec is None:
        folder = _synthetic_default(cache_root, twin_bias, twin_seed)
        source = str(folder / MANIFEST)
        try:
            df = validate_records(read_manifest(source), source, **checks)
        except DataValidationError as err:
            raise DataValidationError(f"{err} (delete {folder} to regenerate it)") from err
        return df, data_fingerprint(df, folder, mtimes=False)
    if spec.startswith(MELD_PREFIX):
        from ermgap_ray.data.meld_st import load_meld_st

        root = Path(spec[len(MELD_PREFIX) :]).expanduser()
        if not root.is_dir():
            raise DataValidationError(f"data spec {spec!r}: {root} is not a directory")
        df = validate_records(load_meld_st(root), spec, **checks)
        return df, data_fingerprint(df, root)
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / MANIFEST
    if path.suffix != ".csv" or not path.is_file():
        raise DataValidationError(
            f"data spec {spec!r}: expected a folder with {MANIFEST}, a manifest .csv, "
            f"or {MELD_PREFIX}ROOT; {path} does not exist"
        )
    df = validate_records(read_manifest(path), str(path), **checks)
    return df, data_fingerprint(df, path.parent)
