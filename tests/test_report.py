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
from ermgap_ray.pareto import hypervolume, select_operating_point
from ermgap_ray.report import (
    GAP_KINDS,
    TABLE_METRICS,
    ablation_frame,
    ablation_table,
    hypervolume_over_trials,
    load_run,
    pareto_frame,
    plot_hypervolume,
    plot_pareto,
    render_ablation,
    welch_less,
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
    assert sweep == expected_sweep
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
    hv = hypervolume_over_trials(df, sweep["objectives"])
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
    gap_e, gap_a = erm["test/max_gap_wf1"], ada["test/max_gap_wf1"]
    assert row["delta"] == pytest.approx(100 * (gap_e.mean() - gap_a.mean()))
    welch = stats.ttest_ind(gap_a, gap_e, equal_var=False, alternative="less").pvalue
    assert row["p_value"] == pytest.approx(welch) and row["test"] == "welch"
    erm_row = frame[(frame["family"] == "erm")].iloc[0]
    assert math.isnan(erm_row["delta"]) and erm_row["test"] == ""


def test_welch_less_handles_identical_seeds() -> None:
    assert welch_less([1.0, 1.0, 1.0], [2.0, 2.0, 2.0]) != welch_less([1.0, 1.0], [1.0, 1.0])
    assert math.isnan(welch_less([1.0], [2.0, 3.0]))
    p = welch_less([0.1, 0.1, 0.1], [0.5, 0.6, 0.7])
    assert p == pytest.approx(
        stats.ttest_ind(
            [0.1001, 0.1, 0.0999], [0.5, 0.6, 0.7], equal_var=False, alternative="less"
        ).pvalue,
        abs=1e-3,
    )


@pytest.mark.parametrize("fmt", ["md", "latex"])
def test_ablation_table_bold_best_and_delta(paper: pd.DataFrame, fmt: str) -> None:
    text = ablation_table(paper, format=fmt)
    bold = "**" if fmt == "md" else r"\textbf{"
    frame = ablation_frame(paper)
    lines = [line for line in text.splitlines() if "audio" in line]
    cells = [
        [c.strip() for c in ln.strip("| \\").split("|" if fmt == "md" else "&")] for ln in lines
    ]
    assert len(cells) == 16 and {len(row) for row in cells} == {2 + len(TABLE_METRICS) + 2}
    trained = frame["family"] != "zero-shot"
    for j, metric in enumerate(TABLE_METRICS):
        best = frame.loc[trained, metric].round(1).agg("min" if "gap" in metric else "max")
        bold_cells = [row[2 + j] for row in cells if bold in row[2 + j]]
        assert bold_cells and all(f"{best:.1f}" in c for c in bold_cells), metric
    assert not any(bold in cell for row in cells if row[0].startswith("Zero") for cell in row)
    assert len([ln for ln in lines if ln.lstrip("| ").startswith("ERM")]) == 2
    ada = [ln for ln in lines if "p=1" in ln and ("Adaptive" in ln) and "audio+text" not in ln][0]
    delta = frame[(frame["family"] == "adaptive-p1") & (frame["modality"] == "audio")]["delta"]
    assert f"+{delta.iloc[0]:.1f}" in ada
    best_gap = frame.loc[trained, "max_gap_wf1"].round(1).min()
    assert f"{best_gap:.1f}" in ada and (
        f"**{best_gap:.1f}" in ada or rf"\textbf{{{best_gap:.1f}" in ada
    )
    if fmt == "md":
        assert "Δ W-F1 gap" in text.splitlines()[0]
        assert "λ" in text
    else:
        assert r"$\Delta$" in text and r"\toprule" in text and "λ" not in text and "±" not in text
        assert text.count(r"\midrule") == 2


def test_ablation_uses_paired_bootstrap_when_predictions_exist(run_copy: Path) -> None:
    df, _ = load_run(run_copy / "paper")
    final = df[df["is_final"] & (df["modality"] == "audio")]
    rng = np.random.default_rng(0)
    n = 600
    y = rng.integers(0, 7, n)
    langs = np.repeat(np.array(LANGUAGES), n // 3)
    genders = np.tile(np.array(["F", "M"]), n // 2)
    biased = (langs == "ja") & (genders == "F")
    pred_dir = run_copy / "paper" / "predictions"
    pred_dir.mkdir()
    for family, noise in (("erm", 0.7), ("adaptive-p1", 0.0)):
        for _, trial in final[final["family"] == family].iterrows():
            wrong = biased & (rng.random(n) < noise)
            pred = np.where(wrong, (y + 1) % 7, y)
            np.savez(
                pred_dir / f"{trial['trial_id']}.npz",
                y_true=y,
                y_pred=pred,
                languages=langs,
                genders=genders,
            )
    frame = ablation_frame(df, run_dir=run_copy / "paper")
    row = frame[(frame["family"] == "adaptive-p1") & (frame["modality"] == "audio")].iloc[0]
    assert row["test"] == "paired-bootstrap" and row["p_value"] < 0.01
    others = frame[(frame["family"] == "fixed-p1")]
    assert (others["test"] == "welch").all()
    assert "†" in render_ablation(frame)


def test_write_reports(run_copy: Path) -> None:
    paths = write_reports(run_copy / "paper")
    assert set(paths) == {"pareto_pdf", "pareto_png", "ablation_md", "ablation_tex"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert paths["pareto_png"] == run_copy / "paper" / "figures" / "pareto.png"
    search = write_reports(run_copy / "search")
    assert search["hypervolume_png"].is_file() and search["hypervolume_pdf"].is_file()


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
