"""The synthetic MELD-ST twin: real 16 kHz wav files whose prosody carries the emotion.

Each clip is a harmonic "voice" whose f0 level and contour, syllable rate, energy, spectral tilt
and tremolo depend on the emotion (the robust cue, present in every group); gender moves f0 and
the formants; language moves the formants and the tempo. A planted, language-dependent gender
bias has a named mechanism (`bias`):

- ``spurious`` (default): every clip also carries a steady tone whose frequency names an emotion.
  In the majority groups it names the true emotion with probability `shortcut_prob` (else a
  uniformly random one); in each weak (language, gender) of severity w that probability is
  shortcut_prob * (1 - w), so at w = 1 the tone is independent of the label; the weak group
  also has half the training clips of the others (105 against 210, still more than the batches
  of an epoch). ERM takes the shortcut, the weak group's loss stays high on the training data
  too, and a loss-gap regulariser can see (and act on) the gap.
- ``underrep``: v2's bias. The weak group is under-represented in train (a fraction
  1 - (1 - weak_train_fraction) * w of its clips) and its prosodic cues shrink towards neutral by
  s = 1 - bias_strength * w. ERM memorises it: its training gap vanishes while its test gap stays.
- ``none``: the control; the tone is as informative in every group and nothing else differs.

Dev and test stay balanced per (language, gender, emotion) and hold ~200 clips per
(language, gender), so a worst-language gap is measured above the noise floor. The generator
writes `manifest.csv`, `ground_truth.json` (mechanism, weak groups, cue strengths, sizes, seed,
version, arguments) and `shortcut.csv` (each clip's tone) into the corpus folder.

Output is a function of (version, seed, arguments): the same seed gives the same wav bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from ermgap_ray.data.manifest import read_manifest, write_manifest
from ermgap_ray.data.schema import EMOTIONS, GENDERS, LANGUAGES, SAMPLE_RATE, SPLITS
from ermgap_ray.data.validate import data_summary
from ermgap_ray.fs import atomic_write

SYNTHETIC_VERSION = "v3"
# The cached twin's folder also names this file's hash: a generator edited without a version
# bump (its sizes, cues or presets) must never reuse a corpus an older generator wrote.
GENERATOR_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:8]
BIASES: tuple[str, ...] = ("spurious", "underrep", "none")
DEFAULT_BIAS = "spurious"
# Default sizes: 210 train clips per (language, gender) (30 per emotion; the spurious weak group
# keeps 105, still more than the 72 batches of 16 in an epoch, so it is in every batch) and 210
# dev + 210 test clips per group (a worst-language W-F1 gap is then measured above a ~5-point
# noise floor). With 84 train clips per group the model stayed too weak for the regulariser to
# level the weak group up; it levelled every other group down instead (README).
TRAIN_DEFAULT = 210
WEAK_FRACTION = 0.5  # spurious: the weak group keeps half its train clips (105 of 210)
SHORTCUT_PROB = 0.9  # P(tone drawn from the true emotion) in the majority groups
SHORTCUT_AMP = 0.08  # tone peak amplitude (the voice's RMS is ~0.02-0.15)
PROSODY_STRENGTH = 1.0
MIN_SECONDS, MAX_SECONDS = 0.6, 1.6  # short clips keep a 4-epoch trial's loop fast
SIZES: dict[str, tuple[int, int]] = {"default": (TRAIN_DEFAULT, 210), "small": (14, 7)}
GROUND_TRUTH = "ground_truth.json"
SHORTCUT_CSV = "shortcut.csv"
# The shortcut tone of each emotion (Hz): above the voice's formants, ~3 mel bins apart.
SHORTCUT_HZ: dict[str, float] = {e: 3200.0 + 500.0 * i for i, e in enumerate(EMOTIONS)}


@dataclass(frozen=True)
class BiasPreset:
    """The knobs each mechanism sets; `make_corpus` arguments override them one by one."""

    weak_groups: dict[tuple[str, str], float]
    bias_strength: float
    weak_train_fraction: float
    shortcut_prob: float
    shortcut_amplitude: float


BIAS_PRESETS: dict[str, BiasPreset] = {
    "spurious": BiasPreset(
        weak_groups={("ja", "M"): 1.0},
        bias_strength=0.0,
        weak_train_fraction=WEAK_FRACTION,
        shortcut_prob=SHORTCUT_PROB,
        shortcut_amplitude=SHORTCUT_AMP,
    ),
    "underrep": BiasPreset(
        weak_groups={("ja", "M"): 1.0, ("de", "F"): 0.35},
        bias_strength=0.3,
        weak_train_fraction=0.1,
        shortcut_prob=0.0,
        shortcut_amplitude=0.0,
    ),
    "none": BiasPreset(
        weak_groups={},
        bias_strength=0.0,
        weak_train_fraction=1.0,
        shortcut_prob=SHORTCUT_PROB,
        shortcut_amplitude=SHORTCUT_AMP,
    ),
}
# Kept for callers of v2: the underrep preset's weak groups.
DEFAULT_WEAK_GROUPS = BIAS_PRESETS["underrep"].weak_groups
SPEAKERS_PER_GROUP: dict[str, int] = {"train": 8, "dev": 6, "test": 6}
DIALOGUE_LEN = 6


@dataclass(frozen=True)
class Cue:
    """Prosodic cue of one emotion; pitch/energy/rate are multiplicative, the rest additive."""

    pitch: float
    slope: float
    energy: float
    rate: float
    rolloff: float
    tremolo: float


CUES: dict[str, Cue] = {
    "neutral": Cue(pitch=1.00, slope=0.00, energy=0.30, rate=4.0, rolloff=0.70, tremolo=0.00),
    "joy": Cue(pitch=1.35, slope=0.35, energy=0.55, rate=6.0, rolloff=0.82, tremolo=0.00),
    "sadness": Cue(pitch=0.78, slope=-0.30, energy=0.12, rate=2.2, rolloff=0.45, tremolo=0.00),
    "anger": Cue(pitch=1.15, slope=-0.15, energy=0.90, rate=7.5, rolloff=0.90, tremolo=0.02),
    "surprise": Cue(pitch=1.60, slope=0.80, energy=0.60, rate=4.5, rolloff=0.76, tremolo=0.00),
    "fear": Cue(pitch=1.40, slope=0.00, energy=0.25, rate=9.0, rolloff=0.62, tremolo=0.08),
    "disgust": Cue(pitch=0.88, slope=-0.55, energy=0.45, rate=3.0, rolloff=0.55, tremolo=0.00),
}
GENDER_F0 = {"F": 205.0, "M": 112.0}
GENDER_FORMANT_SCALE = {"F": 1.15, "M": 1.0}
LANGUAGE_VOICE: dict[str, tuple[tuple[float, float, float], float]] = {
    "en": ((700.0, 1800.0, 2600.0), 1.0),
    "ja": ((500.0, 1400.0, 2500.0), 1.12),
    "de": ((620.0, 2200.0, 3000.0), 0.9),
}

LEXICON: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "neutral": ("okay", "fine", "sure"),
        "joy": ("I'm so happy", "this is great", "wonderful"),
        "sadness": ("I'm so sad", "I miss her", "sorry"),
        "anger": ("I'm furious", "I hate this", "stop it now"),
        "surprise": ("wow, really?", "no way", "what?!"),
        "fear": ("I'm scared", "I'm afraid", "this is terrifying"),
        "disgust": ("gross", "that's disgusting", "yuck"),
    },
    "ja": {
        "neutral": ("はい", "そうですね", "わかりました"),
        "joy": ("うれしい", "楽しい", "最高だ"),
        "sadness": ("悲しい", "さびしい", "残念だ"),
        "anger": ("ふざけるな", "許せない", "怒っている"),
        "surprise": ("えっ、本当に", "びっくりした", "まさか"),
        "fear": ("怖い", "不安だ", "恐ろしい"),
        "disgust": ("気持ち悪い", "嫌だ", "うんざりだ"),
    },
    "de": {
        "neutral": ("okay", "gut", "na gut"),
        "joy": ("ich bin so froh", "toll", "wunderbar"),
        "sadness": ("ich bin traurig", "schade", "leider"),
        "anger": ("ich bin wütend", "unverschämt", "hör auf"),
        "surprise": ("wirklich?", "echt jetzt?", "Wahnsinn"),
        "fear": ("ich habe Angst", "unheimlich", "erschreckend"),
        "disgust": ("eklig", "widerlich", "igitt"),
    },
}
FILLERS: dict[str, tuple[str, ...]] = {
    "en": ("well", "so", "you know", "I mean", "then we went home", "let's talk later"),
    "ja": ("ええと", "それで", "あのね", "今日は", "また明日", "駅で会った"),
    "de": ("also", "naja", "weißt du", "dann gehen wir", "bis später", "am Bahnhof"),
}


def _text(rng: np.random.Generator, language: str, emotion: str, cue_prob: float) -> str:
    """A transcript whose emotion word appears with probability `cue_prob` (a noisier cue)."""
    filler = FILLERS[language][rng.integers(len(FILLERS[language]))]
    if rng.random() >= cue_prob:
        return f"{filler}。" if language == "ja" else f"{filler.capitalize()}."
    word = LEXICON[language][emotion][rng.integers(3)]
    if language == "ja":
        return f"{filler}、{word}。"
    return f"{filler.capitalize()}, {word}" + ("" if word[-1] in "?!" else ".")


def synthesize(
    rng: np.random.Generator,
    duration: float,
    f0: float,
    slope: float,
    rate: float,
    energy: float,
    rolloff: float,
    tremolo: float,
    formants: tuple[float, ...],
    noise: float,
) -> np.ndarray:
    """One clip, vectorised: a band-limited harmonic series shaped by formants and syllables.

    The harmonic sum Σ_{k=1..K} r^k sin(kθ) is Im[z(1 - z^K)/(1 - z)] with z = r·e^{iθ}, i.e.
    (r sinθ - r^{K+1} sin((K+1)θ) + r^{K+2} sin Kθ) / (1 - 2r cosθ + r²): O(n) whatever K.
    r is the roll-off (spectral tilt); K keeps the top harmonic under 7.6 kHz.
    """
    n = int(round(duration * SAMPLE_RATE))
    t = np.arange(n, dtype=np.float32) / np.float32(SAMPLE_RATE)
    knots = np.arange(0.0, duration + 0.02, 0.02)
    jitter = np.exp(np.interp(t, knots, rng.normal(0.0, 0.012, knots.size)))
    vib = 1.0 + tremolo * np.sin(2 * np.pi * 9.0 * t + rng.uniform(0, 2 * np.pi))
    f0_t = f0 * np.exp(slope * (t / duration - 0.5)) * vib * jitter
    cycles = np.cumsum(f0_t, dtype=np.float64) / SAMPLE_RATE + rng.uniform(0, 1)
    theta = (2 * np.pi * np.mod(cycles, 1.0)).astype(np.float32)
    k = max(1, min(60, int(7600.0 / f0_t.max())))
    r = rolloff
    voice = (
        r * np.sin(theta)
        - r ** (k + 1) * np.sin(2 * np.pi * np.mod((k + 1) * cycles, 1.0).astype(np.float32))
        + r ** (k + 2) * np.sin(2 * np.pi * np.mod(k * cycles, 1.0).astype(np.float32))
    ) / (1 - 2 * r * np.cos(theta) + r * r)
    n_fft = 1 << (n - 1).bit_length()
    spec = np.fft.rfft(voice, n_fft)
    freq = np.fft.rfftfreq(n_fft, 1.0 / SAMPLE_RATE).astype(np.float32)
    envelope = 0.25 + sum(
        np.exp(-0.5 * ((freq - fc) / (90.0 + 0.06 * fc)) ** 2) / (i + 1)
        for i, fc in enumerate(formants)
    )
    voice = np.fft.irfft(spec * envelope, n_fft)[:n]
    syllables = (0.5 - 0.5 * np.cos(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))) ** 1.5
    fade = np.minimum(1.0, np.minimum(t, duration - t) / 0.02)
    voice *= energy * syllables * fade / (np.sqrt(np.mean(voice**2)) + 1e-9)
    y = 0.35 * voice + np.float32(noise) * rng.standard_normal(n, dtype=np.float32)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def _mix(neutral: float, target: float, s: float, log: bool) -> float:
    if log:
        return float(np.exp(np.log(neutral) + s * (np.log(target) - np.log(neutral))))
    return neutral + s * (target - neutral)


def plan_corpus(
    seed: int,
    n_train_per_group: int,
    n_eval_per_group: int,
    weak_groups: dict[tuple[str, str], float],
    weak_train_fraction: float,
) -> pd.DataFrame:
    """Rows of the corpus (no audio yet): labels, speakers, dialogues, utt ids.

    Emotions are balanced within each (split, language, gender); speakers are disjoint across
    splits; utterances of a (split, language) are shuffled and cut into dialogues.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    rows = []
    for split in SPLITS:
        for lang in LANGUAGES:
            block = []
            for gender in GENDERS:
                w = weak_groups.get((lang, gender), 0.0)
                n = n_eval_per_group
                if split == "train":
                    n = int(round(n_train_per_group * (1 - (1 - weak_train_fraction) * w)))
                emotions = rng.permutation(np.resize(np.arange(len(EMOTIONS)), n))
                first = sum(SPEAKERS_PER_GROUP[s] for s in SPLITS[: SPLITS.index(split)])
                spk = first + np.arange(n) % SPEAKERS_PER_GROUP[split]
                block += [
                    (gender, EMOTIONS[e], f"{lang}_{gender}{s:02d}")
                    for e, s in zip(emotions, spk, strict=True)
                ]
            order = rng.permutation(len(block))
            for i, j in enumerate(order):
                gender, emotion, speaker = block[j]
                rows.append(
                    {
                        "utt_id": f"{lang}_{split}_{i:04d}",
                        "split": split,
                        "language": lang,
                        "gender": gender,
                        "emotion": emotion,
                        "audio": f"wav/{split}/{lang}_{split}_{i:04d}.wav",
                        "text": "",
                        "speaker": speaker,
                        "dialogue_id": f"{lang}_{split}_d{i // DIALOGUE_LEN:03d}",
                    }
                )
    return pd.DataFrame(rows)


def shortcut_probs(
    shortcut_prob: float, weak_groups: dict[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    """P(the tone is drawn from the true emotion) per (language, gender): q * (1 - w)."""
    return {
        (lang, g): shortcut_prob * (1.0 - weak_groups.get((lang, g), 0.0))
        for lang in LANGUAGES
        for g in GENDERS
    }


def plan_shortcut(df: pd.DataFrame, seed: int, probs: dict[tuple[str, str], float]) -> np.ndarray:
    """Each row's tone emotion: its own emotion with probability probs[group], else uniform.

    At probability 0 the tone is independent of the label; the exact match rate is then 1/K.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    n = len(df)
    informative = rng.random(n)
    uniform = rng.integers(len(EMOTIONS), size=n)
    q = np.array([probs[(lang, g)] for lang, g in zip(df["language"], df["gender"], strict=True)])
    own = df["emotion"].map(EMOTIONS.index).to_numpy()
    return np.where(informative < q, own, uniform)


def tone(rng: np.random.Generator, n: int, hz: float, amplitude: float) -> np.ndarray:
    """A steady sine of `hz` with 20 ms fades (the shortcut cue)."""
    t = np.arange(n, dtype=np.float32) / np.float32(SAMPLE_RATE)
    duration = n / SAMPLE_RATE
    fade = np.minimum(1.0, np.minimum(t, duration - t) / 0.02)
    phase = rng.uniform(0, 2 * np.pi)
    return (amplitude * fade * np.sin(2 * np.pi * hz * t + phase)).astype(np.float32)


def _group_key(language: str, gender: str) -> str:
    return f"{language}_{gender}"


def make_corpus(
    out_dir: str | Path,
    seed: int = 0,
    size: str = "default",
    bias: str = DEFAULT_BIAS,
    n_train_per_group: int | None = None,
    n_eval_per_group: int | None = None,
    weak_groups: dict[tuple[str, str], float] | None = None,
    bias_strength: float | None = None,
    weak_train_fraction: float | None = None,
    weak_noise: float = 1.0,
    shortcut_prob: float | None = None,
    shortcut_amplitude: float | None = None,
    prosody_strength: float = PROSODY_STRENGTH,
    text_cue_prob: float = 0.5,
    min_seconds: float = MIN_SECONDS,
    max_seconds: float = MAX_SECONDS,
) -> Path:
    """Write wav/{split}/*.wav, manifest.csv, ground_truth.json and shortcut.csv into `out_dir`;
    return the manifest path.

    `bias` picks the mechanism's preset (BIAS_PRESETS); any explicit knob overrides it.
    `size` picks (n_train_per_group, n_eval_per_group) from SIZES ("default": 210 train and
    210 dev + 210 test clips per (language, gender); "small": ~170 clips in all); explicit n_*
    override it. `weak_groups` maps (language, gender) to a severity in [0, 1]; {} plants
    nothing. `prosody_strength` scales every group's emotion cues towards neutral (1 = full).
    """
    if bias not in BIAS_PRESETS:
        raise ValueError(f"bias must be one of {', '.join(BIASES)}, got {bias!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(sorted(SIZES))}, got {size!r}")
    preset = BIAS_PRESETS[bias]
    n_train, n_eval = SIZES[size]
    n_train = n_train_per_group if n_train_per_group is not None else n_train
    n_eval = n_eval_per_group if n_eval_per_group is not None else n_eval
    weak = dict(preset.weak_groups if weak_groups is None else weak_groups)
    strength = preset.bias_strength if bias_strength is None else bias_strength
    fraction = preset.weak_train_fraction if weak_train_fraction is None else weak_train_fraction
    q = preset.shortcut_prob if shortcut_prob is None else shortcut_prob
    amp = preset.shortcut_amplitude if shortcut_amplitude is None else shortcut_amplitude
    out = Path(out_dir)
    df = plan_corpus(seed, n_train, n_eval, weak, fraction)
    probs = shortcut_probs(q, weak) if bias == "spurious" else shortcut_probs(q, {})
    tone_idx = plan_shortcut(df, seed, probs)
    has_tone = amp > 0
    speakers = sorted(df["speaker"].unique())
    voice_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    voices = {s: voice_rng.normal(0.0, [0.06, 0.04, 0.05], 3) for s in speakers}
    for split in SPLITS:
        (out / "wav" / split).mkdir(parents=True, exist_ok=True)
    prosody_weak = weak if bias == "underrep" else {}
    noise_weak = weak if bias == "underrep" else {}

    def render(i: int, row: tuple) -> str:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, i]))
        w = prosody_weak.get((row.language, row.gender), 0.0)
        s = prosody_strength * (1.0 - strength * w)
        spread = 1.0 + (weak_noise - 1.0) * noise_weak.get((row.language, row.gender), 0.0)
        neutral, cue = CUES["neutral"], CUES[row.emotion]
        d_f0, d_formant, d_rate = voices[row.speaker]
        formants, tempo = LANGUAGE_VOICE[row.language]
        scale = GENDER_FORMANT_SCALE[row.gender] * np.exp(d_formant)
        clip = synthesize(
            rng,
            duration=float(rng.uniform(min_seconds, max_seconds)),
            f0=GENDER_F0[row.gender]
            * np.exp(d_f0 + rng.normal(0, 0.04 * spread))
            * _mix(neutral.pitch, cue.pitch, s, log=True),
            slope=_mix(neutral.slope, cue.slope, s, log=False) + rng.normal(0, 0.05 * spread),
            rate=tempo
            * np.exp(d_rate + rng.normal(0, 0.07 * spread))
            * _mix(neutral.rate, cue.rate, s, log=True),
            energy=_mix(neutral.energy, cue.energy, s, log=True)
            * np.exp(rng.normal(0, 0.12 * spread)),
            rolloff=float(
                np.clip(_mix(neutral.rolloff, cue.rolloff, s, log=False), 0.3, 0.93)
                + rng.normal(0, 0.02 * spread)
            ),
            tremolo=_mix(neutral.tremolo, cue.tremolo, s, log=False),
            formants=tuple(f * scale for f in formants),
            noise=0.004 * spread**2,
        )
        text = _text(rng, row.language, row.emotion, text_cue_prob)
        if has_tone:
            hz = SHORTCUT_HZ[EMOTIONS[tone_idx[i]]]
            clip = np.clip(clip + tone(rng, clip.size, hz, amp), -1.0, 1.0)
        sf.write(out / row.audio, clip, SAMPLE_RATE, subtype="PCM_16")
        return text

    rows = list(df.itertuples(index=False))
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        texts = list(pool.map(render, range(len(rows)), rows))
    df["text"] = texts
    tone_emotion = [EMOTIONS[k] if has_tone else "" for k in tone_idx]
    shortcut = pd.DataFrame(
        {
            "utt_id": df["utt_id"],
            "split": df["split"],
            "language": df["language"],
            "gender": df["gender"],
            "emotion": df["emotion"],
            "shortcut_emotion": tone_emotion,
            "shortcut_hz": [SHORTCUT_HZ[e] if e else 0.0 for e in tone_emotion],
        }
    )
    with atomic_write(out / SHORTCUT_CSV) as fh:
        shortcut.to_csv(fh, index=False)
    truth = ground_truth(
        df,
        seed=seed,
        bias=bias,
        weak=weak,
        probs=probs if has_tone else {k: 0.0 for k in probs},
        amplitude=amp,
        prosody={
            (lang, g): prosody_strength * (1.0 - strength * prosody_weak.get((lang, g), 0.0))
            for lang in LANGUAGES
            for g in GENDERS
        },
        arguments={
            "size": size,
            "n_train_per_group": n_train,
            "n_eval_per_group": n_eval,
            "bias_strength": strength,
            "weak_train_fraction": fraction,
            "weak_noise": weak_noise,
            "shortcut_prob": q,
            "shortcut_amplitude": amp,
            "prosody_strength": prosody_strength,
            "text_cue_prob": text_cue_prob,
            "min_seconds": min_seconds,
            "max_seconds": max_seconds,
        },
    )
    with atomic_write(out / GROUND_TRUTH) as fh:
        json.dump(truth, fh, indent=2, ensure_ascii=False)
    manifest = out / "manifest.csv"
    write_manifest(df.assign(audio=[str(out / a) for a in df["audio"]]), manifest)
    return manifest


MECHANISMS: dict[str, str] = {
    "spurious": (
        "A steady tone whose frequency names an emotion (SHORTCUT_HZ) is added to every clip; "
        "it names the true emotion with probability p_true (else a uniform one), which is "
        "shortcut_prob in the majority groups and shortcut_prob * (1 - severity) in the weak "
        "ones. The prosodic cue is intact everywhere."
    ),
    "underrep": (
        "The weak groups keep 1 - (1 - weak_train_fraction) * severity of their train clips and "
        "their prosodic cues shrink towards neutral by 1 - bias_strength * severity."
    ),
    "none": "No planted bias: every group has the same cues (the tone is equally informative).",
}


def ground_truth(
    df: pd.DataFrame,
    seed: int,
    bias: str,
    weak: dict[tuple[str, str], float],
    probs: dict[tuple[str, str], float],
    amplitude: float,
    prosody: dict[tuple[str, str], float],
    arguments: dict[str, Any],
) -> dict[str, Any]:
    """The generator's plan as JSON-ready data: what a reader needs to know what was planted."""
    k = len(EMOTIONS)
    sizes = df.groupby(["split", "language", "gender"]).size()
    return {
        "version": SYNTHETIC_VERSION,
        "seed": seed,
        "bias": bias,
        "mechanism": MECHANISMS[bias],
        "weak_groups": [
            {"language": lang, "gender": g, "severity": w} for (lang, g), w in sorted(weak.items())
        ],
        "shortcut": {
            "kind": "tone" if amplitude > 0 else "none",
            "amplitude": amplitude,
            "hz_by_emotion": SHORTCUT_HZ if amplitude > 0 else {},
            "p_true_by_group": {_group_key(*key): v for key, v in probs.items()},
            "expected_match_rate_by_group": {
                _group_key(*key): (v + (1 - v) / k if amplitude > 0 else 0.0)
                for key, v in probs.items()
            },
        },
        "prosody_strength_by_group": {_group_key(*key): v for key, v in prosody.items()},
        "sizes": {
            split: {
                _group_key(lang, g): int(sizes.get((split, lang, g), 0))
                for lang in LANGUAGES
                for g in GENDERS
            }
            for split in SPLITS
        },
        "arguments": arguments,
    }


def twin_folder_name(bias: str, seed: int) -> str:
    """`synthetic-<version>-<generator hash>-<bias>-seed<seed>`: one folder per corpus."""
    return f"synthetic-{SYNTHETIC_VERSION}-{GENERATOR_HASH}-{bias}-seed{seed}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="Directory to write into.")
    parser.add_argument("--seed", type=int, default=0, help="Generator seed.")
    parser.add_argument("--size", choices=sorted(SIZES), default="default", help="Corpus size.")
    parser.add_argument(
        "--bias", choices=BIASES, default=DEFAULT_BIAS, help="Planted bias mechanism."
    )
    args = parser.parse_args(argv)
    manifest = make_corpus(args.out, seed=args.seed, size=args.size, bias=args.bias)
    df = read_manifest(manifest)
    print(f"wrote {len(df)} clips, {manifest} and {manifest.parent / GROUND_TRUTH}")
    print(data_summary(df).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
