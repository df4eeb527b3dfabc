"""Sweeps: the paper's ablation grid and the multi-objective Optuna search, on Ray Tune.

A trial is `ermgap_ray.train.build_trainer(...)` run from a function trainable (RAY_NOTES.md
"Train inside Tune"). One run directory holds everything a sweep produced:

    STORAGE/NAME/  sweep.json  trials.parquet  optuna.db  grid/ search/ (Tune experiments)
                   train/<trial_id>/ (each trial's Ray Train run: checkpoints, adapter)
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import warnings
from collections.abc import Callable
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
from ermgap_ray.results import (
    MANIFEST_FILE,
    ResultsWriter,
    read_manifest,
    read_trials,
    split_trial_config,
    write_manifest,
)

PRESET_DIR = Path(__file__).resolve().parents[1] / "sweeps"
OPTUNA_DB = "optuna.db"
NONFINITE_MARKER = "NONFINITE_LOSS.txt"
SAMPLERS = ("nsga2", "tpe", "random")
KINDS = ("grid", "search", "both")

# The paper's ablation (DESIGN.md "Baselines and ablations"). A family sets only what defines
# it, so `trial:` / `--set` values (lam, eta, epochs...) reach every family that uses them.
# mean-gap uses fixed λ with p=2: it isolates max-vs-mean from the λ schedule, and fixed-p2 is
# its max-gap twin.
PAPER_FAMILIES: dict[str, dict[str, Any]] = {
    "zero-shot": {"objective": "erm", "lambda_mode": "fixed", "lam": 0.0, "epochs": 0},
    "erm": {"objective": "erm", "lambda_mode": "fixed", "lam": 0.0},
    "fixed-p1": {"objective": "minmaxgap", "lambda_mode": "fixed", "p": 1},
    "fixed-p2": {"objective": "minmaxgap", "lambda_mode": "fixed", "p": 2},
    "adaptive-p1": {"objective": "minmaxgap", "lambda_mode": "adaptive", "p": 1},
    "adaptive-p2": {"objective": "minmaxgap", "lambda_mode": "adaptive", "p": 2},
    "groupdro": {"objective": "groupdro", "lambda_mode": "fixed", "lam": 0.0},
    "meangap": {"objective": "meangap", "lambda_mode": "fixed", "p": 2},
}
SEARCH_FAMILY = "search"

# One registry of search ranges (DomainBed's hparams_registry): (kind, *args) per knob.
# "choice" -> categorical, "log" -> log-uniform float, "float" -> uniform float.
SEARCH_SPACE: dict[str, dict[str, tuple[Any, ...]]] = {
    "common": {
        "p": ("choice", (1, 2)),
        "lambda_mode": ("choice", ("fixed", "adaptive")),
    },
    "fixed": {"lam": ("log", 1e-2, 10.0)},
    "adaptive": {
        "lam_max": ("log", 1.0, 20.0),
        "lam": ("log", 1e-2, 1.0),
        "eta": ("log", 0.1, 10.0),
        "epsilon": ("float", 0.0, 0.1),
    },
    "optim": {"lr": ("log", 1e-4, 1e-2), "lora_r": ("choice", (4, 8, 16))},
}


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
    max_concurrent: int | None = _knob(
        None, "Trials at once; default: the cluster's CPUs (or GPUs) / resources per trial."
    )
    seeds: int = _knob(3, "Grid: seeds 0..seeds-1 per family and modality.")
    modalities: list[str] = _knob(list(MODALITIES), "Grid: modalities; search: searched over.")
    families: list[str] = _knob(list(PAPER_FAMILIES), "Grid: ablation families to run.")
    num_samples: int = _knob(24, "Search: number of Optuna trials.")
    sampler: Literal["nsga2", "tpe", "random"] = _knob(
        "nsga2", "Search: nsga2 (NSGA-II), tpe (multivariate, grouped) or random (baseline)."
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
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sweep field 'sampler': must be one of {', '.join(SAMPLERS)}")
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    """The ablation as explicit per-trial dicts: family × modality × seed (each validated)."""
    out = []
    for family in cfg.families:
        for modality in cfg.modalities:
            for seed in range(cfg.seeds):
                values = {**cfg.trial, **PAPER_FAMILIES[family], "modality": modality, "seed": seed}
                TrialConfig.from_dict(values)
                out.append({"family": family, **values})
    return out


def _suggest(trial: Any, name: str, spec: tuple[Any, ...]) -> Any:
    kind, *args = spec
    if kind == "choice":
        return trial.suggest_categorical(name, list(args[0]))
    return trial.suggest_float(name, args[0], args[1], log=kind == "log")


class SearchSpace:
    """Optuna define-by-run space over SEARCH_SPACE; a class (not a closure) so Tune can pickle
    it into its searcher checkpoint. Knobs fixed by `trial:` / `--set` are not searched."""

    def __init__(self, fixed: dict[str, Any], modalities: list[str]) -> None:
        self.fixed = dict(fixed)
        self.modalities = list(modalities)

    def __call__(self, trial: Any) -> dict[str, Any]:
        def draw(group: str) -> None:
            for name, spec in SEARCH_SPACE[group].items():
                if name not in self.fixed:
                    _suggest(trial, name, spec)

        draw("common")
        mode = self.fixed.get("lambda_mode") or trial.params["lambda_mode"]
        draw(mode)
        draw("optim")
        constants = {"family": SEARCH_FAMILY, "objective": "minmaxgap", **self.fixed}
        if "modality" not in self.fixed:
            if len(self.modalities) > 1:
                trial.suggest_categorical("modality", self.modalities)
            else:
                constants["modality"] = self.modalities[0]
        return constants


def make_sampler(kind: str, seed: int, num_samples: int) -> Any:
    """NSGA-II / TPE sized to the budget: their defaults (50 per generation, 10 startup
    trials) would make a 12-trial search pure random sampling."""
    import optuna

    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(
            population_size=max(4, min(50, num_samples // 3)), seed=seed
        )
    if kind == "tpe":
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            multivariate=True,
            group=True,
            constant_liar=True,
            n_startup_trials=max(3, min(10, num_samples // 3)),
            seed=seed,
        )
    return optuna.samplers.RandomSampler(seed=seed)


def optuna_storage(run_dir: Path) -> Any:
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{run_dir / OPTUNA_DB}")


def fail_stale_optuna_trials(run_dir: Path, study_name: str) -> int:
    """After a restore, trials asked before the driver died stay RUNNING forever; fail them."""
    import optuna

    if not (run_dir / OPTUNA_DB).is_file():
        return 0
    storage = optuna_storage(run_dir)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    stale = [t for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"]
    for t in stale:
        storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)
    return len(stale)


# ------------------------------------------------------------------------------------------
# The trainable
# ------------------------------------------------------------------------------------------


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl+C stopped Tune; its experiment state is saved and `--resume` continues it."""

    @classmethod
    def in_phase(cls, phase: str, cfg: SweepConfig) -> SweepInterrupted:
        return cls(
            f"sweep interrupted in phase {phase!r}; continue it with --resume "
            f"--name {cfg.run_name} --storage {cfg.storage}"
        )


class NonFiniteTrialError(FloatingPointError):
    """The trial diverged; deterministic, so a retry would diverge again."""


def _nonfinite_message(err: BaseException) -> str | None:
    text = str(err)
    if "NonFiniteLoss:" not in text:
        return None
    return next(ln.strip() for ln in text.splitlines() if "NonFiniteLoss:" in ln)


def make_trainable(
    run_dir: Path, workers: int, gpus_per_worker: float
) -> Callable[[dict[str, Any]], None]:
    """The Tune function trainable that runs one trial as a Ray Train `TorchTrainer`.

    A zero-shot trial (epochs=0) only evaluates the backbone, so it runs here, in the trainable,
    on one worker's resources (`trial_resources`): a Train worker group would only add ~10 s of
    actor start-up to ~1 s of evaluation.

    The train run is named by the Tune trial id under RUN_DIR/train: unique per trial (a new
    sweep never resumes an old run by accident), yet a Tune retry or `--resume` of the same
    trial reopens it and Train continues from its last checkpoint. NonFiniteLoss leaves a
    marker in the trial dir so Tune's retry fails at once instead of diverging again.
    """
    train_root = str(run_dir / "train")

    def ermgap_trial(config: dict[str, Any]) -> None:
        from pathlib import Path

        from ray import tune
        from ray.tune.integration.ray_train import TuneReportCallback

        from ermgap_ray.train import build_trainer, final_metrics, run_local

        _, cfg = split_trial_config(config)
        ctx = tune.get_context()
        if cfg.epochs == 0:
            final = run_local(
                cfg, Path(train_root) / ctx.get_trial_id(), engine_kind="torch", verbose=False
            )
            tune.report(final)
            return
        marker = Path(ctx.get_trial_dir()) / NONFINITE_MARKER
        if marker.is_file():
            raise NonFiniteTrialError(marker.read_text())
        trainer = build_trainer(
            cfg,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            name=ctx.get_trial_id(),
            storage_path=train_root,
            max_failures=0,
            callbacks=[TuneReportCallback()],
            verbose=False,
        )
        try:
            result = trainer.fit()
        except Exception as err:
            message = _nonfinite_message(err)
            if message is None:
                raise
            marker.write_text(message)
            raise NonFiniteTrialError(message) from None
        final = final_metrics(result)
        if final:
            tune.report(final)

    return ermgap_trial


def trial_resources(gpus_per_worker: float) -> Callable[[dict[str, Any]], Any]:
    """Tune resources per trial config. A training trainable asks for no CPU, which its Train
    workers need (RAY_NOTES.md: a 1-CPU trainable deadlocks 2 trials on 2 cores); a zero-shot
    trainable does the evaluation itself, so it asks for one worker's CPU (and GPU)."""
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    def resources(config: dict[str, Any]) -> Any:
        _, cfg = split_trial_config(config)
        if cfg.epochs > 0:
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


def _prepare_inputs(cfg: SweepConfig, configs: list[TrialConfig]) -> dict[str, Any]:
    """Validate data + backbone and build the encoder cache once, before any trial starts."""
    try:
        from ermgap_ray.train import prepare_trial_inputs
    except ImportError:
        return {}
    static: dict[str, Any] = {}
    seen = set()
    for trial in configs:
        key = (trial.data, trial.backbone, trial.use_cache)
        if key in seen:
            continue
        seen.add(key)
        inputs = prepare_trial_inputs(trial)
        static["data_fingerprint"] = getattr(inputs, "data_fingerprint", None)
    return static


def _trial_configs(cfg: SweepConfig) -> list[TrialConfig]:
    """Every grid trial and each modality's search base, validated before anything starts."""
    out = []
    if cfg.kind in ("grid", "both"):
        out += [TrialConfig.from_dict(_without_family(t)) for t in grid_trials(cfg)]
    if cfg.kind in ("search", "both"):
        out += [TrialConfig.from_dict({**cfg.trial, "modality": m}) for m in cfg.modalities]
    return out


def _without_family(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k != "family"}


def _phases(cfg: SweepConfig) -> list[str]:
    return ["grid", "search"] if cfg.kind == "both" else [cfg.kind]


def _check_run_dir(cfg: SweepConfig) -> None:
    run_dir = cfg.run_dir
    exists = run_dir.exists() and any(run_dir.iterdir())
    if cfg.resume and not (run_dir / MANIFEST_FILE).is_file():
        raise ConfigError(f"nothing to resume: {run_dir} has no {MANIFEST_FILE}")
    if exists and not cfg.resume:
        raise ConfigError(
            f"run directory {run_dir} already exists; pass --resume to continue it or --name NEW "
            "for a fresh sweep"
        )


def _resumed_config(cfg: SweepConfig) -> SweepConfig:
    """On resume, what to run comes from sweep.json; only where/how-fast comes from the CLI."""
    stored = read_manifest(cfg.run_dir)["config"]
    runtime = {k: getattr(cfg, k) for k in ("cluster", "max_concurrent", "max_failures")}
    return SweepConfig(**{**stored, **runtime, "resume": True, "storage": cfg.storage})


def _tuner(
    cfg: SweepConfig,
    phase: str,
    trainable: Callable[[dict[str, Any]], None],
    callbacks: list[Any],
    concurrency: int,
) -> Any:
    from ray import tune

    run_dir = cfg.run_dir
    wrapped = tune.with_resources(trainable, trial_resources(cfg.gpus_per_worker))
    exp_dir = run_dir / phase
    if cfg.resume and tune.Tuner.can_restore(str(exp_dir)):
        return tune.Tuner.restore(
            str(exp_dir), trainable=wrapped, resume_unfinished=True, resume_errored=True
        )
    if exp_dir.exists():
        shutil.rmtree(exp_dir)
    run_config = tune.RunConfig(
        name=phase,
        storage_path=str(run_dir),
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        callbacks=callbacks,
        verbose=0,
    )
    if phase == "grid":
        return tune.Tuner(
            wrapped,
            param_space={"trial": tune.grid_search(grid_trials(cfg))},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=concurrency,
                num_samples=1,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=run_config,
        )
    from ray.tune.search.optuna import OptunaSearch

    objectives = cfg.parsed_objectives()
    search = OptunaSearch(
        space=SearchSpace(cfg.trial, cfg.modalities),
        metric=[m for m, _ in objectives],
        mode=[mode for _, mode in objectives],
        sampler=make_sampler(cfg.sampler, cfg.sampler_seed, cfg.num_samples),
        study_name=cfg.run_name,
        storage=optuna_storage(run_dir),
    )
    return tune.Tuner(
        wrapped,
        tune_config=tune.TuneConfig(
            search_alg=search,
            max_concurrent_trials=concurrency,
            num_samples=cfg.num_samples,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=run_config,
    )


def run_sweep(
    cfg: SweepConfig,
    trainable: Callable[[dict[str, Any]], None] | None = None,
    progress_interval_s: float = 10.0,
    quiet: bool = True,
) -> SweepResult:
    """Connect, validate inputs once, run each phase's Tuner, write results and reports.

    `trainable` replaces the Ray Train trainable (tests use a small function that reports
    deterministic metrics); everything else (resources, callbacks, restore) is the same.
    `quiet` leaves trial errors to the progress table's one-liners and trials.parquet instead
    of Tune's full tracebacks (which stay in each trial's error.txt).
    """
    import optuna

    from ermgap_ray.cluster import connect, probe
    from ermgap_ray.progress import ProgressTable

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if quiet:
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    _check_run_dir(cfg)
    if cfg.resume:
        cfg = _resumed_config(cfg)
    run_dir = cfg.run_dir
    env_address = os.environ.get("RAY_ADDRESS", "") if cfg.cluster == "auto" else ""
    address = cfg.cluster if cfg.cluster not in ("auto", "local") else env_address
    if address and address not in ("auto", "local"):
        probe(address)
    base = _trial_configs(cfg)
    static = _prepare_inputs(cfg, base) if trainable is None else {}
    info = connect(cfg.cluster)
    print(info.describe(), flush=True)
    concurrency = cfg.max_concurrent or _default_concurrency(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(
        run_dir, cfg.to_dict(), cluster=dataclasses.asdict(info), status="running", **static
    )
    trainable = trainable or make_trainable(run_dir, cfg.workers_per_trial, cfg.gpus_per_worker)

    offset = 0
    for phase in _phases(cfg):
        writer = ResultsWriter(run_dir, static=static, index_offset=offset, phase=phase)
        total = len(grid_trials(cfg)) if phase == "grid" else cfg.num_samples
        progress = ProgressTable(concurrency, progress_interval_s, title=phase, total=total)
        tuner = _tuner(cfg, phase, trainable, [writer, progress], concurrency)
        grid = tuner.fit()
        # Ctrl-C makes Tune stop its trials and return normally, with the stopped trials not
        # errored: a trial that ended without its final report means the sweep was cut short.
        unfinished = [r for r in grid if r.error is None and not (r.metrics or {}).get("is_final")]
        if unfinished or len(grid) > grid.num_terminated + grid.num_errors:
            write_manifest(run_dir, cfg.to_dict(), status="interrupted", **static)
            raise SweepInterrupted.in_phase(phase, cfg)
        if phase == "search":
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
    print(format_summary(summary, run_dir, n_ok, n_err, reports), flush=True)
    return SweepResult(run_dir, trials, summary, n_ok, n_err, manifest, reports)


def _write_reports(run_dir: Path) -> list[Path]:
    """The analysis engineer's tables and figures; a failure there never costs the results."""
    try:
        from ermgap_ray.report import write_reports
    except ImportError:
        return []
    try:
        written = write_reports(run_dir)
    except Exception as err:  # noqa: BLE001 - results are on disk; the report is a bonus
        print(f"warning: report failed ({err.__class__.__name__}: {err})", flush=True)
        return []
    paths = written.values() if isinstance(written, dict) else written or []
    return [Path(p) for p in paths]


SUMMARY_METRICS = ("dev/wf1", "dev/max_gap_wf1", "test/wf1", "test/max_gap_wf1")


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


def format_summary(
    summary: pd.DataFrame, run_dir: Path, n_ok: int, n_err: int, reports: list[Path]
) -> str:
    lines = [f"trials: {n_ok} finished, {n_err} failed"]
    if not summary.empty:
        metrics = [m for m in SUMMARY_METRICS if f"{m}_mean" in summary.columns]
        head = f"{'family':<12} {'modality':<10} {'n':>2} " + " ".join(f"{m:>18}" for m in metrics)
        lines += ["", head, "-" * len(head)]
        rows = summary.rename(columns=lambda c: c.replace("/", "_"))
        for row in rows.itertuples(index=False):
            cells = []
            for m in metrics:
                mean, lo = getattr(row, _attr(m, "mean")), getattr(row, _attr(m, "lo"))
                half = mean - lo
                cells.append(
                    f"{'nan':>18}"
                    if math.isnan(mean)
                    else f"{100 * mean:>10.1f} ± {100 * half:>5.1f}"
                )
            lines.append(f"{row.family:<12} {row.modality:<10} {row.n:>2} " + " ".join(cells))
        lines.append("(percent; mean ± 95% CI half-width over seeds)")
    lines += ["", f"results: {run_dir / 'trials.parquet'}", f"manifest: {run_dir / MANIFEST_FILE}"]
    if (run_dir / OPTUNA_DB).is_file():
        lines.append(f"optuna: sqlite:///{run_dir / OPTUNA_DB}")
    lines += [f"report: {p}" for p in reports]
    return "\n".join(lines)


def _attr(metric: str, suffix: str) -> str:
    """itertuples renames columns that are not identifiers to _<position>; so no '/'."""
    return f"{metric}_{suffix}".replace("/", "_")
