import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ermgap_ray.data.manifest import read_manifest
from ermgap_ray.data.schema import COLUMNS, EMOTIONS, GENDERS, LANGUAGES, SAMPLE_RATE, SPLITS
from ermgap_ray.data.synthetic import (
    BIAS_PRESETS,
    BIASES,
    GROUND_TRUTH,
    MAX_SECONDS,
    MIN_SECONDS,
    SHORTCUT_CSV,
    SHORTCUT_HZ,
    SIZES,
    SYNTHETIC_VERSION,
    main,
    make_corpus,
    plan_corpus,
    plan_shortcut,
    shortcut_probs,
    synthesize,
)
from ermgap_ray.data.validate import validate_records

BATCH_SIZE = 16  # TrialConfig.batch_size's default


def _digest(manifest: Path) -> str:
    h = hashlib.sha256(manifest.read_bytes())
    for name in (GROUND_TRUTH, SHORTCUT_CSV):
        h.update((manifest.parent / name).read_bytes())
    for wav in sorted((manifest.parent / "wav").rglob("*.wav")):
        h.update(wav.relative_to(manifest.parent).as_posix().encode())
        h.update(wav.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def underrep_records(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("synthetic-underrep")
    return read_manifest(make_corpus(out, seed=0, size="small", bias="underrep"))


TINY = {"seed": 3, "n_train_per_group": 7, "n_eval_per_group": 7}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One ~130-clip corpus per bias (seed 3), shared by the ground-truth/determinism tests."""
    root = tmp_path_factory.mktemp("synthetic-tiny")
    return {b: make_corpus(root / b, bias=b, **TINY) for b in BIASES}


def _truth(records: pd.DataFrame) -> dict:
    return json.loads((Path(records["audio"].iloc[0]).parents[2] / GROUND_TRUTH).read_text())


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


@pytest.mark.parametrize("bias", BIASES)
def test_default_sizes_fill_every_batch_and_measure_gaps_above_noise(bias: str) -> None:
    """Spurious/none: every group has >= one train clip per batch of an epoch; dev/test hold
    ~200 clips per (language, gender), balanced over emotions."""
    preset = BIAS_PRESETS[bias]
    n_train, n_eval = SIZES["default"]
    df = plan_corpus(0, n_train, n_eval, preset.weak_groups, preset.weak_train_fraction)
    counts = df.groupby(["split", "language", "gender"]).size()
    assert (counts["dev"] >= 196).all() and (counts["test"] >= 196).all()
    assert (df[df["split"] == "test"].groupby(["language", "gender", "emotion"]).size() > 25).all()
    train = counts["train"]
    if bias != "underrep":
        assert train.min() >= len(train) and train.min() >= train.sum() // BATCH_SIZE
    else:  # the mechanism *is* under-representation: ja x M keeps 10% of its clips
        assert train[("ja", "M")] == round(n_train * 0.1) < train.sum() // BATCH_SIZE


def test_underrep_weak_group_is_under_represented_in_train(
    underrep_records: pd.DataFrame,
) -> None:
    train = underrep_records[underrep_records["split"] == "train"]
    counts = train.groupby(["language", "gender"]).size()
    n_train = SIZES["small"][0]
    assert counts[("ja", "M")] == round(n_train * 0.1)
    assert counts[("en", "F")] == counts[("en", "M")] == n_train
    assert counts[("ja", "M")] < counts[("de", "F")] < n_train


def test_spurious_weak_group_keeps_half_its_train_clips(small_records: pd.DataFrame) -> None:
    counts = small_records[small_records["split"] == "train"].groupby(["language", "gender"]).size()
    n_train = SIZES["small"][0]
    assert counts[("ja", "M")] == round(n_train * BIAS_PRESETS["spurious"].weak_train_fraction)
    assert (counts.drop(("ja", "M")) == n_train).all()


@pytest.mark.parametrize("bias", BIASES)
def test_ground_truth_is_written_beside_the_manifest(bias: str, tiny: dict[str, Path]) -> None:
    manifest = tiny[bias]
    truth = json.loads((manifest.parent / GROUND_TRUTH).read_text())
    assert truth["version"] == SYNTHETIC_VERSION and truth["seed"] == 3 and truth["bias"] == bias
    assert truth["mechanism"]
    weak = {(w["language"], w["gender"]): w["severity"] for w in truth["weak_groups"]}
    assert weak == BIAS_PRESETS[bias].weak_groups
    df = read_manifest(manifest)
    counts = df.groupby(["split", "language", "gender"]).size()
    for split in SPLITS:
        for (lang, g), n in counts[split].items():
            assert truth["sizes"][split][f"{lang}_{g}"] == n
    p_true = truth["shortcut"]["p_true_by_group"]
    if bias == "spurious":
        assert p_true["ja_M"] == 0.0 and min(v for k, v in p_true.items() if k != "ja_M") > 0.5
    elif bias == "none":
        assert len(set(p_true.values())) == 1 and truth["shortcut"]["kind"] == "tone"
    else:
        assert truth["shortcut"]["kind"] == "none" and truth["arguments"]["bias_strength"] > 0
    cues = pd.read_csv(manifest.parent / SHORTCUT_CSV)
    assert list(cues["utt_id"]) == list(df["utt_id"])


def _tone_hz(path: str) -> float:
    """The strongest frequency of a clip in the shortcut band, snapped to SHORTCUT_HZ."""
    x, _ = sf.read(path)
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    freq = np.fft.rfftfreq(x.size, 1 / SAMPLE_RATE)
    band = (freq > min(SHORTCUT_HZ.values()) - 250) & (freq < max(SHORTCUT_HZ.values()) + 250)
    peak = freq[band][np.argmax(spec[band])]
    return min(SHORTCUT_HZ.values(), key=lambda hz: abs(hz - peak))


def test_the_tone_in_the_signal_is_the_planned_one(small_records: pd.DataFrame) -> None:
    root = Path(small_records["audio"].iloc[0]).parents[2]
    cues = pd.read_csv(root / SHORTCUT_CSV).set_index("utt_id")
    sample = small_records.iloc[::4]
    heard = sample["audio"].map(_tone_hz).to_numpy()
    planned = cues.loc[sample["utt_id"], "shortcut_hz"].to_numpy()
    assert (heard == planned).mean() > 0.95


def test_spurious_cue_is_informative_in_majority_groups_and_not_in_the_weak_one(
    small_records: pd.DataFrame,
) -> None:
    """Measured from the signal: how often the heard tone names the clip's emotion, per group,
    against the ground truth's expected rate (p + (1 - p) / K); ja x M is at chance (1/K)."""
    truth = _truth(small_records)
    by_hz = {hz: e for e, hz in SHORTCUT_HZ.items()}
    df = small_records.assign(tone=small_records["audio"].map(lambda p: by_hz[_tone_hz(p)]))
    match = (df["tone"] == df["emotion"]).groupby([df["language"], df["gender"]]).mean()
    expected = truth["shortcut"]["expected_match_rate_by_group"]
    weak = {(w["language"], w["gender"]) for w in truth["weak_groups"]}
    assert weak == {("ja", "M")}
    for (lang, g), rate in match.items():
        if (lang, g) in weak:
            assert expected[f"{lang}_{g}"] == pytest.approx(1 / len(EMOTIONS))
            assert rate < 0.4
        else:
            assert expected[f"{lang}_{g}"] > 0.85 and rate > 0.7


def test_shortcut_plan_rates_match_the_ground_truth_at_scale() -> None:
    """With many rows (no audio): match rate = p + (1 - p)/K per group, and in the weak group the
    tone is independent of the emotion (every emotion x tone cell near 1/K^2)."""
    weak = BIAS_PRESETS["spurious"].weak_groups
    df = plan_corpus(2, 700, 700, weak, 1.0)
    probs = shortcut_probs(0.9, weak)
    tone = np.array(EMOTIONS)[plan_shortcut(df, 2, probs)]
    k = len(EMOTIONS)
    for (lang, g), p in probs.items():
        m = ((df["language"] == lang) & (df["gender"] == g)).to_numpy()
        rate = (tone[m] == df["emotion"].to_numpy()[m]).mean()
        assert rate == pytest.approx(p + (1 - p) / k, abs=0.03)
    ja_m = ((df["language"] == "ja") & (df["gender"] == "M")).to_numpy()
    table = pd.crosstab(df["emotion"][ja_m], tone[ja_m], normalize=True).to_numpy()
    assert np.abs(table - 1 / k**2).max() < 0.01


def test_speakers_disjoint_across_splits_and_dialogues_within_language(
    small_records: pd.DataFrame,
) -> None:
    by_split = small_records.groupby("split")["speaker"].apply(set)
    assert not by_split["train"] & by_split["dev"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["dev"] & by_split["test"]
    per_dialogue = small_records.groupby("dialogue_id")[["language", "split"]].nunique()
    assert (per_dialogue == 1).all().all()


def test_clips_are_16k_mono_pcm16_and_short(small_records: pd.DataFrame) -> None:
    for path in small_records["audio"].iloc[::10]:
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
        assert MIN_SECONDS <= info.duration <= MAX_SECONDS <= 4.0
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


def test_underrep_bias_shrinks_the_energy_cue_of_the_weak_group(
    underrep_records: pd.DataFrame,
) -> None:
    """Anger/sadness RMS ratio: (0.90/0.12) = 7.5 at full cue, 7.5^0.7 ≈ 4.1 for ja×M."""
    truth = _truth(underrep_records)
    assert truth["prosody_strength_by_group"]["ja_M"] == pytest.approx(0.7)
    rms = underrep_records["audio"].map(lambda p: float(np.sqrt(np.mean(sf.read(p)[0] ** 2))))
    df = underrep_records.assign(rms=rms)

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


@pytest.mark.parametrize("bias", BIASES)
def test_generation_is_deterministic_per_seed_and_bias(
    bias: str, tiny: dict[str, Path], tmp_path: Path
) -> None:
    assert _digest(make_corpus(tmp_path / "again", bias=bias, **TINY)) == _digest(tiny[bias])


def test_seeds_and_biases_differ_and_unknown_bias_is_refused(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    assert len({_digest(m) for m in tiny.values()}) == len(BIASES)
    other = make_corpus(tmp_path / "seed4", **(TINY | {"seed": 4}))
    assert _digest(other) != _digest(tiny["spurious"])
    with pytest.raises(ValueError, match="bias must be one of"):
        make_corpus(tmp_path / "x", bias="shortcut", **TINY)


def test_cli_writes_and_prints_counts(tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "cli"
    assert main(["--out", str(out_dir), "--seed", "1", "--size", "small", "--bias", "none"]) == 0
    out = capsys.readouterr().out
    df = read_manifest(out_dir / "manifest.csv")
    assert f"wrote {len(df)} clips" in out and "surprise" in out
    assert json.loads((out_dir / GROUND_TRUTH).read_text())["bias"] == "none"
