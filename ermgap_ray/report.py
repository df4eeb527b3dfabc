"""Paper figures and tables from `RUN_DIR/trials.parquet`: Pareto fronts, hypervolume, ablation.

Optuna's visualization habit: each figure has a pure `*_frame` function that returns exactly what
is drawn (tests compare it cell by cell) and a thin `plot_*` that only draws that frame and
returns the Figure. Fractions come in, percentage points go out (DESIGN.md: fractions in code,
percentages in tables and plots). Figures use `matplotlib.figure.Figure` directly, so importing
this module touches no global backend or pyplot state.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from ermgap_ray.data.schema import LANGUAGES, MODALITIES
from ermgap_ray.pareto import (
    OperatingPoint,
    aggregate_seeds,
    final_rows,
    hypervolume,
    metric_column,
    pareto_mask,
    seed_aware_pareto_mask,
    select_operating_point,
)

FAMILIES: tuple[str, ...] = (
    "zero-shot",
    "erm",
    "fixed-p1",
    "fixed-p2",
    "adaptive-p1",
    "adaptive-p2",
    "groupdro",
    "meangap",
    "search",
)
FAMILY_STYLE: dict[str, tuple[str, str]] = {
    "zero-shot": ("#7f7f7f", "X"),
    "erm": ("#000000", "o"),
    "fixed-p1": ("#1f77b4", "s"),
    "fixed-p2": ("#17becf", "D"),
    "adaptive-p1": ("#d62728", "^"),
    "adaptive-p2": ("#ff7f0e", "v"),
    "groupdro": ("#2ca02c", "P"),
    "meangap": ("#9467bd", "h"),
    "search": ("#8c564b", "o"),
}
FAMILY_LABELS: dict[str, str] = {
    "zero-shot": "Zero-shot",
    "erm": "ERM",
    "fixed-p1": "Fixed λ, p=1",
    "fixed-p2": "Fixed λ, p=2",
    "adaptive-p1": "Adaptive λ, p=1",
    "adaptive-p2": "Adaptive λ, p=2",
    "groupdro": "Group DRO",
    "meangap": "Mean-gap",
    "search": "Search",
}
METRIC_LABELS = {"wf1": "W-F1", "acc": "ACC", "tpr": "TPR", "fpr": "FPR", "avg": "AVG"}
GAP_KINDS: tuple[str, ...] = ("tpr", "fpr", "wf1", "acc", "avg")
_RC = {
    "font.size": 7.5,
    "axes.titlesize": 8,
    "axes.labelsize": 7.5,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.linewidth": 0.6,
}


def _style(family: str) -> tuple[str, str]:
    return FAMILY_STYLE.get(family, ("#bcbd22", "o"))


def _order(values: pd.Series, known: Sequence[str]) -> pd.Series:
    rank = {v: i for i, v in enumerate(known)}
    return values.map(lambda v: rank.get(v, len(rank)))


def load_run(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """trials.parquet (with `is_final` as bool) and sweep.json ({} when absent).

    Raises FileNotFoundError / ValueError with a one-line message for a missing or empty run.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory not found: {path}")
    trials = path / "trials.parquet"
    if not trials.is_file():
        raise FileNotFoundError(f"no trials.parquet in {path} (not a sweep results directory?)")
    with open(trials, "rb") as handle:  # one handle: see results.read_parquet_once
        df = pd.read_parquet(handle)
    if df.empty:
        raise ValueError(f"{trials} has no rows (no trial has reported yet)")
    df["is_final"] = df["is_final"].fillna(False).astype(bool)
    sweep_json = path / "sweep.json"
    sweep = json.loads(sweep_json.read_text()) if sweep_json.is_file() else {}
    return df, sweep


def pareto_frame(
    df: pd.DataFrame,
    split: str = "dev",
    gap: str = "max_gap_wf1",
    utility: str = "wf1",
    by_language: bool = False,
    ci: float = 0.95,
) -> pd.DataFrame:
    """What `plot_pareto` draws: one panel per modality (or per language with `by_language`).

    `kind="config"` rows are configurations (group_hash) with mean and t-CI over seeds, the
    means' Pareto flag `on_front` (max utility, min gap) and the CI-aware `ci_front`
    (pareto.seed_aware_pareto_mask); `kind="trial"` rows are single finished trials. By language
    the gap is `gap_<m>/<lang>` and the utility `<utility>/<lang>`. Values in percentage points.
    """
    rows = final_rows(df)
    if by_language:
        if not gap.startswith("max_gap_"):
            raise ValueError(f"by_language needs a max_gap_<m> metric, got {gap!r}")
        kind = gap.removeprefix("max_gap_")
        panels = [(lang, rows, f"gap_{kind}/{lang}", f"{utility}/{lang}") for lang in LANGUAGES]
    else:
        present = list(dict.fromkeys([*MODALITIES, *rows["modality"].dropna().unique()]))
        panels = [(m, rows[rows["modality"] == m], gap, utility) for m in present]
    parts = []
    for panel, sub, g, u in panels:
        g_col, u_col = metric_column(df, g, split), metric_column(df, u, split)
        if sub.empty:
            continue
        agg = aggregate_seeds(sub, [u_col, g_col], ci=ci)
        means = agg[[f"{u_col}_mean", f"{g_col}_mean"]].to_numpy(float)
        config = pd.DataFrame(
            {
                "panel": panel,
                "kind": "config",
                "group_hash": agg["group_hash"],
                "trial_id": "",
                "family": agg["family"],
                "modality": agg["modality"],
                "n": agg["n"],
                "utility": 100 * agg[f"{u_col}_mean"],
                # t-intervals are symmetric; W-F1 and gaps live in [0, 100] (points).
                "utility_lo": (100 * agg[f"{u_col}_lo"]).clip(0, 100),
                "utility_hi": (100 * agg[f"{u_col}_hi"]).clip(0, 100),
                "gap": 100 * agg[f"{g_col}_mean"],
                "gap_lo": (100 * agg[f"{g_col}_lo"]).clip(0, 100),
                "gap_hi": (100 * agg[f"{g_col}_hi"]).clip(0, 100),
                "on_front": pareto_mask(means, [True, False]),
                "ci_front": seed_aware_pareto_mask(agg, [u_col, g_col], [True, False]),
            }
        )
        trials = pd.DataFrame(
            {
                "panel": panel,
                "kind": "trial",
                "group_hash": sub["group_hash"],
                "trial_id": sub["trial_id"].astype(str),
                "family": sub["family"],
                "modality": sub["modality"],
                "n": 1,
                "utility": 100 * sub[u_col],
                "utility_lo": math.nan,
                "utility_hi": math.nan,
                "gap": 100 * sub[g_col],
                "gap_lo": math.nan,
                "gap_hi": math.nan,
                "on_front": False,
                "ci_front": False,
            }
        )
        parts += [
            config.assign(utility_metric=u_col, gap_metric=g_col),
            trials.assign(utility_metric=u_col, gap_metric=g_col),
        ]
    if not parts:
        raise ValueError("no finished trials to plot (no TERMINATED final rows)")
    frame = pd.concat(parts, ignore_index=True)
    keys = frame.assign(
        _p=_order(frame["panel"], [*MODALITIES, *LANGUAGES]),
        _k=(frame["kind"] == "trial").astype(int),
        _f=_order(frame["family"], FAMILIES),
    )
    order = keys.sort_values(["_p", "_k", "_f", "modality", "group_hash", "trial_id"]).index
    return frame.loc[order].reset_index(drop=True)


def _axis_label(column: str, unit: str) -> str:
    split, _, name = column.partition("/")
    lang = ""
    if "/" in name:
        name, lang = name.split("/")
        lang = f", {lang.upper()}"
    if "gap_" in name:
        kind = name.rsplit("gap_", 1)[1]
        where = "worst-language " if name.startswith("max_gap_") else ""
        return f"{split} {where}gender gap, {METRIC_LABELS.get(kind, kind)}{lang} ({unit})"
    return f"{split} {METRIC_LABELS.get(name, name)}{lang} ({unit})"


def _draw_panel(ax: Any, sub: pd.DataFrame, operating_point: OperatingPoint | None) -> None:
    trials, configs = sub[sub["kind"] == "trial"], sub[sub["kind"] == "config"]
    for family, t in trials.groupby("family", sort=False):
        color, marker = _style(family)
        ax.scatter(
            t["gap"],
            t["utility"],
            s=7,
            color=color,
            marker=marker,
            alpha=0.22,
            linewidths=0,
            zorder=1,
        )
    front = configs[configs["on_front"]].sort_values(["gap", "utility"])
    if len(front):
        ax.step(
            front["gap"], front["utility"], where="post", color="0.35", lw=0.8, ls="--", zorder=2
        )
    for _, r in configs.iterrows():
        color, marker = _style(r["family"])
        ax.errorbar(
            r["gap"],
            r["utility"],
            xerr=[[r["gap"] - r["gap_lo"]], [r["gap_hi"] - r["gap"]]],
            yerr=[[r["utility"] - r["utility_lo"]], [r["utility_hi"] - r["utility"]]],
            fmt=marker,
            ms=4,
            color=color,
            mfc=color if r["modality"] == MODALITIES[0] else "white",
            mew=0.8,
            elinewidth=0.6,
            capsize=1.2,
            zorder=3,
        )
    if operating_point is None or not operating_point.feasible:
        return
    chosen = configs[configs["group_hash"] == operating_point.group_hash]
    for _, r in chosen.iterrows():
        ax.scatter(
            r["gap"],
            r["utility"],
            marker="*",
            s=110,
            color="gold",
            edgecolors="black",
            linewidths=0.6,
            zorder=5,
        )
        left = r["gap"] <= np.nanmean(ax.get_xlim())
        ax.annotate(
            f"operating point\n{r['utility']:.1f} / {r['gap']:.1f}",
            (r["gap"], r["utility"]),
            xytext=(14 if left else -14, -20),
            textcoords="offset points",
            ha="left" if left else "right",
            fontsize=6.5,
            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.3"},
            zorder=6,
        )


def plot_pareto(
    frame: pd.DataFrame,
    operating_point: OperatingPoint | None = None,
    title: str | None = None,
    panel_size: tuple[float, float] = (3.4, 2.5),
) -> Figure:
    """Utility (y) vs worst-language gap (x) per panel: faint trials, configuration means with
    CI whiskers on both axes, the means' front as a step line, the operating point as a star.

    Hollow markers are audio+text. The legend sits below the panels so it never covers data.
    """
    panels = list(dict.fromkeys(frame["panel"]))
    families = [f for f in FAMILIES if f in set(frame["family"])]
    families += sorted(set(frame["family"]) - set(families))
    with matplotlib.rc_context(_RC):
        ncol = 3 if len(panels) == 1 else min(6, 3 * len(panels))
        rows_legend = math.ceil((len(families) + 3) / ncol)
        size = (panel_size[0] * len(panels), panel_size[1] + 0.16 * rows_legend + 0.2)
        fig = Figure(figsize=size, layout="constrained")
        axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
        for ax, panel in zip(axes, panels, strict=True):
            sub = frame[frame["panel"] == panel]
            _draw_panel(ax, sub, operating_point)
            ax.set_title(panel.upper() if panel in LANGUAGES else panel)
            ax.set_xlabel(_axis_label(sub["gap_metric"].iloc[0], "pp"))
            ax.grid(True, lw=0.3, alpha=0.5)
            if ax is axes[0]:
                ax.set_ylabel(_axis_label(sub["utility_metric"].iloc[0], "%"))
        handles = [
            Line2D(
                [],
                [],
                ls="",
                marker=_style(f)[1],
                color=_style(f)[0],
                ms=4,
                label=FAMILY_LABELS.get(f, f),
            )
            for f in families
        ]
        handles += [
            Line2D([], [], color="0.35", lw=0.8, ls="--", label="Pareto front"),
            Line2D([], [], ls="", marker="o", color="0.5", alpha=0.3, ms=3, label="single trial"),
        ]
        if operating_point is not None and operating_point.feasible:
            handles.append(
                Line2D(
                    [],
                    [],
                    ls="",
                    marker="*",
                    color="gold",
                    mec="black",
                    ms=7,
                    label="operating point",
                )
            )
        if frame.groupby("panel")["modality"].nunique().max() > 1:
            handles.append(
                Line2D(
                    [],
                    [],
                    ls="",
                    marker="o",
                    color="0.2",
                    mfc="white",
                    ms=4,
                    label="hollow: audio+text",
                )
            )
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncol=ncol,
            frameon=False,
            handletextpad=0.3,
            columnspacing=0.9,
        )
        _zoom_past_zero_shot(axes, panels, frame)
        if title:
            fig.suptitle(title)
    return fig


def _zoom_past_zero_shot(axes: Sequence[Any], panels: Sequence[str], frame: pd.DataFrame) -> None:
    """The untrained backbone sits far below every trained model; scaling the shared y-axis to
    the trained ones keeps their trade-off readable, and off-scale zero-shot means are named in
    the empty lower-right (high gap, low utility) corner instead."""
    trained = frame[frame["family"] != "zero-shot"]
    zero = frame[(frame["family"] == "zero-shot") & (frame["kind"] == "config")]
    if trained.empty or zero.empty:
        return
    lo = np.nanmin(np.r_[trained["utility_lo"], trained["utility"]])
    hi = np.nanmax(np.r_[trained["utility_hi"], trained["utility"]])
    pad = 0.08 * (hi - lo) or 1.0
    if (zero["utility"] >= lo - pad).all():
        return
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_ylim(lo - pad, hi + pad)
        off = zero[(zero["panel"] == panel) & (zero["utility"] < lo - pad)]
        if len(off):
            values = "; ".join(f"{r.utility:.1f} / {r.gap:.1f}" for r in off.itertuples())
            ax.text(
                0.98,
                0.03,
                f"zero-shot, off scale:\n{values}",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=6.5,
                color="0.3",
            )


def save_figure(fig: Figure, path_stem: str | Path) -> list[Path]:
    """Write `<stem>.pdf` (vector, for the paper) and `<stem>.png` (300 dpi, for reading)."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(f"{stem}.pdf"), Path(f"{stem}.png")]
    for path in paths:
        fig.savefig(path, dpi=300)
    return paths


def hypervolume_over_trials(
    df: pd.DataFrame,
    objectives: Sequence[Sequence[str]] = (("dev/wf1", "max"), ("dev/max_gap_wf1", "min")),
    ref: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Hypervolume of the front of the first n trials (by `trial_index`), n = 1..N.

    Each trial counts with its last reported row, which is what Optuna sees; errored trials add
    nothing. `ref` defaults to the worst fraction per objective (0 for max, 1 for min).
    """
    cols = [c for c, _ in objectives]
    maximize = [d == "max" for _, d in objectives]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"unknown objective column(s) {', '.join(missing)} in trials")
    ref = list(ref) if ref is not None else [0.0 if m else 1.0 for m in maximize]
    last = df.sort_values(["trial_index", "epoch"]).groupby("trial_id", sort=False).tail(1)
    last = last.sort_values("trial_index")
    points = last[cols].to_numpy(float, copy=True)
    if "status" in last.columns:
        points[(last["status"] == "ERROR").to_numpy()] = math.nan
    front = np.empty((0, len(cols)))
    volumes = []
    for p in points:
        if not np.isnan(p).any():
            front = np.vstack([front, p])
            front = front[pareto_mask(front, maximize)]
        volumes.append(hypervolume(front, ref, maximize))
    return pd.DataFrame(
        {
            "n_trials": np.arange(1, len(last) + 1),
            "trial_index": last["trial_index"].to_numpy(),
            "trial_id": last["trial_id"].astype(str).to_numpy(),
            "hypervolume": volumes,
        }
    )


def plot_hypervolume(
    frames: Mapping[str, pd.DataFrame], size: tuple[float, float] = (3.4, 2.4)
) -> Figure:
    """Hypervolume vs number of trials, one step line per run (e.g. per sampler)."""
    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=size, layout="constrained")
        ax = fig.subplots()
        for label, frame in frames.items():
            ax.step(frame["n_trials"], frame["hypervolume"], where="post", lw=1.0, label=label)
        ax.set_xlabel("number of trials")
        ax.set_ylabel("dominated hypervolume")
        ax.grid(True, lw=0.3, alpha=0.5)
        ax.legend(loc="lower right", frameon=False)
    return fig


TABLE_METRICS: tuple[str, ...] = (
    *(f"wf1/{lang}" for lang in LANGUAGES),
    "wf1",
    *(f"acc/{lang}" for lang in LANGUAGES),
    "acc",
    *(f"max_gap_{m}" for m in GAP_KINDS),
)
_KNOBS = (
    "p",
    "lambda_mode",
    "lam",
    "eta",
    "epsilon",
    "lam_max",
    "dev_gap_metric",
    "groupdro_eta",
    "lr",
    "lora_r",
    "epochs",
)


def _variants(rows: pd.DataFrame) -> dict[str, str]:
    """Label each configuration by the knobs that differ within its family x modality."""
    labels: dict[str, str] = {}
    for _, sub in rows.groupby(["family", "modality"]):
        firsts = sub.groupby("group_hash").first()
        knobs = [k for k in _KNOBS if k in firsts.columns and firsts[k].nunique(dropna=False) > 1]
        for gh, r in firsts.iterrows():
            labels[gh] = ", ".join(
                f"{k}={r[k]:g}" if isinstance(r[k], float) else f"{k}={r[k]}" for k in knobs
            )
    return labels


def _load_predictions(row: pd.Series, run_dir: Path | None) -> dict[str, np.ndarray] | None:
    candidates = []
    if isinstance(row.get("predictions_path"), str):
        path = Path(row["predictions_path"])
        candidates.append(path if path.is_absolute() or run_dir is None else run_dir / path)
    if run_dir is not None:
        candidates.append(run_dir / "predictions" / f"{row['trial_id']}.npz")
    for path in candidates:
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in ("y_true", "y_pred", "languages", "genders")}
    return None


def welch_less(a: Any, b: Any) -> float:
    """One-sided Welch t-test p-value for mean(a) < mean(b), over seeds.

    t = (ā − b̄) / sqrt(s_a²/n_a + s_b²/n_b) with Welch–Satterthwaite degrees of freedom. Written
    out so identical seeds (zero-shot: zero variance) need no special casing; NaN when either
    side has fewer than two values or both have zero variance.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if min(len(a), len(b)) < 2:
        return math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return math.nan
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(stats.t.cdf(t, dof))


def _paired_p(method: pd.DataFrame, erm: pd.DataFrame, gap: str, run_dir: Path | None) -> float:
    """Largest one-sided paired-bootstrap p over seed-matched (ERM, method) pairs, or NaN when
    any pair lacks predictions. The maximum is the intersection-union test: every seed pair
    must show the reduction on the same test utterances.
    """
    pairs = []
    for seed, b_row in method.set_index("seed").iterrows():
        a_rows = erm[erm["seed"] == seed]
        a = _load_predictions(a_rows.iloc[0], run_dir) if len(a_rows) else None
        b = _load_predictions(b_row, run_dir) if a is not None else None
        if a is None or b is None or not np.array_equal(a["y_true"], b["y_true"]):
            return math.nan
        pairs.append((a, b))
    if not pairs:
        return math.nan
    from ermgap_ray.metrics import paired_bootstrap_gap_test

    return max(
        float(
            paired_bootstrap_gap_test(
                a["y_true"], a["y_pred"], b["y_pred"], a["languages"], a["genders"], metric=gap
            )["p_value"]
        )
        for a, b in pairs
    )


def ablation_frame(
    df: pd.DataFrame,
    split: str = "test",
    gap: str = "max_gap_wf1",
    ci: float = 0.95,
    run_dir: str | Path | None = None,
) -> pd.DataFrame:
    """The ablation table's numbers: one row per configuration, ordered modality x family.

    Per metric `<m>` (mean, pp) and `<m>_pm` (t-CI half-width over seeds, pp). `delta` is
    ERM's mean `gap` minus the row's, in points (positive = smaller gap than ERM of the same
    modality); `p_value` is one-sided for "the row's gap is smaller". With per-trial predictions
    (`predictions_path` column or `RUN_DIR/predictions/<trial_id>.npz`) it is the paired
    bootstrap (metrics.paired_bootstrap_gap_test) over seed-matched pairs; otherwise Welch's t
    over seeds. `test` names which one was used.
    """
    rows = final_rows(df)
    if rows.empty:
        raise ValueError("no finished trials for the ablation table (no TERMINATED final rows)")
    cols = [metric_column(df, m, split) for m in TABLE_METRICS]
    gap_col = metric_column(df, gap, split)
    agg = aggregate_seeds(rows, cols, ci=ci)
    variants = _variants(rows)
    out = pd.DataFrame(
        {
            "family": agg["family"],
            "modality": agg["modality"],
            "variant": agg["group_hash"].map(variants),
            "group_hash": agg["group_hash"],
            "n": agg["n"],
        }
    )
    for name, col in zip(TABLE_METRICS, cols, strict=True):
        out[name] = 100 * agg[f"{col}_mean"]
        out[f"{name}_pm"] = 100 * (agg[f"{col}_hi"] - agg[f"{col}_lo"]) / 2
    run_path = Path(run_dir) if run_dir is not None else None
    tested: list[tuple[float, float, str]] = []
    for _, r in out.iterrows():
        erm_groups = out[(out["family"] == "erm") & (out["modality"] == r["modality"])]
        if r["family"] == "erm" or erm_groups.empty:
            tested.append((math.nan, math.nan, ""))
            continue
        erm = rows[rows["group_hash"] == erm_groups["group_hash"].iloc[0]]
        method = rows[rows["group_hash"] == r["group_hash"]]
        delta = 100 * (erm[gap_col].mean() - method[gap_col].mean())
        p = _paired_p(method, erm, gap, run_path)
        if math.isnan(p):
            tested.append(
                (delta, welch_less(method[gap_col].dropna(), erm[gap_col].dropna()), "welch")
            )
        else:
            tested.append((delta, p, "paired-bootstrap"))
    delta, p_value, test = zip(*tested, strict=True) if tested else ((), (), ())
    out["delta"], out["p_value"], out["test"] = list(delta), list(p_value), list(test)
    keys = out.assign(_m=_order(out["modality"], MODALITIES), _f=_order(out["family"], FAMILIES))
    return out.loc[keys.sort_values(["_m", "_f", "variant", "group_hash"]).index].reset_index(
        drop=True
    )


def _cell(mean: float, pm: float, bold: bool, fmt: str) -> str:
    if math.isnan(mean):
        return "–"
    text = f"{mean:.1f} ± {pm:.1f}" if fmt == "md" else rf"{mean:.1f}\,$\pm$\,{pm:.1f}"
    if not bold:
        return text
    return f"**{text}**" if fmt == "md" else rf"\textbf{{{text}}}"


def _p_text(p: float, test: str) -> str:
    if math.isnan(p):
        return "–"
    return ("<0.001" if p < 0.001 else f"{p:.3f}") + ("†" if test == "paired-bootstrap" else "")


_LATEX = (
    ("\\", r"\textbackslash{}"),
    ("_", r"\_"),
    ("%", r"\%"),
    ("&", r"\&"),
    ("#", r"\#"),
    ("λ", r"$\lambda$"),
    ("±", r"$\pm$"),
    ("Δ", r"$\Delta$"),
    ("†", r"$^\dagger$"),
    ("<", r"$<$"),
    ("–", "--"),
)


def _latex_escape(text: str) -> str:
    for a, b in _LATEX:
        text = text.replace(a, b)
    return text


def _md_table(body: list[tuple[str, str, list[str], str, str]], gap_name: str) -> list[str]:
    langs = [lang.upper() for lang in LANGUAGES]
    head = ["Method", "Modality", *(f"W-F1 {x}" for x in (*langs, "All"))]
    head += [
        *(f"ACC {x}" for x in (*langs, "All")),
        *(f"Gap {METRIC_LABELS[m]}" for m in GAP_KINDS),
    ]
    head += [f"Δ {gap_name} gap", "p"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    lines += [
        f"| {label} | {mod} | " + " | ".join([*cells, delta, p]) + " |"
        for mod, label, cells, delta, p in body
    ]
    return lines


def _latex_table(body: list[tuple[str, str, list[str], str, str]], note: str) -> list[str]:
    langs = [lang.upper() for lang in LANGUAGES]
    lines = [
        r"% requires \usepackage{booktabs}",
        r"\begin{table*}[t]",
        r"\centering",
        r"\scriptsize",
        r"\setlength{\tabcolsep}{2.5pt}",
        r"\begin{tabular}{ll" + "c" * (len(TABLE_METRICS) + 2) + "}",
        r"\toprule",
        r" & & \multicolumn{4}{c}{W-F1 (\%)} & \multicolumn{4}{c}{ACC (\%)} & "
        r"\multicolumn{5}{c}{Max gender gap (pp)} & & \\",
        r"\cmidrule(lr){3-6}\cmidrule(lr){7-10}\cmidrule(lr){11-15}",
        "Method & Mod. & "
        + " & ".join([*langs, "All", *langs, "All"])
        + " & "
        + " & ".join(METRIC_LABELS[m] for m in GAP_KINDS)
        + r" & $\Delta$ & $p$ \\",
        r"\midrule",
    ]
    previous = None
    for mod, label, cells, delta, p in body:
        if previous is not None and mod != previous:
            lines.append(r"\midrule")
        previous = mod
        delta = "--" if delta == "–" else delta.replace("-", "$-$")
        row = [_latex_escape(label), _latex_escape(mod), *cells, delta, _latex_escape(p)]
        lines.append(" & ".join(row) + r" \\")
    lines += [
        r"\bottomrule",
        r"\end{tabular}",
        r"\caption{Ablation. " + _latex_escape(note) + "}",
        r"\label{tab:ablation}",
        r"\end{table*}",
    ]
    return lines


def render_ablation(
    frame: pd.DataFrame,
    format: str = "md",
    split: str = "test",
    gap: str = "max_gap_wf1",
    ci: float = 0.95,
) -> str:
    """Markdown or LaTeX (booktabs) text of an `ablation_frame`; best per column in bold.

    Best = highest mean for W-F1/ACC, lowest for gaps, compared as printed (one decimal), so
    ties are all bold. Zero-shot does not compete: a near-chance model has near-zero gaps, and a
    bold "best gap" for it would be read as a result.
    """
    if format not in ("md", "latex"):
        raise ValueError(f"format must be 'md' or 'latex', got {format!r}")
    shown = frame[list(TABLE_METRICS)].round(1)
    rivals = shown[frame["family"] != "zero-shot"]
    best = {m: rivals[m].min() if m.startswith("max_gap_") else rivals[m].max() for m in shown}
    body = []
    for i, r in frame.iterrows():
        label = FAMILY_LABELS.get(r["family"], r["family"])
        if isinstance(r["variant"], str) and r["variant"]:
            label += f" ({r['variant']})"
        rival = r["family"] != "zero-shot"
        cells = [
            _cell(r[m], r[f"{m}_pm"], rival and shown.at[i, m] == best[m], format) for m in shown
        ]
        delta = "–" if math.isnan(r["delta"]) else f"{r['delta']:+.1f}"
        body.append((r["modality"], label, cells, delta, _p_text(r["p_value"], r["test"])))
    gap_name = METRIC_LABELS.get(gap.removeprefix("max_gap_"), gap)
    note = (
        f"{split} split; mean ± {ci:.0%} t-CI half-width over seeds, in points. Bold: best per "
        f"column among trained methods (max W-F1/ACC, min gap); gaps are the max over "
        f"languages. Δ: ERM's {gap_name} "
        "gap minus the method's (same modality; positive = smaller gap); p: one-sided Welch "
        "t-test over seeds, † = paired bootstrap over seed-matched test predictions."
    )
    if format == "md":
        return "\n".join(_md_table(body, gap_name)) + f"\n\n{note}\n"
    return "\n".join(_latex_table(body, note)) + "\n"


def ablation_table(
    df: pd.DataFrame,
    split: str = "test",
    format: str = "md",
    gap: str = "max_gap_wf1",
    ci: float = 0.95,
    run_dir: str | Path | None = None,
) -> str:
    """The paper's ablation table (rows family x modality) as Markdown or LaTeX text."""
    frame = ablation_frame(df, split=split, gap=gap, ci=ci, run_dir=run_dir)
    return render_ablation(frame, format=format, split=split, gap=gap, ci=ci)


def _sweep_objectives(sweep: Mapping[str, Any]) -> list[tuple[str, str]]:
    objectives = sweep.get("objectives") or [["dev/wf1", "max"], ["dev/max_gap_wf1", "min"]]
    return [(str(c), str(d)) for c, d in objectives]


def write_reports(run_dir: str | Path, constraint: str = "max_gap_wf1<=0.02") -> dict[str, Path]:
    """Figures and tables of a finished sweep; the sweep calls this at the end.

    figures/pareto.{pdf,png} (dev, operating point under `constraint` starred when feasible),
    tables/ablation.{md,tex} (test split) and, when the run has `search` trials,
    figures/hypervolume.{pdf,png} over its objectives from sweep.json.
    """
    run = Path(run_dir)
    df, sweep = load_run(run)
    objectives = _sweep_objectives(sweep)
    (u_col, u_dir), (g_col, g_dir) = (objectives + [("", "")] * 2)[:2]
    utility, gap = "wf1", "max_gap_wf1"
    if u_dir == "max" and g_dir == "min" and u_col.startswith("dev/") and g_col.startswith("dev/"):
        utility, gap = u_col.removeprefix("dev/"), g_col.removeprefix("dev/")
    out: dict[str, Path] = {}
    op = select_operating_point(df, constraint=constraint, objective=utility)
    fig = plot_pareto(pareto_frame(df, split="dev", gap=gap, utility=utility), operating_point=op)
    out["pareto_pdf"], out["pareto_png"] = save_figure(fig, run / "figures" / "pareto")
    tables = run / "tables"
    tables.mkdir(parents=True, exist_ok=True)
    frame = ablation_frame(df, split="test", gap=gap, run_dir=run)
    for key, fmt, suffix in (("ablation_md", "md", "md"), ("ablation_tex", "latex", "tex")):
        path = tables / f"ablation.{suffix}"
        path.write_text(render_ablation(frame, format=fmt, split="test", gap=gap))
        out[key] = path
    if (df["family"] == "search").any():
        hv = hypervolume_over_trials(df[df["family"] == "search"], objectives)
        fig = plot_hypervolume({sweep.get("name", run.name): hv})
        out["hypervolume_pdf"], out["hypervolume_png"] = save_figure(
            fig, run / "figures" / "hypervolume"
        )
    return out
