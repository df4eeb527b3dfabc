import warnings

import numpy as np
import pandas as pd
import pytest

from ermgap_ray.data.sampler import (
    GROUP_LANGUAGES,
    GROUP_NAMES,
    GroupStratifiedBatchSampler,
    SmallGroupWarning,
    language_gender_groups,
    shard_for_eval,
)

# 6 groups of unequal size, like the synthetic twin's train split (one group at 1/3).
SIZES = (60, 60, 60, 20, 45, 60)
GROUPS = np.repeat(np.arange(6), SIZES)
N = len(GROUPS)


def _epoch(sampler: GroupStratifiedBatchSampler) -> list[list[int]]:
    return list(sampler)


def test_every_global_batch_holds_every_group_and_no_index_repeats() -> None:
    s = GroupStratifiedBatchSampler(GROUPS, batch_size=16, seed=0)
    batches = _epoch(s)
    assert len(batches) == len(s) == N // 16
    assert all(len(b) == 16 for b in batches)
    for b in batches:
        assert set(GROUPS[b]) == set(range(6))
    flat = np.concatenate(batches)
    assert len(flat) == len(set(flat.tolist()))


def test_group_shares_are_proportional() -> None:
    s = GroupStratifiedBatchSampler(GROUPS, batch_size=16, seed=0)
    n_batches = len(s)
    for b in _epoch(s):
        counts = np.bincount(GROUPS[b], minlength=6)
        low = np.floor(np.array(SIZES) / n_batches) - 1
        assert (counts >= low).all() and (counts <= np.ceil(np.array(SIZES) / n_batches)).all()


def test_ranks_partition_the_global_batch_with_equal_steps() -> None:
    replicas = [
        GroupStratifiedBatchSampler(GROUPS, 8, seed=3, num_replicas=2, rank=r) for r in (0, 1)
    ]
    for s in replicas:
        s.set_epoch(2)
    per_rank = [_epoch(s) for s in replicas]
    assert len(per_rank[0]) == len(per_rank[1]) == N // 16 == len(replicas[0])
    reference = replicas[0].global_batches()
    for step, global_batch in enumerate(reference):
        a, b = per_rank[0][step], per_rank[1][step]
        assert len(a) == len(b) == 8
        assert sorted(a + b) == sorted(global_batch.tolist())
        assert set(GROUPS[a + b]) == set(range(6))
    flat = [i for rank in per_rank for batch in rank for i in batch]
    assert len(flat) == len(set(flat)) == (N // 16) * 16


def test_deterministic_per_seed_and_epoch() -> None:
    a = GroupStratifiedBatchSampler(GROUPS, 16, seed=7)
    b = GroupStratifiedBatchSampler(GROUPS, 16, seed=7)
    assert _epoch(a) == _epoch(b)
    first = _epoch(a)
    a.set_epoch(1)
    assert _epoch(a) != first
    assert _epoch(GroupStratifiedBatchSampler(GROUPS, 16, seed=8)) != first


def test_drop_last_false_keeps_everything() -> None:
    s = GroupStratifiedBatchSampler(GROUPS, 16, seed=0, drop_last=False)
    batches = _epoch(s)
    assert len(batches) == len(s) == -(-N // 16)
    assert sorted(i for b in batches for i in b) == list(range(N))
    assert max(map(len, batches)) <= 16 and max(map(len, batches)) - min(map(len, batches)) <= 1


def test_small_group_appears_as_often_as_its_size_allows() -> None:
    groups = np.array([0] * 50 + [1] * 3)
    with pytest.warns(SmallGroupWarning):
        batches = _epoch(GroupStratifiedBatchSampler(groups, 5, seed=0))
    with_one = sum(1 in set(groups[b]) for b in batches)
    assert len(batches) == 10 and with_one == 3


def test_string_group_ids_and_bad_arguments() -> None:
    s = GroupStratifiedBatchSampler(np.array(["en-F", "en-M"] * 8), 4, seed=0)
    assert all(len(set(b) & set(range(0, 16, 2))) == 2 for b in s)
    with pytest.raises(ValueError, match="rank"):
        GroupStratifiedBatchSampler(GROUPS, 4, seed=0, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="single process"):
        GroupStratifiedBatchSampler(GROUPS, 4, seed=0, num_replicas=2, drop_last=False)


def test_usable_as_torch_batch_sampler() -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.arange(N))
    loader = DataLoader(data, batch_sampler=GroupStratifiedBatchSampler(GROUPS, 16, seed=0))
    seen = torch.cat([x for (x,) in loader])
    assert len(loader) == N // 16 and seen.unique().numel() == seen.numel() == (N // 16) * 16


def test_shard_for_eval_partitions_without_padding() -> None:
    shards = [shard_for_eval(10, 3, r) for r in range(3)]
    assert [s.tolist() for s in shards] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert shard_for_eval(2, 4, 3).size == 0


def test_group_smaller_than_the_epoch_warns_once_with_name_and_count() -> None:
    groups = np.repeat([0, 1, 2, 3], [40, 40, 3, 7])  # en-F, en-M, ja-F (3), ja-M (7)
    with pytest.warns(SmallGroupWarning) as record:
        GroupStratifiedBatchSampler(groups, batch_size=9, seed=0, group_names=GROUP_NAMES)
    assert len(record) == 1
    assert str(record[0].message) == (
        "2 group(s) have fewer training clips than the 10 batches per epoch, so they are missing "
        "from some batches (their language's gap is skipped there): ja-F (3 clips), "
        "ja-M (7 clips)"
    )
    with pytest.warns(SmallGroupWarning, match=r": 2 \(3 clips\), 3 \(7 clips\)$"):
        GroupStratifiedBatchSampler(groups, batch_size=9, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GroupStratifiedBatchSampler(GROUPS, batch_size=16, seed=0)


def test_valid_stratum_fraction_counts_batches_with_both_genders_everywhere() -> None:
    big = GroupStratifiedBatchSampler(GROUPS, 16, seed=0)
    assert big.valid_stratum_fraction(GROUP_LANGUAGES) == 1.0
    groups = np.repeat([0, 1, 2, 3], [40, 40, 3, 40])  # ja-F has 3 clips for 12 batches
    with pytest.warns(SmallGroupWarning):
        s = GroupStratifiedBatchSampler(groups, 10, seed=0)
    batches = s.global_batches()
    expected = np.mean([{0, 1, 2, 3} <= set(groups[b]) for b in batches])
    assert len(batches) == 12 and expected == 3 / 12
    assert s.valid_stratum_fraction(GROUP_LANGUAGES) == expected
    s.set_epoch(1)
    assert s.valid_stratum_fraction(GROUP_LANGUAGES) == 3 / 12


def test_language_gender_groups_match_group_names() -> None:
    df = pd.DataFrame({"language": ["en", "ja", "de", "ja"], "gender": ["F", "M", "F", "F"]})
    ids = language_gender_groups(df)
    assert ids.tolist() == [0, 3, 4, 2]
    assert [GROUP_NAMES[i] for i in ids] == ["en-F", "ja-M", "de-F", "ja-F"]
    assert [GROUP_LANGUAGES[i] for i in ids] == ["en", "ja", "de", "ja"]
