"""What `torch_compile` buys a trial process on the tiny backbone, and what it costs.

Each run is a fresh process (as a sweep slot is) that trains two 6-epoch ERM trials one after
the other with one torch thread and the encoder cache, eager or compiled; eager and compiled
processes alternate, `--reps` of each.

* epoch_ratio_compiled_vs_eager = median train-only epoch (epochs 2 to N-1 of both trials: the
  first holds the compile, the last the dev and test scoring) compiled ÷ eager
* first_trial_ratio = a process's first trial, compile included, compiled ÷ eager
* later_trial_ratio = its second trial (what every later trial of a reused Tune trainable
  pays), compiled ÷ eager
* compile_once_s = a compiled process's first trial − its second, less the same difference in
  the eager processes (imports, first-call warm-up): the once-per-process compile

`--cold-compiler` gives the compiled processes an empty inductor cache (TORCHINDUCTOR_CACHE_DIR),
as on a fresh machine; by default they share one that the first compiled process fills, and
that process's first trial is left out of the ratios. Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(compiled: bool) -> None:
    """Two trials in this process; prints their wall and per-epoch loop times as JSON."""
    import contextlib
    import io

    import torch

    from ermgap_ray.config import TrialConfig
    from ermgap_ray.train.recipe import Recipe
    from ermgap_ray.train.session import LocalSession

    torch.set_num_threads(1)
    trials = []
    for seed in (0, 1):
        cfg = TrialConfig(objective="erm", seed=seed, torch_compile=compiled)
        with tempfile.TemporaryDirectory() as tmp:
            session = LocalSession(Path(tmp), cfg.keep_checkpoints)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                Recipe(cfg, session, engine="torch", verbose=False).run()
            wall = time.perf_counter() - t0
        trials.append({"wall": wall, "epochs": [r["time_epoch_s"] for r in session.reports]})
    print(json.dumps(trials))


def _run(compiled: bool, inductor_dir: str) -> list[dict]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": inductor_dir}
    cmd = [sys.executable, __file__, "--child", "compiled" if compiled else "eager"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2, help="Processes of each kind.")
    parser.add_argument("--cold-compiler", action="store_true")
    parser.add_argument("--child", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child == "compiled")
        return

    with tempfile.TemporaryDirectory(prefix="ermgap-inductor-") as shared:
        runs: dict[bool, list[list[dict]]] = {False: [], True: []}
        for rep in range(args.reps + (0 if args.cold_compiler else 1)):
            for compiled in (False, True):
                if rep == args.reps and not compiled:
                    continue
                cache = tempfile.mkdtemp(dir=shared) if args.cold_compiler else shared
                runs[compiled].append(_run(compiled, cache))
                print(f"rep {rep} {'compiled' if compiled else 'eager'} done", file=sys.stderr)
    if not args.cold_compiler:
        runs[True] = runs[True][1:]  # the process that filled the shared cache

    def epochs(kind: bool) -> list[float]:
        return [e for proc in runs[kind] for trial in proc for e in trial["epochs"][1:-1]]

    def trial_wall(kind: bool, i: int) -> float:
        return statistics.mean(proc[i]["wall"] for proc in runs[kind])

    eager_warmup = trial_wall(False, 0) - trial_wall(False, 1)
    print(
        json.dumps(
            {
                "benchmark": "compile_speedup",
                "cold_compiler": args.cold_compiler,
                "processes_each": len(runs[False]),
                "eager_epoch_s": round(statistics.median(epochs(False)), 3),
                "compiled_epoch_s": round(statistics.median(epochs(True)), 3),
                "epoch_ratio_compiled_vs_eager": round(
                    statistics.median(epochs(True)) / statistics.median(epochs(False)), 3
                ),
                "first_trial_ratio": round(trial_wall(True, 0) / trial_wall(False, 0), 3),
                "later_trial_ratio": round(trial_wall(True, 1) / trial_wall(False, 1), 3),
                "compile_once_s": round(
                    trial_wall(True, 0) - trial_wall(True, 1) - eager_warmup, 1
                ),
                "load_avg_1m": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
