"""Objective: hand-computed loss and gradients on a 2-prompt x 2-completion x 3-token example."""

import math

import pytest
import torch

from tarpo.objective import (LossInputs, LossSettings, Normaliser, aggregate, group_advantages, k3, merge_stats,
                             tarpo_loss)
from tarpo.sampling import LOGP_FLOOR, gather_logprob, gumbel_argmax, sampling_logprobs, tempered_logprobs

# 2 prompts x 2 completions = 4 rows, 3 steps each.
REWARDS = [1.0, 0.0, 0.0, 1.0]
MASK = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]
DECIDED = [[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 1]]  # forced decisions are 0
NEW = [[-0.5, -1.0, -0.2], [-1.2, -0.1, -3.0], [-0.7, -2.0, -2.0], [-0.3, -0.9, -1.5]]
OLD = [[-0.6, -0.7, -0.2], [-1.0, -0.6, -3.0], [-0.4, -2.0, -2.0], [-0.3, -1.4, -1.0]]
REF = [[-0.4, -1.1, -0.3], [-1.3, -0.2, -2.0], [-0.9, -1.0, -1.0], [-0.2, -0.8, -1.7]]
R_NEW = [[-0.05, -2.0, -3.0], [-3.1, -0.04, -0.1], [-0.01, -0.2, -0.3], [-0.02, -3.5, -0.06]]
R_OLD = [[-0.04, -2.5, -3.0], [-2.0, -0.05, -0.1], [-0.01, -0.9, -0.3], [-0.03, -3.0, -0.04]]
R_REF = [[-0.01, -4.0, -3.0], [-4.6, -0.01, -0.1], [-0.01, -0.2, -0.3], [-0.01, -4.6, -0.01]]
EPS_LOW, EPS_HIGH, BETA, LAMBDA = 0.2, 0.28, 0.05, 0.1


def hand_advantages():
    adv = []
    for g in range(2):
        r = REWARDS[2 * g: 2 * g + 2]
        mean = sum(r) / 2
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / 1)
        adv += [(x - mean) / (std + 1e-4) for x in r]
    return adv


def hand_term(new, old, ref, a, clip):
    """Value and d/dnew of -min(rho A, clip(rho) A) + beta k3(ref, new), by hand."""
    rho = math.exp(new - old)
    if clip:
        lo, hi = 1 - EPS_LOW, 1 + EPS_HIGH
        clipped = min(max(rho, lo), hi)
        use_clipped = clipped * a < rho * a
    else:
        use_clipped = False
        clipped = rho
    pg = -(clipped * a if use_clipped else rho * a)
    d_pg = 0.0 if use_clipped else -rho * a
    kl = math.exp(ref - new) - (ref - new) - 1
    d_kl = -math.exp(ref - new) + 1
    return pg + BETA * kl, d_pg + BETA * d_kl


def hand_loss(aggregation, clip):
    adv = hand_advantages()
    total = 0.0
    grads_tok = [[0.0] * 3 for _ in range(4)]
    grads_rt = [[0.0] * 3 for _ in range(4)]
    n_tokens = sum(map(sum, MASK))
    for i in range(4):
        length = sum(MASK[i])
        scale = {"seq-mean": 1 / (4 * length), "token-mean": 1 / n_tokens, "dr-grpo": 1 / (4 * 3),
                 "grpo": 1 / (4 * length), "dapo": 1 / n_tokens, "dr_grpo": 1 / (4 * 3),
                 "bnpo": 1 / n_tokens}[aggregation]  # bnpo: one micro-batch, its own tokens
        for t in range(3):
            if not MASK[i][t]:
                continue
            v, d = hand_term(NEW[i][t], OLD[i][t], REF[i][t], adv[i], clip)
            total += scale * v
            grads_tok[i][t] = scale * d
            if DECIDED[i][t]:
                v, d = hand_term(R_NEW[i][t], R_OLD[i][t], R_REF[i][t], adv[i], clip)
                total += scale * LAMBDA * v
                grads_rt[i][t] = scale * LAMBDA * d
    return total, grads_tok, grads_rt


def inputs(clip):
    new = torch.tensor(NEW, requires_grad=True)
    r_new = torch.tensor(R_NEW, requires_grad=True)
    x = LossInputs(
        token_logp=new, router_logp=r_new,
        old_token_logp=torch.tensor(OLD) if clip else new.detach(),
        old_router_logp=torch.tensor(R_OLD) if clip else r_new.detach(),
        ref_token_logp=torch.tensor(REF), ref_router_logp=torch.tensor(R_REF),
        advantages=group_advantages(torch.tensor(REWARDS), 2),
        completion_mask=torch.tensor(MASK, dtype=torch.bool), decision_mask=torch.tensor(DECIDED, dtype=torch.bool))
    return x, new, r_new


@pytest.mark.parametrize("aggregation", ["seq-mean", "token-mean", "dr-grpo", "grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("clip", [False, True])
def test_loss_and_gradients_match_hand_computation(aggregation, clip):
    global OLD, R_OLD
    saved = OLD, R_OLD
    if not clip:  # on-policy: old = new, ratio 1
        OLD, R_OLD = NEW, R_NEW
    try:
        expected, g_tok, g_rt = hand_loss(aggregation, clip)
        x, new, r_new = inputs(clip)
        settings = LossSettings(EPS_LOW, EPS_HIGH, BETA, LAMBDA, aggregation)
        loss, stats = tarpo_loss(x, settings, Normaliser(rows=4, tokens=sum(map(sum, MASK)), max_new_tokens=3))
        loss.backward()
    finally:
        OLD, R_OLD = saved
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(new.grad, torch.tensor(g_tok), atol=1e-6)
    assert torch.allclose(r_new.grad, torch.tensor(g_rt), atol=1e-6)
    if clip:
        assert 0 < merge_stats([stats])["token_clip_fraction"] < 1


def test_forced_decisions_contribute_nothing():
    x, new, r_new = inputs(clip=True)
    settings = LossSettings(EPS_LOW, EPS_HIGH, BETA, LAMBDA, "seq-mean")
    norm = Normaliser(4, 10, 3)
    loss, _ = tarpo_loss(x, settings, norm)
    loss.backward()
    forced = ~x.decision_mask
    assert (r_new.grad[forced] == 0).all()
    # changing the router log-probs at forced steps changes nothing
    altered = r_new.detach().clone()
    altered[forced] += 5.0
    x2 = LossInputs(**{**x.__dict__, "router_logp": altered})
    loss2, _ = tarpo_loss(x2, settings, norm)
    assert loss2.item() == pytest.approx(loss.item(), abs=1e-7)


def test_router_gradient_only_from_router_term_and_its_kl():
    x, new, r_new = inputs(clip=False)
    base = LossSettings(EPS_LOW, EPS_HIGH, BETA, 0.0, "seq-mean")
    loss, _ = tarpo_loss(x, base, Normaliser(4, 10, 3))
    loss.backward()
    assert r_new.grad is None or (r_new.grad == 0).all()
    assert new.grad.abs().sum() > 0


def grpo_loss_trl_style(logp, old, ref, adv, mask, beta, eps):
    """Plain GRPO (TRL's formulation), written independently."""
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eps)
    per_token = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None])
    per_token_kl = torch.exp(ref - logp) - (ref - logp) - 1
    per_token = per_token + beta * per_token_kl
    return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def test_hard_mode_equals_plain_grpo():
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(8, 5, generator=g) * 3).requires_grad_()
    ref = -torch.rand(8, 5, generator=g) * 3
    mask = (torch.rand(8, 5, generator=g) > 0.2).float()
    mask[:, 0] = 1
    rewards = torch.randint(0, 2, (8,), generator=g).float()
    adv = group_advantages(rewards, 4)
    x = LossInputs(logp, torch.zeros(8, 5), logp.detach(), torch.zeros(8, 5), ref, torch.zeros(8, 5), adv,
                   mask.bool(), torch.zeros(8, 5, dtype=torch.bool))
    ours, _ = tarpo_loss(x, LossSettings(0.2, 0.2, 0.04, 0.0, "seq-mean"), Normaliser(8, int(mask.sum()), 5))
    theirs = grpo_loss_trl_style(logp, logp.detach(), ref, adv, mask, 0.04, 0.2)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    g1 = torch.autograd.grad(ours, logp, retain_graph=True)[0]
    g2 = torch.autograd.grad(theirs, logp)[0]
    assert torch.allclose(g1, g2, atol=1e-7)


def test_group_advantages():
    adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]), 4)
    first = [(1 - 0.75) / (0.5 + 1e-4)] * 1 + [(0 - 0.75) / (0.5 + 1e-4)]
    assert adv[:2].tolist() == pytest.approx(first, abs=1e-5)
    assert adv.view(2, 4).sum(1).abs().max() < 1e-5
    assert (group_advantages(torch.ones(4), 4) == 0).all()
    none = group_advantages(torch.tensor([2.0, 0.0]), 2, scaling="none")
    assert none.tolist() == [1.0, -1.0]
    batch = group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2, scaling="batch")
    assert batch[0].item() == pytest.approx(0.5 / (0.5 + 1e-4), abs=1e-5)
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), 2)


def test_k3_nonnegative_and_zero_at_equality():
    p = torch.linspace(-5, 0, 11)
    assert (k3(p, p) == 0).all()
    assert (k3(p.flip(0), p) >= 0).all()


@pytest.mark.parametrize("aggregation", ["seq-mean", "token-mean", "dr-grpo"])
def test_micro_batches_add_up_to_full_batch(aggregation):
    x, _, _ = inputs(clip=True)
    settings = LossSettings(EPS_LOW, EPS_HIGH, BETA, LAMBDA, aggregation)
    norm = Normaliser(4, int(x.completion_mask.sum()), 3)
    full, _ = tarpo_loss(x, settings, norm)
    parts = 0.0
    for rows in ([0, 1], [2, 3]):
        sub = LossInputs(**{k: (v[rows] if torch.is_tensor(v) else v) for k, v in x.__dict__.items()})
        part, _ = tarpo_loss(sub, settings, norm)
        parts += part.item()
    assert parts == pytest.approx(full.item(), abs=1e-6)


def test_unknown_aggregation():
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(torch.zeros(1, 1), torch.ones(1, 1), "sum", Normaliser(1, 1, 1))


# ---------------------------------------------------------------- token KL under top-k / top-p filters
FILTERS = [dict(), dict(top_k=6), dict(top_p=0.8), dict(top_k=6, top_p=0.8)]
FILTER_IDS = ["none", "top-k", "top-p", "both"]


def filtered_batch(filters, temperature=0.8, rows=6, steps=5, vocab=24, seed=0):
    """Policy and reference logits that disagree, tokens sampled from the FILTERED policy, padded rows, and
    at (0, 0) a token the reference's filter removes (its filtered log-prob sits at the floor)."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, steps, vocab, generator=g) * 2).requires_grad_()
    ref_logits = logits.detach() + torch.randn(rows, steps, vocab, generator=g)
    log_q = sampling_logprobs(logits, temperature, **filters)
    ids = gumbel_argmax(log_q.detach(), torch.rand(rows, steps, vocab, generator=g))
    ref_logits[0, 0, ids[0, 0]] = ref_logits[0, 0].min() - 30.0  # y is outside the reference's filtered support
    mask = torch.ones(rows, steps, dtype=torch.bool)
    for i in range(1, rows):
        mask[i, steps - i % steps:] = False
    ids = ids.masked_fill(~mask, 0)  # padded steps carry a pad token, possibly filtered out of q
    return logits, ref_logits, ids, mask


def hand_token_kl(logits, ref_logits, ids, mask, temperature):
    """k3 of the tempered, unfiltered distributions at the sampled tokens, in float64, by hand."""
    log_p = torch.log_softmax(logits.detach().double() / temperature, -1).gather(-1, ids[..., None])[..., 0]
    log_r = torch.log_softmax(ref_logits.double() / temperature, -1).gather(-1, ids[..., None])[..., 0]
    delta = (log_r - log_p)[mask]
    return (delta.exp() - delta - 1).tolist()


@pytest.mark.parametrize("filters", FILTERS, ids=FILTER_IDS)
@pytest.mark.parametrize("on_policy", [True, False])
def test_token_kl_under_filters_is_finite_and_matches_float64(filters, on_policy):
    temperature, beta = 0.8, 0.005
    logits, ref_logits, ids, mask = filtered_batch(filters, temperature)
    token_logp = gather_logprob(sampling_logprobs(logits, temperature, **filters), ids)
    tempered = tempered_logprobs(logits, temperature).gather(-1, ids[..., None])[..., 0]
    ref = tempered_logprobs(ref_logits, temperature).gather(-1, ids[..., None])[..., 0]
    old = token_logp.detach() if on_policy else token_logp.detach() + 0.05 * torch.randn(ids.shape)
    old = old.masked_fill(~mask, 0.0)  # what the rollout record holds at padded steps
    rows = ids.shape[0]
    advantages = group_advantages(torch.arange(rows, dtype=torch.float32) % 3, 3)
    x = LossInputs(token_logp, torch.zeros(ids.shape), old, torch.zeros(ids.shape), ref, None, advantages, mask,
                   torch.zeros(ids.shape, dtype=torch.bool), tempered_token_logp=tempered)
    norm = Normaliser(rows, int(mask.sum()), ids.shape[1])
    loss, stats = tarpo_loss(x, LossSettings(beta=beta, router_weight=0.0), norm)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    expected_kl = hand_token_kl(logits, ref_logits, ids, mask, temperature)
    assert merge_stats([stats])["kl_token"] == pytest.approx(sum(expected_kl) / len(expected_kl), rel=1e-5)
    assert max(expected_kl) < 50, "the hand KL is of normal size: no -1e4 floor leaked into it"
    if filters:
        assert gather_logprob(sampling_logprobs(ref_logits, temperature, **filters), ids)[0, 0] == LOGP_FLOOR
    if on_policy:  # ratio 1: loss = mean over rows of mean over the row of (-A + beta k3)
        lengths = mask.sum(1).tolist()
        per_row, flat = [], iter(expected_kl)
        for i in range(rows):
            per_row.append(sum(-float(advantages[i]) + beta * next(flat) for _ in range(lengths[i])) / lengths[i])
        assert loss.item() == pytest.approx(sum(per_row) / rows, abs=1e-6)


def test_values_at_masked_steps_change_nothing():
    """Masked steps may hold the -1e4 floor, 0 (the record's pad) or anything: exp never sees them."""
    x, new, r_new = inputs(clip=True)
    settings = LossSettings(EPS_LOW, EPS_HIGH, BETA, LAMBDA, "seq-mean")
    norm = Normaliser(4, int(x.completion_mask.sum()), 3)
    clean, _ = tarpo_loss(x, settings, norm)
    hostile = {}
    for name, fill in [("token_logp", LOGP_FLOOR), ("old_token_logp", 0.0), ("ref_token_logp", 0.0),
                       ("router_logp", LOGP_FLOOR), ("old_router_logp", 0.0), ("ref_router_logp", 0.0)]:
        value = getattr(x, name).detach().clone()
        outside = ~x.completion_mask if "token" in name else ~(x.decision_mask & x.completion_mask)
        hostile[name] = value.masked_fill(outside, fill).requires_grad_(name in ("token_logp", "router_logp"))
    dirty, stats = tarpo_loss(LossInputs(**{**x.__dict__, **hostile}), settings, norm)
    dirty.backward()
    assert dirty.item() == pytest.approx(clean.item(), abs=1e-6)
    assert all(torch.isfinite(torch.tensor(v)).all() for v in stats.values())
    assert torch.isfinite(hostile["token_logp"].grad).all() and torch.isfinite(hostile["router_logp"].grad).all()


# Two sequences: row 0 has 3 tokens (loss 1, 2, 3), row 1 has 2 (loss 4, 5; the third step is padding). They are one
# micro-batch of a rollout batch of 4 rows in 2 micro-batches; the other micro-batch holds 2 tokens, so the batch
# has 7 tokens, and max_new_tokens is 3. Each expected value below is worked out by hand.
TWO_ROWS = [[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]]
TWO_MASK = [[1, 1, 1], [1, 1, 0]]
HAND = {
    "seq-mean": ((1 + 2 + 3) / 3 + (4 + 5) / 2) / 4,   # mean over the batch's 4 rows of each row's token mean
    "grpo": ((1 + 2 + 3) / 3 + (4 + 5) / 2) / 4,       # TRL grpo: the same
    "token-mean": (1 + 2 + 3 + 4 + 5) / 7,             # all active tokens of the batch
    "dapo": (1 + 2 + 3 + 4 + 5) / 7,                   # TRL dapo: tokens of the global batch, the same
    "dr-grpo": (1 + 2 + 3 + 4 + 5) / (4 * 3),          # rows x max_new_tokens
    "dr_grpo": (1 + 2 + 3 + 4 + 5) / (4 * 3),          # TRL dr_grpo: the same
    "bnpo": (1 + 2 + 3 + 4 + 5) / 5 / 2,               # this micro-batch's own 5 tokens, averaged over 2 micro-batches
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_loss_names_match_hand_computation_on_two_sequences(name):
    mask = torch.tensor(TWO_MASK, dtype=torch.bool)
    per_step = torch.tensor(TWO_ROWS) * mask
    norm = Normaliser(rows=4, tokens=7, max_new_tokens=3, micro_batches=2)
    assert aggregate(per_step, mask, name, norm).item() == pytest.approx(HAND[name], abs=1e-7)


def test_loss_names_are_the_config_literal_and_only_bnpo_is_new():
    import typing

    from tarpo.config import TrainConfig
    from tarpo.objective import AGGREGATION_ALIASES, AGGREGATIONS

    assert typing.get_args(TrainConfig.model_fields["loss_aggregation"].annotation) == AGGREGATIONS
    assert len(set(HAND.values())) == 4  # four different losses under seven names
    assert set(AGGREGATIONS) - set(AGGREGATION_ALIASES) - {"seq-mean", "token-mean", "dr-grpo"} == {"bnpo"}
