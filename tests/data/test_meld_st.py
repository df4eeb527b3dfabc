from pathlib import Path

import pandas as pd
import pytest

from ermgap_ray.data.io import resolve_data
from ermgap_ray.data.meld_st import load_gender_table, load_meld_st, main
from ermgap_ray.data.schema import COLUMNS
from ermgap_ray.data.validate import DataValidationError


def test_records_dedup_gender_and_skips(meld_root: Path) -> None:
    df, report = load_meld_st(meld_root, return_report=True)
    assert list(df.columns) == list(COLUMNS)
    # 6 known-speaker CSV rows per pair → 6 de + 6 ja (-1 empty) + 6 English (deduplicated).
    assert df["language"].value_counts().to_dict() == {"en": 6, "de": 6, "ja": 5}
    en = df[df["language"] == "en"]
    assert en["utt_id"].str.startswith("en_deu_").all()
    assert set(df["speaker"]) == {"Rachel", "Ross", "Monica", "Joey", "Phoebe", "Chandler"}
    assert (df.loc[df["speaker"] == "Rachel", "gender"] == "F").all()
    assert (df.loc[df["speaker"] == "Ross", "gender"] == "M").all()
    assert set(df.loc[df["speaker"] == "Rachel", "emotion"]) == {"joy"}
    assert set(df.loc[df["speaker"] == "Ross", "emotion"]) == {"anger"}
    dev = df[(df["split"] == "dev") & (df["language"] == "ja")]
    assert Path(dev["audio"].iloc[0]).parts[-3:] == (
        "JPN",
        "dev",
        f"dev_{dev['utt_id'].iloc[0][-1]}.wav",
    )
    assert set(df.loc[df["language"] == "ja", "text"]) >= {"jpn 0", "jpn 1"}
    assert report.notes["english_duplicates"] == 6
    assert report.notes["zero_size_audio"] == 1
    assert report.notes["csv_rows"] == 14
    assert report.notes["unknown_gender_rows"] == 2
    assert report.notes["unknown_gender_rate"] == pytest.approx(2 / 14, abs=1e-4)
    assert report.notes["unknown_speakers"] == "Stage Hand (2)"
    assert report.counts.loc[("train", "en", "F"), "joy"] == 1
    assert report.counts["total"].sum() == len(df)


def test_english_falls_back_to_the_second_pair_when_first_clip_is_bad(meld_root: Path) -> None:
    (meld_root / "ENG_DEU" / "ENG" / "train" / "train_0.wav").write_bytes(b"")
    df, report = load_meld_st(meld_root, return_report=True)
    rachel_en = df[(df["speaker"] == "Rachel") & (df["language"] == "en")]
    assert rachel_en["utt_id"].tolist() == ["en_jpn_train_0"]
    assert report.notes["english_duplicates"] == 5


def test_unknown_emotion_names_csv_line(meld_root: Path) -> None:
    path = meld_root / "ENG_JPN" / "jpn_valid.csv"
    df = pd.read_csv(path, dtype=str)
    df.loc[1, "emotion"] = "happy"
    df.to_csv(path, index=False)
    with pytest.raises(
        DataValidationError, match=r"jpn_valid.csv line 3 \(id=1\): unknown emotion 'happy'"
    ):
        load_meld_st(meld_root)


def test_missing_csv_is_an_error(meld_root: Path) -> None:
    (meld_root / "ENG_DEU" / "deu_test.csv").unlink()
    with pytest.raises(DataValidationError, match="deu_test.csv: MELD-ST CSV not found"):
        load_meld_st(meld_root)


def test_gender_table_is_versioned_and_covers_the_main_six() -> None:
    table, version = load_gender_table()
    assert version == "1"
    main_six = {
        "rachel": "F",
        "monica": "F",
        "phoebe": "F",
        "ross": "M",
        "chandler": "M",
        "joey": "M",
    }
    assert {k: table[k] for k in main_six} == main_six
    assert table["mrs. geller"] == "F" and table["gunther"] == "M" and len(table) >= 40


def test_custom_gender_table(meld_root: Path, tmp_path: Path) -> None:
    table = tmp_path / "g.csv"
    table.write_text("# version: test\nspeaker,gender,source\nstage hand,M,test\nRachel,F,test\n")
    df, report = load_meld_st(meld_root, gender_table=table, return_report=True)
    assert set(df["speaker"]) == {"Rachel", "Stage Hand"}
    assert report.notes["gender_table"] == "test"


def test_cli_report_and_resolve_data(meld_root: Path, capsys) -> None:
    assert main([str(meld_root)]) == 0
    out = capsys.readouterr().out
    assert "unknown_gender_rate: 0.1429" in out and "zero_size_audio: 1" in out and "joy" in out
    # The tiny tree lacks some (split, language, gender) strata, so validation rejects it.
    with pytest.raises(DataValidationError, match="has gender"):
        resolve_data(f"meld-st:{meld_root}")


def test_csvs_and_gender_table_with_a_byte_order_mark(meld_root: Path, tmp_path: Path) -> None:
    """Files saved by Excel start with a BOM; the first column must keep its name."""
    before = load_meld_st(meld_root)
    for path in meld_root.glob("*/*.csv"):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    pd.testing.assert_frame_equal(load_meld_st(meld_root), before)
    table = tmp_path / "g.csv"
    table.write_bytes(b"\xef\xbb\xbfspeaker,gender\nRachel,F\n")
    assert load_gender_table(table) == ({"rachel": "F"}, "unversioned")
