"""Rollout engine: exact replay, the inputs the model received, forced-hard rules, modes, determinism."""

import math

import pytest
import torch

from tarpo.marker import MarkerMatcher
from tarpo.mixing import embedding_rms, gaussian_noise
from tarpo.rollout import RolloutSettings, replay, rollout
from tiny_models import VOCAB, mixed_prompts, random_policy, token_texts

EOS = (1, 2, 3)


def settings(**kw):
    base = dict(max_new_tokens=40, eos_token_ids=EOS, pad_token_id=0,
                marker=MarkerMatcher.from_token_texts("####", token_texts()), temperature=1.0, soft_top_k=5)
    base.update(kw)
    return RolloutSettings(**base)


def run(policy, s, seed=0, batch=6):
    ids, mask = mixed_prompts(batch)
    return rollout(policy, ids, mask, settings=s, generator=torch.Generator().manual_seed(seed))


NOISES = [dict(), dict(soft_noise="gumbel", soft_noise_scale=1.0), dict(soft_noise="gaussian", soft_noise_scale=0.5)]
NOISE_IDS = ["none", "gumbel", "gaussian"]


@pytest.mark.parametrize("noise", NOISES, ids=NOISE_IDS)
@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
@pytest.mark.parametrize("filters", [dict(), dict(top_k=20, top_p=0.9, temperature=0.7)])
def test_replay_reproduces_rollout_logprobs(architecture, filters, noise):
    policy = random_policy(architecture, init_bias=(0.0, 0.0))
    s = settings(**filters, **noise)
    r = run(policy, s, seed=3)
    assert (r.noise_seeds is not None) == (s.soft_noise == "gaussian") == (r.noise_std is not None)
    lengths = r.completion_mask.sum(1)
    assert len(set(lengths.tolist())) > 1, "need mixed stop steps"
    assert "eos" in r.stop_reason
    soft_ratio = r.soft_mask[r.completion_mask].float().mean().item()
    assert soft_ratio >= 0.3
    out = replay(policy, r, settings=s)
    mask, decided = r.completion_mask, r.decision_mask
    assert (out.token_logp - r.token_logp)[mask].abs().max().item() <= 1e-4
    assert (out.router_logp - r.router_logp)[decided].abs().max().item() <= 1e-4
    assert out.token_logp.requires_grad and out.router_logp.requires_grad


def test_replay_gradients_reach_router_and_backbone():
    policy = random_policy()
    s = settings()
    r = run(policy, s)
    out = replay(policy, r, settings=s)
    (out.token_logp[r.completion_mask].sum() + out.router_logp[r.decision_mask].sum()).backward()
    assert policy.router.linear.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.backbone.parameters())


def capture_decoder_inputs(policy):
    calls = []

    def hook(module, args, kwargs):
        calls.append(kwargs["inputs_embeds"].detach().clone())

    handle = policy.causal_lm.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)
    return calls, handle


@pytest.mark.parametrize("noise", NOISES, ids=NOISE_IDS)
def test_model_receives_exact_hard_and_soft_embeddings(noise):
    """Hard steps feed E[y_t] exactly whatever the noise; soft steps the recorded mixture (+ the recorded
    gaussian noise), which for gaussian has the recorded std = scale x the table's RMS."""
    policy = random_policy(init_bias=(0.0, 0.0))
    calls, handle = capture_decoder_inputs(policy)
    s = settings(**noise)
    r = run(policy, s)
    handle.remove()
    table = policy.embedding_weight.detach().double()
    gaussian = s.soft_noise == "gaussian"
    if gaussian:
        rms = table.pow(2).mean().sqrt().item()
        assert torch.allclose(r.noise_std.double(), torch.full((r.num_rows,), 0.5 * rms, dtype=torch.float64))
        assert (r.noise_seeds[~r.soft_mask] == 0).all() and (r.noise_seeds[r.soft_mask] != 0).all()
    residuals = []
    checked_soft = checked_hard = 0
    for t in range(r.completion_ids.shape[1] - 1):
        received = calls[t + 1][:, 0].double()  # call 0 is the prompt prefill; call t+1 feeds e_t
        for b in range(r.num_rows):
            if not r.completion_mask[b, t]:
                continue
            if r.soft_mask[b, t]:
                w = r.topk_weights[b, t].double()
                assert abs(w.sum().item() - 1.0) < 1e-6
                expected = (w[:, None] * table[r.topk_ids[b, t]]).sum(0)
                if gaussian:
                    residuals.append(received[b] - expected)
                    expected = expected + r.noise_std[b].double() * gaussian_noise(r.noise_seeds[b, t], 32).double()
                checked_soft += 1
            else:
                expected = table[r.completion_ids[b, t]]
                assert torch.equal(received[b].float(), policy.embedding_weight[r.completion_ids[b, t]].detach())
                checked_hard += 1
            assert torch.allclose(received[b], expected, atol=1e-6)
    assert checked_soft > 20 and checked_hard > 20
    if gaussian:  # what was added to the mixture: zero-mean noise of the recorded std (an independent check)
        noise_std = torch.stack(residuals).std().item()
        assert abs(noise_std - r.noise_std[0].item()) < 0.1 * r.noise_std[0].item()


@pytest.mark.parametrize("noise,close", [(dict(), 1e-5), (dict(soft_noise="gumbel", soft_noise_scale=1e-7), 1e-5),
                                         (dict(soft_noise="gaussian", soft_noise_scale=3.0), 1e-5)],
                         ids=["none", "gumbel-scale-to-0", "gaussian-leaves-weights"])
def test_soft_weights_are_the_renormalised_topk_of_q(noise, close):
    policy = random_policy(init_bias=(0.0, 0.0))
    s = settings(temperature=0.8, **noise)
    r = run(policy, s)
    out_logits = []
    handle = policy.causal_lm.get_output_embeddings().register_forward_hook(lambda m, a, o: out_logits.append(o))
    replay(policy, r, settings=s)
    handle.remove()
    logits = out_logits[0].detach().double()  # (B, T, V)
    q = torch.softmax(logits / 0.8, -1)
    for b, t in r.soft_mask.nonzero()[:10].tolist():
        top = torch.topk(q[b, t], 5)
        assert r.topk_ids[b, t].tolist() == top.indices.tolist()
        assert torch.allclose(r.topk_weights[b, t].double(), top.values / top.values.sum(), atol=close)


def test_gumbel_noise_perturbs_the_recorded_weights_of_soft_steps_only():
    policy = random_policy(init_bias=(0.0, 0.0))
    s = settings(temperature=0.8, soft_noise="gumbel")
    r = run(policy, s)
    out_logits = []
    handle = policy.causal_lm.get_output_embeddings().register_forward_hook(lambda m, a, o: out_logits.append(o))
    replay(policy, r, settings=s)
    handle.remove()
    q = torch.softmax(out_logits[0].detach().double() / 0.8, -1)
    top = torch.topk(q, 5)
    plain = top.values / top.values.sum(-1, keepdim=True)
    soft = r.soft_mask
    assert torch.equal(r.topk_ids[soft], top.indices[soft]), "noise changes the weights, not the ids"
    assert torch.allclose(r.topk_weights[soft].sum(-1).double(), torch.ones(int(soft.sum()), dtype=torch.float64))
    assert (r.topk_weights[soft].double() - plain[soft]).abs().max(-1).values.min() > 1e-4, "every soft step moved"
    assert (r.topk_weights[~soft] == 0).all() and (r.topk_ids[~soft] == 0).all()


@pytest.mark.parametrize("noise", NOISES[1:], ids=NOISE_IDS[1:])
def test_noise_draws_nothing_when_no_step_can_be_soft(noise):
    """router mode hard with noise configured = plain hard decoding, the random stream consumed as without it."""
    policy = random_policy()
    plain = run(policy, settings(router_mode="hard"), seed=4)
    noisy = run(policy, settings(router_mode="hard", **noise), seed=4)
    assert torch.equal(plain.completion_ids, noisy.completion_ids) and torch.equal(plain.token_logp, noisy.token_logp)
    assert noisy.noise_seeds is None and not noisy.soft_mask.any()


def test_noise_settings_are_checked():
    with pytest.raises(ValueError, match="soft noise must be one of"):
        settings(soft_noise="uniform")
    with pytest.raises(ValueError, match="soft noise scale must be > 0"):
        settings(soft_noise="gaussian", soft_noise_scale=0.0)


@pytest.mark.parametrize("filters", [dict(), dict(top_k=8), dict(top_p=0.7), dict(top_k=8, top_p=0.7)],
                         ids=["none", "top-k", "top-p", "both"])
def test_replay_tempered_logprobs_are_unfiltered(filters):
    policy = random_policy(init_bias=(0.0, 0.0))
    s = settings(temperature=0.8, **filters)
    r = run(policy, s)
    out_logits = []
    handle = policy.causal_lm.get_output_embeddings().register_forward_hook(lambda m, a, o: out_logits.append(o))
    out = replay(policy, r, settings=s)
    handle.remove()
    log_p = torch.log_softmax(out_logits[0].detach().double() / 0.8, -1)
    expected = log_p.gather(-1, r.completion_ids[..., None])[..., 0]
    mask = r.completion_mask
    assert (out.tempered_token_logp.double() - expected)[mask].abs().max() < 1e-5
    assert out.tempered_token_logp.requires_grad
    if filters:  # renormalised over the kept set: q >= p, strictly where something was filtered
        assert (out.token_logp >= out.tempered_token_logp - 1e-6)[mask].all()
        assert (out.token_logp > out.tempered_token_logp + 1e-3)[mask].any()
    else:
        assert out.tempered_token_logp is out.token_logp


def test_hard_mode_greedy_equals_generate():
    for architecture in ("qwen2", "llama"):
        policy = random_policy(architecture)
        ids, mask = mixed_prompts(5)
        s = settings(router_mode="hard", greedy_tokens=True, max_new_tokens=25)
        r = rollout(policy, ids, mask, settings=s)
        reference = policy.causal_lm.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                              max_new_tokens=25, eos_token_id=list(EOS), pad_token_id=0)
        generated = reference[:, ids.shape[1]:]
        assert torch.equal(r.completion_ids[:, : generated.shape[1]], generated)
        assert not r.soft_mask.any() and not r.decision_mask.any()


def marker_seen_through(texts, ids, t):
    return "####" in "".join(texts[i] for i in ids[: t + 1])


def test_forced_hard_rules_hold_in_every_row():
    texts = token_texts()
    policy = random_policy(init_bias=(-1.0, 0.0))  # p_soft ~ 0.73: limits bind often
    # make marker pieces likely so the marker rule is exercised
    with torch.no_grad():
        policy.causal_lm.get_output_embeddings().weight[5:9] *= 6.0
    s = settings(max_new_tokens=60, max_latent_steps=12, max_consecutive_latent_steps=3)
    r = run(policy, s, seed=1, batch=8)
    saw_marker = saw_total_limit = saw_run_limit = 0
    for b in range(r.num_rows):
        ids = r.completion_ids[b].tolist()
        used = run_len = 0
        for t in range(len(ids)):
            alive = bool(r.completion_mask[b, t])
            ended = alive and ids[t] in EOS
            marker = marker_seen_through(texts, ids, t)
            last = t == s.max_new_tokens - 1
            expected_open = alive and not ended and not marker and used < 12 and run_len < 3 and not last
            assert bool(r.decision_mask[b, t]) == expected_open, (b, t)
            if not expected_open:
                assert not r.soft_mask[b, t] and r.router_logp[b, t] == 0
            saw_marker += alive and not ended and marker
            saw_total_limit += alive and not marker and used >= 12
            saw_run_limit += alive and not marker and run_len >= 3
            soft = bool(r.soft_mask[b, t])
            used += soft
            run_len = run_len + 1 if soft else 0
            assert run_len <= 3 and used <= 12
        assert int(r.soft_counts[b]) == used
    assert saw_marker and saw_total_limit and saw_run_limit


@pytest.mark.parametrize("mode", ["tarpo", "soft-fixed"])
def test_last_step_decision_is_forced_hard_and_its_input_never_fed(mode):
    policy = random_policy(init_bias=(-3.0, 0.0))  # p_soft ~ 0.95
    s = settings(max_new_tokens=6, marker=None, eos_token_ids=(VOCAB + 7,), router_mode=mode, soft_probability=0.95)
    calls, handle = capture_decoder_inputs(policy)
    r = run(policy, s, batch=8)
    handle.remove()
    assert r.completion_ids.shape[1] == 6 and set(r.stop_reason) == {"max_tokens"}
    assert r.decision_mask[:, :-1].all(), "every earlier decision is sampled"
    assert not r.decision_mask[:, -1].any() and not r.soft_mask[:, -1].any() and (r.router_logp[:, -1] == 0).all()
    assert (r.topk_weights[:, -1] == 0).all()
    assert torch.equal(r.soft_counts, r.soft_mask.sum(1)) and r.soft_counts.sum() > 30
    # inputs fed: the prompt, then e_0 .. e_4; the mixtures fed are exactly the recorded soft steps
    assert len(calls) == 1 + 5
    table = policy.embedding_weight.detach()
    fed_soft = sum(int((calls[t + 1][b, 0] != table[r.completion_ids[b, t]]).any())
                   for t in range(5) for b in range(r.num_rows))
    assert fed_soft == int(r.soft_counts.sum())


def test_finished_rows_are_padded_and_masked():
    policy = random_policy()
    r = run(policy, settings(max_new_tokens=60), seed=2)
    for b in range(r.num_rows):
        length = int(r.completion_mask[b].sum())
        if r.stop_reason[b] == "eos":
            assert r.completion_ids[b, length - 1].item() in EOS
            assert (r.completion_ids[b, length:] == 0).all()
            assert not r.completion_mask[b, length:].any()
        assert (r.token_logp[b, length:] == 0).all()
        assert not r.soft_mask[b, length - 1:].any() if r.stop_reason[b] == "eos" else True


def test_initial_soft_ratio_matches_bias():
    bias = 2.2
    policy = random_policy(init_bias=(bias, 0.0))
    s = settings(max_new_tokens=100, marker=None, eos_token_ids=(VOCAB + 7,))
    ids, mask = mixed_prompts(64)
    r = rollout(policy, ids, mask, settings=s, generator=torch.Generator().manual_seed(0))
    decided = r.decision_mask
    n = int(decided.sum())
    ratio = r.soft_mask[decided].float().mean().item()
    expected = 1 / (1 + math.exp(bias))
    assert abs(expected - 0.0998) < 1e-4
    assert n == 64 * 99  # the last step's decision is forced: its input is never fed
    assert abs(ratio - expected) < 4 * math.sqrt(expected * (1 - expected) / n)


@pytest.mark.parametrize("noise", NOISES, ids=NOISE_IDS)
def test_same_seed_same_rollout_and_different_seed_differs(noise):
    policy = random_policy()
    s = settings(**noise)
    a, b, c = run(policy, s, seed=5), run(policy, s, seed=5), run(policy, s, seed=6)
    names = ("completion_ids", "soft_mask", "token_logp", "router_logp", "topk_weights")
    for name in names + (("noise_seeds", "noise_std") if s.soft_noise == "gaussian" else ()):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.completion_ids, c.completion_ids)


def test_soft_fixed_mode_has_no_router_logprobs():
    policy = random_policy()
    s = settings(router_mode="soft-fixed", soft_probability=0.4, marker=None, eos_token_ids=(VOCAB + 7,))
    r = run(policy, s, batch=16)
    assert (r.router_logp == 0).all()
    ratio = r.soft_mask[r.decision_mask].float().mean().item()
    assert abs(ratio - 0.4) < 0.06


def test_greedy_router_follows_the_larger_logit():
    s = settings(greedy_router=True)
    assert not run(random_policy(init_bias=(3.0, 0.0)), s).soft_mask.any()
    r = run(random_policy(init_bias=(-3.0, 0.0)), s)
    assert (r.soft_mask == r.decision_mask).all() and r.soft_mask.any()


def test_unknown_router_mode_rejected():
    with pytest.raises(ValueError, match="router mode"):
        settings(router_mode="sometimes")
