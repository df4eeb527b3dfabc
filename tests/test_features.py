"""Embedding cache (build, verify, rebuild, shards), audio loading, SERDataset and collate."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from ermgap_ray.data.schema import EMOTIONS, stratum_index
from ermgap_ray.features import (
    EMBEDS_FILE,
    INDEX_FILE,
    OFFSETS_FILE,
    CacheError,
    EmbeddingCache,
    SERDataset,
    build_or_load,
    build_shard,
    cache_dir_for,
    collate_ser,
    load_audio,
    merge_shards,
    num_feature_frames,
)
from ermgap_ray.model import (
    SERModel,
    build_prompt,
    load_backbone_assets,
    materialize_tiny_backbone,
    num_audio_tokens,
)

SECONDS = [1.0, 1.37, 2.0, 2.91, 3.0, 1.5, 2.23, 1.1, 2.6, 1.8, 2.45, 4.7]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize_tiny_backbone(tmp_path_factory.mktemp("bb") / "tiny")


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """12 real 16 kHz wav tones of 1-4.7 s; the last one is longer than the 4 s window."""
    root = tmp_path_factory.mktemp("wav")
    rows = []
    for i, seconds in enumerate(SECONDS):
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (120 + 40 * i) * t) * (1 + 0.5 * np.sin(3 * t))
        path = root / f"utt{i:02d}.wav"
        sf.write(path, wave.astype(np.float32), 16000)
        rows.append(
            {
                "utt_id": f"utt{i:02d}",
                "split": "train",
                "language": ("en", "ja", "de")[i % 3],
                "gender": ("F", "M")[i % 2],
                "emotion": EMOTIONS[i % 7],
                "audio": str(path),
                "text": ("so happy", "本当に怖い", "Ich bin wütend", "")[i % 4],
                "speaker": f"s{i % 4}",
                "dialogue_id": i // 3,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cache(backbone: Path, records: pd.DataFrame, tmp_path_factory) -> EmbeddingCache:
    return build_or_load(backbone, records, tmp_path_factory.mktemp("cache"), progress=False)


def test_load_audio(tmp_path: Path, records: pd.DataFrame) -> None:
    wave = load_audio(records["audio"][0])
    assert wave.dtype == np.float32 and wave.shape == (16000,)
    stereo = np.stack([np.full(800, 0.2), np.full(800, 0.4)], axis=1)
    sf.write(tmp_path / "stereo.wav", stereo, 16000)
    assert np.allclose(load_audio(tmp_path / "stereo.wav"), 0.3, atol=1e-4)
    sf.write(tmp_path / "rate.wav", np.zeros(800), 8000)
    with pytest.raises(ValueError, match=r"rate\.wav has sample rate 8000"):
        load_audio(tmp_path / "rate.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav at all")
    with pytest.raises(ValueError, match=r"junk\.wav"):
        load_audio(tmp_path / "junk.wav")


def test_num_feature_frames_matches_whisper_mask(backbone: Path) -> None:
    extractor = load_backbone_assets(backbone).feature_extractor
    samples = [1, 159, 160, 161, 16000, 36_817, 63_999, 64_000, 64_001, 90_000]
    masks = [
        extractor(np.zeros(n, np.float32), sampling_rate=16000, return_attention_mask=True)[
            "attention_mask"
        ][0].sum()
        for n in samples
    ]
    assert num_feature_frames(samples, extractor).tolist() == masks
    assert masks[:4] == [1, 1, 1, 2] and masks[-1] == 400


def test_cache_layout_and_values(
    cache: EmbeddingCache, backbone: Path, records: pd.DataFrame
) -> None:
    assert len(cache) == 12 and cache.hidden_size == 64
    embeds = np.load(cache.path / EMBEDS_FILE, allow_pickle=False)
    offsets = np.load(cache.path / OFFSETS_FILE, allow_pickle=False)
    index = json.loads((cache.path / INDEX_FILE).read_text())
    assert embeds.dtype == np.float32 and offsets[0] == 0 and offsets[-1] == len(embeds)
    assert index["utt_ids"] == sorted(records["utt_id"]) and len(index["sha256"]) == 2
    frames = np.minimum([-(-int(16000 * s) // 160) for s in SECONDS], 400)
    assert [cache.length(u) for u in records["utt_id"]] == num_audio_tokens(frames).tolist()
    assert cache.length("utt11") == 100
    model = SERModel.from_backbone(backbone)
    assets = model.assets
    waves = [load_audio(p) for p in records["audio"][:3]]
    feats = assets.feature_extractor(
        waves, sampling_rate=16000, return_attention_mask=True, return_tensors="pt"
    )
    for utt_id, encoded in zip(
        records["utt_id"][:3],
        model.encode_audio(feats["input_features"], feats["attention_mask"]),
        strict=True,
    ):
        assert np.array_equal(cache.get(utt_id), encoded.numpy())


def test_cache_pickles_by_path(cache: EmbeddingCache) -> None:
    payload = pickle.dumps(cache)
    assert len(payload) < 2_000 < cache.embeds.nbytes
    clone = pickle.loads(payload)
    assert clone.path == cache.path and np.array_equal(clone.get("utt03"), cache.get("utt03"))


def test_cache_hit_reuses_files(cache: EmbeddingCache, backbone, records, caplog) -> None:
    stamp = (cache.path / EMBEDS_FILE).stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="ermgap_ray.features"):
        again = build_or_load(backbone, records, cache.path.parent, progress=False)
    assert again.path == cache.path and "cache hit" in caplog.text
    assert (cache.path / EMBEDS_FILE).stat().st_mtime_ns == stamp


def test_fingerprint_ignores_modality_fields_but_not_audio(
    backbone: Path, records: pd.DataFrame, tmp_path: Path
) -> None:
    base = EmbeddingCache.fingerprint(backbone, records)
    shuffled = records.sample(frac=1.0, random_state=0).assign(text="other", split="test")
    assert EmbeddingCache.fingerprint(backbone, shuffled) == base
    assert EmbeddingCache.fingerprint(backbone, records.iloc[:-1]) != base
    moved = records.copy()
    moved.loc[0, "audio"] = str(tmp_path / "copy.wav")
    shutil.copy(records["audio"][0], moved.loc[0, "audio"])
    assert EmbeddingCache.fingerprint(backbone, moved) != base


def test_corrupted_cache_is_rebuilt(
    backbone: Path, records: pd.DataFrame, tmp_path: Path, caplog
) -> None:
    first = build_or_load(backbone, records, tmp_path, progress=False)
    original = np.array(first.embeds)
    del first
    path = cache_dir_for(EmbeddingCache.fingerprint(backbone, records), tmp_path)
    raw = bytearray((path / EMBEDS_FILE).read_bytes())
    raw[-7:-1] = bytes(b ^ 0xFF for b in raw[-7:-1])
    (path / EMBEDS_FILE).write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="checksum"):
        EmbeddingCache(path)
    with caplog.at_level(logging.WARNING, logger="ermgap_ray.features"):
        rebuilt = build_or_load(backbone, records, tmp_path, progress=False)
    assert "rebuilding" in caplog.text and "checksum" in caplog.text
    rebuilt.verify()
    assert np.array_equal(np.array(rebuilt.embeds), original)


def test_changed_backbone_gets_a_fresh_cache(
    backbone: Path, records: pd.DataFrame, tmp_path: Path, caplog
) -> None:
    own = shutil.copytree(backbone, tmp_path / "bb")
    old = build_or_load(own, records, tmp_path / "c", progress=False)
    other = materialize_tiny_backbone(tmp_path / "seed1", seed=1)
    shutil.copy(other / "model.safetensors", own / "model.safetensors")
    with caplog.at_level(logging.INFO, logger="ermgap_ray.features"):
        new = build_or_load(own, records, tmp_path / "c", progress=False)
    assert "building" in caplog.text
    assert new.path != old.path and new.fingerprint_value != old.fingerprint_value
    assert not np.array_equal(new.get("utt00"), old.get("utt00"))


def test_stale_fingerprint_in_index_is_rebuilt(
    backbone: Path, records: pd.DataFrame, tmp_path: Path, caplog
) -> None:
    built = build_or_load(backbone, records, tmp_path, progress=False)
    index = json.loads((built.path / INDEX_FILE).read_text())
    index["fingerprint"] = "0" * 64
    (built.path / INDEX_FILE).write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger="ermgap_ray.features"):
        again = build_or_load(backbone, records, tmp_path, progress=False)
    assert "stale" in caplog.text
    assert again.fingerprint_value == EmbeddingCache.fingerprint(backbone, records)


def test_sharded_build_equals_single_build(
    cache: EmbeddingCache, backbone: Path, records: pd.DataFrame, tmp_path: Path
) -> None:
    fingerprint = EmbeddingCache.fingerprint(backbone, records)
    shards = [build_shard(backbone, records, i, 3, tmp_path / "shards") for i in range(3)]
    merged = merge_shards(shards, tmp_path / "merged", fingerprint)
    merged.verify()
    assert merged.utt_ids == cache.utt_ids
    assert np.array_equal(np.array(merged.embeds), np.array(cache.embeds))
    assert np.array_equal(np.array(merged.offsets), np.array(cache.offsets))
    via_api = build_or_load(backbone, records, tmp_path / "api", progress=False, num_shards=5)
    assert np.array_equal(np.array(via_api.embeds), np.array(cache.embeds))


def test_concurrent_builders_share_one_build(
    backbone: Path, records: pd.DataFrame, tmp_path: Path, caplog
) -> None:
    with caplog.at_level(logging.INFO, logger="ermgap_ray.features"):
        with ThreadPoolExecutor(2) as pool:
            futures = [
                pool.submit(build_or_load, backbone, records, tmp_path, False) for _ in range(2)
            ]
            paths = {f.result().path for f in futures}
    assert len(paths) == 1
    assert caplog.text.count("building embedding cache") == 1
    assert caplog.text.count("cache hit") == 1


@pytest.mark.parametrize("modality", ["audio", "audio+text"])
def test_dataset_prompts_and_targets(
    backbone: Path, records: pd.DataFrame, cache: EmbeddingCache, modality: str
) -> None:
    tokenizer = load_backbone_assets(backbone).tokenizer
    cached = SERDataset(records, backbone, modality, cache)
    uncached = SERDataset(records, backbone, modality, None)
    assert np.array_equal(cached.num_audio_tokens, uncached.num_audio_tokens)
    for i in (0, 3, 11):
        prompt = build_prompt(modality, records["text"][i], int(cached.num_audio_tokens[i]))
        expected = tokenizer.encode(prompt, add_special_tokens=False)
        assert cached[i]["input_ids"].tolist() == expected
        assert uncached[i]["input_ids"].tolist() == expected
    assert cached.labels.tolist() == [i % 7 for i in range(12)]
    assert cached.genders.tolist() == [i % 2 for i in range(12)]
    assert cached.strata.tolist() == [stratum_index(i % 3, modality) for i in range(12)]
    assert max(cached.strata) == (5 if modality == "audio+text" else 2)


def test_dataset_rejects_unknown_labels(backbone: Path, records: pd.DataFrame) -> None:
    bad = records.assign(emotion=records["emotion"].where(records.index != 4, "boredom"))
    with pytest.raises(ValueError, match="row 4: unknown emotion 'boredom'"):
        SERDataset(bad, backbone, "audio", None)


def test_collate_contract(backbone: Path, records: pd.DataFrame, cache: EmbeddingCache) -> None:
    subset = records.iloc[[4, 0, 11, 2]]
    assets = load_backbone_assets(backbone)
    batch = collate_ser([SERDataset(subset, assets, "audio", cache)[i] for i in range(4)])
    lengths = batch["attention_mask"].sum(-1)
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    assert batch["audio_embeds"].shape == (4, 100, 64) and batch["audio_mask"].dtype == torch.bool
    assert batch["audio_mask"].sum(-1).tolist() == [75, 25, 100, 50]
    for b, n in enumerate(lengths.tolist()):
        assert (batch["input_ids"][b, n:] == assets.pad_id).all()
    assert batch["row"].tolist() == [0, 1, 2, 3]
    assert batch["labels"].tolist() == [4, 0, 4, 2]
    assert batch["genders"].tolist() == [0, 0, 1, 0]
    uncached = collate_ser([SERDataset(subset, assets, "audio", None)[i] for i in range(2)])
    assert uncached["input_features"].shape == (2, 80, 400)
    assert uncached["feature_attention_mask"].sum(-1).tolist() == [300, 100]
    assert "audio_embeds" not in uncached and "input_features" not in batch
    assert pickle.loads(pickle.dumps(collate_ser)) is collate_ser


def _hand_padded(items: list[dict]) -> dict[str, torch.Tensor]:
    """The loop collate_ser replaced with pad_sequence: the reference its output must equal."""
    size, longest = len(items), max(len(it["input_ids"]) for it in items)
    ids = torch.full((size, longest), items[0]["pad_id"], dtype=torch.long)
    mask = torch.zeros((size, longest), dtype=torch.long)
    frames = max(len(it["audio_embeds"]) for it in items)
    embeds = torch.zeros((size, frames, items[0]["audio_embeds"].shape[1]))
    audio_mask = torch.zeros((size, frames), dtype=torch.bool)
    for b, it in enumerate(items):
        ids[b, : len(it["input_ids"])], mask[b, : len(it["input_ids"])] = it["input_ids"], 1
        embeds[b, : len(it["audio_embeds"])] = it["audio_embeds"]
        audio_mask[b, : len(it["audio_embeds"])] = True
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "audio_embeds": embeds,
        "audio_mask": audio_mask,
    }


def test_collate_equals_hand_padding() -> None:
    rng = np.random.default_rng(0)
    items = [
        {
            "input_ids": torch.from_numpy(rng.integers(0, 999, n)),
            "pad_id": 7,
            "label": b % 7,
            "stratum": b % 6,
            "gender": b % 2,
            "row": b,
            "audio_embeds": torch.from_numpy(rng.standard_normal((a, 8)).astype(np.float32)),
        }
        for b, (n, a) in enumerate([(5, 3), (9, 1), (2, 6), (9, 6)])
    ]
    batch, expected = collate_ser(items), _hand_padded(items)
    for key, value in expected.items():
        assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key
    assert batch["labels"].tolist() == [0, 1, 2, 3] and batch["row"].dtype == torch.long


def test_cached_dataset_never_reads_audio(
    backbone: Path, records: pd.DataFrame, tmp_path: Path
) -> None:
    own = records.copy()
    own["audio"] = [str(shutil.copy(p, tmp_path)) for p in records["audio"]]
    built = build_or_load(backbone, own, tmp_path / "c", progress=False)
    for path in own["audio"]:
        Path(path).unlink()
    dataset = SERDataset(own, backbone, "audio+text", built)
    batch = next(iter(DataLoader(dataset, batch_size=12, collate_fn=collate_ser)))
    assert batch["audio_embeds"].shape[0] == 12


def test_cached_logits_equal_uncached_logits(
    backbone: Path, records: pd.DataFrame, cache: EmbeddingCache
) -> None:
    """The cache is only valid if it changes nothing: bit-identical logits on CPU fp32."""
    model = SERModel.from_backbone(backbone, seed=1)
    with torch.no_grad():
        for lora_b in (p for n, p in model.named_parameters() if "lora_B" in n):
            lora_b.normal_(0, 0.1)
    loaders = [
        DataLoader(
            SERDataset(records, backbone, "audio+text", c), batch_size=6, collate_fn=collate_ser
        )
        for c in (cache, None)
    ]
    for cached, uncached in zip(*loaders, strict=True):
        assert len(set(cached["audio_mask"].sum(-1).tolist())) > 3
        with torch.no_grad():
            assert torch.equal(model(cached), model(uncached))
