"""tarpo.mixing: the soft/hard input function and its soft-input noise (gumbel weights, seeded gaussian)."""

import math
import typing

import pytest
import torch

from tarpo import mixing
from tarpo.config import RouterConfig
from tarpo.mixing import (embedding_rms, gaussian_noise, gumbel_perturbed_weights, mix_inputs, mix_inputs_dense,
                          soft_embeddings)


def test_noise_kinds_are_the_config_literal():
    assert typing.get_args(RouterConfig.model_fields["soft_noise"].annotation) == mixing.SOFT_NOISE_KINDS


def lowbias32(x: int) -> int:
    """The 32-bit mixer in plain Python integers (an independent implementation of tarpo.mixing._hash32)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def reference_noise(seed: int, dim: int) -> list[float]:
    out = []
    for j in range(dim):
        u = [((lowbias32(lowbias32(lowbias32(seed) ^ lowbias32(c)) ^ lowbias32(seed ^ 0x9E3779B9)) >> 8) + 0.5)
             / 2**24 for c in (j, dim + j)]
        out.append(math.sqrt(-2.0 * math.log(u[0])) * math.cos(2.0 * math.pi * u[1]))
    return out


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**31 - 1])
def test_gaussian_noise_equals_an_independent_python_computation(seed):
    got = gaussian_noise(torch.tensor([seed]), 6)[0].double()
    expected = torch.tensor(reference_noise(seed, 6), dtype=torch.float64)
    assert (got - expected).abs().max().item() <= 1e-5


def test_hash_matches_python_on_large_values():
    values = [0, 1, 0xFFFF, 0x10000, 0xDEADBEEF, 0xFFFFFFFF]
    got = mixing._hash32(torch.tensor(values, dtype=torch.long)).tolist()
    assert got == [lowbias32(v) for v in values]


def test_gaussian_noise_is_a_function_of_the_seed_only():
    seeds = torch.randint(0, mixing.NOISE_SEED_LIMIT, (3, 4), generator=torch.Generator().manual_seed(0))
    grid = gaussian_noise(seeds, 16)  # (3, 4, 16)
    flat = gaussian_noise(seeds.flatten(), 16).view(3, 4, 16)
    assert grid.shape == (3, 4, 16) and grid.dtype == torch.float32
    assert torch.equal(grid, flat)
    assert torch.equal(gaussian_noise(seeds[1, 2:3], 16)[0], grid[1, 2])
    assert not torch.equal(grid[0, 0], grid[0, 1])


def test_gaussian_noise_is_standard_normal():
    z = gaussian_noise(torch.arange(400), 64).double()  # consecutive seeds: the worst case for a weak hash
    n = z.numel()
    assert abs(z.mean().item()) < 4 / math.sqrt(n)
    assert abs(z.var().item() - 1.0) < 4 * math.sqrt(2 / n)
    inside = (z.abs() < 1).double().mean().item()
    assert abs(inside - 0.682689) < 4 * math.sqrt(0.6827 * 0.3173 / n)
    corr_dims = (z[:, :-1] * z[:, 1:]).mean().item()
    corr_seeds = (z[:-1] * z[1:]).mean().item()
    assert abs(corr_dims) < 4 / math.sqrt(n) and abs(corr_seeds) < 4 / math.sqrt(n)


def test_gumbel_weights_are_a_gumbel_softmax_of_w():
    w = torch.tensor([0.5, 0.3, 0.2, 0.0])  # the last id was filtered out
    u = torch.rand(20000, 4, generator=torch.Generator().manual_seed(0))
    perturbed = gumbel_perturbed_weights(w.expand(20000, 4), u, 1.0)
    assert torch.allclose(perturbed.sum(-1), torch.ones(20000), atol=1e-6)
    assert (perturbed[:, 3] == 0).all(), "a filtered id never gets weight"
    assert (perturbed - w).abs().max() > 0.3
    # at scale 1 the largest perturbed weight is a sample from w (Gumbel-max), checked by counting
    freq = torch.bincount(perturbed.argmax(-1), minlength=4).double() / 20000
    assert (freq - w.double()).abs().max() < 4 * math.sqrt(0.25 / 20000)
    # the perturbed weights are exactly softmax(log w + g)
    g = -torch.log(-torch.log(u[:5].double()))
    torch.testing.assert_close(perturbed[:5].double(), torch.softmax(torch.log(w.double()) + g, -1),
                               rtol=0, atol=1e-6)


def test_gumbel_scale_to_zero_recovers_w():
    w = torch.softmax(torch.randn(7, 5, generator=torch.Generator().manual_seed(1)), -1)
    u = torch.rand(7, 5, generator=torch.Generator().manual_seed(2))
    assert (gumbel_perturbed_weights(w, u, 1e-7) - w).abs().max() <= 1e-6
    assert (gumbel_perturbed_weights(w, u, 0.5) - w).abs().max() > 1e-2


def test_embedding_rms_in_chunks():
    table = torch.randn(37, 8, generator=torch.Generator().manual_seed(3))
    expected = table.double().pow(2).mean().sqrt()
    assert abs(embedding_rms(table, rows_per_chunk=5).item() - expected.item()) < 1e-6
    assert abs(embedding_rms(table).item() - expected.item()) < 1e-6


def inputs(seed=0, batch=3, steps=5, vocab=20, dim=8, k=4):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, dim, generator=g)
    ids = torch.randint(0, vocab, (batch, steps), generator=g)
    topk_ids = torch.randint(0, vocab, (batch, steps, k), generator=g)
    topk_weights = torch.softmax(torch.randn(batch, steps, k, generator=g), -1)
    soft = torch.rand(batch, steps, generator=g) < 0.5
    seeds = torch.randint(0, mixing.NOISE_SEED_LIMIT, (batch, steps), generator=g)
    std = torch.rand(batch, generator=g) + 0.5
    return table, ids, topk_ids, topk_weights, soft, seeds, std


def test_gaussian_noise_goes_to_soft_positions_only():
    table, ids, topk_ids, topk_weights, soft, seeds, std = inputs()
    assert soft.any() and (~soft).any()
    noisy = mix_inputs(table, ids, topk_ids, topk_weights, soft, seeds, std[:, None])
    plain = mix_inputs(table, ids, topk_ids, topk_weights, soft)
    assert torch.equal(noisy[~soft], table[ids][~soft]), "hard inputs are E[y] exactly"
    mixture = (topk_weights.double()[..., None] * table.double()[topk_ids]).sum(-2)
    expected = mixture + std.double()[:, None, None] * gaussian_noise(seeds, 8).double()
    assert (noisy[soft].double() - expected[soft]).abs().max() <= 1e-5
    assert (noisy[soft] - plain[soft]).abs().min() > 0, "every soft coordinate moved"
    tiny = mix_inputs(table, ids, topk_ids, topk_weights, soft, seeds, 1e-9 * std[:, None])
    assert (tiny - plain).abs().max() <= 1e-7, "std -> 0 recovers the plain mixture"


def test_dense_and_sparse_mixing_agree_with_noise():
    table, ids, topk_ids, topk_weights, soft, seeds, std = inputs(seed=1)
    sparse = mix_inputs(table, ids, topk_ids, topk_weights, soft, seeds, std[:, None])
    for t in range(ids.shape[1]):  # the decode step: B rows, one position
        dense = mix_inputs_dense(table, ids[:, t], topk_ids[:, t], topk_weights[:, t], soft[:, t], seeds[:, t], std)
        assert torch.equal(dense, sparse[:, t])


def test_soft_embeddings_without_noise_unchanged():
    table, _, topk_ids, topk_weights, _, _, _ = inputs(seed=2)
    expected = (topk_weights[..., None] * table[topk_ids]).sum(-2)
    assert torch.equal(soft_embeddings(table, topk_ids, topk_weights), expected)
