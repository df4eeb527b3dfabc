"""Where a trial's reports and checkpoints go: this process, a Ray Train worker, or a Tune trial.

The recipe calls `latest_checkpoint()` once and `report(metrics, checkpoint_dir)` once per
epoch; that is the whole difference between the executors (README "Executors").
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from ermgap_ray.errors import CheckpointWriteError
from ermgap_ray.fs import atomic_dir

TRAINER_STATE = "trainer_state.json"


class Session(Protocol):
    rank: int
    world_size: int
    last_checkpoint: Path | None

    def latest_checkpoint(self) -> Any | None: ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...


def checkpoint_error(epoch: int, dest: Any, err: OSError, previous: Any | None) -> Exception:
    """The real cause, and an honest word on what is left to resume from."""
    reason = err.strerror or str(err)
    if err.errno == errno.ENOSPC:
        hint = "free space or lower keep_checkpoints"
    else:
        hint = "fix the storage folder"
    if previous is not None:
        tail = f"; {hint}, then --resume (the checkpoint of an earlier epoch is intact)"
    else:
        tail = f"; {hint} and run again (no earlier checkpoint exists)"
    return CheckpointWriteError(
        err.errno, f"could not write the checkpoint of epoch {epoch} to {dest}: {reason}{tail}"
    )


def _epoch_dirs(root: Path) -> list[Path]:
    done = [p for p in root.glob("epoch_*") if (p / TRAINER_STATE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]))


class LocalSession:
    """Single process, no Ray: checkpoints go to `run_dir/checkpoints/epoch_<k>`."""

    rank = 0
    world_size = 1

    def __init__(self, run_dir: Path, keep: int, resume: bool = False) -> None:
        self.ckpt_root = Path(run_dir) / "checkpoints"
        self.keep = keep
        self.resume = resume
        self.reports: list[dict[str, Any]] = []
        self.last_checkpoint: Path | None = None

    def latest_checkpoint(self) -> Path | None:
        if not self.resume or not self.ckpt_root.is_dir():
            return None
        done = _epoch_dirs(self.ckpt_root)
        return done[-1] if done else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir is None:
            return
        dest = self.ckpt_root / f"epoch_{metrics['epoch']}"
        try:
            with atomic_dir(dest, replace=True) as staging:
                shutil.copytree(checkpoint_dir, staging, dirs_exist_ok=True)
        except OSError as err:
            raise checkpoint_error(metrics["epoch"], dest, err, self.last_checkpoint) from None
        self.last_checkpoint = dest
        for old in _epoch_dirs(self.ckpt_root)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


class TrainSession:
    """A Ray Train worker: rank and world from the train context; reports go to the controller."""

    last_checkpoint: Path | None = None

    def __init__(self) -> None:
        import ray.train

        self._train = ray.train
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()

    def latest_checkpoint(self) -> Any | None:
        return self._train.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        from ray.train import Checkpoint

        ckpt = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        self._train.report(metrics, checkpoint=ckpt)


class TuneSession:
    """The loop inside a Tune function trainable (one CPU worker, no worker group).

    Ray documents this pattern for trials that need no worker group: `tune.report` persists
    the checkpoint into the trial's folder, `tune.get_checkpoint` resumes after a retry or a
    `Tuner.restore`, and Tune's FailureConfig does the retrying.
    """

    rank = 0
    world_size = 1

    def __init__(self) -> None:
        from ray import tune

        self._tune = tune
        self.last_checkpoint: Path | None = None

    def latest_checkpoint(self) -> Any | None:
        return self._tune.get_checkpoint()

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        ckpt = self._tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        self._tune.report(metrics, checkpoint=ckpt)
        if ckpt is not None:
            persisted = self._tune.get_checkpoint()
            self.last_checkpoint = Path(persisted.path) if persisted is not None else None


@contextmanager
def local_dir(checkpoint: Any) -> Iterator[Path]:
    """A local directory for a LocalSession path or a Ray `Checkpoint`."""
    if isinstance(checkpoint, Path):
        yield checkpoint
    else:
        with checkpoint.as_directory() as local:
            yield Path(local)
