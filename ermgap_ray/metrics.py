"""SER metrics, gender gaps and stratified bootstrap CIs (numpy; definitions from DESIGN.md).

Everything is derived from confusion matrices C[l, g, y, ŷ] per (language, gender) cell. The
functions on C accept any leading batch axes, so a bootstrap is one vectorised pass over resampled
confusion matrices instead of a loop over resamples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ermgap_ray.data.schema import EMOTIONS, GENDERS, LANGUAGES
from ermgap_ray.registry import GAP_KINDS


def _encode(values: Any, vocab: Sequence[Any], what: str) -> np.ndarray:
    """Indices of `values` in `vocab`; unknown values are an error that names them."""
    uniq, inverse = np.unique(np.asarray(values), return_inverse=True)
    index = {v: i for i, v in enumerate(vocab)}
    unknown = [u for u in uniq.tolist() if u not in index]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; expected one of {list(vocab)}")
    return np.array([index[u] for u in uniq.tolist()], dtype=np.int64)[inverse.ravel()]


def _cells(
    y_true: Any, preds: Sequence[Any], languages: Any, genders: Any, labels: Any
) -> tuple[list[str], int, np.ndarray, list[np.ndarray]]:
    """Language order (LANGUAGES first), K, cell id l·2 + g per sample, encoded label arrays."""
    y_true = np.asarray(y_true)
    if labels is None:
        labels = range(len(EMOTIONS)) if y_true.dtype.kind in "iu" else EMOTIONS
    labels = list(labels)
    present = np.unique(np.asarray(languages)).tolist()
    langs = [lang for lang in LANGUAGES if lang in present]
    langs += sorted(set(present) - set(LANGUAGES))
    g = np.asarray(genders)
    g_vocab = range(len(GENDERS)) if g.dtype.kind in "iu" else GENDERS
    cell = _encode(languages, langs, "languages") * len(GENDERS) + _encode(g, g_vocab, "genders")
    encoded = [_encode(y, labels, "labels") for y in (y_true, *preds)]
    if any(len(e) != len(cell) for e in encoded):
        raise ValueError("y_true, predictions, languages and genders must have the same length")
    return langs, len(labels), cell, encoded


def confusion_cells(
    y_true: Any, y_pred: Any, languages: Any, genders: Any, labels: Any = None
) -> tuple[list[str], np.ndarray]:
    """Languages present and C with shape (L, 2, K, K), C[l, g, y, ŷ] = count, via one bincount."""
    langs, k, cell, (t, p) = _cells(y_true, [y_pred], languages, genders, labels)
    n_cells = len(langs) * len(GENDERS)
    counts = np.bincount((cell * k + t) * k + p, minlength=n_cells * k * k)
    return langs, counts.reshape(len(langs), len(GENDERS), k, k)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _scores(c: np.ndarray) -> dict[str, np.ndarray]:
    """ACC, W-F1, TPR_c, FPR_c and class supports from C (..., K, K); NaN where undefined.

    ACC = Σ_c tp_c / n.  W-F1 = Σ_c s_c·F1_c / n with F1_c = 2tp_c / (2tp_c + fp_c + fn_c)
    = 2tp_c / (s_c + ŝ_c) (s = true support, ŝ = predicted count), which is sklearn's weighted F1:
    a class with s_c = 0 has weight 0, and s_c > 0 makes F1_c defined.
    TPR_c = tp_c / s_c (needs s_c > 0).  FPR_c = P(ŷ = c | y ≠ c) = (ŝ_c − tp_c) / (n − s_c).
    """
    c = c.astype(np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    support, predicted = c.sum(-1), c.sum(-2)
    n = support.sum(-1)
    f1 = np.where(support > 0, 2 * tp / np.maximum(support + predicted, 1), 0.0)
    negatives = n[..., None] - support
    return {
        "acc": _safe_div(tp.sum(-1), n),
        "wf1": _safe_div((support * f1).sum(-1), n),
        "tpr": _safe_div(tp, support),
        "fpr": _safe_div(predicted - tp, negatives),
        "pos": support,
        "neg": negatives,
    }


def _gaps(c: np.ndarray) -> dict[str, np.ndarray]:
    """Gender gaps from C (..., 2, K, K) with axis −3 = (F, M).

    gap_tpr = mean over c with positives in both genders of |TPR_{c,F} − TPR_{c,M}|;
    gap_fpr = the same with FPR over c present (positives) and with negatives in both genders,
    so classes absent from the data cannot dilute it (DESIGN.md); gap_wf1 = |W-F1_F − W-F1_M|;
    gap_acc = |ACC_F − ACC_M|; gap_avg = mean of the four. Undefined (no valid class, or a gender
    absent) gives NaN, and gap_avg is NaN when any of the four is.
    """
    f, m = _scores(c[..., 0, :, :]), _scores(c[..., 1, :, :])
    out = {}
    present = (f["pos"] > 0) & (m["pos"] > 0)
    for rate, count in (("tpr", "pos"), ("fpr", "neg")):
        ok = present & (f[count] > 0) & (m[count] > 0)
        diff = np.where(ok, np.abs(np.nan_to_num(f[rate] - m[rate])), 0.0)
        out[rate] = _safe_div(diff.sum(-1), ok.sum(-1))
    out["wf1"] = np.abs(f["wf1"] - m["wf1"])
    out["acc"] = np.abs(f["acc"] - m["acc"])
    out["avg"] = (out["tpr"] + out["fpr"] + out["wf1"] + out["acc"]) / 4
    return out


def report_from_confusion(c: np.ndarray, langs: Sequence[str]) -> dict[str, np.ndarray]:
    """Every DESIGN.md flat metric from C (..., L, 2, K, K); values keep the leading axes.

    max_gap_<m> = max over languages of gap_<m>/<lang>, ignoring NaN languages (NaN if all are).
    """
    overall = _scores(c.sum(axis=(-4, -3)))
    per_lang = _scores(c.sum(axis=-3))
    lang_gaps, all_gaps = _gaps(c), _gaps(c.sum(axis=-4))
    out = {"wf1": overall["wf1"], "acc": overall["acc"]}
    for i, lang in enumerate(langs):
        out[f"wf1/{lang}"] = per_lang["wf1"][..., i]
        out[f"acc/{lang}"] = per_lang["acc"][..., i]
    for m in GAP_KINDS:
        for i, lang in enumerate(langs):
            out[f"gap_{m}/{lang}"] = lang_gaps[m][..., i]
        out[f"gap_{m}/all"] = all_gaps[m]
        out[f"max_gap_{m}"] = np.fmax.reduce(lang_gaps[m], axis=-1)
    return out


def ser_report(
    y_true: Any, y_pred: Any, languages: Any, genders: Any, labels: Any = None
) -> dict[str, float]:
    """Flat SER metrics as fractions: wf1, acc, wf1/<l>, acc/<l>, gap_<m>/<l|all>, max_gap_<m>.

    y may be class indices (labels default to range(len(EMOTIONS))) or strings (EMOTIONS);
    genders are "F"/"M" (or 0/1). Only languages present appear; a language with one gender has
    NaN gaps and is skipped by max_gap_<m>.
    """
    langs, c = confusion_cells(y_true, y_pred, languages, genders, labels)
    return {k: float(v) for k, v in report_from_confusion(c, langs).items()}


def _resample(c: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Stratified bootstrap of count tables c (cells..., *codes): (n_resamples, cells..., *codes).

    Drawing n_cell samples with replacement inside a cell only matters through how often each
    (y, ŷ) code is drawn, and those counts are Multinomial(n_cell, c_cell / n_cell). Sampling them
    directly is the same distribution as resampling indices, keeps every cell's size, and costs
    O(cells·K²) per resample, independent of the number of predictions.
    """
    cells, codes = c.shape[:2], c.shape[2:]
    flat = c.reshape(int(np.prod(cells)), -1)
    out = np.zeros((n_resamples, *flat.shape), dtype=np.int64)
    for j, row in enumerate(flat):
        n = int(row.sum())
        if n:
            out[:, j] = rng.multinomial(n, row / n, size=n_resamples)
    return out.reshape(n_resamples, *cells, *codes)


def _percentile_ci(values: np.ndarray, ci: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(finite, [50 * (1 - ci), 50 * (1 + ci)])
    return (float(lo), float(hi))


def bootstrap_ci(
    y_true: Any,
    y_pred: Any,
    languages: Any,
    genders: Any,
    n_resamples: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    labels: Any = None,
) -> dict[str, tuple[float, float]]:
    """Percentile CIs for every ser_report key, resampling within each language × gender cell.

    Resamples where a metric is undefined are left out of its percentiles.
    """
    langs, c = confusion_cells(y_true, y_pred, languages, genders, labels)
    boot = report_from_confusion(_resample(c, n_resamples, np.random.default_rng(seed)), langs)
    return {k: _percentile_ci(v, ci) for k, v in boot.items()}


def paired_bootstrap_gap_test(
    y_true: Any,
    pred_a: Any,
    pred_b: Any,
    languages: Any,
    genders: Any,
    metric: str = "max_gap_wf1",
    n_resamples: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    labels: Any = None,
) -> dict[str, Any]:
    """Paired stratified bootstrap of δ = metric(b) − metric(a), testing H1: b's metric is smaller.

    Both systems see the same resamples: the multinomial is drawn over joint codes (y, ŷ_a, ŷ_b)
    per cell. p = (1 + #{δ* ≥ 0}) / (1 + B) over the B resamples where δ* is defined, the
    percentile-interval inversion (Efron & Tibshirani 1993, §16).
    """
    langs, k, cell, (t, pa, pb) = _cells(y_true, [pred_a, pred_b], languages, genders, labels)
    shape = (len(langs), len(GENDERS), k, k, k)
    code = ((cell * k + t) * k + pa) * k + pb
    joint = np.bincount(code, minlength=int(np.prod(shape))).reshape(shape)
    boot = _resample(joint, n_resamples, np.random.default_rng(seed))
    a = report_from_confusion(joint.sum(-1), langs)[metric]
    b = report_from_confusion(joint.sum(-2), langs)[metric]
    deltas = (
        report_from_confusion(boot.sum(-2), langs)[metric]
        - report_from_confusion(boot.sum(-1), langs)[metric]
    )
    finite = deltas[np.isfinite(deltas)]
    p_value = (1 + np.sum(finite >= 0)) / (1 + finite.size) if finite.size else float("nan")
    return {
        "metric": metric,
        "a": float(a),
        "b": float(b),
        "delta": float(b - a),
        "ci": _percentile_ci(deltas, ci),
        "p_value": float(p_value),
        "n_resamples": n_resamples,
    }


def _gap_key(metric: str) -> str:
    key = metric if metric.startswith(("max_gap_", "gap_")) else f"max_gap_{metric}"
    kind = key.removeprefix("max_gap_").removeprefix("gap_").split("/")[0]
    if kind not in GAP_KINDS:
        raise ValueError(f"unknown gap metric {metric!r}; expected one of {list(GAP_KINDS)}")
    return key


def shuffled_null(
    y_true: Any,
    y_pred: Any,
    languages: Any,
    genders: Any,
    n_permutations: int = 200,
    seed: int = 0,
    labels: Any = None,
) -> dict[str, np.ndarray]:
    """Every gap of `ser_report` (gap_<m>/<l|all>, max_gap_<m>) under gender permuted within
    each language, predictions and labels held fixed: arrays of shape (n_permutations,).

    This is the gap a gender-blind model shows from finite cells alone (a gap is |·| of two
    noisy rates, so it is positive even when predictions ignore gender). One argsort draws all
    permutations: sorting `language + U(0, 1)` per row shuffles positions inside each language
    block, and the block's genders are read through that order. Each cell keeps its size.
    """
    langs, k, cell, (t, p) = _cells(y_true, [y_pred], languages, genders, labels)
    lang, gender = cell // len(GENDERS), cell % len(GENDERS)
    rng = np.random.default_rng(seed)
    block = np.argsort(lang, kind="stable")
    order = np.argsort(lang[block] + rng.random((n_permutations, lang.size)), axis=1)
    shuffled = np.empty((n_permutations, lang.size), dtype=np.int64)
    shuffled[:, block] = gender[block][order]
    n_codes = len(langs) * len(GENDERS) * k * k
    code = ((lang * len(GENDERS) + shuffled) * k + t) * k + p
    code += np.arange(n_permutations)[:, None] * n_codes
    counts = np.bincount(code.ravel(), minlength=n_permutations * n_codes)
    c = counts.reshape(n_permutations, len(langs), len(GENDERS), k, k)
    return {key: v for key, v in report_from_confusion(c, langs).items() if "gap_" in key}


def shuffled_null_gap(
    y_true: Any,
    y_pred: Any,
    languages: Any,
    genders: Any,
    metric: str = "wf1",
    n_permutations: int = 200,
    seed: int = 0,
    labels: Any = None,
) -> dict[str, Any]:
    """The gender-shuffled null of max_gap_<metric> (`shuffled_null`), summarised.

    Returns `observed` (the real gap), `mean` and `p95` of the null (NaN permutations left
    out), `p_value` = (1 + #{null ≥ observed}) / (1 + B), the permutation test of "the gap is
    larger than a gender-blind model's", and `null`, the B values. `metric` is a gap kind
    ("wf1") or a gap key ("max_gap_wf1", "gap_wf1/ja").
    """
    key = _gap_key(metric)
    null = shuffled_null(y_true, y_pred, languages, genders, n_permutations, seed, labels)[key]
    observed = ser_report(y_true, y_pred, languages, genders, labels)[key]
    finite = null[np.isfinite(null)]
    p_value = (1 + np.sum(finite >= observed)) / (1 + finite.size) if finite.size else np.nan
    mean, p95 = null_summary(null)
    return {"observed": observed, "mean": mean, "p95": p95, "p_value": float(p_value), "null": null}


def null_summary(null: np.ndarray) -> tuple[float, float]:
    """(mean, 95th percentile) of a null distribution's defined values; NaN when none are."""
    finite = null[np.isfinite(null)]
    if not finite.size:
        return (float("nan"), float("nan"))
    return (float(finite.mean()), float(np.percentile(finite, 95)))


def mean_ci(values: Sequence[float], ci: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) over seeds: mean ± t_{(1+ci)/2, n−1}·s/√n; NaN values are dropped, n = 1
    gives (v, v, v)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return (float("nan"),) * 3
    mean = float(v.mean())
    if v.size == 1:
        return (mean, mean, mean)
    from scipy import stats  # lazily: 0.6 s of import in every Ray worker otherwise

    half = float(stats.t.ppf((1 + ci) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return (mean, mean - half, mean + half)
