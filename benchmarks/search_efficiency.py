"""Does the multi-objective search earn its keep over random search at the same trial budget?

Each search is the sweep's own Optuna machinery (`ermgap_ray.search`: SearchSpace, make_sampler,
the paper grid's warm-start points, Bound constraints set with `Trial.set_constraint`) asking for
`--trials` configurations, each trained for real (`run_local`: the recipe a Tune trial runs, on
the embedded tiny backbone and the default twin, with the `search` preset's trial settings:
its epochs and `torch_compile`). Trials run in this machine's processes, not through Ray, so the
figure is the sampler's and not Tune's scheduling; a search is sequential (one trial at a time),
as Tune with one trial at a time would run it.

Trials last the preset's epochs (6) by default: at 1-4 epochs every lambda setting lies on one
trade-off line (README "How the defaults were chosen"; at 1 epoch the dev gap is 0.65-0.70 of
the dev W-F1 whatever lambda is), so the method's knobs only move a trial along the front and
there is little for a model to learn but the learning rate.

Every search, random included, starts from the same warm-start points, so the ratio measures the
model, not the warm start. Repeats use sampler seeds 0..R-1; a configuration is trained once and
reused wherever it recurs, across searches and worker processes (`--cache` keeps them for a
later run; training is deterministic per config and seed; `trained_this_run` counts the trials
trained rather than read back).

1. Hypervolume of (dev W-F1 up, dev worst-language gender W-F1 gap down), reference (0, 1), of
   each sampler's trials ÷ random's, per repeat; mean and 95% Student-t CI over repeats.
   `hv_union_ratio_vs_random` is the hypervolume of every trial the run trained ÷ each repeat's
   random search, averaged like the ratios: hypervolume only grows with the point set, so no
   search in the run scores more; it shows how far above random this space's front reaches.
2. Constrained search: the bound is dev/max_gap_wf1 <= the 25th percentile of that repeat's
   random-search gaps (a bound random search meets in a quarter of its trials by construction).
   The constrained TPE search is compared with the unconstrained TPE search of the same repeat:
   best feasible dev W-F1 and the number of feasible trials.

Prints ONE JSON line (keys best_sampler, best_hv_ratio_vs_random, best_hv_ratio_ci95 are read
by other checks); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

REF = (0.0, 1.0)
UTILITY, GAP = "dev/wf1", "dev/max_gap_wf1"
PRESET = "search"
MODALITY = "audio"
Key = tuple[str, int, bool]


def trial_overrides(epochs: int | None = None) -> dict[str, Any]:
    """The search preset's trial settings on one modality, with a 20-resample bootstrap (the
    searcher reads point estimates only)."""
    from ermgap_ray.config import TrialConfig
    from ermgap_ray.sweep import load_sweep_config

    values = {**load_sweep_config(PRESET).trial, "bootstrap": 20, "modality": MODALITY}
    return {**values, "epochs": TrialConfig.from_dict(values).epochs if epochs is None else epochs}


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


class TrialCache:
    """Trained configurations' dev objectives, one JSON file each, shared by every search and
    worker process (a config drawn by two searches trains once). Files are keyed by the trial
    overrides and params, so a cache kept with `--cache` is reused only for identical trials;
    clear it after changing the training code."""

    def __init__(self, root: Path, overrides: dict[str, Any]) -> None:
        self.root = root
        self.overrides = overrides

    def _path(self, params: dict[str, Any]) -> Path:
        digest = hashlib.sha256(_key({**self.overrides, **params}).encode()).hexdigest()[:24]
        return self.root / f"{digest}.json"

    def objectives(self, params: dict[str, Any]) -> dict[str, float]:
        from ermgap_ray.fs import atomic_write

        path = self._path(params)
        if path.is_file():
            return json.loads(path.read_text())
        result = train(params, self.overrides)
        with atomic_write(path) as handle:
            json.dump(result, handle)
        return result


def train(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, float]:
    """One trial of the search family, trained in this process; its dev objectives."""
    import torch

    from ermgap_ray.config import TrialConfig
    from ermgap_ray.train.launch import run_local

    torch.set_num_threads(1)
    cfg = TrialConfig.from_dict({"objective": "minmaxgap", **overrides, **params})
    with tempfile.TemporaryDirectory(prefix="ermgap-search-bench-") as tmp:
        final = run_local(cfg, tmp, verbose=False)
    return {UTILITY: float(final[UTILITY]), GAP: float(final[GAP])}


def run_search(
    sampler: str, seed: int, trials: int, cache: TrialCache, bound: float | None = None
) -> list[dict[str, Any]]:
    """One search of `trials` trials; returns each trial's params and objectives."""
    import optuna

    from ermgap_ray.search import Bound, SearchSpace, make_sampler, set_constraints

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace(cache.overrides, [MODALITY])
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
        result = cache.objectives(trial.params)
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


def _job(sampler: str, seed: int, trials: int, cache: TrialCache, bound: float | None) -> Any:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return run_search(sampler, seed, trials, cache, bound)


def run_all(
    samplers: list[str],
    repeats: int,
    trials: int,
    cache: TrialCache,
    workers: int,
    constrained: bool,
) -> tuple[dict[Key, list[dict[str, Any]]], dict[int, float]]:
    """Every search of the benchmark; a repeat's constrained search starts as soon as its random
    search (which sets the bound) ends, so no worker waits for the slowest repeat."""
    results: dict[Key, list[dict[str, Any]]] = {}
    bounds: dict[int, float] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: dict[Future, Key] = {}

        def submit(sampler: str, seed: int, bound: float | None = None) -> None:
            future = pool.submit(_job, sampler, seed, trials, cache, bound)
            pending[future] = (sampler, seed, bound is not None)

        for sampler in ["random", *samplers]:
            for seed in range(repeats):
                submit(sampler, seed)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                key = pending.pop(future)
                results[key] = future.result()
                sampler, seed, _ = key
                if sampler == "random":
                    bounds[seed] = float(np.percentile([r[GAP] for r in results[key]], 25))
                    if constrained:
                        submit("tpe", seed, bounds[seed])
    return results, bounds


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


def constrained_summary(
    results: dict[Key, list[dict[str, Any]]], bounds: dict[int, float]
) -> dict[str, Any]:
    def feasible(rows: list[dict[str, Any]], bound: float) -> list[dict[str, Any]]:
        return [r for r in rows if r[GAP] <= bound]

    per_seed = []
    for seed, b in sorted(bounds.items()):
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
    return {
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


def _mean_or_none(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32, help="Trials per search.")
    parser.add_argument(
        "--epochs", type=int, default=None, help="Epochs per trial (default: the search preset's)."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Sampler seeds 0..R-1.")
    parser.add_argument(
        "--samplers",
        default="tpe",
        help="Compared with random (comma-separated; TPE is what `auto` picks for this space).",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-constrained", action="store_true")
    parser.add_argument(
        "--cache", type=Path, default=None, help="Keep trained trials here for later runs."
    )
    args = parser.parse_args()
    samplers = [s for s in args.samplers.split(",") if s]

    t0 = time.perf_counter()
    from ermgap_ray.search import SearchSpace

    overrides = trial_overrides(args.epochs)
    with tempfile.TemporaryDirectory(prefix="ermgap-search-cache-") as tmp:
        cache = TrialCache(args.cache or Path(tmp), overrides)
        cached_before = len(list(cache.root.glob("*.json")))
        # The shared warm-start points, trained once before the searches fan out.
        for point in SearchSpace(overrides, [MODALITY]).warm_start_points(args.trials):
            cache.objectives(point)
        results, bounds = run_all(
            samplers, args.repeats, args.trials, cache, args.workers, not args.no_constrained
        )
        trained = len(list(cache.root.glob("*.json"))) - cached_before

    hvs = {
        s: [hv(results[(s, seed, False)]) for seed in range(args.repeats)]
        for s in ["random", *samplers]
    }
    ratios = {s: [a / b for a, b in zip(hvs[s], hvs["random"], strict=True)] for s in samplers}
    summary = {s: mean_ci_over_repeats(r) for s, r in ratios.items()}
    best = max(samplers, key=lambda s: summary[s][0])
    every_trial = {_key(r["params"]): r for rows in results.values() for r in rows}
    line: dict[str, Any] = {
        "benchmark": "search_efficiency",
        "trials_per_search": args.trials,
        "epochs": overrides["epochs"],
        "torch_compile": bool(overrides.get("torch_compile", False)),
        "repeats": args.repeats,
        "best_sampler": best,
        "best_hv_ratio_vs_random": round(summary[best][0], 3),
        "best_hv_ratio_ci95": summary[best][1],
        **{f"hv_ratio_{s}_vs_random": round(summary[s][0], 3) for s in samplers},
        **{f"hv_ratio_{s}_ci95": summary[s][1] for s in samplers},
        "hv": {s: [round(x, 4) for x in v] for s, v in hvs.items()},
        "hv_union_ratio_vs_random": round(
            float(np.mean([hv(list(every_trial.values())) / h for h in hvs["random"]])), 3
        ),
        "distinct_configs": len(every_trial),
        "trained_this_run": trained,
    }
    if not args.no_constrained:
        line["constrained"] = constrained_summary(results, bounds)
    line["wall_s"] = round(time.perf_counter() - t0, 1)
    line["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
