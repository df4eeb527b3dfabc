"""Pareto maths against brute force and hand-computed values; operating-point selection."""

from __future__ import annotations

import itertools
import math
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ermgap_ray.pareto import (
    aggregate_seeds,
    ci_dominates,
    final_rows,
    hypervolume,
    knee_point,
    pareto_mask,
    parse_constraint,
    reference_mask,
    seed_aware_pareto_mask,
    select_operating_point,
)
from ermgap_ray.results import load_trials

# The real smoke sweep (tests/golden_run/regenerate.py): grid configurations over 2 seeds, the
# zero-shot reference and 1-seed search trials.
GOLDEN = Path(__file__).parent / "golden_run" / "smoke"


def brute_front(points: np.ndarray, maximize: list[bool]) -> np.ndarray:
    """Definition, literally: no other finite row is >= everywhere and > somewhere."""
    p = np.where(maximize, points, -points)
    finite = ~np.isnan(p).any(axis=1)
    out = np.zeros(len(p), dtype=bool)
    for i in np.flatnonzero(finite):
        out[i] = not any(
            np.all(p[j] >= p[i]) and np.any(p[j] > p[i]) for j in np.flatnonzero(finite)
        )
    return out


def grid_hypervolume(points: np.ndarray, ref: list[float], maximize: list[bool]) -> float:
    """Sum the cells of the grid spanned by all coordinates that some point dominates."""
    p = np.where(maximize, -points, points)
    r = np.where(maximize, -np.asarray(ref), np.asarray(ref))
    p = p[~np.isnan(p).any(axis=1)]
    axes = [np.unique(np.r_[np.clip(p[:, d], None, r[d]), r[d]]) for d in range(p.shape[1])]
    total = 0.0
    for cell in itertools.product(*(range(len(a) - 1) for a in axes)):
        lower = np.array([a[i] for a, i in zip(axes, cell, strict=True)])
        upper = np.array([a[i + 1] for a, i in zip(axes, cell, strict=True)])
        if np.any(np.all(p <= lower, axis=1)):
            total += float(np.prod(upper - lower))
    return total


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_pareto_mask_matches_brute_force_with_ties_duplicates_and_nan(k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 5, size=(60, k)).astype(float)
    points[:5] = points[5]
    points[7, 1] = np.nan
    maximize = list(rng.random(k) < 0.5)
    mask = pareto_mask(points, maximize)
    np.testing.assert_array_equal(mask, brute_front(points, maximize))
    assert not mask[7]


def test_pareto_mask_hand_example_keeps_duplicates() -> None:
    points = np.array([[0.6, 0.10], [0.6, 0.10], [0.5, 0.05], [0.5, 0.20], [0.7, 0.30]])
    assert pareto_mask(points, [True, False]).tolist() == [True, True, True, False, True]
    assert pareto_mask(points[:, :1], [True]).tolist() == [False, False, False, False, True]


def test_pareto_mask_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="one flag per column"):
        pareto_mask(np.zeros((3, 2)), [True])


def test_pareto_mask_1e5_points_under_a_second() -> None:
    points = np.random.default_rng(0).random((100_000, 2))
    start = time.perf_counter()
    mask = pareto_mask(points, [True, False])
    assert time.perf_counter() - start < 1.0
    assert 0 < mask.sum() < 100


def test_hypervolume_hand_example() -> None:
    points = np.array([[0.6, 0.1], [0.5, 0.05], [0.0, 1.0], [0.7, 1.2]])
    # union of [0,0.6]x[0.1,1] and [0,0.5]x[0.05,1]; the last two do not dominate ref (0, 1)
    expected = 0.6 * 0.9 + 0.5 * 0.95 - 0.5 * 0.9
    assert hypervolume(points, (0.0, 1.0), [True, False]) == pytest.approx(expected, abs=1e-12)
    assert hypervolume(points[2:], (0.0, 1.0), [True, False]) == 0.0


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_matches_grid_brute_force(k: int, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    points = rng.integers(0, 6, size=(25, k)).astype(float)
    points[:3] = points[3]
    points[4, 0] = np.nan
    maximize = list(rng.random(k) < 0.5)
    ref = [0.0 if m else 5.0 for m in maximize]
    got = hypervolume(points, ref, maximize)
    assert got == pytest.approx(grid_hypervolume(points, ref, maximize), abs=1e-9)
    assert got > 0


def test_knee_on_quarter_circle() -> None:
    """y = 1 - sqrt(1 - (1 - x)^2) bends most at x = y = 1 - 1/sqrt(2)."""
    x = np.r_[np.linspace(0, 1, 41), 1 - 1 / math.sqrt(2)]
    y = 1 - np.sqrt(1 - (1 - x) ** 2)
    points = np.c_[1 - x, y, np.zeros_like(x)][:, :2]
    assert knee_point(points, [True, False]) == len(x) - 1
    dominated = np.r_[points, [[0.1, 0.95]]]
    assert knee_point(dominated, [True, False]) == len(x) - 1


def test_knee_with_two_points_takes_best_first_objective() -> None:
    assert knee_point(np.array([[0.5, 0.1], [0.6, 0.3]]), [True, False]) == 1
    with pytest.raises(ValueError, match="two objectives"):
        knee_point(np.zeros((3, 3)), [True] * 3)


def test_aggregate_seeds_t_interval_by_hand() -> None:
    df = pd.DataFrame(
        {
            "group_hash": ["a", "a", "a", "b"],
            "family": ["erm", "erm", "erm", "x"],
            "modality": "audio",
            "m": [0.1, 0.2, 0.4, 0.5],
        }
    )
    agg = aggregate_seeds(df, ["m"])
    half = stats.t.ppf(0.975, 2) * np.std([0.1, 0.2, 0.4], ddof=1) / math.sqrt(3)
    a, b = agg.iloc[0], agg.iloc[1]
    assert (a["group_hash"], a["n"], a["family"], b["n"]) == ("a", 3, "erm", 1)
    assert a["m_mean"] == pytest.approx(0.7 / 3)
    assert a["m_lo"] == pytest.approx(0.7 / 3 - half) and a["m_hi"] == pytest.approx(0.7 / 3 + half)
    assert b["m_lo"] == b["m_hi"] == b["m_mean"] == 0.5
    with pytest.raises(ValueError, match="nope"):
        aggregate_seeds(df, ["nope"])


def test_ci_dominates_needs_separated_intervals() -> None:
    up_down = [True, False]
    assert ci_dominates([0.70, 0.01], [0.72, 0.02], [0.60, 0.03], [0.69, 0.05], up_down)
    assert not ci_dominates([0.68, 0.01], [0.72, 0.02], [0.60, 0.03], [0.69, 0.05], up_down)
    assert not ci_dominates([0.70, 0.01], [0.72, 0.04], [0.60, 0.03], [0.69, 0.05], up_down)
    assert not ci_dominates([0.5, 0.1], [0.5, 0.1], [0.5, 0.1], [0.5, 0.1], up_down)
    assert ci_dominates([0.5, 0.1], [0.5, 0.1], [0.5, 0.2], [0.5, 0.2], up_down)


def test_seed_aware_front_keeps_overlapping_and_reduces_to_plain_front() -> None:
    agg = pd.DataFrame(
        {
            "u_lo": [0.60, 0.55, 0.40, np.nan],
            "u_hi": [0.70, 0.65, 0.45, 0.9],
            "g_lo": [0.05, 0.04, 0.10, 0.0],
            "g_hi": [0.08, 0.07, 0.20, 0.0],
        }
    )
    assert seed_aware_pareto_mask(agg, ["u", "g"], [True, False]).tolist() == [
        True,
        True,
        False,
        False,
    ]
    rng = np.random.default_rng(3)
    means = rng.integers(0, 5, size=(40, 2)).astype(float)
    point = pd.DataFrame(
        {"u_lo": means[:, 0], "u_hi": means[:, 0], "g_lo": means[:, 1], "g_hi": means[:, 1]}
    )
    np.testing.assert_array_equal(
        seed_aware_pareto_mask(point, ["u", "g"], [True, False]), pareto_mask(means, [True, False])
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_gap_wf1<=0.02", ("max_gap_wf1", "<=", 0.02)),
        (" dev/gap_wf1/ja  <  2% ", ("dev/gap_wf1/ja", "<", 0.02)),
        ("wf1>=0.6", ("wf1", ">=", 0.6)),
        ("acc>1e-1", ("acc", ">", 0.1)),
    ],
)
def test_parse_constraint(text: str, expected: tuple[str, str, float]) -> None:
    metric, op, value = parse_constraint(text)
    assert (metric, op) == expected[:2] and value == pytest.approx(expected[2])


@pytest.mark.parametrize("text", ["max_gap_wf1 = 0.02", "<= 0.02", "wf1 >= high"])
def test_parse_constraint_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="constraint"):
        parse_constraint(text)


def _toy_runs() -> pd.DataFrame:
    """Three configurations x 3 seeds: A best W-F1 but gap too big, B gap fine on the mean but
    its upper CI is not, C safely fair."""
    rows = []
    spec = {
        "A": ([0.70, 0.71, 0.72], [0.10, 0.11, 0.12]),
        "B": ([0.66, 0.67, 0.68], [0.005, 0.015, 0.03]),
        "C": ([0.64, 0.65, 0.66], [0.010, 0.011, 0.012]),
    }
    for group, (wf1, gap) in spec.items():
        for seed in range(3):
            rows.append(
                {
                    "trial_id": f"{group}{seed}",
                    "group_hash": group,
                    "family": group,
                    "modality": "audio",
                    "status": "TERMINATED",
                    "is_final": True,
                    "seed": seed,
                    "lam": 1.0,
                    "adapter_path": f"ad/{group}{seed}",
                    "dev/wf1": wf1[seed],
                    "dev/max_gap_wf1": gap[seed],
                }
            )
    rows.append({**rows[0], "trial_id": "A9", "status": "ERROR", "dev/max_gap_wf1": 0.0})
    rows.append({**rows[0], "trial_id": "A8", "is_final": False, "dev/max_gap_wf1": 0.0})
    return pd.DataFrame(rows)


def test_operating_point_uses_upper_ci_of_constraint() -> None:
    op = select_operating_point(_toy_runs(), "max_gap_wf1<=0.02")
    assert op.feasible and op.group_hash == "C"
    assert op.objective_mean == pytest.approx(0.65)
    half = stats.t.ppf(0.975, 2) * np.std([0.010, 0.011, 0.012], ddof=1) / math.sqrt(3)
    assert op.constraint_hi == pytest.approx(0.011 + half)
    assert op.trial_ids == ["C0", "C1", "C2"] and op.adapter_paths == ["ad/C0", "ad/C1", "ad/C2"]
    assert op.config["lam"] == 1.0 and "seed" not in op.config
    assert "C" in op.reason and "upper" in op.reason
    assert op.to_dict()["group_hash"] == "C"


def test_operating_point_ge_constraint_and_runners_up() -> None:
    op = select_operating_point(_toy_runs(), "wf1>=0.6", objective="max_gap_wf1", maximize=False)
    assert op.group_hash == "C"
    assert [r["group_hash"] for r in op.runners_up] == ["B", "A"]


def test_operating_point_infeasible_names_closest() -> None:
    op = select_operating_point(_toy_runs(), "max_gap_wf1<=0.005")
    assert not op.feasible and op.group_hash is None
    assert "closest: C" in op.reason
    assert op.to_dict()["objective_mean"] is None


def test_operating_point_unknown_metric_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'dev/max_gap_xyz'"):
        select_operating_point(_toy_runs(), "max_gap_xyz<=0.02")


def test_operating_point_on_golden_run() -> None:
    """Properties computed from the rows, not hand-copied numbers: the choice satisfies the
    bound on its CI upper end (its value with one seed) and no feasible configuration has a
    better mean W-F1; bounds run from below every configuration's upper end to loose."""
    df = load_trials(GOLDEN)
    final = final_rows(df)
    trained = final[~reference_mask(final)]
    references = set(final.loc[reference_mask(final), "group_hash"])
    assert references, "the smoke run has a zero-shot reference"
    agg = aggregate_seeds(trained, ["dev/wf1", "dev/max_gap_wf1"])
    his = np.unique(agg["dev/max_gap_wf1_hi"].to_numpy(float))
    bounds = [his[0] / 2, *((his[:-1] + his[1:]) / 2), his[-1] + 1e-6, 1.0]
    outcomes = []
    for bound in bounds:
        op = select_operating_point(df, f"max_gap_wf1<={bound}")
        feasible = agg[agg["dev/max_gap_wf1_hi"] <= bound]
        assert op.feasible == (len(feasible) > 0) and op.n_candidates == len(agg)
        assert {r["group_hash"] for r in op.references} == references
        outcomes.append(op.feasible)
        if op.feasible:
            assert op.constraint_hi <= bound and op.group_hash not in references
            assert op.family != "zero-shot" and op.config.get("epochs", 1) > 0
            assert op.objective_mean == pytest.approx(feasible["dev/wf1_mean"].max())
            assert op.n_seeds == agg.set_index("group_hash").loc[op.group_hash, "n"]
            assert set(op.trial_ids) == set(
                trained.loc[trained["group_hash"] == op.group_hash, "trial_id"]
            )
        else:
            assert op.group_hash is None and op.nearest
            assert not {r["group_hash"] for r in op.nearest} & references
    assert outcomes[0] is False and all(outcomes[1:]), "infeasible below every upper end"
    loose = select_operating_point(df, "max_gap_wf1<=1.0")
    assert loose.objective_mean == pytest.approx(agg["dev/wf1_mean"].max())


def _with_references(df: pd.DataFrame) -> pd.DataFrame:
    """_toy_runs plus a zero-shot reference and an untrained custom family, both gap 0."""
    refs = []
    for group, family in (("Z", "zero-shot"), ("U", "custom")):
        for seed in range(3):
            refs.append(
                {
                    **df.iloc[0].to_dict(),
                    "trial_id": f"{group}{seed}",
                    "group_hash": group,
                    "family": family,
                    "epochs": 0,
                    "seed": seed,
                    "dev/wf1": 0.2,
                    "dev/max_gap_wf1": 0.0,
                }
            )
    return pd.concat([df.assign(epochs=2), pd.DataFrame(refs)], ignore_index=True)


def test_references_are_never_candidates() -> None:
    df = _with_references(_toy_runs())
    loose = select_operating_point(df, "max_gap_wf1<=0.9", objective="max_gap_wf1", maximize=False)
    assert loose.feasible and loose.group_hash == "C" and loose.n_candidates == 3
    assert {r["group_hash"] for r in loose.references} == {"Z", "U"}
    assert "references, never candidates" in loose.reason
    strict = select_operating_point(df, "max_gap_wf1<=0.005")
    assert not strict.feasible, "a 0-gap untrained backbone must not be the operating point"
    assert {r["group_hash"] for r in strict.nearest} <= {"A", "B", "C"}


def test_utility_floor_and_nearest_points() -> None:
    df = _toy_runs()
    op = select_operating_point(df, ["max_gap_wf1<=0.02", "wf1>=0.6"])
    assert op.feasible and op.group_hash == "C" and op.constraints[1] == "wf1>=0.6"
    none = select_operating_point(df, ["max_gap_wf1<=0.02", "wf1>=0.69"])
    assert not none.feasible and none.group_hash is None
    assert [r["group_hash"] for r in none.nearest] == ["C", "B", "A"], "by total violation"
    assert none.reason.startswith("no configuration of 3 satisfies")
    assert "dev/wf1 ≥ 69 pts" in none.reason and "closest: C" in none.reason
    missed = none.nearest[1]["constraints"]
    assert not missed["dev/max_gap_wf1"]["satisfied"] and not missed["dev/wf1"]["satisfied"]


def test_single_seed_is_checked_on_its_value_and_says_so() -> None:
    df = _toy_runs()
    one = df[df["seed"] == 0]
    op = select_operating_point(one, "max_gap_wf1<=0.02")
    assert op.feasible and op.group_hash == "B" and op.n_seeds == 1
    assert op.constraint_hi == op.constraint_mean == pytest.approx(0.005)
    assert "1 seed" in op.rule and "1 seed, no CI" in op.reason
    three = select_operating_point(df, "max_gap_wf1<=0.02")
    assert three.group_hash == "C" and "CI upper end" in three.reason


def test_operating_point_reason_is_in_points() -> None:
    op = select_operating_point(_toy_runs(), "max_gap_wf1<=0.02")
    numbers = [float(x) for x in re.findall(r"(?<![\w.])\d+\.\d+", op.reason)]
    assert numbers and all(x >= 1.0 for x in numbers), op.reason
    assert f"{100 * op.objective_mean:.1f}" in op.reason and "≤ 2 pts" in op.reason
    assert op.to_dict()["units"] == "fraction" and op.objective_mean < 1.0
