"""`python -m ermgap_ray.train`: one trial, here or on Ray Train."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ermgap_ray.config import HelpFormatter, help_lines, load_trial_config, safe_run_name
from ermgap_ray.errors import ConfigError, user_errors
from ermgap_ray.fs import ensure_writable_dir
from ermgap_ray.quiet import quiet_libraries

EXAMPLES = """examples:
  python -m ermgap_ray.train                                   # ERM-MinMaxGAP on the twin, here
  python -m ermgap_ray.train --set objective=erm --set lam=0   # the ERM baseline
  python -m ermgap_ray.train --set lambda_mode=adaptive --set epochs=4 --name adaptive
  python -m ermgap_ray.train --name adaptive --resume          # continue after a crash
  python -m ermgap_ray.train --workers 2 --zero 3 --cluster auto   # Ray Train, DeepSpeed ZeRO-3
"""
SUMMARY_KEYS = (
    "lambda",
    "lambda_next",
    "epoch",
    "adapter_path",
    "predictions_path",
    "time_total_s",
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ermgap_ray.train",
        description="Run one ERM-MinMaxGAP trial. With --workers 1 and no --cluster it runs in "
        "this process; otherwise as a Ray Train TorchTrainer with DeepSpeed ZeRO.",
        formatter_class=HelpFormatter,
        epilog="config keys (for the YAML file and --set):\n"
        + "\n".join(help_lines())
        + "\n\n"
        + EXAMPLES,
    )
    p.add_argument(
        "--config", help="YAML file of config keys (optionally under `trial:`) (default: none)."
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="Config override."
    )
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (data parallel).")
    p.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray Train worker (0 = CPU)."
    )
    p.add_argument(
        "--zero",
        type=int,
        choices=(2, 3),
        help="DeepSpeed ZeRO stage (default: the config's zero_stage, 2).",
    )
    p.add_argument(
        "--cluster", help="Run on Ray: auto | local | HOST:PORT (default: none, in this process)."
    )
    p.add_argument("--storage", default="runs", help="Where runs and checkpoints go.")
    p.add_argument("--name", help="Run name (default: trial-<config hash>).")
    p.add_argument("--resume", action="store_true", help="Continue from the latest checkpoint.")
    p.add_argument(
        "--verbose", action="store_true", help="Keep DeepSpeed / transformers progress output."
    )
    p.add_argument("--debug", action="store_true", help="Show full tracebacks.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.verbose:
        quiet_libraries()
    try:
        overrides = list(args.set) + ([f"zero_stage={args.zero}"] if args.zero else [])
        cfg = load_trial_config(args.config, overrides)
        name = safe_run_name(args.name or f"trial-{cfg.config_hash()}")
        storage = ensure_writable_dir(args.storage)
        on_ray = args.workers > 1 or args.gpus_per_worker > 0 or args.cluster is not None
        if not on_ray and (storage / name).exists() and not args.resume:
            raise ConfigError(f"{storage / name} exists; pass --resume or a new --name")
        from ermgap_ray.train.recipe import prepare_trial_inputs

        inputs = prepare_trial_inputs(cfg)
        if on_ray:
            final = _run_on_ray(cfg, args, name, storage)
        else:
            from ermgap_ray.train.launch import run_local

            final = run_local(cfg, storage / name, resume=args.resume, inputs=inputs)
    except Exception as err:  # noqa: BLE001 - one line for users, the traceback with --debug
        if args.debug or not isinstance(err, user_errors()):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    keep = {k: v for k, v in final.items() if k.startswith(("dev/", "test/")) or k in SUMMARY_KEYS}
    print(json.dumps(keep, sort_keys=True))
    return 0


def _run_on_ray(cfg: Any, args: argparse.Namespace, name: str, storage: Path) -> dict:
    from ermgap_ray.cluster import connect
    from ermgap_ray.train.launch import build_trainer, final_metrics

    info = connect(args.cluster or "auto")
    print(info.describe(), flush=True)
    trainer = build_trainer(
        cfg,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        name=name,
        storage_path=str(storage),
    )
    return final_metrics(trainer.fit())
