"""fast_rollout's decode step over decode attention: length buckets, no KV expansion, and one compile per bucket
(the attention function itself: tests/test_attention.py)."""

import contextlib
import logging

import pytest
import torch

import tarpo.fast_rollout as fast_module
from tarpo.fast_rollout import CompiledStep, fast_rollout, length_bucket
from tarpo.marker import MarkerMatcher
from tarpo.rollout import RolloutSettings, rollout
from tiny_models import mixed_prompts, random_policy, token_texts

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 8  # tiny_models: hidden 32, 4 query heads, 2 KV heads


@pytest.mark.parametrize("needed, capacity, bucket", [(1, 100, 16), (16, 100, 16), (17, 100, 32), (257, 768, 512),
                                                      (513, 768, 768), (40, 33, 33)])
def test_length_bucket(needed, capacity, bucket):
    assert length_bucket(needed, capacity) == bucket


def settings(**kw):
    base = dict(max_new_tokens=12, eos_token_ids=(1, 2, 3), pad_token_id=0,
                marker=MarkerMatcher.from_token_texts("####", token_texts()), temperature=1.0, soft_top_k=5)
    base.update(kw)
    return RolloutSettings(**base)


class GraphRecorder:
    """A dynamo backend that keeps every captured FX graph and runs it as is."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    def shapes(self):
        return {tuple(node.meta["example_value"].shape) for gm in self.graphs for node in gm.graph.nodes
                if isinstance(node.meta.get("example_value"), torch.Tensor)}


def expanded_kv_shapes(batch, bucket):
    groups = HEADS // KV_HEADS
    return {(batch, HEADS, bucket, HEAD_DIM), (batch, KV_HEADS, groups, bucket, HEAD_DIM)}


def record_step_graphs(policy, monkeypatch=None):
    """Compile the decode step with a recording backend over 12 steps of a width-9 prompt: buckets 16, 21."""
    fast_module._ENGINE_CACHE.pop(policy, None)
    recorder = GraphRecorder()
    ids, mask = mixed_prompts(4, width=9)
    s = settings(eos_token_ids=(10_000,))  # no row ends: every step runs
    record = fast_rollout(policy, ids, mask, settings=s, generator=torch.Generator().manual_seed(0),
                          compile=recorder, prompt_multiple=1)
    engine = next(iter(fast_module._ENGINE_CACHE[policy].values()))
    return recorder, engine, record


def test_compiled_decode_step_has_no_kv_expansion():
    recorder, engine, _ = record_step_graphs(random_policy())
    assert dict(engine.step.graphs) == {16: 1, 21: 1} and engine.step.fell_back is None
    assert len(recorder.graphs) == 2  # one graph per bucket, no breaks
    shapes = recorder.shapes()
    assert (4, KV_HEADS, 16, HEAD_DIM) in shapes  # the bucket's K/V view is in the graph...
    for bucket in (16, 21):
        assert not shapes & expanded_kv_shapes(4, bucket)  # ...but never repeated to the query heads


def test_kv_expansion_check_catches_the_repeat_kv_path(monkeypatch):
    """Positive control: with transformers' own SDPA attention in the step, the expansion shows up."""
    monkeypatch.setattr(fast_module, "decode_attention_active", lambda config: contextlib.nullcontext())
    recorder, _, _ = record_step_graphs(random_policy())
    assert recorder.shapes() & expanded_kv_shapes(4, 16)


@pytest.mark.parametrize("architecture", ["qwen2", "llama"])
def test_compiled_step_matches_eager_rollout(architecture):
    """Dynamo-compiled (aot_eager: functionalised graph, no inductor compile time) equals the eager loop."""
    policy = random_policy(architecture, init_bias=(-0.5, 0.0))
    ids, mask = mixed_prompts(5, width=6)
    s = settings(max_new_tokens=10, max_latent_steps=4)  # cache lengths 7..16: one bucket, one compile
    eager = rollout(policy, ids, mask, settings=s, generator=torch.Generator().manual_seed(3))
    fast = fast_rollout(policy, ids, mask, settings=s, generator=torch.Generator().manual_seed(3),
                        compile="aot_eager", prompt_multiple=1)
    assert torch.equal(eager.completion_ids, fast.completion_ids) and torch.equal(eager.soft_mask, fast.soft_mask)
    for name in ("token_logp", "router_logp", "topk_weights"):
        assert (getattr(eager, name) - getattr(fast, name)).abs().max().item() <= 1e-5, name


def test_engines_compile_once_per_shape_and_bucket(caplog):
    policy = random_policy()
    recorder, engine, first = record_step_graphs(policy)
    compiled = len(recorder.graphs)
    ids, mask = mixed_prompts(4, width=9, seed=1)
    with caplog.at_level(logging.WARNING, logger="tarpo.fast_rollout"):
        for seed in (1, 2):
            fast_rollout(policy, ids, mask, settings=settings(eos_token_ids=(10_000,)), compile=recorder,
                         generator=torch.Generator().manual_seed(seed), prompt_multiple=1)
    assert len(recorder.graphs) == compiled and dict(engine.step.graphs) == {16: 1, 21: 1}
    assert not [r for r in caplog.records if "compiled again" in r.getMessage()]
    assert len(fast_module._ENGINE_CACHE[policy]) == 1


def test_engine_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(fast_module, "MAX_ENGINES_PER_POLICY", 2)
    policy = random_policy()
    s = settings(max_new_tokens=3)
    for width in (5, 6, 7, 5):
        ids, mask = mixed_prompts(2, width=width)
        fast_rollout(policy, ids, mask, settings=s, compile=False, prompt_multiple=1)
    assert [key[1] for key in fast_module._ENGINE_CACHE[policy]] == [7, 5]  # least recently used dropped


def test_rebuilding_an_evicted_compiled_shape_warns(monkeypatch, caplog):
    monkeypatch.setattr(fast_module, "MAX_ENGINES_PER_POLICY", 1)
    monkeypatch.setattr(fast_module, "_DecodeEngine", lambda *args: object())  # only the cache logic here
    policy, s = random_policy(), settings()
    with caplog.at_level(logging.WARNING, logger="tarpo.fast_rollout"):
        for width in (5, 6, 6):
            fast_module._engine_for(policy, s, 2, width, compile=True)
        assert not caplog.records  # a new shape, then the cached one
        fast_module._engine_for(policy, s, 2, 5, compile=True)  # evicted before: compiles again
    assert "rebuilding" in caplog.records[-1].getMessage()


def test_each_compiled_step_has_its_own_dynamo_cache():
    """Dynamo's recompile limit counts per code object: engines must not share one."""
    first = CompiledStep(lambda x: x.mul_(2), torch.device("cpu"), "eager")
    second = CompiledStep(first._raw, torch.device("cpu"), "eager")
    assert first._raw.__code__ is not second._raw.__code__
    x = torch.ones(2)
    first(16, x)
    second(16, x)
    assert torch.equal(x, torch.full((2,), 4.0)) and first.graphs[16] == second.graphs[16] == 1


def test_compiled_step_warns_when_a_bucket_compiles_again(caplog):
    step = CompiledStep(lambda x: x.mul_(2), torch.device("cpu"), "eager")
    with caplog.at_level(logging.WARNING, logger="tarpo.fast_rollout"):
        step(16, torch.ones(2))
        step(16, torch.ones(2))
        assert not caplog.records and step.graphs[16] == 1
        step(16, torch.ones(3))  # new input shape: a recompile for the same bucket
    assert step.graphs[16] == 2 and "compiled again" in caplog.records[-1].getMessage()


def test_compiled_step_says_when_it_breaks_the_graph(caplog):
    def breaking(x):
        x.add_(1)
        torch._dynamo.graph_break()
        x.mul_(2)

    step = CompiledStep(breaking, torch.device("cpu"), "eager")
    x = torch.zeros(2)
    with caplog.at_level(logging.WARNING, logger="tarpo.fast_rollout"):
        step(16, x)
    assert torch.equal(x, torch.full((2,), 2.0)), "the step still ran exactly once"
    assert step.fell_back and "breaks the graph" in caplog.records[-1].getMessage()
