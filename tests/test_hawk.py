"""Hawk block: stepping equals the sequence mode, causality, the scan equation, and config validation."""

import pytest
import torch

from internal_rl.common.errors import ConfigError
from internal_rl.models.hawk import HawkBlock, HawkConfig, linear_scan


def _block(seed: int = 0, **kwargs) -> HawkBlock:
    torch.manual_seed(seed)
    config = HawkConfig(**{"d_model": 16, "n_heads": 2, "mlp_hidden": 32, **kwargs})
    block = HawkBlock(config)
    # Non-trivial conv weights so that the convolution's time shifts are actually exercised.
    with torch.no_grad():
        block.recurrent.conv_1d.w.normal_()
    return block


def test_scan_matches_closed_form():
    torch.manual_seed(0)
    a, u, h0 = torch.rand(3, 7, 5), torch.randn(3, 7, 5), torch.randn(3, 5)
    h, last = linear_scan(a, u, h0)
    for t in range(7):
        # h_t = prod_{k<=t} a_k h0 + sum_{j<=t} prod_{j<k<=t} a_k u_j
        expected = torch.prod(a[:, : t + 1], dim=1) * h0
        for j in range(t + 1):
            expected = expected + torch.prod(a[:, j + 1 : t + 1], dim=1) * u[:, j]
        torch.testing.assert_close(h[:, t], expected)
    torch.testing.assert_close(last, h[:, -1])


@pytest.mark.parametrize("lru_width", [None, 24])
def test_step_by_step_equals_sequence(lru_width):
    block = _block(lru_width=lru_width)
    x = torch.randn(3, 11, 16)
    y_seq, final = block(x)
    state = block.init_state(3)
    ys = []
    for t in range(11):
        y_t, state = block.step(x[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y_seq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.rg_lru, final.rg_lru, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state.conv, final.conv)


def test_chunks_with_carried_state_equal_whole_sequence():
    block = _block()
    x = torch.randn(2, 10, 16)
    y_all, _ = block(x)
    y1, state = block(x[:, :4])
    y2, _ = block(x[:, 4:], state)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_all, atol=1e-5, rtol=1e-5)


def test_causal():
    block = _block()
    x = torch.randn(2, 9, 16)
    y, _ = block(x)
    x2 = x.clone()
    x2[:, 5:] += torch.randn(2, 4, 16)
    y2, _ = block(x2)
    torch.testing.assert_close(y2[:, :5], y[:, :5])
    assert not torch.allclose(y2[:, 5:], y[:, 5:])


def test_gradients_flow_and_are_finite():
    block = _block()
    x = torch.randn(2, 6, 16, requires_grad=True)
    y, _ = block(x)
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("bad", [{"n_heads": 3}, {"d_model": 0}, {"conv_width": 0}])
def test_bad_config_refused(bad):
    with pytest.raises(ConfigError):
        HawkConfig(**{"d_model": 16, "n_heads": 2, **bad})
