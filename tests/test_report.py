"""Report frames, figures, tables and the analysis CLIs, on the real golden runs.

tests/golden_run/smoke (the smoke grid with 2 seeds plus a 2-trial search) and
tests/golden_run/objectives (a search on dev/wf1:max, dev/max_gap_avg:min) are written by the
real sweep writer (tests/golden_run/regenerate.py). Every expected value here is computed from
their rows, so the tests hold for whatever a regeneration produces.
"""

from __future__ import annotations

import io
import json
import math
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ermgap_ray import report
from ermgap_ray.data.schema import LANGUAGES, MODALITIES
from ermgap_ray.metrics import shuffled_null_gap
from ermgap_ray.pareto import (
    aggregate_seeds,
    final_rows,
    hypervolume,
    reference_mask,
    select_operating_point,
)
from ermgap_ray.registry import BASELINE_FAMILY, FAMILIES, FAMILY_LABELS, GAP_KINDS
from ermgap_ray.report import (
    TABLE_METRICS,
    ablation_cells,
    ablation_frame,
    ablation_table,
    hypervolume_over_trials,
    load_run,
    pareto_frame,
    plot_hypervolume,
    plot_pareto,
    render_ablation,
    with_null_columns,
    write_reports,
)
from ermgap_ray.results import MANIFEST_FILE, TRIALS_FILE

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden_run"
SMOKE, OBJECTIVES = GOLDEN / "smoke", GOLDEN / "objectives"


def _regenerate_module() -> dict[str, Any]:
    """regenerate.py's globals (runpy: not run as __main__, no bytecode left in golden_run)."""
    return runpy.run_path(str(GOLDEN / "regenerate.py"), run_name="golden_regenerate")


def _modalities(rows: pd.DataFrame) -> list[str]:
    present = set(rows["modality"].dropna())
    return [m for m in MODALITIES if m in present] + sorted(present - set(MODALITIES))


def _trained(df: pd.DataFrame) -> pd.DataFrame:
    final = final_rows(df)
    return final[~reference_mask(final)]


def _grid_method(df: pd.DataFrame) -> str:
    """The first trained grid family (not ERM, not search) whose configuration has >= 2 seeds."""
    final = _trained(df)
    seeds = final.groupby("family")["seed"].nunique()
    for family in FAMILIES:
        if family not in (BASELINE_FAMILY, "search") and seeds.get(family, 0) >= 2:
            return family
    raise AssertionError("the golden run has no multi-seed method family besides ERM")


def _t_interval(values: np.ndarray) -> tuple[float, float]:
    """(mean, t-CI half-width) as aggregate_seeds computes it; half-width 0 with one value."""
    n = len(values)
    if n < 2:
        return float(values.mean()), 0.0
    half = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return float(values.mean()), float(half)


@pytest.fixture
def smoke() -> pd.DataFrame:
    return load_run(SMOKE)[0]


@pytest.fixture
def run_copy(tmp_path: Path) -> Path:
    for name in ("smoke", "objectives"):
        shutil.copytree(GOLDEN / name, tmp_path / name)
    return tmp_path


def test_golden_runs_are_the_writers_output() -> None:
    """Exactly the runs regenerate.py makes, in the writer's shape, within the size budget."""
    regenerate = _regenerate_module()
    runs = {p.name for p in GOLDEN.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))}
    assert runs == set(regenerate["RUNS"]), "regenerate.py is the one way these are made"
    for name in runs:
        run = GOLDEN / name
        assert {p.name for p in run.iterdir()} <= {
            MANIFEST_FILE,
            TRIALS_FILE,
            "predictions",
            "adapters",
        }
        raw = json.loads((run / MANIFEST_FILE).read_text())
        assert "objectives" not in raw and raw["config"]["objectives"], name
        assert raw["status"] == "finished" and raw["config"]["name"] == name
        assert "cluster" not in raw and "storage" not in raw["config"], "machine fields dropped"
        df, manifest = load_run(run)
        assert manifest is not None and manifest.trials["error"] == 0
        for col in ("predictions_path", "adapter_path"):
            for rel in df[col].dropna():
                assert not Path(rel).is_absolute() and (run / rel).exists(), (name, rel)
    size = sum(p.stat().st_size for p in GOLDEN.rglob("*") if p.is_file())
    assert size < regenerate["BUDGET_BYTES"], f"tests/golden_run is {size} bytes"


def test_golden_smoke_run_is_plausible(smoke: pd.DataFrame) -> None:
    final = final_rows(smoke)
    assert len(final) == smoke["trial_id"].nunique(), "every trial finished"
    assert (final["status"] == "TERMINATED").all()
    families = set(final["family"])
    assert {"zero-shot", BASELINE_FAMILY, "search"} <= families and _grid_method(smoke)
    assert (final.loc[final["family"] == "zero-shot", "epochs"] == 0).all()
    grid = final[final["family"] != "search"]
    seeds = grid.groupby("group_hash")["seed"].apply(frozenset)
    assert seeds.map(len).min() >= 2 and seeds.nunique() == 1, "grid configs share >= 2 seeds"
    for split in ("dev", "test"):
        for kind in GAP_KINDS:
            per_lang = final[[f"{split}/gap_{kind}/{lang}" for lang in LANGUAGES]].max(axis=1)
            np.testing.assert_allclose(per_lang, final[f"{split}/max_gap_{kind}"])
    assert final["dev/wf1"].between(0, 1).all() and final["test/max_gap_wf1"].between(0, 1).all()


def test_pareto_frame_exact_on_golden(smoke: pd.DataFrame) -> None:
    frame = pareto_frame(smoke)
    configs = frame[frame["kind"] == "config"]
    trials = frame[frame["kind"] == "trial"]
    final = final_rows(smoke)
    assert list(dict.fromkeys(frame["panel"])) == _modalities(final)
    assert len(configs) == final["group_hash"].nunique() and len(trials) == len(final)
    for _, row in configs.iterrows():
        seeds = final[final["group_hash"] == row["group_hash"]]
        assert row["n"] == len(seeds)
        for name, col in (("utility", "dev/wf1"), ("gap", "dev/max_gap_wf1")):
            mean, half = _t_interval(seeds[col].to_numpy(float))
            assert row[name] == pytest.approx(100 * mean, abs=1e-9)
            assert row[f"{name}_hi"] == pytest.approx(min(100.0, 100 * (mean + half)), abs=1e-9)
            assert row[f"{name}_lo"] == pytest.approx(max(0.0, 100 * (mean - half)), abs=1e-9)
        assert row["family"] == seeds["family"].iloc[0] and row["modality"] == row["panel"]
    for _, sub in configs.groupby("panel"):
        # The front is among trained methods: an untrained reference is never on it.
        trained = sub[sub["family"] != "zero-shot"]
        points = trained[["utility", "gap"]].to_numpy()
        brute = [
            not any(q[0] >= p[0] and q[1] <= p[1] and (q != p).any() for q in points)
            for p in points
        ]
        assert trained["on_front"].tolist() == brute and trained["on_front"].any()
        assert not sub.loc[sub["family"] == "zero-shot", ["on_front", "ci_front"]].any().any()
        assert (sub["ci_front"] | ~sub["on_front"]).all()
    assert set(trials["trial_id"]) == set(final["trial_id"])
    # An errored trial, even with the best numbers of all, is not drawn.
    error = final.iloc[[0]].assign(trial_id="err", group_hash="err", status="ERROR")
    error[["dev/wf1", "dev/max_gap_wf1"]] = [1.0, 0.0]
    with_error = pareto_frame(pd.concat([smoke, error], ignore_index=True))
    pd.testing.assert_frame_equal(with_error, frame)


def test_pareto_frame_clips_intervals_to_the_metric_range(smoke: pd.DataFrame) -> None:
    df = smoke.copy()
    final = df["is_final"] & (df["status"] == "TERMINATED")
    group = df.loc[final & (df["family"] == BASELINE_FAMILY), "group_hash"].iloc[0]
    rows = df.index[final & (df["group_hash"] == group)]
    n = len(rows)
    assert n >= 2
    gaps, wf1s = [0.0] * (n - 1) + [0.3], [1.0] * (n - 1) + [0.9]
    df.loc[rows, "dev/max_gap_wf1"], df.loc[rows, "dev/wf1"] = gaps, wf1s
    row = pareto_frame(df).query("kind == 'config' and group_hash == @group").iloc[0]
    mean, half = _t_interval(np.array(gaps))
    assert mean - half < 0, "the t-interval reaches below 0"
    assert row["gap_lo"] == 0.0 and row["gap_hi"] == pytest.approx(min(100, 100 * (mean + half)))
    assert row["utility_hi"] == 100.0 and row["utility_lo"] < row["utility"] < 100.0


def test_pareto_frame_by_language_and_test_split(smoke: pd.DataFrame) -> None:
    frame = pareto_frame(smoke, split="test", gap="max_gap_avg", by_language=True)
    assert list(dict.fromkeys(frame["panel"])) == list(LANGUAGES)
    ja = frame[(frame["panel"] == "ja") & (frame["kind"] == "trial")]
    final = final_rows(smoke).set_index("trial_id")
    assert len(ja) == len(final)
    np.testing.assert_allclose(
        ja["gap"].to_numpy(), 100 * final.loc[ja["trial_id"], "test/gap_avg/ja"].to_numpy()
    )
    np.testing.assert_allclose(
        ja["utility"].to_numpy(), 100 * final.loc[ja["trial_id"], "test/wf1/ja"].to_numpy()
    )
    assert set(frame["gap_metric"]) == {f"test/gap_avg/{lang}" for lang in LANGUAGES}
    with pytest.raises(ValueError, match="max_gap_"):
        pareto_frame(smoke, gap="gap_wf1/ja", by_language=True)
    with pytest.raises(ValueError, match="unknown metric"):
        pareto_frame(smoke, gap="max_gap_nope")


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def _feasible_bound(df: pd.DataFrame, metric: str = "dev/max_gap_wf1") -> float:
    """A gap bound that the trained configuration with the lowest CI upper end just meets."""
    agg = aggregate_seeds(_trained(df), [metric])
    return float(agg[f"{metric}_hi"].min()) + 1e-9


def test_plot_pareto_renders_with_operating_point(smoke: pd.DataFrame) -> None:
    op = select_operating_point(smoke, f"max_gap_wf1<={_feasible_bound(smoke)}")
    assert op.feasible and op.family != "zero-shot"
    frame = pareto_frame(smoke)
    fig = plot_pareto(frame, operating_point=op)
    png = _png(fig)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    panels = list(dict.fromkeys(frame["panel"]))
    axes = fig.axes
    assert len(axes) == len(panels) and fig.get_size_inches()[0] == pytest.approx(3.4 * len(panels))
    chosen = frame.loc[frame["group_hash"] == op.group_hash, "panel"].iloc[0]
    for ax, panel in zip(axes, panels, strict=True):
        marked = any(t.get_text().startswith("operating point") for t in ax.texts)
        assert marked == (panel == chosen), panel
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    drawn = set(frame.loc[frame["kind"] != "null", "family"])
    assert {FAMILY_LABELS[f] for f in drawn} <= set(labels) and "operating point" in labels
    assert ("hollow: audio+text" in labels) == (len(set(final_rows(smoke)["modality"])) > 1)
    fig_lang = plot_pareto(pareto_frame(smoke, by_language=True))
    assert len(fig_lang.axes) == len(LANGUAGES) and _png(fig_lang).startswith(b"\x89PNG")


def test_plot_pareto_zooms_past_zero_shot(smoke: pd.DataFrame) -> None:
    """One seed (no CI whiskers): the trained models' range is what the y axis shows, and the
    near-chance zero-shot mean is named off scale instead of squashing them."""
    frame = pareto_frame(smoke[smoke["seed"] == 0])
    drawn = frame[frame["kind"] != "null"]
    trained = drawn[drawn["family"] != "zero-shot"]
    zero = drawn[(drawn["family"] == "zero-shot") & (drawn["kind"] == "config")]
    lowest = min(trained["utility"].min(), trained["utility_lo"].min())
    assert (
        len(zero) and (zero["utility"] < lowest - 0.1 * (trained["utility"].max() - lowest)).all()
    )
    fig = plot_pareto(frame)
    for ax in fig.axes:
        assert zero["utility"].max() < ax.get_ylim()[0] < lowest
        assert any(t.get_text().startswith("zero-shot, off scale") for t in ax.texts)


def _infeasible_spans(ax: Any) -> list[Any]:
    return [p for p in ax.patches if p.get_gid() == "infeasible"]


def test_plot_pareto_shades_the_infeasible_side_of_the_bound(smoke: pd.DataFrame) -> None:
    frame = pareto_frame(smoke)
    plain = plot_pareto(frame)
    assert not any(_infeasible_spans(ax) for ax in plain.axes)
    assert not any("infeasible" in t.get_text() for t in plain.legends[0].get_texts())
    unshaded = [ax.get_xlim() for ax in plain.axes]
    fig = plot_pareto(frame, gap_bound=45)
    for ax, xlim in zip(fig.axes, unshaded, strict=True):
        (span,) = _infeasible_spans(ax)
        assert span.get_x() == 45 and span.get_x() + span.get_width() == ax.get_xlim()[1]
        assert ax.get_xlim() == pytest.approx(xlim), "shading never widens the axis"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "infeasible (gap > 45 pts)" in labels and _png(fig).startswith(b"\x89PNG")
    far = math.ceil(max(hi for _, hi in unshaded)) + 1
    beyond = plot_pareto(frame, gap_bound=far)
    assert not any(_infeasible_spans(ax) for ax in beyond.axes), "nothing right of the data"
    assert f"infeasible (gap > {far} pts)" in [t.get_text() for t in beyond.legends[0].get_texts()]


def _set_constraints(run: Path, constraints: list[str]) -> None:
    sweep = json.loads((run / MANIFEST_FILE).read_text())
    sweep["config"]["constraints"] = constraints
    (run / MANIFEST_FILE).write_text(json.dumps(sweep))


def test_write_reports_bounds_are_the_sweeps_constraints(
    run_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The starred point and the shading follow sweep.json's constraints (else the 2-point
    default), as analysis/operating_point.py without flags; report.html's slider starts there."""
    drawn: list[dict[str, Any]] = []
    plot = report.plot_pareto
    monkeypatch.setattr(report, "plot_pareto", lambda *a, **kw: drawn.append(kw) or plot(*a, **kw))
    run = run_copy / "smoke"
    df, _ = load_run(run)
    bound = math.ceil(1000 * _feasible_bound(df)) / 1000  # a bound as a user writes it
    constraint = f"dev/max_gap_wf1<={bound:g}"
    _set_constraints(run, [constraint])
    html = write_reports(run)["report_html"].read_text()
    op = drawn[-1]["operating_point"]
    assert op.constraints == [constraint] and drawn[-1]["gap_bound"] == 100 * bound
    assert op.feasible and op.group_hash == select_operating_point(df, constraint).group_hash
    assert f'id="bound-value" min="0" max="100" step="any" value="{100 * bound:g}"' in html
    _set_constraints(run, [])
    write_reports(run)
    assert drawn[-1]["operating_point"].constraints == ["max_gap_wf1<=0.02"]
    assert drawn[-1]["gap_bound"] == 2.0
    write_reports(run, constraint="max_gap_wf1<=1")
    assert drawn[-1]["gap_bound"] == 100 and drawn[-1]["operating_point"].feasible
    find_spec = report.importlib.util.find_spec

    def no_plotly(name: str, *args: Any) -> Any:
        return None if name == "plotly" else find_spec(name, *args)

    monkeypatch.setattr(report.importlib.util, "find_spec", no_plotly)
    assert "report_html" not in write_reports(run), "without the [html] extra: no explorer"


def test_hypervolume_over_the_sweeps_objectives() -> None:
    df, sweep = load_run(OBJECTIVES)
    assert sweep is not None
    objectives = sweep.objectives
    assert objectives == [("dev/wf1", "max"), ("dev/max_gap_avg", "min")]
    cols, maximize = [c for c, _ in objectives], [d == "max" for _, d in objectives]
    hv = hypervolume_over_trials(df, objectives)
    n = df["trial_id"].nunique()
    assert hv["n_trials"].tolist() == list(range(1, n + 1))
    assert hv["trial_index"].tolist() == sorted(df["trial_index"].unique())
    assert np.all(np.diff(hv["hypervolume"]) >= 0)
    first = df[df["trial_index"] == df["trial_index"].min()].query("is_final").iloc[0]
    assert hv["hypervolume"].iloc[0] == pytest.approx(first[cols[0]] * (1 - first[cols[1]]))
    points = final_rows(df)[cols].to_numpy(float)
    assert hv["hypervolume"].iloc[-1] == pytest.approx(hypervolume(points, (0, 1), maximize))
    # An errored trial adds nothing, whatever it reported before failing.
    error = df.iloc[[0]].assign(
        trial_id="err", status="ERROR", trial_index=df["trial_index"].max() + 1
    )
    error[cols] = [1.0, 0.0]
    with_error = hypervolume_over_trials(pd.concat([df, error], ignore_index=True), objectives)
    assert len(with_error) == n + 1
    assert with_error["hypervolume"].iloc[-1] == hv["hypervolume"].iloc[-1]
    fig = plot_hypervolume({"nsga2": hv, "random": hv.assign(hypervolume=hv["hypervolume"] / 2)})
    assert _png(fig).startswith(b"\x89PNG") and len(fig.axes[0].lines) == 2


def _without_logged_nulls(df: pd.DataFrame) -> pd.DataFrame:
    """The rows as a run without logged nulls (older runs) has them: the report must compute
    the nulls from the predictions npz."""
    return df.drop(columns=[c for c in df.columns if "/null_" in c])


def test_ablation_frame_numbers(smoke: pd.DataFrame) -> None:
    # Rows shuffled: Δ must pair by seed, not by row order.
    shuffled = smoke.sample(frac=1, random_state=1).reset_index(drop=True)
    frame = ablation_frame(shuffled)
    pd.testing.assert_frame_equal(frame, ablation_frame(smoke))
    final = final_rows(smoke)
    assert len(frame) == final["group_hash"].nunique()
    assert set(frame["family"]) == set(final["family"]) and set(frame["group_hash"]) == set(
        final["group_hash"]
    )
    rank = {f: i for i, f in enumerate(FAMILIES)}
    keys = [
        (MODALITIES.index(m), rank[f])
        for m, f in zip(frame["modality"], frame["family"], strict=True)
    ]
    assert keys == sorted(keys), "ordered modality x family"
    method = _grid_method(smoke)
    for modality in _modalities(final):
        rows = final[final["modality"] == modality]
        erm = rows[rows["family"] == BASELINE_FAMILY].set_index("seed")
        ada = rows[rows["family"] == method].set_index("seed")
        row = frame[(frame["family"] == method) & (frame["modality"] == modality)].iloc[0]
        assert row["n"] == len(ada)
        assert row["wf1/ja"] == pytest.approx(100 * ada["test/wf1/ja"].mean())
        _, half = _t_interval(ada["test/max_gap_avg"].to_numpy(float))
        assert row["max_gap_avg_pm"] == pytest.approx(100 * half)
        seeds = ada.index.intersection(erm.index).sort_values()
        assert row["n_pairs"] == len(seeds) >= 2
        for metric in ("wf1", "max_gap_wf1"):
            a, e = ada.loc[seeds, f"test/{metric}"], erm.loc[seeds, f"test/{metric}"]
            d = 100 * (a - e)
            mean, half = _t_interval(d.to_numpy(float))
            assert row[f"delta_{metric}"] == pytest.approx(mean)
            assert row[f"delta_{metric}_lo"] == pytest.approx(mean - half)
            assert row[f"delta_{metric}_hi"] == pytest.approx(mean + half)
            assert row[f"p_{metric}"] == pytest.approx(stats.ttest_rel(a, e).pvalue)
        erm_row = frame[(frame["family"] == BASELINE_FAMILY) & (frame["modality"] == modality)]
        assert math.isnan(erm_row["delta_max_gap_wf1"].iloc[0]) and erm_row["n_pairs"].iloc[0] == 0
    assert frame["reference"].tolist() == (frame["family"] == "zero-shot").tolist()
    unlogged = ablation_frame(_without_logged_nulls(smoke))
    assert unlogged.filter(like="null_").isna().all().all(), "no logged nulls, no run_dir"
    logged = frame.loc[~frame["reference"], "null_max_gap_wf1"]
    assert logged.notna().all(), "the nulls the training loop logged reach the table"
    with_nulls = ablation_frame(smoke, run_dir=SMOKE)
    assert with_nulls.filter(like="null_").notna().all().all(), "every trial has predictions"


def test_ablation_pairs_with_the_baseline_of_the_same_modality(smoke: pd.DataFrame) -> None:
    """A second modality whose ERM is 10 points better: its Δ moves by 10, the first's not."""
    final = final_rows(smoke)
    (first,) = _modalities(final)[:1]
    other = next(m for m in MODALITIES if m != first)
    twin = final[final["modality"] == first].assign(modality=other)
    twin["group_hash"] = twin["group_hash"] + "-twin"
    erm = twin["family"] == BASELINE_FAMILY
    twin.loc[erm, "test/wf1"] = twin.loc[erm, "test/wf1"] - 0.1
    frame = ablation_frame(pd.concat([final[final["modality"] == first], twin]))
    method = _grid_method(smoke)
    rows = frame[frame["family"] == method].set_index("modality")
    assert rows.loc[other, "delta_wf1"] == pytest.approx(rows.loc[first, "delta_wf1"] + 10)
    assert rows.loc[other, "delta_max_gap_wf1"] == pytest.approx(
        rows.loc[first, "delta_max_gap_wf1"]
    )


def _table_rows(text: str, fmt: str, modalities: list[str]) -> list[list[str]]:
    sep = "|" if fmt == "md" else "&"
    out = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("| \\").split(sep)]
        if len(cells) > 2 and cells[1] in modalities:
            out.append(cells)
    return out


@pytest.mark.parametrize("fmt", ["md", "latex"])
def test_ablation_table_bold_best_and_delta(smoke: pd.DataFrame, fmt: str) -> None:
    text = ablation_table(smoke, format=fmt)
    bold = "**" if fmt == "md" else r"\textbf{"
    frame = ablation_frame(smoke)
    modalities = _modalities(final_rows(smoke))
    cells = _table_rows(text, fmt, modalities)
    assert len(cells) == len(frame) and {len(row) for row in cells} == {3 + len(TABLE_METRICS) + 4}
    assert [row[1] for row in cells] == frame["modality"].tolist()
    labels = {FAMILY_LABELS[f] for f in final_rows(smoke)["family"]}
    if fmt == "latex":
        labels = {label.replace("λ", r"$\lambda$") for label in labels}
    assert {row[0].split(" (")[0] for row in cells} == labels, "every family has its rows"
    trained = ~frame["reference"]
    for j, metric in enumerate(TABLE_METRICS):
        best = frame.loc[trained, metric].round(1).agg("min" if "gap" in metric else "max")
        bold_cells = [row[3 + j] for row in cells if bold in row[3 + j]]
        assert bold_cells and all(f"{best:.1f}" in c for c in bold_cells), metric
    assert not any(bold in cell for row in cells if row[0].startswith("Zero") for cell in row)
    assert [row[0] for row in cells].count("ERM") == len(modalities)
    method = _grid_method(smoke)
    i = frame.index[(frame["family"] == method) & (frame["modality"] == modalities[0])][0]
    row, line = frame.loc[i], " & ".join(cells[i])
    assert row["n_pairs"] >= 2
    for m in ("wf1", "max_gap_wf1"):
        lo, hi = row[f"delta_{m}_lo"], row[f"delta_{m}_hi"]
        want = f"{row[f'delta_{m}']:+.1f} [{lo:+.1f}, {hi:+.1f}]"
        assert (want if fmt == "md" else want.replace("-", "$-$")) in line
    if fmt == "md":
        header = text.splitlines()[0]
        assert "Δ W-F1 gap" in header and "| n |" in header and "λ" in text
        assert "paired t-test" in text
    else:
        assert r"$\Delta$" in text and r"\toprule" in text and "λ" not in text and "±" not in text
        assert text.count(r"\midrule") == len(modalities), "after the header, between modalities"


def test_ablation_cells_are_the_frame_formatted(smoke: pd.DataFrame) -> None:
    frame = ablation_frame(smoke)
    cells = ablation_cells(frame)
    assert len(cells) == len(frame) and cells.columns[:3].tolist() == ["Method", "Modality", "n"]
    i = frame.index[frame["family"] == BASELINE_FAMILY][0]
    r, c = frame.loc[i], cells.loc[i]
    assert r["n"] >= 2 and c["n"] == str(r["n"]) and c["Method"] == "ERM"
    assert c["W-F1 All"].removeprefix("**").startswith(f"{r['wf1']:.1f} ± {r['wf1_pm']:.1f}")
    assert c["Δ W-F1"] == "–" and c["p (Δ W-F1)"] == "–"


def test_one_seed_rows_say_na_not_pm_zero(smoke: pd.DataFrame) -> None:
    one = smoke[smoke["seed"] == smoke["seed"].min()]
    frame = ablation_frame(one)
    assert (frame["n"] == 1).all() and frame["wf1_pm"].isna().all()
    text = render_ablation(frame)
    assert "± 0.0" not in text and "n/a (1 seed)" in text
    method = _grid_method(smoke)
    i = frame.index[frame["family"] == method][0]
    label = f"| {FAMILY_LABELS[method]} | {frame.loc[i, 'modality']} |"
    line = [ln for ln in text.splitlines() if ln.startswith(label)][0]
    assert "[n/a (1 seed)]" in line and line.rstrip(" |").endswith("n/a (1 seed)")
    assert frame.loc[i, "n_pairs"] == 1 and math.isnan(frame.loc[i, "delta_wf1_lo"])


def test_zero_epoch_rows_never_compete(smoke: pd.DataFrame) -> None:
    df = smoke.copy()
    untrained = df["family"] == "zero-shot"
    assert untrained.any()
    # A 0-epoch model under another family name with the best gap of all: still a reference.
    df.loc[untrained, "family"] = "custom"
    df.loc[untrained, [f"test/max_gap_{m}" for m in GAP_KINDS]] = 0.0
    frame = ablation_frame(df)
    assert frame.loc[frame["family"] == "custom", "reference"].all()
    cells = ablation_cells(frame)
    custom = cells[frame["family"] == "custom"]
    assert not custom.apply(lambda col: col.str.contains(r"\*\*")).any().any()
    assert cells.loc[~frame["reference"], "Gap W-F1"].str.contains(r"\*\*").any()


def test_null_columns_from_predictions_and_logged_values(run_copy: Path) -> None:
    """The real predictions npz of the smoke run give each finished trial its shuffled null."""
    run = run_copy / "smoke"
    df = _without_logged_nulls(load_run(run)[0])
    final = final_rows(df)
    trial = _trained(df).iloc[0]
    missing = final[final["trial_id"] != trial["trial_id"]].iloc[-1]
    (run / missing["predictions_path"]).unlink()
    out = with_null_columns(df, "test", ["max_gap_wf1", "gap_acc/ja"], run_dir=run)
    with np.load(run / trial["predictions_path"]) as z:
        want = shuffled_null_gap(z["y_true"], z["y_pred"], z["languages"], z["genders"], "wf1")
    got = out[(out["trial_id"] == trial["trial_id"]) & out["is_final"]].iloc[0]
    assert got["test/null_max_gap_wf1"] == pytest.approx(want["mean"])
    assert got["test/null_max_gap_wf1_p95"] == pytest.approx(want["p95"])
    assert got["test/null_gap_acc/ja"] > 0
    covered = out["is_final"] & (out["trial_id"] != missing["trial_id"])
    assert out.loc[covered, "test/null_max_gap_wf1"].notna().all()
    assert out.loc[~covered, "test/null_max_gap_wf1"].isna().all()
    # A value the training loop logged is kept, not recomputed.
    logged = df.assign(**{"test/null_max_gap_wf1": 0.5})
    kept = with_null_columns(logged, "test", ["max_gap_wf1"], run_dir=run)
    assert (kept["test/null_max_gap_wf1"] == 0.5).all()
    assert with_null_columns(df, "dev", ["max_gap_wf1"], run)["dev/null_max_gap_wf1"].isna().all()

    frame = ablation_frame(df, run_dir=run)
    modality = trial["modality"]
    erm = frame[(frame["family"] == BASELINE_FAMILY) & (frame["modality"] == modality)].iloc[0]
    seeds = out[covered & (out["family"] == BASELINE_FAMILY) & (out["modality"] == modality)]
    assert erm["null_max_gap_wf1"] == pytest.approx(100 * seeds["test/null_max_gap_wf1"].mean())
    assert erm["null_max_gap_wf1_p95"] > erm["null_max_gap_wf1"] > 0
    label = f"| ERM | {modality} |"
    line = [ln for ln in render_ablation(frame).splitlines() if ln.startswith(label)][0]
    assert (
        f"{erm['max_gap_wf1']:.1f} ± {erm['max_gap_wf1_pm']:.1f} [{erm['null_max_gap_wf1']:.1f}]"
        in line
    )
    assert "gender-shuffled null" in render_ablation(frame, format="latex")


def test_pareto_frame_null_band(run_copy: Path) -> None:
    run = run_copy / "smoke"
    df = _without_logged_nulls(load_run(run)[0])
    assert (pareto_frame(df)["kind"] != "null").all(), "no null without predictions or columns"
    frame = pareto_frame(df, run_dir=run)
    nulls = frame[frame["kind"] == "null"]
    modalities = _modalities(final_rows(df))
    assert nulls["panel"].tolist() == modalities
    assert (nulls["gap_metric"] == "test/null_max_gap_wf1").all(), "dev falls back to test"
    trained = _trained(with_null_columns(df, "test", ["max_gap_wf1"], run))
    for _, r in nulls.iterrows():
        sub = trained[trained["modality"] == r["panel"]]
        assert r["gap"] == pytest.approx(100 * sub["test/null_max_gap_wf1"].mean())
        assert r["gap_hi"] == pytest.approx(100 * sub["test/null_max_gap_wf1_p95"].mean())
        assert r["gap_lo"] == 0 and r["n"] == len(sub)
    fig = plot_pareto(frame)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "shuffled-gender null (test split)" in labels and _png(fig).startswith(b"\x89PNG")
    hollow = int(len(modalities) > 1)
    assert len(labels) == len(set(frame["family"]) - {""}) + 3 + hollow, "nulls add no family"
    logged = df.assign(**{"dev/null_max_gap_wf1": 0.01, "dev/null_max_gap_wf1_p95": 0.02})
    own = pareto_frame(logged).query("kind == 'null'")
    np.testing.assert_allclose(own[["gap", "gap_hi"]].to_numpy(), [[1.0, 2.0]] * len(modalities))
    fig = plot_pareto(pareto_frame(logged))
    assert "shuffled-gender null" in [t.get_text() for t in fig.legends[0].get_texts()]
    by_lang = pareto_frame(df, split="test", by_language=True, run_dir=run)
    assert by_lang.query("kind == 'null'")["gap_metric"].tolist() == [
        f"test/null_gap_wf1/{lang}" for lang in LANGUAGES
    ]


def test_write_reports(run_copy: Path) -> None:
    base = {"pareto_pdf", "pareto_png", "ablation_md", "ablation_tex", "report_html"}
    hv = {"hypervolume_pdf", "hypervolume_png"}
    for name in ("smoke", "objectives"):
        paths = write_reports(run_copy / name)
        assert set(paths) == base | hv, name
        assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
        assert paths["pareto_png"] == run_copy / name / "figures" / "pareto.png"
        assert paths["report_html"] == run_copy / name / "report.html"
    # Without search trials there is no hypervolume to draw.
    run = run_copy / "smoke"
    df, _ = load_run(run)
    df[df["family"] != "search"].to_parquet(run / TRIALS_FILE, index=False)
    shutil.rmtree(run / "figures")
    assert set(write_reports(run)) == base and not (run / "figures" / "hypervolume.png").exists()


def test_write_reports_reads_the_objectives_nested_in_config(run_copy: Path) -> None:
    """The sweep writes objectives as `metric:mode` strings under `config`; a top-level copy
    (the old hand-built shape) is not what the reader goes by."""
    run = run_copy / "objectives"
    sweep = json.loads((run / MANIFEST_FILE).read_text())
    assert sweep["config"]["objectives"] == ["dev/wf1:max", "dev/max_gap_avg:min"]
    assert "Δ AVG gap" in write_reports(run)["ablation_md"].read_text().splitlines()[0]
    sweep["objectives"] = [["dev/wf1", "max"], ["dev/max_gap_tpr", "min"]]
    (run / MANIFEST_FILE).write_text(json.dumps(sweep))
    assert "Δ AVG gap" in write_reports(run)["ablation_md"].read_text().splitlines()[0]
    smoke = run_copy / "smoke"
    assert "Δ W-F1 gap" in write_reports(smoke)["ablation_md"].read_text().splitlines()[0]
    (run / MANIFEST_FILE).unlink()
    assert "Δ W-F1 gap" in write_reports(run)["ablation_md"].read_text().splitlines()[0]


def _cli(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "analysis" / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_pareto_cli(run_copy: Path) -> None:
    run, other = run_copy / "smoke", run_copy / "objectives"
    df, _ = load_run(run)
    op = select_operating_point(df, "max_gap_wf1<=1.0")
    assert op.feasible and op.family != "zero-shot"
    result = _cli(
        "pareto.py", str(run), "--max-gap", "100", "--by-language", "--hypervolume", str(other)
    )
    assert result.returncode == 0, result.stderr
    printed = [Path(line) for line in result.stdout.splitlines() if line.startswith("/")]
    assert len(printed) == 5 and all(p.is_file() for p in printed)
    assert (run / "figures" / "pareto_dev_max_gap_wf1_by_language.png") in printed
    assert (run / "figures" / "hypervolume_vs_trials.png") in printed
    assert "operating point: " in result.stdout and op.group_hash in result.stdout
    csv = pd.read_csv(run / "figures" / "pareto_dev_max_gap_wf1_by_language.csv")
    assert list(dict.fromkeys(csv["panel"])) == list(LANGUAGES)


def test_pareto_cli_html(run_copy: Path) -> None:
    run = run_copy / "smoke"
    result = _cli("pareto.py", str(run), "--html", "--max-gap", "60")
    assert result.returncode == 0, result.stderr
    assert str(run / "report.html") in result.stdout.splitlines()
    page = (run / "report.html").read_text()
    assert page.startswith("<!doctype html>") and "<script src=" not in page
    assert len(page) > 1_000_000, "plotly.js is inlined: the file opens offline"


def test_tables_cli(run_copy: Path) -> None:
    run = run_copy / "smoke"
    result = _cli("tables.py", str(run), "--format", "latex", "--split", "dev")
    assert result.returncode == 0, result.stderr
    assert r"\begin{tabular}" in result.stdout
    assert (run / "tables" / "ablation_dev.tex").read_text().startswith("% requires")


@pytest.mark.parametrize(("script", "target"), [("pareto.py", "missing"), ("tables.py", ".")])
def test_cli_missing_run_dir_is_one_line_exit_2(tmp_path: Path, script: str, target: str) -> None:
    result = _cli(script, str(tmp_path / target))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stdout == ""
