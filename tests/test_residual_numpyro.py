"""Residual blocks and the ResidualFlow recipe (JAX backend), and parity with torch."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from test_regressions_numpyro import _perturb as move_arrays

import pyroflows.numpyro as pfj
import pyroflows.pyro as pf

pytestmark = pytest.mark.usefixtures("jax_x64", "float64")


def _perturb(tree, scale: float = 0.5, seed: int = 1):
    """Move every inexact array, then refine the power-iteration vectors for the new weights."""
    return pfj.refine_lipschitz(move_arrays(tree, scale=scale, seed=seed))


def _block(context=0, invert=False, logdet="exact", **kw):
    block = pfj.ResidualBlock(
        3, context, hidden=(16, 16), logdet=logdet, invert=invert, key=jax.random.key(0), **kw
    )
    return _perturb(block)


@pytest.mark.parametrize(("context", "invert"), [(0, False), (2, True)])
def test_round_trip_exact_log_det_and_gradients(context, invert):
    block = _block(context, invert)
    y = jax.random.normal(jax.random.key(2), (6, 3))
    c = jax.random.normal(jax.random.key(3), (6, context)) if context else None
    x, ld_inverse = block.inverse_and_log_det(y, c)
    again, ld_forward = block.forward_and_log_det(x, c)
    np.testing.assert_allclose(again, y, atol=1e-12)
    np.testing.assert_allclose(ld_forward, -ld_inverse, atol=1e-12)
    ci = None if c is None else c[0]
    jac = jax.jit(jax.jacfwd(lambda v: block.inverse_and_log_det(v, ci)[0]))(y[0])
    np.testing.assert_allclose(ld_inverse[0], jnp.linalg.slogdet(jac)[1], atol=1e-10)
    # the fixed-point direction: reverse mode (implicit) against forward mode
    solve = block.inverse_and_log_det if invert else block.forward_and_log_det
    point = x[0] if invert else y[0]
    rev = jax.jit(jax.jacrev(lambda v: solve(v, ci)[0]))(point)
    fwd = jax.jit(jax.jacfwd(lambda v: solve(v, ci)[0]))(point)
    np.testing.assert_allclose(rev, fwd, atol=1e-10)


@pytest.mark.parametrize("mode", ["series", "unbiased"])
def test_stochastic_log_dets_match_exact_within_their_standard_error(mode):
    block = _perturb(
        pfj.ResidualBlock(3, 2, hidden=(16, 16), logdet="exact", key=jax.random.key(0)), 0.3
    )
    y = jax.random.normal(jax.random.key(2), (4, 3))
    c = jax.random.normal(jax.random.key(3), (4, 2))
    exact = np.asarray(block.inverse_and_log_det(y, c)[1])
    stochastic = pfj.ResidualBlock(
        3, 2, hidden=(16, 16), logdet=mode, terms=12 if mode == "series" else None,
        key=jax.random.key(0),
    )  # fmt: skip
    stochastic = pfj.set_params(stochastic, pfj.get_params(block))
    draw = eqx.filter_jit(lambda b, k: pfj.with_key(b, k).inverse_and_log_det(y, c)[1])
    keys = jax.random.split(jax.random.key(5), 3000)
    draws = np.stack([np.asarray(draw(stochastic, k)) for k in keys])
    error = np.abs(draws.mean(0) - exact)
    assert (error < 4 * draws.std(0) / np.sqrt(len(keys)) + 1e-6).all()
    assert (draws.std(0) > 0).all()
    # the same key draws the same numbers
    assert np.array_equal(draw(stochastic, keys[0]), draw(stochastic, keys[0]))


def test_fixed_point_inverse_raises_when_it_cannot_converge():
    block = _block(2)
    tight = pfj.set_params(
        pfj.ResidualBlock(3, 2, hidden=(16, 16), logdet="exact", max_iter=2, key=jax.random.key(0)),
        pfj.get_params(block),
    )
    w, c = 10 * jax.random.normal(jax.random.key(4), (50, 3)), jnp.ones((50, 2))
    with pytest.raises(pfj.ConvergenceError, match=r"did not converge for \d+ of 50 rows"):
        tight.forward_and_log_det(w, c)
    with pytest.raises(Exception, match="did not converge for some rows"):
        jax.block_until_ready(eqx.filter_jit(lambda b: b.forward_and_log_det(w, c))(tight))


def test_lipschitz_bound_holds_after_fit_steps_at_a_high_learning_rate():
    flow = pfj.ResidualFlow(3, transforms=2, hidden=(16,), logdet="exact", key=jax.random.key(0))
    data = 3 * jax.random.normal(jax.random.key(1), (256, 3)) ** 3
    flow, history = pfj.fit(flow, data, epochs=6, batch_size=64, lr=0.1, validation=0.0,
                            progress=False)  # fmt: skip
    assert all(np.isfinite(history["train"]))
    for layer in jax.tree_util.tree_leaves(
        flow, is_leaf=lambda x: isinstance(x, pfj.nn.LipschitzLinear)
    ):
        if isinstance(layer, pfj.nn.LipschitzLinear):
            for s in range(layer.weight.shape[0]):  # stacked blocks
                one = jax.tree_util.tree_map(lambda a, s=s: a[s], layer)
                norm = np.linalg.norm(np.asarray(one.normalized_weight(True)), ord=2)
                assert norm <= 0.9 * 1.05


def test_parameter_layout_is_shared_by_every_logdet_mode():
    names = {
        mode: set(pfj.get_params(pfj.ResidualFlow(2, transforms=2, hidden=(8,), logdet=mode,
                                                  key=jax.random.key(0))))
        for mode in ("exact", "series", "unbiased")
    }  # fmt: skip
    assert names["exact"] == names["series"] == names["unbiased"]


@pytest.mark.parametrize("context", [0, 2])
def test_parity_with_torch_in_float64(context):
    torch.manual_seed(0)
    flow_t = pf.ResidualFlow(3, context, transforms=2, hidden=(16, 16), logdet="exact")
    with torch.no_grad():
        for p in flow_t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    for module in flow_t.modules():
        if isinstance(module, pf.nn.LipschitzLinear):
            module.power_iterate()
    flow_t.eval()
    flow_j = pfj.ResidualFlow(3, context, transforms=2, hidden=(16, 16), logdet="exact",
                              key=jax.random.key(0))  # fmt: skip
    params = pf.get_params(flow_t)
    assert set(params) == set(pfj.get_params(flow_j))
    flow_j = pfj.set_params(flow_j, params)
    x = np.random.default_rng(0).normal(size=(5, 3))
    c = np.random.default_rng(1).normal(size=(5, context)) if context else None
    lp_t = flow_t(None if c is None else torch.tensor(c)).log_prob(torch.tensor(x))
    lp_j = flow_j(None if c is None else jnp.asarray(c)).log_prob(jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(lp_j), lp_t.detach().numpy(), atol=1e-8, rtol=0)
    noise = np.random.default_rng(2).normal(size=(5, 3))
    with torch.no_grad():
        ct = None if c is None else torch.tensor(c)
        y_t = pf.Chain(list(flow_t.transforms)).forward_and_log_det(torch.tensor(noise), ct)[0]
    y_j = pfj.Chain(flow_j.transforms).forward_and_log_det(
        jnp.asarray(noise), None if c is None else jnp.asarray(c)
    )[0]
    np.testing.assert_allclose(np.asarray(y_j), y_t.numpy(), atol=1e-8, rtol=0)
