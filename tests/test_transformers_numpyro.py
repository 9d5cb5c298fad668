"""The mixture-of-logistics transformer in JAX: torch parity of values and gradients, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import pyroflows.numpyro as pfj
import pyroflows.pyro as pf

pytestmark = pytest.mark.usefixtures("jax_x64")


def _inputs(components=3, shape=(6, 2), scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    x = 3.0 * rng.standard_normal(shape)
    params = scale * rng.standard_normal((*shape, 3 * components + 2))
    return x, params


def test_mixture_matches_torch_both_ways_with_gradients():
    x, params = _inputs()
    jt = pfj.LogisticMixtureTransformer(3, bound=2.0)
    tt = pf.LogisticMixtureTransformer(3, bound=2.0)

    def jax_loss(x, params):
        y, ld = jt.inverse(x, params)  # the explicit direction
        x_back, ld_back = jt.forward(y + 0.5, params)
        return jnp.sum(jnp.sin(y) + ld + jnp.cos(x_back) + ld_back), (y, ld, x_back, ld_back)

    (loss, values), grads = jax.value_and_grad(jax_loss, argnums=(0, 1), has_aux=True)(
        jnp.asarray(x), jnp.asarray(params)
    )
    xt = torch.tensor(x, requires_grad=True)
    pt = torch.tensor(params, requires_grad=True)
    y, ld = tt.inverse(xt, pt)
    x_back, ld_back = tt.forward(y + 0.5, pt)
    loss_t = (torch.sin(y) + ld + torch.cos(x_back) + ld_back).sum()
    grads_t = torch.autograd.grad(loss_t, (xt, pt))
    for a, b in zip(values, (y, ld, x_back, ld_back), strict=True):
        np.testing.assert_allclose(np.asarray(a), b.detach().numpy(), atol=1e-10, rtol=0)
    for a, b in zip(grads, grads_t, strict=True):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), atol=1e-8, rtol=1e-8)
    # and the solve really inverts
    y_j, _ = jt.inverse(jnp.asarray(x), jnp.asarray(params))
    x_j, _ = jax.jit(jt.forward)(y_j, jnp.asarray(params))
    np.testing.assert_allclose(np.asarray(x_j), x, atol=1e-10)


def test_mixture_solve_raises_eagerly_and_under_jit():
    x, params = _inputs(components=4, shape=(5, 3), scale=2.0)
    t = pfj.LogisticMixtureTransformer(4, max_iter=2)
    z, _ = t.inverse(jnp.asarray(x), jnp.asarray(params))
    with pytest.raises(pfj.ConvergenceError, match=r"did not converge for \d+ of 15 elements"):
        t.forward(z, jnp.asarray(params))
    with pytest.raises(Exception, match="did not converge for some elements"):
        jax.block_until_ready(jax.jit(t.forward)(z, jnp.asarray(params)))


def test_mixture_rejects_bad_arguments():
    bad = ({"components": 0}, {"bound": -1.0}, {"linear": 1.0}, {"atol": 0.0}, {"max_iter": 0})
    for kwargs in bad:
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            pfj.LogisticMixtureTransformer(**kwargs)
