"""The trial as a recipe (torchtune's habit): `setup` composes library parts, `run` drives epochs.

One epoch is `train_epoch` (stratified batches, the exact global-batch objective), `evaluate`
on dev, `update_lambda` from the dev gap, `save` (a checkpoint the session persists); the last
epoch adds the test split and the deployable artefacts. The same code runs at world size 1 or N,
in this process, in a Tune trial or on Ray Train workers: only the session differs.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ermgap_ray.config import TrialConfig
from ermgap_ray.data.schema import GENDERS, LANGUAGES, SPLITS
from ermgap_ray.errors import NonFiniteLossError
from ermgap_ray.global_batch import GlobalBatch
from ermgap_ray.objective import (
    build_lambda_schedule,
    build_objective,
    gender_gaps,
    group_stats,
)
from ermgap_ray.train.engine import device, make_engine, resolve_engine
from ermgap_ray.train.evaluate import (
    NUM_STRATA,
    Predictions,
    loader,
    predict,
    save_artifacts,
    test_metrics,
    to_device,
)
from ermgap_ray.train.session import TRAINER_STATE, Session, checkpoint_error, local_dir

METRICS_FILE = "metrics.json"


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
    from ermgap_ray.model import audio_window_seconds, resolve_backbone

    backbone_dir = resolve_backbone(cfg.backbone)
    records, fingerprint = resolve_data(
        cfg.data,
        check_audio=check_audio,
        modality=cfg.modality,
        max_seconds=audio_window_seconds(backbone_dir),
        twin_bias=cfg.twin_bias,
        twin_seed=cfg.twin_seed,
    )
    cache = None
    if cfg.use_cache:
        cache = EmbeddingCache.build_or_load(backbone_dir, records, progress=progress)
    return TrialInputs(records, fingerprint, backbone_dir, cache)


def corpus_key(cfg: TrialConfig) -> tuple[Any, ...]:
    """The knobs that pick the records and their audio files."""
    return (cfg.data, cfg.twin_bias, cfg.twin_seed)


def inputs_key(cfg: TrialConfig) -> tuple[Any, ...]:
    """The knobs `prepare_trial_inputs` depends on: trials equal here share their inputs."""
    return (*corpus_key(cfg), cfg.backbone, cfg.use_cache, cfg.modality)


_WORKER_INPUTS: dict[tuple[Any, ...], TrialInputs] = {}
# A grid alternates its modalities on every reused process; the cache is memory-mapped, so
# keeping both costs pages the OS can drop, while re-opening costs ≈ 0.5 s per trial.
_WORKER_INPUTS_KEPT = 2


def worker_inputs(cfg: TrialConfig) -> TrialInputs:
    """`prepare_trial_inputs` once per process and input spec: a reused trial process (Tune's
    `reuse_actors`) re-opens the corpus and cache only when a trial asks for inputs it has not
    kept (the least recently used spec goes first). The driver validated the files before the
    sweep started."""
    key = inputs_key(cfg)
    inputs = _WORKER_INPUTS.pop(key, None)
    if inputs is None:
        while len(_WORKER_INPUTS) >= _WORKER_INPUTS_KEPT:
            del _WORKER_INPUTS[next(iter(_WORKER_INPUTS))]
        inputs = prepare_trial_inputs(cfg, progress=False, check_audio=False)
    _WORKER_INPUTS[key] = inputs  # last = most recently used
    return inputs


def epoch_seed(cfg: TrialConfig, epoch: int) -> int:
    """Per-epoch reseeding makes a resumed run bitwise-identical to an uninterrupted one."""
    return cfg.seed * 100_003 + epoch


def _chunks(it: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in it:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []


def micro_stats(
    engine: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = engine(batch).float()
    losses = F.cross_entropy(logits, batch["labels"], reduction="none")
    sums, counts = group_stats(losses, batch["strata"], batch["genders"], NUM_STRATA)
    return losses, sums, counts


class EpochStats:
    """What one epoch's steps saw: the mean loss, the noisy batch Δ_max, and the running
    per-group losses over the whole epoch, whose gap is the one the regulariser chases."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.batch_gaps: list[torch.Tensor] = []
        self.valid: list[torch.Tensor] = []
        self.sums = torch.zeros(NUM_STRATA, len(GENDERS), dtype=torch.float64)
        self.counts = torch.zeros_like(self.sums)

    def add(self, loss: torch.Tensor, batch_gap: torch.Tensor, batch: GlobalBatch) -> None:
        self.losses.append(loss.detach())
        self.batch_gaps.append(batch_gap.detach())
        self.sums += batch.sums.detach().double().cpu()
        self.counts += batch.counts.detach().double().cpu()
        self.valid.append((batch.counts > 0).all(dim=-1).cpu())

    def metrics(self) -> dict[str, float]:
        if not self.losses:
            return {"train/loss": float("nan"), "train/gap": float("nan")}
        gaps, valid = gender_gaps(self.sums, self.counts)
        gaps = torch.where(valid, gaps, torch.full_like(gaps, -1.0))
        worst = int(gaps.argmax())
        means = self.sums / self.counts.clamp(min=1)
        out = {
            "train/loss": float(torch.stack(self.losses).mean()),
            "train/gap": float(torch.stack(self.batch_gaps).mean()),
            "train/running_gap": float(gaps.max().clamp(min=0)),
            "train/worst_valid_frac": float(torch.stack(self.valid)[:, worst].double().mean()),
        }
        for s in range(NUM_STRATA):
            if self.counts[s].sum() == 0:
                continue
            name = _stratum_name(s)
            for g, gender in enumerate(GENDERS):
                out[f"train/loss/{name}_{gender}"] = float(means[s, g])
        return out


def _stratum_name(stratum: int) -> str:
    lang = LANGUAGES[stratum % len(LANGUAGES)]
    return lang if stratum < len(LANGUAGES) else f"{lang}+text"


class Recipe:
    """One trial. `run()` returns the final metrics (the last report)."""

    def __init__(
        self,
        cfg: TrialConfig,
        session: Session,
        inputs: TrialInputs | None = None,
        engine: str | None = None,
        verbose: bool = True,
    ) -> None:
        self.cfg = cfg
        self.session = session
        self.inputs = inputs
        self.engine_kind = engine or cfg.engine
        self.log = EpochPrinter(cfg, session.rank == 0 and verbose)

    # -- setup ---------------------------------------------------------------------------------

    def setup(self) -> None:
        from ermgap_ray.data.sampler import (
            GROUP_NAMES,
            GroupStratifiedBatchSampler,
            language_gender_groups,
        )
        from ermgap_ray.features import SERDataset, collate_ser
        from ermgap_ray.model import SERModel

        cfg = self.cfg
        self.started = time.perf_counter()
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        self.device = device()
        self.rank, self.world = self.session.rank, self.session.world_size
        self.engine_kind = resolve_engine(self.engine_kind, self.world, self.device)
        inputs = self.inputs or worker_inputs(cfg)
        cache = inputs.cache if cfg.use_cache else None
        self.model = SERModel.from_backbone(
            inputs.backbone_dir,
            lora_r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            seed=cfg.seed,
            dtype=torch.bfloat16 if self.device.type == "cuda" else torch.float32,
        )
        records = inputs.records
        self.frames = {s: records[records["split"] == s].reset_index(drop=True) for s in SPLITS}
        self.collate = collate_ser
        self.datasets = {
            s: SERDataset(df, inputs.backbone_dir, cfg.modality, cache)
            for s, df in self.frames.items()
        }
        self.objective = build_objective(cfg.objective, cfg.p, NUM_STRATA, cfg.groupdro_eta)
        self.schedule = build_lambda_schedule(
            "adaptive" if cfg.adapts_lambda else "fixed",
            cfg.lam,
            cfg.eta,
            cfg.epsilon,
            cfg.lam_max,
        )
        self.engine: Any = None
        if cfg.epochs > 0:
            self.engine = make_engine(self.model, cfg, self.device, self.engine_kind)
            if cfg.torch_compile and self.engine_kind == "torch":
                self.model.compile_language_model()
            self.sampler = GroupStratifiedBatchSampler(
                language_gender_groups(self.frames["train"]),
                batch_size=cfg.batch_size,
                seed=cfg.seed,
                num_replicas=self.world,
                rank=self.rank,
                drop_last=True,
                group_names=GROUP_NAMES,
            )
            self.train_loader = loader(
                self.datasets["train"], collate_ser, self.device, batch_sampler=self.sampler
            )

    # -- one epoch -----------------------------------------------------------------------------

    def train_epoch(self, epoch: int, lam: float) -> dict[str, float]:
        cfg, engine = self.cfg, self.engine
        self.sampler.set_epoch(epoch)
        torch.manual_seed(epoch_seed(cfg, epoch))
        engine.train()
        stats = EpochStats()
        for step, micro_batches in enumerate(_chunks(self.train_loader, cfg.grad_accum)):
            micro_batches = [to_device(b, self.device) for b in micro_batches]
            if cfg.grad_accum > 1:
                # The regulariser is defined on the whole optimizer step, so its statistics must
                # be known before the first micro-batch's backward: one no-grad pass collects them.
                with torch.no_grad():
                    seen = [micro_stats(engine, b)[1:] for b in micro_batches]
                step_batch = GlobalBatch.from_local(
                    sum(s for s, _ in seen), sum(c for _, c in seen), cfg.grad_accum
                )
            for i, batch in enumerate(micro_batches):
                _, sums, counts = micro_stats(engine, batch)
                global_batch = (
                    step_batch if cfg.grad_accum > 1 else GlobalBatch.from_local(sums, counts)
                )
                self.objective.train(i == 0)  # Group DRO moves q once per optimizer step
                terms = self.objective.terms(global_batch.surrogate(sums), global_batch.counts, lam)
                if not torch.isfinite(terms.loss):
                    means = (global_batch.sums / global_batch.counts.clamp(min=1)).tolist()
                    raise NonFiniteLossError(
                        f"NonFiniteLoss: epoch {epoch} step {step}: loss={terms.loss.item()}, "
                        f"group losses (stratum x [F, M]) = {means}"
                    )
                engine.backward(terms.loss * global_batch.loss_scale)
                engine.step()
            stats.add(terms.loss, terms.gap, global_batch)
        return stats.metrics()

    def evaluate(self, split: str) -> Predictions:
        forward = self.engine if self.engine is not None else self.model
        forward.eval()
        return predict(
            forward, self.datasets[split], self.collate, self.device, self.rank, self.world
        )

    def dev_metrics(self, dev: Predictions) -> dict[str, float]:
        frame = self.frames["dev"]
        out = {f"dev/{k}": v for k, v in dev.metrics(frame, seed=self.cfg.seed).items()}
        out["dev/loss_gap"] = dev.loss_gap(frame, self.cfg.modality)
        return out

    def dev_gap(self, dev_metrics: dict[str, float]) -> float:
        """Δ_dev in the units of `dev_gap_metric`: nats for `loss`, a fraction otherwise."""
        metric = self.cfg.dev_gap_metric
        return dev_metrics["dev/loss_gap" if metric == "loss" else f"dev/max_gap_{metric}"]

    def update_lambda(self, dev_gap: float) -> float:
        """Projected dual ascent; an undefined (NaN) gap leaves λ where it is."""
        return self.schedule.update(float(dev_gap))

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self, ckpt_dir: Path, epoch: int) -> None:
        """Every rank saves its engine shard (a collective); rank 0 adds the loop state."""
        if self.engine_kind == "deepspeed" or self.rank == 0:
            self.engine.save(ckpt_dir)
        if self.rank == 0:
            state = {
                "epoch": epoch,
                "engine": self.engine_kind,
                "lambda": self.schedule.state_dict(),
                "objective": self.objective.state_dict(),
            }
            (ckpt_dir / TRAINER_STATE).write_text(json.dumps(state))

    def restore(self, checkpoint: Any) -> int:
        """Engine, λ and objective state (Group DRO's q); returns the next epoch."""
        with local_dir(checkpoint) as local:
            state = json.loads((local / TRAINER_STATE).read_text())
            if state.get("engine", "deepspeed") != self.engine_kind:
                raise ValueError(
                    f"checkpoint {local} was written by the {state.get('engine')} engine, "
                    f"this trial runs {self.engine_kind}"
                )
            self.engine.load(local)
        self.schedule.load_state_dict(state["lambda"])
        self.objective.load_state_dict(state["objective"])
        return int(state["epoch"]) + 1

    def finish(self, ckpt_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        """The last evaluation: test metrics with CIs, the adapter and the predictions."""
        test = self.evaluate("test")
        out = test_metrics(test, self.frames["test"], self.cfg)
        save_artifacts(self.model, test, self.frames["test"], ckpt_dir, self.rank, self.cfg)
        out["is_final"] = 1
        out["time_total_s"] = time.perf_counter() - self.started
        return out

    # -- driving -------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self.setup()
        if self.cfg.epochs == 0:
            return self.evaluate_backbone()
        start = 0
        final: dict[str, Any] = {}
        checkpoint = self.session.latest_checkpoint()
        if checkpoint is not None:
            start = self.restore(checkpoint)
            self.log.line(f"resumed after epoch {start - 1} (lambda={self.schedule.value:.4g})")
            if start >= self.cfg.epochs:  # finished before the driver saw its last report
                with local_dir(checkpoint) as local:
                    final = json.loads((local / METRICS_FILE).read_text())
        for epoch in range(start, self.cfg.epochs):
            final = self.run_epoch(epoch)
        return final

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        t0, cpu0 = time.perf_counter(), time.process_time()
        lam = self.schedule.value
        metrics: dict[str, Any] = {"epoch": epoch + 1, "lambda": lam}
        metrics |= self.train_epoch(epoch, lam)
        is_final = epoch + 1 >= self.cfg.epochs
        if is_final or self.cfg.scores_dev_every_epoch:
            metrics |= self.dev_metrics(self.evaluate("dev"))
            metrics["lambda_next"] = self.update_lambda(self.dev_gap(metrics))
        else:
            metrics["lambda_next"] = self.schedule.value
        with tempfile.TemporaryDirectory(prefix="ermgap-ckpt-") as tmp:
            ckpt_dir = Path(tmp)
            try:
                self.save(ckpt_dir, epoch)
                if is_final:
                    metrics |= self.finish(ckpt_dir, metrics)
            except OSError as err:
                previous = self.session.last_checkpoint or self.session.latest_checkpoint()
                raise checkpoint_error(metrics["epoch"], ckpt_dir, err, previous) from None
            metrics["time_epoch_s"] = time.perf_counter() - t0
            metrics["cpu_epoch_s"] = time.process_time() - cpu0
            if self.rank == 0:
                (ckpt_dir / METRICS_FILE).write_text(json.dumps(metrics))
            self.log.epoch(metrics)
            self.session.report(metrics, ckpt_dir)
        return metrics

    def evaluate_backbone(self) -> dict[str, Any]:
        """The zero-shot reference: dev and test of the untrained backbone (peft initialises
        LoRA to the identity), reported once with its artefacts; nothing is trained."""
        t0, cpu0 = time.perf_counter(), time.process_time()
        self.model.to(self.device)
        metrics: dict[str, Any] = {"epoch": 0, "lambda": self.schedule.value}
        metrics |= self.dev_metrics(self.evaluate("dev"))
        with tempfile.TemporaryDirectory(prefix="ermgap-ckpt-") as tmp:
            metrics |= self.finish(Path(tmp), metrics)
            metrics["time_epoch_s"] = time.perf_counter() - t0
            metrics["cpu_epoch_s"] = time.process_time() - cpu0
            self.log.epoch(metrics)
            self.session.report(metrics, Path(tmp))
        return metrics


class EpochPrinter:
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
            parts.append(
                f"loss {m['train/loss']:.3f} gap {m['train/running_gap']:.3f} "
                f"(batch {m['train/gap']:.3f})"
            )
        lam = f"lambda {m['lambda']:.3g}"
        if "lambda_next" in m:
            lam += f" -> {m['lambda_next']:.3g}"
        parts.append(lam)
        if "dev/wf1" in m:
            parts.append(
                f"dev wf1 {100 * m['dev/wf1']:.1f} max_gap_wf1 {100 * m['dev/max_gap_wf1']:.1f}"
            )
        if "test/wf1" in m:
            parts.append(
                f"test wf1 {100 * m['test/wf1']:.1f} max_gap_wf1 {100 * m['test/max_gap_wf1']:.1f}"
            )
        parts.append(f"{m['time_epoch_s']:.1f}s")
        self.line(" | ".join(parts))
