"""The frozen-encoder embedding cache, the SER dataset and its collate function.

With the audio tower and projector frozen (model.py), `projector(audio_tower(mel))` is a fixed
function of each clip, so it is computed once per (backbone, audio set) and shared by every
trial. On disk a cache is plain numpy: `embeds.npy` (all clips' frames concatenated, (N, H)),
`offsets.npy` ((n+1,) int64) and `index.json` (utt_id order, fingerprint, sha256 of both
arrays). Readers memory-map the arrays with `allow_pickle=False`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from ermgap_ray.data.schema import (
    EMOTIONS,
    GENDERS,
    LANGUAGES,
    MODALITIES,
    SAMPLE_RATE,
    stratum_index,
)
from ermgap_ray.errors import CacheError
from ermgap_ray.fs import atomic_dir, cache_root
from ermgap_ray.model import (
    AUDIO_TOKEN,
    BackboneAssets,
    load_audio_front_end,
    load_backbone_assets,
    num_audio_tokens,
    prompt_parts,
    validate_backbone,
)

log = logging.getLogger(__name__)

CACHE_VERSION = 1
EMBEDS_FILE = "embeds.npy"
OFFSETS_FILE = "offsets.npy"
INDEX_FILE = "index.json"
SHARD_META = "shard.json"
_FULL_HASH_LIMIT = 256 * 2**20
_PARTIAL_HASH_BYTES = 4 * 2**20


def load_audio(path: str | Path) -> np.ndarray:
    """A clip as float32 mono at SAMPLE_RATE; multi-channel audio is averaged to mono."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise ValueError(f"cannot read audio file {path}: {err}") from err
    if rate != SAMPLE_RATE:
        raise ValueError(f"audio file {path} has sample rate {rate}, expected {SAMPLE_RATE}")
    if data.shape[0] == 0:
        raise ValueError(f"audio file {path} is empty")
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def num_feature_frames(num_samples: Any, feature_extractor: Any) -> Any:
    """Valid mel frames L of a clip: ceil(min(n, window) / hop).

    WhisperFeatureExtractor's attention mask is the padded sample mask taken every `hop_length`
    samples, so it counts ceil(n / hop) frames, capped by the window's nb_max_frames.
    """
    hop = feature_extractor.hop_length
    frames = -(-np.asarray(num_samples, dtype=np.int64) // hop)
    return np.minimum(frames, feature_extractor.nb_max_frames)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_digest(path: Path) -> str:
    """Content hash of a weights file; above 256 MiB, size + mtime + head/tail bytes.

    Hashing a 15 GB checkpoint on every trial costs minutes; a changed large checkpoint still
    changes its mtime or its edge bytes, and a false "stale" only costs a rebuild.
    """
    stat = path.stat()
    if stat.st_size <= _FULL_HASH_LIMIT:
        return _sha256(path)
    digest = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        digest.update(f.read(_PARTIAL_HASH_BYTES))
        f.seek(-_PARTIAL_HASH_BYTES, os.SEEK_END)
        digest.update(f.read())
    return digest.hexdigest()


def _audio_records(records: pd.DataFrame) -> pd.DataFrame:
    """One row per utterance, sorted by utt_id: the cache's (modality-independent) content."""
    audio = records[["utt_id", "audio"]].drop_duplicates("utt_id")
    return audio.sort_values("utt_id", kind="stable").reset_index(drop=True)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive fcntl lock so concurrent builders of one cache wait instead of colliding."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class EmbeddingCache:
    """Read side of a cache directory: memory-mapped projector outputs keyed by utt_id."""

    def __init__(self, path: Path | str, verify: bool = True) -> None:
        self.path = Path(path)
        index_file = self.path / INDEX_FILE
        if not index_file.is_file():
            raise CacheError(f"incomplete cache (no {INDEX_FILE}): {self.path}")
        try:
            self.index = json.loads(index_file.read_text())
        except json.JSONDecodeError as err:
            raise CacheError(f"corrupt {INDEX_FILE} in {self.path}: {err}") from err
        if verify:
            self.verify()
        try:
            self.embeds = np.load(self.path / EMBEDS_FILE, mmap_mode="r", allow_pickle=False)
            self.offsets = np.load(self.path / OFFSETS_FILE, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as err:
            raise CacheError(f"corrupt arrays in {self.path}: {err}") from err
        try:
            self.utt_ids: list[str] = list(self.index["utt_ids"])
            self.fingerprint_value = str(self.index["fingerprint"])
        except (KeyError, TypeError) as err:
            raise CacheError(f"corrupt {INDEX_FILE} in {self.path}: missing {err}") from err
        self._position = {u: i for i, u in enumerate(self.utt_ids)}
        if len(self.offsets) != len(self.utt_ids) + 1 or self.offsets[-1] != len(self.embeds):
            raise CacheError(f"offsets do not match embeddings in {self.path}")

    def __reduce__(self) -> tuple[type[EmbeddingCache], tuple[Path, bool]]:
        """Pickle as the path (re-mapped, not copied) so Ray/DataLoader workers share the file."""
        return (EmbeddingCache, (self.path, False))

    @property
    def hidden_size(self) -> int:
        return int(self.embeds.shape[1])

    def verify(self) -> None:
        """Raise CacheError unless both arrays match the sha256 recorded at build time."""
        for name, expected in self.index.get("sha256", {}).items():
            file = self.path / name
            if not file.is_file() or _sha256(file) != expected:
                raise CacheError(f"checksum mismatch for {file}")
        if set(self.index.get("sha256", {})) != {EMBEDS_FILE, OFFSETS_FILE}:
            raise CacheError(f"{INDEX_FILE} in {self.path} lacks checksums")

    def __len__(self) -> int:
        return len(self.utt_ids)

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self._position

    def length(self, utt_id: str) -> int:
        """Number of audio tokens A of a clip (its placeholder count in the prompt)."""
        i = self._position[utt_id]
        return int(self.offsets[i + 1] - self.offsets[i])

    def get(self, utt_id: str) -> np.ndarray:
        """(A, H) read-only memory-mapped view of one clip's projector outputs."""
        i = self._position[utt_id]
        return self.embeds[self.offsets[i] : self.offsets[i + 1]]

    @staticmethod
    def fingerprint(backbone_dir: Path | str, records_df: pd.DataFrame) -> str:
        """sha256 of what the cached values depend on, and nothing modality-specific.

        Backbone: config.json, preprocessor_config.json, and every weights file's name + digest.
        Audio: each (utt_id, path, size, mtime) sorted by utt_id; text, labels and splits are
        left out so audio and audio+text runs share one cache.
        """
        backbone_dir = validate_backbone(backbone_dir)
        digest = hashlib.sha256(f"ermgap-embedding-cache-v{CACHE_VERSION}".encode())
        for name in ("config.json", "preprocessor_config.json"):
            file = backbone_dir / name
            digest.update(name.encode() + (file.read_bytes() if file.is_file() else b"-"))
        weights = sorted(backbone_dir.glob("*.safetensors")) + sorted(backbone_dir.glob("*.bin"))
        for file in weights:
            digest.update(f"{file.name}:{_weights_digest(file)}".encode())
        for utt_id, audio in _audio_records(records_df).itertuples(index=False):
            try:
                stat = os.stat(audio)
            except OSError as err:
                raise ValueError(f"audio file of {utt_id} is missing: {audio}") from err
            digest.update(f"\0{utt_id}\0{audio}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    @classmethod
    def build_or_load(
        cls,
        backbone_dir: Path | str,
        records_df: pd.DataFrame,
        cache_root: Path | str | None = None,
        progress: bool = True,
        num_shards: int = 1,
        batch_size: int = 16,
    ) -> EmbeddingCache:
        """Load the cache for (backbone, records) if it verifies, else (re)build it.

        A corrupt cache (checksum, unreadable files) or a stale one (fingerprint mismatch) is
        logged and rebuilt, never used. Builders of the same cache serialise on a file lock.
        """
        fingerprint = cls.fingerprint(backbone_dir, records_df)
        cache_dir = cache_dir_for(fingerprint, cache_root)
        with _file_lock(_lock_path(cache_dir)):
            if cache_dir.exists():
                try:
                    cache = cls(cache_dir)
                    if cache.fingerprint_value != fingerprint:
                        raise CacheError(f"stale cache (fingerprint mismatch): {cache_dir}")
                    log.info("embedding cache hit: %s", cache_dir)
                    return cache
                except CacheError as err:
                    log.warning("rebuilding embedding cache: %s", err)
                    _remove_dir(cache_dir)
            log.info("building embedding cache %s (%d shards)", cache_dir, num_shards)
            with tempfile.TemporaryDirectory(prefix=".shards.", dir=cache_dir.parent) as tmp:
                shards = [
                    build_shard(
                        backbone_dir,
                        records_df,
                        i,
                        num_shards,
                        Path(tmp),
                        batch_size,
                        progress,
                        fingerprint,
                    )
                    for i in range(num_shards)
                ]
                return _merge(shards, cache_dir, fingerprint)


build_or_load = EmbeddingCache.build_or_load


def cache_dir_for(fingerprint: str, cache_root_dir: Path | str | None = None) -> Path:
    """`<root>/<fingerprint[:24]>`: one directory per (backbone, audio set)."""
    root = Path(cache_root_dir) if cache_root_dir is not None else cache_root() / "embeddings"
    return root / fingerprint[:24]


def _lock_path(cache_dir: Path) -> Path:
    return cache_dir.parent / f".{cache_dir.name}.lock"


def _remove_dir(path: Path) -> None:
    """Rename aside first, so a crash mid-delete never leaves a half cache under the real name."""
    trash = path.with_name(f".{path.name}.trash.{os.getpid()}")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def build_shard(
    backbone_dir: Path | str,
    records_df: pd.DataFrame,
    shard_index: int,
    num_shards: int,
    out_dir: Path | str,
    batch_size: int = 16,
    progress: bool = False,
    fingerprint: str | None = None,
    device: str | torch.device | None = None,
) -> Path:
    """Encode shard `shard_index` of `num_shards` (contiguous utt_id blocks) into `out_dir`.

    Independent shards let a sweep fan the encoding out over Ray workers, then `merge_shards`.
    Array sizes come from num_audio_tokens(num_feature_frames(n)), checked against the encoder.
    The encoder runs in fp32 on `device` (default: CUDA if present), so a bf16 trainer's
    uncached path differs from the cache by bf16 rounding only.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    fingerprint = fingerprint or EmbeddingCache.fingerprint(backbone_dir, records_df)
    audio = _audio_records(records_df)
    rows = np.array_split(np.arange(len(audio)), num_shards)[shard_index]
    part = audio.iloc[rows]
    shard_dir = Path(out_dir) / f"shard-{shard_index:05d}-of-{num_shards:05d}"
    meta_file = shard_dir / SHARD_META
    if meta_file.is_file() and json.loads(meta_file.read_text())["fingerprint"] == fingerprint:
        return shard_dir

    assets = load_backbone_assets(backbone_dir)
    extractor = assets.feature_extractor
    front_end = load_audio_front_end(assets.path, device=device)
    samples = np.array([sf.info(str(p)).frames for p in part["audio"]], dtype=np.int64)
    lengths = num_audio_tokens(num_feature_frames(samples, extractor))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    hidden = int(assets.config.text_config.hidden_size)

    with atomic_dir(shard_dir, replace=True) as tmp:
        embeds = np.lib.format.open_memmap(
            tmp / EMBEDS_FILE, mode="w+", dtype=np.float32, shape=(int(offsets[-1]), hidden)
        )
        starts = range(0, len(part), batch_size)
        from tqdm.auto import tqdm

        for start in tqdm(starts, desc=f"encoding shard {shard_index}", disable=not progress):
            paths = part["audio"].iloc[start : start + batch_size]
            feats = extractor(
                [load_audio(p) for p in paths],
                sampling_rate=SAMPLE_RATE,
                return_attention_mask=True,
                return_tensors="pt",
            )
            with torch.no_grad():
                out, mask = front_end(feats["input_features"], feats["attention_mask"])
            got = mask.sum(-1).cpu().numpy()
            want = lengths[start : start + len(paths)]
            if not np.array_equal(got, want):
                raise CacheError(f"encoder gave {got.tolist()} audio tokens, expected {want}")
            embeds[offsets[start] : offsets[start + len(paths)]] = out[mask].float().cpu().numpy()
        embeds.flush()
        del embeds
        np.save(tmp / OFFSETS_FILE, offsets, allow_pickle=False)
        meta = {"fingerprint": fingerprint, "utt_ids": part["utt_id"].tolist()}
        (tmp / SHARD_META).write_text(json.dumps(meta))
    return shard_dir


def merge_shards(
    shard_dirs: Sequence[Path | str], cache_dir: Path | str, fingerprint: str
) -> EmbeddingCache:
    """Concatenate shards (in the given order) into the cache at `cache_dir`, under its lock."""
    cache_dir = Path(cache_dir)
    with _file_lock(_lock_path(cache_dir)):
        if cache_dir.exists():
            _remove_dir(cache_dir)
        return _merge([Path(s) for s in shard_dirs], cache_dir, fingerprint)


def _merge(shard_dirs: Sequence[Path], cache_dir: Path, fingerprint: str) -> EmbeddingCache:
    metas = [json.loads((s / SHARD_META).read_text()) for s in shard_dirs]
    if any(m["fingerprint"] != fingerprint for m in metas):
        raise CacheError(f"shards in {shard_dirs[0].parent} belong to another fingerprint")
    arrays = [np.load(s / EMBEDS_FILE, mmap_mode="r", allow_pickle=False) for s in shard_dirs]
    parts = [np.load(s / OFFSETS_FILE, allow_pickle=False) for s in shard_dirs]
    hidden = arrays[0].shape[1]
    offsets = np.concatenate(
        [[0]]
        + [
            p[1:] + base
            for p, base in zip(parts, np.cumsum([0] + [p[-1] for p in parts[:-1]]), strict=True)
        ]
    ).astype(np.int64)
    with atomic_dir(cache_dir, replace=True) as tmp:
        out = np.lib.format.open_memmap(
            tmp / EMBEDS_FILE, mode="w+", dtype=np.float32, shape=(int(offsets[-1]), hidden)
        )
        start = 0
        for array in arrays:
            out[start : start + len(array)] = array
            start += len(array)
        out.flush()
        del out
        np.save(tmp / OFFSETS_FILE, offsets, allow_pickle=False)
        index = {
            "version": CACHE_VERSION,
            "fingerprint": fingerprint,
            "utt_ids": [u for m in metas for u in m["utt_ids"]],
            "num_frames": int(offsets[-1]),
            "hidden_size": int(hidden),
            "dtype": "float32",
            "sha256": {name: _sha256(tmp / name) for name in (EMBEDS_FILE, OFFSETS_FILE)},
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index))
    return EmbeddingCache(cache_dir, verify=False)


def _index_of(values: pd.Series, vocabulary: Sequence[str], column: str) -> np.ndarray:
    codes = pd.Index(list(vocabulary)).get_indexer(values).astype(np.int64)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise ValueError(f"row {row}: unknown {column} {values.iloc[row]!r}, not in {vocabulary}")
    return codes


class SERDataset(Dataset):
    """Records -> prompt ids, labels, strata, genders, and cached embeddings or mel features.

    Prompts are tokenised once here, in one batched tokenizer call: special tokens split the
    text, so `prefix + [AUDIO]*A + suffix` equals tokenising the whole `build_prompt` string.
    """

    def __init__(
        self,
        records_df: pd.DataFrame,
        backbone: Path | str | BackboneAssets | None,
        modality: str,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self.assets = (
            backbone if isinstance(backbone, BackboneAssets) else load_backbone_assets(backbone)
        )
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        self.records = records_df.reset_index(drop=True)
        self.modality = modality
        self.cache = cache
        self.labels = _index_of(self.records["emotion"], EMOTIONS, "emotion")
        self.genders = _index_of(self.records["gender"], GENDERS, "gender")
        self.strata = stratum_index(
            _index_of(self.records["language"], LANGUAGES, "language"), modality
        )
        self.utt_ids = self.records["utt_id"].astype(str).tolist()
        self.audio_paths = self.records["audio"].astype(str).tolist()
        if cache is not None:
            missing = [u for u in self.utt_ids if u not in cache]
            if missing:
                raise CacheError(
                    f"{len(missing)} utterances not in cache {cache.path}, e.g. {missing[0]!r}"
                )
            lengths = np.array([cache.length(u) for u in self.utt_ids], dtype=np.int64)
        else:
            samples = np.array([sf.info(p).frames for p in self.audio_paths], dtype=np.int64)
            lengths = num_audio_tokens(num_feature_frames(samples, self.assets.feature_extractor))
        self.num_audio_tokens = lengths
        self.input_ids = self._tokenise(lengths)
        # Tokens per prompt, audio placeholders included: what a batch holding the row pads to.
        self.prompt_lengths = np.array([len(ids) for ids in self.input_ids], dtype=np.int64)

    def _tokenise(self, lengths: np.ndarray) -> list[np.ndarray]:
        tokenizer = self.assets.tokenizer
        texts = self.records["text"].fillna("").astype(str) if "text" in self.records else None
        prefix, _ = prompt_parts(self.modality, None)
        prefix_ids = np.array(tokenizer.encode(prefix, add_special_tokens=False), dtype=np.int64)
        if self.modality == "audio" or texts is None:
            suffix = prompt_parts(self.modality, "")[1]
            suffixes = [tokenizer.encode(suffix, add_special_tokens=False)] * len(lengths)
        else:
            strings = [prompt_parts(self.modality, t)[1] for t in texts]
            suffixes = tokenizer(strings, add_special_tokens=False)["input_ids"]
        audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
        return [
            np.concatenate([prefix_ids, np.full(n, audio_id, dtype=np.int64), np.asarray(s)])
            for n, s in zip(lengths, suffixes, strict=True)
        ]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "input_ids": torch.from_numpy(self.input_ids[i]),
            "pad_id": self.assets.pad_id,
            "label": int(self.labels[i]),
            "stratum": int(self.strata[i]),
            "gender": int(self.genders[i]),
            "row": i,
        }
        if self.cache is not None:
            item["audio_embeds"] = torch.from_numpy(np.array(self.cache.get(self.utt_ids[i])))
        else:
            feats = self.assets.feature_extractor(
                load_audio(self.audio_paths[i]),
                sampling_rate=SAMPLE_RATE,
                return_attention_mask=True,
                return_tensors="np",
            )
            item["input_features"] = torch.from_numpy(feats["input_features"][0])
            item["feature_attention_mask"] = torch.from_numpy(
                feats["attention_mask"][0].astype(np.int64)
            )
        return item


def collate_ser(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Right-pad prompts with the pad id and stack audio into the trainer's batch contract."""
    ids = [it["input_ids"].long() for it in items]
    batch = {
        "input_ids": pad_sequence(ids, batch_first=True, padding_value=int(items[0]["pad_id"])),
        "attention_mask": pad_sequence([torch.ones_like(i) for i in ids], batch_first=True),
        "labels": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "strata": torch.tensor([it["stratum"] for it in items], dtype=torch.long),
        "genders": torch.tensor([it["gender"] for it in items], dtype=torch.long),
        "row": torch.tensor([it["row"] for it in items], dtype=torch.long),
    }
    if "audio_embeds" in items[0]:
        embeds = [it["audio_embeds"].float() for it in items]
        batch["audio_embeds"] = pad_sequence(embeds, batch_first=True)
        batch["audio_mask"] = pad_sequence(
            [torch.ones(len(e), dtype=torch.bool) for e in embeds], batch_first=True
        )
    else:
        batch["input_features"] = torch.stack([it["input_features"] for it in items])
        batch["feature_attention_mask"] = torch.stack(
            [it["feature_attention_mask"] for it in items]
        )
    return batch
