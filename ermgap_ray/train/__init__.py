"""The trial: a recipe (`recipe.py`), its engines, sessions, evaluation and launchers.

`python -m ermgap_ray.train --help` is the CLI. Importing this package imports torch.
"""

from ermgap_ray.errors import CheckpointWriteError, NonFiniteLossError
from ermgap_ray.train.evaluate import Predictions, artifact_paths, predict, test_metrics
from ermgap_ray.train.launch import (
    build_trainer,
    final_metrics,
    run_in_tune,
    run_local,
    run_plain,
)
from ermgap_ray.train.recipe import Recipe, TrialInputs, prepare_trial_inputs
from ermgap_ray.train.session import LocalSession, TrainSession, TuneSession

__all__ = [
    "CheckpointWriteError",
    "LocalSession",
    "NonFiniteLossError",
    "Predictions",
    "Recipe",
    "TrainSession",
    "TrialInputs",
    "TuneSession",
    "artifact_paths",
    "build_trainer",
    "final_metrics",
    "predict",
    "prepare_trial_inputs",
    "run_in_tune",
    "run_local",
    "run_plain",
    "test_metrics",
]
