"""Regenerate the golden run directories from real smoke sweeps (the real writer, real rows).

This script is the only way tests/golden_run/<name>/ are made; never edit them by hand. Run it
from the repository root, with the package installed (ray, torch, peft, optuna), after a change
to the writer, the trial metrics or the smoke preset:

    python tests/golden_run/regenerate.py                 # all runs (a few minutes on 2 cores)
    python tests/golden_run/regenerate.py --only smoke    # one run (repeatable)
    python tests/golden_run/regenerate.py --keep-storage  # keep Ray's storage to inspect

then rerun the tests that read them (they compute every expectation from the rows, so no
numbers need updating) and commit the directories:

    python -m pytest -q tests/test_report.py tests/test_pareto.py tests/test_compare.py \
        tests/test_deploy.py tests/test_objectives_roundtrip.py

Each golden run is a real `ermgap_ray.sweep.run_sweep` on the smoke preset (tiny backbone,
synthetic corpus, one epoch), run into a temporary storage on a fresh local Ray head. Only
what the analysis tests read is copied into tests/golden_run/<name>/: sweep.json,
trials.parquet, the test predictions (predictions/<trial_id>.npz) and the LoRA adapters
(adapters/<trial_id>/, ~45 KB each) of the trained trials (zero-shot's is never deployed).
Ray's experiment state, checkpoints and the Optuna study are left behind. Absolute paths in
the rows are rewritten relative to the run directory, and machine-specific manifest fields
(cluster address, storage) are dropped, so the directory is the same wherever it is checked
out. All of tests/golden_run must stay under BUDGET_BYTES (tests/test_report.py checks it).

- smoke: the smoke preset with 2 seeds (grid: zero-shot, erm, fixed-p2, adaptive-p2 on audio;
  then a 2-trial search), so configurations have a CI over seeds, paired Δ vs ERM has 2 shared
  seeds, and the search trials are the 1-seed case. Read by test_report, test_pareto,
  test_compare and test_deploy.
- objectives: a 2-trial search with objectives dev/wf1:max and dev/max_gap_avg:min (issue 11):
  the hypervolume over the sweep's own objectives (test_report, test_objectives_roundtrip).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RUNS: dict[str, dict[str, Any]] = {
    "smoke": {"preset": "smoke", "overrides": {"seeds": 2}},
    "objectives": {
        "preset": "smoke",
        "overrides": {
            "kind": "search",
            "num_samples": 2,
            "objectives": ["dev/wf1:max", "dev/max_gap_avg:min"],
        },
    },
}
MACHINE_KEYS = ("cluster",)
BUDGET_BYTES = 2_500_000  # the twin scores 1,260 test clips per trial: ~60 KB of predictions each
CONFIG_MACHINE_KEYS = ("storage", "cluster")


def run(name: str, storage: Path) -> Path:
    from ermgap_ray.sweep import load_sweep_config, run_sweep

    spec = RUNS[name]
    overrides = {**spec["overrides"], "name": name, "storage": str(storage), "cluster": "local"}
    result = run_sweep(load_sweep_config(spec["preset"], overrides), progress_interval_s=30)
    if result.n_error:
        raise SystemExit(f"{name}: {result.n_error} trial(s) failed; golden runs must be clean")
    return result.run_dir


def copy_run(run_dir: Path, dest: Path) -> Path:
    """sweep.json + trials.parquet + predictions + adapters of run_dir -> dest (replaced)."""
    import pandas as pd

    from ermgap_ray.fs import atomic_dir
    from ermgap_ray.pareto import reference_mask
    from ermgap_ray.results import MANIFEST_FILE, TRIALS_FILE, read_trials

    df = read_trials(run_dir)
    with atomic_dir(dest, replace=True) as tmp:
        for col, sub in (("predictions_path", "predictions"), ("adapter_path", "adapters")):
            if col not in df.columns:
                continue
            out = []
            refs = reference_mask(df)
            for trial_id, value, ref in zip(df["trial_id"], df[col], refs, strict=True):
                # An untrained reference's adapter is never deployed: not worth its bytes.
                if not isinstance(value, str) or not value or (ref and sub == "adapters"):
                    out.append(None)
                    continue
                src = Path(value)
                rel = f"{sub}/{trial_id}" + (".npz" if src.is_file() else "")
                if src.is_file():
                    (tmp / sub).mkdir(exist_ok=True)
                    shutil.copy2(src, tmp / rel)
                elif src.is_dir():
                    shutil.copytree(src, tmp / rel, ignore=shutil.ignore_patterns("README.md"))
                else:
                    raise SystemExit(f"{run_dir}: {col} {src} does not exist")
                out.append(rel)
            df[col] = pd.Series(out, index=df.index, dtype=object)
        df.to_parquet(tmp / TRIALS_FILE, index=False)
        manifest = json.loads((run_dir / MANIFEST_FILE).read_text())
        for key in MACHINE_KEYS:
            manifest.pop(key, None)
        for key in CONFIG_MACHINE_KEYS:
            manifest["config"].pop(key, None)
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=tuple(RUNS), action="append", help="runs to redo")
    parser.add_argument("--keep-storage", action="store_true", help="keep the temp storage")
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    storage = Path(tempfile.mkdtemp(prefix="ermgap-golden-"))
    try:
        for name in args.only or RUNS:
            run_dir = run(name, storage)
            import ray

            ray.shutdown()
            dest = copy_run(run_dir, HERE / name)
            size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
            print(f"{name}: {dest} ({size / 1024:.0f} KiB)", flush=True)
        total = sum(p.stat().st_size for p in HERE.rglob("*") if p.is_file())
        if total >= BUDGET_BYTES:
            print(f"warning: tests/golden_run is {total} bytes, over {BUDGET_BYTES}", flush=True)
    finally:
        if args.keep_storage:
            print(f"storage kept: {storage}")
        else:
            shutil.rmtree(storage, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    sys.exit(main())
