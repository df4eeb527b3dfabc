"""Sweeps: the paper's ablation grid and the multi-objective Optuna search, on Ray Tune.

A trial runs on one of two executors (`launch.executor_for`): `tune` runs the recipe inside the
Tune function trainable (one CPU worker), `train` runs a Ray Train `TorchTrainer` with DeepSpeed
ZeRO from that trainable (RAY_NOTES.md "Train inside Tune"). One run directory holds everything a
sweep produced:

    STORAGE/NAME/  sweep.json  trials.parquet  optuna.db  driver.lock
                   grid/ search/ (Tune experiments; a `tune` trial's checkpoints live here)
                   train/<trial_id>/ (a `train` trial's Ray Train run: checkpoints, adapter)
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from ermgap_ray.config import (
    ConfigError,
    TrialConfig,
    parse_overrides,
    read_yaml,
    safe_run_name,
)
from ermgap_ray.data.schema import MODALITIES
from ermgap_ray.errors import RunLockedError
from ermgap_ray.fs import ensure_writable_dir
from ermgap_ray.registry import (
    PAPER_FAMILIES,
    SAMPLERS,
    SEARCH_FAMILY,
    TRACKERS,
)
from ermgap_ray.results import (
    MANIFEST_FILE,
    OPTUNA_DB,
    SUMMARY_METRICS,
    read_manifest,
    read_trials,
    split_trial_config,
    write_manifest,
)

PRESET_DIR = Path(__file__).resolve().parents[1] / "sweeps"
NONFINITE_MARKER = "NONFINITE_LOSS.txt"
KINDS = ("grid", "search", "both")
EXECUTORS = ("auto", "tune", "train")
LOCK_FILE = "driver.lock"
# A cold compiler probe takes ≈ 12 s, imports included; past this the trials start anyway.
COMPILER_PROBE_WAIT_S = 60.0
# On --resume these come from the command line; everything else is what sweep.json ran.
# Tuner.restore keeps the experiment's own TuneConfig and RunConfig, so only these can differ.
RUNTIME_KNOBS = ("cluster", "storage", "resume")


def _knob(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class SweepConfig:
    """A sweep: which trials (grid, search or both), where they run and where results go."""

    name: str | None = _knob(None, "Run name; results go to STORAGE/NAME. Default: the preset.")
    preset: str = _knob("paper", "Preset in sweeps/<preset>.yaml (or a YAML path).")
    kind: Literal["grid", "search", "both"] = _knob(
        "grid",
        "grid: the paper's ablation; search: Optuna multi-objective; both: grid then search.",
    )
    cluster: str = _knob(
        "auto", "auto (RAY_ADDRESS, a running local head, else start one) | local | HOST:PORT."
    )
    storage: str = _knob("runs", "Folder holding run directories.")
    workers_per_trial: int = _knob(1, "Ray Train workers (data-parallel ranks) per trial.")
    gpus_per_worker: float = _knob(0.0, "GPUs per Train worker (0 = CPU, gloo, fp32).")
    executor: Literal["auto", "tune", "train"] = _knob(
        "auto",
        "tune: the trial's loop runs inside its Tune trainable (one CPU worker, no worker group); "
        "train: a Ray Train TorchTrainer with DeepSpeed ZeRO; auto: train whenever a trial has "
        "more than one worker or any GPU, else tune.",
    )
    reuse_actors: bool = _knob(
        True,
        "Tune reuses a finished trial's process for the next one, so torch, transformers, peft "
        "and the backbone load once per slot, not once per trial (experimental in Ray for "
        "function trainables; every fault test runs with it on).",
    )
    max_concurrent: int | None = _knob(
        None, "Trials at once; default: the cluster's CPUs (or GPUs) / resources per trial."
    )
    seeds: int = _knob(3, "Grid: seeds 0..seeds-1 per family and modality.")
    modalities: list[str] = _knob(list(MODALITIES), "Grid: modalities; search: searched over.")
    families: list[str] = _knob(list(PAPER_FAMILIES), "Grid: ablation families to run.")
    num_samples: int = _knob(24, "Search: number of Optuna trials.")
    sampler: Literal["auto", "gp", "tpe", "nsga2", "random"] = _knob(
        "auto",
        "Search: gp (Gaussian process, logEHVI), tpe (multivariate, grouped), nsga2 (NSGA-II), "
        "random (baseline); auto picks by budget and space (search.resolve_sampler).",
    )
    constraints: list[str] = _knob(
        [],
        "Search: bounds `metric<=value` / `metric>=value` in the metric's own units "
        "(fractions), e.g. dev/max_gap_wf1<=0.05; the sampler steers toward feasible trials and "
        "the operating point defaults to them.",
    )
    warm_start: bool = _knob(
        True, "Search: evaluate the paper grid's configurations first (points_to_evaluate)."
    )
    trackers: list[str] = _knob(
        [], "Experiment trackers: tensorboard and/or mlflow (needs the [tracking] extra)."
    )
    sampler_seed: int = _knob(0, "Search: seed of the Optuna sampler.")
    objectives: list[str] = _knob(
        ["dev/wf1:max", "dev/max_gap_wf1:min"], "Search: `metric:max|min`, Optuna's objectives."
    )
    trial: dict[str, Any] = _knob({}, "TrialConfig fields applied to every trial (`--set`).")
    resume: bool = _knob(False, "Continue the run in STORAGE/NAME (finished trials are kept).")
    max_failures: int = _knob(1, "Tune retries of a failed trial (never for NonFiniteLoss).")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"sweep field 'kind': must be one of {', '.join(KINDS)}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"sweep field 'executor': must be one of {', '.join(EXECUTORS)}")
        if self.executor == "tune" and (self.workers_per_trial > 1 or self.gpus_per_worker > 0):
            raise ConfigError(
                "sweep field 'executor': tune runs one CPU worker per trial; use train (or auto) "
                "for workers_per_trial > 1 or GPUs"
            )
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sweep field 'sampler': must be one of {', '.join(SAMPLERS)}")
        bad_trackers = sorted(set(self.trackers) - set(TRACKERS))
        if bad_trackers:
            raise ConfigError(
                f"sweep field 'trackers': unknown {', '.join(bad_trackers)}; known: "
                f"{', '.join(TRACKERS)}"
            )
        unknown = sorted(set(self.families) - set(PAPER_FAMILIES))
        if unknown:
            raise ConfigError(
                f"unknown families {', '.join(unknown)}; known: {', '.join(PAPER_FAMILIES)}"
            )
        bad = sorted(set(self.modalities) - set(MODALITIES))
        if bad or not self.modalities:
            raise ConfigError(f"modalities must be a non-empty subset of {', '.join(MODALITIES)}")
        for name in ("workers_per_trial", "seeds", "num_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sweep field '{name}': must be >= 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError("sweep field 'max_concurrent': must be >= 1")
        safe_run_name(self.run_name)
        if self.max_failures < 0:
            raise ConfigError("sweep field 'max_failures': must be >= 0")
        self.parsed_objectives()
        if self.constraints:
            from ermgap_ray.search import parse_bounds

            parse_bounds(self.constraints)
        unknown = sorted(set(self.trial) - set(TrialConfig.field_names()))
        if unknown:
            raise ConfigError(
                f"unknown config key(s) {', '.join(unknown)}; valid keys: "
                f"{', '.join(TrialConfig.field_names())}"
            )

    def parsed_objectives(self) -> list[tuple[str, str]]:
        out = []
        for text in self.objectives:
            metric, _, mode = text.rpartition(":")
            if not metric or mode not in ("max", "min"):
                raise ConfigError(f"objective {text!r}: expected `metric:max` or `metric:min`")
            out.append((metric, mode))
        return out

    @property
    def run_name(self) -> str:
        return self.name or Path(self.preset).stem

    @property
    def run_dir(self) -> Path:
        return (Path(self.storage) / self.run_name).resolve()

    @property
    def resolved_executor(self) -> str:
        return executor_for(self.executor, self.workers_per_trial, self.gpus_per_worker)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def executor_for(kind: str, workers: int, gpus_per_worker: float) -> str:
    """`auto` -> `train` for more than one worker or any GPU, else `tune`: a ZeRO worker group
    earns its seven actor start-ups only when there is data parallelism or a GPU to drive."""
    if kind != "auto":
        return kind
    return "train" if workers > 1 or gpus_per_worker > 0 else "tune"


def load_sweep_config(
    preset: str = "paper", overrides: dict[str, Any] | None = None, sets: list[str] | None = None
) -> SweepConfig:
    """Preset YAML, then CLI flags (`overrides`, None = not given), then `--set` trial values."""
    path = Path(preset) if preset.endswith((".yaml", ".yml")) else PRESET_DIR / f"{preset}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown preset {preset!r} (no {path}); presets: {known}")
    values = read_yaml(path)
    unknown = sorted(set(values) - {f.name for f in fields(SweepConfig)})
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {', '.join(unknown)}")
    values["preset"] = preset
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    values["trial"] = {**(values.get("trial") or {}), **parse_overrides(sets)}
    return SweepConfig(**values)


# ------------------------------------------------------------------------------------------
# What to run
# ------------------------------------------------------------------------------------------


def grid_trials(cfg: SweepConfig) -> list[dict[str, Any]]:
    """The ablation as explicit per-trial dicts: family × modality × seed (each validated).

    Ordered longest first (`expected_cost`), so that the few-second untrained references fill
    the last free slots instead of one long trial holding the sweep while the other slots idle.
    """
    out = []
    for family in cfg.families:
        for modality in cfg.modalities:
            for seed in range(cfg.seeds):
                values = {**cfg.trial, **PAPER_FAMILIES[family], "modality": modality, "seed": seed}
                out.append(({"family": family, **values}, TrialConfig.from_dict(values)))
    out.sort(key=lambda pair: expected_cost(pair[1]), reverse=True)
    return [trial for trial, _ in out]


def expected_cost(cfg: TrialConfig) -> tuple[int, bool, bool]:
    """A trial's cost rank without timing it: epochs, then a transcript in the prompt (the same
    clips with more tokens), then a dev pass every epoch (adaptive λ's dual step). Longest-first
    list scheduling on these keys leaves the slots at most the last short trial apart."""
    return (cfg.epochs, cfg.modality == "audio+text", cfg.scores_dev_every_epoch)


# ------------------------------------------------------------------------------------------
# The trainable
# ------------------------------------------------------------------------------------------


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl+C or SIGTERM stopped Tune; its experiment state is saved and `--resume` continues
    it. `terminated` says it was SIGTERM, so the CLI exits 143 instead of 130."""

    terminated = False

    @classmethod
    def in_phase(cls, phase: str, cfg: SweepConfig, terminated: bool = False) -> SweepInterrupted:
        err = cls(
            f"sweep interrupted in phase {phase!r}; continue it with --resume "
            f"--name {cfg.run_name} --storage {cfg.storage}"
        )
        err.terminated = terminated
        return err


class NonFiniteTrialError(FloatingPointError):
    """The trial diverged; deterministic, so a retry would diverge again."""


def _nonfinite_message(err: BaseException) -> str | None:
    text = str(err)
    if "NonFiniteLoss:" not in text:
        return None
    return next(ln.strip() for ln in text.splitlines() if "NonFiniteLoss:" in ln)


def make_trainable(
    run_dir: Path, executor: str, workers: int, gpus_per_worker: float
) -> Callable[[dict[str, Any]], None]:
    """The Tune function trainable that runs one trial on `executor` (tune | train).

    - tune, and every zero-shot trial: the recipe runs here, in the trainable's process,
      reporting through `tune.report` with checkpoints that Tune persists in the trial folder.
    - train: a Ray Train `TorchTrainer` named by the Tune trial id under RUN_DIR/train, unique
      per trial (a new sweep never resumes an old run by accident), yet a Tune retry or
      `--resume` of the same trial reopens it and Train continues from its last checkpoint.

    Either way the trial's last result carries the artefact paths. NonFiniteLoss leaves a marker
    in the trial dir so Tune's retry fails at once instead of diverging again.
    """
    train_root = str(run_dir / "train")

    def ermgap_trial(config: dict[str, Any]) -> None:
        from ray import tune

        _, cfg = split_trial_config(config)
        ctx = tune.get_context()
        marker = Path(ctx.get_trial_dir()) / NONFINITE_MARKER
        if marker.is_file():
            raise NonFiniteTrialError(marker.read_text())
        try:
            if executor == "tune" or cfg.epochs == 0:
                from ermgap_ray.train.launch import run_in_tune

                final = run_in_tune(cfg, threads=workers)
            else:
                final = _fit_trainer(cfg, ctx.get_trial_id(), train_root, workers, gpus_per_worker)
        except Exception as err:
            message = _nonfinite_message(err)
            if message is None:
                raise
            marker.write_text(message)
            raise NonFiniteTrialError(message) from None
        if final:
            tune.report(final)

    return ermgap_trial


def _fit_trainer(
    cfg: TrialConfig, name: str, train_root: str, workers: int, gpus_per_worker: float
) -> dict[str, Any]:
    from ray.tune.integration.ray_train import TuneReportCallback

    from ermgap_ray.train.launch import build_trainer, final_metrics

    trainer = build_trainer(
        cfg,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        name=name,
        storage_path=train_root,
        max_failures=0,
        callbacks=[TuneReportCallback()],
        verbose=False,
    )
    return final_metrics(trainer.fit())


def trial_resources(executor: str, gpus_per_worker: float) -> Callable[[dict[str, Any]], Any]:
    """Tune resources per trial config.

    A trainable that runs the loop itself (the tune executor, and zero-shot trials) asks for one
    worker's CPU (and GPU). A trainable that launches a TorchTrainer asks for no CPU, which its
    Train workers need (RAY_NOTES.md: a 1-CPU trainable deadlocks 2 trials on 2 cores).
    """
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    def resources(config: dict[str, Any]) -> Any:
        _, cfg = split_trial_config(config)
        if executor == "train" and cfg.epochs > 0:
            return resource_dict_to_pg_factory({"cpu": 0, "memory": 1e6})
        return resource_dict_to_pg_factory({"cpu": 1, "gpu": gpus_per_worker})

    return resources


def trial_dirname(trial: Any) -> str:
    return trial.trial_id


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    run_dir: Path
    trials: pd.DataFrame
    summary: pd.DataFrame
    n_terminated: int
    n_error: int
    manifest: Path
    reports: list[Path] = field(default_factory=list)


def _default_concurrency(cfg: SweepConfig) -> int:
    import ray

    res = ray.cluster_resources()
    if cfg.gpus_per_worker > 0:
        per = cfg.workers_per_trial * cfg.gpus_per_worker
        return max(1, int(res.get("GPU", 0) // per))
    return max(1, int(res.get("CPU", 1) // cfg.workers_per_trial))


def _prepare_inputs(configs: list[TrialConfig]) -> dict[str, Any]:
    """Validate data + backbone and build the encoder cache once, before any trial starts.

    Each input spec is checked (a modality has its own transcript checks), but each set of
    audio files is decoded once: the modalities of one corpus share it.
    """
    from ermgap_ray.train.recipe import corpus_key, inputs_key, prepare_trial_inputs

    static: dict[str, Any] = {}
    seen: set[tuple[Any, ...]] = set()
    audio_checked: set[tuple[Any, ...]] = set()
    for trial in configs:
        key = inputs_key(trial)
        if key in seen:
            continue
        seen.add(key)
        corpus = corpus_key(trial)
        inputs = prepare_trial_inputs(trial, check_audio=corpus not in audio_checked)
        audio_checked.add(corpus)
        static["data_fingerprint"] = inputs.data_fingerprint
    return static


def _prepare_inputs_probing_compiler(configs: list[TrialConfig]) -> dict[str, Any]:
    """`_prepare_inputs`, with inductor's one-off CPU probe warming in the background when a
    trial compiles (`torch_compile`): on a cold machine it saves each trial process ≈ 7 s."""
    from ermgap_ray.model import start_compiler_probe

    probe = start_compiler_probe() if any(c.torch_compile for c in configs) else None
    static = _prepare_inputs(configs)
    if probe is not None:
        with suppress(subprocess.TimeoutExpired):  # the trials probe for themselves
            probe.wait(timeout=COMPILER_PROBE_WAIT_S)
    return static


def _trial_configs(cfg: SweepConfig) -> list[TrialConfig]:
    """Every grid trial and each modality's search base, validated before anything starts."""
    out = []
    if cfg.kind in ("grid", "both"):
        out += [split_trial_config(t)[1] for t in grid_trials(cfg)]
    if cfg.kind in ("search", "both"):
        out += [TrialConfig.from_dict({**cfg.trial, "modality": m}) for m in cfg.modalities]
    return out


def _phases(cfg: SweepConfig) -> list[str]:
    return ["grid", "search"] if cfg.kind == "both" else [cfg.kind]


def _check_run_dir(cfg: SweepConfig) -> None:
    run_dir = cfg.run_dir
    exists = run_dir.exists() and any(p.name != LOCK_FILE for p in run_dir.iterdir())
    if cfg.resume and not (run_dir / MANIFEST_FILE).is_file():
        raise ConfigError(f"nothing to resume: {run_dir} has no {MANIFEST_FILE}")
    if exists and not cfg.resume:
        raise ConfigError(
            f"run directory {run_dir} already exists; pass --resume to continue it or --name NEW "
            "for a fresh sweep"
        )


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """An OS file lock on RUN_DIR/driver.lock for the driver's lifetime.

    A second driver (or a `--resume` of a live run) is refused at once with the holder's PID and
    host; the kernel releases the lock when the holder dies, even by SIGKILL, so a crashed
    driver never blocks its own `--resume`.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "pid unknown"
            raise RunLockedError(
                f"run directory {run_dir} is in use by another driver ({holder}); wait for it "
                "to finish, or stop it and pass --resume"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def resume_config(stored: dict[str, Any], given: SweepConfig, explicit: set[str]) -> SweepConfig:
    """What `--resume` runs: sweep.json's config, plus the runtime knobs from the command line.

    Tuner.restore keeps the experiment's own grid, search, TuneConfig and RunConfig, so any
    other knob given explicitly (`explicit`: the flags and `--set` keys on the command line)
    that differs from what was run is refused with the list, never silently ignored.
    """
    given_values = given.to_dict()
    differs = []
    for knob in sorted(explicit - set(RUNTIME_KNOBS)):
        if knob.startswith("trial."):
            key = knob.split(".", 1)[1]
            was, now = stored.get("trial", {}).get(key), given.trial.get(key)
            if was != now:
                differs.append(f"--set {key}={now!r} (was {was!r})")
        elif knob in given_values and stored.get(knob) != given_values[knob]:
            differs.append(f"{knob}={given_values[knob]!r} (was {stored.get(knob)!r})")
    if differs:
        raise ConfigError(
            f"--resume continues {given.run_dir} as it was started; these differ from its "
            f"{MANIFEST_FILE}: {'; '.join(differs)}. Drop them, or start a new sweep with --name"
        )
    runtime = {k: getattr(given, k) for k in RUNTIME_KNOBS}
    return SweepConfig(**{**stored, **runtime, "resume": True})


def _tuner(
    cfg: SweepConfig,
    phase: str,
    trainable: Callable[[dict[str, Any]], None],
    callbacks: list[Any],
    concurrency: int,
) -> Any:
    from ray import tune

    run_dir = cfg.run_dir
    wrapped = tune.with_resources(
        trainable, trial_resources(cfg.resolved_executor, cfg.gpus_per_worker)
    )
    exp_dir = run_dir / phase
    if cfg.resume and tune.Tuner.can_restore(str(exp_dir)):
        return tune.Tuner.restore(
            str(exp_dir), trainable=wrapped, resume_unfinished=True, resume_errored=True
        )
    if exp_dir.exists():
        shutil.rmtree(exp_dir)
    keep = int(cfg.trial.get("keep_checkpoints", TrialConfig().keep_checkpoints))
    run_config = tune.RunConfig(
        name=phase,
        storage_path=str(run_dir),
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=keep),
        callbacks=callbacks,
        verbose=0,
    )
    tune_config: dict[str, Any] = {
        "max_concurrent_trials": concurrency,
        "trial_dirname_creator": trial_dirname,
        "reuse_actors": cfg.reuse_actors,
    }
    if phase == "grid":
        return tune.Tuner(
            wrapped,
            param_space={"trial": tune.grid_search(grid_trials(cfg))},
            tune_config=tune.TuneConfig(num_samples=1, **tune_config),
            run_config=run_config,
        )
    from ermgap_ray.search import (
        ConstrainedOptunaSearch,
        SearchSpace,
        make_sampler,
        optuna_storage,
        parse_bounds,
        resolve_sampler,
    )

    objectives = cfg.parsed_objectives()
    space = SearchSpace(cfg.trial, cfg.modalities)
    sampler = resolve_sampler(cfg.sampler, cfg.num_samples, space.conditional)
    points = space.warm_start_points(cfg.num_samples) if cfg.warm_start else []
    bounds = parse_bounds(cfg.constraints)
    print(
        f"search: {sampler} sampler{' (auto)' if cfg.sampler == 'auto' else ''}, "
        f"{cfg.num_samples} trials, {len(points)} warm-start point(s) from the paper grid, "
        f"constraints: {', '.join(map(str, bounds)) or 'none'}",
        flush=True,
    )
    search = ConstrainedOptunaSearch(
        space=space,
        metric=[m for m, _ in objectives],
        mode=[mode for _, mode in objectives],
        sampler=make_sampler(sampler, cfg.sampler_seed, cfg.num_samples, concurrency),
        study_name=cfg.run_name,
        storage=optuna_storage(run_dir),
        points_to_evaluate=points or None,
        bounds=bounds,
    )
    return tune.Tuner(
        wrapped,
        tune_config=tune.TuneConfig(search_alg=search, num_samples=cfg.num_samples, **tune_config),
        run_config=run_config,
    )


class _TerminationToInterrupt:
    """SIGTERM (what SLURM and Kubernetes send on preemption) handled as Ctrl-C: Tune stops its
    trials and saves its state, and the driver exits 143 with the `--resume` hint. Installed
    after `ray.init`, whose own handler would abort the process with a C++ stack dump."""

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def __enter__(self) -> _TerminationToInterrupt:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True
        os.kill(os.getpid(), signal.SIGINT)

    def __exit__(self, *exc: Any) -> None:
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)


def run_sweep(
    cfg: SweepConfig,
    trainable: Callable[[dict[str, Any]], None] | None = None,
    progress_interval_s: float = 10.0,
    quiet: bool = True,
    explicit: set[str] | None = None,
) -> SweepResult:
    """Check storage, lock the run directory, validate inputs once, connect, run each phase's
    Tuner, write results and reports.

    `trainable` replaces the recipe trainable (tests use a small function that reports
    deterministic metrics); everything else (resources, callbacks, restore) is the same.
    `explicit` names the knobs the caller set (CLI flags, `trial.<key>` for `--set`); on resume
    only those are compared with sweep.json (None: none; sweep.json decides what runs).
    `quiet` leaves trial errors to the progress table's one-liners and trials.parquet instead
    of Tune's full tracebacks (which stay in each trial's error.txt).
    """
    ensure_writable_dir(cfg.storage)
    with run_dir_lock(cfg.run_dir):
        _check_run_dir(cfg)
        if cfg.resume:
            stored = read_manifest(cfg.run_dir).config
            cfg = resume_config(stored, cfg, explicit or set())
        from ermgap_ray.tracking import require_trackers

        require_trackers(cfg.trackers)
        return _run_locked(cfg, trainable, progress_interval_s, quiet)


def _run_locked(
    cfg: SweepConfig,
    trainable: Callable[[dict[str, Any]], None] | None,
    progress_interval_s: float,
    quiet: bool,
) -> SweepResult:
    import optuna

    from ermgap_ray.cluster import connect, explicit_address, probe
    from ermgap_ray.progress import ProgressTable
    from ermgap_ray.results_writer import ResultsWriter
    from ermgap_ray.tracking import log_sweep_artifacts, tracker_callbacks

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if quiet:
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    run_dir = cfg.run_dir
    address = explicit_address(cfg.cluster)
    if address:
        probe(address)
    base = _trial_configs(cfg)
    static = _prepare_inputs_probing_compiler(base) if trainable is None else {}
    info = connect(cfg.cluster)
    print(info.describe(), flush=True)
    concurrency = cfg.max_concurrent or _default_concurrency(cfg)
    manifest = write_manifest(
        run_dir, cfg.to_dict(), cluster=dataclasses.asdict(info), status="running", **static
    )
    trainable = trainable or make_trainable(
        run_dir, cfg.resolved_executor, cfg.workers_per_trial, cfg.gpus_per_worker
    )

    offset = 0
    with _TerminationToInterrupt() as termination:
        for phase in _phases(cfg):
            writer = ResultsWriter(run_dir, static=static, index_offset=offset, phase=phase)
            total = len(grid_trials(cfg)) if phase == "grid" else cfg.num_samples
            progress = ProgressTable(concurrency, progress_interval_s, title=phase, total=total)
            callbacks = [writer, progress, *tracker_callbacks(cfg.trackers, run_dir)]
            tuner = _tuner(cfg, phase, trainable, callbacks, concurrency)
            grid = tuner.fit()
            # Ctrl-C makes Tune stop its trials and return normally, with the stopped trials not
            # errored: a trial that ended without its final report means the sweep was cut short.
            unfinished = [
                r for r in grid if r.error is None and not (r.metrics or {}).get("is_final")
            ]
            if (
                termination.received
                or unfinished
                or len(grid) > grid.num_terminated + grid.num_errors
            ):
                write_manifest(run_dir, cfg.to_dict(), status="interrupted", **static)
                raise SweepInterrupted.in_phase(phase, cfg, terminated=termination.received)
            if phase == "search":
                from ermgap_ray.search import fail_stale_optuna_trials

                stale = fail_stale_optuna_trials(run_dir, cfg.run_name)
                if stale:
                    print(f"marked {stale} stale RUNNING Optuna trial(s) FAIL", flush=True)
            if phase == "grid":
                offset = len(grid_trials(cfg))

    trials = read_trials(run_dir)
    status = trials.groupby("trial_id")["status"].last() if len(trials) else pd.Series([])
    n_ok, n_err = int((status == "TERMINATED").sum()), int((status == "ERROR").sum())
    manifest = write_manifest(
        run_dir,
        cfg.to_dict(),
        cluster=dataclasses.asdict(info),
        status="finished",
        trials={"terminated": n_ok, "error": n_err},
        **static,
    )
    summary = summarize(trials)
    reports = _write_reports(run_dir)
    log_sweep_artifacts(cfg.trackers, run_dir, reports)
    print(format_summary(summary, run_dir, n_ok, n_err, reports), flush=True)
    return SweepResult(run_dir, trials, summary, n_ok, n_err, manifest, reports)


def _write_reports(run_dir: Path) -> list[Path]:
    """The paper's tables and figures; a failure there never costs the results."""
    from ermgap_ray.report import write_reports

    try:
        written = write_reports(run_dir)
    except Exception as err:  # noqa: BLE001 - results are on disk; the report is a bonus
        print(f"warning: report failed ({err.__class__.__name__}: {err})", flush=True)
        return []
    return [Path(p) for p in written.values()]


def summarize(trials: pd.DataFrame) -> pd.DataFrame:
    """Family × modality over seeds: n and mean / 95% Student-t CI of the headline metrics."""
    from ermgap_ray.pareto import aggregate_seeds, final_rows

    if trials.empty or "is_final" not in trials.columns:
        return pd.DataFrame()
    final = final_rows(trials)
    final = final[final["family"] != SEARCH_FAMILY].copy()
    metrics = [m for m in SUMMARY_METRICS if m in final.columns]
    if final.empty or not metrics:
        return pd.DataFrame()
    final["cell"] = final["family"] + " | " + final["modality"]
    order = {f: i for i, f in enumerate(PAPER_FAMILIES)}
    out = aggregate_seeds(final, metrics, by="cell", keep=("family", "modality"))
    out["_order"] = out["family"].map(order)
    return out.sort_values(["_order", "modality"]).drop(columns=["_order", "cell"])


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The printed summary: one row per family × modality, cells `mean ± half-width` in points;
    `n/a (1 seed)` where one seed gives no interval."""
    metrics = [m for m in SUMMARY_METRICS if f"{m}_mean" in summary.columns]
    table = summary[["family", "modality", "n"]].copy()
    for m in metrics:
        mean = 100 * summary[f"{m}_mean"]
        half = 100 * (summary[f"{m}_mean"] - summary[f"{m}_lo"])
        cells = mean.map("{:.1f}".format) + " ± " + half.map("{:.1f}".format)
        cells[summary["n"] < 2] = mean.map("{:.1f}".format) + " (n/a, 1 seed)"
        cells[mean.isna()] = "nan"
        table[m] = cells
    return table


def format_summary(
    summary: pd.DataFrame, run_dir: Path, n_ok: int, n_err: int, reports: list[Path]
) -> str:
    lines = [f"trials: {n_ok} finished, {n_err} failed"]
    if not summary.empty:
        lines += ["", summary_table(summary).to_string(index=False)]
        lines.append("(percent; mean ± 95% CI half-width over seeds)")
    lines += ["", f"results: {run_dir / 'trials.parquet'}", f"manifest: {run_dir / MANIFEST_FILE}"]
    if (run_dir / OPTUNA_DB).is_file():
        lines.append(f"optuna: sqlite:///{run_dir / OPTUNA_DB}")
    lines += [f"report: {p}" for p in reports]
    return "\n".join(lines)
