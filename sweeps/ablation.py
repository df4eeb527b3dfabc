"""The front door: `python sweeps/ablation.py --cluster auto` runs the paper's ablation."""

from __future__ import annotations

import argparse
import sys

from ermgap_ray.config import HelpFormatter, help_lines
from ermgap_ray.errors import user_errors
from ermgap_ray.registry import SAMPLERS, TRACKERS

PRESETS = """presets (sweeps/<name>.yaml; flags below override them):
  paper   the paper's ablation grid: zero-shot, ERM, fixed lambda x p in {1,2}, adaptive
          lambda x p in {1,2}, Group DRO and mean-gap, x modality {audio, audio+text} x seeds
  search  Optuna multi-objective search (max dev/wf1, min dev/max_gap_wf1) over p, fixed vs
          adaptive lambda (lam | eta, epsilon, lam_max, lam as lambda_0), lr and lora_r
  smoke   a tiny grid then a tiny search, one epoch each: the CI check that it all runs
  robustness  ERM vs adaptive-p2 on audio: rerun the claim on another twin with
          --set twin_seed=11, --set twin_bias=none (the control) or --set twin_bias=underrep

executors (--executor):
  auto    train whenever a trial has more than one worker or any GPU, else tune
  tune    the trial's loop runs inside its Tune trainable: one CPU worker, no worker group
  train   a Ray Train TorchTrainer per trial, with DeepSpeed ZeRO (data parallel, GPUs)

--resume continues STORAGE/NAME exactly as it was started (sweep.json): --cluster and
--storage may change; any other flag or --set that differs from sweep.json is refused.
"""
EXAMPLES = """examples:
  python sweeps/ablation.py --cluster auto                  # the paper's grid on the twin
  python sweeps/ablation.py --preset smoke --name try1      # a 2-minute end-to-end check
  python sweeps/ablation.py --preset search --num-samples 32 --set epochs=2
  python sweeps/ablation.py --seeds 5 --set data=meld-st:/data/MELD-ST \
      --set backbone=/ckpt/Qwen2-Audio-7B --workers-per-trial 4 --gpus-per-worker 1
  python sweeps/ablation.py --name paper --resume           # after Ctrl-C, SIGTERM or a crash
"""
# Flags that name a SweepConfig knob; None means "not given", so the preset's value holds.
FLAG_KNOBS = (
    "name",
    "cluster",
    "storage",
    "workers_per_trial",
    "gpus_per_worker",
    "executor",
    "max_concurrent",
    "num_samples",
    "sampler",
    "seeds",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python sweeps/ablation.py",
        description="Run an ERM-MinMaxGAP sweep on a Ray cluster; results go to STORAGE/NAME "
        "(trials.parquet, sweep.json, optuna.db, Ray's restorable experiment, reports). "
        "Flags left out keep the preset's value.",
        formatter_class=HelpFormatter,
        epilog=PRESETS
        + "\ntrial config keys (for --set and a preset's `trial:`):\n"
        + "\n".join(help_lines())
        + "\n\n"
        + EXAMPLES,
    )
    p.add_argument(
        "--preset",
        default=None,
        help="paper | search | smoke | robustness | a YAML path (default: paper).",
    )
    p.add_argument(
        "--cluster",
        help="auto (RAY_ADDRESS, else a running local head, else start one here), "
        "local (always start one here) or HOST:PORT (preset: auto).",
    )
    p.add_argument("--name", help="Run name (preset: the preset's name).")
    p.add_argument("--storage", help="Folder of run directories (preset: runs).")
    p.add_argument("--workers-per-trial", type=int, help="Ray Train workers per trial (preset: 1).")
    p.add_argument(
        "--gpus-per-worker", type=float, help="GPUs per trial worker; 0 = CPU (preset: 0)."
    )
    p.add_argument(
        "--executor",
        choices=("auto", "tune", "train"),
        help="Where a trial's loop runs (see 'executors' below; preset: auto).",
    )
    p.add_argument(
        "--max-concurrent", type=int, help="Trials at once (preset: as many as fit the cluster)."
    )
    p.add_argument(
        "--num-samples",
        type=int,
        help="Search: number of Optuna trials (preset: search 24, smoke 2).",
    )
    p.add_argument(
        "--sampler",
        choices=SAMPLERS,
        help="Search: Optuna sampler; auto picks by budget: < 12 trials random, a conditional "
        "space TPE, else GP up to 200 trials, then TPE (preset: search auto, smoke random).",
    )
    p.add_argument(
        "--constraint",
        action="append",
        metavar="METRIC<=VALUE",
        help="Search: a bound the sampler steers toward and the operating point defaults to, in "
        "the metric's units (fractions), repeatable, e.g. dev/max_gap_wf1<=0.05 (preset: none).",
    )
    p.add_argument(
        "--no-warm-start",
        dest="warm_start",
        action="store_false",
        default=None,
        help="Search: do not evaluate the paper grid's configurations first (preset: they are "
        "evaluated first).",
    )
    p.add_argument(
        "--tracker",
        action="append",
        choices=TRACKERS,
        help="Log trials to TensorBoard and/or MLflow, repeatable (needs the [tracking] extra; "
        "preset: none).",
    )
    p.add_argument(
        "--seeds",
        type=int,
        help="Grid: seeds per family and modality (preset: paper 12, robustness 10, smoke 1).",
    )
    p.add_argument(
        "--objective",
        action="append",
        metavar="METRIC:max|min",
        help="Search objective, repeatable (preset: dev/wf1:max dev/max_gap_wf1:min).",
    )
    p.add_argument(
        "--resume", action="store_true", help="Continue STORAGE/NAME; finished trials are kept."
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="Trial config override."
    )
    p.add_argument(
        "--verbose", action="store_true", help="Keep DeepSpeed / transformers progress output."
    )
    p.add_argument("--debug", action="store_true", help="Full tracebacks for input errors.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from ermgap_ray.config import parse_overrides
    from ermgap_ray.quiet import quiet_libraries
    from ermgap_ray.sweep import load_sweep_config, run_sweep

    if not (args.verbose or args.debug):
        quiet_libraries()

    flags = {knob: getattr(args, knob) for knob in FLAG_KNOBS}
    flags["objectives"] = args.objective
    flags["constraints"] = args.constraint
    flags["trackers"] = args.tracker
    flags["warm_start"] = args.warm_start
    flags["resume"] = args.resume or None
    try:
        explicit = {k for k, v in flags.items() if v is not None}
        explicit |= {f"trial.{k}" for k in parse_overrides(args.set)}
        if args.preset is not None:
            explicit.add("preset")
        cfg = load_sweep_config(args.preset or "paper", flags, args.set)
        run_sweep(cfg, quiet=not args.debug, explicit=explicit)
    except KeyboardInterrupt as err:
        print(f"interrupted: {err}" if str(err) else "interrupted", file=sys.stderr)
        return 143 if getattr(err, "terminated", False) else 130
    except user_errors() as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
