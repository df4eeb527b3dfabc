"""Choose a deployment operating point from a sweep: the best W-F1 whose worst-language gender
gap is at most --max-gap points on the upper end of its CI over seeds.

    python analysis/operating_point.py RUN_DIR --max-gap 2 [--objective wf1]

Writes RUN_DIR/operating_point.json; load it back with
`ermgap_ray.deploy.load_operating_point(path)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ermgap_ray.deploy import choose_operating_point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="sweep results directory")
    parser.add_argument("--max-gap", type=float, default=2.0, help="gap bound, in points")
    parser.add_argument("--gap", default="wf1", choices=("tpr", "fpr", "wf1", "acc", "avg"))
    parser.add_argument("--objective", default="wf1", help="metric to maximise (e.g. wf1, acc)")
    parser.add_argument("--split", default="dev", choices=("dev", "test"), help="select on")
    parser.add_argument("--no-reevaluate", action="store_true", help="skip the test re-run")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        point, record = choose_operating_point(
            args.run_dir,
            max_gap=args.max_gap,
            objective=args.objective,
            gap_metric=f"max_gap_{args.gap}",
            split=args.split,
            reevaluate=not args.no_reevaluate,
        )
    except (FileNotFoundError, ValueError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(point.reason)
    if record is None:
        print("no operating point written: relax --max-gap or run more seeds", file=sys.stderr)
        return 1
    for runner in point.runners_up:
        print(
            f"  runner-up {runner['group_hash']} ({runner['family']}, {runner['modality']}): "
            f"{point.objective} {100 * runner['objective_mean']:.1f}, "
            f"gap upper end {100 * runner['constraint_bound_used']:.1f} pts"
        )
    if "test" in record:
        test = record["test"]
        print(
            f"test (re-evaluated): wf1 {100 * test['test/wf1']:.1f} "
            f"[{100 * test['test/wf1_lo']:.1f}, {100 * test['test/wf1_hi']:.1f}], "
            f"max_gap_wf1 {100 * test['test/max_gap_wf1']:.1f} "
            f"[{100 * test['test/max_gap_wf1_lo']:.1f}, {100 * test['test/max_gap_wf1_hi']:.1f}]"
        )
    print(f"written: {args.run_dir / 'operating_point.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
