"""Regression tests for the defects that fuzzing and the PPLs' contracts found (JAX backend).

Each test names the defect it keeps fixed; the torch twins are in test_regressions_pyro.py.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
import torch
from numpyro.contrib.control_flow import scan
from numpyro.infer.util import log_density

import pyroflows.numpyro as pfj
import pyroflows.pyro as pf

KEY = jax.random.key(0)
SHARP = [[3.4558, 8.2162, 3.3044, -13.0316, 9.0536]]  # see test_regressions_pyro.py


def _perturb(module, scale: float = 0.3, seed: int = 0):
    leaves, treedef = jax.tree_util.tree_flatten(module)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [
        leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype)
        if eqx.is_inexact_array(leaf)
        else leaf
        for leaf, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, leaves)


# ------------------------------------------------------------- 2. spline inverse in float32


def test_spline_inverse_keeps_float32_precision_at_a_sharp_knot(jax_x64):
    spline = pfj.SplineTransformer(bins=2, bound=5.0)
    params = np.array(SHARP)
    for y in (5.0, 4.9999):
        x32, ld32 = spline.inverse(jnp.array([y], jnp.float32), jnp.array(params, jnp.float32))
        x64, ld64 = spline.inverse(jnp.array([y], jnp.float64), jnp.array(params, jnp.float64))
        assert abs(float(x32[0]) - float(x64[0])) < 1e-5  # before: 5.00023 at y = 5
        assert abs(float(ld32[0]) - float(ld64[0])) < 2e-3  # before: -0.562 against 0


def test_spline_inverse_is_finite_at_the_knots_and_the_ends():
    spline = pfj.SplineTransformer(bins=8, bound=5.0)
    params = 3 * jax.random.normal(KEY, (500, 1, 23))
    knots = spline._bin_table(params, jnp.zeros((500, 1)), 1)[..., 1]
    for y in (knots, jnp.full((500, 1), 5.0), jnp.full((500, 1), -5.0), knots + 1e-6):
        x, log_det = spline.inverse(y, params)
        assert np.isfinite(x).all() and np.isfinite(log_det).all()


def test_spline_inverse_discriminant_does_not_cancel_in_a_steep_end_bin(jax_x64):
    spline = pfj.SplineTransformer(bins=2, bound=5.0)
    params = np.broadcast_to(np.array([[5.0, -5.0, -5.0, 5.0, 0.0]]), (3, 5))
    y = np.array([5.0, 5.0 - 1e-3, 4.99])
    p32 = jnp.array(params, jnp.float32)
    grad = jax.grad(lambda v: spline.inverse(v, p32)[0].sum())(jnp.array(y, jnp.float32))
    assert abs(float(grad[0]) - 1.0) < 1e-5  # before: 0.94 (the slope at the bound is 1)
    _, ld32 = spline.inverse(jnp.array(y, jnp.float32), p32)
    _, ld64 = spline.inverse(jnp.array(y, jnp.float64), jnp.array(params, jnp.float64))
    assert np.abs(np.asarray(ld32, np.float64) - np.asarray(ld64)).max() < 1e-4


def test_spline_float64_agrees_across_backends_with_large_derivative_parameters(jax_x64):
    # torch's softplus returned its input above 20 (2e-9 off): the JAX float64 fuzz found
    # the backends 1e-12 apart; the torch spline now takes softplus to full precision
    params = np.zeros((1, 11))
    params[0, 5], params[0, 9] = 49.5, 22.77  # a dominant bin and a derivative above 20
    for name in ("forward", "inverse"):
        for bound in (2.5, 5.0):
            value = np.array([-1.0, 0.3, 1.7])
            expanded = np.broadcast_to(params, (3, 11))
            ours = getattr(pf.SplineTransformer(bins=4, bound=bound), name)(
                torch.tensor(value), torch.tensor(expanded)
            )
            theirs = getattr(pfj.SplineTransformer(bins=4, bound=bound), name)(
                jnp.asarray(value), jnp.asarray(expanded)
            )
            for a, b in zip(ours, theirs, strict=True):
                np.testing.assert_allclose(a.numpy(), np.asarray(b), rtol=0, atol=1e-14)


# ------------------------------------------------------------- 3. spline gradients


def test_spline_gradients_are_finite_in_the_tails_and_one_at_the_bound():
    spline = pfj.SplineTransformer(bins=8, bound=5.0)
    params = 3e6 * jax.random.normal(KEY, (50, 4, 23))
    x = jnp.broadcast_to(jnp.array([5e4, -5e4, 1e3, -7.0]), (50, 4))
    for step in (spline.forward, spline.inverse):

        def total(v, p, step=step):
            out, log_det = step(v, p)
            return out.sum() + log_det.sum()

        gx, gp = jax.jit(jax.grad(total, argnums=(0, 1)))(x, params)  # before: NaN in rows
        np.testing.assert_array_equal(gx, np.ones(gx.shape))
        np.testing.assert_array_equal(gp, np.zeros(gp.shape))
    params = 0.5 * jax.random.normal(KEY, (2, 23))
    for step in (spline.forward, spline.inverse):
        g = jax.grad(lambda v, step=step: step(v, params)[0].sum())(jnp.array([5.0, -5.0]))
        np.testing.assert_allclose(g, [1.0, 1.0], atol=1e-4)  # before: 0.5 (jnp.clip's tie)


def test_fit_on_unstandardised_data_keeps_finite_parameters():
    data = 1e3 + 300 * np.random.default_rng(0).normal(size=(256, 3))
    flow = _perturb(pfj.NSF(3, transforms=1, hidden=(8,), key=KEY), scale=1.0)
    flow, history = pfj.fit(flow, data, epochs=2, batch_size=128, progress=False)
    params = pfj.get_params(flow)
    assert all(np.isfinite(v).all() for v in params.values())
    assert all(np.isfinite(history["train"]))


# ------------------------------------------------------------- 4. empty batches


@pytest.mark.parametrize("recipe", ["MAF", "IAF", "NSF", "RealNVP", "NICE"])
def test_empty_batches(recipe):
    flow = getattr(pfj, recipe)(3, transforms=2, hidden=(8,), key=KEY)
    empty = jnp.zeros((0, 3))
    assert flow().log_prob(empty).shape == (0,)  # before: ZeroDivisionError
    assert flow().sample(KEY, (0,)).shape == (0, 3)
    y, log_det = flow.layers[0].forward_and_log_det(empty)
    assert y.shape == (0, 3) and log_det.shape == (0,)


def test_an_empty_coupling_batch():
    y, log_det = pfj.Coupling(3, key=KEY).forward_and_log_det(jnp.zeros((0, 3)))
    assert y.shape == (0, 3) and log_det.shape == (0,)


# ------------------------------------------------------------- 6. numpyro's scan


def test_a_flow_is_a_likelihood_and_a_prior_inside_scan():
    flow = _perturb(pfj.MAF(2, transforms=2, hidden=(8,), key=KEY))
    ys = jax.random.normal(KEY, (5, 2))

    def likelihood(ys):
        def step(carry, y):
            numpyro.sample("y", flow(), obs=y)
            return carry, None

        scan(step, None, ys)

    total, _ = log_density(likelihood, (ys,), {}, {})
    np.testing.assert_allclose(total, flow().log_prob(ys).sum(), rtol=1e-5)

    def prior():
        def step(carry, _):
            return carry, numpyro.sample("x", flow())

        scan(step, None, None, length=4)

    trace = numpyro.handlers.trace(numpyro.handlers.seed(prior, 1)).get_trace()
    site = trace["x"]
    assert site["value"].shape == (4, 2) and site["fn"].batch_shape == (4,)
    np.testing.assert_allclose(
        site["fn"].log_prob(site["value"]), flow().log_prob(site["value"]), rtol=1e-5
    )
    assert site["fn"].sample(KEY, (3,)).shape == (3, 4, 2)


# ------------------------------------------------------------- 7. support and shapes


def test_a_flow_ending_in_logit_has_its_interval_as_support():
    flow = _perturb(pfj.Flow([pfj.MaskedAutoregressive(2, hidden=(8,), key=KEY), pfj.Logit(2)]))
    d = flow()
    assert bool(d.support(jnp.array([0.3, 0.9]))) and not bool(d.support(jnp.array([0.3, 1.5])))
    with pytest.warns(UserWarning, match="Out-of-support"):  # NumPyro's validation
        lp = d.log_prob(jnp.array([[0.3, 1.5], [-0.2, 0.5], [0.3, 0.4]]))
    assert np.isneginf(lp[:2]).all() and np.isfinite(lp[2])
    np.testing.assert_allclose(lp[2], d.log_prob(jnp.array([0.3, 0.4])), rtol=1e-6)
    jitted = jax.jit(lambda v: flow().log_prob(v))(jnp.array([[0.3, 1.5]]))
    assert np.isneginf(jitted).all()


def test_expand_follows_the_broadcasting_rules():
    d = pfj.MAF(2, transforms=1, hidden=(4,), key=KEY)()
    assert d.expand((2, 1)).expand((3, 2, 4)).batch_shape == (3, 2, 4)
    with pytest.raises(ValueError):
        d.expand((2, 1)).expand((4, 3))


# ------------------------------------------------------------- 9. NumPyro's transform contract


def test_transforms_of_one_bijection_compare_equal():
    layer = _perturb(pfj.MaskedAutoregressive(3, hidden=(8,), key=KEY))
    other = _perturb(pfj.MaskedAutoregressive(3, hidden=(8,), key=KEY), seed=1)
    assert layer.transform() == layer.transform()
    assert jax.jit(lambda b: b.transform())(layer) == layer.transform()
    assert layer.transform() != other.transform()
    assert hash(layer.transform()) == hash(layer.transform())
    # inside vmap (traced arrays) the comparison is a traced boolean, as NumPyro's own
    same = jax.vmap(lambda b, _: b.transform().eq(b.transform()), in_axes=(None, 0))
    assert np.asarray(same(layer, jnp.arange(2))).all()
    traced = jax.jit(lambda a, b: a.transform().eq(b.transform()))
    assert bool(traced(layer, layer)) and not bool(traced(layer, other))
    conditional = pfj.MaskedAutoregressive(3, context=1, hidden=(4,), key=KEY)
    assert conditional.transform(jnp.ones(1)) != conditional.transform(jnp.zeros(1))


# ------------------------------------------------------------- 11. argument and input checks


def test_numpy_integers_are_sizes():
    layer = pfj.MaskedAutoregressive(np.int64(3), np.int64(1), hidden=(np.int64(4),), key=KEY)
    assert layer.features == 3 and type(layer.features) is int
    assert pfj.SplineTransformer(bins=np.int64(4)).bins == 4
    flow = pfj.MAF(np.int64(3), transforms=np.int64(2), hidden=(4,), key=KEY)
    assert len(flow.layers) == 2


def test_big_draws_go_in_chunks(monkeypatch):
    import pyroflows.numpyro.distributions as module

    flow = _perturb(pfj.MAF(3, transforms=2, hidden=(8,), key=KEY))
    whole, [[z, log_det]] = flow().sample_with_intermediates(KEY, (50, 2))
    monkeypatch.setattr(module, "SAMPLE_CHUNK", 8)  # 4 rows of (2, 3) per chunk
    chunked, [[z2, log_det2]] = flow().sample_with_intermediates(KEY, (50, 2))
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_det2, log_det, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(z2, z)
    chunked_program = str(jax.make_jaxpr(lambda k: flow().sample(k, (50, 2)))(KEY))
    monkeypatch.setattr(module, "SAMPLE_CHUNK", 2**16)
    whole_program = str(jax.make_jaxpr(lambda k: flow().sample(k, (50, 2)))(KEY))
    assert chunked_program.count("scan") > whole_program.count("scan")  # lax.map's loop


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: pfj.SplineTransformer(bound=float("inf")), "bound must be a finite number > 0"),
        (lambda: pfj.MAF(3, hidden=64, key=KEY), r"hidden must be .* such as \(64,\)"),
        (lambda: pfj.Logit(2, alpha=-0.1), r"alpha must be a number in \[0.0, 0.5\)"),
    ],
)
def test_bad_constructor_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_get_params_of_a_bare_bijection_matches_torch():
    layer = pfj.MaskedAutoregressive(3, context=2, hidden=(4,), key=KEY)
    names = sorted(pfj.get_params(layer))
    assert names and names == sorted(pf.get_params(pf.MaskedAutoregressive(3, 2, hidden=(4,))))
    params = {k: v + 1.0 for k, v in pfj.get_params(layer).items()}
    moved = pfj.set_params(layer, params)
    for name, value in pfj.get_params(moved).items():
        np.testing.assert_array_equal(value, params[name])


def test_sample_without_a_key_says_so():
    d = pfj.MAF(3, transforms=1, hidden=(4,), key=KEY)()
    with pytest.raises(TypeError, match=r"needs a JAX random key.*d\.sample\(jax\.random\.key"):
        d.sample((100,))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda b, c: b.forward_and_log_det(jnp.zeros((2, 4))), r"x must have shape \(\.\.\., 3\)"),
        (lambda b, c: c.inverse_and_log_det(jnp.zeros((2, 3))), "context is required"),
        (lambda b, c: b.forward_and_log_det(jnp.zeros(3), jnp.zeros(2)), "built without"),
        (lambda b, c: pfj.Scale(3).forward_and_log_det(jnp.zeros(3), jnp.zeros(1)), "without"),
        (lambda b, c: pfj.ActNorm(3).inverse_and_log_det(jnp.zeros(3), jnp.zeros(1)), "without"),
        (lambda b, c: c.forward_and_log_det(jnp.zeros(3), jnp.zeros(3)), r"\(\.\.\., 2\)"),
        (
            lambda b, c: c.forward_and_log_det(jnp.zeros(3), jnp.array([0.0, jnp.nan])),
            "context holds 1 non-finite",
        ),
        (
            lambda b, c: pfj.MAF(3, context=2, key=KEY)(jnp.array([jnp.inf, 0.0])),
            "non-finite",
        ),
        (
            lambda b, c: c.forward_and_log_det(jnp.zeros((4, 3)), jnp.zeros((3, 2))),
            "do not broadcast",
        ),
        (lambda b, c: b.forward_and_log_det(jnp.zeros((2, 3), jnp.int32)), "floating point"),
    ],
    ids=[
        "event-size",
        "missing-context",
        "unexpected-context",
        "scale-context",
        "actnorm-context",
        "context-size",
        "nan-context",
        "inf-context-flow",
        "batch-mismatch",
        "integer-input",
    ],
)
def test_direct_calls_check_their_arguments(call, message):
    plain = pfj.MaskedAutoregressive(3, hidden=(4,), key=KEY)
    conditional = pfj.MaskedAutoregressive(3, context=2, hidden=(4,), key=KEY)
    with pytest.raises(ValueError, match=message):
        call(plain, conditional)
