"""Typed trial configuration: one name per knob across YAML, `--set`, Tune spaces and parquet.

Following DomainBed's registry habit, every knob's default and help live here once. Presets in
`sweeps/*.yaml` and search spaces in `sweep.py` refer to these names and nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from ermgap_ray.data.schema import MODALITIES
from ermgap_ray.errors import ConfigError
from ermgap_ray.registry import GAP_KINDS

OBJECTIVES = ("erm", "minmaxgap", "meangap", "groupdro")
GAP_PENALTY_OBJECTIVES = ("minmaxgap", "meangap")
LAMBDA_MODES = ("fixed", "adaptive")
DEV_GAP_METRICS = ("loss", *GAP_KINDS)
ENGINES = ("auto", "torch", "deepspeed")
DEV_EVALS = ("auto", "every-epoch", "last-epoch")
TWIN_BIASES = ("spurious", "underrep", "none")


def _knob(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrialConfig:
    """One ERM-MinMaxGAP fine-tuning run; `epochs=0` evaluates the untrained backbone."""

    objective: Literal["erm", "minmaxgap", "meangap", "groupdro"] = _knob(
        "minmaxgap",
        "Training objective: erm, minmaxgap (max over languages), meangap (mean over languages), "
        "groupdro (Sagawa et al. 2020 online group weights).",
    )
    p: int = _knob(2, "Exponent of the regulariser R = gap^p (1 or 2).")
    lambda_mode: Literal["fixed", "adaptive"] = _knob(
        "adaptive", "fixed: lambda stays at `lam`; adaptive: projected dual ascent on the dev gap."
    )
    lam: float = _knob(0.3, "Fixed lambda, or lambda_0 for the adaptive schedule. 0 = ERM.")
    eta: float = _knob(1.0, "Dual step size of the adaptive schedule.")
    epsilon: float = _knob(
        0.2,
        "Dev-gap tolerance of the adaptive schedule, in the units of dev_gap_metric (nats for "
        "loss, a fraction for a metric gap): lambda rises while the dev gap exceeds it.",
    )
    lam_max: float = _knob(
        1.0,
        "Upper clip of the adaptive lambda: how far it may climb while the dev gap stays above "
        "epsilon. A large lambda levels every group down (README).",
    )
    dev_gap_metric: str = _knob(
        "loss",
        "Dev gap that drives adaptive lambda: loss (max-language loss gap) or a metric gap "
        "(wf1, acc, tpr, fpr, avg).",
    )
    dev_eval: Literal["auto", "every-epoch", "last-epoch"] = _knob(
        "auto",
        "When the dev split is scored: every-epoch, last-epoch, or auto (every epoch when adaptive "
        "lambda reads the dev gap, else the last epoch only: no other trial reads dev while it "
        "trains, so earlier scores would change nothing but the log).",
    )
    groupdro_eta: float = _knob(0.05, "Exponentiated-gradient step of Group DRO's group weights.")
    modality: Literal["audio", "audio+text"] = _knob(
        "audio", "audio: the clip only; audio+text: the clip and its transcript."
    )
    seed: int = _knob(0, "Seed for weights of LoRA, data order and dropout.")
    epochs: int = _knob(6, "Training epochs; 0 = zero-shot evaluation of the backbone.")
    lr: float = _knob(2e-3, "AdamW learning rate of the LoRA parameters.")
    weight_decay: float = _knob(0.0, "AdamW weight decay.")
    lora_r: int = _knob(8, "LoRA rank on the language model's attention projections.")
    lora_alpha: int = _knob(16, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = _knob(0.0, "LoRA dropout.")
    batch_size: int = _knob(16, "Micro-batch size per worker.")
    grad_accum: int = _knob(1, "Micro-batches per optimizer step (gradient accumulation).")
    zero_stage: int = _knob(2, "DeepSpeed ZeRO stage (2 or 3).")
    engine: Literal["auto", "torch", "deepspeed"] = _knob(
        "auto",
        "auto: DeepSpeed ZeRO for several workers or a GPU, plain torch for one CPU worker "
        "(ZeRO over one rank shards nothing; same LoRA weights); or force torch | deepspeed.",
    )
    torch_compile: bool = _knob(
        False,
        "torch.compile (inductor) the language model where the plain-torch engine trains: "
        "faster epochs after a one-off compile per trial process (README 'Compiled language "
        "model'). Ignored by DeepSpeed.",
    )
    zero3_persistence_threshold: int = _knob(
        100_000,
        "ZeRO-3 keeps parameters smaller than this unsharded (DeepSpeed's default); 0 shards all.",
    )
    backbone: str | None = _knob(
        None, "Local checkpoint dir or cached HF id; None = the embedded tiny Qwen2-Audio."
    )
    data: str | None = _knob(
        None,
        "Synthetic twin dir or manifest.csv, or meld-st:ROOT; None = the embedded synthetic twin.",
    )
    twin_bias: Literal["spurious", "underrep", "none"] = _knob(
        "spurious",
        "With data=None, the synthetic twin's planted bias: spurious (a shortcut cue the weak "
        "group lacks), underrep (the weak group is under-represented) or none (the control).",
    )
    twin_seed: int = _knob(0, "With data=None, the synthetic twin's generator seed.")
    use_cache: bool = _knob(True, "Read frozen-encoder outputs from the shared embedding cache.")
    bootstrap: int = _knob(1000, "Bootstrap resamples for the test-set confidence intervals.")
    keep_checkpoints: int = _knob(2, "How many epoch checkpoints to keep.")

    def __post_init__(self) -> None:
        self.validate()

    @property
    def adapts_lambda(self) -> bool:
        """λ follows the dual schedule only where the objective has a gap penalty to weight."""
        return self.lambda_mode == "adaptive" and self.objective in GAP_PENALTY_OBJECTIVES

    @property
    def scores_dev_every_epoch(self) -> bool:
        """`dev_eval=auto`: only adaptive λ reads the dev split while training (its dual step)."""
        if self.dev_eval != "auto":
            return self.dev_eval == "every-epoch"
        return self.adapts_lambda

    def validate(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"config field '{name}': {why} (got {getattr(self, name)!r})")

        if self.objective not in OBJECTIVES:
            raise bad("objective", f"must be one of {', '.join(OBJECTIVES)}")
        if self.p not in (1, 2):
            raise bad("p", "must be 1 or 2")
        if self.lambda_mode not in LAMBDA_MODES:
            raise bad("lambda_mode", f"must be one of {', '.join(LAMBDA_MODES)}")
        if self.modality not in MODALITIES:
            raise bad("modality", f"must be one of {', '.join(MODALITIES)}")
        if self.dev_eval not in DEV_EVALS:
            raise bad("dev_eval", f"must be one of {', '.join(DEV_EVALS)}")
        if self.dev_gap_metric not in DEV_GAP_METRICS:
            raise bad("dev_gap_metric", f"must be one of {', '.join(DEV_GAP_METRICS)}")
        for name in ("lam", "eta", "epsilon", "lam_max", "groupdro_eta", "weight_decay"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.dev_eval == "last-epoch" and self.adapts_lambda:
            raise bad("dev_eval", "adaptive lambda takes its dual step on every epoch's dev gap")
        if self.lambda_mode == "adaptive" and self.lam_max < self.lam:
            raise bad("lam_max", f"must be >= lam ({self.lam})")
        if self.lr <= 0:
            raise bad("lr", "must be > 0")
        for name in ("lora_r", "lora_alpha", "batch_size", "grad_accum", "bootstrap"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.zero3_persistence_threshold < 0:
            raise bad("zero3_persistence_threshold", "must be >= 0")
        if self.keep_checkpoints < 1:
            raise bad("keep_checkpoints", "must be >= 1")
        if self.epochs < 0:
            raise bad("epochs", "must be >= 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise bad("lora_dropout", "must be in [0, 1)")
        if self.zero_stage not in (2, 3):
            raise bad("zero_stage", "must be 2 or 3")
        if self.twin_bias not in TWIN_BIASES:
            raise bad("twin_bias", f"must be one of {', '.join(TWIN_BIASES)}")
        if self.engine not in ENGINES:
            raise bad("engine", f"must be one of {', '.join(ENGINES)}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """Strict constructor: unknown keys are an error that lists the valid ones."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join(unknown)}; valid keys: "
                f"{', '.join(cls.field_names())}"
            )
        coerced = {k: _coerce(cls, k, v) for k, v in values.items()}
        return cls(**coerced)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrialConfig:
        return TrialConfig.from_dict({**self.to_dict(), **changes})

    def config_hash(self) -> str:
        """Identity of a run: a rerun of the same config finds its old result (DomainBed)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]{0,199}$")


def safe_run_name(name: str) -> str:
    """A run name is one plain path component, so nothing is written outside the storage dir."""
    if not _RUN_NAME.match(name or ""):
        raise ConfigError(
            f"run name {name!r}: use 1-200 letters, digits and ._+=- , starting with a letter or "
            "digit (a single folder name under the storage dir)"
        )
    return name


_NUMERIC = {"int": int, "float": float}


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Turn YAML / CLI scalars into the field's type with an error that names the field."""
    hint = {f.name: f.type for f in fields(cls)}[name]
    if value is None:
        return None
    try:
        if hint == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if hint == "float":
            return float(value)
        if hint == "bool":
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError
            return bool(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config field '{name}': expected {hint}, got {value!r}") from None
    return str(value) if hint.startswith("str") or hint.startswith("Literal") else value


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`--set key=value` pairs; values are parsed as YAML scalars (so 1e-3, true, null work)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return loaded


def load_trial_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> TrialConfig:
    """Defaults, then a YAML file (optionally under a `trial:` key), then `--set` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path)
        values.update(loaded.get("trial", loaded))
    values.update(parse_overrides(overrides))
    return TrialConfig.from_dict(values)


def help_lines() -> list[str]:
    """`key (default): help` for every knob, for argparse epilogs."""
    return [
        f"  {f.name} (default {f.default!r}): {f.metadata['help']}" for f in fields(TrialConfig)
    ]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The CLIs' `--help`: every flag that has a default shows it (flags left to a preset say so
    in their own text), and the epilog's lists and examples keep their layout."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)
