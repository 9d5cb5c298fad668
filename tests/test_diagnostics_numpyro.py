"""`pyroflows.numpyro.diagnostics`: k-hat separates good from bad guides; ArviZ export."""

from __future__ import annotations

import arviz
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from pyroflows.numpyro.diagnostics import importance_log_weights, psis_diagnostic, to_inference_data


def model():
    numpyro.sample("x", dist.Normal(jnp.zeros(2), 1.0).to_event(1))


def guide_with_scale(scale):
    def guide():
        numpyro.sample("x", dist.Normal(jnp.full((2,), 0.2), scale).to_event(1))

    return guide


def test_log_weights_are_the_exact_density_ratio():
    weights = importance_log_weights(model, guide_with_scale(1.0), params={}, num_samples=50)
    assert weights.shape == (50,)
    assert np.isfinite(weights).all() and np.std(weights) > 0
    same = importance_log_weights(model, model, params={}, num_samples=5)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_k_hat_separates_a_good_guide_from_a_bad_one():
    good = psis_diagnostic(model, guide_with_scale(1.2), params={}, num_samples=2000)
    bad = psis_diagnostic(model, guide_with_scale(0.3), params={}, num_samples=2000)
    assert good < 0.5
    assert bad > 0.7


def test_psis_rejects_non_finite_weights_and_tiny_samples():
    def outside():
        numpyro.sample("x", dist.Normal(0.0, 1.0))

    def half_normal_model():
        numpyro.sample("x", dist.HalfNormal(1.0))

    with pytest.raises(ValueError, match="not finite"):
        psis_diagnostic(half_normal_model, outside, params={}, num_samples=50)
    with pytest.raises(ValueError, match="num_samples"):
        psis_diagnostic(model, model, params={}, num_samples=1)


def test_to_inference_data_summarises_guide_draws():
    idata = to_inference_data(
        guide_with_scale(1.0), params={}, key=jax.random.key(1), num_samples=500, num_chains=2
    )
    assert idata.posterior["x"].shape == (2, 500, 2)
    summary = arviz.summary(idata)
    np.testing.assert_allclose(summary["mean"].to_numpy(), 0.2, atol=0.15)
    np.testing.assert_allclose(summary["sd"].to_numpy(), 1.0, atol=0.1)


def test_autoflow_guide_on_a_gaussian_model_has_a_small_k_hat():
    from numpyro.infer import SVI, Trace_ELBO

    from pyroflows.numpyro import AutoFlow

    def correlated():
        numpyro.sample(
            "z", dist.MultivariateNormal(jnp.zeros(2), jnp.array([[1.0, 0.9], [0.9, 1.0]]))
        )

    guide = AutoFlow(correlated, transforms=1)
    svi = SVI(correlated, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    params = svi.run(jax.random.key(0), 50, progress_bar=False).params
    k = psis_diagnostic(correlated, guide, params=params, num_samples=1000)
    assert k < 0.5
    idata = to_inference_data(guide, params=params, num_samples=200)
    assert set(idata.posterior.data_vars) == {"z"}
