"""Variational dequantization and the bits/dim bound, both backends, with parity."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pyro.distributions as dist
import pytest
import torch

import pyroflows.numpyro as pfj
import pyroflows.pyro as pf

LEVELS = 5


def _perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def _data(shape, batch=(6,), seed=0) -> torch.Tensor:
    return torch.randint(0, LEVELS, (*batch, *shape), generator=torch.Generator().manual_seed(seed))


@pytest.mark.usefixtures("float64", "seeded")
@pytest.mark.parametrize("batch", [(), (3,), (2, 3)], ids=str)
@pytest.mark.parametrize("shape", [(4,), (1, 2, 2)], ids=str)
def test_noise_stays_in_its_cell_and_starts_uniform(shape, batch):
    dequantizer = pf.VariationalDequantizer(shape, LEVELS, transforms=2, hidden=(8,))
    x = _data(shape, batch)
    y, log_q = dequantizer(x)
    assert y.shape == x.shape and log_q.shape == batch
    torch.testing.assert_close(log_q, torch.zeros(batch), atol=1e-12, rtol=0)  # uniform
    _perturb(dequantizer)
    y, log_q = dequantizer(x)
    assert ((y * LEVELS).floor() == x).all() and (log_q.abs() > 1e-3).all()
    # the one-pass log q equals the noise flow's own density of the drawn noise
    u = y * LEVELS - x
    expected = dequantizer.flow(dequantizer.context(x.double())).log_prob(u)
    torch.testing.assert_close(log_q, expected, atol=1e-8, rtol=0)
    # and both outputs carry gradients to every parameter of q
    (y.sum() + log_q.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dequantizer.parameters())


@pytest.mark.usefixtures("float64", "seeded")
def test_bits_per_dim_of_a_known_distribution_is_exact():
    # p(y) = 1 on the unit cube: the sigmoid of a standard logistic, a flow with Logit last
    dims = 6
    logistic = dist.Logistic(torch.zeros(dims), torch.ones(dims)).to_event(1)
    uniform = pf.Flow([pf.Logit(dims, alpha=0.0)], logistic)
    y = pf.dequantize(_data((dims,), (50,)), LEVELS)
    bits = pf.bits_per_dim(uniform().log_prob(y), dims, LEVELS)
    torch.testing.assert_close(bits, torch.full((50,), math.log2(LEVELS)))
    # a variational q only adds E[log q] >= 0: the bound stays above the exact log2(levels)
    dequantizer = pf.VariationalDequantizer(dims, LEVELS, transforms=2, hidden=(8,))
    _perturb(dequantizer, scale=0.5)
    y, log_q = dequantizer(_data((dims,), (2000,)))
    bits = pf.bits_per_dim(uniform().log_prob(y), dims, LEVELS, log_q=log_q)
    assert bits.mean() > math.log2(LEVELS) + 3 * bits.std() / math.sqrt(bits.numel())


@pytest.mark.usefixtures("float64", "seeded")
def test_bits_per_dim_accounts_for_a_logit_outside_the_flow():
    dims = 4
    inner = pf.NSF(dims, transforms=2, hidden=(8,), bins=4)
    _perturb(inner)
    with_logit = pf.Flow([*inner.transforms, pf.Logit(dims, alpha=0.01)])
    y = pf.dequantize(_data((dims,), (20,)), LEVELS)
    z, log_det = pf.Logit(dims, alpha=0.01).inverse_and_log_det(y)
    inside = pf.bits_per_dim(with_logit().log_prob(y), dims, LEVELS)
    outside = pf.bits_per_dim(inner().log_prob(z), dims, LEVELS, log_det=log_det)
    torch.testing.assert_close(inside, outside)
    assert (pf.bits_per_dim(inner().log_prob(z), dims, LEVELS) - inside).abs().min() > 0.1


def test_dequantizer_errors():
    dequantizer = pf.VariationalDequantizer((1, 2, 2), LEVELS, transforms=1, hidden=(4,))
    with pytest.raises(ValueError, match=r"x must hold values in 0..4 \(levels=5\)"):
        dequantizer(torch.full((2, 1, 2, 2), 5))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 1, 2, 2\)"):
        dequantizer(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="levels must be"):
        pf.VariationalDequantizer(4, 1)
    with pytest.raises(ValueError, match=r"flow must give events of shape \(4,\) with a context"):
        pf.VariationalDequantizer(4, LEVELS, flow=pf.MAF(4))
    with pytest.raises(ValueError, match=r"flow must give events"):
        pfj.VariationalDequantizer(4, LEVELS, flow=pfj.MAF(4, key=jax.random.key(0)))


@pytest.mark.usefixtures("float64", "jax_x64")
def test_dequantizer_parity_and_jax_contract():
    shape = (1, 2, 2)
    torch_q = pf.VariationalDequantizer(shape, LEVELS, transforms=2, hidden=(8,))
    _perturb(torch_q)
    jax_q = pfj.VariationalDequantizer(
        shape, LEVELS, transforms=2, hidden=(8,), key=jax.random.key(0)
    )
    jax_q = eqx.tree_at(
        lambda d: d.flow, jax_q, pfj.set_params(jax_q.flow, pf.get_params(torch_q.flow))
    )
    x = _data(shape, (7,))
    y, log_q = eqx.filter_jit(jax_q)(jax.random.key(1), jnp.asarray(x.numpy()))
    assert y.dtype == jnp.float64 and y.shape == x.shape and log_q.shape == (7,)
    assert bool(jnp.all(jnp.floor(y * LEVELS) == jnp.asarray(x.numpy())))
    # the same noise scored in both backends
    u = np.asarray(y) * LEVELS - x.numpy()
    context = torch_q.context(x.double())
    torch_log_q = torch_q.flow(context).log_prob(torch.as_tensor(u)).detach().numpy()
    np.testing.assert_allclose(np.asarray(log_q), torch_log_q, atol=1e-10, rtol=0)
    # gradients reach q through y and log q
    grads = eqx.filter_grad(lambda d: jnp.sum(d(jax.random.key(1), jnp.asarray(x.numpy()))[1]))(
        jax_q
    )
    leaves = jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_inexact_array))
    assert leaves and all(np.isfinite(np.asarray(g)).all() for g in leaves)
    bits = pfj.bits_per_dim(jnp.zeros(7), 4, LEVELS, log_q=log_q, log_det=jnp.ones(7))
    np.testing.assert_allclose(
        np.asarray(bits), (math.log(LEVELS) * 4 - 1 + np.asarray(log_q)) / (4 * math.log(2))
    )


def test_dequantizer_survives_an_infinite_logistic_draw(monkeypatch):
    # Pyro's Logistic returns logit(0) = -inf when its uniform draw is exactly 0 (once in
    # 2^24 float32 draws: it ended an MNIST run with NaN weights); the noise is kept finite
    draw = dist.Logistic.rsample

    def with_infinities(self, sample_shape=torch.Size()):
        out = draw(self, sample_shape).clone()
        out[..., 0], out[..., 1] = -math.inf, math.inf
        return out

    monkeypatch.setattr(dist.Logistic, "rsample", with_infinities)
    dequantizer = pf.VariationalDequantizer(4, LEVELS, transforms=2, hidden=(8,))
    _perturb(dequantizer)
    x = _data((4,), (5,))
    y, log_q = dequantizer(x)
    assert torch.isfinite(y).all() and torch.isfinite(log_q).all()
    assert ((y * LEVELS).floor() == x).all()
    (y.sum() + log_q.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in dequantizer.parameters())
