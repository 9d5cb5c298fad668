"""The continuous family (JAX): `Continuous` and `FFJORD` beyond the invariant suite.

The twin of ``test_continuous_pyro.py``, plus what only JAX has: ``tsit5``, the key of the
Hutchinson probes (`with_key`), ``jit``, and the two differentiation modes (direct and
checkpointed) agreeing to rounding.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_regressions_numpyro import _perturb

import pyroflows.numpyro as pfj
from pyroflows._continuous import STAGES

pytestmark = pytest.mark.usefixtures("jax_x64")

TIGHT = {"solver": "dopri5", "atol": 1e-10, "rtol": 1e-10}


def moved(module, scale: float = 0.4, seed: int = 0):
    """``module`` with every inexact array moved by N(0, scale^2) noise."""
    return _perturb(module, scale, seed)


def points(*shape: int, seed: int = 1):
    return jax.random.normal(jax.random.key(100 + seed), shape, jnp.float64)


def continuous(*args, key=0, **kwargs):
    return pfj.Continuous(*args, key=jax.random.key(key), **kwargs)


def test_exact_log_det_is_the_log_det_of_the_solution_jacobian():
    cnf = moved(continuous(3, 2, (8,), solver="tsit5", atol=1e-10, rtol=1e-10))
    x, c = points(4, 3), points(4, 2, seed=2)
    y, log_det = cnf.forward_and_log_det(x, c)
    jac = jax.vmap(jax.jacrev(lambda v, ci: cnf.forward_and_log_det(v[None], ci[None])[0][0]))(x, c)
    np.testing.assert_allclose(np.linalg.slogdet(np.asarray(jac))[1], log_det, atol=1e-7)
    x_back, inverse_log_det = cnf.inverse_and_log_det(y, c)
    np.testing.assert_allclose(x_back, x, atol=1e-7)
    np.testing.assert_allclose(inverse_log_det, -log_det, atol=1e-6)
    assert np.abs(log_det).max() > 1e-2  # the moved field changes volume


@pytest.mark.parametrize("probe", ["rademacher"])  # torch's test has both
def test_hutchinson_mean_matches_the_exact_trace(probe):
    exact = moved(continuous(3, hidden=(8,), solver="rk4", steps=8))
    noisy = continuous(3, hidden=(8,), trace="hutchinson", probe=probe, solver="rk4", steps=8)
    noisy = eqx.tree_at(lambda m: m.field, noisy, exact.field)
    x = jnp.broadcast_to(points(1, 3), (4000, 3))
    target = exact.forward_and_log_det(x[:1])[1]
    y, estimates = noisy.forward_and_log_det(x)
    np.testing.assert_allclose(y, jnp.broadcast_to(exact.forward_and_log_det(x[:1])[0], y.shape))
    error = float(estimates.std()) / 4000**0.5
    assert float(estimates.std()) > 1e-3
    assert abs(float(estimates.mean() - target[0])) < 4 * error
    # the probes come from the key: the same key draws the same, with_key new ones
    again = noisy.forward_and_log_det(x[:50])[1]
    np.testing.assert_allclose(again, estimates[:50], atol=1e-12)
    fresh = pfj.with_key(noisy, jax.random.key(9)).forward_and_log_det(x[:50])[1]
    assert np.abs(fresh - again).max() > 1e-3


def test_sample_with_intermediates_scores_as_the_inverse_solve():
    flow = moved(pfj.FFJORD(2, transforms=2, hidden=(8,), **TIGHT, key=jax.random.key(0)))
    d = flow()
    x, intermediates = d.sample_with_intermediates(jax.random.key(1), (6,))
    cached = d.log_prob(x, intermediates)
    fresh = d.log_prob(x)
    np.testing.assert_allclose(cached, fresh, atol=1e-6)
    assert np.abs(cached - d.base_dist.log_prob(x)).max() > 1e-2


def test_checkpointed_and_direct_gradients_agree():
    direct = moved(continuous(3, 2, (8,), solver="rk4", steps=8))
    checkpointed = eqx.tree_at(
        lambda m: m.field,
        continuous(3, 2, (8,), solver="rk4", steps=8, adjoint=True),
        direct.field,
    )
    x, c = points(5, 3), points(5, 2, seed=2)

    @eqx.filter_grad
    def grad(args):
        module, c = args
        y, log_det = module.inverse_and_log_det(x, c)
        return jnp.sum(y**2) + jnp.sum(log_det)

    (a, ca), (b, cb) = grad((direct, c)), grad((checkpointed, c))
    for u, v in zip(jax.tree_util.tree_leaves(a.field), jax.tree_util.tree_leaves(b.field)):
        np.testing.assert_allclose(u, v, atol=1e-9 * (1 + np.abs(v).max()))
    np.testing.assert_allclose(ca, cb, atol=1e-9)
    assert max(np.abs(g).max() for g in jax.tree_util.tree_leaves(a.field)) > 1e-3


def test_regularizers_are_the_path_integrals():
    cnf = moved(continuous(2, hidden=(8,), solver="rk4", steps=64))
    twin = eqx.tree_at(lambda m: m.field, continuous(2, hidden=(8,), **TIGHT), cnf.field)
    x = points(4, 2)
    fixed, adaptive = cnf.solve(x, regularize=True), twin.solve(x, regularize=True)
    assert int(fixed.nfe) == STAGES["rk4"] * 64 and int(adaptive.nfe) > 0  # counted
    np.testing.assert_allclose(fixed.kinetic, adaptive.kinetic, atol=1e-6)
    np.testing.assert_allclose(fixed.jacobian, adaptive.jacobian, atol=1e-6)
    assert fixed.kinetic.min() > 1e-2 and fixed.jacobian.min() > 1e-2
    back = cnf.solve(fixed.value, reverse=True, regularize=True)
    np.testing.assert_allclose(back.kinetic, fixed.kinetic, atol=1e-5)


def test_jit_and_the_error_under_jit():
    cnf = moved(continuous(2, 1, (8,), solver="rk4", steps=4))
    x, c = points(3, 2), points(3, 1, seed=2)
    jitted = eqx.filter_jit(lambda m, x, c: m.forward_and_log_det(x, c))(cnf, x, c)
    for a, b in zip(jitted, cnf.forward_and_log_det(x, c), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
    y, log_det = cnf.forward_and_log_det(jnp.zeros((0, 2)), jnp.zeros((0, 1)))
    assert y.shape == (0, 2) and log_det.shape == (0,)
    stiff = moved(continuous(2, hidden=(8,), atol=1e-12, rtol=1e-12, max_steps=3))
    with pytest.raises(pfj.ODESolveError, match="solver='dopri5' failed.*raise max_steps"):
        stiff.forward_and_log_det(x)
    with pytest.raises(Exception, match="solver='dopri5' failed"):
        jax.block_until_ready(eqx.filter_jit(lambda m, x: m.forward_and_log_det(x))(stiff, x))


def test_option_errors():
    with pytest.raises(ValueError, match="fixed-step solver: give steps"):
        continuous(2, solver="rk4")
    with pytest.raises(ValueError, match="steps is for the fixed-step solvers"):
        continuous(2, steps=10)
    with pytest.raises(ValueError, match="probe must be one of"):
        continuous(2, trace="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="needs a random key"):
        pfj.FFJORD(2)


# --------------------------------------------------------------------------- flow matching


class GaussianPathField(pfj.Continuous):
    """The exact marginal velocity of the straight paths from N(0, I) to N(m, s^2 I)."""

    m: float
    s: float

    def __init__(self, m: float, s: float) -> None:
        super().__init__(2, hidden=(4,), key=jax.random.key(0))
        self.m, self.s = m, s

    def velocity(self, z, t, context=None):
        t = jnp.broadcast_to(jnp.asarray(t, z.dtype), z.shape[:-1])[..., None]
        variance = (1 - t) ** 2 + t**2 * self.s**2
        return self.m + (t * self.s**2 - (1 - t)) / variance * (z - t * self.m)


def test_flow_matching_loss_is_minimised_by_the_true_field():
    m, s, n = 1.5, 0.5, 200_000
    data = m + s * points(n, 2, seed=5)
    losses = {
        shift: float(
            pfj.flow_matching_loss(
                pfj.Flow([GaussianPathField(m + shift, s)]), data, key=jax.random.key(3)
            )
        )
        for shift in (0.0, 0.1, -0.1)
    }
    t = (np.arange(20000) + 0.5) / 20000
    variance = (1 - t) ** 2 + t**2 * s**2
    expected = 2 * float(np.mean(1 + s**2 - (t * s**2 - (1 - t)) ** 2 / variance))
    assert abs(losses[0.0] - expected) < 0.02 * expected
    assert losses[0.0] < losses[0.1] and losses[0.0] < losses[-0.1]


def test_fit_by_flow_matching_and_by_likelihood():
    data = jnp.array([1.0, -0.5]) + 0.5 * points(600, 2, seed=6)
    held_out = jnp.array([1.0, -0.5]) + 0.5 * points(200, 2, seed=7)
    results = {}
    for objective, extra in (
        ("flow_matching", {"coupling": "ot"}),
        ("likelihood", {"kinetic": 0.1, "jacobian": 0.1}),
    ):
        flow = pfj.FFJORD(2, hidden=(16,), solver="rk4", steps=6, key=jax.random.key(0))
        before = float(flow().log_prob(held_out).mean())
        flow, history = pfj.fit(
            flow, data, epochs=10, batch_size=100, lr=1e-2, objective=objective,
            patience=None, progress=False, **extra,
        )  # fmt: skip
        assert len(history["train"]) == len(history["validation"]) == 10
        assert history["train"][-1] < history["train"][0]
        assert ("nfe" in history) == (objective == "likelihood")
        if objective == "likelihood":
            assert history["nfe"] == [4 * 6] * 10
        results[objective] = float(flow().log_prob(held_out).mean())
        assert results[objective] > before + 0.3
    assert min(results.values()) > -1.7  # the exact density scores -1.16


# --------------------------------------------------------------------------- AutoFlow


def test_autoflow_ffjord_trains():
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import SVI, Trace_ELBO

    y = jnp.array([1.0, 2.0, 1.5, 0.5])

    def model():
        mu = numpyro.sample("mu", dist.Normal(jnp.zeros(2), 2.0).to_event(1))
        with numpyro.plate("n", 4):
            numpyro.sample("y", dist.Normal(mu.sum(), 1.0), obs=y)

    guide = pfj.AutoFlow(model, flow="ffjord", hidden=(8,), solver="rk4", steps=3)
    svi = SVI(model, guide, numpyro.optim.Adam(0.02), Trace_ELBO())
    result = svi.run(jax.random.key(0), 200, progress_bar=False)
    assert np.isfinite(result.losses).all()
    draws = guide.sample_posterior(jax.random.key(1), result.params, sample_shape=(2000,))
    assert abs(float(draws["mu"].sum(-1).mean()) - 40 / 33) < 0.15


def test_ffjord_is_a_likelihood_and_a_prior_in_a_numpyro_model():
    import numpyro
    from numpyro.infer.util import log_density

    flow = moved(pfj.FFJORD(2, 1, hidden=(8,), solver="rk4", steps=4, key=jax.random.key(0)))
    data, context = points(6, 2), points(6, 1, seed=3)

    def model():
        z = numpyro.sample("z", flow(jnp.zeros(1)))  # a prior
        with numpyro.plate("rows", 6):
            numpyro.sample("x", flow(context + z[:1]), obs=data)  # a likelihood

    z = jnp.array([0.3, -0.2])
    total, _ = log_density(model, (), {}, {"z": z})
    expected = flow(jnp.zeros(1)).log_prob(z) + flow(context + z[:1]).log_prob(data).sum()
    np.testing.assert_allclose(total, expected, atol=1e-10)
    loss, grads = eqx.filter_value_and_grad(
        lambda f: pfj.flow_matching_loss(f, data, context, key=jax.random.key(1))
    )(flow)
    assert np.isfinite(loss)
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
