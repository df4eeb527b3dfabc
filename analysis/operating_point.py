"""Choose a deployment operating point from a sweep: the best W-F1 whose worst-language gender
gap is at most --max-gap points, on the pessimistic end of its CI over seeds.

    python analysis/operating_point.py RUN_DIR [--max-gap 2] [--min-wf1 50] [--min acc=55]

All values are percentage points. Without --max-gap the bound is the sweep's `constraints`
(sweep.json), else 2 points; the gap and objective default to the sweep's objectives.
Zero-shot and other untrained (epochs = 0) configurations are references, never candidates.
A configuration with one seed has no CI and is checked on its single value.

Writes RUN_DIR/operating_point.json (exit 0); when nothing qualifies it lists the closest
configurations and writes nothing (exit 1); bad input is one line (exit 2). Load the result
with `ermgap_ray.deploy.load_operating_point(path)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ermgap_ray.errors import user_errors
from ermgap_ray.registry import GAP_KINDS


def _floor(text: str) -> tuple[str, float]:
    metric, sep, value = text.partition("=")
    try:
        if not sep or not metric:
            raise ValueError
        return metric.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected METRIC=POINTS (e.g. wf1=50), got {text!r}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="sweep results directory")
    parser.add_argument(
        "--max-gap", type=float, default=None, help="gap bound in points (0-100); default above"
    )
    parser.add_argument(
        "--gap", default=None, choices=GAP_KINDS, help="gap kind: max_gap_<gap> (default: sweep)"
    )
    parser.add_argument("--objective", default=None, help="metric to maximise (default: sweep)")
    parser.add_argument("--min-wf1", type=float, default=None, help="W-F1 floor, in points")
    parser.add_argument(
        "--min",
        type=_floor,
        action="append",
        default=[],
        metavar="METRIC=POINTS",
        help="floor for any metric, in points (repeatable)",
    )
    parser.add_argument("--split", default="dev", choices=("dev", "test"), help="select on")
    parser.add_argument("--no-reevaluate", action="store_true", help="skip the test re-run")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    floors = dict(args.min)
    if args.min_wf1 is not None:
        floors["wf1"] = args.min_wf1
    try:
        from ermgap_ray.deploy import OPERATING_POINT_FILE, choose_operating_point

        point, record = choose_operating_point(
            args.run_dir,
            max_gap=args.max_gap,
            objective=args.objective,
            gap_metric=f"max_gap_{args.gap}" if args.gap else None,
            split=args.split,
            reevaluate=not args.no_reevaluate,
            floors=floors,
        )
    except (FileNotFoundError, *user_errors(), ValueError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    from ermgap_ray.pareto import describe_bounds, describe_config, parse_constraint

    bounds = describe_bounds([parse_constraint(c) for c in point.constraints])
    print(f"bounds ({point.bounds_source}): {bounds}; every number below is in points")
    print(f"seed rule: {point.rule}")
    print(point.reason)
    if record is None:
        print(
            f"no operating point written ({OPERATING_POINT_FILE} untouched): relax the bounds "
            "or run more seeds",
            file=sys.stderr,
        )
        return 1
    for runner in point.runners_up:
        print(f"  runner-up {describe_config(runner, point.objective)}")
    if "test" in record:
        test = record["test"]
        print(
            f"test (re-evaluated): wf1 {100 * test['test/wf1']:.1f} "
            f"[{100 * test['test/wf1_lo']:.1f}, {100 * test['test/wf1_hi']:.1f}], "
            f"max_gap_wf1 {100 * test['test/max_gap_wf1']:.1f} "
            f"[{100 * test['test/max_gap_wf1_lo']:.1f}, {100 * test['test/max_gap_wf1_hi']:.1f}]"
            " pts"
        )
    print(f"written: {args.run_dir / OPERATING_POINT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
