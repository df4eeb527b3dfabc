"""Make any group-statistics objective exact for the *global* batch under data parallelism.

Every objective in `objective.py` is a function of per-group loss sums S and counts N. Under
data parallelism with gradient accumulation, the batch that DESIGN.md's regulariser is defined on
is the union of all ranks' micro-batches of one optimizer step. Each rank all-reduces its
detached (S, N) and back-propagates the plug-in surrogate

    S_sur = S_global + (S_local - stopgrad(S_local)),

whose *value* is the global statistic and whose *gradient* is the local samples' share of the
global gradient. Summing those gradients over ranks and micro-batches gives exactly the gradient
of the single-process objective on the concatenated batch. Data-parallel engines average
gradients over ranks (and DeepSpeed divides by the accumulation steps), so the loss handed to
`backward` is scaled back by `world_size * grad_accum` (`GlobalBatch.loss_scale`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a (detached) tensor over ranks in place; a no-op in a single process."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def plug_in(local: torch.Tensor, global_value: torch.Tensor) -> torch.Tensor:
    """Value of `global_value`, gradient of `local`."""
    return global_value + (local - local.detach())


@dataclass
class GlobalBatch:
    """The detached global (sums, counts) of one optimizer step, shared by all its micro-batches."""

    sums: torch.Tensor
    counts: torch.Tensor
    grad_accum: int = 1

    @classmethod
    def from_local(
        cls, sums: torch.Tensor, counts: torch.Tensor, grad_accum: int = 1
    ) -> GlobalBatch:
        """All-reduce once; `sums`, `counts`: this rank's totals over the step's micro-batches."""
        packed = torch.cat([sums.detach().flatten(), counts.detach().flatten().to(sums.dtype)])
        all_reduce_sum(packed)
        n = sums.numel()
        return cls(
            sums=packed[:n].view_as(sums),
            counts=packed[n:].view_as(counts).to(counts.dtype),
            grad_accum=grad_accum,
        )

    def surrogate(self, local_sums: torch.Tensor) -> torch.Tensor:
        """Global sums in value, this micro-batch's sums in gradient."""
        return plug_in(local_sums, self.sums)

    @property
    def loss_scale(self) -> float:
        """Undo the engine's 1/(world * grad_accum) gradient averaging."""
        return float(world_size() * self.grad_accum)
