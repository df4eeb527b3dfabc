"""Where a short trial's CPU goes: CPU-seconds per trial, by Ray process, during a real sweep.

Runs a small grid through `run_sweep` (the front door's code path) while a sampler thread
reads every process's CPU time from /proc, keyed by its Ray title (`ray::RayTrainWorker`,
`ray::TrainController`, `ray::ImplicitFunc` = the Tune trainable, and the helper actors each
Train run starts). On 2 cores a sweep is CPU-bound, so CPU-seconds, not wall, are what a trial
costs. Ratios printed:

* per executor (`tune`: the loop in the Tune trainable; `train`: a Ray Train TorchTrainer):
  fixed_cpu_s_per_trained_trial = all trial CPU − loop CPU (Σ cpu_epoch_s: train + dev +
  test), with the breakdown by process, and overhead_fraction = fixed ÷ all
* cpu_s_per_zero_shot_trial: a zero-shot trial, evaluated in its trainable

Linux only (/proc). Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import ray

from ermgap_ray.sweep import load_sweep_config, run_sweep

TICKS = os.sysconf("SC_CLK_TCK")
# The processes a trial starts: its trainable, the Train controller and workers, and the helper
# actors of one Train run. Everything else (raylet, GCS, dashboard, idle workers) is the cluster.
TRIAL_PROCESSES = (
    "ImplicitFunc",
    "TrainController",
    "RayTrainWorker",
    "SynchronizationActor",
    "PlacementGroupCleaner",
    "DatasetManager",
    "_QueueActor",
    "PreemptionWatcher",
)


def _kind(cmdline: str) -> str:
    """A trial process by its Ray title (titles can be cut short: `ray::TrainContr`), else
    `cluster:<program>` (raylet, gcs_server, dashboard.py, ray::IDLE workers, ...)."""
    first = cmdline.split()[0] if cmdline.split() else "?"
    name = first.removeprefix("ray::")
    for known in TRIAL_PROCESSES:
        if first.startswith("ray::") and len(name) >= 8 and known.startswith(name):
            return known
    if first.startswith("ray::"):
        return f"cluster:{first}"
    scripts = [Path(a).name for a in cmdline.split()[1:3] if a.endswith(".py")]
    return f"cluster:{scripts[0] if scripts else Path(first).name}"


class CpuSampler(threading.Thread):
    """Last-seen CPU seconds and title of every process that started after `start()`."""

    def __init__(self, interval_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.before = set(self._pids())
        self.cpu: dict[int, float] = {}
        self.title: dict[int, str] = {}
        self._stop_event = threading.Event()

    @staticmethod
    def _pids() -> list[int]:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]

    def run(self) -> None:
        while not self._stop_event.is_set():
            for pid in self._pids():
                if pid in self.before:
                    continue
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    cmd = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ").strip()
                except OSError:
                    continue
                fields = stat[stat.rfind(")") + 2 :].split()
                self.cpu[pid] = (int(fields[11]) + int(fields[12])) / TICKS
                if cmd:  # an exiting process has an empty cmdline: keep its last title
                    self.title[pid] = _kind(cmd)
                else:
                    self.title.setdefault(pid, "cluster:kernel or exited")
            time.sleep(self.interval_s)

    def stop(self) -> dict[str, float]:
        self._stop_event.set()
        self.join()
        by_title: dict[str, float] = collections.Counter()
        for pid, seconds in self.cpu.items():
            by_title[self.title.get(pid, "cluster:?")] += seconds
        return dict(by_title)


def _sweep(tmp: str, name: str, families: list[str], seeds: int, extra: dict, sets: list[str]):
    cfg = load_sweep_config(
        "smoke",
        {
            "storage": tmp,
            "kind": "grid",
            "cluster": "local",
            "modalities": ["audio"],
            "name": name,
            "families": families,
            "seeds": seeds,
            **extra,
        },
        sets,
    )
    sampler = CpuSampler()
    sampler.start()
    started = time.perf_counter()
    result = run_sweep(cfg, progress_interval_s=60)
    wall = time.perf_counter() - started
    ray.shutdown()
    time.sleep(2)  # let the last actor processes exit and be sampled
    return sampler.stop(), result.trials, wall


def _trial_cpu(cpu: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in cpu.items() if not k.startswith("cluster:")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trained", type=int, default=4, help="ERM trials (seeds).")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--executors", default="tune,train", help="Comma-separated: tune, train (both default)."
    )
    parser.add_argument("--no-reuse-actors", action="store_true")
    args = parser.parse_args()
    sets = [f"epochs={args.epochs}", "bootstrap=100"]
    out: dict = {
        "benchmark": "trial_overhead",
        "epochs": args.epochs,
        "trained_trials": args.trained,
    }
    with tempfile.TemporaryDirectory(prefix="ermgap-bench-") as tmp:
        for executor in args.executors.split(","):
            extra = {"executor": executor, "reuse_actors": not args.no_reuse_actors}
            cpu, trials, wall = _sweep(tmp, f"t-{executor}", ["erm"], args.trained, extra, sets)
            per_process = _trial_cpu(cpu)
            total = sum(per_process.values()) / args.trained
            loop = float(trials["cpu_epoch_s"].sum()) / args.trained
            cluster = {k: v for k, v in cpu.items() if k.startswith("cluster:")}
            out[executor] = {
                "cpu_s_per_trained_trial": round(total, 2),
                "loop_cpu_s_per_trained_trial": round(loop, 2),
                "fixed_cpu_s_per_trained_trial": round(total - loop, 2),
                "overhead_fraction": round(1 - loop / total, 3),
                "cpu_s_per_trained_trial_by_process": {
                    k: round(v / args.trained, 2)
                    for k, v in sorted(per_process.items(), key=lambda kv: -kv[1])
                },
                "cluster_cpu_s_whole_sweep": round(sum(cluster.values()), 1),
                "wall_s": round(wall, 1),
            }
        zero_cpu, _, zero_wall = _sweep(tmp, "zero", ["zero-shot"], 2, {}, sets)
    out["cpu_s_per_zero_shot_trial"] = round(sum(_trial_cpu(zero_cpu).values()) / 2, 2)
    out["reuse_actors"] = not args.no_reuse_actors
    out["load_avg_1m"] = os.getloadavg()[0]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
