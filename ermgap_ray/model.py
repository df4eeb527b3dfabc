"""Backbone loading, the tiny Qwen2-Audio default, the verbalizer and LoRA (DESIGN.md, Model).

A backbone is a Qwen2-Audio checkpoint directory (or a cached HF id) loaded with
`from_pretrained(local_files_only=True)`. The embedded default is a tiny random-weight Qwen2-Audio
written once as a real checkpoint, so laptop runs and Qwen2-Audio-7B share one code path.

Classification is a verbalizer: the class scores are the logits of the K emotion label tokens at
the answer position (the last prompt token), so the per-sample cross-entropy equals SFT on
single-token label words. LoRA sits on the language model's attention only; the audio tower and
projector stay frozen, which is what makes the shared embedding cache (features.py) valid.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ermgap_ray.data.schema import EMOTIONS, MODALITIES, SAMPLE_RATE
from ermgap_ray.errors import BackboneError
from ermgap_ray.fs import atomic_dir, cache_root

log = logging.getLogger(__name__)

TINY_BACKBONE_NAME = "tiny-qwen2-audio-v1"
AUDIO_TOKEN = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    AUDIO_BOS,
    AUDIO_TOKEN,
    AUDIO_EOS,
)
LM_ATTENTION_TARGETS = (
    r"(.*\.)?language_model\.layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
)
"""peft regex: the audio encoder also has q/k/v_proj (under `audio_tower`), so match by path."""
FROZEN_PREFIXES: tuple[str, ...] = ("audio_tower", "multi_modal_projector")
TOKENIZER_FILES: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("vocab.json", "merges.txt"),
    ("tokenizer.model",),
    ("vocab.txt",),
)
"""Any one of these sets makes a loadable tokenizer (fast, BPE, sentencepiece, WordPiece)."""
HOP_LENGTH = 160
_MAX_SAFETENSORS_HEADER = 100 * 2**20

_TINY_CORPUS: tuple[str, ...] = (
    "The speaker sounds calm and neutral about the plan for tomorrow.",
    "Oh my God, that is wonderful news, I am so happy for you!",
    "I can't believe you would do that to me, get out of here!",
    "Wait, what? You're moving to Paris? Since when?",
    "I miss her so much, nothing feels the same without her.",
    "Please don't leave me alone in the dark, I'm scared.",
    "Ugh, that smells terrible, how can you eat that?",
    "We need to talk about the rent, it is due on Monday.",
    "Could you pass me the coffee, please? Thanks.",
    "Joey, Chandler, Monica, Rachel, Ross and Phoebe are at the coffee house.",
    "Ich weiß nicht, was ich sagen soll, das ist wunderbar!",
    "Warum hast du mir das nicht früher gesagt? Ich bin wütend.",
    "Es tut mir so leid, ich vermisse ihn jeden Tag.",
    "Das ist ja eklig, nimm das sofort weg!",
    "Ich habe Angst, bitte bleib bei mir.",
    "Wirklich? Du heiratest? Seit wann denn das?",
    "Wir müssen über die Miete sprechen, sie ist am Montag fällig.",
    "Gib mir bitte den Kaffee, danke schön. Über Größe und Maß.",
    "本当にうれしい！最高のニュースだね。",
    "どうしてそんなことをしたの？本当に怒っているよ。",
    "彼女がいなくてとても寂しい。何もかも違って感じる。",
    "え、本当に？パリに引っ越すの？いつから？",
    "暗いところに一人にしないで、怖いよ。",
    "うわ、ひどいにおい、どうしてそれが食べられるの？",
    "明日の予定について話しましょう。家賃は月曜日までです。",
    "コーヒーを取ってくれる？ありがとう。ジョーイとチャンドラー。",
    "Audio 1: Transcript: Which emotion? Answer with one word:",
    "user assistant system",
)


def default_backbone_dir() -> Path:
    """Where the embedded tiny Qwen2-Audio is materialised once and shared by every trial."""
    return cache_root() / "backbones" / TINY_BACKBONE_NAME


def num_audio_tokens(num_frames: Any) -> Any:
    """Audio placeholders per clip: `((L-1)//2+1-2)//2+1` for L valid mel frames.

    Qwen2-Audio's conv2 (stride 2) then the avg-pool (stride 2); mirrors
    `Qwen2AudioEncoder._get_feat_extract_output_lengths`. Elementwise on ints, arrays, tensors.
    """
    return ((num_frames - 1) // 2 + 1 - 2) // 2 + 1


def prompt_parts(modality: str, text: str | None) -> tuple[str, str]:
    """The prompt around the audio placeholders: `build_prompt = prefix + AUDIO*n + suffix`."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    prefix = f"<|im_start|>user\nAudio 1: {AUDIO_BOS}"
    transcript = f"Transcript: {text}\n" if modality == "audio+text" else ""
    suffix = (
        f"{AUDIO_EOS}\n{transcript}Which emotion? Answer with one word: {', '.join(EMOTIONS)}."
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    return prefix, suffix


def build_prompt(modality: str, text: str | None, num_audio_tokens: int) -> str:
    """Chat prompt with Qwen2-Audio's `<|audio_bos|><|AUDIO|>*n<|audio_eos|>` audio slot.

    The answer position is the last token ("assistant\\n"), where the label words are scored.
    """
    prefix, suffix = prompt_parts(modality, text)
    return prefix + AUDIO_TOKEN * int(num_audio_tokens) + suffix


def label_token_ids(tokenizer: Any) -> list[int]:
    """One token id per EMOTIONS word: the verbalizer's K class slots.

    A word that is a single token (bare, else with a leading space) uses it; otherwise the first
    token of " word" stands for it. The K ids must be distinct, or the classes would collide.
    """
    ids: list[int] = []
    for word in EMOTIONS:
        pieces = [tokenizer.encode(w, add_special_tokens=False) for w in (word, " " + word)]
        single = [p[0] for p in pieces if len(p) == 1]
        if single:
            ids.append(single[0])
        elif pieces[1]:
            ids.append(pieces[1][0])
        else:
            raise BackboneError(f"label word {word!r} tokenises to nothing")
    if len(set(ids)) != len(ids):
        raise BackboneError(f"label words {EMOTIONS} do not map to distinct tokens: {ids}")
    return ids


def _safetensors_problem(file: Path) -> str | None:
    """Why a .safetensors file cannot be loaded, from its header alone, or None.

    The format is an 8-byte little-endian header length N, N bytes of JSON giving each tensor's
    `data_offsets` [begin, end) into the data that follows; the file must hold 8 + N + max(end)
    bytes. Reading the header costs microseconds even for a 15 GB shard, where loading the
    truncated file would fail minutes later with a long traceback.
    """
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{file.name} is truncated ({size} bytes, not even a header)"
        n = struct.unpack("<Q", head)[0]
        if n > _MAX_SAFETENSORS_HEADER:
            return f"{file.name} is not a safetensors file (header length {n})"
        if 8 + n > size:
            return f"{file.name} is truncated ({size} bytes, its header alone needs {8 + n})"
        raw = fh.read(n)
    try:
        header = json.loads(raw)
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return f"{file.name} is not a safetensors file (unreadable header)"
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"{file.name} is truncated ({size} bytes, its header needs {need})"
    return None


def checkpoint_problem(path: Path | str) -> str | None:
    """Why directory `path` is not a loadable Qwen2-Audio checkpoint, or None.

    Cheap (no weights are read) and run before any work: config.json and its model_type,
    a tokenizer (without one, transformers quietly builds an empty tokenizer), the
    preprocessor config, the weights, and each safetensors file's size against its header.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        return f"not a checkpoint directory (no config.json): {path}"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (UnicodeDecodeError, ValueError, AttributeError) as err:
        return f"{config_file} is not valid JSON ({err})"
    if model_type != "qwen2_audio":
        return f"not a Qwen2-Audio checkpoint (model_type={model_type!r}): {path}"
    if not any(all((path / f).is_file() for f in files) for files in TOKENIZER_FILES):
        return f"{path} has no tokenizer (tokenizer.json / vocab files missing)"
    if not (path / "preprocessor_config.json").is_file():
        return f"{path} has no preprocessor_config.json (the audio feature extractor's settings)"
    index = path / "model.safetensors.index.json"
    weights = sorted(path.glob("*.safetensors"))
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            return f"{index} is not a valid safetensors index"
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            return f"{path}: {index.name} lists {missing[0]}, which is missing"
    elif not weights and not list(path.glob("*.bin")):
        return f"{path} has no weights (model.safetensors or pytorch_model.bin)"
    for file in weights:
        problem = _safetensors_problem(file)
        if problem:
            return f"{path}: {problem}"
    return None


def _build_tokenizer() -> Any:
    """Byte-level BPE trained in-process: every ja/de string tokenises (no unk) by construction."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    labels = ", ".join(EMOTIONS)
    # Label words are repeated bare and space-prefixed so BPE merges each into one token.
    corpus = (
        list(_TINY_CORPUS) * 4 + [f"Answer with one word: {labels}.\n{w}" for w in EMOTIONS] * 8
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>"
    )


def materialize_tiny_backbone(
    out_dir: Path | str, seed: int = 0, max_source_positions: int = 200, repair: bool = False
) -> Path:
    """Write a tiny random-weight Qwen2-Audio checkpoint to `out_dir` (idempotent, atomic).

    The mel window is tied to the encoder: it needs exactly `2 * max_source_positions` frames,
    i.e. chunk_length = 2 * max_source_positions * hop / sr seconds (200 -> 4 s, 1500 -> 30 s).
    Staged in a folder beside `out_dir` and renamed (`fs.atomic_dir`), so concurrent processes
    never see half a checkpoint and the first to finish wins. An existing `out_dir` that fails
    `checkpoint_problem` is an error, or with `repair` (the default backbone in the cache) is set
    aside and written again: its content is a function of the arguments.
    """
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists():
        problem = checkpoint_problem(out_dir)
        if problem is None:
            return out_dir
        if not repair:
            raise BackboneError(
                f"{out_dir} exists but is not a complete checkpoint ({problem}); remove it"
            )
        log.warning("damaged tiny backbone, materialising it again: %s", problem)
        _set_aside(out_dir)
    num_frames = 2 * max_source_positions
    if (num_frames * HOP_LENGTH) % SAMPLE_RATE:
        raise ValueError("2 * max_source_positions * 160 must be a whole number of seconds")
    with atomic_dir(out_dir) as tmp:
        _write_tiny_checkpoint(tmp, seed, max_source_positions)
    return out_dir


def _set_aside(path: Path) -> None:
    """Rename a damaged folder out of the way, then delete it; a concurrent repairer may have
    moved it already."""
    trash = path.with_name(f".{path.name}.damaged-{os.getpid()}")
    try:
        path.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _write_tiny_checkpoint(out: Path, seed: int, max_source_positions: int) -> None:
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    num_frames = 2 * max_source_positions
    tokenizer = _build_tokenizer()
    vocab = -(-len(tokenizer) // 64) * 64
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "d_model": 64,
            "encoder_layers": 2,
            "encoder_attention_heads": 4,
            "encoder_ffn_dim": 256,
            "num_mel_bins": 80,
            "max_source_positions": max_source_positions,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": vocab,
            "hidden_size": 64,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2 * max_source_positions + 512,
            "tie_word_embeddings": False,
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
        },
        audio_token_index=ids(AUDIO_TOKEN),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2AudioForConditionalGeneration(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    WhisperFeatureExtractor(
        feature_size=80,
        sampling_rate=SAMPLE_RATE,
        hop_length=HOP_LENGTH,
        chunk_length=num_frames * HOP_LENGTH // SAMPLE_RATE,
        return_attention_mask=True,
    ).save_pretrained(out)


def validate_backbone(path: Path | str) -> Path:
    """Check that `path` is a loadable Qwen2-Audio checkpoint dir; one-line BackboneError
    otherwise (see `checkpoint_problem`)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise BackboneError(f"backbone path does not exist: {path}")
    problem = checkpoint_problem(path)
    if problem:
        raise BackboneError(problem)
    return path


def audio_window_seconds(backbone_dir: Path | str) -> float:
    """The longest audio the backbone's feature extractor keeps, in seconds (`n_samples` / sr).

    Read from preprocessor_config.json without importing transformers: 4 s for the tiny
    default, 30 s for Qwen2-Audio. Longer clips are cut to it.
    """
    config = json.loads((Path(backbone_dir) / "preprocessor_config.json").read_text())
    rate = int(config.get("sampling_rate", SAMPLE_RATE))
    samples = config.get("n_samples") or int(config.get("chunk_length", 30)) * rate
    return int(samples) / rate


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer updates (LoRA's, with the backbone frozen)."""
    return [p for p in module.parameters() if p.requires_grad]


def resolve_backbone(spec: str | Path | None) -> Path:
    """A backbone spec to a validated local directory; never downloads.

    None materialises the embedded tiny default (again, if a copy in the cache is damaged); an
    existing path is validated; anything else is looked up as a Hugging Face id in the local HF
    cache only.
    """
    if spec is None:
        return validate_backbone(materialize_tiny_backbone(default_backbone_dir(), repair=True))
    path = Path(spec).expanduser()
    if path.exists():
        return validate_backbone(path)
    text = str(spec)
    if path.is_absolute() or text.startswith((".", "~")) or text.count("/") != 1:
        raise BackboneError(f"backbone path does not exist: {path}")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(text, local_files_only=True)
    except Exception as err:  # the hub raises several unrelated types for "not cached"
        raise BackboneError(
            f"backbone {text!r} is neither a local directory nor in the local Hugging Face cache "
            f"(downloads are disabled): {type(err).__name__}"
        ) from err
    return validate_backbone(local)


@dataclass(frozen=True)
class BackboneAssets:
    """The text and audio front ends of a backbone, validated against its model config."""

    path: Path
    config: Any
    tokenizer: Any
    feature_extractor: Any
    label_ids: tuple[int, ...]

    @property
    def audio_token_id(self) -> int:
        return int(self.config.audio_token_index)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    @property
    def num_frames(self) -> int:
        """Mel frames the encoder needs: 2 * max_source_positions (RAY_NOTES.md)."""
        return 2 * int(self.config.audio_config.max_source_positions)


def load_backbone_assets(backbone: Path | str | None) -> BackboneAssets:
    """Config, tokenizer, WhisperFeatureExtractor and verbalizer ids, cross-checked."""
    from transformers import AutoConfig, AutoTokenizer, WhisperFeatureExtractor

    path = resolve_backbone(backbone)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        extractor = WhisperFeatureExtractor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise BackboneError(f"cannot load tokenizer/preprocessor of {path}: {err}") from err
    if tokenizer.convert_tokens_to_ids(AUDIO_TOKEN) != config.audio_token_index:
        raise BackboneError(f"tokenizer's {AUDIO_TOKEN} id != config.audio_token_index in {path}")
    needed = 2 * config.audio_config.max_source_positions
    if (
        extractor.nb_max_frames != needed
        or extractor.feature_size != config.audio_config.num_mel_bins
    ):
        raise BackboneError(
            f"preprocessor window {extractor.nb_max_frames} frames x {extractor.feature_size} mels "
            f"!= encoder's {needed} x {config.audio_config.num_mel_bins} in {path}"
        )
    return BackboneAssets(path, config, tokenizer, extractor, tuple(label_token_ids(tokenizer)))


def _load_base(path: Path, dtype: torch.dtype) -> Any:
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(
        path, local_files_only=True, dtype=dtype
    )


class AudioFrontEnd(nn.Module):
    """Frozen `projector(audio_tower(mel))`: the part of Qwen2-Audio that the cache replaces."""

    def __init__(self, audio_tower: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.audio_tower = audio_tower
        self.multi_modal_projector = projector

    def forward(
        self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, A, H) projector outputs and the (B, A) bool mask of valid audio tokens.

        Mirrors Qwen2AudioModel.forward: the encoder attends only to the first
        `(L-1)//2+1` conv frames of each clip, so a clip's embedding ignores padding.
        """
        from transformers.masking_utils import create_bidirectional_mask

        tower = self.audio_tower
        device = next(tower.parameters()).device
        input_features = input_features.to(device)
        lengths = feature_attention_mask.to(device).sum(-1)
        conv_lengths, out_lengths = tower._get_feat_extract_output_lengths(lengths)
        batch, _, frames = input_features.shape
        conv_frames = (frames - 2) // 2 + 1
        valid = torch.arange(conv_frames, device=device)[None, :] < conv_lengths[:, None]
        attention = create_bidirectional_mask(
            config=tower.config,
            inputs_embeds=torch.zeros(
                batch, conv_frames, 1, dtype=tower.conv1.weight.dtype, device=device
            ),
            attention_mask=valid.long(),
        )
        hidden = tower(input_features, attention_mask=attention).last_hidden_state
        embeds = self.multi_modal_projector(hidden)
        mask = torch.arange(embeds.shape[1], device=device)[None, :] < out_lengths[:, None]
        return embeds, mask


def load_audio_front_end(
    backbone_dir: Path | str,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> AudioFrontEnd:
    """The frozen audio tower + projector of a backbone, in eval mode (for the cache builder)."""
    base = _load_base(validate_backbone(backbone_dir), dtype)
    front = AudioFrontEnd(base.model.audio_tower, base.model.multi_modal_projector)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return front.requires_grad_(False).eval().to(device)


# Inductor's CPU back end first builds and loads a test program for each SIMD instruction set the
# CPU reports, and caches the result under its cache dir: ≈ 7 s the first time, ≈ 1 s after.
_COMPILER_PROBE = (
    "from torch._inductor.cpp_builder import get_cpp_compiler; get_cpp_compiler(); "
    "from torch._inductor.cpu_vec_isa import pick_vec_isa; pick_vec_isa()"
)


def start_compiler_probe() -> subprocess.Popen[bytes] | None:
    """Run inductor's one-off CPU probe in a background process, so that every trial process
    that compiles finds it cached instead of each paying it on a cold machine. The driver starts
    it before it prepares the inputs, which leave a core idle; None on a GPU machine, where the
    trials compile for the GPU. A probe that fails costs nothing: the trials probe themselves.

    It runs in its own session and is never killed (not by Ctrl-C, nor when the inputs are bad):
    a build cut short leaves a truncated test program, which inductor would read from then on
    as an instruction set the machine lacks."""
    if torch.cuda.is_available():
        return None
    return subprocess.Popen(
        [sys.executable, "-c", _COMPILER_PROBE],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


class SERModel(nn.Module):
    """Qwen2-Audio + LoRA scored by a K-way verbalizer; `forward(batch) -> (B, K)` fp32 logits.

    Cached (`audio_embeds`, `audio_mask`) and uncached (`input_features`,
    `feature_attention_mask`) batches share one scatter + language-model call, so their logits
    are identical when the cache holds this backbone's projector outputs.
    """

    def __init__(self, peft_model: nn.Module, assets: BackboneAssets) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.assets = assets
        self.register_buffer(
            "label_ids", torch.tensor(assets.label_ids, dtype=torch.long), persistent=False
        )
        self._front_end_params = [
            (name, param)
            for name, param in self.base.model.named_parameters()
            if name.startswith(FROZEN_PREFIXES)
        ]
        self.train(False)

    @classmethod
    def from_backbone(
        cls,
        backbone_dir: Path | str | None,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        target_modules: str = LM_ATTENTION_TARGETS,
    ) -> SERModel:
        """Frozen backbone + fresh LoRA (seeded) on the modules matched by `target_modules`."""
        from peft import LoraConfig, get_peft_model

        assets = load_backbone_assets(backbone_dir)
        base = _load_base(assets.path, dtype).requires_grad_(False)
        config = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=target_modules,
            bias="none",
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            peft_model = get_peft_model(base, config)
        return cls(peft_model, assets)

    @classmethod
    def from_adapter(
        cls,
        backbone_dir: Path | str | None,
        adapter_dir: Path | str,
        dtype: torch.dtype = torch.float32,
        is_trainable: bool = False,
    ) -> SERModel:
        """Backbone + a LoRA adapter saved by `save_adapter` (inference or deployment)."""
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise BackboneError(f"no adapter_config.json in adapter dir {adapter_dir}")
        assets = load_backbone_assets(backbone_dir)
        base = _load_base(assets.path, dtype).requires_grad_(False)
        peft_model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=is_trainable)
        return cls(peft_model, assets)

    @property
    def base(self) -> nn.Module:
        """The wrapped Qwen2AudioForConditionalGeneration (LoRA layers injected in place)."""
        return self.peft_model.get_base_model()

    @property
    def front_end(self) -> AudioFrontEnd:
        """The backbone's own audio tower + projector, wrapped on demand.

        Not registered as a submodule, so state_dict and DeepSpeed see each parameter once.
        """
        model = self.base.model
        return AudioFrontEnd(model.audio_tower, model.multi_modal_projector)

    @property
    def uses_frozen_encoder(self) -> bool:
        """True when nothing in the audio tower or projector trains or carries LoRA.

        Only then are cached projector outputs equal to what the model would compute.
        """
        return not any(p.requires_grad or "lora_" in n for n, p in self._front_end_params)

    def train(self, mode: bool = True) -> SERModel:
        """Keep the frozen front end in eval mode: the cache was computed that way."""
        super().train(mode)
        if self.uses_frozen_encoder:
            self.base.model.audio_tower.eval()
            self.base.model.multi_modal_projector.eval()
        return self

    def compile_language_model(self) -> bool:
        """Inductor with dynamic shapes (one graph for every batch length): a tiny CPU model's
        step is Python- and dispatch-bound, which fused kernels remove. Without a C++ compiler
        on the CPU path it warns once and stays eager, so a trial never fails for speed."""
        if self.label_ids.device.type == "cpu":
            from torch._inductor.cpp_builder import get_cpp_compiler

            try:
                get_cpp_compiler()
            except Exception as err:  # inductor's InvalidCxxCompiler, or an unusable toolchain
                warnings.warn(f"torch_compile: {err}; training eager", RuntimeWarning, 2)
                return False
        self.base.model.language_model.compile(dynamic=True)
        return True

    def trainable_parameters(self) -> list[nn.Parameter]:
        return trainable_parameters(self)

    def lora_module_names(self) -> list[str]:
        """Names of the modules that carry LoRA weights (for checks and reports)."""
        from peft.tuners.lora import LoraLayer

        return [n for n, m in self.base.named_modules() if isinstance(m, LoraLayer)]

    @torch.no_grad()
    def encode_audio(
        self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor
    ) -> list[torch.Tensor]:
        """Per-clip projector outputs, each (A_i, H) with A_i = num_audio_tokens(L_i)."""
        embeds, mask = self.front_end(input_features, feature_attention_mask)
        return [e[: int(n)] for e, n in zip(embeds, mask.sum(-1), strict=True)]

    def _audio_embeddings(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if "audio_embeds" in batch:
            if not self.uses_frozen_encoder:
                raise ValueError(
                    "cached audio embeddings refused: LoRA or trainable parameters touch the audio "
                    "tower/projector, so the cache no longer matches the model; use_cache=False"
                )
            return batch["audio_embeds"], batch["audio_mask"]
        if self.uses_frozen_encoder:
            with torch.no_grad():
                return self.front_end(batch["input_features"], batch["feature_attention_mask"])
        return self.front_end(batch["input_features"], batch["feature_attention_mask"])

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, K) fp32 label-word logits at each row's last prompt token (right padding)."""
        base = self.base
        embed_tokens = base.model.language_model.get_input_embeddings()
        device = embed_tokens.weight.device
        input_ids = batch["input_ids"].to(device)
        attention_mask = batch["attention_mask"].to(device)
        embeds, audio_mask = self._audio_embeddings(batch)
        embeds, audio_mask = embeds.to(device), audio_mask.to(device).bool()

        inputs_embeds = embed_tokens(input_ids)
        slots = input_ids == self.assets.audio_token_id
        if not torch.equal(slots.sum(-1), audio_mask.sum(-1)):
            raise ValueError(
                f"audio placeholders per row {slots.sum(-1).tolist()} != audio embeddings per row "
                f"{audio_mask.sum(-1).tolist()}; rebuild the prompts with num_audio_tokens()"
            )
        features = embeds[audio_mask].to(inputs_embeds.dtype)
        inputs_embeds = inputs_embeds.masked_scatter(slots.unsqueeze(-1), features)
        hidden = base.model.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        last = attention_mask.sum(-1) - 1
        answer = hidden[torch.arange(hidden.shape[0], device=device), last]
        return nn.functional.linear(answer, base.lm_head.weight[self.label_ids]).float()

    def save_adapter(self, out_dir: Path | str) -> Path:
        """LoRA weights + adapter_config.json via peft `save_pretrained` (safetensors)."""
        out_dir = Path(out_dir)
        self.peft_model.save_pretrained(out_dir, safe_serialization=True)
        return out_dir
