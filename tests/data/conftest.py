import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ermgap_ray.data.manifest import read_manifest
from ermgap_ray.data.schema import SAMPLE_RATE


@pytest.fixture
def small_records(small_corpus: Path) -> pd.DataFrame:
    return read_manifest(small_corpus)


HEADER = ["id", "emotion", "sentiment", "speaker", "dia_id", "utt_id", "season", "episode"]
# (id, emotion, speaker, dia_id, utt_id, season, episode) per CSV split; the same MELD utterance
# (s1 e2 d0 u0) is in both pairs' train CSVs; "Stage Hand" is not in the gender table.
ROWS = {
    "train": [
        ("0", "Joy", "Rachel", "0", "0", "1", "2"),
        ("1", "anger ", "Ross", "0", "1", "1", "2"),
        ("2", "neutral", "Stage Hand", "0", "2", "1", "2"),
    ],
    "valid": [
        ("0", "sadness", "Monica", "1", "0", "3", "4"),
        ("1", "fear", "Joey", "1", "1", "3", "4"),
    ],
    "test": [
        ("0", "surprise", "Phoebe", "2", "0", "5", "6"),
        ("1", "disgust", "Chandler", "2", "1", "5", "6"),
    ],
}
PAIRS = {"ENG_DEU": ("deu", "DEU", "German"), "ENG_JPN": ("jpn", "JPN", "Japanese")}
AUDIO_SPLIT = {"train": "train", "valid": "dev", "test": "test"}


def _tree(root: Path) -> Path:
    tone = (0.1 * np.sin(2 * np.pi * 220 * np.arange(8000) / SAMPLE_RATE)).astype(np.float32)
    for pair, (code, side, text_col) in PAIRS.items():
        for csv_split, rows in ROWS.items():
            split = AUDIO_SPLIT[csv_split]
            path = root / pair / f"{code}_{csv_split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow([*HEADER, "English", text_col])
                for i, emo, spk, dia, utt, season, ep in rows:
                    w.writerow([i, emo, "x", spk, dia, utt, season, ep, f"hi {i}", f"{code} {i}"])
                    for s in ("ENG", side):
                        wav = root / pair / s / split / f"{split}_{i}.wav"
                        wav.parent.mkdir(parents=True, exist_ok=True)
                        sf.write(wav, tone, SAMPLE_RATE, subtype="PCM_16")
    (root / "ENG_JPN" / "JPN" / "test" / "test_1.wav").write_bytes(b"")
    return root


@pytest.fixture
def meld_root(tmp_path: Path) -> Path:
    """A fake MELD-ST release: 7 rows per pair, one unknown speaker, one empty JPN clip."""
    return _tree(tmp_path / "MELD-ST")
