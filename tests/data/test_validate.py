import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ermgap_ray.data.manifest import read_manifest
from ermgap_ray.data.schema import EMOTIONS, SAMPLE_RATE
from ermgap_ray.data.validate import (
    DataValidationError,
    EmptyTextWarning,
    LongClipWarning,
    SpeakerOverlapWarning,
    audio_problem,
    check_text_for_modality,
    data_summary,
    summarize,
    validate_records,
)


def _with(df: pd.DataFrame, row: int, **values: str) -> pd.DataFrame:
    df = df.copy()
    for col, value in values.items():
        df.loc[row, col] = value
    return df


def _fail(df: pd.DataFrame, **kw) -> str:
    with pytest.raises(DataValidationError) as err:
        validate_records(df, "manifest.csv", **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_valid_records_pass_and_are_normalised(small_records: pd.DataFrame) -> None:
    df = _with(small_records, 3, emotion=" Joy ", gender="f", language="EN")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = validate_records(df, "manifest.csv")
    assert (out.loc[3, "emotion"], out.loc[3, "gender"], out.loc[3, "language"]) == (
        "joy",
        "F",
        "en",
    )
    assert len(out) == len(small_records)


@pytest.mark.parametrize(
    ("col", "value", "expected"),
    [
        ("emotion", "happy", "unknown emotion 'happy'; expected one of neutral, joy"),
        ("language", "fr", "unknown language 'fr'"),
        ("gender", "X", "unknown gender 'X'"),
        ("split", "val", "unknown split 'val'"),
        ("speaker", "", "empty or NaN field 'speaker'"),
        ("emotion", np.nan, "empty or NaN field 'emotion'"),
    ],
)
def test_bad_labels_name_file_row_line_and_utt(
    small_records: pd.DataFrame, col: str, value: object, expected: str
) -> None:
    msg = _fail(_with(small_records, 16, **{col: value}), check_audio=False)
    utt = small_records.loc[16, "utt_id"]
    assert msg.startswith(f"manifest.csv row 17 (line 18, utt_id={utt}): ")
    assert expected in msg


def test_missing_column_and_duplicate_id(small_records: pd.DataFrame) -> None:
    assert "missing column(s) dialogue_id" in _fail(small_records.drop(columns="dialogue_id"))
    dup = _with(small_records, 9, utt_id=small_records.loc[2, "utt_id"])
    assert "row 10" in (msg := _fail(dup, check_audio=False)) and "first seen in row 3" in msg


def test_empty_text_is_allowed(small_records: pd.DataFrame) -> None:
    out = validate_records(_with(small_records, 0, text=np.nan), "m", check_audio=False)
    assert out.loc[0, "text"] == ""


@pytest.mark.parametrize("literal", ["NaN", "nan", " NAN ", "<NA>"])
def test_literal_nan_transcript_counts_as_empty(small_records: pd.DataFrame, literal: str) -> None:
    """csv/pandas keep a written-out NaN as the text "nan"; it must not reach the prompt."""
    out = validate_records(_with(small_records, 0, text=literal), "m", check_audio=False)
    assert out.loc[0, "text"] == ""
    assert out.loc[1, "text"] == small_records.loc[1, "text"].strip() != ""


def test_audio_text_run_needs_transcripts(small_records: pd.DataFrame) -> None:
    blank = small_records.assign(text=[("NaN", "")[i % 2] for i in range(len(small_records))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_records(blank, "manifest.csv", check_audio=False, modality="audio")
    msg = _fail(blank, check_audio=False, modality="audio+text")
    assert msg == (
        f"manifest.csv: modality 'audio+text' needs transcripts, but all {len(blank)} texts are "
        "empty or NaN; fill the 'text' column or use modality 'audio'"
    )
    some = _with(small_records, 4, text="nan")
    with pytest.warns(EmptyTextWarning, match=rf"m: 1 of {len(some)} transcripts are empty"):
        check_text_for_modality(some, "m", "audio+text")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_text_for_modality(small_records, "m", "audio+text")
    with pytest.raises(DataValidationError, match="modality must be one of"):
        check_text_for_modality(small_records, "m", "text")


def test_clips_longer_than_the_window_warn_with_count_and_longest(
    small_records: pd.DataFrame, tmp_path: Path
) -> None:
    """A 90 s clip against the tiny backbone's 4 s window used to be cut without a word."""
    df = small_records.copy()
    for row, seconds in ((3, 90), (8, 5)):
        path = tmp_path / f"long{row}.wav"
        sf.write(path, np.zeros(seconds * SAMPLE_RATE, np.float32), SAMPLE_RATE, subtype="PCM_16")
        df.loc[row, "audio"] = str(path)
    utt = df.loc[3, "utt_id"]
    with pytest.warns(LongClipWarning) as record:
        validate_records(df, "manifest.csv", max_seconds=4.0)
    assert len(record) == 1
    assert str(record[0].message) == (
        f"manifest.csv: 2 of {len(df)} clips are longer than the backbone's 4 s audio window and "
        f"are cut to it; the longest is 90.0 s (manifest.csv row 4 (line 5, utt_id={utt}))"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_records(df, "manifest.csv", max_seconds=90.0)
        validate_records(df, "manifest.csv")


def test_empty_split_and_single_gender_language(small_records: pd.DataFrame) -> None:
    no_dev = small_records[small_records["split"] != "dev"]
    assert "split 'dev' is empty" in _fail(no_dev, check_audio=False)
    keep = ~((small_records["split"] == "test") & (small_records["language"] == "de")) | (
        small_records["gender"] == "M"
    )
    msg = _fail(small_records[keep], check_audio=False)
    assert "split 'test' language 'de' has gender M only" in msg


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "ok.wav"
    sf.write(path, np.zeros(8000, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")
    return path


def test_audio_problems(tmp_path: Path, clip: Path) -> None:
    assert audio_problem(str(clip)) is None
    assert "not found" in audio_problem(str(tmp_path / "nope.wav"))
    (tmp_path / "empty.wav").write_bytes(b"")
    assert "empty (0 bytes)" in audio_problem(str(tmp_path / "empty.wav"))
    (tmp_path / "text.wav").write_text("not audio at all")
    assert "unreadable or not audio" in audio_problem(str(tmp_path / "text.wav"))
    data = clip.read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: len(data) // 2])
    assert sf.info(str(tmp_path / "cut.wav")).frames > 0
    assert "truncated" in audio_problem(str(tmp_path / "cut.wav"))
    sf.write(tmp_path / "f.flac", np.zeros(32000), SAMPLE_RATE)
    data = (tmp_path / "f.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    assert audio_problem(str(tmp_path / "f.flac")) is None
    assert audio_problem(str(tmp_path / "cut.flac")) is not None
    sf.write(tmp_path / "44k.wav", np.zeros((4410, 2)), 44100)
    msg = audio_problem(str(tmp_path / "44k.wav"))
    assert "44100 Hz with 2 channel(s)" in msg and "ffmpeg" in msg


def test_audio_error_names_row_and_counts_others(
    small_records: pd.DataFrame, tmp_path: Path
) -> None:
    df = small_records.copy()
    df.loc[5, "audio"] = str(tmp_path / "missing.wav")
    df.loc[40, "audio"] = str(tmp_path / "missing2.wav")
    msg = _fail(df)
    assert msg.startswith(f"manifest.csv row 6 (line 7, utt_id={df.loc[5, 'utt_id']})")
    assert "missing.wav" in msg and "(and 1 more audio problems)" in msg


def test_wrong_rate_rejected_or_resampled(small_records: pd.DataFrame, tmp_path: Path) -> None:
    t = np.arange(22050) / 22050
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1) * 0.5
    sf.write(tmp_path / "hi.wav", stereo, 22050)
    df = small_records.copy()
    df.loc[7, "audio"] = str(tmp_path / "hi.wav")
    assert "22050 Hz with 2 channel(s)" in _fail(df)
    out = validate_records(df, "m", resample=True, resample_dir=tmp_path / "cache")
    fixed = out.loc[7, "audio"]
    assert fixed == str(tmp_path / "cache" / "hi.wav")
    x, sr = sf.read(fixed)
    assert sr == SAMPLE_RATE and x.ndim == 1 and abs(len(x) - SAMPLE_RATE) <= 1
    assert np.sqrt(np.mean(x**2)) == pytest.approx(0.25 / np.sqrt(2), rel=0.05)


def test_speaker_overlap_warns_with_counts(small_records: pd.DataFrame) -> None:
    df = small_records.copy()
    dev = df.index[df["split"] == "dev"][:3]
    df.loc[dev, "speaker"] = df.loc[df["split"] == "train", "speaker"].iloc[0]
    with pytest.warns(SpeakerOverlapWarning, match=r"dev 1/\d+, test 0/\d+"):
        validate_records(df, "m", check_audio=False)


def test_audio_check_is_fast(small_corpus: Path, tmp_path: Path) -> None:
    """~2000 rows of audio checks (unique files, thread pool) well under the brief's budget."""
    import time

    df = read_manifest(small_corpus)
    big = pd.concat([df] * 13, ignore_index=True)
    big["utt_id"] = [f"u{i}" for i in range(len(big))]
    start = time.perf_counter()
    validate_records(big, "big", check_audio=True)
    assert len(big) > 1900 and time.perf_counter() - start < 10.0


def test_summary_crosstab_matches_groupby(small_records: pd.DataFrame) -> None:
    table = data_summary(small_records)
    assert list(table.columns) == [*EMOTIONS, "total"]
    assert table["total"].sum() == len(small_records)
    expected = small_records.groupby(["split", "language", "gender"]).size()
    assert table.loc[("train", "ja", "M"), "total"] == expected[("train", "ja", "M")]
    assert table.index[0] == ("train", "en", "F")
    report = summarize(small_records, "x", skipped=2)
    text = report.to_text()
    assert f"rows: {len(small_records)}" in text and "skipped: 2" in text


def test_copied_corpus_validates_after_move(small_corpus: Path, tmp_path: Path) -> None:
    dst = tmp_path / "moved"
    shutil.copytree(small_corpus.parent, dst)
    df = validate_records(read_manifest(dst / "manifest.csv"), "moved")
    assert df["audio"].str.startswith(str(dst)).all()
