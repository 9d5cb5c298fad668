"""Conformance with the contracts of NumPyro and JAX, for the bijections and recipes (JAX).

Written from the contracts of NumPyro's ``Transform`` (domain and codomain, ``inv``,
``log_abs_det_jacobian``, ``call_with_intermediates``, ``forward_shape`` / ``inverse_shape``,
equality, pytree flattening) and ``Distribution`` (shapes, ``sample_with_intermediates``,
``expand``, ``support``, ``mask``, ``to_event``, plates and ``log_density``), and from JAX's
transformations (``jit``, ``vmap``, ``grad``) and pickling. Each case is moved off its
identity initialisation (tests/test_invariants_numpyro.py's ``perturb``); everything a case
computes is computed in one compiled call (compiling dominates), eager values are compared
against it where the contract is about eager use.
"""

from __future__ import annotations

import pickle

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import pytest
from numpyro.infer.util import log_density
from test_invariants_numpyro import ALL, build, context_points, data_points

import pyroflows.numpyro as pfj

pytestmark = pytest.mark.usefixtures("jax_x64")

KEY = jax.random.key(7)
CASES = [
    c
    for c in ALL
    if c.id
    in {
        "ActNorm",
        "Logit",
        "Chain-ctx2-logit",
        "Invert-MA-spline-maf-ctx2",
        "NICE-ctx2",
        "RealNVP",
        "NSF-autoregressive",
        "NSF-coupling-ctx2",
        "MAF-ctx2",
        "IAF",
    }
]


def _close(a, b, tol=1e-8):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol, rtol=tol)


@eqx.filter_jit
def _values(flow: pfj.Flow, y, c, c_one) -> dict:
    """Every number the contracts compare, for one flow (batch (4,), context (4, k))."""
    d = flow(c)
    t = pfj.Chain(flow.transforms).transform(c)
    x = t.inv(y)
    fy, intermediates = t.call_with_intermediates(x)
    sample, sample_intermediates = d.sample_with_intermediates(KEY, (3,))

    def total(f):
        return f(c).log_prob(y).sum()

    grads = eqx.filter_grad(total)(flow)
    return {
        "x": x,
        "y_again": t(x),
        "fy": fy,
        "ld": t.log_abs_det_jacobian(x, fy, intermediates),
        "ld_recomputed": t.log_abs_det_jacobian(x, fy),
        "inv_ld": t.inv.log_abs_det_jacobian(y, x),
        "log_prob": d.log_prob(y),
        "log_prob_vmap": jax.vmap(lambda v, cv: flow(cv).log_prob(v))(y, c)
        if c is not None
        else jax.vmap(d.log_prob)(y),
        "sample": sample,
        "score_cached": d.log_prob(sample, sample_intermediates),
        "score_fresh": d.log_prob(sample),
        "expanded": d.expand((2, 4)).log_prob(y),
        "masked": d.mask(False).log_prob(y),
        "independent": (d if c is not None else d.expand((4,))).to_event(1).log_prob(y),
        "one": flow(c_one).log_prob(y[0]),
        "grad_leaves": [g for g in jax.tree_util.tree_leaves(grads) if eqx.is_inexact_array(g)],
    }


def _inputs(case):
    y = jnp.asarray(data_points(case, (4,)))
    c = context_points(case, (4,))
    c_one = None if c is None else jnp.asarray(c[0])
    return y, None if c is None else jnp.asarray(c), c_one


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_numpyro_transform_and_distribution_contracts(case):
    flow = build(case)
    y, c, c_one = _inputs(case)
    v = _values(flow, y, c, c_one)
    f = case.features
    # Transform
    t = pfj.Chain(flow.transforms).transform(c)
    assert t.domain.event_dim == 1 and t.codomain.event_dim == 1
    assert t.forward_shape((2, 4, f)) == (2, 4, f) and t.inverse_shape((4, f)) == (4, f)
    assert t.inv.inv is t
    assert bool(np.asarray(t.codomain(y)).all()) and bool(np.asarray(t.domain(v["x"])).all())
    _close(v["y_again"], y)
    _close(v["fy"], y)
    _close(v["ld"], v["ld_recomputed"])
    _close(v["inv_ld"], -v["ld"])
    assert v["ld"].shape == (4,)
    leaves, treedef = jax.tree_util.tree_flatten(t)
    assert jax.tree_util.tree_unflatten(treedef, leaves) == t
    # Distribution
    d = flow(c)
    assert d.batch_shape == ((4,) if c is not None else ()) and d.event_shape == (f,)
    assert v["sample"].shape == ((3, 4, f) if c is not None else (3, f))
    assert bool(np.asarray(d.support(v["sample"])).all())
    _close(v["score_cached"], v["score_fresh"], tol=1e-6)
    _close(v["log_prob_vmap"], v["log_prob"])
    _close(v["expanded"], np.broadcast_to(v["log_prob"], (2, 4)))
    assert d.expand((2, 4)).batch_shape == (2, 4)
    np.testing.assert_array_equal(v["masked"], np.zeros(4 if c is not None else (4,)))
    _close(v["independent"], v["log_prob"].sum())
    _close(v["one"], v["log_prob"][0])
    assert all(np.isfinite(g).all() for g in v["grad_leaves"])
    assert any(np.abs(g).sum() > 0 for g in v["grad_leaves"]) or not v["grad_leaves"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pickle_plate_and_eager(case):
    flow = build(case)
    y, c, c_one = _inputs(case)
    expected = _values(flow, y, c, c_one)["log_prob"]
    other = pickle.loads(pickle.dumps(flow))  # same structure: the compiled call is reused
    _close(_values(other, y, c, c_one)["log_prob"], expected)

    def model():
        with numpyro.plate("data", 4):
            numpyro.sample("y", flow(c), obs=y)

    total = jax.jit(lambda: log_density(model, (), {}, {})[0])()
    _close(total, expected.sum())
    # a transform made twice, or passed through jit, equals itself (NumPyro compares by value)
    layer = flow.layers[0]
    context = c if layer.context_features else None
    assert layer.transform(context) == layer.transform(context)
    assert jax.jit(lambda b: b.transform(context))(layer) == layer.transform(context)
