import os
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ermgap_ray.data import io
from ermgap_ray.data.io import resolve_data
from ermgap_ray.data.manifest import read_manifest, write_manifest
from ermgap_ray.data.schema import COLUMNS, SAMPLE_RATE
from ermgap_ray.data.validate import DataValidationError, LongClipWarning


def test_manifest_round_trip_stores_relative_paths(
    small_records: pd.DataFrame, tmp_path: Path
) -> None:
    path = write_manifest(small_records, tmp_path / "sub" / "m.csv")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(raw.columns) == list(COLUMNS)
    assert (
        raw["audio"].str.startswith("../../").all() and not raw["audio"].str.startswith("/").any()
    )
    back = read_manifest(path)
    pd.testing.assert_frame_equal(back, small_records)
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_malformed_csv_row_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_text(",".join(COLUMNS) + "\n" + ",".join("a" * 9) + "\n" + "x,y,z\n")
    with pytest.raises(DataValidationError, match=r"manifest.csv line 3: 3 fields, header has 9"):
        read_manifest(path)
    path.write_text("")
    with pytest.raises(DataValidationError, match="empty file"):
        read_manifest(path)


def test_manifest_with_a_byte_order_mark_loads(small_records: pd.DataFrame, tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM, which used to hide the utt_id column."""
    path = write_manifest(small_records, tmp_path / "manifest.csv")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    back = read_manifest(path)
    assert list(back.columns) == list(COLUMNS)
    pd.testing.assert_frame_equal(back, small_records)
    df, _ = resolve_data(str(tmp_path), check_audio=False)
    assert len(df) == len(small_records)


def test_resolve_checks_transcripts_and_window_when_asked(
    small_records: pd.DataFrame, tmp_path: Path
) -> None:
    path = write_manifest(small_records.assign(text="NaN"), tmp_path / "manifest.csv")
    df, _ = resolve_data(str(path), modality="audio")
    assert (df["text"] == "").all()
    with pytest.raises(DataValidationError, match=rf"^{path}: modality 'audio\+text' needs"):
        resolve_data(str(path), modality="audio+text")
    with pytest.warns(LongClipWarning, match=rf"{len(df)} of {len(df)} clips are longer"):
        resolve_data(str(path), max_seconds=0.5)


def test_resolve_folder_and_csv_specs_agree(small_corpus: Path) -> None:
    by_dir, fp_dir = resolve_data(str(small_corpus.parent))
    by_csv, fp_csv = resolve_data(str(small_corpus))
    pd.testing.assert_frame_equal(by_dir, by_csv)
    assert fp_dir == fp_csv and len(fp_dir) == 64


def test_fingerprint_tracks_rows_and_file_stats(
    small_records: pd.DataFrame, small_corpus: Path
) -> None:
    root = small_corpus.parent
    base = io.data_fingerprint(small_records, root)
    assert io.data_fingerprint(small_records, root) == base
    relabel = small_records.copy()
    relabel.loc[0, "emotion"] = "joy" if relabel.loc[0, "emotion"] != "joy" else "anger"
    assert io.data_fingerprint(relabel, root) != base
    st = os.stat(small_records["audio"].iloc[0])
    try:
        os.utime(small_records["audio"].iloc[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert io.data_fingerprint(small_records, root) != base
        assert io.data_fingerprint(small_records, root, mtimes=False) == io.data_fingerprint(
            small_records, root, mtimes=False
        )
    finally:
        os.utime(small_records["audio"].iloc[0], ns=(st.st_atime_ns, st.st_mtime_ns))


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"data spec '.*nowhere'"):
        resolve_data(str(tmp_path / "nowhere"))
    with pytest.raises(DataValidationError, match="is not a directory"):
        resolve_data(f"meld-st:{tmp_path / 'none'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataValidationError, match="manifest.csv"):
        resolve_data(str(tmp_path / "empty"))


def test_default_twin_is_generated_once_and_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two concurrent resolvers get the same corpus; a later call reuses it without writing."""
    from ermgap_ray.data import synthetic

    real = synthetic.make_corpus
    calls: list[Path] = []

    def small(out_dir, seed=0, **kw):
        calls.append(Path(out_dir))
        return real(out_dir, seed=seed, size="small")

    monkeypatch.setattr(synthetic, "make_corpus", small)
    monkeypatch.setenv("ERMGAP_CACHE", str(tmp_path / "cache"))
    results: list[tuple[pd.DataFrame, str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_data(None))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    target = tmp_path / "cache" / "data" / synthetic.twin_folder_name("spurious", 0)
    assert (target / "manifest.csv").is_file()
    assert len(results) == 2 and results[0][1] == results[1][1]
    assert all(not c.exists() for c in calls)
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    n_calls = len(calls)
    again, fp = resolve_data(None)
    assert len(calls) == n_calls and fp == results[0][1]
    assert again["audio"].str.startswith(str(target)).all()


def test_default_twin_cache_root_argument_and_corruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ermgap_ray.data import synthetic

    real = synthetic.make_corpus
    monkeypatch.setattr(
        synthetic, "make_corpus", lambda out, seed=0, **kw: real(out, seed, "small")
    )
    df, _ = resolve_data(None, cache_root=tmp_path)
    wav = Path(df["audio"].iloc[0])
    wav.write_bytes(b"")
    with pytest.raises(DataValidationError, match=r"empty \(0 bytes\).*delete .* to regenerate"):
        resolve_data(None, cache_root=tmp_path)


def test_resolve_meld_st_once_every_stratum_has_both_genders(meld_root: Path) -> None:
    tone = np.zeros(4000, dtype=np.float32)
    sf.write(meld_root / "ENG_JPN" / "JPN" / "test" / "test_1.wav", tone, SAMPLE_RATE)
    df, fp = resolve_data(f"meld-st:{meld_root}")
    assert len(df) == 18 and set(df["language"]) == {"en", "de", "ja"}
    assert resolve_data(f"meld-st:{meld_root}")[1] == fp


def test_twin_knobs_pick_the_mechanism_and_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`twin_bias` / `twin_seed` (TrialConfig knobs) name their own cached twin."""
    import json

    from ermgap_ray.data import synthetic

    real = synthetic.make_corpus
    monkeypatch.setattr(
        synthetic,
        "make_corpus",
        lambda out, seed=0, bias="spurious": real(out, seed, "small", bias),
    )
    monkeypatch.setenv("ERMGAP_CACHE", str(tmp_path / "cache"))
    df, fp = resolve_data(None, twin_bias="none", twin_seed=3)
    target = tmp_path / "cache" / "data" / synthetic.twin_folder_name("none", 3)
    truth = json.loads((target / synthetic.GROUND_TRUTH).read_text())
    assert truth["bias"] == "none" and truth["seed"] == 3
    assert df["audio"].str.startswith(str(target)).all()
    assert fp != resolve_data(None, twin_bias="spurious", twin_seed=3)[1]
