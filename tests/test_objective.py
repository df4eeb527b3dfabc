import copy
import json
import math

import pytest
import torch

from ermgap_ray.objective import (
    ERM,
    AdaptiveLambda,
    FixedLambda,
    GroupDRO,
    MeanGap,
    MinMaxGap,
    ObjectiveTerms,
    build_lambda_schedule,
    build_objective,
    gender_gaps,
    group_stats,
    max_gender_gap,
    minmax_gap,
)

# Hand batch: stratum 0: F {1, 3} mean 2, M {5} -> Δ0 = 3; stratum 1: F {0.5}, M {4} -> Δ1 = 3.5;
# stratum 2: F only {1, 2} -> invalid. Δ_max = 3.5 (unique), mean gap = 3.25, L_ERM = 16.5 / 7.
LOSSES = [1.0, 3.0, 5.0, 0.5, 4.0, 1.0, 2.0]
STRATA = [0, 0, 0, 1, 1, 2, 2]
GENDERS = [0, 0, 1, 0, 1, 0, 0]
ERM_VALUE = 16.5 / 7


def hand_batch(dtype=torch.float64):
    losses = torch.tensor(LOSSES, dtype=dtype, requires_grad=True)
    return losses, torch.tensor(STRATA), torch.tensor(GENDERS)


def test_group_stats_by_hand():
    losses, strata, genders = hand_batch()
    sums, counts = group_stats(losses, strata, genders, num_strata=4)
    assert sums.tolist() == [[4.0, 5.0], [0.5, 4.0], [3.0, 0.0], [0.0, 0.0]]
    assert counts.tolist() == [[2.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0]]
    sums.sum().backward()
    assert losses.grad.tolist() == [1.0] * 7


def test_group_stats_counts_exact_for_bf16_losses():
    n = 300
    losses = torch.ones(n, dtype=torch.bfloat16)
    _, counts = group_stats(losses, torch.zeros(n, dtype=torch.long), torch.zeros(n), 1)
    assert counts[0, 0].item() == n


def test_gender_gaps_masks_missing_gender_without_nan():
    losses, strata, genders = hand_batch()
    gaps, valid = gender_gaps(*group_stats(losses, strata, genders, num_strata=4))
    assert gaps.tolist() == [3.0, 3.5, 0.0, 0.0]
    assert valid.tolist() == [True, True, False, False]
    gaps.sum().backward()
    # dΔ0/dℓ: F mean (−1/2 each), M mean (+1); dΔ1: F −1, M +1; stratum 2 gets exactly 0.
    assert losses.grad.tolist() == [-0.5, -0.5, 1.0, -1.0, 1.0, 0.0, 0.0]


def test_max_gender_gap_and_gradient_by_hand():
    losses, strata, genders = hand_batch()
    gap = max_gender_gap(losses, strata, genders)
    assert gap.item() == 3.5
    gap.backward()
    assert losses.grad.tolist() == [0.0, 0.0, 0.0, -1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("p, expected, grad_scale", [(1, 3.5, 1.0), (2, 12.25, 7.0)])
def test_minmax_gap_p(p, expected, grad_scale):
    losses, strata, genders = hand_batch()
    reg = minmax_gap(losses, strata, genders, p=p)
    assert reg.item() == pytest.approx(expected)
    reg.backward()
    # d(Δ^p) = p Δ^{p-1} dΔ: 1 for p=1, 2·3.5 = 7 for p=2.
    assert losses.grad[3].item() == pytest.approx(-grad_scale)
    assert losses.grad[4].item() == pytest.approx(grad_scale)


def test_no_valid_stratum_gives_zero_and_zero_gradient():
    losses = torch.tensor([1.0, 2.0, 7.0], dtype=torch.float64, requires_grad=True)
    strata, genders = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1])
    for objective in (MinMaxGap(2), MeanGap(1), MinMaxGap(1)):
        losses.grad = None
        terms = objective(losses, strata, genders, lam=5.0)
        assert terms.reg.item() == 0.0 and terms.gap.item() == 0.0
        assert terms.loss.item() == pytest.approx(10.0 / 3)
        terms.loss.backward()
        assert torch.allclose(losses.grad, torch.full((3,), 1.0 / 3, dtype=torch.float64))


def test_empty_batch_gap_is_zero():
    empty = torch.zeros(0, dtype=torch.float64)
    assert max_gender_gap(empty, empty.long(), empty.long()).item() == 0.0


def test_equal_means_gradient_is_finite():
    losses = torch.tensor([2.0, 2.0], requires_grad=True)
    reg = minmax_gap(losses, torch.tensor([0, 0]), torch.tensor([0, 1]), p=1)
    reg.backward()
    assert reg.item() == 0.0
    assert torch.isfinite(losses.grad).all()


def test_single_stratum():
    losses = torch.tensor([1.0, 2.0, 6.0], requires_grad=True)
    strata, genders = torch.zeros(3, dtype=torch.long), torch.tensor([0, 0, 1])
    terms = MinMaxGap(2)(losses, strata, genders, lam=0.5, num_strata=1)
    assert terms.gap.item() == pytest.approx(4.5)
    assert terms.reg.item() == pytest.approx(20.25)
    assert terms.loss.item() == pytest.approx(3.0 + 0.5 * 20.25)
    assert MeanGap(2)(losses, strata, genders, lam=0.5).reg.item() == pytest.approx(20.25)


def test_objective_terms_by_hand():
    losses, strata, genders = hand_batch()
    erm = ERM()(losses, strata, genders, lam=3.0)
    assert isinstance(erm, ObjectiveTerms)
    assert erm.loss.item() == pytest.approx(ERM_VALUE)
    assert erm.reg.item() == 0.0 and erm.gap.item() == 3.5
    mm = MinMaxGap(2)(losses, strata, genders, lam=0.1)
    assert mm.reg.item() == pytest.approx(12.25)
    assert mm.loss.item() == pytest.approx(ERM_VALUE + 1.225)
    assert not mm.gap.requires_grad
    mean = MeanGap(1)(losses, strata, genders, lam=2.0)
    assert mean.reg.item() == pytest.approx(3.25)
    assert mean.loss.item() == pytest.approx(ERM_VALUE + 6.5)
    assert MeanGap(2)(losses, strata, genders, lam=1.0).reg.item() == pytest.approx(3.25**2)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, s, g: minmax_gap(x, s, g, p=2),
        lambda x, s, g: minmax_gap(x, s, g, p=1),
        lambda x, s, g: MinMaxGap(2)(x, s, g, lam=0.7).loss,
        lambda x, s, g: MeanGap(2)(x, s, g, lam=0.7).loss,
        lambda x, s, g: GroupDRO(8, 0.1).eval()(x, s, g).loss,
    ],
)
def test_gradcheck(fn):
    losses, strata, genders = hand_batch(torch.float64)
    assert torch.autograd.gradcheck(lambda x: fn(x, strata, genders), (losses,))


def test_group_dro_update_by_hand():
    losses, strata, genders = hand_batch()
    dro = GroupDRO(num_groups=6, step_size=0.1)
    terms = dro(losses, strata, genders)
    group_loss = [2.0, 5.0, 0.5, 4.0, 1.5, 0.0]
    present = [True, True, True, True, True, False]
    w = [math.exp(0.1 * lg) if ok else 1.0 for lg, ok in zip(group_loss, present, strict=True)]
    q = [x / sum(w) for x in w]
    assert dro.q.tolist() == pytest.approx(q)
    assert terms.loss.item() == pytest.approx(
        sum(a * b for a, b in zip(q, group_loss, strict=True))
    )
    assert terms.erm.item() == pytest.approx(ERM_VALUE)
    assert terms.gap.item() == 3.5
    terms.loss.backward()
    want = [q[0] / 2, q[0] / 2, q[1], q[2], q[3], q[4] / 2, q[4] / 2]
    assert losses.grad.tolist() == pytest.approx(want)


def test_group_dro_eval_does_not_move_q_and_state_round_trips():
    losses, strata, genders = hand_batch()
    dro = GroupDRO(6, 0.5)
    dro(losses, strata, genders)
    state = json.loads(json.dumps(dro.state_dict()))
    before = dro.q.clone()
    dro.eval()(losses, strata, genders)
    assert torch.equal(dro.q, before)
    fresh = GroupDRO(6, 0.5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.q, before)
    with pytest.raises(ValueError, match="expected 6"):
        fresh.load_state_dict({"q": [1.0]})
    with pytest.raises(ValueError, match="6 groups"):
        fresh.terms(torch.zeros(2, 2), torch.ones(2, 2))


def random_batch(n=64, num_strata=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    losses = torch.rand(n, dtype=torch.float64, generator=gen) * 3
    strata = torch.randint(0, num_strata, (n,), generator=gen)
    genders = torch.randint(0, 2, (n,), generator=gen)
    return losses, strata, genders


@pytest.mark.parametrize("name", ["erm", "minmaxgap", "meangap", "groupdro"])
def test_two_rank_surrogate_matches_concatenated_batch(name):
    """Data-parallel contract: summed stats and the surrogate S_glob − S_r.detach() + S_r."""
    losses, strata, genders = random_batch()
    num_strata, lam = 3, 0.8
    reference = build_objective(name, p=2, num_strata=num_strata, groupdro_eta=0.3)
    ranks = [copy.deepcopy(reference) for _ in range(2)]

    full = losses.clone().requires_grad_()
    want = reference(full, strata, genders, lam, num_strata)
    want.loss.backward()

    halves = [slice(0, 29), slice(29, None)]
    parts = [losses[h].clone().requires_grad_() for h in halves]
    stats = [
        group_stats(x, strata[h], genders[h], num_strata)
        for x, h in zip(parts, halves, strict=True)
    ]
    s_glob = sum(s.detach() for s, _ in stats)
    n_glob = sum(n for _, n in stats)
    for objective, (s_loc, _) in zip(ranks, stats, strict=True):
        got = objective.terms(s_glob - s_loc.detach() + s_loc, n_glob, lam)
        for a, b in zip(got, want, strict=True):
            assert a.item() == pytest.approx(b.item(), rel=1e-12)
        got.loss.backward()
        assert objective.state_dict() == reference.state_dict()
    assert torch.allclose(torch.cat([p.grad for p in parts]), full.grad, rtol=1e-12)
    assert want.gap.item() > 0


def test_build_objective():
    assert isinstance(build_objective("erm", 2, 3, 0.1), ERM)
    mm = build_objective("minmaxgap", 1, 3, 0.1)
    assert isinstance(mm, MinMaxGap) and mm.p == 1
    assert isinstance(build_objective("meangap", 2, 3, 0.1), MeanGap)
    dro = build_objective("groupdro", 2, 6, 0.2)
    assert isinstance(dro, GroupDRO) and dro.q.shape == (12,) and dro.step_size == 0.2
    assert build_objective("erm", 2, 3, 0.1).state_dict() == {}
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective("dro", 2, 3, 0.1)
    with pytest.raises(ValueError, match="p must be"):
        MinMaxGap(0)


def test_fixed_lambda_is_a_no_op():
    sched = build_lambda_schedule("fixed", lam=0.5, eta=9.0, epsilon=0.0, lam_max=1.0)
    assert isinstance(sched, FixedLambda)
    assert sched.update(10.0) == 0.5 and sched.value == 0.5
    assert json.loads(json.dumps(sched.state_dict())) == {"lam": 0.5}


def test_adaptive_lambda_steps_and_clips():
    sched = build_lambda_schedule("adaptive", lam=1.0, eta=2.0, epsilon=0.02, lam_max=3.0)
    assert isinstance(sched, AdaptiveLambda)
    assert sched.update(0.12) == pytest.approx(1.2)
    assert sched.update(0.02) == pytest.approx(1.2)
    assert sched.update(-5.0) == 0.0
    assert sched.update(0.0) == 0.0
    assert sched.update(100.0) == 3.0
    assert sched.update(float("nan")) == 3.0
    assert sched.update(0.0) == pytest.approx(3.0 - 0.04)


def test_adaptive_lambda_state_round_trip_and_validation():
    sched = AdaptiveLambda(lam0=0.5, eta=1.0, epsilon=0.0, lam_max=2.0)
    sched.update(0.25)
    state = json.loads(json.dumps(sched.state_dict()))
    resumed = AdaptiveLambda(lam0=0.5, eta=1.0, epsilon=0.0, lam_max=2.0)
    resumed.load_state_dict(state)
    assert resumed.value == sched.value == 0.75
    assert resumed.update(0.5) == sched.update(0.5) == 1.25
    with pytest.raises(ValueError, match="lam0"):
        AdaptiveLambda(lam0=3.0, eta=1.0, epsilon=0.0, lam_max=2.0)
    with pytest.raises(ValueError, match="lambda_mode"):
        build_lambda_schedule("cosine", 1.0, 1.0, 0.0, 2.0)
