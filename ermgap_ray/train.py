"""The trial recipe: one train loop for one process or N Ray Train workers with DeepSpeed ZeRO.

Read top to bottom: `prepare_trial_inputs` (data + backbone + encoder cache, done once in the
driver and re-opened by workers), `run_loop` (the per-worker loop: LoRA model, stratified
sharded batches, the exact global-batch objective, dev evaluation, the λ schedule, checkpoints),
and the two ways to run it: `run_local` (in this process, no Ray) and `build_trainer` (a Ray
Train `TorchTrainer`). `python -m ermgap_ray.train --help` is the CLI.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from ermgap_ray.config import (
    ConfigError,
    TrialConfig,
    help_lines,
    load_trial_config,
    safe_run_name,
)
from ermgap_ray.data.schema import GENDERS, LANGUAGES, MODALITIES, SPLITS, stratum_index
from ermgap_ray.global_batch import GlobalBatch
from ermgap_ray.metrics import bootstrap_ci, ser_report
from ermgap_ray.objective import (
    build_lambda_schedule,
    build_objective,
    group_stats,
    max_gender_gap,
)

NUM_STRATA = len(LANGUAGES) * len(MODALITIES)
EVAL_BATCH_SIZE = 64
TRAINER_STATE = "trainer_state.json"
DS_TAG = "state"
HEADLINE_CI = ("wf1", "acc", "max_gap_wf1", "max_gap_avg", "max_gap_acc", "max_gap_tpr")


class NonFiniteLossError(FloatingPointError):
    """Raised with the step and the group losses so a diverged trial explains itself."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. a full disk); the previous one is untouched."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()  # the message, without "[Errno 28] "


# --------------------------------------------------------------------------------------------
# Inputs shared by every trial of a sweep
# --------------------------------------------------------------------------------------------


@dataclass
class TrialInputs:
    records: pd.DataFrame
    data_fingerprint: str
    backbone_dir: Path
    cache: Any | None


def prepare_trial_inputs(
    cfg: TrialConfig, progress: bool = True, check_audio: bool = True
) -> TrialInputs:
    """Resolve and validate data and backbone, and build (or open) the encoder cache.

    Called once by the driver before any trial starts, so bad input fails fast with one line;
    workers call it again and only re-open what the driver built.
    """
    from ermgap_ray.data.io import resolve_data
    from ermgap_ray.features import EmbeddingCache
    from ermgap_ray.model import resolve_backbone

    records, fingerprint = resolve_data(cfg.data, check_audio=check_audio)
    backbone_dir = resolve_backbone(cfg.backbone)
    cache = None
    if cfg.use_cache:
        cache = EmbeddingCache.build_or_load(backbone_dir, records, progress=progress)
    return TrialInputs(records, fingerprint, backbone_dir, cache)


# --------------------------------------------------------------------------------------------
# Where the loop runs: in this process, or as a Ray Train worker
# --------------------------------------------------------------------------------------------


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
        done = sorted(self.ckpt_root.glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))
        done = [p for p in done if (p / TRAINER_STATE).is_file()]
        return done[-1] if done else None

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir is None:
            return
        dest = self.ckpt_root / f"epoch_{metrics['epoch']}"
        staging = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(checkpoint_dir, staging)
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            raise _checkpoint_error(metrics["epoch"], dest, err) from None
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(staging, dest)
        self.last_checkpoint = dest
        done = sorted(self.ckpt_root.glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))
        for old in done[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


class RaySession:
    """A Ray Train worker: rank and world from the train context; reports go to the driver."""

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


def _checkpoint_error(epoch: int, dest: Any, err: OSError) -> CheckpointWriteError:
    reason = err.strerror or str(err)
    return CheckpointWriteError(
        err.errno,
        f"could not write the checkpoint of epoch {epoch} to {dest}: {reason}; free space or "
        "lower keep_checkpoints, then --resume (the previous checkpoint is intact)",
    )


@contextmanager
def _local_dir(checkpoint: Any) -> Iterator[Path]:
    """A local directory for a LocalSession path or a Ray `Checkpoint`."""
    if isinstance(checkpoint, Path):
        yield checkpoint
    else:
        with checkpoint.as_directory() as local:
            yield Path(local)


# --------------------------------------------------------------------------------------------
# Engines: DeepSpeed ZeRO (the default) or plain torch (baseline benchmarks, debugging)
# --------------------------------------------------------------------------------------------


def deepspeed_config(cfg: TrialConfig, bf16: bool) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": 1.0,
        "zero_optimization": {
            "stage": cfg.zero_stage,
            "stage3_param_persistence_threshold": cfg.zero3_persistence_threshold,
        },
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class TorchEngine:
    """The DeepSpeed engine's surface, on a plain torch optimizer (one process only)."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_accum: int):
        self.module = module
        self.optimizer = optimizer
        self.grad_accum = grad_accum
        self._micro = 0

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.module(batch)

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum).backward()

    def step(self) -> None:
        self._micro += 1
        if self._micro % self.grad_accum == 0:
            params = [p for p in self.module.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


def _ensure_process_group(device: torch.device) -> None:
    """DeepSpeed needs a process group even for one process; Ray Train creates its own."""
    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=0, world_size=1)


def make_engine(model: torch.nn.Module, cfg: TrialConfig, device: torch.device, kind: str) -> Any:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if kind == "torch":
        return TorchEngine(model.to(device), optimizer, cfg.grad_accum)
    import deepspeed

    _ensure_process_group(device)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config=deepspeed_config(cfg, bf16=device.type == "cuda"),
        dist_init_required=False,
    )
    return engine


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _group_ids(df: pd.DataFrame) -> np.ndarray:
    lang = df["language"].map(LANGUAGES.index).to_numpy()
    gender = df["gender"].map(GENDERS.index).to_numpy()
    return lang * len(GENDERS) + gender


def _chunks(it: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in it:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []


def _loader(dataset: Any, collate: Any, device: torch.device, **kw: Any) -> DataLoader:
    return DataLoader(dataset, collate_fn=collate, pin_memory=device.type == "cuda", **kw)


# --------------------------------------------------------------------------------------------
# Evaluation: every rank scores an equal-length shard; gathered, unpadded, then scored once
# --------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    rows: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    losses: np.ndarray

    def metrics(self, df: pd.DataFrame) -> dict[str, float]:
        sub = df.iloc[self.rows]
        return ser_report(
            self.y_true, self.y_pred, sub["language"].to_numpy(), sub["gender"].to_numpy()
        )

    def loss_gap(self, df: pd.DataFrame, modality: str) -> float:
        sub = df.iloc[self.rows]
        strata = stratum_index(sub["language"].map(LANGUAGES.index).to_numpy(), modality)
        genders = sub["gender"].map(GENDERS.index).to_numpy()
        gap = max_gender_gap(
            torch.tensor(self.losses, dtype=torch.float64),
            torch.tensor(strata),
            torch.tensor(genders),
            num_strata=NUM_STRATA,
        )
        return float(gap)


@torch.no_grad()
def predict(
    forward: Any, dataset: Any, collate: Any, device: torch.device, rank: int, world: int
) -> Predictions:
    """Score this rank's shard, then all-gather.

    Shards are padded to equal length (ZeRO-3 forwards are collectives, so every rank must run
    the same number of batches); the padding is flagged and dropped, so nothing counts twice.
    """
    n = len(dataset)
    per_rank = math.ceil(n / world)
    mine = np.arange(rank, n, world)
    valid = np.zeros(per_rank, dtype=bool)
    valid[: len(mine)] = True
    padded = np.concatenate([mine, np.full(per_rank - len(mine), mine[0] if len(mine) else 0)])
    out: dict[str, list[np.ndarray]] = {"rows": [], "y_true": [], "y_pred": [], "losses": []}
    if per_rank:
        loader = _loader(
            Subset(dataset, padded.tolist()), collate, device, batch_size=EVAL_BATCH_SIZE
        )
        for batch in loader:
            batch = _to_device(batch, device)
            logits = forward(batch).float()
            losses = F.cross_entropy(logits, batch["labels"], reduction="none")
            out["rows"].append(batch["row"].cpu().numpy())
            out["y_true"].append(batch["labels"].cpu().numpy())
            out["y_pred"].append(logits.argmax(-1).cpu().numpy())
            out["losses"].append(losses.cpu().numpy())
    local = {k: np.concatenate(v)[valid] if v else np.empty(0) for k, v in out.items()}
    if world > 1:
        gathered: list[dict[str, np.ndarray]] = [{} for _ in range(world)]
        dist.all_gather_object(gathered, local)
        local = {k: np.concatenate([g[k] for g in gathered]) for k in local}
    order = np.argsort(local["rows"], kind="stable")
    return Predictions(**{k: v[order] for k, v in local.items()})


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _epoch_seed(cfg: TrialConfig, epoch: int) -> int:
    """Per-epoch reseeding makes a resumed run bitwise-identical to an uninterrupted one."""
    return cfg.seed * 100_003 + epoch


def train_one_epoch(
    engine: Any,
    loader: DataLoader,
    objective: Any,
    lam: float,
    cfg: TrialConfig,
    device: torch.device,
    epoch: int,
) -> dict[str, float]:
    engine.train()
    losses_seen: list[float] = []
    gaps_seen: list[float] = []
    for step, micro_batches in enumerate(_chunks(loader, cfg.grad_accum)):
        micro_batches = [_to_device(b, device) for b in micro_batches]
        if cfg.grad_accum > 1:
            # The regulariser is defined on the whole optimizer step, so its statistics must be
            # known before the first micro-batch's backward: one no-grad pass collects them.
            with torch.no_grad():
                stats = [_micro_stats(engine, b)[1:] for b in micro_batches]
            step_sums = sum(s for s, _ in stats)
            step_counts = sum(c for _, c in stats)
            global_batch = GlobalBatch.from_local(step_sums, step_counts, cfg.grad_accum)
        for i, batch in enumerate(micro_batches):
            _, sums, counts = _micro_stats(engine, batch)
            if cfg.grad_accum == 1:
                global_batch = GlobalBatch.from_local(sums, counts)
            objective.train(i == 0)  # Group DRO moves q once per optimizer step
            terms = objective.terms(global_batch.surrogate(sums), global_batch.counts, lam)
            if not torch.isfinite(terms.loss):
                means = (global_batch.sums / global_batch.counts.clamp(min=1)).tolist()
                raise NonFiniteLossError(
                    f"NonFiniteLoss: epoch {epoch} step {step}: loss={terms.loss.item()}, "
                    f"group losses (stratum x [F, M]) = {means}"
                )
            engine.backward(terms.loss * global_batch.loss_scale)
            engine.step()
        losses_seen.append(terms.loss.detach())
        gaps_seen.append(terms.gap)
    if not losses_seen:
        return {"train/loss": float("nan"), "train/gap": float("nan")}
    return {
        "train/loss": float(torch.stack(losses_seen).mean()),
        "train/gap": float(torch.stack(gaps_seen).mean()),
    }


def _micro_stats(
    engine: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = engine(batch).float()
    losses = F.cross_entropy(logits, batch["labels"], reduction="none")
    sums, counts = group_stats(losses, batch["strata"], batch["genders"], NUM_STRATA)
    return losses, sums, counts


def run_loop(
    cfg: TrialConfig,
    session: Any,
    engine_kind: str = "deepspeed",
    verbose: bool = True,
    inputs: TrialInputs | None = None,
) -> dict[str, Any]:
    """Train, evaluate dev every epoch (λ updates from it), test at the end; returns the final
    metrics. The same code runs at world size 1 or N."""
    from ermgap_ray.data.sampler import GroupStratifiedBatchSampler
    from ermgap_ray.features import SERDataset, collate_ser
    from ermgap_ray.model import SERModel

    started = time.perf_counter()
    rank, world = session.rank, session.world_size
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    device = _device()
    inputs = inputs or prepare_trial_inputs(cfg, progress=False, check_audio=False)
    cache = inputs.cache if cfg.use_cache else None

    model = SERModel.from_backbone(
        inputs.backbone_dir,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        seed=cfg.seed,
        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
    )
    frames = {
        s: inputs.records[inputs.records["split"] == s].reset_index(drop=True) for s in SPLITS
    }
    datasets = {
        s: SERDataset(df, inputs.backbone_dir, cfg.modality, cache) for s, df in frames.items()
    }
    objective = build_objective(cfg.objective, cfg.p, NUM_STRATA, cfg.groupdro_eta)
    schedule = build_lambda_schedule(
        cfg.lambda_mode if cfg.objective in ("minmaxgap", "meangap") else "fixed",
        cfg.lam,
        cfg.eta,
        cfg.epsilon,
        cfg.lam_max,
    )
    log = _Printer(cfg, rank == 0 and verbose)

    engine: Any = None
    start_epoch = 0
    if cfg.epochs > 0:
        engine = make_engine(model, cfg, device, engine_kind)
        checkpoint = session.latest_checkpoint()
        if checkpoint is not None:
            start_epoch = _restore(engine, checkpoint, schedule, objective, engine_kind)
            log.line(f"resumed after epoch {start_epoch - 1} (lambda={schedule.value:.4g})")
    forward = engine if engine is not None else _EvalForward(model.to(device))

    sampler = GroupStratifiedBatchSampler(
        _group_ids(frames["train"]),
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        num_replicas=world,
        rank=rank,
        drop_last=True,
    )
    train_loader = _loader(datasets["train"], collate_ser, device, batch_sampler=sampler)

    final: dict[str, Any] = {}
    for epoch in range(start_epoch, max(cfg.epochs, 1)):
        t0, cpu0 = time.perf_counter(), time.process_time()
        lam_used = schedule.value
        metrics: dict[str, Any] = {"epoch": epoch + 1 if cfg.epochs else 0, "lambda": lam_used}
        if cfg.epochs:
            sampler.set_epoch(epoch)
            torch.manual_seed(_epoch_seed(cfg, epoch))
            metrics |= train_one_epoch(
                engine, train_loader, objective, lam_used, cfg, device, epoch
            )
        forward.eval()
        dev = predict(forward, datasets["dev"], collate_ser, device, rank, world)
        dev_metrics = dev.metrics(frames["dev"])
        metrics |= {f"dev/{k}": v for k, v in dev_metrics.items()}
        dev_gap = (
            dev.loss_gap(frames["dev"], cfg.modality)
            if cfg.dev_gap_metric == "loss"
            else dev_metrics[f"max_gap_{cfg.dev_gap_metric}"]
        )
        metrics["dev/loss_gap"] = dev.loss_gap(frames["dev"], cfg.modality)
        if cfg.epochs:
            schedule.update(float(np.nan_to_num(dev_gap)))
        is_final = epoch + 1 >= cfg.epochs
        with tempfile.TemporaryDirectory(prefix="ermgap-ckpt-") as tmp:
            ckpt_dir = Path(tmp)
            try:
                if engine is not None:
                    _save(engine, ckpt_dir, engine_kind, rank, epoch, schedule, objective)
                if is_final:
                    test = predict(forward, datasets["test"], collate_ser, device, rank, world)
                    metrics |= _test_metrics(test, frames["test"], cfg)
                    _save_artifacts(model, test, frames["test"], ckpt_dir, rank, cfg)
                    metrics["is_final"] = 1
                    metrics["time_total_s"] = time.perf_counter() - started
            except OSError as err:
                raise _checkpoint_error(metrics["epoch"], ckpt_dir, err) from None
            metrics["time_epoch_s"] = time.perf_counter() - t0
            metrics["cpu_epoch_s"] = time.process_time() - cpu0
            log.epoch(metrics)
            has_files = engine_kind == "deepspeed" and engine is not None or is_final
            session.report(metrics, ckpt_dir if has_files else None)
        final = metrics
    return final


def _device() -> torch.device:
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class _EvalForward:
    """Forward for zero-shot runs, which never build an engine."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.module(batch)

    def eval(self) -> None:
        self.module.eval()


def _test_metrics(test: Predictions, df: pd.DataFrame, cfg: TrialConfig) -> dict[str, float]:
    out = {f"test/{k}": v for k, v in test.metrics(df).items()}
    sub = df.iloc[test.rows]
    cis = bootstrap_ci(
        test.y_true,
        test.y_pred,
        sub["language"].to_numpy(),
        sub["gender"].to_numpy(),
        n_resamples=cfg.bootstrap,
        seed=cfg.seed,
    )
    for name in HEADLINE_CI:
        if name in cis:
            out[f"test/{name}_lo"], out[f"test/{name}_hi"] = map(float, cis[name])
    return out


def _save(
    engine: Any,
    ckpt_dir: Path,
    engine_kind: str,
    rank: int,
    epoch: int,
    schedule: Any,
    objective: Any,
) -> None:
    """Every rank saves its engine shard (a collective); rank 0 adds the loop state as JSON."""
    if engine_kind == "deepspeed":
        engine.save_checkpoint(str(ckpt_dir), tag=DS_TAG, exclude_frozen_parameters=True)
    if rank == 0:
        state = {
            "epoch": epoch,
            "lambda": schedule.state_dict(),
            "objective": objective.state_dict(),
        }
        (ckpt_dir / TRAINER_STATE).write_text(json.dumps(state))


def _restore(engine: Any, checkpoint: Any, schedule: Any, objective: Any, engine_kind: str) -> int:
    if engine_kind != "deepspeed":
        raise ConfigError("resuming needs the deepspeed engine")
    with _local_dir(checkpoint) as local:
        engine.load_checkpoint(str(local), tag=DS_TAG, load_module_strict=False)
        state = json.loads((local / TRAINER_STATE).read_text())
    schedule.load_state_dict(state["lambda"])
    objective.load_state_dict(state["objective"])
    return int(state["epoch"]) + 1


def _save_artifacts(
    model: Any, test: Predictions, df: pd.DataFrame, ckpt_dir: Path, rank: int, cfg: TrialConfig
) -> None:
    """The deployable adapter (peft `save_pretrained`) and the test predictions (npz, no pickle).

    Under ZeRO-3 the LoRA weights are sharded; every rank must enter the gather, and only rank
    0 writes (RAY_NOTES.md: saving without the gather writes zero-size tensors silently)."""
    lora = [p for p in model.parameters() if p.requires_grad]
    if cfg.zero_stage == 3 and cfg.epochs > 0 and any(hasattr(p, "ds_id") for p in lora):
        import deepspeed

        with deepspeed.zero.GatheredParameters(lora, modifier_rank=None):
            if rank == 0:
                model.save_adapter(ckpt_dir / "adapter")
    elif rank == 0:
        model.save_adapter(ckpt_dir / "adapter")
    if rank == 0:
        sub = df.iloc[test.rows]
        np.savez(
            ckpt_dir / "predictions.npz",
            utt_id=sub["utt_id"].to_numpy(dtype=str),
            y_true=test.y_true,
            y_pred=test.y_pred,
            languages=sub["language"].to_numpy(dtype=str),
            genders=sub["gender"].to_numpy(dtype=str),
        )


class _Printer:
    """One readable progress line per epoch, from rank 0 only."""

    def __init__(self, cfg: TrialConfig, enabled: bool) -> None:
        self.enabled = enabled
        self.cfg = cfg
        self.tag = f"[{cfg.objective} p={cfg.p} {cfg.lambda_mode} {cfg.modality} seed={cfg.seed}]"

    def line(self, text: str) -> None:
        if self.enabled:
            print(f"{self.tag} {text}", flush=True)

    def epoch(self, m: dict[str, Any]) -> None:
        parts = [f"epoch {m['epoch']}/{self.cfg.epochs}"]
        if "train/loss" in m:
            parts.append(f"loss {m['train/loss']:.3f} gap {m['train/gap']:.3f}")
        parts.append(f"lambda {m['lambda']:.3g}")
        parts.append(
            f"dev wf1 {100 * m['dev/wf1']:.1f} max_gap_wf1 {100 * m['dev/max_gap_wf1']:.1f}"
        )
        if "test/wf1" in m:
            parts.append(
                f"test wf1 {100 * m['test/wf1']:.1f} max_gap_wf1 {100 * m['test/max_gap_wf1']:.1f}"
            )
        parts.append(f"{m['time_epoch_s']:.1f}s")
        self.line(" | ".join(parts))


# --------------------------------------------------------------------------------------------
# Running a trial: here, or on Ray Train
# --------------------------------------------------------------------------------------------


def run_local(
    cfg: TrialConfig,
    run_dir: str | Path,
    engine_kind: str = "deepspeed",
    resume: bool = False,
    verbose: bool = True,
    inputs: TrialInputs | None = None,
) -> dict[str, Any]:
    """One trial in this process (world size 1), through the same loop as Ray workers."""
    session = LocalSession(Path(run_dir), cfg.keep_checkpoints, resume=resume)
    final = run_loop(cfg, session, engine_kind=engine_kind, verbose=verbose, inputs=inputs)
    if session.last_checkpoint is not None:
        final |= artifact_paths(session.last_checkpoint)
    return final


def run_plain(cfg: TrialConfig, use_cache: bool = False, verbose: bool = False) -> dict[str, Any]:
    """The baseline a hand-written script would be: plain torch, no Ray, no DeepSpeed, and by
    default no encoder cache. Used by benchmarks to measure what the system buys."""
    cfg = cfg.replace(use_cache=use_cache)
    with tempfile.TemporaryDirectory(prefix="ermgap-plain-") as tmp:
        return run_local(cfg, tmp, engine_kind="torch", verbose=verbose)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point."""
    if os.environ.get("ERMGAP_QUIET_WORKERS") == "1":
        config = {**config, "verbose": False}
    torch.set_num_threads(int(config.get("torch_threads", 1)))
    cfg = TrialConfig.from_dict(config["trial"])
    run_loop(cfg, RaySession(), verbose=bool(config.get("verbose", True)))


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


def artifact_paths(checkpoint_dir: str | Path) -> dict[str, str]:
    """Where the final checkpoint keeps the deployable adapter and the test predictions."""
    root = Path(checkpoint_dir)
    return {
        "adapter_path": str(root / "adapter"),
        "predictions_path": str(root / "predictions.npz"),
    }


def final_metrics(result: Any) -> dict[str, Any]:
    """A Ray Train `Result` as one flat dict, with absolute artefact paths."""
    metrics = dict(result.metrics or {})
    if result.checkpoint is not None:
        metrics |= artifact_paths(result.checkpoint.path)
    return metrics


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ermgap_ray.train",
        description="Run one ERM-MinMaxGAP trial. With --workers 1 and no --cluster it runs in "
        "this process; otherwise as a Ray Train TorchTrainer with DeepSpeed ZeRO.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (for the YAML file and --set):\n" + "\n".join(help_lines()),
    )
    p.add_argument("--config", help="YAML file of config keys (optionally under `trial:`).")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Override.")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (data parallel).")
    p.add_argument("--gpus-per-worker", type=float, default=0.0)
    p.add_argument("--zero", type=int, choices=(2, 3), help="DeepSpeed ZeRO stage.")
    p.add_argument("--cluster", help="Run on Ray: auto | local | HOST:PORT.")
    p.add_argument("--storage", default="runs", help="Where runs and checkpoints go.")
    p.add_argument("--name", help="Run name (default: trial-<config hash>).")
    p.add_argument("--resume", action="store_true", help="Continue from the latest checkpoint.")
    p.add_argument("--debug", action="store_true", help="Show full tracebacks.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        overrides = list(args.set) + ([f"zero_stage={args.zero}"] if args.zero else [])
        cfg = load_trial_config(args.config, overrides)
        name = safe_run_name(args.name or f"trial-{cfg.config_hash()}")
        storage = Path(args.storage).resolve()
        inputs = prepare_trial_inputs(cfg)
        on_ray = args.workers > 1 or args.gpus_per_worker > 0 or args.cluster is not None
        if not on_ray:
            if (storage / name).exists() and not args.resume:
                raise ConfigError(f"{storage / name} exists; pass --resume or a new --name")
            final = run_local(cfg, storage / name, resume=args.resume, inputs=inputs)
        else:
            final = _run_on_ray(cfg, args, name, storage)
    except Exception as err:  # noqa: BLE001 - one line for users, the traceback with --debug
        if args.debug or not isinstance(err, user_errors()):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in final.items() if k.startswith(("dev/", "test/")) or k in _KEEP}
    print(json.dumps(summary, sort_keys=True))
    return 0


_KEEP = ("lambda", "epoch", "adapter_path", "predictions_path", "time_total_s")


def _run_on_ray(cfg: TrialConfig, args: argparse.Namespace, name: str, storage: Path) -> dict:
    from ermgap_ray.cluster import connect

    info = connect(args.cluster or "auto")
    print(info.describe(), flush=True)
    trainer = build_trainer(
        cfg,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        name=name,
        storage_path=str(storage),
    )
    return final_metrics(trainer.fit())


def user_errors() -> tuple[type[Exception], ...]:
    """Bad input the CLIs report as one line (exit 2), not as a traceback."""
    from ermgap_ray.cluster import ClusterError
    from ermgap_ray.data.validate import DataValidationError
    from ermgap_ray.model import BackboneError

    return (
        ConfigError,
        DataValidationError,
        BackboneError,
        ClusterError,
        CheckpointWriteError,
    )


if __name__ == "__main__":
    sys.exit(main())
