"""MELD-ST loader: the ENG_DEU and ENG_JPN release folders as schema records.

Layout: ROOT/ENG_{DEU,JPN}/{deu,jpn}_{train,valid,test}.csv with columns
`id, emotion, sentiment, speaker, dia_id, utt_id, season, episode, English, German|Japanese`, and
audio at ROOT/<pair>/{ENG,DEU,JPN}/{train,dev,test}/{split}_{id}.wav ('valid' CSVs ↔ 'dev').

Each CSV row gives a target-language record and an English one. English appears in both pairs;
it is deduplicated on MELD's own key (season, episode, dia_id, utt_id), keeping ENG_DEU's copy
unless that clip is unusable. Gender comes from the shipped speaker_gender.csv; unknown speakers
are counted and dropped, never guessed. Missing, empty or unreadable clips are counted and skipped.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import soundfile as sf

from ermgap_ray.data.schema import COLUMNS, EMOTIONS
from ermgap_ray.data.validate import DataReport, DataValidationError, summarize

GENDER_TABLE = Path(__file__).with_name("speaker_gender.csv")
PAIRS: tuple[tuple[str, str, str, str, str], ...] = (
    ("ENG_DEU", "deu", "DEU", "de", "German"),
    ("ENG_JPN", "jpn", "JPN", "ja", "Japanese"),
)
CSV_SPLITS: tuple[tuple[str, str], ...] = (("train", "train"), ("valid", "dev"), ("test", "test"))
NEEDED = ("id", "emotion", "speaker", "dia_id", "utt_id", "season", "episode", "English")


def load_gender_table(path: str | Path | None = None) -> tuple[dict[str, str], str]:
    """(speaker.casefold() → F|M, version) from a CSV whose `# version: N` line versions it."""
    path = Path(path) if path is not None else GENDER_TABLE
    with open(path, newline="", encoding="utf-8-sig") as fh:
        lines = fh.read().splitlines()
    version = next(
        (ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("# version:")), "unversioned"
    )
    table: dict[str, str] = {}
    for i, row in enumerate(csv.DictReader(ln for ln in lines if not ln.startswith("#"))):
        gender = (row.get("gender") or "").strip().upper()
        if gender not in ("F", "M"):
            raise DataValidationError(f"{path} row {i + 1}: gender {gender!r} is not F or M")
        table[row["speaker"].strip().casefold()] = gender
    return table, version


def _clip_problem(path: Path) -> str | None:
    try:
        if path.stat().st_size == 0:
            return "zero_size_audio"
        sf.info(str(path))
    except FileNotFoundError:
        return "missing_audio"
    except (sf.LibsndfileError, RuntimeError, OSError):
        return "unreadable_audio"
    return None


def _read_pair_csv(path: Path, text_col: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataValidationError(f"{path}: MELD-ST CSV not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    missing = [c for c in (*NEEDED, text_col) if c not in df.columns]
    if missing:
        raise DataValidationError(f"{path}: missing column(s) {', '.join(missing)}")
    return df.apply(lambda col: col.str.strip())


def load_meld_st(
    root: str | Path, gender_table: str | Path | None = None, return_report: bool = False
) -> pd.DataFrame | tuple[pd.DataFrame, DataReport]:
    """Records for en/de/ja with absolute audio paths; with `return_report`, also the counts.

    Report notes: CSV rows read, unknown-gender CSV rows (both sides dropped) and their rate,
    the most frequent unknown speakers, skipped clips by reason, English duplicates dropped, and
    English utterances whose two copies sit in different splits (kept once, first pair's split).
    """
    root = Path(root).absolute()
    genders, version = load_gender_table(gender_table)
    notes: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    records: list[dict[str, str]] = []
    english: dict[tuple[str, ...], str] = {}
    for pair, code, folder, lang, text_col in PAIRS:
        for csv_split, split in CSV_SPLITS:
            path = root / pair / f"{code}_{csv_split}.csv"
            df = _read_pair_csv(path, text_col)
            for pos, row in enumerate(df.itertuples(index=False)):
                emotion = row.emotion.lower()
                if emotion not in EMOTIONS:
                    raise DataValidationError(
                        f"{path} line {pos + 2} (id={row.id}): unknown emotion {row.emotion!r}; "
                        f"expected one of {', '.join(EMOTIONS)}"
                    )
                gender = genders.get(row.speaker.casefold())
                notes["csv_rows"] += 1
                if gender is None:
                    unknown[row.speaker] += 1
                    continue
                common = {
                    "split": split,
                    "gender": gender,
                    "emotion": emotion,
                    "speaker": row.speaker,
                    "dialogue_id": f"{split}_dia{row.dia_id}",
                }
                for side, side_lang, text in (
                    (folder, lang, getattr(row, text_col)),
                    ("ENG", "en", row.English),
                ):
                    audio = root / pair / side / split / f"{split}_{row.id}.wav"
                    problem = _clip_problem(audio)
                    if problem:
                        notes[problem] += 1
                        continue
                    if side_lang == "en":
                        key = (row.season, row.episode, row.dia_id, row.utt_id)
                        if key in english:
                            notes["english_duplicates"] += 1
                            notes["english_split_conflicts"] += english[key] != split
                            continue
                        english[key] = split
                    records.append(
                        {
                            **common,
                            "utt_id": f"{side_lang}_{code}_{split}_{row.id}",
                            "language": side_lang,
                            "audio": str(audio),
                            "text": text,
                        }
                    )
    out = pd.DataFrame(records, columns=list(COLUMNS))
    if not return_report:
        return out
    rows = notes.pop("csv_rows", 0)
    n_unknown = sum(unknown.values())
    report = summarize(
        out,
        f"meld-st:{root}",
        gender_table=version,
        csv_rows=rows,
        unknown_gender_rows=n_unknown,
        unknown_gender_rate=round(n_unknown / rows, 4) if rows else 0.0,
        unknown_speakers=", ".join(f"{s} ({n})" for s, n in unknown.most_common(10)) or "none",
        **{k: int(v) for k, v in sorted(notes.items())},
    )
    return out, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Provenance report of a MELD-ST release folder.")
    parser.add_argument("root", type=Path, help="Folder holding ENG_DEU/ and ENG_JPN/.")
    parser.add_argument("--gender-table", type=Path, default=None, help="speaker,gender CSV.")
    args = parser.parse_args(argv)
    try:
        _, report = load_meld_st(args.root, args.gender_table, return_report=True)
    except DataValidationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.to_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
