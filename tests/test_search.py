"""The search's parts without a cluster: the auto rule, budget-sized samplers, warm-start points
and constraints that reach the Optuna study through Ray's OptunaSearch."""

from __future__ import annotations

import optuna
import pytest

from ermgap_ray.config import TrialConfig
from ermgap_ray.errors import ConfigError
from ermgap_ray.registry import SEARCH_SPACE
from ermgap_ray.results import split_trial_config
from ermgap_ray.search import (
    MAX_GP_BUDGET,
    MIN_MODEL_BUDGET,
    Bound,
    ConstrainedOptunaSearch,
    SearchSpace,
    clip_into_range,
    make_sampler,
    resolve_sampler,
    startup_trials,
)
from ermgap_ray.sweep import load_sweep_config


@pytest.mark.parametrize(
    ("n", "conditional", "expected"),
    [
        (MIN_MODEL_BUDGET - 1, True, "random"),
        (MIN_MODEL_BUDGET - 1, False, "random"),
        (MIN_MODEL_BUDGET, True, "tpe"),
        (32, True, "tpe"),
        (32, False, "gp"),
        (MAX_GP_BUDGET, False, "gp"),
        (MAX_GP_BUDGET + 1, False, "tpe"),
    ],
)
def test_auto_resolves_as_documented(n: int, conditional: bool, expected: str) -> None:
    assert resolve_sampler("auto", n, conditional) == expected
    assert resolve_sampler("nsga2", n, conditional) == "nsga2"


def test_samplers_are_sized_to_the_budget() -> None:
    assert [startup_trials(n) for n in (4, 16, 32, 100)] == [4, 4, 8, 10]
    tpe = make_sampler("tpe", 0, 32, concurrency=2)
    assert isinstance(tpe, optuna.samplers.TPESampler)
    assert tpe._n_startup_trials == 8 and tpe._multivariate and tpe._group
    assert tpe._constant_liar
    gp = make_sampler("gp", 0, 32)
    assert isinstance(gp, optuna.samplers.GPSampler) and gp._n_startup_trials == 8
    nsga = make_sampler("nsga2", 0, 32, concurrency=12)
    assert isinstance(nsga, optuna.samplers.NSGAIISampler) and nsga._population_size == 12
    assert make_sampler("nsga2", 0, 32)._population_size == 8
    assert isinstance(make_sampler("auto", 0, 8), optuna.samplers.RandomSampler)


def test_warm_start_points_are_the_paper_families_inside_the_ranges() -> None:
    space = SearchSpace({"epochs": 1}, ["audio"])
    points = space.warm_start_points(10)
    assert [(p["lambda_mode"], p["p"]) for p in points] == [
        ("fixed", 1),
        ("fixed", 2),
        ("adaptive", 1),
        ("adaptive", 2),
    ]
    default = TrialConfig()
    for point in points:
        assert point["lam"] == default.lam and point["lr"] == default.lr
        cfg = TrialConfig.from_dict({"objective": "minmaxgap", **point})
        group = SEARCH_SPACE[cfg.lambda_mode]
        assert set(point) == set(SEARCH_SPACE["common"]) | set(group) | set(SEARCH_SPACE["optim"])
    assert len(space.warm_start_points(2)) == 2
    # A knob fixed by --set is not searched, and families it contradicts are left out.
    fixed = SearchSpace({"lambda_mode": "adaptive", "lr": 1e-3}, ["audio", "audio+text"])
    points = fixed.warm_start_points(10)
    assert len(points) == 4 and {p["modality"] for p in points} == {"audio", "audio+text"}
    assert all("lr" not in p and "lambda_mode" not in p for p in points)
    # A default outside a search range (defaults change; ranges are the registry's) is clipped.
    assert clip_into_range(5.0, SEARCH_SPACE["adaptive"]["lam"]) == 0.3
    assert clip_into_range(32, SEARCH_SPACE["optim"]["lora_r"]) == 4


def test_bounds_parse_and_measure_violation() -> None:
    bound = Bound.parse("dev/max_gap_wf1<=0.05")
    assert (bound.metric, bound.op, bound.value) == ("dev/max_gap_wf1", "<=", 0.05)
    assert bound.violation({"dev/max_gap_wf1": 0.08}) == pytest.approx(0.03)
    assert bound.violation({"dev/max_gap_wf1": 0.01}) == pytest.approx(-0.04)
    assert bound.violation({"dev/max_gap_wf1": float("nan")}) == 1.0
    assert bound.violation({}) == 1.0
    floor = Bound.parse("dev/wf1>=0.5")
    assert floor.violation({"dev/wf1": 0.4}) == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="names no split"):
        Bound.parse("max_gap_wf1<=0.05")
    with pytest.raises(ConfigError, match="sweep field 'constraints'"):
        load_sweep_config("search", {"constraints": ["dev/max_gap_wf1~0.05"]})


def test_constraints_and_warm_start_reach_the_study_through_ray_optuna_search() -> None:
    """Ray's OptunaSearch only tells the values; the subclass sets the constraint first."""
    space = SearchSpace({"epochs": 1}, ["audio"])
    points = space.warm_start_points(3)
    search = ConstrainedOptunaSearch(
        space=space,
        metric=["dev/wf1", "dev/max_gap_wf1"],
        mode=["max", "min"],
        sampler=make_sampler("tpe", 0, 6),
        points_to_evaluate=points,
        bounds=[Bound.parse("dev/max_gap_wf1<=0.05"), Bound.parse("dev/wf1>=0.5")],
    )
    configs = []
    for i in range(5):
        configs.append(search.suggest(f"t{i}"))
        gap = 0.02 * (i + 1)
        search.on_trial_complete(f"t{i}", {"dev/wf1": 0.6, "dev/max_gap_wf1": gap})
    for config, point in zip(configs, points, strict=False):
        assert {k: config[k] for k in point} == point
    trials = search._ot_study.trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 5
    for i, trial in enumerate(trials):
        gap = 0.02 * (i + 1)
        assert trial.constraints == pytest.approx(
            {"dev/max_gap_wf1<=0.05": gap - 0.05, "dev/wf1>=0.5": -0.1}
        )
        assert trial.system_attrs["constraints:dev/max_gap_wf1<=0.05"] == pytest.approx(gap - 0.05)
    family, cfg = split_trial_config(configs[-1])
    assert family == "search" and cfg.epochs == 1
