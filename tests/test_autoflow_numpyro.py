"""`pyroflows.numpyro.AutoFlow`: exact posteriors recovered, every NumPyro autoguide feature.

The same conjugate, badly scaled Bayesian linear regression as the Pyro tests: Gaussian
posterior in closed form, standard deviations four orders of magnitude apart, intercept and
slope correlated at -0.96.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO
from numpyro.infer.initialization import init_to_value

import pyroflows.numpyro as pfj
from pyroflows.numpyro.autoregressive import MaskedAutoregressive
from pyroflows.numpyro.infer import AutoFlow, FixedAffine

PRIOR_SD = np.array([10.0, 100.0, 100.0])
NOISE = 0.5


def regression_data(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.stack([rng.normal(1000.0, 300.0, n), rng.normal(0.0, 0.01, n)], 1)
    y = 3.0 + 0.002 * x[:, 0] + 50.0 * x[:, 1] + rng.normal(0.0, NOISE, n)
    design = np.c_[np.ones(n), x]
    precision = design.T @ design / NOISE**2 + np.diag(PRIOR_SD**-2.0)
    cov = np.linalg.inv(precision)
    mean = cov @ (design.T @ y / NOISE**2)
    return (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)), mean, cov


def regression(x, y=None, subsample_size=None):
    a = numpyro.sample("a", dist.Normal(0.0, float(PRIOR_SD[0])))
    b = numpyro.sample("b", dist.Normal(jnp.zeros(2), float(PRIOR_SD[1])).to_event(1))
    with numpyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        obs = None if y is None else y[idx]
        numpyro.sample("y", dist.Normal(a + x[idx] @ b, NOISE), obs=obs)


def train(model, guide, *args, steps=300, lr=1e-2, decay=1.0, elbo=None, seed=0, **kwargs):
    schedule = optax.exponential_decay(lr, 1, decay)
    svi = SVI(model, guide, numpyro.optim.Adam(schedule), elbo or Trace_ELBO())
    result = svi.run(jax.random.key(seed), steps, *args, progress_bar=False, **kwargs)
    return result.params, np.asarray(result.losses)


def draws(guide, params, num_samples=20000):
    samples = guide.sample_posterior(jax.random.key(1), params, sample_shape=(num_samples,))
    return np.c_[np.asarray(samples["a"])[:, None], np.asarray(samples["b"])].astype(np.float64)


def assert_matches_gaussian(samples, mean, cov, mean_tol=0.1, sd_tol=0.1, corr_tol=0.08):
    sd = np.sqrt(np.diag(cov))
    mean_error = (samples.mean(0) - mean) / sd
    sd_ratio = samples.std(0) / sd
    assert np.abs(mean_error).max() < mean_tol, mean_error
    assert np.abs(sd_ratio - 1).max() < sd_tol, sd_ratio
    corr = np.corrcoef(samples.T)
    assert np.abs(corr - cov / np.outer(sd, sd)).max() < corr_tol, corr


@pytest.mark.parametrize("flow", ["iaf", "nsf"])
def test_badly_scaled_conjugate_regression_is_recovered_from_defaults(flow):
    (x, y), mean, cov = regression_data()
    sd = np.sqrt(np.diag(cov))
    assert sd.max() / sd.min() > 1e4  # the test is about a badly scaled posterior
    guide = AutoFlow(regression, flow=flow)
    # the warm start is close: a small, decaying learning rate and a few particles keep the
    # gradient noise from moving it (Adam random-walks the flow's many weights otherwise)
    elbo = Trace_ELBO(num_particles=8)
    params, losses = train(regression, guide, x, y, steps=300, lr=1e-3, decay=0.99, elbo=elbo)
    assert np.isfinite(losses).all()
    assert_matches_gaussian(draws(guide, params), mean, cov)


def test_warm_start_is_frozen_and_flow_parameters_train():
    (x, y), _, _ = regression_data()
    guide = AutoFlow(regression, transforms=1)
    params0, _ = train(regression, guide, x, y, steps=1)
    params1, _ = train(regression, guide, x, y, steps=30)
    flow0, flow1 = guide.flow(params0), guide.flow(params1)
    fixed0, fixed1 = flow0.layers[-1], flow1.layers[-1]
    assert isinstance(fixed1, FixedAffine)
    np.testing.assert_array_equal(fixed0.loc, fixed1.loc)
    np.testing.assert_array_equal(fixed0.scale_tril, fixed1.scale_tril)
    assert not np.array_equal(flow0.layers[-2].log_diagonal, flow1.layers[-2].log_diagonal)


def test_fixed_affine_round_trip_and_log_det(jax_x64):
    key1, key2, key3 = jax.random.split(jax.random.key(0), 3)
    tril = jnp.tril(jax.random.normal(key1, (3, 3))) + 3 * jnp.eye(3)
    layer = FixedAffine(jax.random.normal(key2, (3,)), tril)
    x = jax.random.normal(key3, (4, 2, 3))
    y, log_det = layer.forward_and_log_det(x)
    back, inv_log_det = layer.inverse_and_log_det(y)
    np.testing.assert_allclose(back, x, atol=1e-12)
    np.testing.assert_allclose(log_det, jnp.linalg.slogdet(tril)[1] * jnp.ones((4, 2)))
    np.testing.assert_allclose(inv_log_det, -log_det)
    jac = jax.jacfwd(lambda v: layer.forward_and_log_det(v)[0])(x[0, 0])
    np.testing.assert_allclose(jnp.linalg.slogdet(jac)[1], log_det[0, 0])


@pytest.mark.parametrize(
    "elbo",
    [Trace_ELBO(), TraceMeanField_ELBO(), Trace_ELBO(num_particles=8)],
    ids=["Trace_ELBO", "TraceMeanField_ELBO", "vectorized_particles"],
)
def test_elbos_train_the_guide(elbo):
    (x, y), _, _ = regression_data()
    guide = AutoFlow(regression, transforms=2, warmup="map")  # not Laplace: training matters
    _, losses = train(regression, guide, x, y, steps=300, lr=2e-2, elbo=elbo)
    assert np.isfinite(losses).all()
    assert losses[-50:].mean() < losses[:10].mean() - 50


def test_own_samples_are_scored_without_the_sequential_inverse(monkeypatch):
    (x, y), _, _ = regression_data()
    guide = AutoFlow(regression, flow="iaf", transforms=2)

    def refuse(self, *args, **kwargs):
        raise AssertionError("the sequential inverse ran")

    monkeypatch.setattr(MaskedAutoregressive, "_sequential", refuse)
    _, losses = train(regression, guide, x, y, steps=3)
    assert np.isfinite(losses).all()


def test_median_and_quantiles_match_the_exact_posterior():
    (x, y), mean, cov = regression_data()
    # the posterior is Gaussian: the Laplace warm start alone is exact, so the Monte Carlo
    # median and quantiles of the untrained guide must match the closed form
    guide = AutoFlow(regression, num_samples=4000)
    params, _ = train(regression, guide, x, y, steps=1, lr=1e-9)
    sd = np.sqrt(np.diag(cov))
    median = guide.median(params)
    assert set(median) == {"a", "b"}
    assert median["b"].shape == (2,)
    got = np.r_[np.asarray(median["a"]).reshape(1), np.asarray(median["b"])]
    assert np.abs((got - mean) / sd).max() < 0.1
    quantiles = guide.quantiles(params, [0.05, 0.95])
    assert quantiles["b"].shape == (2, 2)
    low = np.r_[quantiles["a"][0], quantiles["b"][0]]
    high = np.r_[quantiles["a"][1], quantiles["b"][1]]
    np.testing.assert_allclose((low - mean) / sd, -1.645, atol=0.1)
    np.testing.assert_allclose((high - mean) / sd, 1.645, atol=0.1)
    with pytest.raises(ValueError, match="quantiles"):
        guide.quantiles(params, [0.5, 1.5])


def test_predictive_draws_every_site_from_the_guide():
    (x, y), mean, _ = regression_data()
    guide = AutoFlow(regression, transforms=1)
    params, _ = train(regression, guide, x, y, steps=1, lr=1e-9)
    predictive = Predictive(
        regression, guide=guide, params=params, num_samples=30, return_sites=["a", "b", "y"]
    )
    samples = predictive(jax.random.key(2), x)
    assert samples["a"].shape == (30,)
    assert samples["b"].shape == (30, 2)
    assert samples["y"].shape == (30, 200)
    fitted = mean[0] + np.asarray(x, np.float64) @ mean[1:]
    assert np.abs(np.asarray(samples["y"]).mean(0) - fitted).max() < 4 * NOISE / np.sqrt(30)


def test_subsampled_plate():
    (x, y), mean, cov = regression_data()
    guide = AutoFlow(regression, transforms=2)
    params, losses = train(regression, guide, x, y, steps=300, lr=5e-3, subsample_size=50)
    assert np.isfinite(losses).all()
    samples = draws(guide, params)
    # minibatch gradients are noisy: only the location is checked, loosely
    assert np.abs((samples.mean(0) - mean) / np.sqrt(np.diag(cov))).max() < 1.0


def test_init_loc_fn_sets_the_start_without_warm_up():
    def model():
        numpyro.sample("x", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        numpyro.sample("s", dist.LogNormal(0.0, 1.0))

    start = {"x": jnp.array([1.0, -2.0]), "s": jnp.array(3.0)}
    guide = AutoFlow(model, warmup=None, init_loc_fn=init_to_value(values=start), init_scale=0.01)
    params, _ = train(model, guide, steps=1, lr=1e-9)
    median = guide.median(params)
    np.testing.assert_allclose(median["x"], start["x"], atol=0.05)
    np.testing.assert_allclose(median["s"], start["s"], atol=0.1)


def test_a_callable_flow_and_its_checks():
    def model():
        numpyro.sample("x", dist.Normal(jnp.zeros(3), 1.0).to_event(1))

    guide = AutoFlow(model, flow=lambda d, key: pfj.RealNVP(d, transforms=2, hidden=(8,), key=key))
    train(model, guide, steps=2)
    assert guide.latent_dim == 3
    bad = AutoFlow(model, flow=lambda d, key: pfj.MAF(d + 1, transforms=1, hidden=(4,), key=key))
    with pytest.raises(ValueError, match="features=3"):
        train(model, bad, steps=1)
    with pytest.raises(ValueError, match="flow must be one of"):
        AutoFlow(model, flow="glow2")
    with pytest.raises(ValueError, match="warmup"):
        AutoFlow(model, warmup="newton")
    with pytest.raises(ValueError, match="init_scale"):
        AutoFlow(model, init_scale=0.0)


def test_a_student_t_base_covers_a_heavy_tailed_posterior():
    """A Student-t(2) posterior puts 0.98% of each coordinate beyond |x| = 10. A guide on a
    normal base cannot reach that tail; on a Student-t(2) base it does (as in the Pyro test)."""

    def model():
        numpyro.sample("x", dist.StudentT(2.0, jnp.zeros(2), 1.0).to_event(1))

    tail = 1 - 10 / np.sqrt(102)  # P(|x| > 10) under Student-t(2)
    for base_df in (None, 2.0):
        guide = AutoFlow(model, transforms=2, hidden=(16,), base_df=base_df)
        params, _ = train(model, guide, steps=300)
        x = guide.sample_posterior(jax.random.key(2), params, sample_shape=(20000,))["x"]
        mass = float((jnp.abs(x) > 10).mean())
        if base_df is None:
            assert mass < 0.1 * tail, mass
        else:
            assert abs(mass / tail - 1) < 0.25, mass
    base = guide.flow(params).base_distribution()
    assert isinstance(base.base_dist, dist.StudentT) and base.event_shape == (2,)
    np.testing.assert_array_equal(base.base_dist.df, [2.0, 2.0])  # held fixed by training
    x = jnp.array([[0.3, -4.0]])
    expected = jax.scipy.stats.t.logpdf(x, 2.0).sum(-1)
    np.testing.assert_allclose(base.log_prob(x), expected, rtol=1e-6)
    assert isinstance(guide.get_base_dist().base_dist, dist.StudentT)  # for NeuTraReparam
    with pytest.raises(ValueError, match=r"base_df must be None .* got 0"):
        AutoFlow(model, base_df=0)


def test_a_laplace_base_covers_an_exponential_tail():
    """A Laplace(0, 1) posterior puts exp(-5) = 0.67% of each coordinate beyond |x| = 5. The
    best normal-base guide has a Gaussian tail there, about a hundredth of it; a guide on
    the unit-variance Laplace base reaches it (as in the Pyro test)."""

    def model():
        numpyro.sample("x", dist.Laplace(jnp.zeros(2), 1.0).to_event(1))

    tail = np.exp(-5.0)  # P(|x| > 5) under Laplace(0, 1)
    for base in ("normal", "laplace"):
        guide = AutoFlow(model, transforms=2, hidden=(16,), base=base)
        params, _ = train(model, guide, steps=300, elbo=Trace_ELBO(num_particles=8))
        x = guide.sample_posterior(jax.random.key(2), params, sample_shape=(20000,))["x"]
        mass = float((jnp.abs(x) > 5).mean())
        if base == "normal":
            assert mass < 0.1 * tail, mass
        else:
            assert abs(mass / tail - 1) < 0.25, mass
    base = guide.flow(params).base_distribution()
    assert isinstance(base.base_dist, dist.Laplace) and base.event_shape == (2,)
    x = jnp.array([[0.3, -4.0]])
    expected = jax.scipy.stats.laplace.logpdf(x, scale=np.sqrt(0.5)).sum(-1)
    np.testing.assert_allclose(base.log_prob(x), expected, rtol=1e-6)
    u = base.sample(jax.random.key(3), (50000,))
    np.testing.assert_allclose(u.var(0), 1.0, atol=0.05)  # unit variance, like the normal
    assert isinstance(guide.get_base_dist().base_dist, dist.Laplace)  # for NeuTraReparam
    with pytest.raises(ValueError, match=r"base must be one of .*, got 'cauchy'"):
        AutoFlow(model, base="cauchy")
    with pytest.raises(ValueError, match=r"base_df .* cannot go with base='laplace'"):
        AutoFlow(model, base="laplace", base_df=4.0)


def _gaussian_model():
    """A Gaussian posterior: N(0, 4 I) prior on x (3 dims), one unit-noise observation of
    x. The Laplace warm start is then the exact posterior."""
    x = numpyro.sample("x", dist.Normal(jnp.zeros(3), 2.0).to_event(1))
    numpyro.sample("y", dist.Normal(x, 1.0).to_event(1), obs=jnp.array([0.5, -1.0, 2.0]))


def _guide_and_params(stl, **kwargs):
    guide = AutoFlow(_gaussian_model, stl=stl, transforms=2, hidden=(16,), **kwargs)
    svi = SVI(_gaussian_model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    return guide, svi.get_params(svi.init(jax.random.key(0)))


@pytest.mark.parametrize(("flow", "base"), [("iaf", "normal"), ("nsf", "laplace")])
def test_stl_gives_the_value_and_the_path_gradient(flow, base, jax_x64):
    """``stl=True``: the same log q of the guide's draws, and as gradient exactly that of
    log q under frozen weights at x(weights), computed here by the flow's inverse."""
    guide, params = _guide_and_params(True, flow=flow, base=base)
    flow_ = guide.flow(params)
    named = pfj.get_params(flow_)
    rng = np.random.default_rng(0)
    moved = {
        k: v if k.endswith(("loc", "scale_tril")) else v + 0.1 * rng.standard_normal(v.shape)
        for k, v in named.items()
    }  # away from the identity; the frozen warm start stays as it is
    arrays, static = eqx.partition(pfj.set_params(flow_, moved), eqx.is_inexact_array)
    u = guide.get_base_dist().sample(jax.random.key(2), (6,))

    def stl_log_q(arrays):
        posterior = guide._stl_posterior(eqx.combine(arrays, static)())
        x, log_det = posterior.chain.forward_and_log_det(u)
        return posterior.log_prob(x, [[u, log_det]])

    def frozen_log_q(arrays):
        x, _ = eqx.combine(arrays, static)().chain.forward_and_log_det(u)
        return eqx.combine(jax.lax.stop_gradient(arrays), static)().log_prob(x)  # the inverse

    got_value, got = jax.jit(jax.value_and_grad(lambda a: stl_log_q(a).sum()))(arrays)
    want_value, want = jax.jit(jax.value_and_grad(lambda a: frozen_log_q(a).sum()))(arrays)
    np.testing.assert_allclose(got_value, want_value, rtol=1e-10)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-10)


def test_stl_gradient_vanishes_at_the_exact_posterior(jax_x64):
    """At the exact posterior (Laplace warm start of a Gaussian model, flow at the identity)
    every draw's path gradient is zero, while the usual estimator's is noise."""
    norms = {}
    for stl in (False, True):
        guide, params = _guide_and_params(stl)
        assert guide.warm_start_ == "laplace"
        loss = lambda p: Trace_ELBO(num_particles=4).loss(  # noqa: E731
            jax.random.key(1), p, _gaussian_model, guide
        )
        grads = jax.jit(jax.grad(loss))(params)
        norms[stl] = max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(grads))
    assert norms[True] < 1e-8, norms
    assert norms[False] > 1e-2, norms


def test_stl_trains_without_the_sequential_inverse(monkeypatch):
    (x, y), _, _ = regression_data()
    guide = AutoFlow(regression, flow="iaf", transforms=2, warmup="map", stl=True)

    def refuse(self, *args, **kwargs):
        raise AssertionError("the sequential inverse ran")

    monkeypatch.setattr(MaskedAutoregressive, "_sequential", refuse)
    _, losses = train(regression, guide, x, y, steps=300, lr=2e-2, elbo=Trace_ELBO(4))
    assert np.isfinite(losses).all()
    assert losses[-50:].mean() < losses[:10].mean() - 50
    with pytest.raises(TypeError, match=r"stl must be True or False, got 'yes'"):
        AutoFlow(regression, stl="yes")


def test_neutra_reparam_runs_nuts_on_the_warped_space():
    from numpyro.infer.reparam import NeuTraReparam

    def funnel():
        v = numpyro.sample("v", dist.Normal(0.0, 3.0))
        numpyro.sample("x", dist.Normal(jnp.zeros(2), jnp.exp(v / 2)).to_event(1))

    guide = AutoFlow(funnel, transforms=2)
    params, _ = train(funnel, guide, steps=200, lr=5e-3)
    neutra = NeuTraReparam(guide, params)
    mcmc = MCMC(NUTS(neutra.reparam(funnel)), num_warmup=50, num_samples=50, progress_bar=False)
    mcmc.run(jax.random.key(3))
    latent = mcmc.get_samples()["auto_shared_latent"]
    assert latent.shape == (50, 3)
    samples = neutra.transform_sample(latent)
    assert samples["v"].shape == (50,)
    assert samples["x"].shape == (50, 2)
    assert np.isfinite(samples["v"]).all() and np.isfinite(samples["x"]).all()


@pytest.mark.parametrize("warmup", ["laplace", None])
def test_first_call_under_jit_falls_back_to_the_init_start(warmup, recwarn):
    (x, y), _, _ = regression_data()
    guide = AutoFlow(regression, transforms=1, warmup=warmup, init_scale=0.5)
    svi = SVI(regression, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    state = jax.jit(svi.init)(jax.random.key(0), x, y)
    messages = [str(w.message) for w in recwarn]
    assert any("under a JAX transformation" in m for m in messages) == (warmup is not None)
    assert guide.warm_start_ == "init"
    fixed = guide.flow(svi.get_params(state)).layers[-1]
    np.testing.assert_allclose(fixed.scale_tril, 0.5 * np.eye(3))


# ---------------------------------------------------------------- multimodal (issue 20)
class _DualMoon(dist.Distribution):
    """NumPyro's NeuTra example potential; ``sample`` is a placeholder (zeros), as there."""

    support = dist.constraints.real_vector

    def __init__(self):
        super().__init__(event_shape=(2,))

    def sample(self, key, sample_shape=()):
        return jnp.zeros(sample_shape + self.event_shape)

    def log_prob(self, x):
        ring = 0.5 * ((jnp.linalg.norm(x, axis=-1) - 2.0) / 0.4) ** 2
        bumps = -0.5 * ((x[..., :1] + jnp.array([-2.0, 2.0])) / 0.6) ** 2
        return jax.scipy.special.logsumexp(bumps, axis=-1) - ring


def _dual_moon():
    numpyro.sample("x", _DualMoon())


def test_dual_moon_starts_finds_both_moons_and_keeps_them(monkeypatch):
    # a shorter transport fit than AutoFlow's (MODE_FIT), to keep the suite fast
    from pyroflows import _autoflow

    monkeypatch.setitem(_autoflow.MODE_FIT, "draws", 2048)
    monkeypatch.setitem(_autoflow.MODE_FIT, "epochs", 20)
    # --quick form of examples/neutra_dual_moon.py: the example's optimiser and loss
    guide = AutoFlow(_dual_moon, "nsf", transforms=2, hidden=(16, 16))
    svi = SVI(_dual_moon, guide, numpyro.optim.Adam(0.003), Trace_ELBO())
    result = svi.run(jax.random.key(1), 200, progress_bar=False)
    # the prior median (0, 0) has no gradient: AutoFlow starts where NumPyro's guides do
    assert guide.init_loc_fn is numpyro.infer.init_to_uniform
    assert guide.warm_start_ == "modes" and len(guide.modes_.weights) == 2
    np.testing.assert_allclose(np.sort(np.abs(guide.modes_.locs[:, 0])), [2.0, 2.0], atol=0.05)
    np.testing.assert_allclose(guide.modes_.weights, 0.5, atol=0.05)
    # the frozen transport, then the trainable layers, damped (MODE_STEP_SCALE)
    kinds = [type(layer).__name__ for layer in guide.flow(result.params).layers]
    assert kinds == ["Frozen", "FixedAffine", "Damped", "FixedAffine"]
    assert guide.flow(result.params).layers[2].scale == _autoflow.MODE_STEP_SCALE
    x = guide.sample_posterior(jax.random.key(2), result.params, sample_shape=(4000,))["x"]
    assert abs(float((x[:, 0] < 0).mean()) - 0.5) < 0.05  # both moons, one moon: 0 or 1
    loss = Trace_ELBO(num_particles=4000).loss(jax.random.key(3), result.params, _dual_moon, guide)
    assert loss < -1.6  # -log Z = -1.878; a guide on one moon stays above -1.19
    # NeuTra runs on the multimodal guide (its warped space is the flow's base)
    neutra = numpyro.infer.reparam.NeuTraReparam(guide, result.params)
    mcmc = MCMC(NUTS(neutra.reparam(_dual_moon)), num_warmup=50, num_samples=50,
                progress_bar=False)  # fmt: skip
    mcmc.run(jax.random.key(4))
    z = mcmc.get_samples()["auto_shared_latent"]
    assert np.isfinite(np.asarray(neutra.transform_sample(z)["x"])).all()


def test_an_explicit_invalid_init_loc_fn_raises_as_numpyro_does():
    guide = AutoFlow(_dual_moon, init_loc_fn=numpyro.infer.init_to_median)
    svi = SVI(_dual_moon, guide, numpyro.optim.Adam(0.003), Trace_ELBO())
    with pytest.raises(RuntimeError, match="valid initial parameters"):
        svi.init(jax.random.key(0))


def test_restarts_zero_keeps_the_single_mode_warm_start():
    guide = AutoFlow(
        _dual_moon,
        init_loc_fn=numpyro.infer.init_to_value(values={"x": jnp.array([1.5, 0.5])}),
        restarts=0,
    )
    svi = SVI(_dual_moon, guide, numpyro.optim.Adam(0.003), Trace_ELBO())
    svi.init(jax.random.key(0))
    assert guide.warm_start_ in ("laplace", "map") and guide.modes_ is None
