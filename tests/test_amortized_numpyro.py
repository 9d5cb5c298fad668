"""`pyroflows.numpyro.AmortizedIAF`: exact densities, torch parity, errors, a tiny VAE trains."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.contrib.module import eqx_module

import pyroflows.numpyro as pfj
from pyroflows.numpyro.autoregressive import MaskedAutoregressive


def make():
    keys = jax.random.split(jax.random.key(0), 5)
    iaf = pfj.AmortizedIAF(3, 4, transforms=2, hidden=(16,), key=keys[0])
    leaves, tree = jax.tree_util.tree_flatten(eqx.filter(iaf, eqx.is_inexact_array))
    noisy = [
        leaf + 0.3 * jax.random.normal(k, leaf.shape, leaf.dtype)
        for leaf, k in zip(leaves, jax.random.split(keys[1], len(leaves)), strict=True)
    ]
    iaf = eqx.combine(jax.tree_util.tree_unflatten(tree, noisy), iaf)
    loc = jax.random.normal(keys[2], (5, 3))
    scale = jax.random.uniform(keys[3], (5, 3)) + 0.5
    h = jax.random.normal(keys[4], (5, 4))
    return iaf, loc, scale, h


def test_log_prob_is_the_change_of_variables_density(jax_x64):
    iaf, loc, scale, h = make()
    iaf = jax.tree_util.tree_map(
        lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, iaf
    )
    loc, scale, h = (a.astype(jnp.float64) for a in (loc, scale, h))
    q = iaf(loc, scale, h)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    z, intermediates = q.sample_with_intermediates(jax.random.key(1))
    np.testing.assert_allclose(q.log_prob(z, intermediates), q.log_prob(z), rtol=1e-10)
    chain = pfj.Chain(iaf.flow.transforms)

    def draw(e):
        return chain.forward_and_log_det(loc[0] + scale[0] * e, h[0])[0]

    eps = jax.random.normal(jax.random.key(2), (3,), jnp.float64)
    jac = jax.jacfwd(draw)(eps)
    expected = dist.Normal(0.0, 1.0).log_prob(eps).sum() - jnp.linalg.slogdet(jac)[1]
    np.testing.assert_allclose(iaf(loc[0], scale[0], h[0]).log_prob(draw(eps)), expected)


def test_same_density_as_the_torch_layer_with_copied_weights(jax_x64):
    torch = pytest.importorskip("torch")
    import pyroflows.pyro as pf

    torch.manual_seed(0)
    iaf_t = pf.AmortizedIAF(3, 4, transforms=2, hidden=(16,)).double()
    with torch.no_grad():
        for p in iaf_t.parameters():
            p.add_(0.3 * torch.randn_like(p))
    iaf_j = pfj.AmortizedIAF(3, 4, transforms=2, hidden=(16,), key=jax.random.key(0))
    flow = pfj.set_params(iaf_j.flow, pf.get_params(iaf_t.flow))
    iaf_j = eqx.tree_at(lambda m: m.flow, iaf_j, flow)
    rng = np.random.default_rng(0)
    loc, scale, h, z = (
        rng.normal(size=(5, 3)),
        rng.uniform(0.5, 1.5, (5, 3)),
        rng.normal(size=(5, 4)),
        rng.normal(size=(5, 3)),
    )
    expected = iaf_t(*(torch.tensor(a) for a in (loc, scale, h))).log_prob(torch.tensor(z))
    got = iaf_j(*(jnp.asarray(a) for a in (loc, scale, h))).log_prob(jnp.asarray(z))
    np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-8, atol=1e-10)


def test_gradients_reach_the_encoder_outputs_and_the_flow():
    iaf, loc, scale, h = make()

    def loss(iaf, loc, scale, h):
        q = iaf(loc, scale, h)
        z, intermediates = q.sample_with_intermediates(jax.random.key(3))
        return (z.sum() - q.log_prob(z, intermediates).sum()).astype(jnp.float32)

    grads = eqx.filter_jit(eqx.filter_grad(loss))(iaf, loc, scale, h)
    assert all(
        float(jnp.abs(g).sum()) > 0 for g in jax.tree_util.tree_leaves(grads) if g is not None
    )
    g_loc, g_scale, g_h = jax.jit(jax.grad(lambda *a: loss(iaf, *a), argnums=(0, 1, 2)))(
        loc, scale, h
    )
    for name, g in [("loc", g_loc), ("scale", g_scale), ("h", g_h)]:
        assert float(jnp.abs(g).sum()) > 0, name


def test_clear_errors():
    iaf, loc, scale, h = make()
    with pytest.raises(ValueError, match="scale positive"):
        iaf(loc, -scale, h)
    with pytest.raises(ValueError, match="scale must have the shape of loc"):
        iaf(loc, scale[:1], h)
    with pytest.raises(ValueError, match=r"loc must have shape \(\.\.\., 3\)"):
        iaf(loc[:, :2], scale[:, :2], h)
    with pytest.raises(ValueError, match="context is required"):
        iaf(loc, scale)


class Encoder(eqx.Module):
    net: eqx.nn.MLP
    latent: int = eqx.field(static=True)

    def __init__(self, pixels, latent, context, key):
        self.latent = latent
        self.net = eqx.nn.MLP(pixels, 2 * latent + context, 64, 1, jax.nn.elu, key=key)

    def __call__(self, x):
        out = jax.vmap(self.net)(x)
        loc, raw, h = jnp.split(out, [self.latent, 2 * self.latent], -1)
        return loc, jax.nn.softplus(raw) + 1e-3, h


def test_a_tiny_vae_with_the_amortized_guide_trains(monkeypatch):
    from sklearn.datasets import load_digits

    images = jnp.asarray(load_digits().data[:256] / 16.0 > 0.5, jnp.float32)
    latent, context = 4, 8
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    encoder = Encoder(64, latent, context, k1)
    decoder = eqx.nn.MLP(latent, 64, 64, 1, jax.nn.elu, key=k2)
    iaf = pfj.AmortizedIAF(latent, context, transforms=2, hidden=(32,), key=k3)

    def model(x):
        dec = eqx_module("decoder", decoder)
        with numpyro.plate("data", x.shape[0]):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(latent), 1.0).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=jax.vmap(dec)(z)).to_event(1), obs=x)

    def guide(x):
        enc = eqx_module("encoder", encoder)
        flow = eqx_module("iaf", iaf)
        loc, scale, h = enc(x)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("z", flow(loc, scale, h))

    def refuse(self, *args, **kwargs):
        raise AssertionError("the sequential inverse ran")

    monkeypatch.setattr(MaskedAutoregressive, "_sequential", refuse)
    svi = numpyro.infer.SVI(model, guide, numpyro.optim.Adam(3e-3), numpyro.infer.Trace_ELBO())
    result = svi.run(jax.random.key(1), 300, images, progress_bar=False)
    losses = np.asarray(result.losses) / len(images)
    assert np.isfinite(losses).all()
    assert losses[:5].mean() - losses[-20:].mean() > 10
    trained = result.params["iaf$params"]
    initial = eqx.filter(iaf, eqx.is_inexact_array)
    moved = jax.tree_util.tree_map(lambda a, b: bool((a != b).any()), trained, initial)
    assert all(jax.tree_util.tree_leaves(moved))  # the IAF itself was trained
