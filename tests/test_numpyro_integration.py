"""Flows inside NumPyro programs: jit/grad/vmap, eqx_module, SVI, NUTS, Predictive, bases."""

from __future__ import annotations

import math

import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
eqx = pytest.importorskip("equinox")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro import handlers  # noqa: E402
from numpyro.contrib.module import eqx_module  # noqa: E402
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO  # noqa: E402

import pyroflows.numpyro as pfj  # noqa: E402

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def x64():
    """Enable float64 in JAX for one test, restoring the previous setting."""
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@eqx.filter_jit
def perturb(flow, scale: float = 0.3, seed: int = 1):
    """Move every parameter of ``flow.transforms`` away from the near-identity init."""
    params, static = eqx.partition(flow.transforms, eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [
        leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype)
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    transforms = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), static)
    return eqx.tree_at(lambda f: f.transforms, flow, transforms)


@eqx.filter_jit
def log_prob(flow, x, context=None):
    """``flow(context).log_prob(x)``, jitted (eager JAX compiles every primitive one by one,
    which on a small CPU costs seconds per new flow)."""
    return flow(context).log_prob(x)


@eqx.filter_jit
def sample(flow, key, n, context=None):
    """``flow(context).sample(key, (n,))``, jitted."""
    return flow(context).sample(key, (n,))


@eqx.filter_jit
def by_hand(flow, base, x, context=None):
    """base.log_prob(z) + log_det, running the bijections' inverses one by one."""
    total = jnp.zeros(x.shape[:-1], x.dtype)
    z = x
    for t in reversed(flow.transforms):
        z, log_det = t.inverse_and_log_det(z, context if t.context_features else None)
        total = total + log_det
    return base.log_prob(z) + total


@pytest.fixture
def count_sequential(monkeypatch):
    """Count (trace-time) calls of ``MaskedAutoregressive._sequential``."""
    counter = {"n": 0}
    original = pfj.MaskedAutoregressive._sequential

    def wrapper(self, *args, **kwargs):
        counter["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pfj.MaskedAutoregressive, "_sequential", wrapper)
    return counter


def empty_guide(*args, **kwargs):
    pass


def key(i: int):
    return jax.random.key(i)


# --------------------------------------------------------------------------- jit / grad / vmap


def test_log_prob_under_jit_grad_and_vmap(x64):
    flow = perturb(pfj.NSF(3, transforms=1, hidden=(8,), bins=4, mode="coupling", key=key(0)))
    x = 1.5 * jax.random.normal(key(1), (6, 3))
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    picks = [(0, 0), (3, 2), (5, 1)]
    eps = 1e-6

    def loss(p):
        return -eqx.combine(p, static)().log_prob(x).mean()

    @jax.jit
    def check(params, x):
        fl = eqx.combine(params, static)
        lp = fl().log_prob(x)
        hand = by_hand(fl, fl.base_distribution(), x)
        vmapped = jax.vmap(lambda v: fl().log_prob(v))(x)
        grad_x = jax.grad(lambda v: fl().log_prob(v).sum())(x)
        steps = jnp.stack([jnp.zeros_like(x).at[i, j].set(eps) for i, j in picks])
        fd_x = (fl().log_prob(x + steps) - fl().log_prob(x - steps)).sum(-1) / (2 * eps)
        grads = jax.grad(loss)(params)
        direction = jax.tree_util.tree_map(jnp.sign, grads)

        def along(t):
            return loss(jax.tree_util.tree_map(lambda p, d: p + t * d, params, direction))

        fd_params = (along(eps) - along(-eps)) / (2 * eps)
        return lp, hand, vmapped, grad_x, fd_x, grads, fd_params

    lp, hand, vmapped, grad_x, fd_x, grads, fd_params = check(params, x)
    assert lp.shape == (6,) and lp.dtype == jnp.float64
    np.testing.assert_allclose(hand, lp, atol=1e-12, rtol=0)
    np.testing.assert_allclose(vmapped, lp, atol=1e-12, rtol=0)
    # gradient w.r.t. the data, against central differences
    np.testing.assert_allclose(fd_x, [grad_x[i, j] for i, j in picks], atol=1e-6)
    # gradient w.r.t. the parameters: reaches every array, matches a directional difference
    leaves = jax.tree_util.tree_leaves(grads.transforms)
    assert len(leaves) == len(pfj.get_params(flow))
    assert all(float(jnp.abs(g).sum()) > 0 for g in leaves)
    expected = sum(float(jnp.abs(g).sum()) for g in jax.tree_util.tree_leaves(grads))
    assert float(fd_params) == pytest.approx(expected, rel=1e-5)


def test_vmap_over_an_ensemble_of_flows():
    keys = jax.random.split(key(0), 3)
    flows = eqx.filter_vmap(lambda k: pfj.MAF(2, transforms=1, hidden=(8,), key=k))(keys)
    flows = perturb(flows)
    x = jax.random.normal(key(1), (5, 2))
    lp = eqx.filter_jit(eqx.filter_vmap(lambda fl: fl().log_prob(x)))(flows)
    assert lp.shape == (3, 5)
    stacked = pfj.get_params(flows)
    single = pfj.MAF(2, transforms=1, hidden=(8,), key=keys[2])
    single = pfj.set_params(single, {k: v[2] for k, v in stacked.items()})
    np.testing.assert_allclose(lp[2], log_prob(single, x), atol=1e-5)
    assert float(jnp.abs(lp[0] - lp[1]).max()) > 1e-3  # the members differ


def test_sampling_under_jit_and_vmap_and_reparameterised_gradients():
    flow = perturb(pfj.IAF(2, transforms=1, hidden=(8,), key=key(0)))

    @eqx.filter_jit
    def draws(fl, k):
        d = fl()
        x = d.sample(k, (7,))
        by_key = jax.vmap(lambda kk: d.sample(kk))(jax.random.split(k, 4))
        y, lp = d.sample_and_log_prob(k, (5,))
        grads = eqx.filter_grad(lambda f: (f().rsample(k, (16,)) ** 2).sum())(fl)
        return x, by_key, lp, d.log_prob(y), grads

    x, by_key, lp, afresh, grads = draws(flow, key(3))
    assert x.shape == (7, 2)
    np.testing.assert_array_equal(x, draws(flow, key(3))[0])  # same key, same draw
    assert not np.allclose(x, draws(flow, key(4))[0])
    # vmap over keys: independent draws
    assert by_key.shape == (4, 2)
    assert len({tuple(np.round(np.asarray(r), 5)) for r in by_key}) == 4
    # sampling and scoring in one pass agrees with scoring the sample afresh
    np.testing.assert_allclose(lp, afresh, atol=1e-4)
    # rsample is differentiable w.r.t. the (zero-initialised) output layer of every layer
    for t in grads.transforms:
        assert float(jnp.abs(t.conditioner.layers[-1].weight).sum()) > 0


# --------------------------------------------------------------------------- eqx_module


def test_eqx_module_registers_the_flow_in_a_model_and_a_guide():
    flow = pfj.MAF(3, context=2, transforms=1, hidden=(8,), key=key(0))
    other = perturb(flow, seed=5)
    context = jax.random.normal(key(1), (4, 2))
    y = jax.random.normal(key(2), (4, 3))
    own = jax.tree_util.tree_leaves(eqx.filter(flow, eqx.is_inexact_array))
    assert len(own) == len(pfj.get_params(flow))

    def model(c, y):
        fl = eqx_module("flow", flow)
        with numpyro.plate("data", 4):
            numpyro.sample("y", fl(c), obs=y)

    def guide():
        fl = eqx_module("guide_flow", flow)
        numpyro.sample("z", fl(jnp.zeros(2)))

    trace = handlers.trace(handlers.seed(model, 0)).get_trace(context, y)
    assert trace["flow$params"]["type"] == "param"
    for a, b in zip(jax.tree_util.tree_leaves(trace["flow$params"]["value"]), own, strict=True):
        np.testing.assert_array_equal(a, b)

    @jax.jit
    def guide_sites():
        trace = handlers.trace(handlers.seed(guide, 0)).get_trace()
        return trace["guide_flow$params"]["value"], trace["z"]["value"]

    registered, z = guide_sites()
    assert z.shape == (3,)
    for a, b in zip(jax.tree_util.tree_leaves(registered), own, strict=True):
        np.testing.assert_array_equal(a, b)

    # the module the model uses is the one held in the param store
    swapped = {"flow$params": eqx.filter(other, eqx.is_inexact_array)}
    trace = handlers.trace(handlers.substitute(model, swapped)).get_trace(context, y)
    fn = trace["y"]["fn"]
    assert isinstance(fn, pfj.FlowDistribution) and fn.batch_shape == (4,)
    lp = jax.jit(lambda d: d.log_prob(y))(fn)
    np.testing.assert_allclose(lp, log_prob(other, y, context), atol=1e-5)
    assert not np.allclose(lp, log_prob(flow, y, context), atol=1e-3)


# --------------------------------------------------------------------------- IAF guide under SVI


def test_iaf_guide_recovers_the_conjugate_posterior(count_sequential):
    sigma, n = 0.5, 10
    x = jnp.array([1.0, -2.0]) + sigma * jax.random.normal(key(0), (n, 2))
    precision = 1 + n / sigma**2
    post_mean = np.asarray(x.sum(0) / sigma**2 / precision)
    post_sd = precision**-0.5
    iaf = pfj.IAF(2, transforms=2, hidden=(16,), key=key(1))

    def model(x):
        z = numpyro.sample("z", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        with numpyro.plate("obs", x.shape[0]):
            numpyro.sample("x", dist.Normal(z, sigma).to_event(1), obs=x)

    def guide(x):
        fl = eqx_module("guide_flow", iaf)
        numpyro.sample("z", fl())

    svi = SVI(model, guide, numpyro.optim.Adam(0.02), Trace_ELBO(num_particles=4))
    result = svi.run(key(2), 600, x, progress_bar=False)
    assert count_sequential["n"] == 0  # the ELBO never ran the IAF's sequential direction
    assert float(result.losses[-50:].mean()) < float(result.losses[:10].mean()) - 50

    _, static = eqx.partition(iaf, eqx.is_inexact_array)
    trained = eqx.combine(result.params["guide_flow$params"], static)
    samples = sample(trained, key(3), 4000)
    np.testing.assert_allclose(samples.mean(0), post_mean, atol=0.06)
    np.testing.assert_allclose(samples.std(0), post_sd, rtol=0.15)
    # the ELBO at the optimum is -log p(x): the ELBO is tight for the conjugate model
    cov = np.eye(n * 2) * sigma**2 + np.kron(np.ones((n, n)), np.eye(2))
    evidence = dist.MultivariateNormal(jnp.zeros(n * 2), jnp.asarray(cov))
    neg_log_evidence = -float(evidence.log_prob(x.reshape(-1)))
    elbo = Trace_ELBO(num_particles=300)
    loss = jax.jit(lambda p: elbo.loss(key(4), p, model, guide, x))(result.params)
    assert float(loss) == pytest.approx(neg_log_evidence, abs=0.5)
    assert count_sequential["n"] == 0


def test_guide_site_carries_intermediates_and_is_scored_without_the_inverse(count_sequential):
    prior = perturb(pfj.MAF(3, transforms=2, hidden=(8,), key=key(0)))
    iaf = perturb(pfj.IAF(3, transforms=2, hidden=(8,), key=key(1)), scale=0.2, seed=2)
    x = jax.random.normal(key(2), (5, 3))

    def model(x):
        z = numpyro.sample("z", prior())
        with numpyro.plate("obs", x.shape[0]):
            numpyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        fl = eqx_module("guide_flow", iaf)
        numpyro.sample("z", fl())

    @jax.jit
    def guide_site():
        site = handlers.trace(handlers.seed(guide, 7)).get_trace(x)["z"]
        assert isinstance(site["fn"], pfj.FlowDistribution)
        assert len(site["intermediates"]) == 1
        scored = site["fn"].log_prob(site["value"], site["intermediates"])
        return site["value"], site["intermediates"][0], scored

    value, (z0, log_det), scored = guide_site()
    assert z0.shape == (3,) and log_det.shape == ()
    assert float(jnp.abs(log_det)) > 1e-3  # a perturbed IAF is not volume preserving
    assert count_sequential["n"] == 0
    # the same number as scoring the value afresh, which does run the sequential inverse
    np.testing.assert_allclose(scored, log_prob(iaf, value), atol=1e-4)
    assert count_sequential["n"] > 0

    count_sequential["n"] = 0
    params = {"guide_flow$params": eqx.filter(iaf, eqx.is_inexact_array)}
    elbo = Trace_ELBO(num_particles=3)
    loss, grads = jax.jit(jax.value_and_grad(lambda p: elbo.loss(key(8), p, model, guide, x)))(
        params
    )
    assert math.isfinite(float(loss))
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree_util.tree_leaves(grads))
    # tracing the whole ELBO and its gradient (what jit compiled) never met the sequential
    # direction, while tracing the score of fresh data does (the counter works when tracing)
    assert count_sequential["n"] == 0
    jax.make_jaxpr(lambda v: iaf().log_prob(v))(x)
    assert count_sequential["n"] > 0


# --------------------------------------------------------------------------- flow as likelihood


def test_svi_with_a_flow_likelihood_improves_the_elbo():
    n = 400
    data = jnp.array([3.0, -1.0]) + jnp.array([2.0, 0.5]) * jax.random.normal(key(0), (n, 2))
    flow = pfj.MAF(2, transforms=1, hidden=(16,), key=key(1))

    def model(x):
        fl = eqx_module("flow", flow)
        with numpyro.plate("data", n):
            numpyro.sample("x", fl(), obs=x)

    svi = SVI(model, empty_guide, numpyro.optim.Adam(0.03), Trace_ELBO())
    result = svi.run(key(2), 300, data, progress_bar=False)
    _, static = eqx.partition(flow, eqx.is_inexact_array)
    trained = eqx.combine(result.params["flow$params"], static)
    ll_before = float(log_prob(flow, data).mean())
    ll_after = float(log_prob(trained, data).mean())
    # the SVI loss of an empty guide is the negative log-likelihood of the data
    final = jax.jit(lambda p: Trace_ELBO().loss(key(3), p, model, empty_guide, data))
    assert float(final(result.params)) == pytest.approx(-ll_after * n, rel=1e-4)
    assert float(result.losses[0]) == pytest.approx(-ll_before * n, rel=1e-4)
    gaussian = float(dist.Normal(data.mean(0), data.std(0)).log_prob(data).sum(-1).mean())
    assert ll_before < gaussian - 3
    assert ll_after > gaussian - 0.1
    samples = sample(trained, key(4), 4000)
    np.testing.assert_allclose(samples.mean(0), data.mean(0), atol=0.15)
    np.testing.assert_allclose(samples.std(0), data.std(0), rtol=0.1)


def test_conditional_flow_likelihood_in_a_plate():
    n = 300
    c = jax.random.uniform(key(0), (n, 1), minval=-2, maxval=2)
    y = jnp.concatenate([2 * c, -c], -1) + 0.3 * jax.random.normal(key(1), (n, 2))
    flow = pfj.MAF(2, context=1, transforms=1, hidden=(16,), key=key(2))

    def model(c, y):
        fl = eqx_module("flow", flow)
        with numpyro.plate("data", n):
            numpyro.sample("y", fl(c), obs=y)

    trace = handlers.trace(handlers.seed(model, 0)).get_trace(c, y)
    assert trace["y"]["fn"].batch_shape == (n,)
    svi = SVI(model, empty_guide, numpyro.optim.Adam(0.03), Trace_ELBO())
    result = svi.run(key(3), 250, c, y, progress_bar=False)
    assert float(result.losses[-1]) < float(result.losses[0]) - 1.0 * n
    _, static = eqx.partition(flow, eqx.is_inexact_array)
    trained = eqx.combine(result.params["flow$params"], static)
    contexts = jnp.array([[-1.0], [1.0]])
    samples = sample(trained, key(4), 2000, contexts)  # (2000, 2, 2): both contexts at once
    np.testing.assert_allclose(samples.mean(0), [[-2.0, 1.0], [2.0, -1.0]], atol=0.3)
    assert bool((samples.std(0) < 0.6).all())


# --------------------------------------------------------------------------- flow as prior


def test_flow_prior_under_nuts_matches_the_flows_own_samples():
    prior = perturb(pfj.MAF(2, transforms=1, hidden=(8,), key=key(0)), scale=0.3)

    def model():
        numpyro.sample("z", prior())

    mcmc = MCMC(NUTS(model), num_warmup=200, num_samples=1000, progress_bar=False)
    mcmc.run(key(1))
    z = np.asarray(mcmc.get_samples()["z"])
    assert z.shape == (1000, 2)
    reference = np.asarray(sample(prior, key(2), 20000))
    sd = reference.std(0)
    # the prior is not the standard normal (else the check below would be weak)
    assert float(np.abs(reference.mean(0)).max()) > 0.2 or float(np.abs(sd - 1).max()) > 0.2
    np.testing.assert_allclose(z.mean(0), reference.mean(0), atol=0.15 * sd.max())
    np.testing.assert_allclose(np.cov(z.T), np.cov(reference.T), atol=0.2 * sd.max() ** 2)


def test_predictive_with_a_flow_prior_and_an_iaf_guide():
    prior = perturb(pfj.MAF(2, transforms=1, hidden=(8,), key=key(0)))
    iaf = perturb(pfj.IAF(2, transforms=1, hidden=(8,), key=key(1)), scale=0.2)

    def model(x=None):
        z = numpyro.sample("z", prior())
        with numpyro.plate("obs", 3):
            return numpyro.sample("x", dist.Normal(z, 0.1).to_event(1), obs=x)

    def guide(x=None):
        fl = eqx_module("guide_flow", iaf)
        numpyro.sample("z", fl())

    draws = jax.jit(Predictive(model, num_samples=3000))(key(3))
    assert draws["z"].shape == (3000, 2) and draws["x"].shape == (3000, 3, 2)
    reference = sample(prior, key(4), 3000)
    np.testing.assert_allclose(draws["z"].mean(0), reference.mean(0), atol=0.1)
    np.testing.assert_allclose(draws["z"].std(0), reference.std(0), rtol=0.1)
    # x | z is N(z, 0.1): the prior predictive x sits on z
    assert float(jnp.abs(draws["x"] - draws["z"][:, None]).mean()) < 0.1

    params = {"guide_flow$params": eqx.filter(iaf, eqx.is_inexact_array)}
    predictive = Predictive(
        model, guide=guide, params=params, num_samples=3000, return_sites=["z", "x"]
    )
    posterior = jax.jit(predictive)(key(5))
    guide_reference = sample(iaf, key(6), 3000)
    np.testing.assert_allclose(posterior["z"].mean(0), guide_reference.mean(0), atol=0.1)
    np.testing.assert_allclose(posterior["z"].std(0), guide_reference.std(0), rtol=0.1)
    assert float(jnp.abs(posterior["z"].mean(0) - draws["z"].mean(0)).max()) > 0.1


# --------------------------------------------------------------------------- custom bases


def _laplace():
    return dist.Laplace(jnp.array([0.5, -0.5]), jnp.array([1.0, 2.0])).to_event(1)


def _student_t():
    return dist.StudentT(4.0, jnp.zeros(2), jnp.ones(2)).to_event(1)


def _logistic():
    return dist.Logistic(jnp.zeros(2), jnp.ones(2)).to_event(1)


def _mixture():
    locs = jnp.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]])
    scales = jnp.array([[0.5, 1.0], [1.0, 0.5], [0.7, 0.7]])
    weights = jnp.array([0.2, 0.5, 0.3])
    return dist.MixtureSameFamily(
        dist.Categorical(probs=weights), dist.Normal(locs, scales).to_event(1)
    )


BASES = {"laplace": _laplace, "student_t": _student_t, "logistic": _logistic, "mixture": _mixture}


@eqx.filter_jit
def _base_checks(flow, base, x, k):
    d = flow()
    samples, intermediates = d.sample_with_intermediates(k, (2000,))
    default = eqx.tree_at(lambda f: f.base, flow, None, is_leaf=lambda v: v is None)
    return (
        d.log_prob(x),
        by_hand(flow, base, x),
        default().log_prob(x),
        samples,
        intermediates[0][0],
        d.log_prob(samples, intermediates),
        d.log_prob(samples),
        base.sample(k, (2000,)),
    )


@pytest.mark.parametrize("name", sorted(BASES))
def test_custom_base_samples_and_scores(name):
    make = BASES[name]
    flow = perturb(pfj.RealNVP(2, transforms=1, hidden=(8,), base=make(), key=key(0)))
    x = 1.5 * jax.random.normal(key(1), (20, 2))
    lp, hand, standard, samples, z, scored, afresh, base_draws = _base_checks(
        flow, make(), x, key(2)
    )
    np.testing.assert_allclose(lp, hand, atol=1e-5, rtol=0)
    assert not np.allclose(standard, lp, atol=1e-2)  # not the standard-normal value
    # sampling: the one-pass score equals the fresh score; the base noise is the base's
    assert samples.shape == (2000, 2)
    assert bool(jnp.isfinite(scored).all())
    np.testing.assert_allclose(scored, afresh, atol=1e-3, rtol=1e-5)
    np.testing.assert_allclose(z, base_draws, atol=1e-6, rtol=1e-6)


def test_logistic_base_is_the_logistic_density(x64):
    flow = pfj.Flow([pfj.Scale(2)], base=_logistic())
    z = jnp.broadcast_to(jnp.linspace(-5.0, 5.0, 11)[:, None], (11, 2))
    closed_form = (-z - 2 * jax.nn.softplus(-z)).sum(-1)
    np.testing.assert_allclose(log_prob(flow, z), closed_form, atol=1e-12)


def test_the_base_is_held_fixed():
    flow = pfj.MAF(2, transforms=1, hidden=(8,), base=_laplace(), key=key(0))
    x = jax.random.normal(key(1), (8, 2))
    grads = eqx.filter_jit(eqx.filter_grad(lambda fl: fl().log_prob(x).sum()))(flow)
    assert float(jnp.abs(grads.base.base_dist.loc).sum()) == 0.0
    assert float(jnp.abs(grads.transforms[0].conditioner.layers[-1].bias).sum()) > 0
    assert not any(name.startswith("base") for name in pfj.get_params(flow))


# --------------------------------------------------------------------------- pytree


def test_flow_distribution_is_a_pytree():
    flow = perturb(pfj.MAF(2, context=3, transforms=2, hidden=(8,), key=key(0)))
    context = jax.random.normal(key(1), (4, 3))
    d = flow(context)
    assert isinstance(d, dist.TransformedDistribution)
    leaves, treedef = jax.tree_util.tree_flatten(d)
    assert leaves and all(isinstance(leaf, jax.Array | np.ndarray) for leaf in leaves)
    assert any(leaf is context for leaf in leaves)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(rebuilt) is pfj.FlowDistribution
    assert rebuilt.batch_shape == d.batch_shape == (4,)
    assert rebuilt.event_shape == d.event_shape == (2,)
    x = jax.random.normal(key(2), (5, 4, 2))
    score = jax.jit(lambda dd, v: dd.log_prob(v))
    expected = log_prob(flow, x, context)
    np.testing.assert_allclose(score(d, x), expected, atol=1e-6)
    np.testing.assert_allclose(score(rebuilt, x), expected, atol=1e-6)
    # a FlowDistribution made inside jit comes out of it
    made = jax.jit(lambda fl, c: fl(c))(flow, context)
    assert isinstance(made, pfj.FlowDistribution) and made.batch_shape == (4,)
    np.testing.assert_allclose(score(made, x), expected, atol=1e-6)
    # the leaves are the live arrays: swapping the context leaf swaps the context
    other = jax.random.normal(key(3), (4, 3))
    swapped = jax.tree_util.tree_unflatten(
        treedef, [other if leaf is context else leaf for leaf in leaves]
    )
    np.testing.assert_array_equal(swapped.context, other)
    np.testing.assert_allclose(score(swapped, x), log_prob(flow, x, other), atol=1e-6)
    assert not np.allclose(score(swapped, x), expected, atol=1e-3)


# --------------------------------------------------------------------------- conditional flows


def test_conditional_flow_context_broadcasting(x64):
    flow = perturb(pfj.MAF(2, context=3, transforms=1, hidden=(8,), key=key(0)))
    context = jax.random.normal(key(1), (4, 3))
    x = jax.random.normal(key(2), (6, 1, 2))
    assert flow(context).batch_shape == (4,)

    @jax.jit
    def scores(fl, x, context):
        return (
            fl(context).log_prob(x),
            jax.vmap(jax.vmap(lambda v, c: fl(c).log_prob(v), (None, 0)), (0, None))(
                x[:, 0], context
            ),
            fl(context[1]).log_prob(x[:, 0]),
            fl(context).log_prob(x[3, 0]),
            fl(context).sample(key(3), (5,)),
            fl(context[None]).sample(key(3), (2,)),
        )

    lp, singles, one_context, one_value, samples, samples_2 = scores(flow, x, context)
    assert lp.shape == (6, 4)
    np.testing.assert_allclose(singles, lp, atol=1e-10, rtol=0)
    # one context for a batch of values, and a batch of contexts for one value
    np.testing.assert_allclose(one_context, lp[:, 1], atol=1e-10)
    np.testing.assert_allclose(one_value, lp[3], atol=1e-10)
    assert samples.shape == (5, 4, 2)
    assert samples_2.shape == (2, 1, 4, 2)
    # the context changes the distribution
    assert float(jnp.abs(lp[:, 0] - lp[:, 1]).max()) > 1e-3
