"""Pareto fronts of a sweep (W-F1 vs worst-language gender gap), optionally with the deployment
operating point and hypervolume-vs-trials curves of several runs.

    python analysis/pareto.py RUN_DIR [--split dev|test] [--gap wf1|avg] [--by-language]
        [--max-gap 2 --objective wf1] [--hypervolume OTHER_RUN_DIR ...] [--html]

--html also writes report.html, the self-contained interactive explorer (the sweep writes it
too): open it from disk in any browser; it needs the [html] extra (plotly).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ermgap_ray.pareto import select_operating_point
from ermgap_ray.registry import GAP_KINDS
from ermgap_ray.report import (
    REPORT_HTML,
    hypervolume_over_trials,
    load_run,
    pareto_frame,
    plot_hypervolume,
    plot_pareto,
    save_figure,
    write_explorer,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="sweep results directory (holds trials.parquet)")
    parser.add_argument("--split", choices=("dev", "test"), default="dev", help="metrics to plot")
    parser.add_argument(
        "--gap",
        choices=GAP_KINDS,
        default="wf1",
        help="gender gap on the x axis: max_gap_<gap> (gap_<gap>/<lang> by language)",
    )
    parser.add_argument("--by-language", action="store_true", help="one panel per language")
    parser.add_argument(
        "--max-gap",
        type=float,
        default=None,
        help="mark the operating point: best dev objective whose dev max gap's "
        "upper 95%% CI over seeds is <= this many percentage points",
    )
    parser.add_argument(
        "--objective", default="wf1", help="dev metric the operating point maximises"
    )
    parser.add_argument(
        "--hypervolume",
        nargs="+",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="also plot hypervolume vs trials of RUN_DIR and these runs",
    )
    parser.add_argument(
        "--html",
        action="store_true",
        help="also write report.html (RUN_DIR, or --out), the interactive trade-off explorer",
    )
    parser.add_argument("--out", type=Path, default=None, help="output dir (RUN_DIR/figures)")
    args = parser.parse_args(argv)
    try:
        df, _ = load_run(args.run_dir)
        gap = f"max_gap_{args.gap}"
        op = None
        if args.max_gap is not None:
            op = select_operating_point(
                df, f"{gap}<={args.max_gap / 100}", objective=args.objective
            )
            print(f"operating point: {op.reason}")
        frame = pareto_frame(
            df, split=args.split, gap=gap, by_language=args.by_language, run_dir=args.run_dir
        )
        out = args.out or args.run_dir / "figures"
        stem = out / f"pareto_{args.split}_{gap}{'_by_language' if args.by_language else ''}"
        # A dev bound shades only the dev figure of the gap it bounds.
        shade = args.max_gap if args.split == "dev" and not args.by_language else None
        paths = save_figure(plot_pareto(frame, operating_point=op, gap_bound=shade), stem)
        frame.to_csv(f"{stem}.csv", index=False)
        paths.append(Path(f"{stem}.csv"))
        if args.hypervolume is not None:
            curves = {}
            for run in dict.fromkeys([args.run_dir, *args.hypervolume]):
                run_df, manifest = load_run(run)
                objectives = (
                    manifest.objectives if manifest else [("dev/wf1", "max"), (f"dev/{gap}", "min")]
                )
                name = manifest.name if manifest else run.name
                curves[name] = hypervolume_over_trials(run_df, objectives)
            paths += save_figure(plot_hypervolume(curves), out / "hypervolume_vs_trials")
        if args.html:
            html = (args.out or args.run_dir) / REPORT_HTML
            paths.append(write_explorer(args.run_dir, path=html))
    except ModuleNotFoundError as err:
        if err.name != "plotly":
            raise
        print("error: --html needs plotly: pip install 'ermgap-ray[html]'", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
