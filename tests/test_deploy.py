"""The operating-point CLI and deploy.py on the real smoke golden run (tests/golden_run/smoke,
made by tests/golden_run/regenerate.py): references, floors, nothing-qualifies, units, seeds."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ermgap_ray.deploy import OPERATING_POINT_FILE, choose_operating_point, resolve_bounds
from ermgap_ray.errors import ConfigError
from ermgap_ray.pareto import (
    aggregate_seeds,
    final_rows,
    reference_mask,
    select_operating_point,
)
from ermgap_ray.results import load_trials, read_manifest, write_manifest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden_run"
# A fraction printed where points belong: 0.0853, 0.25 (a points value prints as 8.5, 25.0).
FRACTION = re.compile(r"(?<![\w.])0\.\d{2,}")


@pytest.fixture
def smoke(tmp_path: Path) -> Path:
    shutil.copytree(GOLDEN / "smoke", tmp_path / "smoke")
    return tmp_path / "smoke"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "analysis" / "operating_point.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_golden_smoke_run_is_a_real_sweep() -> None:
    df = load_trials(GOLDEN / "smoke")
    manifest = read_manifest(GOLDEN / "smoke")
    assert manifest.name == "smoke" and manifest.status == "finished"
    assert manifest.trials["error"] == 0 and manifest.trials["terminated"] == df.trial_id.nunique()
    final = final_rows(df)
    assert set(final["family"]) >= {"zero-shot", "erm", "search"}
    assert final.groupby("group_hash").size().max() >= 2, "grid configurations have 2 seeds"
    for rel in final["predictions_path"].dropna():
        assert not Path(rel).is_absolute() and (GOLDEN / "smoke" / rel).is_file()
    size = sum(p.stat().st_size for p in (GOLDEN / "smoke").rglob("*") if p.is_file())
    assert size < 2_000_000, "smoke's share of the ~2.5 MB golden budget (test_report.py)"


def test_loose_bound_never_selects_zero_shot(smoke: Path) -> None:
    result = _cli(smoke, "--max-gap", "100", "--no-reevaluate")
    assert result.returncode == 0, result.stderr
    record = json.loads((smoke / OPERATING_POINT_FILE).read_text())
    chosen = record["selection"]
    assert chosen["family"] != "zero-shot" and record["config"]["epochs"] > 0
    assert any(r["family"] == "zero-shot" for r in chosen["references"])
    # The best trained mean dev W-F1: every trained configuration satisfies a 100-point bound.
    df = load_trials(smoke)
    trained = final_rows(df)[~reference_mask(final_rows(df))]
    best = aggregate_seeds(trained, ["dev/wf1"])["dev/wf1_mean"].max()
    assert chosen["objective_mean"] == pytest.approx(best)
    assert record["seed_rule"] == chosen["rule"] and "1 seed" in record["seed_rule"]
    assert record["bounds"] == {"constraints": ["max_gap_wf1<=1"], "source": "--max-gap"}
    assert (smoke / record["adapter_path"]).is_dir() and record["trial_id"] in chosen["trial_ids"]
    assert "written: " in result.stdout and not FRACTION.search(result.stdout), result.stdout


def test_nothing_qualifies_exits_1_and_writes_nothing(smoke: Path) -> None:
    result = _cli(smoke, "--max-gap", "0", "--min-wf1", "100", "--no-reevaluate")
    assert result.returncode == 1
    assert "no configuration of" in result.stdout and "closest: " in result.stdout
    assert "dev/wf1 ≥ 100 pts" in result.stdout and not FRACTION.search(result.stdout)
    assert len(result.stderr.strip().splitlines()) == 1 and "no operating point" in result.stderr
    assert not (smoke / OPERATING_POINT_FILE).exists()
    point, record = choose_operating_point(
        smoke, max_gap=0.0, floors={"wf1": 100}, reevaluate=False
    )
    assert record is None and 1 <= len(point.nearest) <= 3
    assert all(n["family"] != "zero-shot" for n in point.nearest)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--max-gap", "-5"), "--max-gap -5: must be in percentage points, 0 to 100"),
        (("--min", "wf1=150"), "--min wf1 150: must be in percentage points, 0 to 100"),
    ],
)
def test_out_of_range_bounds_are_refused_in_one_line(
    smoke: Path, args: tuple[str, ...], message: str
) -> None:
    result = _cli(smoke, *args, "--no-reevaluate")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == f"error: {message}"
    assert not (smoke / OPERATING_POINT_FILE).exists()


def test_default_bound_is_the_sweeps_constraint(smoke: Path) -> None:
    manifest = read_manifest(smoke)
    extra = {k: v for k, v in manifest.raw.items() if k not in ("config", "versions")}
    config = manifest.config | {"constraints": ["dev/max_gap_wf1<=0.05"]}
    write_manifest(smoke, config, **{k: v for k, v in extra.items() if k != "git_commit"})
    bounds = resolve_bounds(smoke)
    assert bounds.constraints == ["dev/max_gap_wf1<=0.05"] and "constraints" in bounds.source
    assert resolve_bounds(smoke, max_gap=3).constraints == ["max_gap_wf1<=0.03"]
    result = _cli(smoke, "--no-reevaluate")
    assert "dev/max_gap_wf1 ≤ 5 pts" in result.stdout, result.stdout
    with pytest.raises(ConfigError, match="--max-gap -5"):
        resolve_bounds(smoke, max_gap=-5)


def test_one_seed_configurations_fall_back_to_their_value(smoke: Path) -> None:
    """Search trials are one seed each: they are checked on their single value, and say so."""
    df = load_trials(smoke)
    op = select_operating_point(df[df["family"] == "search"], "max_gap_wf1<=1")
    assert op.feasible and op.n_seeds == 1 and op.family == "search"
    assert op.constraint_lo == op.constraint_mean == op.constraint_hi
    assert "1 seed, no CI" in op.reason and "1 seed" in op.rule
