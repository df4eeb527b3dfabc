"""Check utterance records before any trial starts, so a bad corpus fails in seconds, not hours.

Every problem raises `DataValidationError` with ONE line naming the source file and the row
(`manifest.csv row 17 (line 18, utt_id=ja_0042): unknown emotion 'happy'; ...`). Row numbers count
data rows from 1; for a CSV the line number adds the header line.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from ermgap_ray.data.schema import (
    COLUMNS,
    EMOTIONS,
    GENDERS,
    LANGUAGES,
    MODALITIES,
    SAMPLE_RATE,
    SPLITS,
)
from ermgap_ray.errors import DataValidationError
from ermgap_ray.fs import atomic_path

log = logging.getLogger(__name__)

OPTIONAL_COLUMNS: tuple[str, ...] = ("text",)
_NAN_TEXT = ("nan", "<na>")
_AUDIO_WORKERS = 8


class SpeakerOverlapWarning(UserWarning):
    """Dev/test speakers also occur in train (allowed: MELD splits by dialogue, not speaker)."""


class LongClipWarning(UserWarning):
    """Clips are longer than the backbone's audio window; the extractor cuts them to it."""


class EmptyTextWarning(UserWarning):
    """Some transcripts of an audio+text run are empty; those prompts carry the audio only."""


def _where(source: str, pos: int, utt_id: object) -> str:
    line = f"line {pos + 2}, " if str(source).endswith(".csv") else ""
    return f"{source} row {pos + 1} ({line}utt_id={utt_id})"


def _riff_truncation(path: str, size: int) -> str | None:
    """Why a RIFF/WAVE file is shorter than its `data` chunk claims, or None.

    libsndfile quietly shrinks the frame count of a truncated wav, so `soundfile.info` succeeds;
    the header's declared data size against the bytes on disk catches it.
    """
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while True:
            fh.seek(pos)
            chunk = fh.read(8)
            if len(chunk) < 8:
                return "no 'data' chunk"
            cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                if csize in (0, 0xFFFFFFFF):
                    return None
                have = size - pos - 8
                if have < csize:
                    return f"truncated: data chunk declares {csize} bytes, file holds {have}"
                return None
            pos += 8 + csize + (csize & 1)


def audio_problem(path: str) -> str | None:
    """Why `path` is not a usable 16 kHz mono clip, or None if it is."""
    return _probe(path)[0]


def _probe(path: str) -> tuple[str | None, int]:
    """(why `path` is unusable or None, its frame count).

    Cheap enough for thousands of files: a stat, the header via `soundfile.info`, the RIFF data
    size for wav, and one frame read at the end (which fails on a truncated FLAC).
    """
    try:
        size = os.path.getsize(path)
    except OSError:
        return f"audio file not found: {path}", 0
    if size == 0:
        return f"audio file is empty (0 bytes): {path}", 0
    try:
        info = sf.info(path)
        truncated = _riff_truncation(path, size) if info.format == "WAV" else None
        if truncated is None and info.frames > 0:
            with sf.SoundFile(path) as fh:
                fh.seek(info.frames - 1)
                if fh.read(1).shape[0] != 1:
                    truncated = "truncated: last frame unreadable"
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        return f"unreadable or not audio ({str(err).splitlines()[0]}): {path}", 0
    if truncated:
        return f"{truncated}: {path}", info.frames
    if info.frames == 0:
        return f"audio has no frames: {path}", 0
    if info.samplerate != SAMPLE_RATE or info.channels != 1:
        return (
            f"audio is {info.samplerate} Hz with {info.channels} channel(s), need {SAMPLE_RATE} Hz "
            f"mono: {path} (convert with `ffmpeg -i IN -ac 1 -ar {SAMPLE_RATE} OUT.wav`, or "
            "validate with resample=True)"
        ), round(info.frames * SAMPLE_RATE / info.samplerate)
    return None, info.frames


def _resampled_copy(path: str, resample_dir: Path | None) -> str:
    """Write a 16 kHz mono PCM16 copy (channel mean, polyphase resampling) and return its path."""
    from math import gcd

    from scipy.signal import resample_poly

    src = Path(path)
    out_dir = resample_dir if resample_dir is not None else src.parent / ".ermgap_16k"
    out = out_dir / f"{src.stem}.wav"
    if out.exists() and audio_problem(str(out)) is None:
        return str(out)
    x, sr = sf.read(path, dtype="float64", always_2d=True)
    x = x.mean(axis=1)
    if sr != SAMPLE_RATE:
        g = gcd(sr, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, sr // g)
    with atomic_path(out) as tmp:
        sf.write(tmp, np.clip(x, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return str(out)


def _check_audio(
    df: pd.DataFrame, source: str, resample: bool, resample_dir: Path | None
) -> tuple[pd.DataFrame, np.ndarray]:
    """The records (pointing at resampled copies where made) and each row's 16 kHz frames."""
    paths = df["audio"].tolist()
    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(max_workers=min(_AUDIO_WORKERS, max(1, len(unique)))) as pool:
        probes = dict(zip(unique, pool.map(_probe, unique), strict=True))
    fixed: dict[str, str] = {}
    bad: list[tuple[int, str]] = []
    for pos, path in enumerate(paths):
        why = probes[path][0]
        if why is None:
            continue
        if resample and why.startswith("audio is ") and path not in fixed:
            fixed[path] = _resampled_copy(path, resample_dir)
        if path not in fixed:
            bad.append((pos, why))
    if bad:
        pos, why = bad[0]
        more = f" (and {len(bad) - 1} more audio problems)" if len(bad) > 1 else ""
        raise DataValidationError(f"{_where(source, pos, df['utt_id'].iat[pos])}: {why}{more}")
    if fixed:
        log.info("%s: resampled %d clips to %d Hz mono", source, len(fixed), SAMPLE_RATE)
        df = df.assign(audio=[fixed.get(p, p) for p in paths])
    return df, np.array([probes[p][1] for p in paths], dtype=np.int64)


def _warn_long_clips(df: pd.DataFrame, frames: np.ndarray, source: str, window: float) -> int:
    """Warn once, with a count and the longest clip, when clips exceed the audio window.

    The feature extractor pads or cuts every clip to its window (`n_samples`: 4 s for the tiny
    default, 30 s for Qwen2-Audio), so the rest of a longer clip never reaches the model.
    """
    long = np.flatnonzero(frames > round(window * SAMPLE_RATE))
    if long.size:
        pos = int(long[np.argmax(frames[long])])
        warnings.warn(
            f"{source}: {long.size} of {len(df)} clips are longer than the backbone's "
            f"{window:g} s audio window and are cut to it; the longest is "
            f"{frames[pos] / SAMPLE_RATE:.1f} s ({_where(source, pos, df['utt_id'].iat[pos])})",
            LongClipWarning,
            stacklevel=3,
        )
    return int(long.size)


def _blank_text(text: pd.Series) -> np.ndarray:
    """True where a transcript is missing: NaN, empty, or the literal text 'NaN'/'nan'/'<NA>'.

    csv and pandas read a written-out float NaN back as the string "nan", which would otherwise
    reach the prompt as a transcript.
    """
    isna = text.isna().to_numpy()
    stripped = text.astype(str).str.strip()
    return isna | (stripped == "").to_numpy() | stripped.str.lower().isin(_NAN_TEXT).to_numpy()


def check_text_for_modality(df: pd.DataFrame, source: str, modality: str) -> None:
    """Refuse an audio+text run whose transcripts are all empty; warn when some are.

    An empty transcript leaves that prompt with the audio only; if every one is empty the
    multimodal run silently equals an audio run.
    """
    if modality not in MODALITIES:
        raise DataValidationError(
            f"{source}: modality must be one of {MODALITIES}, got {modality!r}"
        )
    if modality != "audio+text" or df.empty:
        return
    blank = _blank_text(df["text"]) if "text" in df.columns else np.ones(len(df), dtype=bool)
    if blank.all():
        raise DataValidationError(
            f"{source}: modality 'audio+text' needs transcripts, but all {len(df)} texts are "
            "empty or NaN; fill the 'text' column or use modality 'audio'"
        )
    if blank.any():
        warnings.warn(
            f"{source}: {int(blank.sum())} of {len(df)} transcripts are empty or NaN; those "
            "prompts carry the audio only",
            EmptyTextWarning,
            stacklevel=2,
        )


def _normalise(df: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"{source}: missing column(s) {', '.join(missing)}; need {', '.join(COLUMNS)}"
        )
    df = df.reset_index(drop=True).copy()
    for col in COLUMNS:
        values = df[col]
        isna = values.isna().to_numpy()
        text = values.astype(str).str.strip().where(~isna, "")
        if col == "text":
            text = text.where(~_blank_text(values), "")
        if col not in OPTIONAL_COLUMNS:
            empty = np.flatnonzero((text == "").to_numpy())
            if empty.size:
                pos = int(empty[0])
                raise DataValidationError(
                    f"{_where(source, pos, df['utt_id'].iat[pos])}: empty or NaN field '{col}'"
                    + (f" (and {empty.size - 1} more rows)" if empty.size > 1 else "")
                )
        df[col] = text
    df["split"] = df["split"].str.lower()
    df["language"] = df["language"].str.lower()
    df["emotion"] = df["emotion"].str.lower()
    df["gender"] = df["gender"].str.upper()
    for col, allowed in (
        ("split", SPLITS),
        ("language", LANGUAGES),
        ("gender", GENDERS),
        ("emotion", EMOTIONS),
    ):
        bad = np.flatnonzero(~df[col].isin(allowed).to_numpy())
        if bad.size:
            pos = int(bad[0])
            raise DataValidationError(
                f"{_where(source, pos, df['utt_id'].iat[pos])}: unknown {col} "
                f"{df[col].iat[pos]!r}; expected one of {', '.join(allowed)}"
            )
    dup = np.flatnonzero(df["utt_id"].duplicated().to_numpy())
    if dup.size:
        pos = int(dup[0])
        first = int(np.flatnonzero((df["utt_id"] == df["utt_id"].iat[pos]).to_numpy())[0])
        raise DataValidationError(
            f"{_where(source, pos, df['utt_id'].iat[pos])}: duplicate utt_id, first seen in "
            f"row {first + 1}"
        )
    return df


def _check_strata(df: pd.DataFrame, source: str) -> None:
    for split in SPLITS:
        part = df[df["split"] == split]
        if part.empty:
            raise DataValidationError(f"{source}: split '{split}' is empty; need rows in each")
        for lang, genders in part.groupby("language")["gender"]:
            present = set(genders)
            if present != set(GENDERS):
                raise DataValidationError(
                    f"{source}: split '{split}' language '{lang}' has gender "
                    f"{'/'.join(sorted(present))} only ({len(genders)} rows); the gender gap "
                    "needs both F and M"
                )


def _warn_speaker_overlap(df: pd.DataFrame, source: str) -> dict[str, int]:
    train = set(df.loc[df["split"] == "train", "speaker"])
    overlap = {
        s: len(set(df.loc[df["split"] == s, "speaker"]) & train) for s in SPLITS if s != "train"
    }
    if any(overlap.values()):
        msg = f"{source}: speakers also in train: " + ", ".join(
            f"{s} {n}/{df.loc[df['split'] == s, 'speaker'].nunique()}" for s, n in overlap.items()
        )
        warnings.warn(msg, SpeakerOverlapWarning, stacklevel=3)
    return overlap


def validate_records(
    df: pd.DataFrame,
    source: str,
    check_audio: bool = True,
    resample: bool = False,
    resample_dir: Path | None = None,
    modality: str | None = None,
    max_seconds: float | None = None,
) -> pd.DataFrame:
    """Return the records cleaned (stripped, canonical case, index 0..n-1) or raise.

    Checks in order: columns, empty/NaN fields (only `text` may be empty; a literal "NaN"
    transcript counts as empty), labels against schema.py, duplicate utt_id, every split
    non-empty, both genders in every (split, language) (the gap Δ_l needs L_{l,F} and L_{l,M}),
    transcripts for `modality` (`check_text_for_modality`), then audio. A clip that is not 16 kHz
    mono is rejected with the conversion command, unless `resample=True`: then a PCM16 copy is
    written to `resample_dir` (default `.ermgap_16k/` beside the clip) and the record points
    there. Clips longer than `max_seconds` (the backbone's audio window, `audio_window_seconds`)
    give one `LongClipWarning` with the count and the longest clip; dev/test speakers seen in
    train give a `SpeakerOverlapWarning` with counts. Neither is an error.
    """
    df = _normalise(df, source)
    _check_strata(df, source)
    if modality is not None:
        check_text_for_modality(df, source, modality)
    if check_audio:
        df, frames = _check_audio(df, source, resample, resample_dir)
        if max_seconds is not None:
            _warn_long_clips(df, frames, source, max_seconds)
    _warn_speaker_overlap(df, source)
    return df


@dataclass
class DataReport:
    """Provenance of a corpus: counts per split × language × gender × emotion, plus notes."""

    source: str
    counts: pd.DataFrame
    notes: dict[str, int | float | str] = field(default_factory=dict)

    def to_text(self) -> str:
        lines = [f"data: {self.source}", f"rows: {int(self.counts['total'].sum())}"]
        lines += [f"{k}: {v}" for k, v in self.notes.items()]
        lines.append(self.counts.to_string())
        return "\n".join(lines)


def data_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Crosstab of (split, language, gender) rows × emotion columns, in schema order, + total."""
    index = pd.MultiIndex.from_product([SPLITS, LANGUAGES, GENDERS], names=["split", "lang", "g"])
    table = pd.crosstab([df["split"], df["language"], df["gender"]], df["emotion"])
    table = table.reindex(index=index, columns=list(EMOTIONS), fill_value=0)
    table = table.loc[table.sum(axis=1) > 0]
    table["total"] = table.sum(axis=1)
    table.columns.name = None
    return table


def summarize(df: pd.DataFrame, source: str, **notes: int | float | str) -> DataReport:
    """A `DataReport` for validated records; `notes` carry loader counts (skips, unknowns)."""
    return DataReport(source=source, counts=data_summary(df), notes=dict(notes))
