"""Fast (static-cache) rollout: identical record to the eager reference for the same seed, early exit, dispatch."""

import shutil

import pytest
import torch

from tarpo.fast_rollout import StaticKVCache, fast_path_supported, fast_rollout, run_rollout
from tarpo.marker import MarkerMatcher
from tarpo.rollout import RolloutSettings, rollout
from tiny_models import VOCAB, mixed_prompts, random_policy, token_texts

EOS = (1, 2, 3)
EXACT = ("completion_ids", "completion_mask", "soft_mask", "decision_mask", "topk_ids", "soft_counts")


def settings(**kw):
    base = dict(max_new_tokens=40, eos_token_ids=EOS, pad_token_id=0,
                marker=MarkerMatcher.from_token_texts("####", token_texts()), temperature=1.0, soft_top_k=5)
    base.update(kw)
    return RolloutSettings(**base)


def likely_eos_and_marker(policy, eos_scale=2.5, marker_scale=4.0):
    """Make eos and marker pieces likely so rows stop at mixed steps and the marker rule binds."""
    with torch.no_grad():
        head = policy.causal_lm.get_output_embeddings().weight
        head[1:4] *= eos_scale
        head[5:9] *= marker_scale
    return policy


def both(policy, s, seed=0, batch=6, width=9, **fast_kw):
    ids, mask = mixed_prompts(batch, width=width)
    g_eager, g_fast = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    eager = rollout(policy, ids, mask, settings=s, generator=g_eager)
    fast = fast_rollout(policy, ids, mask, settings=s, generator=g_fast, **fast_kw)
    return eager, fast, (g_eager, g_fast)


def assert_same(eager, fast):
    assert eager.completion_ids.shape == fast.completion_ids.shape
    for name in EXACT:
        assert torch.equal(getattr(eager, name), getattr(fast, name)), name
    assert eager.stop_reason == fast.stop_reason
    assert (eager.token_logp - fast.token_logp).abs().max().item() <= 1e-5
    assert (eager.router_logp - fast.router_logp).abs().max().item() <= 1e-5
    assert (eager.topk_weights - fast.topk_weights).abs().max().item() <= 1e-5
    assert torch.equal(eager.prompt_ids, fast.prompt_ids) and torch.equal(eager.prompt_mask, fast.prompt_mask)
    assert (eager.noise_seeds is None) == (fast.noise_seeds is None)
    if eager.noise_seeds is not None:
        assert torch.equal(eager.noise_seeds, fast.noise_seeds) and torch.equal(eager.noise_std, fast.noise_std)


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
@pytest.mark.parametrize("options", [
    dict(),
    dict(top_k=20, top_p=0.9, temperature=0.7),
    dict(max_latent_steps=6, max_consecutive_latent_steps=2),
    dict(router_mode="hard"),
    dict(router_mode="soft-fixed", soft_probability=0.4),
    dict(soft_noise="gumbel"),
    dict(soft_noise="gaussian", soft_noise_scale=0.5),
    dict(router_mode="soft-fixed", soft_probability=0.4, soft_noise="gaussian"),
], ids=["plain", "filters", "latent-limits", "hard", "soft-fixed", "gumbel", "gaussian", "soft-fixed-gaussian"])
def test_fast_equals_eager(architecture, options):
    policy = likely_eos_and_marker(random_policy(architecture, init_bias=(-0.5, 0.0)))
    eager, fast, (g_eager, g_fast) = both(policy, settings(**options), seed=3, sync_every=7)
    assert_same(eager, fast)
    lengths = eager.completion_mask.sum(1)
    assert len(set(lengths.tolist())) > 1, "need mixed stop steps"
    if options.get("router_mode", "tarpo") != "hard":
        assert eager.soft_mask.any()
    assert torch.equal(g_eager.get_state(), g_fast.get_state()), "the generator must end where the eager one does"


@pytest.mark.parametrize("mode", ["tarpo", "soft-fixed"])
def test_last_step_decision_is_forced_in_fast_path(mode):
    policy = random_policy(init_bias=(-3.0, 0.0))
    s = settings(max_new_tokens=7, marker=None, eos_token_ids=(VOCAB + 7,), router_mode=mode, soft_probability=0.95)
    eager, fast, _ = both(policy, s, seed=1, sync_every=3)
    assert_same(eager, fast)
    assert fast.decision_mask[:, :-1].all() and not fast.decision_mask[:, -1].any()
    assert not fast.soft_mask[:, -1].any() and torch.equal(fast.soft_counts, fast.soft_mask.sum(1))


def test_marker_and_limits_bind_in_fast_path():
    texts = token_texts()
    policy = likely_eos_and_marker(random_policy(init_bias=(-1.0, 0.0)), eos_scale=1.0, marker_scale=6.0)
    s = settings(max_new_tokens=60, max_latent_steps=12, max_consecutive_latent_steps=3)
    eager, fast, _ = both(policy, s, seed=1, batch=8)
    assert_same(eager, fast)
    saw_marker = 0
    for b in range(fast.num_rows):
        ids = fast.completion_ids[b].tolist()
        for t in range(len(ids)):
            if fast.completion_mask[b, t] and "####" in "".join(texts[i] for i in ids[: t + 1]):
                assert not fast.decision_mask[b, t] and not fast.soft_mask[b, t]
                saw_marker += 1
        assert int(fast.soft_counts[b]) <= 12
    assert saw_marker


@pytest.mark.parametrize("sync_every", [1, 5, 16, 100])
def test_early_exit_trims_to_the_eager_length(sync_every):
    policy = likely_eos_and_marker(random_policy(init_bias=(0.0, 0.0)), eos_scale=3.0)
    s = settings(max_new_tokens=80)
    eager, fast, (g_eager, g_fast) = both(policy, s, seed=3, sync_every=sync_every)
    assert all(reason == "eos" for reason in eager.stop_reason)
    assert eager.completion_ids.shape[1] < 80, "the eager loop must stop early for this test to mean anything"
    assert_same(eager, fast)
    assert torch.equal(g_eager.get_state(), g_fast.get_state())
    # a second rollout on the same generators stays identical (rng rewound after the extra steps)
    ids, mask = mixed_prompts(6, seed=1)
    assert_same(rollout(policy, ids, mask, settings=s, generator=g_eager),
                fast_rollout(policy, ids, mask, settings=s, generator=g_fast, sync_every=sync_every))


def test_max_tokens_rows_and_greedy_tokens():
    policy = random_policy("llama", init_bias=(0.0, 0.0))
    s = settings(max_new_tokens=25, marker=None, eos_token_ids=(VOCAB + 7,), greedy_tokens=True)
    eager, fast, _ = both(policy, s, batch=4)
    assert_same(eager, fast)
    assert fast.completion_ids.shape[1] == 25 and set(fast.stop_reason) == {"max_tokens"}


def test_engine_is_reused_across_calls_and_rebuilt_for_new_shapes():
    policy = likely_eos_and_marker(random_policy(init_bias=(0.0, 0.0)))
    s = settings()
    for width, seed in ((9, 0), (9, 1), (12, 2), (9, 3)):
        eager, fast, _ = both(policy, s, seed=seed, width=width)
        assert_same(eager, fast)


def test_prompt_multiple_left_pads_without_changing_the_record():
    policy = likely_eos_and_marker(random_policy(init_bias=(0.0, 0.0)))
    eager, fast, _ = both(policy, settings(), seed=4, prompt_multiple=8)  # 9 columns -> 16
    assert fast.prompt_ids.shape == eager.prompt_ids.shape
    assert torch.equal(eager.completion_ids, fast.completion_ids)
    assert (eager.token_logp - fast.token_logp).abs().max().item() <= 1e-5


def test_run_rollout_dispatch(monkeypatch):
    import tarpo.fast_rollout as module

    policy = random_policy()
    ids, mask = mixed_prompts(3)
    s = settings(max_new_tokens=5)
    calls = []
    monkeypatch.setattr(module, "eager_rollout", lambda *a, **k: calls.append("eager") or "E")
    monkeypatch.setattr(module, "fast_rollout", lambda *a, **k: calls.append("fast") or "F")
    assert run_rollout(policy, ids, mask, settings=s) == "E"  # CPU: auto = eager
    assert run_rollout(policy, ids, mask, settings=s, engine="fast") == "F"
    assert run_rollout(policy, ids, mask, settings=s, engine="eager") == "E"
    assert calls == ["eager", "fast", "eager"]
    with pytest.raises(ValueError, match="engine"):
        run_rollout(policy, ids, mask, settings=s, engine="turbo")
    assert fast_path_supported(policy)


def test_run_rollout_fast_on_cpu_matches_eager():
    policy = likely_eos_and_marker(random_policy(init_bias=(0.0, 0.0)))
    ids, mask = mixed_prompts(5)
    s = settings()
    eager = run_rollout(policy, ids, mask, settings=s, generator=torch.Generator().manual_seed(9), engine="eager")
    fast = run_rollout(policy, ids, mask, settings=s, generator=torch.Generator().manual_seed(9), engine="fast")
    assert_same(eager, fast)


def test_static_cache_writes_at_its_position():
    cache = StaticKVCache(num_layers=2, batch=1, kv_heads=1, length=6, head_dim=2, dtype=torch.float32,
                          device=torch.device("cpu"))
    cache.write_start.fill_(2)
    k, v = cache.update(torch.ones(1, 1, 3, 2), 2 * torch.ones(1, 1, 3, 2), 1, {"cache_position": None})
    assert k.shape == (1, 1, 6, 2)
    assert k[0, 0, :, 0].tolist() == [0, 0, 1, 1, 1, 0] and v[0, 0, 3, 1] == 2
    assert cache.keys[0].abs().sum() == 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None,
                    reason="torch.compile on CPU needs a C++ toolchain")
def test_compiled_step_equals_eager_on_cpu():
    """torch.compile (inductor, CPU) of the whole decode step; about 90 s of compilation on 2 cores."""
    policy = likely_eos_and_marker(random_policy(init_bias=(-0.5, 0.0)))
    s = settings(max_new_tokens=24, max_latent_steps=6)
    eager, fast, _ = both(policy, s, seed=2, compile=True, prompt_multiple=1)
    assert_same(eager, fast)


@pytest.mark.parametrize("noise", [dict(soft_noise="gumbel"), dict(soft_noise="gaussian", soft_noise_scale=0.5)],
                         ids=["gumbel", "gaussian"])
def test_compiled_step_with_soft_noise_equals_eager(noise):
    """The noise inside the compiled step (aot_eager: full graph, no inductor compile time): no graph break, and the
    same record as the eager loop, the recorded noise included."""
    policy = random_policy(init_bias=(-0.5, 0.0))
    ids, mask = mixed_prompts(5, width=6)
    s = settings(max_new_tokens=10, **noise)
    eager = rollout(policy, ids, mask, settings=s, generator=torch.Generator().manual_seed(3))
    fast = fast_rollout(policy, ids, mask, settings=s, generator=torch.Generator().manual_seed(3),
                        compile="aot_eager", prompt_multiple=1)
    assert eager.soft_mask.any()
    assert_same(eager, fast)
    from tarpo.fast_rollout import _ENGINE_CACHE

    engine = next(reversed(_ENGINE_CACHE[policy].values()))
    assert engine.step is not None and engine.step.fell_back is None, "the noise broke the graph"
