"""Does the multi-objective search beat random search at a fixed trial budget?

For each sampler (NSGA-II, TPE, random) and each of `--repeats` sampler seeds, run the `search`
preset for N trials on the embedded tiny backbone (cached encoder) and take the dev hypervolume
of (W-F1 up, worst-language gender W-F1 gap down) with ref = (0, 1) (ermgap_ray.pareto).
Reports hv(sampler) ÷ hv(random) per seed and their mean. Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time

import numpy as np

from ermgap_ray.pareto import final_rows, hypervolume
from ermgap_ray.sweep import load_sweep_config, run_sweep

REF = (0.0, 1.0)


def search_hypervolume(
    storage: str, sampler: str, seed: int, n: int, epochs: int, cluster: str
) -> float:
    cfg = load_sweep_config(
        "search",
        {
            "storage": storage,
            "name": f"{sampler}-{seed}",
            "sampler": sampler,
            "num_samples": n,
            "cluster": cluster,
            "sampler_seed": seed,
        },
        [f"epochs={epochs}", "bootstrap=50"],
    )
    with contextlib.redirect_stdout(sys.stderr):
        result = run_sweep(cfg, progress_interval_s=60)
    final = final_rows(result.trials)
    points = final[["dev/wf1", "dev/max_gap_wf1"]].to_numpy(float)
    return hypervolume(points, ref=REF, maximize=(True, False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6, help="N: trials per search.")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="Sampler seeds.")
    parser.add_argument("--cluster", default="local")
    args = parser.parse_args()

    t0 = time.perf_counter()
    hv: dict[str, list[float]] = {"nsga2": [], "tpe": [], "random": []}
    with tempfile.TemporaryDirectory(prefix="ermgap-search-bench-") as tmp:
        for seed in range(args.repeats):
            for sampler in hv:
                hv[sampler].append(
                    search_hypervolume(tmp, sampler, seed, args.trials, args.epochs, args.cluster)
                )
    rnd = np.asarray(hv["random"])
    ratios = {s: (np.asarray(v) / np.where(rnd > 0, rnd, np.nan)) for s, v in hv.items()}
    print(
        json.dumps(
            {
                "benchmark": "search_efficiency",
                "trials_per_search": args.trials,
                "epochs": args.epochs,
                "repeats": args.repeats,
                "hv_ratio_nsga2_vs_random": round(float(np.nanmean(ratios["nsga2"])), 3),
                "hv_ratio_tpe_vs_random": round(float(np.nanmean(ratios["tpe"])), 3),
                "hv": {s: [round(x, 4) for x in v] for s, v in hv.items()},
                "wall_s": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
