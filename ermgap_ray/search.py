"""The multi-objective search: its Optuna space, samplers sized to the budget, warm start from the
paper grid, and constraints that reach the sampler.

Ray's `OptunaSearch.on_trial_complete` only calls `study.tell(values)`; Optuna 5 reads
constraints from `Trial.set_constraint` (feasible is <= 0), so `ConstrainedOptunaSearch` sets
them first. GP (logCEHVI), TPE and NSGA-II all honour them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from ermgap_ray.config import TrialConfig
from ermgap_ray.errors import ConfigError
from ermgap_ray.pareto import parse_constraint
from ermgap_ray.registry import PAPER_FAMILIES, SAMPLERS, SEARCH_FAMILY, SEARCH_SPACE
from ermgap_ray.results import OPTUNA_DB

# Below this budget a model-based sampler would still be in its random start-up.
MIN_MODEL_BUDGET = 12
# GP fitting is cubic in the trials; beyond this TPE costs seconds where GP costs minutes.
MAX_GP_BUDGET = 200
# A constraint whose metric is missing or NaN counts as violated by one whole unit.
MISSING_VIOLATION = 1.0


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

    @property
    def conditional(self) -> bool:
        """True when lambda_mode is searched, so some knobs exist only in some trials."""
        return "lambda_mode" not in self.fixed

    def groups(self, mode: str) -> list[str]:
        return ["common", mode, "optim"]

    def __call__(self, trial: Any) -> dict[str, Any]:
        def draw(group: str) -> None:
            for name, spec in SEARCH_SPACE[group].items():
                if name not in self.fixed:
                    _suggest(trial, name, spec)

        draw("common")
        mode = self.fixed.get("lambda_mode") or trial.params["lambda_mode"]
        for group in self.groups(mode)[1:]:
            draw(group)
        # Tune checks every report for the searcher's (dev) metrics, so each epoch scores dev.
        constants = {
            "family": SEARCH_FAMILY,
            "objective": "minmaxgap",
            "dev_eval": "every-epoch",
            **self.fixed,
        }
        if "modality" not in self.fixed:
            if len(self.modalities) > 1:
                trial.suggest_categorical("modality", self.modalities)
            else:
                constants["modality"] = self.modalities[0]
        return constants

    def warm_start_points(self, limit: int) -> list[dict[str, Any]]:
        """The paper grid's MinMaxGAP families as Optuna params (at most `limit`): the searched
        knobs take the family's value, else the trial default, clipped into the search range.
        Families whose fixed knobs contradict `trial:` / `--set` are left out."""
        defaults = TrialConfig.from_dict(self.fixed)
        points = []
        for values in PAPER_FAMILIES.values():
            if values.get("objective") != "minmaxgap":
                continue
            if any(self.fixed.get(k, v) != v for k, v in values.items() if k != "objective"):
                continue
            mode = values["lambda_mode"]
            point: dict[str, Any] = {}
            for group in self.groups(mode):
                for name, spec in SEARCH_SPACE[group].items():
                    if name not in self.fixed:
                        point[name] = clip_into_range(
                            values.get(name, getattr(defaults, name)), spec
                        )
            modalities = self.modalities if "modality" not in self.fixed else [None]
            for modality in modalities:
                extra = {"modality": modality} if len(self.modalities) > 1 and modality else {}
                points.append({**point, **extra})
        return points[:limit]


def clip_into_range(value: Any, spec: tuple[Any, ...]) -> Any:
    kind, *args = spec
    if kind == "choice":
        return value if value in args[0] else args[0][0]
    return float(min(max(float(value), args[0]), args[1]))


@dataclass(frozen=True)
class Bound:
    """One search constraint, `metric <= value` or `metric >= value`, in the metric's units."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Bound:
        try:
            metric, op, value = parse_constraint(text)
        except ValueError as err:
            raise ConfigError(f"sweep field 'constraints': {err}") from None
        if op not in ("<=", ">=", "<", ">"):
            raise ConfigError(f"sweep field 'constraints': {text!r} needs <= or >=")
        if "/" not in metric:
            raise ConfigError(
                f"sweep field 'constraints': {text!r} names no split; write e.g. "
                f"'dev/{metric}{op}{value:g}' (the search only sees dev metrics)"
            )
        return cls(metric, op, value)

    def violation(self, result: dict[str, Any]) -> float:
        """Optuna's constraint value: <= 0 when the bound holds, else by how much it misses."""
        value = result.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return MISSING_VIOLATION
        value = float(value)
        return value - self.value if self.op in ("<=", "<") else self.value - value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def parse_bounds(texts: list[str]) -> list[Bound]:
    return [Bound.parse(t) for t in texts]


def resolve_sampler(kind: str, num_samples: int, conditional: bool) -> str:
    """`auto`, by budget and space (README "Search"):

    - fewer than MIN_MODEL_BUDGET trials: random (a model would still be in its start-up);
    - a conditional space (lambda_mode searched): TPE, multivariate and grouped, which models
      each branch's knobs (GP only models the knobs every trial shares);
    - otherwise GP up to MAX_GP_BUDGET trials, then TPE.
    """
    if kind not in SAMPLERS:
        raise ConfigError(f"sweep field 'sampler': must be one of {', '.join(SAMPLERS)}")
    if kind != "auto":
        return kind
    if num_samples < MIN_MODEL_BUDGET:
        return "random"
    if conditional or num_samples > MAX_GP_BUDGET:
        return "tpe"
    return "gp"


def startup_trials(num_samples: int) -> int:
    """Random (or warm-start) trials before the model acts: a quarter of the budget, 4 to 10."""
    return max(4, min(10, num_samples // 4))


def make_sampler(
    kind: str, seed: int, num_samples: int, concurrency: int = 1, conditional: bool = True
) -> optuna.samplers.BaseSampler:
    """A sampler sized to the budget: Optuna's defaults (10 start-up trials, 50 per NSGA-II
    generation) would make a 32-trial search almost pure random sampling."""
    kind = resolve_sampler(kind, num_samples, conditional)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    startup = startup_trials(num_samples)
    if kind == "gp":
        return optuna.samplers.GPSampler(
            seed=seed, n_startup_trials=startup, warn_independent_sampling=False
        )
    if kind == "tpe":
        return optuna.samplers.TPESampler(
            multivariate=True,
            group=True,
            constant_liar=concurrency > 1,
            n_startup_trials=startup,
            seed=seed,
        )
    if kind == "nsga2":
        population = max(4, concurrency, min(50, num_samples // 4))
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def set_constraints(trial: optuna.trial.Trial, bounds: list[Bound], result: dict) -> None:
    for bound in bounds:
        trial.set_constraint(str(bound), bound.violation(result))


# An Optuna trial's user attribute naming the Ray trial it was asked for, so the study and
# trials.parquet join (and a resumed search can be audited trial by trial).
RAY_TRIAL_ID_ATTR = "ray_trial_id"


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch whose completed trials carry `bounds` as Optuna constraints before `tell`,
    and the Ray trial id as a user attribute. The bounds are instance state, so Tune's searcher
    checkpoint (and `--resume`) keeps them."""

    def __init__(self, *args: Any, bounds: list[Bound] | None = None, **kwargs: Any) -> None:
        self.bounds = list(bounds or [])
        super().__init__(*args, **kwargs)

    def suggest(self, trial_id: str) -> dict | None:
        asked = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if asked and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
        return config

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        # A trial told before a driver crash is completed again after `--resume`; its
        # constraint values are in the study already.
        if ot_trial is None or not (result and self.bounds):
            return super().on_trial_complete(trial_id, result, error)
        if trial_id not in self._completed_trials and not ot_trial.constraints:
            set_constraints(ot_trial, self.bounds, result)
        super().on_trial_complete(trial_id, result, error)


def optuna_storage(run_dir: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{run_dir / OPTUNA_DB}")


def fail_stale_optuna_trials(run_dir: Path, study_name: str) -> int:
    """After a restore, trials asked before the driver died stay RUNNING forever; fail them."""
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
