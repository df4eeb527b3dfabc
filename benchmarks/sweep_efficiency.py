"""How well a sweep uses its cluster, and what it buys over a plain sequential script.

* slot_efficiency = Σ trial training time (the loop's time_epoch_s) ÷ (sweep wall × slots)
* slot_occupancy  = Σ trial wall (Tune's per-trial time) ÷ (sweep wall × slots)
* wall_ratio_vs_plain = sweep wall ÷ wall of the same configs run one after another in one
  process by `ermgap_ray.train.run_plain` (plain torch, no Ray/DeepSpeed, no encoder cache);
  `--plain-sample K` times K of them (a zero-shot and trained ones) and extrapolates, since
  the plain loop re-encodes audio every epoch and takes minutes per trial on 2 cores

The grid is the `paper` preset cut to one seed and one modality (8 families) so it fits a
laptop; epochs are chosen so a trial takes about a minute on 2 cores. Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time

from ermgap_ray.config import TrialConfig
from ermgap_ray.sweep import grid_trials, load_sweep_config, run_sweep


def _plain_sample(configs: list[TrialConfig], k: int) -> list[int]:
    """All configs, or k of them covering both costs: zero-shot (eval only) and training."""
    if k < 0 or k >= len(configs):
        return list(range(len(configs)))
    zero = [i for i, c in enumerate(configs) if c.epochs == 0]
    trained = [i for i, c in enumerate(configs) if c.epochs > 0]
    return (zero[:1] + trained[: max(1, k - 1)])[:k]


def _extrapolate(configs: list[TrialConfig], seconds: dict[int, float]) -> float:
    """Σ over all configs of the mean timed cost of their kind (zero-shot vs trained): a plain
    script's per-trial cost does not depend on the objective, only on whether it trains."""
    total = 0.0
    for i, cfg in enumerate(configs):
        same = [s for j, s in seconds.items() if (configs[j].epochs == 0) == (cfg.epochs == 0)]
        total += seconds[i] if i in seconds else sum(same) / len(same)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--modality", default="audio")
    parser.add_argument("--cluster", default="local")
    parser.add_argument(
        "--plain-sample",
        type=int,
        default=-1,
        help="Plain baseline: time all configs (-1), none (0), or K of them and extrapolate.",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ermgap-bench-") as tmp:
        cfg = load_sweep_config(
            "paper",
            {
                "storage": tmp,
                "name": "bench",
                "seeds": args.seeds,
                "cluster": args.cluster,
                "modalities": [args.modality],
            },
            [f"epochs={args.epochs}"],
        )
        with contextlib.redirect_stdout(sys.stderr):
            t0 = time.perf_counter()
            result = run_sweep(cfg, progress_interval_s=30)
            sweep_wall = time.perf_counter() - t0
        import ray

        slots = cfg.max_concurrent or int(ray.cluster_resources().get("CPU", 1))
        trials = result.trials
        train_s = float(trials["time_epoch_s"].sum())
        trial_wall = float(trials.groupby("trial_id")["time_total_s"].max().sum())
        configs = [
            TrialConfig.from_dict({k: v for k, v in t.items() if k != "family"})
            for t in grid_trials(cfg)
        ]
    out = {
        "benchmark": "sweep_efficiency",
        "trials": len(configs),
        "epochs": args.epochs,
        "slots": slots,
        "sweep_wall_s": round(sweep_wall, 1),
        "slot_efficiency": round(train_s / (sweep_wall * slots), 3),
        "slot_occupancy": round(trial_wall / (sweep_wall * slots), 3),
        "mean_trial_wall_s": round(trial_wall / max(1, len(configs)), 1),
        "errors": result.n_error,
    }
    if args.plain_sample != 0:
        ray.shutdown()
        from ermgap_ray.train import run_plain

        sample = _plain_sample(configs, args.plain_sample)
        seconds = {}
        with contextlib.redirect_stdout(sys.stderr):
            for i in sample:
                t0 = time.perf_counter()
                run_plain(configs[i], use_cache=False)
                seconds[i] = time.perf_counter() - t0
        plain_wall = _extrapolate(configs, seconds)
        out |= {
            "plain_trials_timed": len(seconds),
            "plain_wall_s": round(plain_wall, 1),
            "wall_ratio_vs_plain": round(sweep_wall / plain_wall, 3),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
