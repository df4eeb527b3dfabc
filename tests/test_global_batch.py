"""The regulariser under data parallelism is the global batch's, not an average of per-rank gaps.

Two real gloo processes each back-propagate the plug-in surrogate of their shard; after the
data-parallel gradient average (what DDP and DeepSpeed do) the gradient must equal the
single-process gradient on the concatenated batch.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from ermgap_ray.global_batch import GlobalBatch
from ermgap_ray.objective import build_objective, group_stats

NUM_STRATA = 3
FEATURES, CLASSES = 5, 7


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n = 24
    x = torch.randn(n, FEATURES, generator=g, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    strata = torch.tensor([0, 1, 2] * 8)
    genders = torch.tensor([0] * 12 + [1] * 12)
    # Rank 0's first micro-batch holds only women; rank 1 holds women and men.
    return x, y, strata, genders


def _model(seed: int = 1) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(FEATURES, CLASSES).double()


def _reference(name: str, p: int, lam: float):
    x, y, strata, genders = _batch()
    model = _model()
    objective = build_objective(name, p, NUM_STRATA, groupdro_eta=0.5)
    losses = F.cross_entropy(model(x), y, reduction="none")
    terms = objective.terms(*group_stats(losses, strata, genders, NUM_STRATA), lam)
    terms.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return grads.numpy(), float(terms.loss.detach()), objective.state_dict()


def _shards(world: int, rank: int, grad_accum: int) -> list[torch.Tensor]:
    """Rank r's micro-batches; rank 0's first micro-batch lacks men entirely."""
    order = torch.arange(24)
    per_rank = order.view(world, -1)[rank]
    return list(per_rank.view(grad_accum, -1))


def _worker(rank: int, world: int, port: int, name: str, p: int, lam: float, accum: int, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        x, y, strata, genders = _batch()
        model = _model()
        objective = build_objective(name, p, NUM_STRATA, groupdro_eta=0.5)
        micro = _shards(world, rank, accum)

        def stats(idx):
            losses = F.cross_entropy(model(x[idx]), y[idx], reduction="none")
            return group_stats(losses, strata[idx], genders[idx], NUM_STRATA)

        with torch.no_grad():
            step = [stats(idx) for idx in micro]
        global_batch = GlobalBatch.from_local(
            sum(s for s, _ in step), sum(c for _, c in step), accum
        )
        for i, idx in enumerate(micro):
            sums, _ = stats(idx)
            objective.train(i == 0)
            terms = objective.terms(global_batch.surrogate(sums), global_batch.counts, lam)
            # What DeepSpeed does: loss / accum per micro-batch, then the mean over ranks.
            (terms.loss * global_batch.loss_scale / accum).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        dist.all_reduce(grads)
        grads /= world
        if rank == 0:
            np.save(out, grads.numpy())
            np.save(str(out) + ".loss.npy", np.array([float(terms.loss.detach())]))
            np.save(str(out) + ".state.npy", np.array(objective.state_dict().get("q", [])))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "name,p,accum",
    [
        ("minmaxgap", 1, 1),
        ("minmaxgap", 2, 1),
        ("minmaxgap", 2, 2),
        ("meangap", 2, 1),
        ("groupdro", 1, 1),
        ("groupdro", 1, 2),
    ],
)
def test_two_ranks_match_single_process_gradient(tmp_path, free_port, name, p, accum):
    lam = 3.0
    out = tmp_path / "grads.npy"
    mp.start_processes(
        _worker,
        args=(2, free_port, name, p, lam, accum, str(out)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    expected, expected_loss, expected_state = _reference(name, p, lam)
    got = np.load(out)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert float(np.load(str(out) + ".loss.npy")[0]) == pytest.approx(expected_loss, abs=1e-9)
    if name == "groupdro":
        np.testing.assert_allclose(np.load(str(out) + ".state.npy"), expected_state["q"])


def test_one_rank_lacking_a_gender_is_not_a_per_rank_average():
    """The naive per-rank gap average differs from the global gap on this batch."""
    x, y, strata, genders = _batch()
    losses = F.cross_entropy(_model()(x), y, reduction="none").detach()
    objective = build_objective("minmaxgap", 1, NUM_STRATA, 0.0)
    global_gap = objective(losses, strata, genders, 0.0, NUM_STRATA).gap
    halves = [
        objective(losses[i], strata[i], genders[i], 0.0, NUM_STRATA).gap
        for i in torch.arange(24).view(2, -1)
    ]
    assert float(halves[0]) == 0.0  # rank 0 sees women only: no valid stratum
    assert abs(float(sum(halves) / 2) - float(global_gap)) > 1e-3
