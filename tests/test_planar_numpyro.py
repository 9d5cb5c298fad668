"""Planar, radial and Sylvester layers, their recipes and amortized posteriors (JAX).

As ``test_planar_pyro.py``: gradients through the inverses (reverse and forward mode), the
non-convergence error (eager and under ``jit``), and the guides. The invariant and parity
suites cover round trips, log-dets and the torch <-> JAX agreement.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import SVI, Trace_ELBO
from test_regressions_numpyro import _perturb

import pyroflows.numpyro as pfj

pytestmark = pytest.mark.usefixtures("jax_x64")


def _layer(name: str, context: int = 2):
    key = jax.random.key(0)
    make = {
        "planar": lambda: pfj.PlanarLayer(3, context, (8,), key=key),
        "radial": lambda: pfj.RadialLayer(3, context, (8,), key=key),
        "sylvester-householder": lambda: pfj.SylvesterLayer(
            3, context, (8,), kind="householder", reflections=2, key=key
        ),
    }[name]
    return _perturb(make(), scale=0.8, seed=3)


@pytest.mark.parametrize("name", ["planar", "sylvester-householder"])
def test_gradients_through_the_inverse_match_finite_differences(name):
    """Reverse- and forward-mode derivatives of the solve, along a random direction of the
    parameters, the data and the context, against a central difference."""
    layer = _layer(name)
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    y = jax.random.normal(jax.random.key(1), (4, 3))
    c = jax.random.normal(jax.random.key(2), (4, 2))
    primals = (params, y, c)
    leaves, treedef = jax.tree_util.tree_flatten(primals)
    keys = jax.random.split(jax.random.key(5), len(leaves))
    direction = jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    )

    @jax.jit
    def loss(params, y, c):
        z, log_det = eqx.combine(params, static).forward_and_log_det(y, c)  # the solve
        return jnp.sum(jnp.sin(z)) + jnp.sum(log_det)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*primals)
    reverse = sum(
        jnp.sum(g * d)
        for g, d in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(direction),
                        strict=True)
    )  # fmt: skip
    forward = jax.jit(lambda p, d: jax.jvp(loss, p, d)[1])(primals, direction)
    eps = 1e-6

    def shifted(sign):
        return jax.tree_util.tree_map(lambda x, d: x + sign * eps * d, primals, direction)

    central = (loss(*shifted(1)) - loss(*shifted(-1))) / (2 * eps)
    np.testing.assert_allclose(reverse, central, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(forward, central, rtol=1e-5, atol=1e-6)


def test_an_unreachable_tolerance_raises_eagerly_and_under_jit():
    layer = _perturb(pfj.PlanarLayer(3, max_iter=1, key=jax.random.key(0)), scale=0.8, seed=3)
    y = 3 * jax.random.normal(jax.random.key(1), (20, 3))
    with pytest.raises(pfj.ConvergenceError, match=r"did not converge for \d+ of 20 rows"):
        layer.forward_and_log_det(y)
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(eqx.filter_jit(lambda t, v: t.forward_and_log_det(v))(layer, y))


def test_amortized_posteriors_sample_and_score_in_one_pass():
    posterior = pfj.AmortizedFlow(
        3, 4, "sylvester", transforms=2, hidden=(8,), key=jax.random.key(0)
    )
    posterior = _perturb(posterior, scale=0.3, seed=2)
    loc = jax.random.normal(jax.random.key(1), (5, 3))
    scale = 0.5 + jax.random.uniform(jax.random.key(2), (5, 3))
    h = jax.random.normal(jax.random.key(3), (5, 4))

    @eqx.filter_jit
    def scores(posterior):
        q = posterior(loc, scale, h)
        z, intermediates = q.sample_with_intermediates(jax.random.key(4))
        return q.log_prob(z, intermediates), q.log_prob(z)  # from the draw, through the solves

    cached, fresh = scores(posterior)
    np.testing.assert_allclose(cached, fresh, atol=1e-8)


@pytest.mark.parametrize("flow", ["sylvester", "residual"])
def test_autoflow_trains_with_the_residual_family(flow):
    y = jnp.array([1.0, 2.0, 1.5, 0.5])

    def model():
        mu = numpyro.sample("mu", dist.Normal(jnp.zeros(2), 2.0).to_event(1))
        with numpyro.plate("n", 4):
            numpyro.sample("y", dist.Normal(mu.sum(), 1.0), obs=y)

    guide = pfj.AutoFlow(model, flow=flow, transforms=2, hidden=(16,))
    svi = SVI(model, guide, numpyro.optim.Adam(0.01), Trace_ELBO())
    result = svi.run(jax.random.key(0), 300, progress_bar=False)
    assert np.isfinite(result.losses).all()
    draws = guide.sample_posterior(jax.random.key(1), result.params, sample_shape=(2000,))
    assert abs(float(draws["mu"].sum(-1).mean()) - 40 / 33) < 0.15
