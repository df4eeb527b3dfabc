"""Issue 11: a search run with `--objective dev/wf1:max --objective dev/max_gap_avg:min` gives a
hypervolume figure and an operating point on max_gap_avg, not on the default max_gap_wf1.

tests/golden_run/objectives is a real 2-trial search with those objectives (regenerate.py), so
its sweep.json has the writer's shape: objectives as `metric:mode` strings under `config`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ermgap_ray import report
from ermgap_ray.deploy import choose_operating_point
from ermgap_ray.pareto import final_rows, hypervolume
from ermgap_ray.results import MANIFEST_FILE, load_trials, read_manifest

GOLDEN = Path(__file__).parent / "golden_run" / "objectives"
OBJECTIVES = [("dev/wf1", "max"), ("dev/max_gap_avg", "min")]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    shutil.copytree(GOLDEN, tmp_path / "objectives")
    return tmp_path / "objectives"


def test_manifest_keeps_the_searched_objectives() -> None:
    raw = json.loads((GOLDEN / MANIFEST_FILE).read_text())
    assert "objectives" not in raw and raw["config"]["objectives"] == [
        "dev/wf1:max",
        "dev/max_gap_avg:min",
    ], "the golden run must have the writer's shape, not a hand-built one"
    manifest = read_manifest(GOLDEN)
    assert manifest.objectives == OBJECTIVES and manifest.name == "objectives"
    assert manifest.config["kind"] == "search"


def test_operating_point_is_computed_on_max_gap_avg(run: Path) -> None:
    point, record = choose_operating_point(run, max_gap=100, reevaluate=False)
    assert point.feasible and point.objective == "dev/wf1"
    assert point.constraints == ["max_gap_avg<=1"]
    assert record["bounds"]["constraints"] == ["max_gap_avg<=1"]
    chosen = record["selection"]
    df = load_trials(run)
    rows = final_rows(df)[lambda d: d["group_hash"] == point.group_hash]
    assert chosen["constraint_mean"] == pytest.approx(rows["dev/max_gap_avg"].mean())
    assert "dev/max_gap_avg" in point.reason and "dev/max_gap_wf1" not in point.reason


def test_write_reports_draws_the_hypervolume_of_the_sweeps_objectives(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    real_hv, real_plot = report.hypervolume_over_trials, report.plot_hypervolume

    def spy_hv(df: Any, objectives: Any, *a: Any, **kw: Any) -> Any:
        seen["objectives"] = [tuple(o) for o in objectives]
        seen["hv"] = real_hv(df, objectives, *a, **kw)
        return seen["hv"]

    def spy_plot(curves: dict[str, Any], *a: Any, **kw: Any) -> Any:
        seen["names"] = list(curves)
        return real_plot(curves, *a, **kw)

    monkeypatch.setattr(report, "hypervolume_over_trials", spy_hv)
    monkeypatch.setattr(report, "plot_hypervolume", spy_plot)
    paths = report.write_reports(run)
    assert paths["hypervolume_png"].is_file() and paths["hypervolume_png"].stat().st_size > 0
    assert seen["objectives"] == OBJECTIVES and seen["names"] == ["objectives"]
    final = final_rows(load_trials(run))
    points = final[["dev/wf1", "dev/max_gap_avg"]].to_numpy(float)
    expected = hypervolume(points, (0.0, 1.0), [True, False])
    assert np.isclose(seen["hv"]["hypervolume"].iloc[-1], expected)
