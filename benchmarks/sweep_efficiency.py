"""How well a sweep uses its cluster, and what it buys over a plain sequential script.

* slot_efficiency = Σ loop time (every evaluation's time_epoch_s: train, dev, test) ÷
  (sweep wall × slots)
* slot_occupancy  = Σ trial wall (the loop's time_total_s) ÷ (sweep wall × slots)
* wall_ratio_vs_cached_plain = sweep wall ÷ the same configs run one after another in one
  process by `ermgap_ray.train.run_plain` (plain torch, no Ray, no DeepSpeed) WITH the encoder
  cache and one thread, as a sweep slot has: 2 slots make 0.5 the limit. By default every
  config is timed. `--cached-plain-seeds K` times the configs of seeds < K and gives each other
  config the mean of its (family, modality), since a trial's loop does not depend on its seed;
  but the plain loop's one-off costs (imports, the compile) land in its first config and are
  then counted once per seed, which flatters the sweep
* trial_slowdown_vs_plain = a trial's own wall inside the sweep (its loop's time_total_s, setup
  to last report) ÷ the same config's in the cached plain loop, Σ over the grid (extrapolated as
  the cached plain wall is): what running two trials at once under Ray costs each of them
* sweep_fixed_s = sweep wall − Σ trial wall ÷ slots: Ray's start, the input checks, the gaps
  between trials, the last trial's tail and the reports. The two explain the wall ratio:
  wall_ratio ≈ (trial_slowdown × Σ plain trial wall ÷ slots + sweep_fixed_s) ÷ cached plain wall
* wall_ratio_vs_uncached_plain = the same against a plain loop without the cache (a hand-written
  script re-encodes the audio every epoch); `--plain-sample K` times K of those (a zero-shot and
  trained ones) and extrapolates, since each takes minutes on 2 cores

With `torch_compile` (the paper preset's), one untimed 1-epoch trial in its own process first
fills the compiler cache, so that the sweep's slots and the plain loop each pay the same warm
once-per-process compile, as both read a warm encoder cache; the cold compile is part of the
README's end-to-end figure instead.

The sweep wall is `run_sweep` end to end: Ray start, input checks, every trial, results and
reports. The grid is the `paper` preset at 3 seeds and both modalities (48 trials, the grid the
efficiency issue was measured on); `--seeds 1 --modalities audio` is the 8-trial laptop cut,
where Ray's once-per-sweep start (≈ 15 s) is a large share of a 2-minute sweep. Prints ONE
JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from ermgap_ray.config import TrialConfig
from ermgap_ray.results import split_trial_config
from ermgap_ray.sweep import grid_trials, load_sweep_config, run_sweep


def _plain_sample(configs: list[TrialConfig], k: int) -> list[int]:
    """All configs, or k of them covering both costs: zero-shot (eval only) and training."""
    if k < 0 or k >= len(configs):
        return list(range(len(configs)))
    zero = [i for i, c in enumerate(configs) if c.epochs == 0]
    trained = [i for i, c in enumerate(configs) if c.epochs > 0]
    return (zero[:1] + trained[: max(1, k - 1)])[:k]


def _extrapolate(kinds: list[Any], seconds: dict[int, float]) -> float:
    """Σ over all configs: the timed cost where timed, else the mean timed cost of its kind."""
    total = 0.0
    for i, kind in enumerate(kinds):
        same = [s for j, s in seconds.items() if kinds[j] == kind]
        total += seconds[i] if i in seconds else sum(same) / len(same)
    return total


def _warm_compiler_cache(configs: list[TrialConfig], tmp: str) -> None:
    trained = next((c for c in configs if c.torch_compile and c.epochs > 0), None)
    if trained is None:
        return
    warm = os.path.join(tmp, "warm-compiler.yaml")
    with open(warm, "w") as f:
        json.dump({"trial": trained.replace(epochs=1).to_dict()}, f)  # JSON is YAML
    cmd = [sys.executable, "-m", "ermgap_ray.train", "--config", warm, "--storage", tmp]
    subprocess.run(cmd, check=True, stdout=sys.stderr)


def _time_plain(
    configs: list[TrialConfig], sample: list[int], use_cache: bool
) -> tuple[dict[int, float], dict[int, float]]:
    """Each sampled config's wall in the plain loop, and its loop's own `time_total_s`."""
    from ermgap_ray.train import run_plain

    seconds, trial_s = {}, {}
    with contextlib.redirect_stdout(sys.stderr):
        for i in sample:
            t0 = time.perf_counter()
            final = run_plain(configs[i], use_cache=use_cache)
            seconds[i] = time.perf_counter() - t0
            trial_s[i] = float(final["time_total_s"])
    return seconds, trial_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="Default: the paper preset's.")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--modalities", default="audio,audio+text", help="Comma-separated.")
    parser.add_argument("--cluster", default="local")
    parser.add_argument("--executor", default="auto", choices=("auto", "tune", "train"))
    parser.add_argument(
        "--no-reuse-actors", action="store_true", help="Start a fresh process per trial."
    )
    parser.add_argument(
        "--cached-plain-seeds",
        type=int,
        default=0,
        help="Cached plain baseline: time all configs (0), or those of seeds < K and extrapolate.",
    )
    parser.add_argument(
        "--plain-sample",
        type=int,
        default=2,
        help="Uncached plain baseline: time all configs (-1), none (0), or K and extrapolate.",
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
                "modalities": args.modalities.split(","),
                "executor": args.executor,
                "reuse_actors": not args.no_reuse_actors,
            },
            [] if args.epochs is None else [f"epochs={args.epochs}"],
        )
        grid = grid_trials(cfg)
        configs = [split_trial_config(t)[1] for t in grid]
        _warm_compiler_cache(configs, tmp)
        with contextlib.redirect_stdout(sys.stderr):
            t0 = time.perf_counter()
            result = run_sweep(cfg, progress_interval_s=30)
            sweep_wall = time.perf_counter() - t0
        import ray

        slots = cfg.max_concurrent or int(ray.cluster_resources().get("CPU", 1))
        trials = result.trials
        train_s = float(trials["time_epoch_s"].sum())
        trial_wall = float(trials.groupby("trial_id")["time_total_s"].max().sum())
    ray.shutdown()
    out = {
        "benchmark": "sweep_efficiency",
        "trials": len(configs),
        "epochs": max(c.epochs for c in configs),
        "executor": cfg.resolved_executor,
        "reuse_actors": cfg.reuse_actors,
        "torch_compile": any(c.torch_compile for c in configs),
        "slots": slots,
        "sweep_wall_s": round(sweep_wall, 1),
        "slot_efficiency": round(train_s / (sweep_wall * slots), 3),
        "slot_occupancy": round(trial_wall / (sweep_wall * slots), 3),
        "mean_trial_wall_s": round(trial_wall / max(1, len(configs)), 1),
        "sweep_fixed_s": round(sweep_wall - trial_wall / slots, 1),
        "errors": result.n_error,
    }
    import torch

    torch.set_num_threads(1)
    timed = [
        i
        for i, c in enumerate(configs)
        if args.cached_plain_seeds <= 0 or c.seed < args.cached_plain_seeds
    ]
    kinds = [(t["family"], t["modality"]) for t in grid]
    seconds, plain_trial_s = _time_plain(configs, timed, use_cache=True)
    cached_wall = _extrapolate(kinds, seconds)
    out |= {
        "cached_plain_trials_timed": len(seconds),
        "cached_plain_wall_s": round(cached_wall, 1),
        "wall_ratio_vs_cached_plain": round(sweep_wall / cached_wall, 3),
        "trial_slowdown_vs_plain": round(trial_wall / _extrapolate(kinds, plain_trial_s), 3),
    }
    if args.plain_sample != 0:
        sample = _plain_sample(configs, args.plain_sample)
        seconds, _ = _time_plain(configs, sample, use_cache=False)
        plain_wall = _extrapolate([c.epochs == 0 for c in configs], seconds)
        out |= {
            "uncached_plain_trials_timed": len(seconds),
            "uncached_plain_wall_s": round(plain_wall, 1),
            "wall_ratio_vs_uncached_plain": round(sweep_wall / plain_wall, 3),
        }
    out["load_avg_1m"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
