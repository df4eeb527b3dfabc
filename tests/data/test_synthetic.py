import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from ermgap_ray.data.io import read_manifest
from ermgap_ray.data.schema import COLUMNS, EMOTIONS, GENDERS, LANGUAGES, SAMPLE_RATE, SPLITS
from ermgap_ray.data.synthetic import SIZES, main, make_corpus, plan_corpus, synthesize
from ermgap_ray.data.validate import validate_records


def _digest(manifest: Path) -> str:
    h = hashlib.sha256(manifest.read_bytes())
    for wav in sorted((manifest.parent / "wav").rglob("*.wav")):
        h.update(wav.relative_to(manifest.parent).as_posix().encode())
        h.update(wav.read_bytes())
    return h.hexdigest()


def test_small_corpus_is_valid_and_shaped_like_meld_st(small_records: pd.DataFrame) -> None:
    df = validate_records(small_records, "small")
    assert list(df.columns) == list(COLUMNS)
    assert set(df["language"]) == set(LANGUAGES) and set(df["gender"]) == set(GENDERS)
    assert set(df["emotion"]) == set(EMOTIONS) and set(df["split"]) == set(SPLITS)
    n_train, n_eval = SIZES["small"]
    counts = df.groupby(["split", "language", "gender"]).size()
    assert (counts["dev"] == n_eval).all() and (counts["test"] == n_eval).all()
    per_emotion = df[df["split"] == "test"].groupby(["language", "gender", "emotion"]).size()
    assert (per_emotion == n_eval // len(EMOTIONS)).all()
    assert 120 <= len(df) <= 200


def test_weak_group_is_under_represented_in_train(small_records: pd.DataFrame) -> None:
    train = small_records[small_records["split"] == "train"]
    counts = train.groupby(["language", "gender"]).size()
    n_train = SIZES["small"][0]
    assert counts[("ja", "M")] == round(n_train * 0.1)
    assert counts[("en", "F")] == counts[("en", "M")] == n_train
    assert counts[("ja", "M")] < counts[("de", "F")] < n_train


def test_speakers_disjoint_across_splits_and_dialogues_within_language(
    small_records: pd.DataFrame,
) -> None:
    by_split = small_records.groupby("split")["speaker"].apply(set)
    assert not by_split["train"] & by_split["dev"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["dev"] & by_split["test"]
    per_dialogue = small_records.groupby("dialogue_id")[["language", "split"]].nunique()
    assert (per_dialogue == 1).all().all()


def test_clips_are_16k_mono_pcm16_between_1_and_3_s(small_records: pd.DataFrame) -> None:
    for path in small_records["audio"].iloc[::10]:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        assert 1.0 <= info.duration <= 3.0
        x, _ = sf.read(path)
        assert 0.001 < np.sqrt(np.mean(x**2)) and np.abs(x).max() <= 1.0


def test_text_is_in_the_language_and_sometimes_names_the_emotion(
    small_records: pd.DataFrame,
) -> None:
    ja = small_records.loc[small_records["language"] == "ja", "text"]
    assert ja.str.contains(r"[\u3040-\u30ff\u4e00-\u9fff]").all()
    en = small_records[small_records["language"] == "en"]
    assert en["text"].str.match(r"^[A-Za-z]").all()
    cued = en["text"].str.contains(",")
    assert 0.2 < cued.mean() < 0.8


def test_dominant_frequency_follows_f0() -> None:
    def peak(f0: float) -> float:
        y = synthesize(np.random.default_rng(0), 2.0, f0, 0.0, 4.0, 0.3, 0.7, 0.0, (700.0,), 0.0)
        spec = np.abs(np.fft.rfft(y))
        return float(np.fft.rfftfreq(y.size, 1 / SAMPLE_RATE)[np.argmax(spec[50:]) + 50])

    assert peak(205.0) > peak(112.0)
    y = synthesize(np.random.default_rng(0), 1.5, 150.0, 0.0, 4.0, 0.5, 0.7, 0.0, (700.0,), 0.0)
    assert y.dtype == np.float32 and y.size == int(1.5 * SAMPLE_RATE)


def test_planted_bias_shrinks_the_energy_cue_of_the_weak_group(
    small_records: pd.DataFrame,
) -> None:
    """Anger/sadness RMS ratio: (0.90/0.12) = 7.5 at full cue, 7.5^0.7 ≈ 4.1 for ja×M."""
    rms = small_records["audio"].map(lambda p: float(np.sqrt(np.mean(sf.read(p)[0] ** 2))))
    df = small_records.assign(rms=rms)

    def ratio(lang: str, gender: str) -> float:
        g = df[(df["language"] == lang) & (df["gender"] == gender)]
        by = g.groupby("emotion")["rms"].median()
        return by["anger"] / by["sadness"]

    assert min(ratio(lang, g) for lang in ("en", "de") for g in ("F", "M")) > 5.5
    assert ratio("ja", "F") > 5.5 and ratio("ja", "M") < 5.0


def test_plan_balances_emotions_and_honours_bias_knobs() -> None:
    df = plan_corpus(1, 70, 14, {("en", "F"): 1.0}, weak_train_fraction=0.5)
    train = df[df["split"] == "train"].groupby(["language", "gender"]).size()
    assert train[("en", "F")] == 35 and train[("ja", "M")] == 70
    test = df[df["split"] == "test"].groupby(["language", "gender", "emotion"]).size()
    assert (test == 2).all()


def test_generation_is_deterministic_per_seed(tmp_path: Path) -> None:
    kw = {"n_train_per_group": 7, "n_eval_per_group": 7}
    a = _digest(make_corpus(tmp_path / "a", seed=3, **kw))
    b = _digest(make_corpus(tmp_path / "b", seed=3, **kw))
    c = _digest(make_corpus(tmp_path / "c", seed=4, **kw))
    assert a == b
    assert a != c


def test_cli_writes_and_prints_counts(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path / "cli"), "--seed", "1", "--size", "small"]) == 0
    out = capsys.readouterr().out
    df = read_manifest(tmp_path / "cli" / "manifest.csv")
    assert f"wrote {len(df)} clips" in out and "surprise" in out
