"""Tiny Qwen2-Audio materialisation, backbone resolution, verbalizer and LoRA placement."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2AudioForConditionalGeneration,
    WhisperFeatureExtractor,
)

from ermgap_ray.data.schema import EMOTIONS
from ermgap_ray.model import (
    AUDIO_TOKEN,
    BackboneError,
    SERModel,
    audio_window_seconds,
    build_prompt,
    checkpoint_problem,
    default_backbone_dir,
    label_token_ids,
    load_backbone_assets,
    materialize_tiny_backbone,
    num_audio_tokens,
    resolve_backbone,
    start_compiler_probe,
    trainable_parameters,
)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return materialize_tiny_backbone(tmp_path_factory.mktemp("bb") / "tiny")


@pytest.fixture(scope="module")
def assets(backbone: Path):
    return load_backbone_assets(backbone)


def _digests(path: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir())}


def _batch(assets, seconds: list[float], modality: str = "audio") -> dict[str, torch.Tensor]:
    """Padded prompts for random clips of the given lengths, as the uncached path sees them."""
    rng = np.random.default_rng(0)
    clips = [0.1 * rng.standard_normal(int(16000 * s)).astype(np.float32) for s in seconds]
    feats = assets.feature_extractor(
        clips, sampling_rate=16000, return_attention_mask=True, return_tensors="pt"
    )
    counts = num_audio_tokens(feats["attention_mask"].sum(-1))
    ids = [
        assets.tokenizer.encode(build_prompt(modality, "oh wow", int(n)), add_special_tokens=False)
        for n in counts
    ]
    longest = max(map(len, ids))
    input_ids = torch.full((len(ids), longest), assets.pad_id)
    attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for b, row in enumerate(ids):
        input_ids[b, : len(row)] = torch.tensor(row)
        attention_mask[b, : len(row)] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "input_features": feats["input_features"],
        "feature_attention_mask": feats["attention_mask"],
    }


def test_materialise_is_idempotent_and_deterministic(backbone: Path, tmp_path: Path) -> None:
    before = {f.name: f.stat().st_mtime_ns for f in backbone.iterdir()}
    assert materialize_tiny_backbone(backbone) == backbone
    assert {f.name: f.stat().st_mtime_ns for f in backbone.iterdir()} == before
    twin = materialize_tiny_backbone(tmp_path / "twin", seed=0)
    assert _digests(twin) == _digests(backbone)
    other = materialize_tiny_backbone(tmp_path / "other", seed=1)
    assert _digests(other)["model.safetensors"] != _digests(backbone)["model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_checkpoint_loads_through_from_pretrained(backbone: Path) -> None:
    model = Qwen2AudioForConditionalGeneration.from_pretrained(backbone, local_files_only=True)
    n_params = sum(p.numel() for p in model.parameters())
    assert 300_000 <= n_params <= 2_000_000
    extractor = WhisperFeatureExtractor.from_pretrained(backbone, local_files_only=True)
    assert extractor.nb_max_frames == 2 * model.config.audio_config.max_source_positions == 400
    assert extractor.chunk_length == 4
    tokenizer = AutoTokenizer.from_pretrained(backbone, local_files_only=True)
    assert tokenizer.convert_tokens_to_ids(AUDIO_TOKEN) == model.config.audio_token_index
    assert len(tokenizer) <= model.config.text_config.vocab_size


def test_thirty_second_window_variant(tmp_path: Path) -> None:
    path = materialize_tiny_backbone(tmp_path / "long", max_source_positions=1500)
    assets = load_backbone_assets(path)
    assert assets.num_frames == 3000 and assets.feature_extractor.chunk_length == 30


def test_backbone_errors(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="does not exist"):
        resolve_backbone(str(tmp_path / "nowhere"))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(BackboneError, match="not a Qwen2-Audio checkpoint"):
        resolve_backbone(str(bert))
    with pytest.raises(BackboneError, match="local Hugging Face cache"):
        resolve_backbone("ermgap-nobody/not-a-cached-model")
    (tmp_path / "half").mkdir()
    with pytest.raises(BackboneError, match="not a complete checkpoint"):
        materialize_tiny_backbone(tmp_path / "half")


def test_default_backbone_lives_under_ermgap_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ERMGAP_CACHE", str(tmp_path))
    assert default_backbone_dir() == tmp_path / "backbones" / "tiny-qwen2-audio-v1"
    assert resolve_backbone(None) == default_backbone_dir()
    assert (default_backbone_dir() / "model.safetensors").is_file()


def _header_length(file: Path) -> int:
    return struct.unpack("<Q", file.read_bytes()[:8])[0]


@pytest.mark.parametrize(
    ("keep", "reason"),
    [
        (lambda f: 4, r"truncated \(4 bytes, not even a header\)"),
        (
            lambda f: 8 + _header_length(f) - 1,
            r"truncated \(\d+ bytes, its header alone needs \d+\)",
        ),
        (lambda f: f.stat().st_size // 2, r"truncated \(\d+ bytes, its header needs \d+\)"),
        (lambda f: f.stat().st_size - 1, r"truncated \(\d+ bytes, its header needs \d+\)"),
    ],
)
def test_truncated_weights_are_one_line_naming_the_file(
    backbone: Path, tmp_path: Path, keep, reason: str
) -> None:
    """Used to be a 33-line safetensors traceback when the model loaded."""
    copy = Path(shutil.copytree(backbone, tmp_path / "bb"))
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: keep(weights)])
    for load in (resolve_backbone, load_backbone_assets):
        with pytest.raises(BackboneError) as err:
            load(str(copy))
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(f"{copy}: model.safetensors is ")
        assert re.fullmatch(reason, msg[len(f"{copy}: model.safetensors is ") :])
    assert checkpoint_problem(backbone) is None


def test_missing_tokenizer_is_named(backbone: Path, tmp_path: Path) -> None:
    """transformers used to build an empty tokenizer, reported as an <|AUDIO|> id mismatch."""
    copy = Path(shutil.copytree(backbone, tmp_path / "bb"))
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BackboneError) as err:
        load_backbone_assets(copy)
    assert str(err.value) == f"{copy} has no tokenizer (tokenizer.json / vocab files missing)"
    (copy / "vocab.json").write_text("{}")
    (copy / "merges.txt").write_text("")
    assert checkpoint_problem(copy) is None
    (copy / "preprocessor_config.json").unlink()
    assert "has no preprocessor_config.json" in checkpoint_problem(copy)


def test_damaged_default_backbone_is_materialised_again(
    backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """The cached tiny default repairs itself (like the encoder cache); a user's dir does not."""
    monkeypatch.setenv("ERMGAP_CACHE", str(tmp_path))
    target = default_backbone_dir()
    shutil.copytree(backbone, target)
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="ermgap_ray.model"):
        assert resolve_backbone(None) == target
    assert (
        "materialising it again: " in caplog.text
        and "model.safetensors is truncated" in caplog.text
    )
    assert _digests(target) == _digests(backbone)
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BackboneError, match="not a complete checkpoint .*truncated"):
        materialize_tiny_backbone(target)


def test_audio_window_seconds(backbone: Path) -> None:
    assert audio_window_seconds(backbone) == 4.0


def test_label_words_are_single_distinct_tokens(assets) -> None:
    ids = label_token_ids(assets.tokenizer)
    assert len(set(ids)) == len(EMOTIONS) == 7
    assert [assets.tokenizer.decode([i]) for i in ids] == list(EMOTIONS)


def test_colliding_label_words_are_rejected() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    word_level = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="[UNK]")
    with pytest.raises(BackboneError, match="distinct"):
        label_token_ids(tokenizer)


def test_tokenizer_round_trips_japanese_and_german(assets) -> None:
    tokenizer = assets.tokenizer
    for text in ("ずっと待っていたのに、信じられない！", "Übermäßig großer Ärger, heiß!", "Ω≈ç√∫"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_prompt_layout(assets) -> None:
    prompt = build_prompt("audio+text", "I can't believe it", 5)
    assert prompt.count(AUDIO_TOKEN) == 5
    assert "<|audio_bos|>" + AUDIO_TOKEN * 5 + "<|audio_eos|>" in prompt
    assert "Transcript: I can't believe it" in prompt
    assert "Transcript" not in build_prompt("audio", "I can't believe it", 5)
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = assets.tokenizer.encode(prompt, add_special_tokens=False)
    assert ids.count(assets.audio_token_id) == 5


def test_audio_token_count_matches_qwen2_audio(backbone: Path, assets) -> None:
    """Our count is what HF's Qwen2Audio merge expects, and our logits equal its logits."""
    model = SERModel.from_backbone(backbone)
    tower = model.base.model.audio_tower
    frames = torch.tensor([1, 2, 3, 4, 5, 99, 100, 101, 230, 399, 400])
    assert torch.equal(num_audio_tokens(frames), tower._get_feat_extract_output_lengths(frames)[1])
    assert [num_audio_tokens(n) for n in (100, 230, 400)] == [25, 57, 100]
    batch = _batch(assets, [1.0, 2.3, 3.1, 5.0])
    with torch.no_grad():
        ours = model(batch)
        full = model.base(**batch).logits
    last = batch["attention_mask"].sum(-1) - 1
    reference = full[torch.arange(4), last][:, list(assets.label_ids)]
    assert ours.shape == (4, 7) and ours.dtype == torch.float32
    assert torch.allclose(ours, reference, atol=1e-6, rtol=0)
    wrong = dict(batch, input_ids=batch["input_ids"].clone())
    first_slot = int((batch["input_ids"][0] == assets.audio_token_id).nonzero()[0])
    wrong["input_ids"][0, first_slot] = assets.pad_id
    with pytest.raises(ValueError, match="audio placeholders per row"):
        model(wrong)


def test_lora_sits_in_language_model_attention_only(backbone: Path) -> None:
    model = SERModel.from_backbone(backbone, lora_r=4)
    names = model.lora_module_names()
    assert len(names) == 2 * 4
    assert all(".language_model." in n for n in names)
    assert not any("audio_tower" in n or "projector" in n for n in names)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    by_name = dict(model.named_parameters())
    assert [id(p) for p in trainable_parameters(model)] == [id(by_name[n]) for n in trainable]
    assert model.uses_frozen_encoder
    assert not any(k.startswith("front_end") for k in model.state_dict())
    model.base.model.multi_modal_projector.requires_grad_(True)
    assert not model.uses_frozen_encoder  # read live, not when the model was built


def test_bfloat16_backbone_gives_fp32_logits(backbone: Path, assets) -> None:
    batch = _batch(assets, [1.0, 2.0])
    half = SERModel.from_backbone(backbone, dtype=torch.bfloat16)
    assert half.base.lm_head.weight.dtype == torch.bfloat16
    logits = half(batch)
    assert logits.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(logits, SERModel.from_backbone(backbone)(batch), atol=0.05)
    logits.sum().backward()
    grads = [p.grad for n, p in half.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_lora_on_audio_tower_refuses_the_cache(backbone: Path, assets) -> None:
    model = SERModel.from_backbone(backbone, target_modules=r".*audio_tower.*\.q_proj")
    assert not model.uses_frozen_encoder
    batch = _batch(assets, [1.0, 2.0])
    embeds, mask = model.front_end(batch["input_features"], batch["feature_attention_mask"])
    cached = {k: batch[k] for k in ("input_ids", "attention_mask")}
    cached.update(audio_embeds=embeds.detach(), audio_mask=mask)
    with pytest.raises(ValueError, match="cached audio embeddings refused"):
        model(cached)


def test_gradient_step_changes_only_lora_and_adapter_round_trips(
    backbone: Path, assets, tmp_path: Path
) -> None:
    model = SERModel.from_backbone(backbone, seed=3)
    model.train()
    batch = _batch(assets, [1.0, 2.5, 1.7], modality="audio+text")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    loss = torch.nn.functional.cross_entropy(model(batch), torch.tensor([0, 3, 6]))
    loss.backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)

    model.eval()
    with torch.no_grad():
        expected = model(batch)
    adapter = model.save_adapter(tmp_path / "adapter")
    tensors = load_file(adapter / "adapter_model.safetensors")
    assert len(tensors) == 2 * 2 * 4
    assert all(t.numel() > 0 for t in tensors.values())
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_B" in k)
    assert not any("audio_tower" in k for k in tensors)
    loaded = SERModel.from_adapter(backbone, adapter)
    with torch.no_grad():
        assert torch.equal(loaded(batch), expected)
    fresh = SERModel.from_backbone(backbone, seed=3)
    with torch.no_grad():
        assert not torch.equal(fresh(batch), expected)


def test_compile_without_a_cxx_compiler_warns_and_stays_eager(backbone: Path, assets, monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    model = SERModel.from_backbone(backbone)
    with pytest.warns(RuntimeWarning, match="torch_compile: .*training eager"):
        assert not model.compile_language_model()
    assert model.base.model.language_model._compiled_call_impl is None
    batch = _batch(assets, [1.0, 2.0])
    assert model(batch).shape == (2, len(assets.label_ids))


def test_compiler_probe_leaves_the_cpu_probe_built_for_later_processes(tmp_path, monkeypatch):
    """The driver's background probe builds inductor's per-ISA test programs into the cache dir;
    a trial process that compiles afterwards loads them and builds nothing."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    probe = start_compiler_probe()
    assert probe is not None and probe.wait(timeout=300) == 0
    built = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.so")}
    assert built, "the probe built no ISA test program"
    later = "from torch._inductor.cpu_vec_isa import pick_vec_isa; assert pick_vec_isa()"
    subprocess.run([sys.executable, "-c", later], check=True, timeout=300)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.so")} == built
