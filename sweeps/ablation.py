"""The front door: `python sweeps/ablation.py --cluster auto` runs the paper's ablation."""

from __future__ import annotations

import argparse
import sys

from ermgap_ray.config import help_lines
from ermgap_ray.train import user_errors

PRESETS = """presets (sweeps/<name>.yaml; flags below override them):
  paper   the paper's ablation grid: zero-shot, ERM, fixed lambda x p in {1,2}, adaptive
          lambda x p in {1,2}, Group DRO and mean-gap, x modality {audio, audio+text} x 3 seeds
  search  Optuna multi-objective search (max dev/wf1, min dev/max_gap_wf1) over p, fixed vs
          adaptive lambda (lam | eta, epsilon, lam_max, lam as lambda_0), lr and lora_r
  smoke   a tiny grid then a tiny search, one epoch each: the CI check that it all runs
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python sweeps/ablation.py",
        description="Run an ERM-MinMaxGAP sweep on a Ray cluster; results go to STORAGE/NAME "
        "(trials.parquet, sweep.json, optuna.db, Ray's restorable experiment, reports).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=PRESETS
        + "\ntrial config keys (for --set and a preset's `trial:`):\n"
        + "\n".join(help_lines()),
    )
    p.add_argument("--preset", default="paper", help="paper | search | smoke | a YAML path.")
    p.add_argument(
        "--cluster",
        help="auto (default: RAY_ADDRESS, else a running local head, else start one here), "
        "local (always start one here) or HOST:PORT.",
    )
    p.add_argument("--name", help="Run name (default: the preset's name).")
    p.add_argument("--storage", help="Folder of run directories (default: runs).")
    p.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial (1).")
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per Train worker (0 = CPU).")
    p.add_argument(
        "--max-concurrent", type=int, help="Trials at once (default: as many as fit the cluster)."
    )
    p.add_argument("--num-samples", type=int, help="Search: number of Optuna trials.")
    p.add_argument("--sampler", choices=("nsga2", "tpe", "random"), help="Search: sampler.")
    p.add_argument("--seeds", type=int, help="Grid: seeds per family and modality.")
    p.add_argument(
        "--objective",
        action="append",
        metavar="METRIC:max|min",
        help="Search objective, repeatable (default: dev/wf1:max dev/max_gap_wf1:min).",
    )
    p.add_argument(
        "--resume", action="store_true", help="Continue STORAGE/NAME; finished trials are kept."
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="Trial config override."
    )
    p.add_argument("--debug", action="store_true", help="Full tracebacks for input errors.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ermgap_ray.sweep import load_sweep_config, run_sweep

    flags = {
        "name": args.name,
        "cluster": args.cluster,
        "storage": args.storage,
        "workers_per_trial": args.workers_per_trial,
        "gpus_per_worker": args.gpus_per_worker,
        "max_concurrent": args.max_concurrent,
        "num_samples": args.num_samples,
        "sampler": args.sampler,
        "seeds": args.seeds,
        "objectives": args.objective,
        "resume": args.resume or None,
    }
    try:
        run_sweep(load_sweep_config(args.preset, flags, args.set), quiet=not args.debug)
    except KeyboardInterrupt as err:
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return 130
    except user_errors() as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
