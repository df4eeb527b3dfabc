"""Batches that hold every (language, gender) group, so the gap Δ_l is defined at every step.

Δ_l = |L_{l,F} - L_{l,M}| needs both genders of l in the GLOBAL batch (the union of the ranks'
micro-batches; see objective.py), so the sampler builds global batches of
batch_size × num_replicas and hands rank r the slice global_batch[r::num_replicas].
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class GroupStratifiedBatchSampler:
    """A torch `BatchSampler`-compatible iterable of index lists, stratified by group.

    Per epoch, with rng = default_rng([seed, epoch]): shuffle each group, lay the groups end to end
    (in random order) and deal position p to global batch p mod n_batches. A group with c_g items
    then lands floor(c_g / n_batches) or one more times in every batch, so each group with at least
    n_batches items is in every batch. drop_last=True keeps n_batches = N // global_batch and drops
    the surplus from the largest groups; drop_last=False keeps all N in ceil(N / batch_size)
    batches whose sizes differ by at most one (single process only).
    """

    def __init__(
        self,
        group_ids: np.ndarray,
        batch_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        if not drop_last and num_replicas > 1:
            raise ValueError("drop_last=False is for a single process: ranks need equal steps")
        _, inverse = np.unique(np.asarray(group_ids), return_inverse=True)
        self.members = [np.flatnonzero(inverse == g) for g in range(inverse.max(initial=-1) + 1)]
        self.n = len(inverse)
        self.batch_size = batch_size
        self.global_size = batch_size * num_replicas
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for `epoch`; every rank must call it with the same value."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.global_size
        return -(-self.n // self.batch_size)

    def global_batches(self) -> list[np.ndarray]:
        """This epoch's global batches (identical on every rank)."""
        n_batches = len(self)
        if n_batches == 0:
            return []
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
        groups = [rng.permutation(m) for m in self.members]
        counts = np.array([len(g) for g in groups])
        surplus = self.n - n_batches * self.global_size if self.drop_last else 0
        for _ in range(surplus):
            largest = np.flatnonzero(counts == counts.max())
            counts[rng.choice(largest)] -= 1
        order = rng.permutation(len(groups))
        laid = np.concatenate([groups[g][: counts[g]] for g in order])
        batch_of = np.arange(len(laid)) % n_batches
        slot = rng.permutation(n_batches)
        batches = [laid[batch_of == slot[b]] for b in range(n_batches)]
        return [rng.permutation(b) for b in batches]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield batch[self.rank :: self.num_replicas].tolist()


def shard_for_eval(n: int, num_replicas: int, rank: int) -> np.ndarray:
    """Indices rank, rank + R, ... of n items: no padding, so no sample is counted twice."""
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
    return np.arange(rank, n, num_replicas)
