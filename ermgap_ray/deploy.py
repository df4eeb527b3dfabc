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
