"""Does the multi-objective search earn its keep over random search at the same trial budget?

Each search is the sweep's own Optuna machinery (`ermgap_ray.search`: SearchSpace, make_sampler,
the paper grid's warm-start points, Bound constraints set with `Trial.set_constraint`) asking for
`--trials` configurations, each trained for real (`run_local`: the recipe a Tune trial runs, on
the embedded tiny backbone and the default twin, `--epochs` epochs). Trials run in this machine's
processes, not through Ray, so the figure is the sampler's and not Tune's scheduling; a search is
sequential (one trial at a time), as Tune with one trial at a time would run it.

Every search, random included, starts from the same warm-start points, so the ratio measures the
model, not the warm start. Repeats use sampler seeds 0..R-1; a configuration is trained once and
reused wherever it recurs (training is deterministic per config and seed).

1. Hypervolume of (dev W-F1 up, dev worst-language gender W-F1 gap down), reference (0, 1), of
   each sampler's trials ÷ random's, per repeat; mean and 95% Student-t CI over repeats.
2. Constrained search: the bound is dev/max_gap_wf1 <= the 25th percentile of that repeat's
   random-search gaps (a bound random search meets in a quarter of its trials by construction).
   The constrained TPE search is compared with the unconstrained TPE search of the same repeat:
   best feasible dev W-F1 and the number of feasible trials.

Prints ONE JSON line (keys best_sampler, best_hv_ratio_vs_random, best_hv_ratio_ci95 are read
by other checks); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

REF = (0.0, 1.0)
UTILITY, GAP = "dev/wf1", "dev/max_gap_wf1"
FIXED = {"modality": "audio"}


def _trial_overrides(epochs: int) -> dict[str, Any]:
    return {"epochs": epochs, "bootstrap": 20, **FIXED}


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def train(params: dict[str, Any], epochs: int) -> dict[str, float]:
    """One trial of the search family, trained in this process; its dev objectives."""
    import torch

    from ermgap_ray.config import TrialConfig
    from ermgap_ray.train.launch import run_local

    torch.set_num_threads(1)
    cfg = TrialConfig.from_dict({"objective": "minmaxgap", **_trial_overrides(epochs), **params})
    with tempfile.TemporaryDirectory(prefix="ermgap-search-bench-") as tmp:
        final = run_local(cfg, tmp, verbose=False)
    return {UTILITY: float(final[UTILITY]), GAP: float(final[GAP])}


def run_search(
    sampler: str,
    seed: int,
    trials: int,
    epochs: int,
    known: dict[str, dict[str, float]],
    bound: float | None = None,
) -> list[dict[str, Any]]:
    """One search of `trials` trials; returns each trial's params, objectives and feasibility."""
    import optuna

    from ermgap_ray.search import Bound, SearchSpace, make_sampler, set_constraints

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace(_trial_overrides(epochs), ["audio"])
    bounds = [Bound(GAP, "<=", bound)] if bound is not None else []
    study = optuna.create_study(
        directions=["maximize", "minimize"],
        sampler=make_sampler(sampler, seed, trials, 1, space.conditional),
    )
    for point in space.warm_start_points(trials):
        study.enqueue_trial(point)
    out = []
    for i in range(trials):
        trial = study.ask()
        space(trial)
        key = _key(trial.params)
        if key not in known:
            known[key] = train(trial.params, epochs)
        result = known[key]
        if bounds:
            set_constraints(trial, bounds, result)
        study.tell(trial, [result[UTILITY], result[GAP]])
        out.append({"params": trial.params, **result})
        print(
            f"[{sampler}{'+c' if bounds else ''} seed {seed}] {i + 1}/{trials} "
            f"wf1 {100 * result[UTILITY]:.1f} gap {100 * result[GAP]:.1f}",
            file=sys.stderr,
            flush=True,
        )
    return out


def _job(args: tuple[Any, ...]) -> tuple[tuple[str, int, bool], list[dict[str, Any]]]:
    sampler, seed, trials, epochs, known, bound = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return (sampler, seed, bound is not None), run_search(
        sampler, seed, trials, epochs, dict(known), bound
    )


def hv(rows: list[dict[str, Any]]) -> float:
    from ermgap_ray.pareto import hypervolume

    points = np.array([[r[UTILITY], r[GAP]] for r in rows], dtype=float)
    return hypervolume(points, ref=REF, maximize=(True, False))


def mean_ci_over_repeats(values: list[float]) -> tuple[float, list[float]]:
    """Mean and 95% Student-t CI (metrics.mean_ci); no CI from a single repeat."""
    from ermgap_ray.metrics import mean_ci

    mean, lo, hi = mean_ci(values)
    if len(values) < 2:
        return mean, [float("nan"), float("nan")]
    return mean, [round(lo, 3), round(hi, 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32, help="Trials per search.")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="Sampler seeds 0..R-1.")
    parser.add_argument("--samplers", default="tpe,gp", help="Compared with random.")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-constrained", action="store_true")
    args = parser.parse_args()
    samplers = [s for s in args.samplers.split(",") if s]

    t0 = time.perf_counter()
    from ermgap_ray.search import SearchSpace

    # The shared warm-start points, trained once before the searches fan out.
    space = SearchSpace(_trial_overrides(args.epochs), ["audio"])
    known = {_key(p): train(p, args.epochs) for p in space.warm_start_points(args.trials)}
    jobs = [
        (s, seed, args.trials, args.epochs, known, None)
        for seed in range(args.repeats)
        for s in ["random", *samplers]
    ]
    results: dict[tuple[str, int, bool], list[dict[str, Any]]] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for key, rows in pool.map(_job, jobs):
            results[key] = rows
        bounds = {
            seed: float(np.percentile([r[GAP] for r in results[("random", seed, False)]], 25))
            for seed in range(args.repeats)
        }
        if not args.no_constrained:
            constrained = [
                ("tpe", seed, args.trials, args.epochs, known, bounds[seed])
                for seed in range(args.repeats)
            ]
            for key, rows in pool.map(_job, constrained):
                results[key] = rows

    hvs = {
        s: [hv(results[(s, seed, False)]) for seed in range(args.repeats)]
        for s in ["random", *samplers]
    }
    ratios = {s: [a / b for a, b in zip(hvs[s], hvs["random"], strict=True)] for s in samplers}
    summary = {s: mean_ci_over_repeats(r) for s, r in ratios.items()}
    best = max(samplers, key=lambda s: summary[s][0])
    line: dict[str, Any] = {
        "benchmark": "search_efficiency",
        "trials_per_search": args.trials,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "best_sampler": best,
        "best_hv_ratio_vs_random": round(summary[best][0], 3),
        "best_hv_ratio_ci95": summary[best][1],
        **{f"hv_ratio_{s}_vs_random": round(summary[s][0], 3) for s in samplers},
        **{f"hv_ratio_{s}_ci95": summary[s][1] for s in samplers},
        "hv": {s: [round(x, 4) for x in v] for s, v in hvs.items()},
    }
    if not args.no_constrained:

        def feasible(rows: list[dict[str, Any]], bound: float) -> list[dict[str, Any]]:
            return [r for r in rows if r[GAP] <= bound]

        per_seed = []
        for seed in range(args.repeats):
            b = bounds[seed]
            fc = feasible(results[("tpe", seed, True)], b)
            fu = feasible(results[("tpe", seed, False)], b)
            per_seed.append(
                {
                    "bound": round(b, 4),
                    "feasible_constrained": len(fc),
                    "feasible_unconstrained": len(fu),
                    "best_feasible_wf1_constrained": max((r[UTILITY] for r in fc), default=None),
                    "best_feasible_wf1_unconstrained": max((r[UTILITY] for r in fu), default=None),
                }
            )
        fc_total = sum(p["feasible_constrained"] for p in per_seed)
        fu_total = sum(p["feasible_unconstrained"] for p in per_seed)
        line["constrained"] = {
            "rule": "bound = 25th percentile of the repeat's random-search dev gaps",
            "feasible_ratio_constrained_vs_unconstrained": round(fc_total / max(fu_total, 1), 2),
            "best_feasible_wf1_constrained_mean": _mean_or_none(
                [p["best_feasible_wf1_constrained"] for p in per_seed]
            ),
            "best_feasible_wf1_unconstrained_mean": _mean_or_none(
                [p["best_feasible_wf1_unconstrained"] for p in per_seed]
            ),
            "per_repeat": per_seed,
        }
    line["distinct_configs"] = len({_key(r["params"]) for v in results.values() for r in v})
    line["wall_s"] = round(time.perf_counter() - t0, 1)
    line["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(line))


def _mean_or_none(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


if __name__ == "__main__":
    main()
