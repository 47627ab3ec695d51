"""Sampling distribution q_t: the filtered distribution against transformers' own logits warpers."""

import pytest
import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from tarpo.sampling import (LOGP_FLOOR, entropy_from_logprobs, filters_active, gather_logprob, gumbel_argmax,
                            sampling_logprobs, tempered_logprobs)

VOCAB = 50
FILTERS = [dict(), dict(top_k=7), dict(top_p=0.8), dict(top_k=12, top_p=0.7), dict(top_k=1), dict(top_p=0.05)]


def hf_logprobs(logits, temperature, top_k=0, top_p=1.0):
    """log softmax of the scores after transformers' warpers, in the order `generate` applies them."""
    warpers = [TemperatureLogitsWarper(temperature)]
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    scores = logits.clone()
    for warp in warpers:
        scores = warp(None, scores)
    return torch.log_softmax(scores, dim=-1)


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: "-".join(f"{k}{v}" for k, v in f.items()) or "none")
@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_filtered_distribution_matches_transformers(filters, temperature):
    logits = torch.randn(64, VOCAB, generator=torch.Generator().manual_seed(1)) * 3
    ours = sampling_logprobs(logits, temperature, **filters)
    theirs = hf_logprobs(logits, temperature, **filters)
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs)), "different kept sets"
    kept = torch.isfinite(ours)
    torch.testing.assert_close(ours[kept], theirs[kept], rtol=0, atol=1e-5)
    if "top_k" in filters and "top_p" not in filters:  # continuous logits: no ties
        assert (kept.sum(-1) == filters["top_k"]).all()


def test_topk_ties_at_the_boundary_are_all_kept():
    logits = torch.tensor([[3.0, 1.0, 1.0, 1.0, 0.0, -1.0]])
    ours = sampling_logprobs(logits, 1.0, top_k=2)
    theirs = hf_logprobs(logits, 1.0, top_k=2)
    assert torch.isfinite(ours).tolist() == [[True, True, True, True, False, False]]
    torch.testing.assert_close(ours, theirs)


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    logits = probs.log().float()
    for top_p, kept in [(0.5, 1), (0.51, 2), (0.8, 2), (0.81, 3), (0.96, 4)]:
        log_q = sampling_logprobs(logits, 1.0, top_p=top_p)
        assert int(torch.isfinite(log_q).sum()) == kept, top_p
        expected = probs[0, :kept] / probs[0, :kept].sum()
        torch.testing.assert_close(log_q[0, :kept].exp().double(), expected, rtol=0, atol=1e-6)


def test_tempered_logprobs_ignore_filters_and_are_finite():
    logits = torch.randn(8, VOCAB, generator=torch.Generator().manual_seed(2)) * 10
    log_p = tempered_logprobs(logits, 0.8)
    expected = torch.log_softmax(logits.double() / 0.8, dim=-1)
    torch.testing.assert_close(log_p.double(), expected, rtol=0, atol=1e-5)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(sampling_logprobs(logits, 0.8), log_p)


def test_filters_active():
    assert not filters_active(VOCAB) and not filters_active(VOCAB, top_k=VOCAB) and not filters_active(VOCAB, 0, 1.0)
    assert filters_active(VOCAB, top_k=5) and filters_active(VOCAB, top_p=0.9)


def test_gather_floor_and_entropy_of_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    log_q = sampling_logprobs(logits, 1.0, top_k=2)
    assert gather_logprob(log_q, torch.tensor([3])).item() == LOGP_FLOOR
    p = torch.softmax(torch.tensor([2.0, 1.0], dtype=torch.float64), -1)
    assert entropy_from_logprobs(log_q).item() == pytest.approx(float(-(p * p.log()).sum()), abs=1e-6)


def test_gumbel_argmax_samples_q_and_never_a_filtered_token():
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -3.0]).expand(20000, 5)
    log_q = sampling_logprobs(logits, 1.0, top_k=3)
    uniforms = torch.rand(20000, 5, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(gumbel_argmax(log_q, uniforms), minlength=5).double() / 20000
    expected = log_q[0].exp().double()
    assert counts[3:].sum() == 0
    assert (counts - expected).abs().max() < 0.015  # ~4 standard errors at n = 20000
