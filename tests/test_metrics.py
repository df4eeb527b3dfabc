import itertools
import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from ermgap_ray.data.schema import EMOTIONS
from ermgap_ray.metrics import (
    bootstrap_ci,
    confusion_cells,
    mean_ci,
    paired_bootstrap_gap_test,
    ser_report,
    shuffled_null,
    shuffled_null_gap,
)
from ermgap_ray.registry import GAP_KINDS

K = len(EMOTIONS)


def reference_gaps(y, p, female, male):
    """Slow, obviously-correct gaps: loops over classes with sklearn per gender subset."""
    if not female.any() or not male.any():
        return dict.fromkeys(GAP_KINDS, math.nan)
    tpr, fpr = [], []
    for c in range(K):
        yf, pf, ym, pm = y[female] == c, p[female] == c, y[male] == c, p[male] == c
        if yf.any() and ym.any():
            tpr.append(abs(recall_score(yf, pf) - recall_score(ym, pm)))
        if yf.any() and ym.any() and (~yf).any() and (~ym).any():
            rates = []
            for yt, yp in ((yf, pf), (ym, pm)):
                tn, fp, _, _ = confusion_matrix(yt, yp, labels=[False, True]).ravel()
                rates.append(fp / (fp + tn))
            fpr.append(abs(rates[0] - rates[1]))
    out = {
        "tpr": float(np.mean(tpr)) if tpr else math.nan,
        "fpr": float(np.mean(fpr)) if fpr else math.nan,
        "wf1": abs(
            f1_score(y[female], p[female], average="weighted", zero_division=0)
            - f1_score(y[male], p[male], average="weighted", zero_division=0)
        ),
        "acc": abs(accuracy_score(y[female], p[female]) - accuracy_score(y[male], p[male])),
    }
    out["avg"] = (out["tpr"] + out["fpr"] + out["wf1"] + out["acc"]) / 4
    return out


def reference_report(y, p, languages, genders):
    out = {
        "wf1": f1_score(y, p, average="weighted", zero_division=0),
        "acc": accuracy_score(y, p),
    }
    langs = [lang for lang in ("en", "ja", "de") if lang in set(languages)]
    per_lang = {}
    for lang in langs:
        sel = languages == lang
        out[f"wf1/{lang}"] = f1_score(y[sel], p[sel], average="weighted", zero_division=0)
        out[f"acc/{lang}"] = accuracy_score(y[sel], p[sel])
        per_lang[lang] = reference_gaps(y, p, sel & (genders == "F"), sel & (genders == "M"))
    pooled = reference_gaps(y, p, genders == "F", genders == "M")
    for m in GAP_KINDS:
        values = [per_lang[lang][m] for lang in langs]
        for lang, v in zip(langs, values, strict=True):
            out[f"gap_{m}/{lang}"] = v
        out[f"gap_{m}/all"] = pooled[m]
        finite = [v for v in values if not math.isnan(v)]
        out[f"max_gap_{m}"] = max(finite) if finite else math.nan
    return out


def random_data(seed, n=150, langs=("en", "ja", "de")):
    """Skewed classes, a language with a 4-class subset and one gender missing a class."""
    rng = np.random.default_rng(seed)
    languages = rng.choice(langs, n)
    genders = rng.choice(["F", "M"], n)
    y = rng.choice(K, n, p=[0.4, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02])
    y = np.where(languages == "ja", y % 4, y)
    y = np.where((languages == "de") & (genders == "F") & (y == 2), 0, y)
    p = np.where(rng.random(n) < 0.5, y, rng.choice(K - 1, n))
    return y, p, languages, genders


def assert_reports_equal(got, want):
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12, nan_ok=True), key


@pytest.mark.parametrize("seed", range(6))
def test_matches_sklearn_and_reference_gaps(seed):
    y, p, languages, genders = random_data(seed)
    assert_reports_equal(
        ser_report(y, p, languages, genders), reference_report(y, p, languages, genders)
    )


def test_matches_sklearn_on_tiny_subsets():
    y, p, languages, genders = random_data(7, n=14)
    assert_reports_equal(
        ser_report(y, p, languages, genders), reference_report(y, p, languages, genders)
    )


def test_hand_computed_example():
    # en/F perfect; en/M predicts class 0 for everything; ja has F only.
    y = np.array([0, 1, 0, 1, 2])
    p = np.array([0, 1, 0, 0, 2])
    languages = np.array(["en", "en", "en", "en", "ja"])
    genders = np.array(["F", "F", "M", "M", "F"])
    r = ser_report(y, p, languages, genders)
    assert r["acc"] == pytest.approx(0.8)
    assert r["acc/en"] == pytest.approx(0.75) and r["acc/ja"] == 1.0
    # W-F1 en/M: class 0 F1 = 2·1/(1+2) = 2/3 (support 1), class 1 F1 = 0 -> 1/3.
    assert r["gap_acc/en"] == pytest.approx(0.5)
    assert r["gap_wf1/en"] == pytest.approx(2 / 3)
    # TPR over classes {0, 1}: |1−1|, |1−0| -> 0.5. FPR over the classes present for both
    # genders, {0, 1}: class 0 is 0 vs 1, class 1 is 0 vs 0 -> 1/2 (absent classes don't dilute).
    assert r["gap_tpr/en"] == pytest.approx(0.5)
    assert r["gap_fpr/en"] == pytest.approx(1 / 2)
    assert r["gap_avg/en"] == pytest.approx((0.5 + 1 / 2 + 2 / 3 + 0.5) / 4)
    for m in GAP_KINDS:
        assert math.isnan(r[f"gap_{m}/ja"])
        assert r[f"max_gap_{m}"] == r[f"gap_{m}/en"]
        assert r[f"gap_{m}/all"] == pytest.approx(r[f"gap_{m}/en"])
    assert "wf1/de" not in r
    assert ser_report(y, p, languages, genders, labels=[0, 1, 2])["gap_fpr/en"] == pytest.approx(
        1 / 2
    )


def test_string_labels_and_int_genders_match_indices():
    y, p, languages, genders = random_data(3)
    want = ser_report(y, p, languages, genders)
    names = np.array(EMOTIONS)
    got = ser_report(names[y], names[p], languages, (genders == "M").astype(int))
    assert_reports_equal(got, want)


def test_all_languages_single_gender_gives_nan_max():
    r = ser_report([0, 1], [0, 0], ["en", "de"], ["F", "F"])
    assert all(math.isnan(r[f"max_gap_{m}"]) for m in GAP_KINDS)
    assert list(k for k in r if k.startswith("wf1/")) == ["wf1/en", "wf1/de"]


def test_invalid_inputs_are_named():
    with pytest.raises(ValueError, match="genders"):
        ser_report([0], [0], ["en"], ["X"])
    with pytest.raises(ValueError, match="labels"):
        ser_report([0], [9], ["en"], ["F"])
    with pytest.raises(ValueError, match="same length"):
        ser_report([0, 1], [0], ["en", "en"], ["F", "M"])


def test_confusion_cells_layout():
    langs, c = confusion_cells([1, 2, 3], [1, 0, 3], ["de", "en", "de"], ["M", "F", "M"])
    assert langs == ["en", "de"] and c.shape == (2, 2, K, K) and c.sum() == 3
    assert c[0, 0, 2, 0] == 1 and c[1, 1, 1, 1] == 1 and c[1, 1, 3, 3] == 1


def biased_data(n, seed=0):
    """German males get 30% accuracy, everyone else 70%: a clear planted worst-language gap."""
    rng = np.random.default_rng(seed)
    languages = rng.choice(["en", "ja", "de"], n)
    genders = rng.choice(["F", "M"], n)
    y = rng.integers(0, K, n)
    acc = np.where((languages == "de") & (genders == "M"), 0.3, 0.7)
    p = np.where(rng.random(n) < acc, y, (y + rng.integers(1, K, n)) % K)
    return y, p, languages, genders


def test_bootstrap_ci_contains_point_and_shrinks_with_n():
    y, p, languages, genders = biased_data(8000)
    point = ser_report(y, p, languages, genders)
    ci = bootstrap_ci(y, p, languages, genders, n_resamples=1000)
    assert sorted(ci) == sorted(point)
    for key in ("wf1", "acc", "wf1/de", "acc/en", "gap_acc/de", "max_gap_wf1", "gap_avg/all"):
        lo, hi = ci[key]
        assert lo < point[key] < hi, key
    assert ci["max_gap_acc"][0] > 0.3
    small = bootstrap_ci(y[:2000], p[:2000], languages[:2000], genders[:2000], n_resamples=1000)
    ratio = (small["acc"][1] - small["acc"][0]) / (ci["acc"][1] - ci["acc"][0])
    assert 1.6 < ratio < 2.5  # width ∝ 1/√n: √4 = 2


def test_bootstrap_width_matches_stratified_binomial_theory():
    """acc* = Σ_g correct*_g / N with correct*_g ~ Bin(n_g, acc_g) under stratified resampling."""
    y, p, languages, genders = biased_data(3000, seed=1)
    ci = bootstrap_ci(y, p, languages, genders, n_resamples=4000, ci=0.95, seed=3)
    var = 0.0
    for lang in ("en", "ja", "de"):
        for g in ("F", "M"):
            sel = (languages == lang) & (genders == g)
            a = np.mean(y[sel] == p[sel])
            var += sel.sum() * a * (1 - a)
    expected_width = 2 * 1.959964 * math.sqrt(var) / len(y)
    assert ci["acc"][1] - ci["acc"][0] == pytest.approx(expected_width, rel=0.08)


def test_bootstrap_matches_index_resampling():
    """The multinomial draw per cell has the law of resampling indices within the cell."""
    y, p, languages, genders = biased_data(600, seed=2)
    rng = np.random.default_rng(5)
    cells = [
        np.flatnonzero((languages == lg) & (genders == g))
        for lg in ("en", "ja", "de")
        for g in "FM"
    ]
    draws = []
    for _ in range(1500):
        idx = np.concatenate([rng.choice(c, c.size) for c in cells])
        draws.append(ser_report(y[idx], p[idx], languages[idx], genders[idx])["wf1/de"])
    lo, hi = np.percentile(draws, [2.5, 97.5])
    got = bootstrap_ci(y, p, languages, genders, n_resamples=4000, seed=1)["wf1/de"]
    assert got[0] == pytest.approx(lo, abs=0.012) and got[1] == pytest.approx(hi, abs=0.012)


def test_bootstrap_is_stratified():
    """en/F always right, en/M always wrong: only fixed cell sizes make acc and gaps constant."""
    n = 200
    languages = np.array(["en"] * n)
    genders = np.array(["F", "M"] * (n // 2))
    y = np.arange(n) % K
    p = np.where(genders == "F", y, (y + 1) % K)
    ci = bootstrap_ci(y, p, languages, genders, n_resamples=500)
    assert ci["acc"] == (0.5, 0.5)
    assert ci["gap_acc/en"] == (1.0, 1.0) and ci["max_gap_acc"] == (1.0, 1.0)


def test_bootstrap_nan_for_undefined_and_seeded():
    y, p, languages, genders = biased_data(500)
    keep = ~((languages == "ja") & (genders == "M"))
    args = (y[keep], p[keep], languages[keep], genders[keep])
    ci = bootstrap_ci(*args, n_resamples=200, seed=4)
    assert all(math.isnan(v) for v in ci["gap_wf1/ja"])
    assert not math.isnan(ci["max_gap_wf1"][0])
    again = bootstrap_ci(*args, n_resamples=200, seed=4)
    assert all(np.array_equal(ci[k], again[k], equal_nan=True) for k in ci)
    assert ci["acc"] != bootstrap_ci(*args, n_resamples=200, seed=5)["acc"]


def test_paired_test_detects_fairer_system():
    y, p, languages, genders = biased_data(3000)
    fair = np.where(np.random.default_rng(9).random(len(y)) < 0.6, y, (y + 1) % K)
    res = paired_bootstrap_gap_test(y, p, fair, languages, genders, n_resamples=1000)
    point_a = ser_report(y, p, languages, genders)["max_gap_wf1"]
    point_b = ser_report(y, fair, languages, genders)["max_gap_wf1"]
    assert res["a"] == pytest.approx(point_a) and res["b"] == pytest.approx(point_b)
    assert res["delta"] == pytest.approx(point_b - point_a) and res["delta"] < -0.2
    assert res["ci"][1] < 0
    assert res["p_value"] == pytest.approx(1 / 1001)
    reverse = paired_bootstrap_gap_test(y, fair, p, languages, genders, n_resamples=1000)
    assert reverse["p_value"] > 0.99


def test_paired_test_identical_systems_share_resamples():
    y, p, languages, genders = biased_data(1000)
    res = paired_bootstrap_gap_test(y, p, p.copy(), languages, genders, metric="max_gap_avg")
    assert res["delta"] == 0.0 and res["ci"] == (0.0, 0.0) and res["p_value"] == 1.0


def test_mean_ci():
    assert mean_ci([0.4]) == (0.4, 0.4, 0.4)
    mean, lo, hi = mean_ci([1.0, 2.0, 3.0, float("nan")])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} · s / √n with s = 1
    assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert all(math.isnan(v) for v in mean_ci([]))


def _null_case():
    """en: 2 F + 2 M, samples 0 and 1 right, 2 and 3 wrong; de: one F and one M, both right;
    ja: F only (NaN gaps, never the max)."""
    y = np.array([0, 1, 0, 1, 2, 3, 4])
    p = np.array([0, 1, 1, 0, 2, 3, 0])
    languages = np.array(["en"] * 4 + ["de"] * 2 + ["ja"])
    genders = np.array(["F", "F", "M", "M", "F", "M", "F"])
    return y, p, languages, genders


def test_shuffled_null_matches_enumerated_permutations():
    y, p, languages, genders = _null_case()
    # Every within-language relabelling keeps 2 F among en's 4 and 1 F among de's 2: 6 x 2
    # equally likely assignments, each scored by ser_report.
    exact = {"max_gap_acc": [], "max_gap_wf1": [], "gap_acc/de": []}
    for en_f, de_f in itertools.product(itertools.combinations(range(4), 2), (4, 5)):
        g = np.array(["M"] * 6 + ["F"])
        g[list(en_f)] = "F"
        g[de_f] = "F"
        r = ser_report(y, p, languages, g)
        for key in exact:
            exact[key].append(r[key])
    null = shuffled_null(y, p, languages, genders, n_permutations=6000, seed=1)
    for key, values in exact.items():
        support, counts = np.unique(values, return_counts=True)
        assert set(np.round(null[key], 12)) <= set(np.round(support, 12)), key
        for v, c in zip(support, counts, strict=True):
            assert np.mean(np.isclose(null[key], v)) == pytest.approx(c / 12, abs=0.03), key
    # en's ACC gap is 1 when both right answers land in one gender (2 of 6 splits), else 0.
    assert null["max_gap_acc"].mean() == pytest.approx(1 / 3, abs=0.03)
    assert (null["gap_acc/de"] == 0).all() and np.isnan(null["gap_acc/ja"]).all()


def test_shuffled_null_gap_summary_and_permutation_p():
    y, p, languages, genders = _null_case()
    res = shuffled_null_gap(y, p, languages, genders, metric="acc", n_permutations=400, seed=2)
    null = res["null"]
    assert res["observed"] == 1.0 and null.shape == (400,)
    assert res["mean"] == pytest.approx(null.mean())
    assert res["p95"] == pytest.approx(np.percentile(null, 95))
    assert res["p_value"] == pytest.approx((1 + np.sum(null >= 1.0)) / 401)
    same = shuffled_null_gap(y, p, languages, genders, "max_gap_acc", n_permutations=400, seed=2)
    assert np.array_equal(same["null"], null)
    other = shuffled_null_gap(y, p, languages, genders, "acc", n_permutations=400, seed=3)
    assert not np.array_equal(other["null"], null)
    with pytest.raises(ValueError, match="unknown gap metric"):
        shuffled_null_gap(y, p, languages, genders, metric="f1")


def test_shuffled_null_of_perfect_predictions_is_zero():
    y, _, languages, genders = biased_data(300)
    res = shuffled_null_gap(y, y, languages, genders, n_permutations=50)
    assert res["observed"] == 0.0 and res["mean"] == 0.0 and res["p95"] == 0.0


def test_gender_blind_predictions_sit_inside_the_null():
    """Predictions drawn independently of gender: the observed max gap is a draw from the
    null, so it rarely passes the null's 95th percentile; a planted gap always does."""
    exceed = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n = 600
        languages, genders = rng.choice(["en", "ja", "de"], n), rng.choice(["F", "M"], n)
        y = rng.integers(0, K, n)
        p = np.where(rng.random(n) < 0.6, y, rng.integers(0, K, n))
        res = shuffled_null_gap(y, p, languages, genders, n_permutations=200, seed=seed)
        assert res["observed"] > 0 and res["mean"] > 0  # finite cells: |noise| > 0
        exceed += res["observed"] > res["p95"]
    assert exceed <= 4  # expected 1 in 20
    y, p, languages, genders = biased_data(3000)
    res = shuffled_null_gap(y, p, languages, genders, metric="acc", n_permutations=200)
    assert res["observed"] > 0.3 > res["p95"] and res["p_value"] == pytest.approx(1 / 201)
