"""The utterance-record schema that every loader produces and every consumer relies on."""

from __future__ import annotations

LANGUAGES: tuple[str, ...] = ("en", "ja", "de")
GENDERS: tuple[str, ...] = ("F", "M")
EMOTIONS: tuple[str, ...] = ("neutral", "joy", "sadness", "anger", "surprise", "fear", "disgust")
SPLITS: tuple[str, ...] = ("train", "dev", "test")
MODALITIES: tuple[str, ...] = ("audio", "audio+text")
SAMPLE_RATE = 16_000

COLUMNS: tuple[str, ...] = (
    "utt_id",
    "split",
    "language",
    "gender",
    "emotion",
    "audio",
    "text",
    "speaker",
    "dialogue_id",
)


def stratum_index(language_idx, modality: str):
    """Index of the (language, modality) stratum the objective takes gaps within.

    DESIGN.md: in a multimodal run each modality is its own language-stratum, so the key is
    (l, m). Works elementwise on ints, numpy arrays and torch tensors.
    """
    return language_idx + len(LANGUAGES) * MODALITIES.index(modality)
