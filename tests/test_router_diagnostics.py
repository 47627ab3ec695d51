"""Router diagnostics (tarpo/router_diagnostics.py): the pure summaries by hand, the collected p_soft against the
rollout's own record (the replay invariant) and against the router's bias."""

import math

import numpy as np
import pytest
import torch

from tarpo.router_diagnostics import (ENTROPY_EDGES, binned_means, collect_decisions, group_shares, pearson, router_change,
                                      summarize_decisions)


def test_binned_means_by_hand_lower_edge_in_upper_edge_out():
    bins = binned_means([0.0, 1.0, 1.5, 3.0, 7.0], [1.0, 2.0, 4.0, 8.0, 16.0], [0.0, 1.0, 3.0, math.inf])
    assert [(b["count"], b["mean"]) for b in bins] == [(1, 1.0), (2, 3.0), (2, 12.0)]
    assert bins[-1]["high"] is None and binned_means([], [], [0.0, 1.0])[0]["mean"] is None


def test_pearson_matches_numpy_and_is_none_when_constant():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    y = y + 0.5 * x
    assert pearson(list(x), list(y)) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert pearson([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]) is None and pearson([1.0], [2.0]) is None


def test_group_shares_by_hand():
    rows = [{"lengths": [10, 6], "explicit_lengths": [8, 6], "soft_steps": [2, 0]},
            {"lengths": [4, 4], "explicit_lengths": [3, 4], "soft_steps": [1, 0]},
            {"lengths": [5, 5], "explicit_lengths": [5, 5], "soft_steps": [0, 0]}]
    out = group_shares([3, 3, 5], rows)
    assert out["3"] == {"problems": 2, "soft_share": 3 / 24, "mean_length": 6.0, "mean_explicit_length": 21 / 4}
    assert out["5"]["soft_share"] == 0.0
    with pytest.raises(ValueError, match="group labels"):
        group_shares([3], rows)


def test_summary_by_hand():
    decisions = {"p_soft": [0.1, 0.3, 0.5], "entropy": [0.0, 0.05, 2.0], "position": [0, 5, 30], "soft": [0, 1, 1]}
    summary = summarize_decisions(decisions)
    assert summary["p_soft_mean"] == pytest.approx(0.3) and summary["soft_share"] == pytest.approx(2 / 3)
    by_entropy = {(b["low"], b["count"]): b["mean"] for b in summary["by_entropy"] if b["count"]}
    assert by_entropy == {(0.0, 1): 0.1, (0.01, 1): 0.3, (2.0, 1): 0.5}
    assert len(summary["by_entropy"]) == len(ENTROPY_EDGES) - 1


def _bins(*means, count=50):
    return {"by_entropy": [{"count": count, "mean": m} for m in means]}


def test_router_change_verdicts():
    start = _bins(0.01, 0.01, 0.01)
    assert router_change(_bins(0.0105, 0.0095, 0.01), start)["verdict"] == "unchanged"
    lowered = router_change(_bins(0.007, 0.0072, 0.0069), start)   # the bias moved, the shape did not
    assert lowered["verdict"] == "uniform" and lowered["min_ratio"] == pytest.approx(0.69)
    raised = router_change(_bins(0.02, 0.0205, 0.021), start)
    assert raised["verdict"] == "uniform"
    shaped = router_change(_bins(0.01, 0.01, 0.05), start)         # soft where the entropy is high only
    assert shaped["verdict"] == "shaped" and shaped["max_ratio"] == pytest.approx(5.0)
    assert router_change(_bins(0.01, 0.01, 0.05, count=5), start)["verdict"] == "no data"  # too few decisions


def _tiny_policy(init_bias):
    from tarpo.models import load_tiny_tokenizer
    from tests.tiny_models import random_policy

    return random_policy(seed=1, init_bias=init_bias, vocab=512), load_tiny_tokenizer()


def _settings(tokenizer):
    from tarpo.rollout import RolloutSettings, eos_ids

    return RolloutSettings(max_new_tokens=10, eos_token_ids=eos_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                           temperature=1.0, soft_top_k=4)


PROMPTS = ["Tom to Ben. Ben to Leo. Tom to Leo or Max?", "Ava to Zoe. Zoe to Max?", "Sam to Mia.",
           "Leo to Eva. Eva to Ben. Ben to Tom. Leo to Tom or Sam?"]


def test_collected_p_soft_is_the_probability_the_rollout_sampled_from():
    """Replay invariant: p_soft read back by replay equals the one implied by the rollout's own router log-prob."""
    from tarpo.fast_rollout import run_rollout
    from tarpo.rollout import encode_prompts

    policy, tokenizer = _tiny_policy((0.0, 0.0))
    settings = _settings(tokenizer)
    got = collect_decisions(policy, tokenizer, PROMPTS, settings, seed=7, batch_size=4, max_prompt_tokens=64)
    ids, mask = encode_prompts(tokenizer, PROMPTS, 64, policy.device)
    with torch.no_grad():
        batch = run_rollout(policy, ids, mask, settings=settings, generator=torch.Generator().manual_seed(7),
                            engine="eager")
    decided = batch.decision_mask & batch.completion_mask
    chosen = batch.router_logp[decided].exp()
    expected = torch.where(batch.soft_mask[decided], chosen, 1 - chosen)
    assert len(got["p_soft"]) == int(decided.sum()) > 10
    assert torch.allclose(torch.tensor(got["p_soft"]), expected, atol=1e-4)
    assert got["soft"] == batch.soft_mask[decided].long().tolist()
    assert sum(got["soft_steps"]) == sum(got["soft"]) > 0
    assert all(0.0 <= e <= math.log(512) + 1e-4 for e in got["entropy"])


def test_collected_p_soft_follows_the_router_bias():
    """Near-zero router weights: p_soft is the bias's 1 / (1 + e^(b_hard - b_soft)) at every step."""
    policy, tokenizer = _tiny_policy((2.2, 0.0))
    got = collect_decisions(policy, tokenizer, PROMPTS, _settings(tokenizer), seed=0, batch_size=2,
                            max_prompt_tokens=64)
    assert sum(got["p_soft"]) / len(got["p_soft"]) == pytest.approx(1 / (1 + math.exp(2.2)), abs=0.003)
