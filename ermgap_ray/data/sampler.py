"""Batches that hold every (language, gender) group, so the gap Δ_l is defined at every step.

Δ_l = |L_{l,F} - L_{l,M}| needs both genders of l in the GLOBAL batch (the union of the ranks'
micro-batches; see objective.py), so the sampler builds global batches of
batch_size × num_replicas and hands rank r the slice global_batch[r::num_replicas].
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from ermgap_ray.data.schema import GENDERS, LANGUAGES

GROUP_NAMES: dict[int, str] = {
    li * len(GENDERS) + gi: f"{lang}-{g}"
    for li, lang in enumerate(LANGUAGES)
    for gi, g in enumerate(GENDERS)
}
"""`language_gender_groups` id -> "lang-gender" (e.g. 3 -> "ja-M")."""
GROUP_LANGUAGES: dict[int, str] = {i: name.split("-")[0] for i, name in GROUP_NAMES.items()}
"""`language_gender_groups` id -> its language, for `valid_stratum_fraction`."""


class SmallGroupWarning(UserWarning):
    """A group has fewer training clips than an epoch has batches, so it misses some batches."""


def language_gender_groups(df: pd.DataFrame) -> np.ndarray:
    """Group id language_index * len(GENDERS) + gender_index of each record (see GROUP_NAMES)."""
    lang = df["language"].map(LANGUAGES.index).to_numpy()
    gender = df["gender"].map(GENDERS.index).to_numpy()
    return lang * len(GENDERS) + gender


class GroupStratifiedBatchSampler:
    """A torch `BatchSampler`-compatible iterable of index lists, stratified by group.

    Per epoch, with rng = default_rng([seed, epoch]): shuffle each group, lay the groups end to end
    (in random order) and deal position p to global batch p mod n_batches. A group with c_g items
    then lands floor(c_g / n_batches) or one more times in every batch, so each group with at least
    n_batches items is in every batch. drop_last=True keeps n_batches = N // global_batch and drops
    the surplus from the largest groups; drop_last=False keeps all N in ceil(N / batch_size)
    batches whose sizes differ by at most one (single process only).

    A group with fewer items than n_batches cannot be in every batch: rank 0's constructor says
    so in one `SmallGroupWarning` naming each such group (by `group_names[id]` when given) and
    its count. `valid_stratum_fraction` measures the consequence for the worst-language gap.
    """

    def __init__(
        self,
        group_ids: np.ndarray,
        batch_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = True,
        group_names: Mapping[Any, str] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        if not drop_last and num_replicas > 1:
            raise ValueError("drop_last=False is for a single process: ranks need equal steps")
        self.groups, inverse = np.unique(np.asarray(group_ids), return_inverse=True)
        self.members = [np.flatnonzero(inverse == g) for g in range(len(self.groups))]
        self.n = len(inverse)
        self.batch_size = batch_size
        self.global_size = batch_size * num_replicas
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        if rank == 0:
            self._warn_small_groups(group_names or {})

    def _warn_small_groups(self, names: Mapping[Any, str]) -> None:
        n_batches = len(self)
        small = [
            (g, len(m))
            for g, m in zip(self.groups.tolist(), self.members, strict=True)
            if len(m) < n_batches
        ]
        if small:
            listed = ", ".join(f"{names.get(g, g)} ({c} clips)" for g, c in small)
            warnings.warn(
                f"{len(small)} group(s) have fewer training clips than the {n_batches} batches "
                f"per epoch, so they are missing from some batches (their language's gap is "
                f"skipped there): {listed}",
                SmallGroupWarning,
                stacklevel=3,
            )

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

    def valid_stratum_fraction(self, languages_of_groups: Mapping[Any, str]) -> float:
        """Fraction of this epoch's global batches in which every language has all its groups
        (for language × gender groups: both genders), so Δ_l is defined for every l and Δ_max
        is the true worst-language gap. It is 1.0 when no `SmallGroupWarning` was due (and the
        global batch holds at least one item per group).

        `languages_of_groups` maps each group id to its language (`GROUP_LANGUAGES` for
        `language_gender_groups` ids). Costs one reshuffle of the epoch's indices.
        """
        batches = self.global_batches()
        if not batches:
            return 0.0
        code = np.empty(self.n, dtype=np.int64)
        for g, members in enumerate(self.members):
            code[members] = g
        present = np.zeros((len(batches), len(self.groups)), dtype=bool)
        for b, batch in enumerate(batches):
            present[b, code[batch]] = True
        languages = np.array([languages_of_groups[g] for g in self.groups.tolist()])
        valid = np.ones(len(batches), dtype=bool)
        for lang in np.unique(languages):
            valid &= present[:, languages == lang].all(axis=1)
        return float(valid.mean())

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield batch[self.rank :: self.num_replicas].tolist()


def shard_for_eval(n: int, num_replicas: int, rank: int) -> np.ndarray:
    """Indices rank, rank + R, ... of n items: no padding, so no sample is counted twice."""
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
    return np.arange(rank, n, num_replicas)
