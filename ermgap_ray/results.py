"""`trials.parquet` (one row per trial per evaluation) and `sweep.json` (what was run, with what).

The writer rewrites the whole (small: trials × epochs rows) file through a temp file and
`os.replace`, so a crash loses no finished evaluation and a reader never sees half a file. A
part-file dataset would append in O(1), but it needs compaction and a reader that globs; a
48-trial × 6-epoch sweep is ~300 rows, far below where rewriting costs anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import Callback

from ermgap_ray.config import TrialConfig

TRIALS_FILE = "trials.parquet"
MANIFEST_FILE = "sweep.json"
METRIC_PREFIXES = ("dev/", "test/", "train/")
METRIC_KEYS = ("lambda", "time_epoch_s", "cpu_epoch_s")
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


def _atomic_write_bytes(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


class ResultsWriter(Callback):
    """Tune callback that keeps `RUN_DIR/trials.parquet` current after every result.

    Rows are keyed by (trial_id, epoch): a later result for the same key (the trainable's
    trailing `tune.report(final)`, or a resumed trial re-reporting an epoch) is merged into the
    old row, never appended, so `--resume` cannot duplicate. `status` is the trial's latest
    state on all its rows. `index_offset` keeps `trial_index` unique when several Tune
    experiments (grid, then search) write to one run directory.
    """

    def __init__(
        self,
        run_dir: str | Path,
        static: Mapping[str, Any] | None = None,
        index_offset: int = 0,
        phase: str | None = None,
    ) -> None:
        self.path = Path(run_dir) / TRIALS_FILE
        self.static = dict(static or {})
        self.index_offset = index_offset
        self.phase = phase
        self._load()

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks into tuner.pkl and restores *those* on --resume; the
        rows then come from the file (see `setup`), never from a stale pickled copy."""
        return {**self.__dict__, "rows": {}, "index": {}}

    def setup(self, **info: Any) -> None:
        self._load()

    def _load(self) -> None:
        # A driver killed mid-write leaves its temp file; one driver owns a run directory.
        for stale in self.path.parent.glob(f".{self.path.name}.*"):
            stale.unlink(missing_ok=True)
        self.rows: dict[tuple[str, int], dict[str, Any]] = {}
        self.index: dict[str, int] = {}
        if self.path.is_file():
            for row in read_trials(self.path.parent).to_dict("records"):
                epoch = row.get("epoch")
                key = (str(row["trial_id"]), -1 if pd.isna(epoch) else int(epoch))
                self.rows[key] = {k: (None if _isna(v) else v) for k, v in row.items()}
                self.index[key[0]] = int(row["trial_index"])

    def _trial_index(self, trial_id: str) -> int:
        """Start order, kept across restores: a trial's index is fixed when first seen."""
        if trial_id not in self.index:
            self.index[trial_id] = max([self.index_offset - 1, *self.index.values()]) + 1
        return self.index[trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial_index(trial.trial_id)

    def _base(self, trial: Any) -> dict[str, Any]:
        family, cfg = split_trial_config(trial.config)
        base = {
            "trial_id": trial.trial_id,
            "config_hash": cfg.config_hash(),
            "group_hash": group_hash(cfg),
            "family": family,
            "trial_index": self._trial_index(trial.trial_id),
            **self.static,
            **cfg.to_dict(),
        }
        if self.phase is not None:
            base["phase"] = self.phase
        return base

    def _set_status(self, trial_id: str, status: str, error: str | None) -> None:
        for (tid, _), row in self.rows.items():
            if tid == trial_id:
                row["status"], row["error"] = status, error

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info):
        row = self._base(trial)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        row |= {
            "status": "RUNNING",
            "error": None,
            "epoch": epoch,
            "is_final": bool(result.get("is_final", False)),
            "time_total_s": result.get("time_total_s"),
        }
        for key, value in result.items():
            if key.startswith(METRIC_PREFIXES) or key in METRIC_KEYS:
                row[key] = value
            elif key in ("adapter_path", "predictions_path", "data_fingerprint", "backbone"):
                if value is not None:
                    row[key] = value
        old = self.rows.get((trial.trial_id, epoch), {})
        merged = {**old, **{k: v for k, v in row.items() if v is not None or k not in old}}
        self.rows[(trial.trial_id, epoch)] = merged
        self.rows.pop((trial.trial_id, -1), None)
        self.flush()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info):
        self._set_status(trial.trial_id, "TERMINATED", None)
        self.flush()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info):
        message = error_summary(read_trial_error(trial))
        if not any(tid == trial.trial_id for tid, _ in self.rows):
            self.rows[(trial.trial_id, -1)] = self._base(trial) | {
                "epoch": None,
                "is_final": False,
                "time_total_s": None,
            }
        self._set_status(trial.trial_id, "ERROR", message)
        self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        frame = pd.DataFrame(list(self.rows.values()))
        lead = [c for c in ROW_KEYS if c in frame.columns]
        frame = frame[lead + sorted(c for c in frame.columns if c not in lead)]
        frame = frame.sort_values(["trial_index", "epoch"], na_position="first")
        frame["epoch"] = frame["epoch"].astype("Int64")
        frame["is_final"] = frame["is_final"].fillna(False).astype(bool)
        for col in ROW_KEYS:
            if col not in frame.columns:
                frame[col] = None
        _atomic_write_bytes(self.path, lambda tmp: frame.to_parquet(tmp, index=False))


def _isna(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def read_trial_error(trial: Any) -> str | None:
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


def read_trials(run_dir: str | Path) -> pd.DataFrame:
    """The sweep's rows; an empty frame with the schema's leading columns when none exist."""
    path = Path(run_dir) / TRIALS_FILE
    if not path.is_file():
        return pd.DataFrame(columns=list(ROW_KEYS))
    return read_parquet_once(path)


def read_parquet_once(path: Path) -> pd.DataFrame:
    """Read through one open handle: given a path, pyarrow opens the file more than once, and
    a writer's rename between two opens pairs one version's footer with another's pages
    ("Page was smaller than expected"; tests/test_results.py caught it). An open handle keeps
    its version alive across the rename."""
    with open(path, "rb") as handle:
        return pd.read_parquet(handle)


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
    """`sweep.json`: the exact sweep config, package versions and the code's git commit."""
    run_dir = Path(run_dir)
    manifest = {
        "config": dict(config),
        "versions": _versions(),
        "git_commit": _git_head(Path(__file__).resolve().parent),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    path = run_dir / MANIFEST_FILE
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    _atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text + "\n"))
    return path


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(run_dir) / MANIFEST_FILE).read_text())
