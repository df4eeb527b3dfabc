"""The paper's ablation table (family x modality; W-F1/ACC per language, max gender gaps with
their gender-shuffled null, paired-by-seed Δ vs ERM with 95% CI and p) from a sweep's results.

    python analysis/tables.py RUN_DIR --format md|latex [--split test]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ermgap_ray.registry import GAP_KINDS
from ermgap_ray.report import ablation_table, load_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="sweep results directory (holds trials.parquet)")
    parser.add_argument("--format", choices=("md", "latex"), default="md", help="output format")
    parser.add_argument("--split", choices=("dev", "test"), default="test", help="metrics to use")
    parser.add_argument(
        "--gap",
        choices=GAP_KINDS,
        default="wf1",
        help="max gap whose paired Δ vs ERM is shown (Δ and p columns)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="file to write (RUN_DIR/tables/ablation_<split>.md|tex)",
    )
    args = parser.parse_args(argv)
    try:
        df, _ = load_run(args.run_dir)
        text = ablation_table(
            df,
            split=args.split,
            format=args.format,
            gap=f"max_gap_{args.gap}",
            run_dir=args.run_dir,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    suffix = "md" if args.format == "md" else "tex"
    out = args.out or args.run_dir / "tables" / f"ablation_{args.split}.{suffix}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
