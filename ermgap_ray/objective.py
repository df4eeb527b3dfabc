"""ERM-MinMaxGAP, mean-gap and Group DRO objectives, and the λ schedules (pure torch).

Every objective is a function of per-group loss sums S_{l,g} and counts n_{l,g}, never of raw
samples. Under data parallelism the trainer all-reduces detached (S, n) and passes the surrogate
S_glob − S_loc.detach() + S_loc, so the regulariser is the one of the global batch (DESIGN.md).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ermgap_ray.data.schema import GENDERS

NUM_GENDERS = len(GENDERS)


def group_stats(
    losses: Tensor, strata: Tensor, genders: Tensor, num_strata: int
) -> tuple[Tensor, Tensor]:
    """Segment sums S_{l,g} = Σ_{i∈(l,g)} ℓ_i (differentiable) and counts n_{l,g}, each (L, 2).

    Accumulates in at least float32 so bf16 losses do not lose counts above 256.
    """
    dtype = torch.promote_types(losses.dtype, torch.float32)
    idx = strata.long() * NUM_GENDERS + genders.long()
    flat = losses.new_zeros(num_strata * NUM_GENDERS, dtype=dtype)
    sums = flat.index_add(0, idx, losses.to(dtype))
    counts = flat.index_add(0, idx, torch.ones_like(losses, dtype=dtype))
    return sums.view(num_strata, NUM_GENDERS), counts.view(num_strata, NUM_GENDERS)


def gender_gaps(sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Δ_l = |L_{l,F} − L_{l,M}| with L_{l,g} = S_{l,g} / n_{l,g}, and valid_l = both genders seen.

    Division by n + (n == 0) (group_DRO's LossComputer) and zeroing the difference *before* abs
    keep invalid strata at exactly 0 with zero gradient; torch's d|x|/dx at 0 is 0, never NaN.
    """
    means = sums / (counts + (counts == 0))
    valid = (counts > 0).all(dim=-1)
    diff = means[..., 0] - means[..., 1]
    return torch.where(valid, diff, torch.zeros_like(diff)).abs(), valid


def _delta_max(gaps: Tensor) -> Tensor:
    """Δ_max = max_l Δ_l; invalid strata hold 0 and Δ_l ≥ 0, so no valid stratum gives 0."""
    return gaps.amax() if gaps.numel() else gaps.new_zeros(())


def _infer_strata(strata: Tensor) -> int:
    return int(strata.max()) + 1 if strata.numel() else 0


def max_gender_gap(
    losses: Tensor, strata: Tensor, genders: Tensor, num_strata: int | None = None
) -> Tensor:
    """Δ_max = max over valid strata l of |L_{l,F} − L_{l,M}|; 0 when no stratum is valid."""
    n = _infer_strata(strata) if num_strata is None else num_strata
    return _delta_max(gender_gaps(*group_stats(losses, strata, genders, n))[0])


def minmax_gap(
    losses: Tensor, strata: Tensor, genders: Tensor, p: float = 2, num_strata: int | None = None
) -> Tensor:
    """R = Δ_max^p, the ERM-MinMaxGAP regulariser."""
    return max_gender_gap(losses, strata, genders, num_strata) ** p


class ObjectiveTerms(NamedTuple):
    """loss = what to backprop; erm = L_ERM; reg = the regulariser R; gap = Δ_max (detached)."""

    loss: Tensor
    erm: Tensor
    reg: Tensor
    gap: Tensor


class Objective(ABC):
    """An objective of (S, n); `training` gates state updates (Group DRO's q)."""

    training: bool = True
    num_strata: int | None = None

    @abstractmethod
    def terms(self, sums: Tensor, counts: Tensor, lam: float) -> ObjectiveTerms: ...

    def __call__(
        self,
        losses: Tensor,
        strata: Tensor,
        genders: Tensor,
        lam: float = 0.0,
        num_strata: int | None = None,
    ) -> ObjectiveTerms:
        """Single-process use: terms(group_stats(batch))."""
        n = num_strata if num_strata is not None else self.num_strata
        n = _infer_strata(strata) if n is None else n
        return self.terms(*group_stats(losses, strata, genders, n), lam)

    def train(self, mode: bool = True) -> Objective:
        self.training = mode
        return self

    def eval(self) -> Objective:
        return self.train(False)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


def _erm_and_gaps(sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """L_ERM = Σ S / Σ n (the batch mean of ℓ_i), plus Δ_l and the valid mask."""
    erm = sums.sum() / counts.sum().clamp_min(1)
    return erm, *gender_gaps(sums, counts)


class ERM(Objective):
    """L = L_ERM."""

    def terms(self, sums: Tensor, counts: Tensor, lam: float = 0.0) -> ObjectiveTerms:
        erm, gaps, _ = _erm_and_gaps(sums, counts)
        return ObjectiveTerms(erm, erm, torch.zeros_like(erm), _delta_max(gaps).detach())


class _GapPenalty(Objective):
    """L = L_ERM + λ·R with R = (aggregate of Δ_l over valid strata)^p."""

    def __init__(self, p: float = 2) -> None:
        if p <= 0:
            raise ValueError(f"p must be > 0, got {p}")
        self.p = p

    @abstractmethod
    def aggregate(self, gaps: Tensor, valid: Tensor) -> Tensor: ...

    def terms(self, sums: Tensor, counts: Tensor, lam: float) -> ObjectiveTerms:
        erm, gaps, valid = _erm_and_gaps(sums, counts)
        reg = self.aggregate(gaps, valid) ** self.p
        return ObjectiveTerms(erm + lam * reg, erm, reg, _delta_max(gaps).detach())


class MinMaxGap(_GapPenalty):
    """ERM-MinMaxGAP: R = (max_l Δ_l)^p."""

    def aggregate(self, gaps: Tensor, valid: Tensor) -> Tensor:
        return _delta_max(gaps)


class MeanGap(_GapPenalty):
    """Mean-gap ablation: R = (mean over valid l of Δ_l)^p; 0 when none is valid."""

    def aggregate(self, gaps: Tensor, valid: Tensor) -> Tensor:
        return gaps.sum() / valid.sum().clamp_min(1)


class GroupDRO(Objective):
    """Sagawa et al. 2020, online Group DRO over the groups g = (l, gender).

    Training step: q_g ← q_g·exp(η·L_g) for groups present in the batch (L_g detached), then
    q ← q / Σq; loss = Σ_g q_g L_g with absent groups' L_g = 0. λ is ignored; reg = loss.
    """

    def __init__(self, num_groups: int, step_size: float) -> None:
        self.num_groups = num_groups
        self.step_size = step_size
        self.num_strata = num_groups // NUM_GENDERS
        self.q = torch.full((num_groups,), 1.0 / num_groups, dtype=torch.float64)

    def terms(self, sums: Tensor, counts: Tensor, lam: float = 0.0) -> ObjectiveTerms:
        if sums.numel() != self.num_groups:
            raise ValueError(f"GroupDRO has {self.num_groups} groups, stats have {sums.numel()}")
        erm, gaps, _ = _erm_and_gaps(sums, counts)
        s, n = sums.reshape(-1), counts.reshape(-1)
        group_loss = s / (n + (n == 0))
        q = self.q.to(group_loss.device)
        if self.training:
            step = torch.where(n > 0, self.step_size * group_loss.detach().double(), 0.0)
            q = torch.softmax(q.log() + step, dim=0)  # = q·exp(step) / Σ, overflow-safe
        self.q = q
        robust = (q.to(group_loss.dtype) * group_loss).sum()
        return ObjectiveTerms(robust, erm, robust, _delta_max(gaps).detach())

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        q = torch.tensor(state["q"], dtype=torch.float64)
        if q.shape != (self.num_groups,):
            raise ValueError(f"GroupDRO state has {q.numel()} weights, expected {self.num_groups}")
        self.q = q


def build_objective(name: str, p: int, num_strata: int, groupdro_eta: float) -> Objective:
    """The objective named by the `objective` config knob."""
    if name == "erm":
        return ERM()
    if name == "minmaxgap":
        return MinMaxGap(p)
    if name == "meangap":
        return MeanGap(p)
    if name == "groupdro":
        return GroupDRO(num_strata * NUM_GENDERS, groupdro_eta)
    raise ValueError(f"unknown objective {name!r}; expected erm, minmaxgap, meangap or groupdro")


class LambdaSchedule(ABC):
    """λ_k, read as `.value` and moved by `update(Δ_dev,k)` after each dev evaluation."""

    value: float

    @abstractmethod
    def update(self, dev_gap: float) -> float: ...

    def state_dict(self) -> dict[str, float]:
        return {"lam": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["lam"])


class FixedLambda(LambdaSchedule):
    """λ_k = λ for every k; λ = 0 is the ERM baseline."""

    def __init__(self, lam: float) -> None:
        self.value = float(lam)

    def update(self, dev_gap: float) -> float:
        return self.value


class AdaptiveLambda(LambdaSchedule):
    """Projected dual ascent: λ_{k+1} = clip(λ_k + η(Δ_dev,k − ε), 0, λ_max).

    A non-finite Δ_dev (an undefined metric gap) leaves λ unchanged instead of poisoning it.
    """

    def __init__(self, lam0: float, eta: float, epsilon: float, lam_max: float) -> None:
        if not 0.0 <= lam0 <= lam_max:
            raise ValueError(f"need 0 <= lam0 <= lam_max, got lam0={lam0}, lam_max={lam_max}")
        self.value = float(lam0)
        self.eta, self.epsilon, self.lam_max = float(eta), float(epsilon), float(lam_max)

    def update(self, dev_gap: float) -> float:
        if math.isfinite(dev_gap):
            step = self.value + self.eta * (dev_gap - self.epsilon)
            self.value = min(max(step, 0.0), self.lam_max)
        return self.value


def build_lambda_schedule(
    mode: str, lam: float, eta: float, epsilon: float, lam_max: float
) -> LambdaSchedule:
    """The schedule named by the `lambda_mode` config knob (fixed | adaptive)."""
    if mode == "fixed":
        return FixedLambda(lam)
    if mode == "adaptive":
        return AdaptiveLambda(lam, eta, epsilon, lam_max)
    raise ValueError(f"unknown lambda_mode {mode!r}; expected fixed or adaptive")
