"""Router: init probabilities, fp32 under a bf16 backbone, verified save/load."""

import pytest
import torch

from tarpo.router import Router, RouterLoadError, initial_soft_probability, load_router, save_router


@pytest.mark.parametrize("bias,expected", [(4.6, 0.0100), (2.2, 0.0998), (0.0, 0.5)])
def test_initial_soft_probability(bias, expected):
    router = Router(64, (bias, 0.0), generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(1000, 64)
    p_soft = torch.softmax(router(hidden), -1)[:, 1]
    assert initial_soft_probability((bias, 0.0)) == pytest.approx(expected, abs=1e-4)
    assert p_soft.mean().item() == pytest.approx(expected, abs=2e-3)
    assert router.linear.weight.std().item() == pytest.approx(1e-3, rel=0.1)


def test_fp32_parameters_and_output_under_bf16_input():
    router = Router(16)
    out = router(torch.randn(3, 16, dtype=torch.bfloat16))
    assert router.linear.weight.dtype == torch.float32 and out.dtype == torch.float32
    assert out.shape == (3, 2)


def test_init_bias_needs_two_numbers():
    with pytest.raises(ValueError, match="expected 2 numbers, got 3"):
        Router(8, (1.0, 2.0, 3.0))


def test_save_load_round_trip(tmp_path):
    router = Router(32, (2.2, 0.0), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        router.linear.bias += torch.tensor([0.123, -0.5])
    save_router(router, tmp_path)
    loaded = load_router(tmp_path, 32)
    assert torch.equal(loaded.linear.weight, router.linear.weight)
    assert torch.equal(loaded.linear.bias, router.linear.bias)


def test_missing_router_is_an_error(tmp_path):
    with pytest.raises(RouterLoadError, match="router weights not found"):
        load_router(tmp_path, 32)


def test_mis_shaped_router_is_an_error(tmp_path):
    save_router(Router(16), tmp_path)
    with pytest.raises(RouterLoadError, match=r"shape \(2, 16\), expected \(2, 32\)"):
        load_router(tmp_path, 32)


def test_corrupt_router_file_is_an_error(tmp_path):
    save_router(Router(16), tmp_path)
    (tmp_path / "router.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RouterLoadError, match="cannot read router weights"):
        load_router(tmp_path, 16)
