"""`pyroflows.pyro.diagnostics`: k-hat separates good from bad guides; ArviZ export."""

from __future__ import annotations

import arviz
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from pyroflows.pyro.diagnostics import importance_log_weights, psis_diagnostic, to_inference_data


@pytest.fixture(autouse=True)
def _seed():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def model():
    pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))


def guide_with_scale(scale):
    def guide():
        pyro.sample("x", dist.Normal(torch.full((2,), 0.2), scale).to_event(1))

    return guide


def test_log_weights_are_the_exact_density_ratio():
    weights = importance_log_weights(model, guide_with_scale(1.0), num_samples=50)
    assert weights.shape == (50,)
    assert np.isfinite(weights).all() and np.std(weights) > 0
    same = importance_log_weights(model, model, num_samples=5)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


def test_k_hat_separates_a_good_guide_from_a_bad_one():
    good = psis_diagnostic(model, guide_with_scale(1.2), num_samples=2000)
    bad = psis_diagnostic(model, guide_with_scale(0.3), num_samples=2000)
    assert good < 0.5
    assert bad > 0.7


def test_psis_rejects_non_finite_weights_and_tiny_samples():
    def outside():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    def half_normal_model():
        pyro.sample("x", dist.HalfNormal(1.0))

    with pytest.raises(ValueError, match="not finite|support"):
        psis_diagnostic(half_normal_model, outside, num_samples=50)
    with pytest.raises(ValueError, match="num_samples"):
        psis_diagnostic(model, model, num_samples=1)


def test_to_inference_data_summarises_guide_draws():
    idata = to_inference_data(guide_with_scale(1.0), num_samples=500, num_chains=2)
    assert idata.posterior["x"].shape == (2, 500, 2)
    summary = arviz.summary(idata)
    np.testing.assert_allclose(summary["mean"].to_numpy(), 0.2, atol=0.15)
    np.testing.assert_allclose(summary["sd"].to_numpy(), 1.0, atol=0.1)


def test_vectorized_draws_are_those_of_one_plated_guide_run():
    """The probe run that finds the site shapes does not advance the RNG: after the same
    seed, ``vectorize=True`` gives exactly the draws of the user's own plated run."""

    def guide():
        scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
        pyro.sample("x", dist.Normal(torch.zeros(2), scale.unsqueeze(-1)).to_event(1))

    pyro.set_rng_seed(3)
    idata = to_inference_data(guide, num_samples=100, vectorize=True)
    pyro.set_rng_seed(3)
    with pyro.plate("draws", 100, dim=-1):
        trace = pyro.poutine.trace(guide).get_trace()
    for name in ("scale", "x"):
        np.testing.assert_array_equal(idata.posterior[name].values[0], trace.nodes[name]["value"])


def regression_model(x, y):
    """A conjugate model with a data plate: y_i ~ Normal(w x_i, 0.5), w ~ Normal(0, 1)."""
    w = pyro.sample("w", dist.Normal(x.new_tensor(0.0), 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(w * x, 0.5), obs=y)  # w: () or (draws, 1)


def regression_posterior_and_evidence(x, y):
    precision = 1.0 + (x**2).sum() / 0.25
    mean = (x * y).sum() / 0.25 / precision
    evidence = dist.MultivariateNormal(
        torch.zeros(len(x)), torch.eye(len(x)) * 0.25 + x[:, None] * x[None, :]
    ).log_prob(y)
    return mean, precision.rsqrt(), float(evidence)


@pytest.mark.parametrize("vectorize", [False, True])
def test_the_exact_posterior_gets_constant_weights_equal_to_the_log_evidence(vectorize):
    x = torch.linspace(-1.0, 1.0, 5)
    y = torch.tensor([-0.9, -0.2, 0.1, 0.8, 1.3])
    mean, sd, log_evidence = regression_posterior_and_evidence(x, y)

    def exact_guide(x, y):
        pyro.sample("w", dist.Normal(mean, sd))

    weights = importance_log_weights(
        regression_model, exact_guide, x, y, num_samples=300, vectorize=vectorize
    )
    assert weights.shape == (300,)
    np.testing.assert_allclose(weights, log_evidence, atol=1e-4)


def test_vectorized_weights_match_the_looped_ones_in_distribution():
    x = torch.linspace(-1.0, 1.0, 5)
    y = torch.tensor([-0.9, -0.2, 0.1, 0.8, 1.3])
    mean, sd, _ = regression_posterior_and_evidence(x, y)

    def rough_guide(x, y):  # too wide and off-centre: weights vary
        pyro.sample("w", dist.Normal(mean + 0.3 * sd, 2.0 * sd))

    looped = importance_log_weights(regression_model, rough_guide, x, y, num_samples=2000)
    fast = importance_log_weights(
        regression_model, rough_guide, x, y, num_samples=2000, vectorize=True
    )
    assert np.std(fast) > 0.1
    np.testing.assert_allclose(fast.mean(), looped.mean(), atol=0.05)
    np.testing.assert_allclose(fast.std(), looped.std(), rtol=0.15)
    k_fast = psis_diagnostic(regression_model, rough_guide, x, y, num_samples=4000, vectorize=True)
    assert k_fast < 0.5  # a wider guide has bounded weights


def test_vectorize_explains_a_model_that_does_not_broadcast():
    def scalar_model():
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(w.reshape(()), 1.0), obs=torch.tensor(0.3))

    with pytest.raises((ValueError, RuntimeError), match="vectorize|shape"):
        importance_log_weights(scalar_model, scalar_model, num_samples=10, vectorize=True)


def test_vectorized_inference_data_matches_the_looped_draws():
    idata = to_inference_data(guide_with_scale(1.0), num_samples=2000, num_chains=2, vectorize=True)
    assert idata.posterior["x"].shape == (2, 2000, 2)
    x = idata.posterior["x"].to_numpy().reshape(-1, 2)
    np.testing.assert_allclose(x.mean(0), 0.2, atol=0.05)
    np.testing.assert_allclose(x.std(0), 1.0, atol=0.05)
    assert np.std(x[:2000, 0] - x[2000:, 0]) > 1.0  # the chains are different draws


def test_vectorized_inference_data_of_an_autoguide_with_a_local_plate():
    from pyro.infer.autoguide import AutoNormal

    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0), 1.0))
        with pyro.plate("groups", 3):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            pyro.sample("y", dist.Normal(theta, 1.0), obs=y)

    y = torch.tensor([0.5, -1.0, 2.0])
    guide = AutoNormal(model)
    guide(y)
    looped = to_inference_data(guide, y, num_samples=1500)
    fast = to_inference_data(guide, y, num_samples=1500, vectorize=True)
    assert set(fast.posterior.data_vars) == set(looped.posterior.data_vars) == {"mu", "theta"}
    for name, shape in (("mu", (1, 1500)), ("theta", (1, 1500, 3))):
        assert fast.posterior[name].shape == shape == looped.posterior[name].shape
        a, b = looped.posterior[name].to_numpy(), fast.posterior[name].to_numpy()
        np.testing.assert_allclose(a.mean(1), b.mean(1), atol=0.08)
        np.testing.assert_allclose(a.std(1), b.std(1), rtol=0.1)
