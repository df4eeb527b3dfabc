"""Paired comparison of a method against a baseline family: Δ = method − baseline per headline
metric over the seeds both ran (same seed = same LoRA init and data order), in points, with its
95% Student-t interval and the two-sided paired t-test p. Prints a table, then one JSON line.

    python analysis/compare.py RUN_DIR --method adaptive-p2 [--baseline erm] [--split test]
        [--modality audio]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ermgap_ray.compare import (
    HEADLINE_METRICS,
    comparison_json,
    format_comparison,
    paired_comparison,
)
from ermgap_ray.data.schema import MODALITIES
from ermgap_ray.pareto import final_rows
from ermgap_ray.registry import BASELINE_FAMILY
from ermgap_ray.report import load_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="sweep results directory (holds trials.parquet)")
    parser.add_argument("--method", required=True, help="family to test, e.g. adaptive-p2")
    parser.add_argument("--baseline", default=BASELINE_FAMILY, help="family to compare against")
    parser.add_argument("--split", choices=("dev", "test"), default="test", help="metrics to use")
    parser.add_argument("--modality", choices=MODALITIES, default=None, help="default: each")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=list(HEADLINE_METRICS),
        help="flat metric names (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        df, _ = load_run(args.run_dir)
        frame = paired_comparison(
            final_rows(df), args.method, args.baseline, args.metrics, args.split, args.modality
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.method} − {args.baseline}, {args.split} split, paired by seed (pp)")
    print(format_comparison(frame))
    context = {"run": str(args.run_dir), "method": args.method, "baseline": args.baseline}
    print(comparison_json(frame, **context, split=args.split, unit="pp"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
