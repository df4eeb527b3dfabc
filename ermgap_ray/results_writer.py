"""The Ray Tune callback that keeps `RUN_DIR/trials.parquet` current after every result.

Apart from `ermgap_ray.results` (the Ray-free reader and file format) because it subclasses
`ray.tune.Callback`; it holds rows in memory and writes them through `results.write_trials`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import Callback

from ermgap_ray.results import (
    TRIALS_FILE,
    error_summary,
    group_hash,
    is_metric_key,
    read_trial_error,
    read_trials,
    result_epoch,
    split_trial_config,
    write_trials,
)

_ARTEFACT_KEYS = ("adapter_path", "predictions_path", "data_fingerprint", "backbone")


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
        self.run_dir = Path(run_dir)
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
        for stale in self.run_dir.glob(f".{TRIALS_FILE}.*"):
            stale.unlink(missing_ok=True)
        self.rows: dict[tuple[str, int], dict[str, Any]] = {}
        self.index: dict[str, int] = {}
        for row in read_trials(self.run_dir).to_dict("records"):
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
        epoch = result_epoch(result)
        row |= {
            "status": "RUNNING",
            "error": None,
            "epoch": epoch,
            "is_final": bool(result.get("is_final", False)),
            "time_total_s": result.get("time_total_s"),
        }
        for key, value in result.items():
            if is_metric_key(key):
                row[key] = value
            elif key in _ARTEFACT_KEYS and value is not None:
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

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Drop the rows of trials this experiment does not know.

        Tune restores from its last experiment snapshot, saved at most every ~10 s (saving
        after every step costs the driver ~40% of a core at 80 trials). A driver killed in that
        window leaves rows of trials it started since; the restored run reruns their grid
        configs, or asks the searcher anew, under new ids, so those rows would count twice.
        """
        known = {t.trial_id for t in trials}
        orphans = {
            tid
            for (tid, _), row in self.rows.items()
            if tid not in known and row.get("phase") == self.phase
        }
        if not orphans:
            return
        self.rows = {key: row for key, row in self.rows.items() if key[0] not in orphans}
        self.flush()
        print(
            f"dropped the rows of {len(orphans)} trial(s) started after Tune's last snapshot of "
            f"the killed run ({', '.join(sorted(orphans))}); this run reran their slots",
            flush=True,
        )

    def flush(self) -> None:
        if self.rows:
            write_trials(self.run_dir, list(self.rows.values()))


def _isna(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False
