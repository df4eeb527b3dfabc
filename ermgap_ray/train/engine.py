"""Engines: DeepSpeed ZeRO for data-parallel and GPU trials, plain torch for one CPU rank.

Both expose one surface (`__call__`, `train`, `eval`, `backward`, `step`, `save`, `load`), so the
recipe never asks which it has. A ZeRO engine over one rank shards nothing; on one CPU worker the
torch engine gives the same LoRA weights (tests/test_engine.py, to 1e-6) without DeepSpeed's
start-up, so `engine="auto"` picks it there.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ermgap_ray.config import TrialConfig

DS_TAG = "state"
TORCH_STATE = "engine_state.safetensors"
TORCH_META = "engine_state.json"


def device() -> torch.device:
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_engine(kind: str, world_size: int, dev: torch.device) -> str:
    """`auto`: DeepSpeed where it has work to do (several ranks, or a GPU for bf16), else torch."""
    if kind != "auto":
        return kind
    return "deepspeed" if world_size > 1 or dev.type == "cuda" else "torch"


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
    """The DeepSpeed engine's surface on a plain torch optimizer (one process only).

    Its checkpoint is plain files: the trainable tensors and AdamW moments as safetensors, the
    step counters as JSON (no pickle).
    """

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_accum: int):
        self.module = module
        self.optimizer = optimizer
        self.grad_accum = grad_accum
        self._micro = 0
        self._clipped = module.trainable_parameters()  # walking the module tree costs ~5% a step

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
            torch.nn.utils.clip_grad_norm_(self._clipped, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def _named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.module.named_parameters() if p.requires_grad}

    def save(self, ckpt_dir: Path) -> None:
        from safetensors.torch import save_file

        names = {id(p): n for n, p in self._named_trainable().items()}
        tensors: dict[str, torch.Tensor] = {}
        steps: dict[str, float] = {}
        for n, p in self._named_trainable().items():
            tensors[f"param/{n}"] = p.detach().contiguous()
        for p, state in self.optimizer.state.items():
            n = names[id(p)]
            tensors[f"exp_avg/{n}"] = state["exp_avg"].contiguous()
            tensors[f"exp_avg_sq/{n}"] = state["exp_avg_sq"].contiguous()
            steps[n] = float(state["step"])
        save_file(tensors, str(ckpt_dir / TORCH_STATE))
        (ckpt_dir / TORCH_META).write_text(json.dumps({"micro": self._micro, "steps": steps}))

    def load(self, ckpt_dir: Path) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(ckpt_dir / TORCH_STATE))
        meta = json.loads((ckpt_dir / TORCH_META).read_text())
        with torch.no_grad():
            for n, p in self._named_trainable().items():
                p.copy_(tensors[f"param/{n}"])
                if n in meta["steps"]:
                    self.optimizer.state[p] = {
                        "step": torch.tensor(meta["steps"][n]),
                        "exp_avg": tensors[f"exp_avg/{n}"].clone(),
                        "exp_avg_sq": tensors[f"exp_avg_sq/{n}"].clone(),
                    }
        self._micro = int(meta["micro"])


class DeepSpeedEngine:
    """`deepspeed.initialize`'s engine behind the same save/load surface as TorchEngine."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.module = engine.module

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.engine(batch)

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def save(self, ckpt_dir: Path) -> None:
        """A collective: every rank writes its shard."""
        self.engine.save_checkpoint(str(ckpt_dir), tag=DS_TAG, exclude_frozen_parameters=True)

    def load(self, ckpt_dir: Path) -> None:
        self.engine.load_checkpoint(str(ckpt_dir), tag=DS_TAG, load_module_strict=False)


def ensure_process_group(dev: torch.device) -> None:
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
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=0, world_size=1)


def make_engine(model: Any, cfg: TrialConfig, dev: torch.device, kind: str) -> Any:
    """A TorchEngine or DeepSpeedEngine over `model`'s trainable (LoRA) parameters."""
    optimizer = torch.optim.AdamW(
        model.trainable_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    if kind == "torch":
        return TorchEngine(model.to(dev), optimizer, cfg.grad_accum)
    import deepspeed

    ensure_process_group(dev)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config=deepspeed_config(cfg, bf16=dev.type == "cuda"),
        dist_init_required=False,
    )
    return DeepSpeedEngine(engine)
