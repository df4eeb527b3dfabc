"""Running a trial: in this process, inside a Tune trial, or as a Ray Train `TorchTrainer`.

`sweep.executor_for` chooses (README "Executors"): a trial with more than one worker or any GPU
is a TorchTrainer with DeepSpeed ZeRO; a one-CPU-worker trial runs the recipe inside the Tune
function trainable (`run_in_tune`), which saves the seven actor start-ups of a Train run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ermgap_ray.config import TrialConfig
from ermgap_ray.train.evaluate import artifact_paths
from ermgap_ray.train.recipe import Recipe, TrialInputs
from ermgap_ray.train.session import LocalSession, TrainSession, TuneSession


def run_local(
    cfg: TrialConfig,
    run_dir: str | Path,
    engine: str | None = None,
    resume: bool = False,
    verbose: bool = True,
    inputs: TrialInputs | None = None,
) -> dict[str, Any]:
    """One trial in this process (world size 1), through the same recipe as Ray workers."""
    session = LocalSession(Path(run_dir), cfg.keep_checkpoints, resume=resume)
    final = Recipe(cfg, session, inputs=inputs, engine=engine, verbose=verbose).run()
    if session.last_checkpoint is not None:
        final |= artifact_paths(session.last_checkpoint)
    return final


def run_plain(cfg: TrialConfig, use_cache: bool = False, verbose: bool = False) -> dict[str, Any]:
    """The baseline a hand-written script would be: plain torch, no Ray, no DeepSpeed, and by
    default no encoder cache. Used by benchmarks to measure what the system buys."""
    cfg = cfg.replace(use_cache=use_cache)
    with tempfile.TemporaryDirectory(prefix="ermgap-plain-") as tmp:
        return run_local(cfg, tmp, engine="torch", verbose=verbose)


def run_in_tune(cfg: TrialConfig, threads: int = 1, verbose: bool = False) -> dict[str, Any]:
    """The `tune` executor: the recipe in this Tune trial's process; returns the final metrics
    with the persisted artefact paths (the caller reports them as the trial's last result)."""
    torch.set_num_threads(max(1, threads))
    session = TuneSession()
    final = Recipe(cfg, session, verbose=verbose).run()
    checkpoint = session.last_checkpoint or _restored_path(session)
    if checkpoint is not None:
        final |= artifact_paths(checkpoint)
    return final


def _restored_path(session: TuneSession) -> Path | None:
    latest = session.latest_checkpoint()
    return Path(latest.path) if latest is not None else None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point."""
    if os.environ.get("ERMGAP_QUIET_WORKERS") == "1":
        config = {**config, "verbose": False}
    torch.set_num_threads(int(config.get("torch_threads", 1)))
    cfg = TrialConfig.from_dict(config["trial"])
    Recipe(cfg, TrainSession(), verbose=bool(config.get("verbose", True))).run()


def build_trainer(
    cfg: TrialConfig,
    *,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float = 1.0,
    name: str,
    storage_path: str,
    max_failures: int = 1,
    callbacks: list[Any] | None = None,
    verbose: bool = True,
) -> Any:
    """A Ray Train `TorchTrainer` for one trial: gloo on CPU, nccl + bf16 on GPUs."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = gpus_per_worker > 0
    resources = {"CPU": cpus_per_worker}
    if use_gpu:
        resources["GPU"] = gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "trial": cfg.to_dict(),
            "verbose": verbose,
            "torch_threads": max(1, int(cpus_per_worker)),
        },
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            callbacks=callbacks or [],
        ),
    )


def final_metrics(result: Any) -> dict[str, Any]:
    """A Ray Train `Result` as one flat dict, with absolute artefact paths."""
    metrics = dict(result.metrics or {})
    if result.checkpoint is not None:
        metrics |= artifact_paths(result.checkpoint.path)
    return metrics
