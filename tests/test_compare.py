"""Paired-by-seed comparisons (ermgap_ray.compare) and analysis/compare.py, on the real smoke
golden run (tests/golden_run/smoke, made by tests/golden_run/regenerate.py); expected values are
computed from its rows."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ermgap_ray.compare import HEADLINE_METRICS, paired_comparison, paired_delta, seed_pairs
from ermgap_ray.data.schema import MODALITIES
from ermgap_ray.pareto import final_rows, reference_mask
from ermgap_ray.registry import BASELINE_FAMILY, FAMILIES
from ermgap_ray.report import load_run

SMOKE = Path(__file__).parent / "golden_run" / "smoke"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def final() -> pd.DataFrame:
    return final_rows(load_run(SMOKE)[0])


def _method(final: pd.DataFrame) -> str:
    """The first trained grid family (not ERM, not search) that shares >= 2 seeds with ERM."""
    erm = set(final.loc[final["family"] == BASELINE_FAMILY, "seed"])
    trained = final[~reference_mask(final)]
    for family in FAMILIES:
        seeds = set(trained.loc[trained["family"] == family, "seed"])
        if family not in (BASELINE_FAMILY, "search") and len(seeds & erm) >= 2:
            return family
    raise AssertionError("the golden run has no multi-seed method family besides ERM")


def _modalities(final: pd.DataFrame) -> list[str]:
    return [m for m in MODALITIES if m in set(final["modality"])]


def test_paired_delta_matches_scipy_and_hand_interval():
    a, b = np.array([0.61, 0.58, 0.64, 0.60]), np.array([0.60, 0.59, 0.61, 0.57])
    d = a - b  # 0.01, -0.01, 0.03, 0.03
    got = paired_delta(a, b)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert got["n"] == 4 and got["delta"] == pytest.approx(0.015)
    assert (got["lo"], got["hi"]) == pytest.approx((0.015 - half, 0.015 + half))
    assert got["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert got["p_value"] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    narrow = paired_delta(a, b, ci=0.5)
    assert narrow["hi"] - narrow["lo"] < got["hi"] - got["lo"]


def test_paired_delta_without_spread_has_no_interval():
    one = paired_delta([0.7], [0.6])
    assert one["n"] == 1 and one["delta"] == pytest.approx(0.1)
    assert all(math.isnan(one[k]) for k in ("lo", "hi", "p_value"))
    flat = paired_delta([0.7, 0.8], [0.6, 0.7])
    assert flat["delta"] == pytest.approx(0.1) and math.isnan(flat["p_value"])
    empty = paired_delta([], [])
    assert empty["n"] == 0 and math.isnan(empty["delta"])


def test_seed_pairs_match_on_seed_not_on_order():
    method = pd.DataFrame({"seed": [2, 0, 1], "x": [0.3, 0.1, np.nan]})
    base = pd.DataFrame({"seed": [0, 2, 5], "x": [0.0, 0.5, 0.9]})
    a, b, seeds = seed_pairs(method, base, "x")
    assert seeds == [0, 2] and a.tolist() == [0.1, 0.3] and b.tolist() == [0.0, 0.5]


def _expected(final: pd.DataFrame, method: str, modality: str, metric: str) -> tuple:
    rows = final[final["modality"] == modality]
    col = f"test/{metric}"
    a = rows[rows["family"] == method].set_index("seed")[col]
    b = rows[rows["family"] == "erm"].set_index("seed")[col]
    seeds = a.index.intersection(b.index)
    d = 100 * (a[seeds] - b[seeds])
    return d.mean(), stats.ttest_rel(a[seeds], b[seeds]).pvalue, len(seeds), d


def test_paired_comparison_on_golden(final: pd.DataFrame):
    method = _method(final)
    frame = paired_comparison(final, method, BASELINE_FAMILY)
    modalities = _modalities(final)
    assert len(frame) == len(modalities) * len(HEADLINE_METRICS)
    assert set(frame["metric"]) == set(HEADLINE_METRICS)
    for _, row in frame.iterrows():
        delta, p, n, d = _expected(final, method, row["modality"], row["metric"])
        assert n >= 2 and row["n"] == n and row["delta"] == pytest.approx(delta)
        assert row["p_value"] == pytest.approx(p)
        half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
        assert row["hi"] - row["lo"] == pytest.approx(2 * half)
        assert row["delta"] == pytest.approx(row["method_mean"] - row["baseline_mean"])
    # Pairs are matched on the seed, not on the row order.
    backwards = paired_comparison(final.iloc[::-1], method, BASELINE_FAMILY)
    pd.testing.assert_frame_equal(backwards, frame)
    one = paired_comparison(final, method, modality=modalities[0], metrics=["wf1"])
    assert one["modality"].tolist() == [modalities[0]] and one["metric"].tolist() == ["wf1"]


def test_paired_comparison_is_per_modality(final: pd.DataFrame):
    """A second modality whose ERM is 10 points better: its Δ is 10 lower, the first's unmoved."""
    method = _method(final)
    first = _modalities(final)[0]
    other = next(m for m in MODALITIES if m != first)
    base = final[final["modality"] == first]
    twin = base.assign(modality=other, group_hash=base["group_hash"] + "-twin")
    erm = twin["family"] == BASELINE_FAMILY
    twin.loc[erm, "test/wf1"] = twin.loc[erm, "test/wf1"] + 0.1
    frame = paired_comparison(pd.concat([base, twin]), method, metrics=["wf1"])
    by_mod = frame.set_index("modality")["delta"]
    assert by_mod[other] == pytest.approx(by_mod[first] - 10)
    assert by_mod[first] == pytest.approx(_expected(final, method, first, "wf1")[0])


def test_paired_comparison_uses_only_shared_seeds(final: pd.DataFrame):
    method = _method(final)
    seeds = sorted(final.loc[final["family"] == method, "seed"].unique())
    drop = (final["family"] == BASELINE_FAMILY) & (final["seed"] == seeds[0])
    frame = paired_comparison(final[~drop], method, metrics=["max_gap_wf1"])
    assert (frame["n"] == len(seeds) - 1).all()
    assert (frame["seeds"] == ",".join(str(s) for s in seeds[1:])).all()
    single = final[(final["family"] != BASELINE_FAMILY) | (final["seed"] == seeds[0])]
    frame = paired_comparison(single, method, metrics=["wf1"])
    assert (frame["n"] == 1).all() and frame["lo"].isna().all() and frame["p_value"].isna().all()
    assert (frame["seeds"] == str(seeds[0])).all()


def test_paired_comparison_errors(final: pd.DataFrame):
    method = _method(final)
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        paired_comparison(final, "nope")
    shifted = final.assign(seed=np.where(final["family"] == "erm", final["seed"] + 100, 0))
    with pytest.raises(ValueError, match="share no seeds"):
        paired_comparison(shifted, method)
    twin = final[final["family"] == "erm"].assign(group_hash="other", lam=0.1)
    with pytest.raises(ValueError, match="configurations"):
        paired_comparison(pd.concat([final, twin]), method)
    with pytest.raises(ValueError, match="unknown metric"):
        paired_comparison(final, method, metrics=["nope"])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "compare.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_compare_cli_prints_table_and_json(final: pd.DataFrame):
    method, modality = _method(final), _modalities(final)[0]
    result = _cli(str(SMOKE), "--method", method, "--modality", modality)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    assert record["method"] == method and record["baseline"] == "erm"
    assert [r["metric"] for r in record["rows"]] == list(HEADLINE_METRICS)
    gap = next(r for r in record["rows"] if r["metric"] == "max_gap_wf1")
    delta, p, n, _ = _expected(final, method, modality, "max_gap_wf1")
    assert gap["delta"] == pytest.approx(delta) and gap["p_value"] == pytest.approx(p)
    assert gap["n"] == n and gap["lo"] < gap["delta"] < gap["hi"]
    table = "\n".join(lines[:-1])
    assert "max_gap_tpr" in table and "95% CI" in table and f"{delta:+.2f}" in table


def test_compare_cli_one_seed_says_so(tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(SMOKE, run)
    df, _ = load_run(run)
    method = _method(final_rows(df))
    df[df["seed"] == df["seed"].min()].to_parquet(run / "trials.parquet", index=False)
    result = _cli(str(run), "--method", method, "--metrics", "wf1")
    assert result.returncode == 0, result.stderr
    assert "n/a (1 seed)" in result.stdout
    assert all(
        r["lo"] is None and r["n"] == 1 for r in json.loads(result.stdout.splitlines()[-1])["rows"]
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "nope"], "unknown family"),
        (["--method", "erm", "--baseline", "nope"], "unknown family"),
        (["--method", "erm", "--metrics", "nope"], "unknown metric"),
    ],
)
def test_compare_cli_bad_input_is_one_line_exit_2(args: list[str], message: str):
    result = _cli(str(SMOKE), *args)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_compare_cli_missing_run_and_no_shared_seeds(tmp_path: Path):
    result = _cli(str(tmp_path / "missing"), "--method", "erm")
    assert result.returncode == 2 and result.stderr.startswith("error: run directory not found")
    run = tmp_path / "run"
    shutil.copytree(SMOKE, run)
    df, _ = load_run(run)
    method = _method(final_rows(df))
    df["seed"] = np.where(df["family"] == "erm", df["seed"] + 100, df["seed"])
    df.to_parquet(run / "trials.parquet", index=False)
    result = _cli(str(run), "--method", method)
    assert result.returncode == 2 and "share no seeds" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
