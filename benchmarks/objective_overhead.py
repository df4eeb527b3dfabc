"""Cost of the fairness objective per train step, one JSON line: step time ÷ the ERM step's.

A step is exactly one micro-batch of `Recipe.train_epoch` (grad_accum 1): forward,
per-sample CE, `group_stats`, the `GlobalBatch` surrogate, `objective.terms`, backward, clip and
AdamW, on the plain torch engine so no DeepSpeed cost dilutes the ratio. Every objective steps
the same SERModel (default tiny backbone, LoRA) on the same cached batches of 16 from the
default synthetic twin. Steps are interleaved round by round, in a shuffled order each round,
so all objectives see the same background load; the headline is the median over rounds of
t_objective / t_ERM (the mean-of-times ratio and a bootstrap 95% CI of the median come too).
`*_objective_us` times the objective alone (group_stats → terms → their backward, no model),
the deterministic part of the difference that step-level noise can hide; `*_implied_ratio` is
1 + (its extra µs over ERM's) / the ERM step.

    python benchmarks/objective_overhead.py [--reps 250] [--max-seconds 90] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ermgap_ray.config import TrialConfig
from ermgap_ray.data.sampler import GroupStratifiedBatchSampler, language_gender_groups
from ermgap_ray.features import SERDataset, collate_ser
from ermgap_ray.global_batch import GlobalBatch
from ermgap_ray.objective import Objective, build_objective, group_stats
from ermgap_ray.train import LocalSession, Recipe, prepare_trial_inputs
from ermgap_ray.train.evaluate import NUM_STRATA

TARGET = 1.03
NUM_BATCHES = 8
OBJECTIVE_CALLS = 2000
VARIANTS = {
    "erm": ("erm", 2),
    "minmaxgap_p2": ("minmaxgap", 2),
    "minmaxgap_p1": ("minmaxgap", 1),
    "groupdro": ("groupdro", 2),
}


def _batches(cfg: TrialConfig) -> list[dict[str, torch.Tensor]]:
    """The first stratified training batches the loop would see, collated once and reused."""
    inputs = prepare_trial_inputs(cfg, progress=False, check_audio=False)
    train = inputs.records[inputs.records["split"] == "train"].reset_index(drop=True)
    dataset = SERDataset(train, inputs.backbone_dir, cfg.modality, inputs.cache)
    sampler = GroupStratifiedBatchSampler(
        language_gender_groups(train), cfg.batch_size, seed=cfg.seed
    )
    batches = [collate_ser([dataset[i] for i in idx]) for idx in sampler]
    return batches[:NUM_BATCHES]


def _bootstrap_median_ci(ratios: np.ndarray, seed: int = 0, n: int = 2000) -> list[float]:
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(ratios, size=(n, len(ratios))), axis=1)
    return [round(float(q), 4) for q in np.quantile(medians, [0.025, 0.975])]


def _objective_us(objective: Objective, batch: dict[str, torch.Tensor], lam: float) -> float:
    """Median µs of the objective alone: group_stats, surrogate, terms and their backward, on
    fixed per-sample losses (the part of a step that differs between objectives)."""
    losses = torch.rand(len(batch["labels"]), dtype=torch.float32, requires_grad=True)
    samples = []
    for _ in range(OBJECTIVE_CALLS):
        t0 = time.perf_counter()
        sums, counts = group_stats(losses, batch["strata"], batch["genders"], NUM_STRATA)
        global_batch = GlobalBatch.from_local(sums, counts)
        terms = objective.terms(global_batch.surrogate(sums), global_batch.counts, lam)
        terms.loss.backward()
        samples.append(time.perf_counter() - t0)
    return 1e6 * float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=250, help="Timed rounds (one step each).")
    parser.add_argument(
        "--max-seconds", type=float, default=90.0, help="Stop the rounds early past this."
    )
    parser.add_argument("--warmup", type=int, default=10, help="Untimed rounds first.")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = TrialConfig()
    with contextlib.redirect_stdout(sys.stderr):
        batches = _batches(cfg)
    recipe = Recipe(cfg, LocalSession(Path(tempfile.mkdtemp()), keep=1), engine="torch")
    with contextlib.redirect_stdout(sys.stderr):
        recipe.setup()
    objectives = {
        name: build_objective(obj, p, NUM_STRATA, cfg.groupdro_eta)
        for name, (obj, p) in VARIANTS.items()
    }

    rng = np.random.default_rng(args.seed)
    times: dict[str, list[float]] = {name: [] for name in objectives}
    names = list(objectives)
    started = time.perf_counter()
    for rnd in range(args.warmup + args.reps):
        batch = batches[rnd % len(batches)]
        for i in rng.permutation(len(names)):
            name = names[i]
            t0 = time.perf_counter()
            recipe.objective, recipe.train_loader = objectives[name], [batch]
            recipe.train_epoch(0, cfg.lam)
            if rnd >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        if rnd % 50 == 0:
            print(f"round {rnd}/{args.warmup + args.reps}", file=sys.stderr, flush=True)
        if time.perf_counter() - started > args.max_seconds:
            print(f"stopping after round {rnd}: --max-seconds", file=sys.stderr)
            break

    arr = {name: np.asarray(t) for name, t in times.items()}
    out: dict[str, Any] = {"benchmark": "objective_overhead"}
    for name in names[1:]:
        ratios = arr[name] / arr["erm"]
        out[f"{name}_over_erm"] = round(float(np.median(ratios)), 4)
        out[f"{name}_over_erm_mean"] = round(float(arr[name].mean() / arr["erm"].mean()), 4)
        out[f"{name}_over_erm_ci95"] = _bootstrap_median_ci(ratios, args.seed)
    for name in names:
        out[f"{name}_step_ms"] = round(1e3 * float(np.median(arr[name])), 3)
    for name, (obj, p) in VARIANTS.items():
        fresh = build_objective(obj, p, NUM_STRATA, cfg.groupdro_eta)
        out[f"{name}_objective_us"] = round(_objective_us(fresh, batches[0], cfg.lam), 1)
    erm_step_us = 1e3 * out["erm_step_ms"]
    for name in names[1:]:
        extra_us = out[f"{name}_objective_us"] - out["erm_objective_us"]
        out[f"{name}_implied_ratio"] = round(1 + extra_us / erm_step_us, 4)
    out |= {
        "reps": len(times["erm"]),
        "batch_size": cfg.batch_size,
        "lam": cfg.lam,
        "threads": args.threads,
        "target": TARGET,
        "meets_target": out["minmaxgap_p2_over_erm"] <= TARGET,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
