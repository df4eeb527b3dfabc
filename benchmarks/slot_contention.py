"""Does this machine slow two concurrent trials down, without Ray? The hardware's share of a
sweep's per-trial slowdown (`sweep_efficiency.py`: a trial inside the sweep against alone).

One trained config of the paper grid (`--family`, audio, seed 0, the preset's epochs) runs in
`run_plain` (cached, 1 thread) in a fresh process: once to warm the encoder cache, once alone,
then twice at once. A 384×384 matmul chain does the same as a pure-compute control. Each
`*_pair_slowdown` is the pair's mean seconds ÷ the lone run's: 1.0 means the two slots are
independent, so whatever slows a trial inside a sweep is not the hardware. Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from typing import Any

SPAWN = mp.get_context("spawn")


def _matmul(out: Any) -> None:
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(384, 384), torch.randn(384, 384)
    t0 = time.perf_counter()
    for _ in range(400):
        a = (a @ b).tanh()
    out.put(time.perf_counter() - t0)


def _trial(out: Any, family: str) -> None:
    import torch

    from ermgap_ray.results import split_trial_config
    from ermgap_ray.sweep import grid_trials, load_sweep_config
    from ermgap_ray.train import run_plain

    torch.set_num_threads(1)
    sweep = load_sweep_config(
        "paper", {"seeds": 1, "modalities": ["audio"], "families": [family]}, []
    )
    cfg = split_trial_config(grid_trials(sweep)[0])[1]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run_plain(cfg, use_cache=True)
    out.put(time.perf_counter() - t0)


def _seconds(target: Callable[..., None], copies: int, *args: Any) -> list[float]:
    out = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(out, *args)) for _ in range(copies)]
    for p in procs:
        p.start()
    seconds = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="erm", help="The paper-grid family to time.")
    args = parser.parse_args()
    matmul_alone, matmul_pair = _seconds(_matmul, 1)[0], _seconds(_matmul, 2)
    _seconds(_trial, 1, args.family)
    trial_alone, trial_pair = _seconds(_trial, 1, args.family)[0], _seconds(_trial, 2, args.family)
    print(
        json.dumps(
            {
                "benchmark": "slot_contention",
                "family": args.family,
                "matmul_alone_s": round(matmul_alone, 2),
                "matmul_pair_s": [round(s, 2) for s in matmul_pair],
                "matmul_pair_slowdown": round(sum(matmul_pair) / 2 / matmul_alone, 3),
                "trial_alone_s": round(trial_alone, 1),
                "trial_pair_s": [round(s, 1) for s in trial_pair],
                "trial_pair_slowdown": round(sum(trial_pair) / 2 / trial_alone, 3),
                "load_avg_1m": os.getloadavg()[0],
            }
        )
    )


if __name__ == "__main__":
    main()
