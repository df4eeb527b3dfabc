"""Deployment artefacts: re-evaluate a saved adapter, and write / load an operating point.

An operating point is a plain JSON file (peft habit: artefacts a user can open without our
code) that names the backbone, the adapter directory and the data it was chosen on; one call,
`load_operating_point`, turns it back into a ready `SERModel`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ermgap_ray.config import TrialConfig

OPERATING_POINT_VERSION = 1


def evaluate_adapter(
    adapter_dir: str | Path,
    cfg: TrialConfig,
    split: str = "test",
) -> dict[str, float]:
    """Metrics (with bootstrap CIs) of a saved adapter on one split, in this process."""
    from ermgap_ray.features import SERDataset, collate_ser
    from ermgap_ray.model import SERModel
    from ermgap_ray.train import _test_metrics, predict, prepare_trial_inputs

    inputs = prepare_trial_inputs(cfg, progress=False)
    model = SERModel.from_adapter(inputs.backbone_dir, adapter_dir).eval()
    frame = inputs.records[inputs.records["split"] == split].reset_index(drop=True)
    dataset = SERDataset(frame, inputs.backbone_dir, cfg.modality, inputs.cache)
    preds = predict(model, dataset, collate_ser, torch.device("cpu"), rank=0, world=1)
    metrics = _test_metrics(preds, frame, cfg)
    return {k.replace("test/", f"{split}/", 1): v for k, v in metrics.items()}


def write_json_atomic(payload: dict[str, Any], path: str | Path) -> Path:
    """Temp file + rename, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_operating_point(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """(SERModel with the chosen adapter, the operating-point record) from operating_point.json."""
    from ermgap_ray.model import SERModel

    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable operating point ({err})") from None
    for key in ("adapter_path", "backbone_dir", "config"):
        if key not in record:
            raise ValueError(f"{path}: operating point lacks field '{key}'")
    model = SERModel.from_adapter(record["backbone_dir"], record["adapter_path"]).eval()
    return model, record


def choose_operating_point(
    run_dir: str | Path,
    max_gap: float = 2.0,
    objective: str = "wf1",
    gap_metric: str = "max_gap_wf1",
    split: str = "dev",
    reevaluate: bool = True,
) -> tuple[Any, dict[str, Any] | None]:
    """Pick the best `objective` whose worst gap (upper CI end over seeds, in points) is
    ≤ `max_gap`, re-evaluate the deployed seed's adapter on test, and write
    `RUN_DIR/operating_point.json`. Returns (OperatingPoint, the written record or None)."""
    import pandas as pd

    from ermgap_ray.pareto import select_operating_point
    from ermgap_ray.report import load_run

    run_dir = Path(run_dir)
    df, sweep = load_run(run_dir)
    point = select_operating_point(
        df, constraint=f"{gap_metric}<={max_gap / 100:g}", objective=objective, split=split
    )
    if not point.feasible:
        return point, None
    finals = df[df["trial_id"].isin(point.trial_ids) & df["is_final"]]
    finals = finals[finals["adapter_path"].notna()] if "adapter_path" in finals else finals[:0]
    if finals.empty:
        raise ValueError(f"{run_dir}: the chosen configuration has no saved adapter")
    # Deploy the seed that is best on the selection split; never peek at test to choose.
    deployed = finals.sort_values([f"{split}/{objective}", "trial_id"], ascending=[False, True])
    row = deployed.iloc[0]
    known = set(TrialConfig.field_names())
    cfg = TrialConfig.from_dict(
        {k: (None if pd.isna(v) else v) for k, v in row.items() if k in known}
    )
    record: dict[str, Any] = {
        "version": OPERATING_POINT_VERSION,
        "run_dir": str(run_dir.resolve()),
        "sweep": sweep.get("name"),
        "selection": point.to_dict(),
        "trial_id": str(row["trial_id"]),
        "adapter_path": str(row["adapter_path"]),
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
        record["test"] = evaluate_adapter(row["adapter_path"], cfg, split="test")
    write_json_atomic(record, run_dir / "operating_point.json")
    return point, record
