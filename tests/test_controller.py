"""The residual-stream controller e + U e and its hypernetwork decoder."""

import pytest
import torch

from internal_rl.common.errors import ConfigError
from internal_rl.models.controller import ControllerDecoder, ControllerParams, apply_controller


@pytest.mark.parametrize("rank", [3, None])
def test_apply_controller_matches_plain_matrix_product(rank):
    torch.manual_seed(0)
    b, t, d = 2, 3, 6
    if rank is None:
        params = ControllerParams(torch.randn(b, t, d, d), None)
    else:
        params = ControllerParams(torch.randn(b, t, d, rank), torch.randn(b, t, d, rank))
    e = torch.randn(b, t, d)
    out = apply_controller(e, params)
    for i in range(b):
        for j in range(t):
            a = params.a[i, j]
            u = a if rank is None else a @ params.b[i, j].T
            torch.testing.assert_close(out[i, j], e[i, j] + u @ e[i, j], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(params.matrix()[1, 2], u)


@pytest.mark.parametrize("rank", [4, None])
def test_decoder_starts_at_identity_and_learns(rank):
    torch.manual_seed(0)
    decoder = ControllerDecoder(n_z=3, d_model=8, rank=rank, hidden=5)
    z = torch.randn(4, 7, 3)
    params = decoder(z)
    assert params.batch_shape == (4, 7)
    assert params.matrix().shape == (4, 7, 8, 8)
    e = torch.randn(4, 7, 8)
    torch.testing.assert_close(apply_controller(e, params), e)
    # U = 0 at init, yet the loss still has a gradient (LoRA-style init), so training can start.
    target = torch.randn(4, 7, 8)
    (apply_controller(e, params) - target).square().mean().backward()
    head = decoder.b_head if rank is not None else decoder.a_head
    assert head.weight.grad.abs().sum() > 0


def test_decoder_output_depends_on_z():
    torch.manual_seed(0)
    decoder = ControllerDecoder(n_z=3, d_model=8, rank=2, hidden=5)
    with torch.no_grad():
        decoder.b_head.weight.normal_()
    z = torch.randn(2, 3)
    u = decoder(z).matrix()
    assert not torch.allclose(u[0], u[1])


@pytest.mark.parametrize("bad", [{"rank": 0}, {"rank": 9}, {"n_z": 0}])
def test_bad_decoder_refused(bad):
    with pytest.raises(ConfigError):
        ControllerDecoder(**{"n_z": 3, "d_model": 8, "rank": 2, **bad})


def test_affine_controller_adds_its_shift_and_starts_at_zero():
    torch.manual_seed(0)
    decoder = ControllerDecoder(4, 8, rank=2, hidden=6, shift=True)
    z, e = torch.randn(3, 4), torch.randn(3, 8)
    torch.testing.assert_close(apply_controller(e, decoder(z)), e)  # zero-initialised: the base model's e
    with torch.no_grad():
        decoder.shift_head.bias.fill_(0.5)
        decoder.b_head.bias.normal_()
    params = decoder(z)
    expected = e + (params.matrix() @ e[..., None])[..., 0] + params.shift
    torch.testing.assert_close(apply_controller(e, params), expected)
    assert ControllerDecoder(4, 8, rank=2).shift_head is None and ControllerDecoder(4, 8, rank=2)(z).shift is None
