"""The synthetic MELD-ST twin: real 16 kHz wav files whose prosody carries the emotion.

Each clip is a harmonic "voice" whose f0 level and contour, syllable rate, energy, spectral tilt
and tremolo depend on the emotion; gender moves f0 and the formants; language moves the formants
and the tempo. A planted, language-dependent gender bias makes ERM neglect one group: for each
weak (language, gender) with severity w, the emotion cues shrink towards neutral by
s = 1 - bias_strength * w, noise grows by a factor 1 + (weak_noise - 1) * w, and train holds only
1 - (1 - weak_train_fraction) * w of the group's clips. Dev and test stay balanced per
(language, gender, emotion), so the worst-language gap is measurable.

The defaults (v2) make the weak group mostly *under-represented* with mildly weaker cues: the
bias is then learnable, so ERM shows a clear worst-language gap (about 20 W-F1 points for ja)
that a fairness objective can close without destroying utility. v1's near-silent cues (75%
shrink, 4x noise) gave a gap that could only be closed by degrading every other group.

Output is a function of (version, seed, arguments): the same seed gives the same wav bytes.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from ermgap_ray.data.manifest import read_manifest, write_manifest
from ermgap_ray.data.schema import EMOTIONS, GENDERS, LANGUAGES, SAMPLE_RATE, SPLITS
from ermgap_ray.data.validate import data_summary

SYNTHETIC_VERSION = "v2"
SIZES: dict[str, tuple[int, int]] = {"default": (210, 49), "small": (14, 7)}
DEFAULT_WEAK_GROUPS: dict[tuple[str, str], float] = {("ja", "M"): 1.0, ("de", "F"): 0.35}
SPEAKERS_PER_GROUP: dict[str, int] = {"train": 4, "dev": 2, "test": 2}
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


def make_corpus(
    out_dir: str | Path,
    seed: int = 0,
    size: str = "default",
    n_train_per_group: int | None = None,
    n_eval_per_group: int | None = None,
    weak_groups: dict[tuple[str, str], float] | None = None,
    bias_strength: float = 0.3,
    weak_train_fraction: float = 0.1,
    weak_noise: float = 1.0,
    text_cue_prob: float = 0.5,
    min_seconds: float = 1.0,
    max_seconds: float = 3.0,
) -> Path:
    """Write wav/{split}/*.wav and manifest.csv into `out_dir`; return the manifest path.

    `size` picks (n_train_per_group, n_eval_per_group) from SIZES: "default" gives ~1060 train and
    294 dev + 294 test clips, "small" ~150 clips in all; explicit n_* override it. `weak_groups`
    maps (language, gender) to a bias severity in [0, 1] (default: ja×M 1.0, de×F 0.35); pass {}
    for an unbiased corpus.
    """
    n_train, n_eval = SIZES[size]
    n_train = n_train_per_group if n_train_per_group is not None else n_train
    n_eval = n_eval_per_group if n_eval_per_group is not None else n_eval
    weak = DEFAULT_WEAK_GROUPS if weak_groups is None else weak_groups
    out = Path(out_dir)
    df = plan_corpus(seed, n_train, n_eval, weak, weak_train_fraction)
    speakers = sorted(df["speaker"].unique())
    voice_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    voices = {s: voice_rng.normal(0.0, [0.06, 0.04, 0.05], 3) for s in speakers}
    for split in SPLITS:
        (out / "wav" / split).mkdir(parents=True, exist_ok=True)

    def render(i: int, row: tuple) -> str:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2, i]))
        w = weak.get((row.language, row.gender), 0.0)
        s = 1.0 - bias_strength * w
        spread = 1.0 + (weak_noise - 1.0) * w
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
        sf.write(out / row.audio, clip, SAMPLE_RATE, subtype="PCM_16")
        return _text(rng, row.language, row.emotion, text_cue_prob)

    rows = list(df.itertuples(index=False))
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        texts = list(pool.map(render, range(len(rows)), rows))
    df["text"] = texts
    manifest = out / "manifest.csv"
    write_manifest(df.assign(audio=[str(out / a) for a in df["audio"]]), manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="Directory to write into.")
    parser.add_argument("--seed", type=int, default=0, help="Generator seed.")
    parser.add_argument("--size", choices=sorted(SIZES), default="default", help="Corpus size.")
    args = parser.parse_args(argv)
    manifest = make_corpus(args.out, seed=args.seed, size=args.size)
    df = read_manifest(manifest)
    print(f"wrote {len(df)} clips and {manifest}")
    print(data_summary(df).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
