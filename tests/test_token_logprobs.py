"""Chunked token log-probs equal the dense computation, values and gradients, and skip what is not asked."""

import pytest
import torch

from tarpo.sampling import entropy_from_logprobs, gather_logprob, sampling_logprobs, tempered_logprobs
from tarpo.token_logprobs import token_logprobs


def setup(seed=0, B=3, T=7, d=5, V=40):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, d, generator=g, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(d, V, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, d, generator=g, dtype=torch.float64))
    ids = torch.randint(0, V, (B, T), generator=g)
    return hidden, head, ids


def dense_reference(hidden, head, ids, **sampling):
    """The textbook path, written out: full logits, log-softmax of the filtered tempered logits, gather."""
    log_q = sampling_logprobs(head(hidden), **sampling)
    return gather_logprob(log_q, ids), entropy_from_logprobs(log_q.detach())


SAMPLING = [dict(temperature=0.7), dict(temperature=1.0, top_k=8), dict(temperature=0.5, top_p=0.8)]


@pytest.mark.parametrize("sampling", SAMPLING)
@pytest.mark.parametrize("chunk_tokens", [None, 1, 6, 9, 1000])  # chunk widths 7, 1, 2, 3, 7 over T = 7
def test_chunked_equals_dense_values_and_gradients(sampling, chunk_tokens):
    hidden, head, ids = setup()
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected_logp, expected_entropy = dense_reference(hidden, head, ids, **sampling)
    (expected_logp * weights).sum().backward()
    expected_grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None

    logp, tempered, entropy = token_logprobs(hidden, lambda h: head(h).float().double(), ids,
                                             chunk_tokens=chunk_tokens, vocab_size=40, **sampling)
    (logp * weights).sum().backward()
    torch.testing.assert_close(logp, expected_logp, rtol=0, atol=1e-6)
    torch.testing.assert_close(entropy, expected_entropy, rtol=0, atol=1e-6)
    torch.testing.assert_close(hidden.grad, expected_grads[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, expected_grads[1], rtol=0, atol=1e-6)
    assert not entropy.requires_grad
    expected_tempered = gather_logprob(tempered_logprobs(head(hidden.detach()), sampling["temperature"]), ids)
    torch.testing.assert_close(tempered.detach(), expected_tempered, rtol=0, atol=1e-6)
    filtered = "top_k" in sampling or "top_p" in sampling
    assert (tempered is logp) == (not filtered)   # no filter: p is q, one tensor


def test_entropy_only_when_asked_and_once_per_chunk(monkeypatch):
    import tarpo.token_logprobs as module

    entropy_calls = []
    monkeypatch.setattr(module, "entropy_from_logprobs",
                        lambda log_q: entropy_calls.append(1) or entropy_from_logprobs(log_q))
    hidden, head, ids = setup()
    calls = []

    def counting_head(h):
        calls.append(h.shape[1])
        return head(h)

    logp, _, entropy = token_logprobs(hidden, counting_head, ids, temperature=1.0, chunk_tokens=6, with_entropy=False)
    assert entropy is None and calls == [2, 2, 2, 1]
    logp.sum().backward()
    assert calls == [2, 2, 2, 1] + [1, 2, 2, 2]  # backward recomputes each chunk once (checkpointed)
    with torch.no_grad():
        calls.clear()
        _, _, entropy = token_logprobs(hidden, counting_head, ids, temperature=1.0, chunk_tokens=6)
    assert calls == [2, 2, 2, 1] and entropy.shape == ids.shape  # no grad: no recompute, entropy per chunk
    entropy_calls.clear()
    logp, _, entropy = token_logprobs(hidden, head, ids, temperature=1.0, chunk_tokens=6)
    logp.sum().backward()
    assert len(entropy_calls) == 4 and entropy.shape == ids.shape  # not again when backward recomputes


def test_chunked_path_keeps_no_full_vocabulary_tensor_for_backward():
    """Saved-for-backward tensors: dense (or a single chunk: bounded by chunk_tokens) keeps (B, T, V) log-probs,
    several chunks keep none of vocabulary width."""
    hidden, head, ids = setup(V=300)
    for chunk_tokens, expect_full in ((None, True), (21, True), (6, False)):
        saved = []

        def pack(tensor):
            saved.append(tuple(tensor.shape))
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            token_logprobs(hidden, head, ids, temperature=0.5, chunk_tokens=chunk_tokens)
        assert any(shape[-1] == 300 and len(shape) == 3 for shape in saved) == expect_full, saved
