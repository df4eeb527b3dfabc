"""Report frames, figures, tables and the analysis CLIs, on a small checked-in golden run."""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from ermgap_ray.data.schema import LANGUAGES, MODALITIES
from ermgap_ray.metrics import shuffled_null_gap
from ermgap_ray.pareto import hypervolume, select_operating_point
from ermgap_ray.registry import GAP_KINDS
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

GOLDEN = Path(__file__).parent / "golden_run"
HEADLINE = ("wf1", "acc", *(f"max_gap_{m}" for m in GAP_KINDS))
# family -> (config knobs, final dev W-F1, final dev max W-F1 gap): ERM has the big gap,
# MinMaxGAP trades a little W-F1 for a much smaller one.
PAPER_FAMILIES = {
    "zero-shot": (
        {"objective": "erm", "p": 1, "lambda_mode": "fixed", "lam": 0.0, "epochs": 0},
        0.17,
        0.035,
    ),
    "erm": ({"objective": "erm", "p": 1, "lambda_mode": "fixed", "lam": 0.0}, 0.62, 0.14),
    "fixed-p1": (
        {"objective": "minmaxgap", "p": 1, "lambda_mode": "fixed", "lam": 1.0},
        0.605,
        0.05,
    ),
    "fixed-p2": (
        {"objective": "minmaxgap", "p": 2, "lambda_mode": "fixed", "lam": 4.0},
        0.61,
        0.075,
    ),
    "adaptive-p1": (
        {"objective": "minmaxgap", "p": 1, "lambda_mode": "adaptive", "lam": 0.5},
        0.60,
        0.012,
    ),
    "adaptive-p2": (
        {"objective": "minmaxgap", "p": 2, "lambda_mode": "adaptive", "lam": 0.5},
        0.607,
        0.03,
    ),
    "groupdro": (
        {"objective": "groupdro", "p": 1, "lambda_mode": "fixed", "lam": 0.0},
        0.595,
        0.065,
    ),
    "meangap": ({"objective": "meangap", "p": 2, "lambda_mode": "fixed", "lam": 4.0}, 0.612, 0.095),
}
BASE_CONFIG = {"eta": 2.0, "epsilon": 0.02, "lam_max": 10.0, "epochs": 2, "lr": 2e-3, "lora_r": 8}


def _hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def _metrics(rng: np.random.Generator, wf1: float, gap: float) -> dict[str, float]:
    """Plausible flat metrics: JA carries the planted gender bias, gaps are consistent maxima."""
    m: dict[str, float] = {}
    for lang, shift in zip(LANGUAGES, (0.03, -0.04, 0.01), strict=True):
        m[f"wf1/{lang}"] = wf1 + shift + rng.normal(0, 0.006)
        m[f"acc/{lang}"] = m[f"wf1/{lang}"] + 0.02 + rng.normal(0, 0.004)
        for kind, factor in zip(GAP_KINDS[:4], (1.1, 0.25, 1.0, 0.9), strict=True):
            base = gap * factor if lang == "ja" else 0.2 * gap * factor + 0.004
            m[f"gap_{kind}/{lang}"] = base + abs(rng.normal(0, 0.003))
        m[f"gap_avg/{lang}"] = float(np.mean([m[f"gap_{k}/{lang}"] for k in GAP_KINDS[:4]]))
    m["wf1"] = float(np.mean([m[f"wf1/{lang}"] for lang in LANGUAGES]))
    m["acc"] = float(np.mean([m[f"acc/{lang}"] for lang in LANGUAGES]))
    for kind in GAP_KINDS:
        per_lang = [m[f"gap_{kind}/{lang}"] for lang in LANGUAGES]
        m[f"gap_{kind}/all"] = 0.5 * float(np.mean(per_lang))
        m[f"max_gap_{kind}"] = max(per_lang)
    return {k: float(np.clip(v, 0.0, 1.0)) for k, v in m.items()}


def _trial_rows(index: int, family: str, config: dict, wf1: float, gap: float) -> list[dict]:
    """One row per epoch; the last is final and carries test metrics and bootstrap bounds."""
    group_hash = _hash({k: v for k, v in config.items() if k != "seed"})
    seed_noise = 0 if family == "zero-shot" else config["seed"] + 1
    rng = np.random.default_rng([index if seed_noise else 0, seed_noise, len(family)])
    wf1, gap = (
        wf1 + rng.normal(0, 0.008) * bool(seed_noise),
        gap + rng.normal(0, 0.005) * bool(seed_noise),
    )
    epochs = range(1, config["epochs"] + 1) if config["epochs"] else [0]
    trial_id = f"5e1f0_{index:05d}"
    rows = []
    for epoch in epochs:
        final = epoch == epochs[-1]
        late = 0 if final else 1
        dev = _metrics(rng, wf1 - 0.04 * late, gap + 0.02 * late)
        row = {
            "trial_id": trial_id,
            "config_hash": _hash(config),
            "group_hash": group_hash,
            "family": family,
            "status": "TERMINATED" if final else "RUNNING",
            "error": None,
            "epoch": epoch,
            "is_final": final,
            "time_total_s": 31.5 * max(epoch, 0.2),
            "trial_index": index,
            "adapter_path": None,
            "predictions_path": None,
            "backbone": "tiny-qwen2-audio",
            "data_fingerprint": "synthetic-v1-3c9a",
            **config,
            "lambda": config["lam"] + (0.4 * epoch if config["lambda_mode"] == "adaptive" else 0.0),
            "train/loss": 1.9 - 0.3 * epoch,
            "train/gap": gap + 0.05 * late,
            **{f"dev/{k}": v for k, v in dev.items()},
        }
        if final:
            test = _metrics(rng, wf1 - 0.01, gap + 0.004)
            row.update({f"test/{k}": v for k, v in test.items()})
            for k in HEADLINE:
                half = 0.02 if "gap" not in k else 0.012
                row[f"test/{k}_lo"], row[f"test/{k}_hi"] = max(test[k] - half, 0), test[k] + half
            if family != "zero-shot":
                row["adapter_path"] = f"adapters/{trial_id}"
        rows.append(row)
    return rows


def make_golden(kind: str) -> tuple[pd.DataFrame, dict]:
    """The checked-in golden runs, rebuilt deterministically (a `paper` grid or a `search`)."""
    rows: list[dict] = []
    if kind == "paper":
        for modality in MODALITIES:
            bonus = 0.05 if modality == "audio+text" else 0.0
            for family, (knobs, wf1, gap) in PAPER_FAMILIES.items():
                for seed in range(3):
                    config = {**BASE_CONFIG, **knobs, "modality": modality, "seed": seed}
                    rows += _trial_rows(
                        len({r["trial_id"] for r in rows}),
                        family,
                        config,
                        wf1 + bonus,
                        gap * (0.9 if bonus else 1.0),
                    )
        config = {**BASE_CONFIG, **PAPER_FAMILIES["fixed-p2"][0], "lam": 16.0}
        config.update(modality="audio+text", seed=0)
        error = _trial_rows(len({r["trial_id"] for r in rows}), "fixed-p2", config, 0.5, 0.1)[0]
        error.update({k: math.nan for k in error if k.startswith("dev/")})
        error.update(
            status="ERROR",
            epoch=0,
            is_final=False,
            time_total_s=12.0,
            error="NonFiniteLoss: step 14, group losses {(ja, F): nan} (RuntimeError)",
        )
        rows.append(error)
        objectives = [["dev/wf1", "max"], ["dev/max_gap_wf1", "min"]]
    else:
        rng = np.random.default_rng(7)
        for index in range(12):
            lam = float(np.exp(rng.uniform(np.log(0.01), np.log(10.0))))
            knobs = {
                "objective": "minmaxgap",
                "p": int(rng.integers(1, 3)),
                "lambda_mode": "fixed",
                "lam": round(lam, 4),
                "lr": round(float(np.exp(rng.uniform(np.log(5e-4), np.log(5e-3)))), 5),
            }
            config = {**BASE_CONFIG, **knobs, "modality": "audio", "seed": 0}
            gap = 0.14 / (1 + 3 * lam) + 0.01
            rows += _trial_rows(index, "search", config, 0.62 - 0.02 * np.sqrt(lam), gap)
        rows[-1].update(status="ERROR", error="NonFiniteLoss: step 3 (RuntimeError)")
        rows[-1].update(is_final=False, adapter_path=None)
        rows[-1].update({k: math.nan for k in rows[-1] if k.startswith(("dev/", "test/"))})
        objectives = [["dev/wf1", "max"], ["dev/max_gap_wf1", "min"]]
    df = pd.DataFrame(rows)
    df["error"] = df["error"].astype(object)
    sweep = {
        "name": f"golden-{kind}",
        "preset": kind,
        "config": BASE_CONFIG,
        "objectives": objectives,
        "versions": {"python": "3.11"},
        "git_commit": None,
    }
    return df, sweep


def write_golden(kind: str, directory: Path) -> Path:
    """How the checked-in files were written: zstd, no statistics or schema blobs (< 200 KB)."""
    df, sweep = make_golden(kind)
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(
        table,
        directory / "trials.parquet",
        compression="zstd",
        write_statistics=False,
        use_dictionary=False,
        write_page_index=False,
        store_schema=False,
    )
    (directory / "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
    return directory


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def paper() -> pd.DataFrame:
    return load_run(GOLDEN / "paper")[0]


@pytest.fixture
def run_copy(tmp_path: Path) -> Path:
    shutil.copytree(GOLDEN, tmp_path / "golden")
    return tmp_path / "golden"


@pytest.mark.parametrize("kind", ["paper", "search"])
def test_golden_files_are_the_generator_output(kind: str, tmp_path: Path) -> None:
    df, sweep = load_run(GOLDEN / kind)
    expected, expected_sweep = load_run(write_golden(kind, tmp_path / kind))
    pd.testing.assert_frame_equal(df, expected)
    assert sweep.raw == expected_sweep.raw
    assert sum(p.stat().st_size for p in GOLDEN.rglob("*") if p.is_file()) < 200_000


def test_golden_paper_run_is_plausible(paper: pd.DataFrame) -> None:
    final = paper[paper["is_final"]]
    assert len(final) == 2 * 8 * 3 and (final["status"] == "TERMINATED").all()
    assert paper["status"].eq("ERROR").sum() == 1
    assert paper.loc[paper["status"] == "ERROR", "error"].str.startswith("NonFiniteLoss").all()
    gap = final.groupby("family")["dev/max_gap_wf1"].mean()
    wf1 = final.groupby("family")["dev/wf1"].mean()
    assert gap["erm"] > 2 * gap["fixed-p1"] > 2 * gap["adaptive-p1"]
    assert wf1["erm"] > wf1["adaptive-p1"] > wf1["erm"] - 0.05
    per_lang = final[[f"dev/gap_wf1/{lang}" for lang in LANGUAGES]].max(axis=1)
    np.testing.assert_allclose(per_lang, final["dev/max_gap_wf1"])


def test_pareto_frame_exact_on_golden(paper: pd.DataFrame) -> None:
    frame = pareto_frame(paper)
    configs = frame[frame["kind"] == "config"]
    trials = frame[frame["kind"] == "trial"]
    assert list(dict.fromkeys(frame["panel"])) == list(MODALITIES)
    assert len(configs) == 16 and len(trials) == 48
    final = paper[paper["is_final"] & (paper["status"] == "TERMINATED")]
    for _, row in configs.iterrows():
        seeds = final[final["group_hash"] == row["group_hash"]]
        for name, col in (("utility", "dev/wf1"), ("gap", "dev/max_gap_wf1")):
            values = seeds[col].to_numpy()
            half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
            assert row[name] == pytest.approx(100 * values.mean(), abs=1e-9)
            hi = min(100.0, 100 * (values.mean() + half))
            assert row[f"{name}_hi"] == pytest.approx(hi, abs=1e-9)
            assert row[f"{name}_lo"] == pytest.approx(max(0.0, 100 * (values.mean() - half)))
        assert row["family"] == seeds["family"].iloc[0] and row["modality"] == row["panel"]
    for _, sub in configs.groupby("panel"):
        points = sub[["utility", "gap"]].to_numpy()
        brute = [
            not any(q[0] >= p[0] and q[1] <= p[1] and (q != p).any() for q in points)
            for p in points
        ]
        assert sub["on_front"].tolist() == brute
        on_front = set(sub.loc[sub["on_front"], "family"])
        assert {"erm", "adaptive-p1"} <= on_front and "zero-shot" not in on_front
        assert (sub["ci_front"] | ~sub["on_front"]).all()
    trial_ids = set(trials["trial_id"])
    assert trial_ids == set(final["trial_id"])


def test_pareto_frame_clips_intervals_to_the_metric_range(paper: pd.DataFrame) -> None:
    df = paper.copy()
    final = df["is_final"] & (df["status"] == "TERMINATED")
    group = df.loc[final & (df["family"] == "erm"), "group_hash"].iloc[0]
    rows = df.index[final & (df["group_hash"] == group)]
    df.loc[rows, "dev/max_gap_wf1"] = [0.0, 0.0, 0.3]  # t-interval 0.1 ± 0.43
    df.loc[rows, "dev/wf1"] = [1.0, 1.0, 0.9]
    row = pareto_frame(df).query("kind == 'config' and group_hash == @group").iloc[0]
    half = 100 * stats.t.ppf(0.975, 2) * np.std([0.0, 0.0, 0.3], ddof=1) / math.sqrt(3)
    assert row["gap_lo"] == 0.0 and row["gap_hi"] == pytest.approx(10 + half)
    assert row["utility_hi"] == 100.0 and row["utility_lo"] < row["utility"]


def test_pareto_frame_by_language_and_test_split(paper: pd.DataFrame) -> None:
    frame = pareto_frame(paper, split="test", gap="max_gap_avg", by_language=True)
    assert list(dict.fromkeys(frame["panel"])) == list(LANGUAGES)
    ja = frame[(frame["panel"] == "ja") & (frame["kind"] == "trial")]
    final = paper[paper["is_final"]].set_index("trial_id")
    np.testing.assert_allclose(
        ja["gap"].to_numpy(), 100 * final.loc[ja["trial_id"], "test/gap_avg/ja"].to_numpy()
    )
    assert set(frame["gap_metric"]) == {f"test/gap_avg/{lang}" for lang in LANGUAGES}
    with pytest.raises(ValueError, match="max_gap_"):
        pareto_frame(paper, gap="gap_wf1/ja", by_language=True)
    with pytest.raises(ValueError, match="unknown metric"):
        pareto_frame(paper, gap="max_gap_nope")


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def test_plot_pareto_renders_with_operating_point(paper: pd.DataFrame) -> None:
    op = select_operating_point(paper, "max_gap_wf1<=0.03")
    fig = plot_pareto(pareto_frame(paper), operating_point=op)
    png = _png(fig)
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    axes = fig.axes
    assert len(axes) == 2 and fig.get_size_inches()[0] == pytest.approx(6.8)
    assert any(t.get_text().startswith("operating point") for t in axes[1].texts)
    assert axes[0].get_ylim()[0] > 40, "zero-shot must not squash the trained models' range"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "ERM" in labels and "operating point" in labels
    fig_lang = plot_pareto(pareto_frame(paper, by_language=True))
    assert len(fig_lang.axes) == 3 and _png(fig_lang).startswith(b"\x89PNG")


def test_hypervolume_over_trials_on_search_run() -> None:
    df, sweep = load_run(GOLDEN / "search")
    hv = hypervolume_over_trials(df, sweep.objectives)
    assert hv["n_trials"].tolist() == list(range(1, 13))
    assert np.all(np.diff(hv["hypervolume"]) >= 0)
    first = df[(df["trial_index"] == 0) & df["is_final"]].iloc[0]
    assert hv["hypervolume"].iloc[0] == pytest.approx(
        first["dev/wf1"] * (1 - first["dev/max_gap_wf1"])
    )
    final = df[df["is_final"]]
    all_points = final[["dev/wf1", "dev/max_gap_wf1"]].to_numpy()
    assert hv["hypervolume"].iloc[-1] == pytest.approx(
        hypervolume(all_points, (0, 1), [True, False])
    )
    assert hv["hypervolume"].iloc[-1] == hv["hypervolume"].iloc[-2], "ERROR trial adds nothing"
    fig = plot_hypervolume({"nsga2": hv, "random": hv.assign(hypervolume=hv["hypervolume"] / 2)})
    assert _png(fig).startswith(b"\x89PNG") and len(fig.axes[0].lines) == 2


def test_ablation_frame_numbers(paper: pd.DataFrame) -> None:
    frame = ablation_frame(paper)
    assert len(frame) == 16
    assert frame[["modality", "family"]].iloc[:2].values.tolist() == [
        ["audio", "zero-shot"],
        ["audio", "erm"],
    ]
    final = paper[paper["is_final"] & (paper["status"] == "TERMINATED")]
    pick = final[(final["modality"] == "audio")].groupby("family")
    erm, ada = pick.get_group("erm"), pick.get_group("adaptive-p1")
    row = frame[(frame["family"] == "adaptive-p1") & (frame["modality"] == "audio")].iloc[0]
    assert row["wf1/ja"] == pytest.approx(100 * ada["test/wf1/ja"].mean())
    half = stats.t.ppf(0.975, 2) * ada["test/max_gap_avg"].std(ddof=1) / math.sqrt(3)
    assert row["max_gap_avg_pm"] == pytest.approx(100 * half)
    for metric in ("wf1", "max_gap_wf1"):
        a = ada.set_index("seed")[f"test/{metric}"]
        e = erm.set_index("seed")[f"test/{metric}"]
        d = 100 * (a - e[a.index])  # paired by seed
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        assert row[f"delta_{metric}"] == pytest.approx(d.mean())
        assert row[f"delta_{metric}_lo"] == pytest.approx(d.mean() - half)
        assert row[f"delta_{metric}_hi"] == pytest.approx(d.mean() + half)
        assert row[f"p_{metric}"] == pytest.approx(stats.ttest_rel(a, e[a.index]).pvalue)
    assert row["n_pairs"] == 3 and row["delta_max_gap_wf1"] < 0
    erm_row = frame[(frame["family"] == "erm")].iloc[0]
    assert math.isnan(erm_row["delta_max_gap_wf1"]) and erm_row["n_pairs"] == 0
    assert frame["reference"].tolist() == (frame["family"] == "zero-shot").tolist()
    assert frame.filter(like="null_").isna().all().all(), "no logged nulls, no predictions"


@pytest.mark.parametrize("fmt", ["md", "latex"])
def test_ablation_table_bold_best_and_delta(paper: pd.DataFrame, fmt: str) -> None:
    text = ablation_table(paper, format=fmt)
    bold = "**" if fmt == "md" else r"\textbf{"
    frame = ablation_frame(paper)
    lines = [line for line in text.splitlines() if "audio" in line]
    cells = [
        [c.strip() for c in ln.strip("| \\").split("|" if fmt == "md" else "&")] for ln in lines
    ]
    assert len(cells) == 16 and {len(row) for row in cells} == {3 + len(TABLE_METRICS) + 4}
    trained = ~frame["reference"]
    for j, metric in enumerate(TABLE_METRICS):
        best = frame.loc[trained, metric].round(1).agg("min" if "gap" in metric else "max")
        bold_cells = [row[3 + j] for row in cells if bold in row[3 + j]]
        assert bold_cells and all(f"{best:.1f}" in c for c in bold_cells), metric
    assert not any(bold in cell for row in cells if row[0].startswith("Zero") for cell in row)
    assert len([ln for ln in lines if ln.lstrip("| ").startswith("ERM")]) == 2
    ada = [ln for ln in lines if "p=1" in ln and ("Adaptive" in ln) and "audio+text" not in ln][0]
    row = frame[(frame["family"] == "adaptive-p1") & (frame["modality"] == "audio")].iloc[0]
    for m in ("wf1", "max_gap_wf1"):
        lo, hi = row[f"delta_{m}_lo"], row[f"delta_{m}_hi"]
        want = f"{row[f'delta_{m}']:+.1f} [{lo:+.1f}, {hi:+.1f}]"
        assert (want if fmt == "md" else want.replace("-", "$-$")) in ada
    best_gap = frame.loc[trained, "max_gap_wf1"].round(1).min()
    assert f"**{best_gap:.1f}" in ada or rf"\textbf{{{best_gap:.1f}" in ada
    if fmt == "md":
        header = text.splitlines()[0]
        assert "Δ W-F1 gap" in header and "| n |" in header and "λ" in text
        assert "paired t-test" in text
    else:
        assert r"$\Delta$" in text and r"\toprule" in text and "λ" not in text and "±" not in text
        assert text.count(r"\midrule") == 2


def test_ablation_cells_are_the_frame_formatted(paper: pd.DataFrame) -> None:
    frame = ablation_frame(paper)
    cells = ablation_cells(frame)
    assert len(cells) == len(frame) and cells.columns[:3].tolist() == ["Method", "Modality", "n"]
    r, c = frame.iloc[1], cells.iloc[1]
    assert c["W-F1 All"] == f"{r['wf1']:.1f} ± {r['wf1_pm']:.1f}"
    assert c["Δ W-F1"] == "–" and r["family"] == "erm"


def test_one_seed_rows_say_na_not_pm_zero(paper: pd.DataFrame) -> None:
    one = paper[paper["seed"] == 0]
    frame = ablation_frame(one)
    assert (frame["n"] == 1).all() and frame["wf1_pm"].isna().all()
    text = render_ablation(frame)
    assert "± 0.0" not in text and "n/a (1 seed)" in text
    ada = [ln for ln in text.splitlines() if ln.startswith("| Adaptive λ, p=1 | audio |")][0]
    assert "[n/a (1 seed)]" in ada and ada.rstrip(" |").endswith("n/a (1 seed)")


def test_zero_epoch_rows_never_compete(paper: pd.DataFrame) -> None:
    df = paper.copy()
    untrained = df["family"] == "zero-shot"
    # A 0-epoch model under another family name with the best gap of all: still a reference.
    df.loc[untrained, "family"] = "custom"
    df.loc[untrained, [f"test/max_gap_{m}" for m in GAP_KINDS]] = 0.0
    frame = ablation_frame(df)
    assert frame.loc[frame["family"] == "custom", "reference"].all()
    cells = ablation_cells(frame)
    custom = cells[frame["family"] == "custom"]
    assert not custom.apply(lambda col: col.str.contains(r"\*\*")).any().any()
    assert cells.loc[~frame["reference"], "Gap W-F1"].str.contains(r"\*\*").any()


def _write_predictions(run: Path, final: pd.DataFrame, bias: dict[str, float]) -> None:
    """Per-trial test predictions: ja/F is wrong with probability bias[family]."""
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 7, n)
    langs = np.repeat(np.array(LANGUAGES), n // 3)
    genders = np.tile(np.array(["F", "M"]), n // 2)
    pred_dir = run / "predictions"
    pred_dir.mkdir(exist_ok=True)
    for _, trial in final.iterrows():
        wrong = (langs == "ja") & (genders == "F") & (rng.random(n) < bias.get(trial["family"], 0))
        noise = rng.random(n) < 0.3
        pred = np.where(wrong | noise, (y + 1) % 7, y)
        np.savez(
            pred_dir / f"{trial['trial_id']}.npz",
            utt_id=np.arange(n).astype(str),
            y_true=y,
            y_pred=pred,
            languages=langs,
            genders=genders,
        )


def test_null_columns_from_predictions_and_logged_values(run_copy: Path) -> None:
    run = run_copy / "paper"
    df, _ = load_run(run)
    final = df[df["is_final"] & (df["family"].isin(["erm", "adaptive-p1"]))]
    _write_predictions(run, final, {"erm": 0.7})
    out = with_null_columns(df, "test", ["max_gap_wf1", "gap_acc/ja"], run_dir=run)
    trial = final.iloc[0]
    with np.load(run / "predictions" / f"{trial['trial_id']}.npz") as z:
        want = shuffled_null_gap(z["y_true"], z["y_pred"], z["languages"], z["genders"], "wf1")
    got = out.loc[out["trial_id"] == trial["trial_id"]].query("is_final").iloc[0]
    assert got["test/null_max_gap_wf1"] == pytest.approx(want["mean"])
    assert got["test/null_max_gap_wf1_p95"] == pytest.approx(want["p95"])
    assert got["test/null_gap_acc/ja"] > 0
    covered = out["trial_id"].isin(final["trial_id"]) & out["is_final"]
    assert out.loc[covered, "test/null_max_gap_wf1"].notna().all()
    assert out.loc[~covered, "test/null_max_gap_wf1"].isna().all()
    # A value the training loop logged is kept, not recomputed.
    logged = df.assign(**{"test/null_max_gap_wf1": 0.5})
    kept = with_null_columns(logged, "test", ["max_gap_wf1"], run_dir=run)
    assert (kept["test/null_max_gap_wf1"] == 0.5).all()
    assert with_null_columns(df, "dev", ["max_gap_wf1"], run)["dev/null_max_gap_wf1"].isna().all()

    frame = ablation_frame(df, run_dir=run)
    erm = frame[(frame["family"] == "erm") & (frame["modality"] == "audio")].iloc[0]
    seeds = out[covered & (out["family"] == "erm") & (out["modality"] == "audio")]
    assert erm["null_max_gap_wf1"] == pytest.approx(100 * seeds["test/null_max_gap_wf1"].mean())
    assert erm["null_max_gap_wf1_p95"] > erm["null_max_gap_wf1"] > 0
    line = [ln for ln in render_ablation(frame).splitlines() if ln.startswith("| ERM | audio |")][0]
    assert (
        f"{erm['max_gap_wf1']:.1f} ± {erm['max_gap_wf1_pm']:.1f} [{erm['null_max_gap_wf1']:.1f}]"
        in line
    )
    assert "gender-shuffled null" in render_ablation(frame, format="latex")


def test_pareto_frame_null_band(run_copy: Path) -> None:
    run = run_copy / "paper"
    df, _ = load_run(run)
    assert (pareto_frame(df)["kind"] != "null").all(), "no null without predictions or columns"
    final = df[df["is_final"] & (df["status"] == "TERMINATED")]
    _write_predictions(run, final, {"erm": 0.5})
    frame = pareto_frame(df, run_dir=run)
    nulls = frame[frame["kind"] == "null"]
    assert nulls["panel"].tolist() == list(MODALITIES)
    assert (nulls["gap_metric"] == "test/null_max_gap_wf1").all(), "dev falls back to test"
    with_null = with_null_columns(df, "test", ["max_gap_wf1"], run)
    trained = final_rows_of(with_null)
    for _, r in nulls.iterrows():
        sub = trained[trained["modality"] == r["panel"]]
        assert r["gap"] == pytest.approx(100 * sub["test/null_max_gap_wf1"].mean())
        assert r["gap_hi"] == pytest.approx(100 * sub["test/null_max_gap_wf1_p95"].mean())
        assert r["gap_lo"] == 0 and r["n"] == len(sub)
    fig = plot_pareto(frame)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "shuffled-gender null (test split)" in labels and _png(fig).startswith(b"\x89PNG")
    assert len(labels) == len(set(frame["family"]) - {""}) + 3, "null rows add no family"
    logged = df.assign(**{"dev/null_max_gap_wf1": 0.01, "dev/null_max_gap_wf1_p95": 0.02})
    own = pareto_frame(logged).query("kind == 'null'")
    np.testing.assert_allclose(own[["gap", "gap_hi"]].to_numpy(), [[1.0, 2.0]] * 2)
    fig = plot_pareto(pareto_frame(logged))
    assert "shuffled-gender null" in [t.get_text() for t in fig.legends[0].get_texts()]
    by_lang = pareto_frame(df, split="test", by_language=True, run_dir=run)
    assert by_lang.query("kind == 'null'")["gap_metric"].tolist() == [
        f"test/null_gap_wf1/{lang}" for lang in LANGUAGES
    ]


def final_rows_of(df: pd.DataFrame) -> pd.DataFrame:
    ok = df["is_final"] & (df["status"] == "TERMINATED") & (df["family"] != "zero-shot")
    return df[ok]


def test_write_reports(run_copy: Path) -> None:
    paths = write_reports(run_copy / "paper")
    assert set(paths) == {"pareto_pdf", "pareto_png", "ablation_md", "ablation_tex"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert paths["pareto_png"] == run_copy / "paper" / "figures" / "pareto.png"
    search = write_reports(run_copy / "search")
    assert search["hypervolume_png"].is_file() and search["hypervolume_pdf"].is_file()


def test_write_reports_reads_the_objectives_nested_in_config(run_copy: Path) -> None:
    """The sweep writes objectives as `metric:mode` strings under `config`; a top-level copy
    (as in the golden files) is not what the reader goes by."""
    run = run_copy / "paper"
    sweep = json.loads((run / "sweep.json").read_text())
    sweep.pop("objectives")
    sweep["config"] |= {"name": "nested", "objectives": ["dev/wf1:max", "dev/max_gap_avg:min"]}
    (run / "sweep.json").write_text(json.dumps(sweep))
    paths = write_reports(run)
    assert "Δ AVG gap" in paths["ablation_md"].read_text().splitlines()[0]
    (run / "sweep.json").unlink()
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
    run, other = run_copy / "paper", run_copy / "search"
    result = _cli(
        "pareto.py", str(run), "--max-gap", "3", "--by-language", "--hypervolume", str(other)
    )
    assert result.returncode == 0, result.stderr
    printed = [Path(line) for line in result.stdout.splitlines() if line.startswith("/")]
    assert len(printed) == 5 and all(p.is_file() for p in printed)
    assert (run / "figures" / "pareto_dev_max_gap_wf1_by_language.png") in printed
    assert "operating point: " in result.stdout and "adaptive-p1" in result.stdout


def test_tables_cli(run_copy: Path) -> None:
    run = run_copy / "paper"
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
