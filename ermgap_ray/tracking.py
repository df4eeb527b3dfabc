"""Experiment tracking through Ray Tune's own logger callbacks (TensorBoard, MLflow).

Owned by the tracking work (issue 16); these are the two hooks the sweep calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tracker_callbacks(trackers: list[str], run_dir: Path) -> list[Any]:
    """Tune callbacks for `trackers` (SweepConfig.trackers), for the Tune RunConfig."""
    return []


def log_sweep_artifacts(trackers: list[str], run_dir: Path, reports: list[Path]) -> None:
    """After the sweep: the figure and table as artefacts of the sweep's tracker runs."""
