"""Experiment tracking through Ray Tune's own logger callbacks (TensorBoard, MLflow).

The sweep calls two hooks: `tracker_callbacks` (Tune callbacks for each phase's Tuner) and
`log_sweep_artifacts` (the figure and table, once the reports are written). Both trackers log
what `ResultsWriter` puts in trials.parquet, with the epoch as the step (zero-shot: step 0):

- every `dev/…`, `train/…`, `lambda`, `lambda_next` and timing metric of each epoch, and the
  final `test/…` metrics with their `_lo`/`_hi` CIs (non-finite values are not logged: a NaN
  there means "not defined", e.g. `lambda_next` of a zero-shot trial);
- the trial's effective config (`family` + every TrialConfig field) as params / hparams.

Where things go:

    RUN_DIR/grid|search/<trial_id>/events.out.tfevents.*   one TensorBoard run per trial
    RUN_DIR/tensorboard_sweep/                             the Pareto figure(s) and the table
    RUN_DIR/mlflow.db, RUN_DIR/mlartifacts/                MLflow (unless MLFLOW_TRACKING_URI)
    RUN_DIR/mlflow.json                                    which MLflow store, experiment and
                                                           "sweep" run this sweep logs to

MLflow 3.x refuses a file store (`./mlruns`) unless MLFLOW_ALLOW_FILE_STORE is set, so the
default store is SQLite in the run directory, next to optuna.db. The experiment is named after
the run; one parent run (tag kind=sweep) holds the reports, and each trial is one child run
(tag kind=trial) found again by its (sweep, phase, trial_id) tags, so `--resume` continues a
trial's run instead of opening a second one, and already logged (metric, step) pairs are
skipped (Tune's trailing final report and a restarted trial's re-reported epochs).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune.logger import LoggerCallback, TBXLoggerCallback

from ermgap_ray.errors import ConfigError
from ermgap_ray.fs import atomic_write
from ermgap_ray.registry import TRACKERS
from ermgap_ray.results import (
    MANIFEST_FILE,
    SUMMARY_METRICS,
    error_summary,
    is_metric_key,
    read_trial_error,
    result_epoch,
    split_trial_config,
)

# The module a tracker writes with; TBXLoggerCallback writes through tensorboardX.
PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow"}
INSTALL_HINT = "pip install 'ermgap-ray[tracking]'"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
MLFLOW_RECORD = "mlflow.json"
TB_SWEEP_DIR = "tensorboard_sweep"
_ARTEFACT_TAGS = ("adapter_path", "predictions_path")
# MLflow names allow alphanumerics, _ - . space : /; the audio+text strata (`train/loss/en+text_F`)
# need the `+` replaced. Everything else we report is already valid and kept as is.
_MLFLOW_BAD = re.compile(r"[^\w\-. :/]")
_BATCH = 100  # MLflow's limit on params (and tags) per log_batch


def _missing(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is None
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def require_trackers(trackers: list[str]) -> None:
    """Refuse, in one line, a tracker whose package is not installed; cheap (no import), so a
    sweep can call it before any trial work starts."""
    for name in trackers:
        if name not in PACKAGES:
            raise ConfigError(f"unknown tracker {name!r}; known: {', '.join(TRACKERS)}")
        if _missing(PACKAGES[name]):
            raise ConfigError(
                f"tracker {name!r} needs the {PACKAGES[name]} package: {INSTALL_HINT}"
            )


def quiet_trackers() -> None:
    """MLflow's "Creating initial MLflow database tables" INFO lines and SQLAlchemy
    deprecation warnings would interleave with the sweep's progress table."""
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"mlflow(\.|$)")
    warnings.filterwarnings("ignore", module=r"tensorboardX(\.|$)")


def tracker_callbacks(trackers: list[str], run_dir: Path) -> list[Any]:
    """Tune callbacks for `trackers` (SweepConfig.trackers), for the Tune RunConfig.

    Tune pickles these into the experiment and `Tuner.restore` revives those copies, so they
    carry no open writer or client across a pickle.
    """
    require_trackers(trackers)
    if not trackers:
        return []
    quiet_trackers()
    run_dir = Path(run_dir)
    out: list[Any] = []
    try:
        if "tensorboard" in trackers:
            out.append(TensorBoardTracker())
        if "mlflow" in trackers:
            import mlflow  # noqa: F401 - fail here, before any trial, not in Tune's setup

            out.append(MLflowTracker(run_dir))
    except ImportError as err:  # installed but broken (e.g. a missing dependency of its own)
        raise ConfigError(f"a tracker's package fails to import ({err}): {INSTALL_HINT}") from None
    return out


# ------------------------------------------------------------------------------------------
# What a result holds
# ------------------------------------------------------------------------------------------


def tracked_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The finite numeric metrics of a result, named as in trials.parquet."""
    out = {}
    for key, value in result.items():
        if not is_metric_key(key):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:  # numpy scalars
                value = float(value)
            except (TypeError, ValueError):
                continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


def effective_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """`family` + every TrialConfig field (defaults included): what the trial really ran,
    the same for a grid trial (`{"trial": {...}}`) and a flat search trial."""
    family, cfg = split_trial_config(config)
    return {"family": family, **cfg.to_dict()}


def mlflow_key(name: str) -> str:
    return _MLFLOW_BAD.sub("_", name)


# ------------------------------------------------------------------------------------------
# TensorBoard
# ------------------------------------------------------------------------------------------


def _trial_dir(trial: Any) -> Path:
    """RUN_DIR/<phase>/<trial_id> when storage is local: event files are there at once (live
    `tensorboard --logdir`) and survive a driver SIGKILL. Named by trial id, not by Tune's
    folder: a restore under a live Ray session renames a trial's folder (`<trial_id>_1a2b`),
    which would split one trial into two TensorBoard runs. Other storage: Tune's driver
    staging folder, which Tune syncs."""
    trial.init_local_path()
    fs = getattr(trial.storage, "storage_filesystem", None)
    if getattr(fs, "type_name", "local") == "local":
        path = Path(trial.remote_experiment_path) / trial.trial_id
    else:
        path = Path(trial.local_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


class TensorBoardTracker(TBXLoggerCallback):
    """Scalars named as in trials.parquet (`dev/wf1`, `lambda`, `test/wf1_lo`), at the epoch.

    Subclassing TBXLoggerCallback keeps Tune from adding its default one (which would write
    a second copy under `ray/tune/…` with the training iteration as the step). A writer that
    reopens a trial folder holding event files (a retry, or `--resume`) starts with
    tensorboardX's `purge_step` at its first epoch: TensorBoard then hides what the earlier
    attempt logged from that epoch on, so a re-run epoch is shown once.
    """

    def __init__(self) -> None:
        super().__init__()
        self._init_state()

    def _init_state(self) -> None:
        self._writers: dict[str, Any] = {}
        self._written: dict[str, set[tuple[str, int]]] = {}
        self._last: dict[str, dict[str, float]] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = {**self.__dict__}
        for key in ("_writers", "_written", "_last", "_trial_writer", "_trial_result"):
            state[key] = {}
        return state

    def log_trial_start(self, trial: Any) -> None:
        writer = self._writers.pop(trial.trial_id, None)
        if writer is not None:  # a retry: its first result opens a purging writer
            writer.close()

    def _writer(self, trial: Any, step: int) -> Any:
        tid = trial.trial_id
        if tid not in self._writers:
            logdir = _trial_dir(trial)
            earlier = len(list(logdir.glob("events.out.tfevents.*")))
            self._writers[tid] = self._summary_writer_cls(
                str(logdir),
                purge_step=step if earlier else None,
                flush_secs=30,
                # The name holds the second it was opened: never reuse an earlier file's name.
                filename_suffix=f".{earlier}" if earlier else "",
            )
            written = self._written.setdefault(tid, set())
            self._written[tid] = {(tag, s) for tag, s in written if s < step}
        return self._writers[tid]

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        step = result_epoch(result)
        scalars = tracked_metrics(result)
        writer = self._writer(trial, step)
        written = self._written[trial.trial_id]
        for tag, value in scalars.items():
            if (tag, step) not in written:
                writer.add_scalar(tag, value, global_step=step)
                written.add((tag, step))
        self._last.setdefault(trial.trial_id, {}).update(scalars)
        writer.flush()

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        writer = self._writers.pop(trial.trial_id, None)
        if writer is None:
            return
        last = self._last.pop(trial.trial_id, {})
        # The hparams table shows the headline numbers, not all ~140 metrics.
        metrics = {k: last[k] for k in SUMMARY_METRICS if k in last}
        if metrics:
            from tensorboardX.summary import hparams

            params = {
                k: v if isinstance(v, (bool, int, float, str)) else str(v)
                for k, v in effective_config(trial.config).items()
            }
            for summary in hparams(hparam_dict=params, metric_dict=metrics):
                writer.file_writer.add_summary(summary)
        writer.close()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _log_tensorboard_reports(run_dir: Path, reports: list[Path]) -> None:
    """PNG figures as images, Markdown tables as text, in RUN_DIR/tensorboard_sweep (rewritten
    whole, so a re-run of the reports never shows twice)."""
    from matplotlib import image
    from tensorboardX import SummaryWriter

    logdir = run_dir / TB_SWEEP_DIR
    shutil.rmtree(logdir, ignore_errors=True)
    if not any(p.suffix in (".png", ".md") for p in reports):
        return
    with SummaryWriter(str(logdir)) as writer:
        for path in reports:
            tag = _report_tag(run_dir, path)
            if path.suffix == ".png":
                pixels = image.imread(str(path))[..., :3]
                writer.add_image(tag, pixels, global_step=0, dataformats="HWC")
            elif path.suffix == ".md":
                writer.add_text(tag, path.read_text(), global_step=0)


def _report_tag(run_dir: Path, path: Path) -> str:
    try:
        return path.relative_to(run_dir).with_suffix("").as_posix()
    except ValueError:
        return path.stem


# ------------------------------------------------------------------------------------------
# MLflow
# ------------------------------------------------------------------------------------------


def default_tracking_uri(run_dir: Path) -> str:
    return f"sqlite:///{Path(run_dir).resolve() / MLFLOW_DB}"


class _MLflowStore:
    """The store, experiment and parent "sweep" run of one run directory.

    RUN_DIR/mlflow.json names the sweep run, so a shared tracking server (MLFLOW_TRACKING_URI)
    never mixes two sweeps of the same name: a fresh sweep writes a fresh record.
    """

    def __init__(self, run_dir: Path) -> None:
        from mlflow.tracking import MlflowClient

        quiet_trackers()
        self.run_dir = Path(run_dir)
        env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        self.uri = env_uri or default_tracking_uri(self.run_dir)
        self.record_uri = env_uri  # None: the run directory's own store, wherever it moves
        # A client bound to the URI, never mlflow.set_tracking_uri: that exports
        # MLFLOW_TRACKING_URI, and the next sweep in this process (or a child) would log here.
        self.client = MlflowClient(tracking_uri=self.uri)
        artifacts = None if env_uri else (self.run_dir / MLFLOW_ARTIFACTS).resolve().as_uri()
        self.experiment_id = self._experiment(artifacts)
        self.sweep_run_id = self._sweep_run()

    def _experiment(self, artifact_location: str | None) -> str:
        name = self.run_dir.name
        found = self.client.get_experiment_by_name(name)
        if found is None:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        if found.lifecycle_stage == "deleted":
            self.client.restore_experiment(found.experiment_id)
        return found.experiment_id

    def _sweep_run(self) -> str:
        path = self.run_dir / MLFLOW_RECORD
        record = json.loads(path.read_text()) if path.is_file() else {}
        if record.get("tracking_uri") == self.record_uri and record.get("sweep_run_id"):
            run_id = record["sweep_run_id"]
            try:
                if self.client.get_run(run_id).info.status != "RUNNING":
                    self.client.update_run(run_id, status="RUNNING")
                return run_id
            except Exception:  # noqa: BLE001 - deleted on the server: open a new one
                pass
        run = self.client.create_run(
            self.experiment_id,
            run_name="sweep",
            tags={"kind": "sweep", "sweep": self.run_dir.name, "run_dir": str(self.run_dir)},
        )
        record = {
            "tracking_uri": self.record_uri,
            "experiment_id": self.experiment_id,
            "sweep_run_id": run.info.run_id,
        }
        with atomic_write(path) as handle:
            handle.write(json.dumps(record, indent=2) + "\n")
        return run.info.run_id

    def find_trial_run(self, phase: str, trial_id: str) -> Any | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.sweep_id = '{self.sweep_run_id}' and tags.phase = '{phase}' "
                f"and tags.trial_id = '{trial_id}'"
            ),
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        return runs[0] if runs else None


class MLflowTracker(LoggerCallback):
    """One MLflow run per Tune trial, a child of the sweep's "sweep" run.

    A LoggerCallback, not a subclass of Ray's MLflowLoggerCallback, whose every method would
    be replaced: its setup calls mlflow.set_tracking_uri (see _MLflowStore), it keys runs by
    trial object in memory (a restored experiment would open a second run per trial), and its
    module imports mlflow (~1.5 s for every sweep, tracked or not). Here a trial's run is
    found again by its tags, and on reopen the (metric, step) pairs it holds are skipped.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self._init_state()

    def _init_state(self) -> None:
        self._store: _MLflowStore | None = None
        self._runs: dict[str, str] = {}
        self._logged: dict[str, set[tuple[str, int]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_store": None, "_runs": {}, "_logged": {}}

    def setup(self, *args: Any, **kwargs: Any) -> None:
        self._init_state()
        self._store = _MLflowStore(self.run_dir)

    @property
    def store(self) -> _MLflowStore:
        if self._store is None:  # a callback used without Tune's setup
            self.setup()
        assert self._store is not None
        return self._store

    def _run_id(self, trial: Any) -> str:
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        store, client = self.store, self.store.client
        phase = trial.experiment_dir_name
        found = store.find_trial_run(phase, tid)
        if found is not None:
            run_id = found.info.run_id
            if found.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
            if "error" in found.data.tags:  # a retry of an errored trial
                client.delete_tag(run_id, "error")
            self._logged[tid] = {
                (key, m.step)
                for key in found.data.metrics
                for m in client.get_metric_history(run_id, key)
            }
        else:
            params = effective_config(trial.config)
            tags = {
                "kind": "trial",
                "sweep": self.run_dir.name,
                "sweep_id": store.sweep_run_id,
                "mlflow.parentRunId": store.sweep_run_id,
                "phase": phase,
                "trial_id": tid,
                "family": str(params["family"]),
                "modality": str(params["modality"]),
                "seed": str(params["seed"]),
            }
            name = f"{params['family']}-{params['modality']}-s{params['seed']}-{tid}"
            run_id = client.create_run(store.experiment_id, run_name=name, tags=tags).info.run_id
            _log_params(client, run_id, params)
            self._logged[tid] = set()
        self._runs[tid] = run_id
        return run_id

    def log_trial_start(self, trial: Any) -> None:
        self._run_id(trial)

    def log_trial_result(self, iteration: int, trial: Any, result: dict) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self._run_id(trial)
        logged = self._logged[trial.trial_id]
        step = result_epoch(result)
        now = int(time.time() * 1000)
        metrics = []
        for name, value in tracked_metrics(result).items():
            key = mlflow_key(name)
            if (key, step) not in logged:
                metrics.append(Metric(key, value, now, step))
                logged.add((key, step))
        tags = []
        if result.get("is_final"):
            tags = [RunTag(k, str(result[k])) for k in _ARTEFACT_TAGS if result.get(k)]
        if metrics or tags:
            self.store.client.log_batch(run_id, metrics=metrics, tags=tags)

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        run_id = self._run_id(trial)
        client = self.store.client
        if failed:
            client.set_tag(run_id, "error", error_summary(read_trial_error(trial))[:5000])
        client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
        self._runs.pop(trial.trial_id, None)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        """Trials Ctrl-C or SIGTERM stopped: KILLED until `--resume` reopens them."""
        for run_id in self._runs.values():
            self.store.client.set_terminated(run_id, status="KILLED")
        self._runs.clear()


def _log_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)) for k, v in params.items()]
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[start : start + _BATCH])


def _log_mlflow_reports(run_dir: Path, reports: list[Path]) -> None:
    """The reports (and sweep.json) as artefacts of the sweep run, in their run-dir layout
    (figures/, tables/); the sweep run is then FINISHED."""
    store = _MLflowStore(run_dir)
    files = [*reports, run_dir / MANIFEST_FILE]
    for path in files:
        if not path.is_file():
            continue
        try:
            folder = path.parent.relative_to(run_dir).as_posix()
        except ValueError:
            folder = "reports"
        store.client.log_artifact(store.sweep_run_id, str(path), folder if folder != "." else None)
    store.client.set_terminated(store.sweep_run_id, status="FINISHED")


def log_sweep_artifacts(trackers: list[str], run_dir: Path, reports: list[Path]) -> None:
    """After the sweep: the figure and table as artefacts of the sweep's tracker runs.

    MLflow: artefacts of the experiment's parent run "sweep" (tag kind=sweep), under
    figures/ and tables/ as in the run directory, with sweep.json. TensorBoard: the PNG
    figures as images and the Markdown tables as text in RUN_DIR/tensorboard_sweep.
    """
    if not trackers:
        return
    require_trackers(trackers)
    quiet_trackers()
    run_dir = Path(run_dir)
    reports = [Path(p) for p in reports]
    if "tensorboard" in trackers:
        _log_tensorboard_reports(run_dir, reports)
    if "mlflow" in trackers:
        _log_mlflow_reports(run_dir, reports)
