"""Deployment artefacts: choose an operating point, re-evaluate its adapter, write / load it.

An operating point is a plain JSON file (peft habit: artefacts a user can open without our
code) that names the backbone, the adapter directory and the data it was chosen on; one call,
`load_operating_point`, turns it back into a ready `SERModel`.

The rules (README "Operating point"): references (zero-shot, any epochs == 0 configuration)
are never candidates; every bound (the gap bound and any utility floor) holds on the
pessimistic end of the CI over seeds, and a 1-seed configuration on its single value
(pareto.seed_rule); when nothing qualifies nothing is written. Bounds given here are in
percentage points; the JSON keeps metric values as fractions, like trials.parquet.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ermgap_ray.config import TrialConfig
from ermgap_ray.errors import ConfigError
from ermgap_ray.fs import atomic_write

OPERATING_POINT_VERSION = 2
OPERATING_POINT_FILE = "operating_point.json"
DEFAULT_MAX_GAP = 2.0  # points, when neither the CLI nor sweep.json gives a bound


def evaluate_adapter(
    adapter_dir: str | Path,
    cfg: TrialConfig,
    split: str = "test",
) -> dict[str, float]:
    """Metrics (with bootstrap CIs) of a saved adapter on one split, in this process."""
    import torch

    from ermgap_ray.features import SERDataset, collate_ser
    from ermgap_ray.model import SERModel
    from ermgap_ray.train import predict, prepare_trial_inputs, test_metrics

    inputs = prepare_trial_inputs(cfg, progress=False)
    model = SERModel.from_adapter(inputs.backbone_dir, adapter_dir).eval()
    frame = inputs.records[inputs.records["split"] == split].reset_index(drop=True)
    dataset = SERDataset(frame, inputs.backbone_dir, cfg.modality, inputs.cache)
    preds = predict(model, dataset, collate_ser, torch.device("cpu"), rank=0, world=1)
    metrics = test_metrics(preds, frame, cfg)
    return {k.replace("test/", f"{split}/", 1): v for k, v in metrics.items()}


def write_json_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """JSON through fs.atomic_write, so a reader never sees half a file."""
    with atomic_write(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
    return Path(path)


def load_operating_point(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(SERModel with the chosen adapter, the operating-point record) from operating_point.json.

    A relative adapter path is taken relative to the file's folder (the run directory), so a
    copied run directory keeps working.
    """
    from ermgap_ray.model import SERModel

    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: not a readable operating point ({err})") from None
    for key in ("adapter_path", "backbone_dir", "config"):
        if not record.get(key):
            raise ConfigError(f"{path}: operating point lacks field '{key}'")
    adapter = Path(record["adapter_path"])
    if not adapter.is_absolute():
        adapter = path.parent / adapter
    model = SERModel.from_adapter(record["backbone_dir"], adapter).eval()
    return model, record


@dataclass(frozen=True)
class Bounds:
    """What a selection maximises and the bounds it must meet (fractions), with their source."""

    objective: str
    gap_metric: str
    constraints: list[str]
    source: str


def resolve_bounds(
    run_dir: str | Path,
    max_gap: float | None = None,
    objective: str | None = None,
    gap_metric: str | None = None,
    floors: Mapping[str, float] | None = None,
) -> Bounds:
    """CLI values (points) over sweep.json defaults.

    The objective defaults to the sweep's maximised objective, the gap metric to its
    minimised `max_gap_*` objective; the gap bound to `max_gap` points, else the sweep's
    `constraints` (fractions, e.g. "dev/max_gap_wf1<=0.05"), else DEFAULT_MAX_GAP points.
    `floors` (metric -> points) add `metric>=value` bounds. Out-of-range values raise
    ConfigError.
    """
    from ermgap_ray.results import read_manifest

    manifest = read_manifest(run_dir, missing_ok=True)
    objectives = manifest.objectives if manifest else []
    maxed = [m for m, mode in objectives if mode == "max"]
    gaps = [m for m, mode in objectives if mode == "min" and _bare(m).startswith("max_gap_")]
    objective = _bare(objective or (maxed[0] if maxed else "wf1"))
    gap_metric = _bare(gap_metric or (gaps[0] if gaps else "max_gap_wf1"))
    if max_gap is not None:
        _check_points("--max-gap", max_gap)
        constraints, source = [f"{gap_metric}<={max_gap / 100:g}"], "--max-gap"
    elif manifest and manifest.constraints:
        constraints, source = list(manifest.constraints), f"{manifest.path} constraints"
    else:
        constraints = [f"{gap_metric}<={DEFAULT_MAX_GAP / 100:g}"]
        source = f"default (--max-gap {DEFAULT_MAX_GAP:g})"
    for metric, value in (floors or {}).items():
        _check_points(f"--min {metric}", value)
        constraints.append(f"{_bare(metric)}>={value / 100:g}")
    return Bounds(objective, gap_metric, constraints, source)


def _bare(metric: str) -> str:
    return metric.split("/", 1)[1] if metric.startswith(("dev/", "test/")) else metric


def _check_points(flag: str, value: float) -> None:
    if not 0.0 <= value <= 100.0:
        raise ConfigError(f"{flag} {value:g}: must be in percentage points, 0 to 100")


def choose_operating_point(
    run_dir: str | Path,
    max_gap: float | None = None,
    objective: str | None = None,
    gap_metric: str | None = None,
    split: str = "dev",
    reevaluate: bool = True,
    floors: Mapping[str, float] | None = None,
) -> tuple[Any, dict[str, Any] | None]:
    """Select (pareto.select_operating_point under `resolve_bounds`), re-evaluate the deployed
    seed's adapter on test, and write `RUN_DIR/operating_point.json`.

    Returns (OperatingPoint, the written record), or (OperatingPoint, None) with nothing
    written when no configuration qualifies.
    """
    import pandas as pd

    from ermgap_ray.pareto import select_operating_point
    from ermgap_ray.results import load_trials, read_manifest

    run_dir = Path(run_dir)
    df = load_trials(run_dir)
    bounds = resolve_bounds(run_dir, max_gap, objective, gap_metric, floors)
    point = select_operating_point(
        df, constraint=bounds.constraints, objective=bounds.objective, split=split
    )
    point.bounds_source = bounds.source
    if not point.feasible:
        return point, None
    finals = df[df["trial_id"].isin(point.trial_ids) & df["is_final"]]
    finals = finals[finals["adapter_path"].notna()] if "adapter_path" in finals else finals[:0]
    if finals.empty:
        raise ConfigError(f"{run_dir}: the chosen configuration has no saved adapter")
    # Deploy the seed that is best on the selection split; never peek at test to choose.
    deployed = finals.sort_values([point.objective, "trial_id"], ascending=[False, True])
    row = deployed.iloc[0]
    known = set(TrialConfig.field_names())
    cfg = TrialConfig.from_dict(
        {k: (None if pd.isna(v) else v) for k, v in row.items() if k in known}
    )
    manifest = read_manifest(run_dir, missing_ok=True)
    adapter = Path(str(row["adapter_path"]))
    record: dict[str, Any] = {
        "version": OPERATING_POINT_VERSION,
        "units": "fraction (0-1), as in trials.parquet",
        "run_dir": str(run_dir.resolve()),
        "sweep": manifest.name if manifest else run_dir.name,
        "bounds": {"constraints": bounds.constraints, "source": bounds.source},
        "seed_rule": point.rule,
        "selection": point.to_dict(),
        "trial_id": str(row["trial_id"]),
        "adapter_path": str(adapter),
        "config": cfg.to_dict(),
        "data_fingerprint": row.get("data_fingerprint"),
        "dev": {k: float(v) for k, v in row.items() if str(k).startswith("dev/") and pd.notna(v)},
        "test_reported": {
            k: float(v) for k, v in row.items() if str(k).startswith("test/") and pd.notna(v)
        },
    }
    from ermgap_ray.model import resolve_backbone

    record["backbone_dir"] = str(resolve_backbone(cfg.backbone))
    if reevaluate:
        adapter_dir = adapter if adapter.is_absolute() else run_dir / adapter
        record["test"] = evaluate_adapter(adapter_dir, cfg, split="test")
    write_json_atomic(record, run_dir / OPERATING_POINT_FILE)
    return point, record
