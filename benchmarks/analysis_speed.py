"""Analysis hot paths, one JSON line: Pareto mask and hypervolume of 1e5 random 2-D points, and
1,000 stratified bootstrap resamples of 10k predictions (metrics.bootstrap_ci).

    python benchmarks/analysis_speed.py
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np

from ermgap_ray.data.schema import EMOTIONS, GENDERS, LANGUAGES
from ermgap_ray.metrics import bootstrap_ci
from ermgap_ray.pareto import hypervolume, pareto_mask


def _seconds(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best of `repeats` wall-clock runs: the least noisy estimate on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    points = rng.random((100_000, 2))
    maximize = [True, False]
    n = 10_000
    y_true = rng.integers(0, len(EMOTIONS), n)
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, len(EMOTIONS), n))
    languages = rng.choice(LANGUAGES, n)
    genders = rng.choice(GENDERS, n)
    result = {
        "pareto_mask_1e5_s": _seconds(lambda: pareto_mask(points, maximize)),
        "hypervolume_1e5_s": _seconds(lambda: hypervolume(points, (0.0, 1.0), maximize)),
        "bootstrap_1000x10k_s": _seconds(
            lambda: bootstrap_ci(y_true, y_pred, languages, genders, n_resamples=1000), repeats=1
        ),
        "front_size": int(pareto_mask(points, maximize).sum()),
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
