"""One trial on 1 vs 2 Ray Train workers, and what Ray + DeepSpeed add to a trial; one JSON line.

Every trial is the default config (default tiny backbone, default synthetic twin, encoder cache)
with `epochs` changed only where named. Timed, in this order:

* the same configs through `Recipe(engine="torch")` (what `run_local` runs) in a child
  process: a plain torch optimizer, no Ray, no DeepSpeed, 1 torch thread like a worker;
* `ray.init(num_cpus=2, include_dashboard=False)`, then one untimed 1-epoch warm-up fit;
* `build_trainer(cfg, workers=1|2).fit()` for a short trial (`--epochs`, default 2), and the
  default trial (6 epochs) on 1 worker.

Each epoch's `time_epoch_s` (train + dev eval + checkpoint) is collected from every report.

* `startup_overhead_s` = fit wall − Σ epochs − (plain loop total − Σ its epochs): the fixed
  Ray + DeepSpeed cost beyond what a plain script also pays outside its epochs (model load).
  It splits into `ray_overhead_s` = fit wall − the loop's own `time_total_s` (workers, process
  group, report round-trips, shutdown) and `in_loop_setup_s` (model load + deepspeed.initialize).
* `overhead_fraction_default_trial` = that ÷ the default trial's fit wall;
  `total_overhead_fraction_default_trial` also counts the per-epoch cost of the DeepSpeed engine
  (`deepspeed_epoch_s` vs `local_torch_default_epoch_s`).

    python benchmarks/trial_scaling.py [--epochs 2] [--no-default] [--no-warmup]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ermgap_ray.config import TrialConfig
from ermgap_ray.train import (
    LocalSession,
    Recipe,
    build_trainer,
    final_metrics,
    prepare_trial_inputs,
)

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",  # RAY_NOTES: each report waits one poll
}
NOTE = (
    "One CPU box: the 2 workers share its 2 cores with the driver, the Ray processes and any "
    "other load (see loadavg), and each worker runs 1 torch thread, as the 1-worker trial does. "
    "Per-worker batch stays 16, so 2 workers take half the steps each at a global batch of 32 "
    "(same data per epoch, not the same optimisation path). So speedup_2_over_1 shows "
    "data-parallel scaling and gloo communication overhead on shared cores, not what 2 machines "
    "would give."
)


def _local(configs: dict[str, TrialConfig], root: str) -> dict[str, dict[str, Any]]:
    """The loop on plain torch (no Ray, no DeepSpeed, 1 thread like a worker): total and epoch
    times per config. Run in a child in its own session: Linux autogroup shares CPU between
    sessions, and Ray's processes have their own, so on a loaded machine this is a fair match."""
    torch.set_num_threads(1)
    inputs = prepare_trial_inputs(next(iter(configs.values())), progress=False)
    out = {}
    for key, cfg in configs.items():
        session = LocalSession(Path(root) / f"local-{key}", cfg.keep_checkpoints)
        final = Recipe(cfg, session, inputs=inputs, engine="torch", verbose=False).run()
        epochs = [float(m["time_epoch_s"]) for m in session.reports]
        out[key] = {"total_s": float(final["time_total_s"]), "epoch_s": epochs}
        print(f"local torch {key}: {out[key]['total_s']:.1f}s", file=sys.stderr, flush=True)
    return out


def _epoch_log(path: Path) -> Any:
    """A Ray Train callback that appends rank 0's epoch time of every report to `path`.

    It runs in the Train controller, another process on this machine, hence the file."""
    from ray.train import UserCallback

    class EpochLog(UserCallback):
        def after_report(self, run_context: Any, metrics: list[dict], checkpoint: Any) -> None:
            with open(path, "a") as f:
                f.write(json.dumps(float(metrics[0]["time_epoch_s"])) + "\n")

    return EpochLog()


def _fit(cfg: TrialConfig, workers: int, storage: Path) -> dict[str, Any]:
    """Driver wall of one `fit()`, the loop time rank 0 reported, and its epoch times."""
    name = f"w{workers}-e{cfg.epochs}-{uuid.uuid4().hex[:8]}"
    log = storage / f"{name}.epochs"
    trainer = build_trainer(
        cfg,
        workers=workers,
        name=name,
        storage_path=str(storage),
        callbacks=[_epoch_log(log)],
        verbose=False,
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    loop = float(final_metrics(result)["time_total_s"])
    epochs = [float(line) for line in log.read_text().split()]
    print(f"fit workers={workers} epochs={cfg.epochs}: {wall:.1f}s", file=sys.stderr, flush=True)
    return {"wall_s": wall, "loop_s": loop, "epoch_s": epochs}


def _startup(fit: dict[str, Any], local: dict[str, Any]) -> float:
    """Fixed overhead: the fit's wall outside its epochs, less what the plain loop also spends
    outside its epochs (model load, datasets, the cache re-open)."""
    return fit["wall_s"] - sum(fit["epoch_s"]) - (local["total_s"] - sum(local["epoch_s"]))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _r(x: float) -> float:
    return round(x, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="Epochs of the 1 vs 2 worker trial.")
    parser.add_argument(
        "--no-default", action="store_true", help="Skip the default (6-epoch) trial."
    )
    parser.add_argument(
        "--no-warmup", action="store_true", help="Skip the untimed 1-epoch warm-up fit."
    )
    args = parser.parse_args()
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)

    json_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # Ray, DeepSpeed and worker logs all go to stderr; stdout keeps one JSON line

    torch.set_num_threads(1)
    default = TrialConfig()
    short = default.replace(epochs=args.epochs)
    out: dict[str, Any] = {"benchmark": "trial_scaling", "epochs": args.epochs}
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ermgap-scaling-") as tmp:
        root = Path(tmp)
        prepare_trial_inputs(default)
        configs = {"short": short} | ({} if args.no_default else {"default": default})
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=spawn, initializer=os.setsid) as pool:
            local = pool.submit(_local, configs, tmp).result()

        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False)
        out["ray_init_s"] = _r(time.perf_counter() - t0)
        storage = root / "ray"
        storage.mkdir()
        if not args.no_warmup:
            out["warmup_fit_s"] = _r(_fit(default.replace(epochs=1), 1, storage)["wall_s"])
        fits = {"workers1": _fit(short, 1, storage), "workers2": _fit(short, 2, storage)}
        if not args.no_default:
            fits["default_workers1"] = _fit(default, 1, storage)
        ray.shutdown()

    w1, w2 = fits["workers1"], fits["workers2"]
    out |= {
        "workers1_s": _r(w1["wall_s"]),
        "workers2_s": _r(w2["wall_s"]),
        "speedup_2_over_1": _r(w1["wall_s"] / w2["wall_s"]),
        "workers1_epoch_s": _r(_mean(w1["epoch_s"])),
        "workers2_epoch_s": _r(_mean(w2["epoch_s"])),
        "epoch_speedup_2_over_1": _r(_mean(w1["epoch_s"]) / _mean(w2["epoch_s"])),
        "local_torch_epoch_s": _r(_mean(local["short"]["epoch_s"])),
        "workers1_startup_overhead_s": _r(_startup(w1, local["short"])),
        "workers2_startup_overhead_s": _r(_startup(w2, local["short"])),
    }
    if "default_workers1" in fits:
        fit, plain = fits["default_workers1"], local["default"]
        startup = _startup(fit, plain)
        out |= {
            "default_epochs": default.epochs,
            "default_trial_s": _r(fit["wall_s"]),
            "default_local_torch_s": _r(plain["total_s"]),
            "startup_overhead_s": _r(startup),
            "ray_overhead_s": _r(fit["wall_s"] - fit["loop_s"]),
            "in_loop_setup_s": _r(fit["loop_s"] - sum(fit["epoch_s"])),
            "local_setup_s": _r(plain["total_s"] - sum(plain["epoch_s"])),
            "overhead_fraction_default_trial": _r(startup / fit["wall_s"]),
            "deepspeed_epoch_s": _r(_mean(fit["epoch_s"])),
            "local_torch_default_epoch_s": _r(_mean(plain["epoch_s"])),
            "total_overhead_fraction_default_trial": _r(
                (fit["wall_s"] - plain["total_s"]) / fit["wall_s"]
            ),
        }
    out |= {
        "loadavg_1m_start": round(load_start, 2),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "total_s": _r(time.perf_counter() - started),
        "note": NOTE,
    }
    print(json.dumps(out), file=json_out, flush=True)


if __name__ == "__main__":
    main()
