"""`trials.parquet` (one row per trial per evaluation) and `sweep.json` (what was run, with what).

The one owner of both files, and Ray-free (it imports neither ray nor torch), so the analysis
CLIs and the report read a run without starting anything. The Tune callback that keeps
trials.parquet current lives in `ermgap_ray.results_writer` and writes through `write_trials`.

The writer rewrites the whole (small: trials × epochs rows) file through a temp file and
`os.replace` (fs.atomic_path), so a crash loses no finished evaluation and a reader never sees
half a file. A part-file dataset would append in O(1), but it needs compaction and a reader that
globs; a 48-trial × 6-epoch sweep is ~300 rows, far below where rewriting costs anything.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from ermgap_ray.config import TrialConfig
from ermgap_ray.errors import ConfigError
from ermgap_ray.fs import atomic_path, atomic_write

TRIALS_FILE = "trials.parquet"
MANIFEST_FILE = "sweep.json"
OPTUNA_DB = "optuna.db"
# The headline metrics of summaries, trackers' hparams and the console table.
SUMMARY_METRICS = ("dev/wf1", "dev/max_gap_wf1", "test/wf1", "test/max_gap_wf1")
METRIC_PREFIXES = ("dev/", "test/", "train/")
METRIC_KEYS = ("lambda", "lambda_next", "time_epoch_s", "cpu_epoch_s")


def is_metric_key(key: str) -> bool:
    """A result key that is a metric column of trials.parquet (and a tracked metric)."""
    return key.startswith(METRIC_PREFIXES) or key in METRIC_KEYS


def result_epoch(result: Any) -> int:
    """A Tune result's epoch: the row key of trials.parquet and the trackers' step."""
    return int(result.get("epoch", result.get("training_iteration", 0)))


ROW_KEYS = (
    "trial_id",
    "config_hash",
    "group_hash",
    "family",
    "status",
    "error",
    "epoch",
    "is_final",
    "time_total_s",
    "trial_index",
    "adapter_path",
    "predictions_path",
    "backbone",
    "data_fingerprint",
)
VERSIONED = ("python", "torch", "ray", "deepspeed", "transformers", "peft", "optuna")
# SweepConfig's default search objectives; used only when a manifest's config names none.
DEFAULT_OBJECTIVES: tuple[tuple[str, str], ...] = (("dev/wf1", "max"), ("dev/max_gap_wf1", "min"))


def group_hash(cfg: TrialConfig) -> str:
    """Identity of a configuration across seeds: rows sharing it are seeds of one point."""
    values = {k: v for k, v in cfg.to_dict().items() if k != "seed"}
    blob = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def split_trial_config(config: Mapping[str, Any]) -> tuple[str, TrialConfig]:
    """A Tune trial's config -> (family, TrialConfig).

    Grid trials carry their dict under `trial` (one grid axis of whole configurations); search
    trials are flat. Every other key is a TrialConfig field, so a typo fails loudly here.
    """
    values = dict(config.get("trial", config))
    family = str(values.pop("family", "custom"))
    return family, TrialConfig.from_dict(values)


_WRAPPERS = ("RayTaskError", "TrainingFailedError", "TuneError", "RayActorError")
_TYPED_LINE = re.compile(
    r"^(?:[\w.]+\.)?(?P<type>[A-Z]\w*(?:Error|Exception|Exit|Interrupt))"
    r"(?:\([\w.]*\))?: (?P<msg>.*)$"
)


def error_summary(text: str | None) -> str:
    """`<ExceptionType>: <first line>`, preferring the train loop's `NonFiniteLoss:` line.

    Tune's error file is a traceback through Ray wrappers (RayTaskError, TrainingFailedError);
    the first `Type: message` line that is not a wrapper is the cause a user can act on.
    """
    if not text:
        return "unknown error"
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for ln in lines:
        if "NonFiniteLoss:" in ln:
            return "NonFiniteLossError: " + ln[ln.index("NonFiniteLoss:") :]
    typed = [(m["type"], m["msg"]) for m in map(_TYPED_LINE.match, lines) if m]
    causes = [t for t in typed if not t[0].startswith(_WRAPPERS)] or typed
    if not causes:
        return lines[-1]
    kind, message = causes[0]
    return f"{kind}: {message}"


def read_trial_error(trial: Any) -> str | None:
    """The traceback text of a failed Tune trial (duck-typed: no Ray import needed)."""
    try:
        text = trial.get_error()
    except Exception:
        text = None
    if text:
        return str(text)
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        return Path(path).read_text()
    return getattr(trial, "error_msg", None)


# ------------------------------------------------------------------------------------------
# trials.parquet
# ------------------------------------------------------------------------------------------


def write_trials(run_dir: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Rows -> RUN_DIR/trials.parquet: ROW_KEYS first, then the rest sorted; atomic."""
    frame = pd.DataFrame(rows)
    for col in ROW_KEYS:
        if col not in frame.columns:
            frame[col] = None
    frame = frame[list(ROW_KEYS) + sorted(c for c in frame.columns if c not in ROW_KEYS)]
    frame = frame.sort_values(["trial_index", "epoch"], na_position="first")
    frame["epoch"] = frame["epoch"].astype("Int64")
    frame["is_final"] = frame["is_final"].fillna(False).astype(bool)
    path = Path(run_dir) / TRIALS_FILE
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


_ARROW_SOURCE = re.compile(r"^Could not open Parquet input source '[^']*': ")


def read_parquet_once(path: str | Path) -> pd.DataFrame:
    """Read through one open handle: given a path, pyarrow opens the file more than once, and
    a writer's rename between two opens pairs one version's footer with another's pages
    ("Page was smaller than expected"; tests/test_results.py caught it). An open handle keeps
    its version alive across the rename.

    A zero-byte or cut-off file raises ConfigError naming the file, instead of pyarrow's
    "Could not open Parquet input source '<Buffer>'".
    """
    import pyarrow as pa

    path = Path(path)
    with open(path, "rb") as handle:
        try:
            return pd.read_parquet(handle)
        except (pa.ArrowInvalid, OSError) as err:
            size = path.stat().st_size
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            first = _ARROW_SOURCE.sub("", first)
            raise ConfigError(
                f"{path} is truncated or not a Parquet file ({size} bytes; {first})"
            ) from None


def read_trials(run_dir: str | Path) -> pd.DataFrame:
    """The sweep's rows; an empty frame with the schema's leading columns when none exist.

    For writers and a sweep in progress. Analysis wants `load_trials`, which refuses a run
    without rows.
    """
    path = Path(run_dir) / TRIALS_FILE
    if not path.is_file():
        return pd.DataFrame(columns=list(ROW_KEYS))
    return read_parquet_once(path)


def load_trials(run_dir: str | Path) -> pd.DataFrame:
    """A finished (or running) run's rows for analysis, with `is_final` as bool.

    One-line errors: FileNotFoundError for a missing directory or trials.parquet, ConfigError
    (a ValueError) for an empty or truncated file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    path = run_dir / TRIALS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {TRIALS_FILE} in {run_dir} (not a sweep results directory?)")
    df = read_parquet_once(path)
    if df.empty:
        raise ConfigError(f"{path} has no rows (no trial has reported yet)")
    df["is_final"] = df["is_final"].fillna(False).astype(bool)
    return df


# ------------------------------------------------------------------------------------------
# sweep.json
# ------------------------------------------------------------------------------------------


def parse_objectives(values: Any) -> list[tuple[str, str]]:
    """`["dev/wf1:max", ...]` (SweepConfig's form) or `[["dev/wf1", "max"], ...]` -> pairs."""
    out = []
    for item in values:
        if isinstance(item, str):
            metric, _, mode = item.rpartition(":")
        else:
            metric, mode = (str(x) for x in item)
        if not metric or mode not in ("max", "min"):
            raise ConfigError(f"objective {item!r}: expected `metric:max` or `metric:min`")
        out.append((metric, mode))
    return out


@dataclass(frozen=True)
class SweepManifest:
    """sweep.json, typed. `config` is the stored SweepConfig dict (what `--resume` reruns);
    `raw` is the whole JSON (untyped keys such as `cluster`)."""

    path: Path
    name: str = field(metadata={"help": "Run name: config name, else the preset's stem."})
    objectives: list[tuple[str, str]] = field(metadata={"help": "(metric, max|min) pairs."})
    constraints: list[str] = field(metadata={"help": "e.g. 'dev/max_gap_wf1<=0.05' (fractions)."})
    config: dict[str, Any] = field(metadata={"help": "The sweep config as run."})
    status: str = field(metadata={"help": "running | interrupted | finished | unknown."})
    versions: dict[str, str | None] = field(default_factory=dict)
    git_commit: str | None = None
    written_at: str | None = None
    data_fingerprint: str | None = None
    trials: dict[str, int] = field(default_factory=dict, metadata={"help": "terminated/error."})
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def run_dir(self) -> Path:
        return self.path.parent


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in VERSIONED[1:]:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _git_head(cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def write_manifest(run_dir: str | Path, config: Mapping[str, Any], **extra: Any) -> Path:
    """`sweep.json`: the exact sweep config, package versions and the code's git commit.

    `extra` (status, trials counts, data_fingerprint, cluster...) goes to the top level.
    """
    manifest = {
        "config": dict(config),
        "versions": _versions(),
        "git_commit": _git_head(Path(__file__).resolve().parent),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    path = Path(run_dir) / MANIFEST_FILE
    with atomic_write(path) as handle:
        handle.write(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_manifest(run_dir: str | Path, missing_ok: bool = False) -> SweepManifest | None:
    """The one reader of RUN_DIR/sweep.json.

    A missing file raises FileNotFoundError (one line), or returns None with `missing_ok`;
    unparsable JSON or a bad objective raises ConfigError. Objectives come from the stored
    config (`metric:mode` strings); a config that names none gets DEFAULT_OBJECTIVES.
    """
    path = Path(run_dir) / MANIFEST_FILE
    if not path.is_file():
        if missing_ok:
            return None
        raise FileNotFoundError(f"no {MANIFEST_FILE} in {Path(run_dir)}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not readable JSON ({err})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("config", {}), dict):
        raise ConfigError(f"{path}: expected an object with a 'config' object")
    config = dict(raw.get("config") or {})
    preset = config.get("preset")
    name = config.get("name") or (Path(str(preset)).stem if preset else Path(run_dir).name)
    objectives = config.get("objectives") or [list(p) for p in DEFAULT_OBJECTIVES]
    constraints = config.get("constraints") or []
    if isinstance(constraints, str):
        constraints = [constraints]
    trials = raw.get("trials") or {}
    return SweepManifest(
        path=path,
        name=str(name),
        objectives=parse_objectives(objectives),
        constraints=[str(c) for c in constraints],
        config=config,
        status=str(raw.get("status") or "unknown"),
        versions=dict(raw.get("versions") or {}),
        git_commit=raw.get("git_commit"),
        written_at=raw.get("written_at"),
        data_fingerprint=raw.get("data_fingerprint"),
        trials={str(k): int(v) for k, v in trials.items()},
        raw=raw,
    )
