"""`pyroflows.pyro.AmortizedIAF`: exact densities, gradients, clear errors, a tiny VAE trains."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyroflows.pyro as pf
from pyroflows.pyro.autoregressive import MaskedAutoregressive


def make(dtype=torch.float64):
    torch.manual_seed(0)
    iaf = pf.AmortizedIAF(3, 4, transforms=2, hidden=(16,)).to(dtype)
    # random (not near-identity) weights, so the IAF layers do something
    with torch.no_grad():
        for p in iaf.parameters():
            p.add_(0.3 * torch.randn_like(p))
    loc = torch.randn(5, 3, dtype=dtype)
    scale = torch.rand(5, 3, dtype=dtype) + 0.5
    h = torch.randn(5, 4, dtype=dtype)
    return iaf, loc, scale, h


def test_log_prob_is_the_change_of_variables_density():
    iaf, loc, scale, h = make()
    q = iaf(loc, scale, h)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    z = q.rsample()
    cached = q.log_prob(z)
    fresh = q.log_prob(z.detach().clone())  # through the sequential inverse
    torch.testing.assert_close(cached, fresh)
    # by hand: eps -> z0 = loc + scale * eps -> z, log q = log N(eps) - log|det dz/deps|
    eps = torch.randn(3, dtype=torch.float64)

    def draw(e):
        z0 = loc[0] + scale[0] * e
        return pf.Chain(list(iaf.flow.transforms)).forward_and_log_det(z0, h[0])[0]

    jac = torch.autograd.functional.jacobian(draw, eps)
    expected = dist.Normal(0.0, 1.0).log_prob(eps).sum() - torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(iaf(loc[0], scale[0], h[0]).log_prob(draw(eps)), expected)


def test_gradients_reach_the_encoder_outputs_and_the_flow():
    iaf, loc, scale, h = make()
    loc.requires_grad_(True)
    scale.requires_grad_(True)
    h.requires_grad_(True)
    q = iaf(loc, scale, h)
    z = q.rsample()
    (z.sum() - q.log_prob(z).sum()).backward()
    for name, tensor in [("loc", loc), ("scale", scale), ("h", h)]:
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in iaf.parameters())


def test_clear_errors():
    iaf, loc, scale, h = make()
    with pytest.raises(ValueError, match="scale must be positive"):
        iaf(loc, -scale, h)
    with pytest.raises(ValueError, match="scale must have the shape of loc"):
        iaf(loc, scale[:1], h)
    with pytest.raises(ValueError, match=r"loc must have shape \(\.\.\., 3\)"):
        iaf(loc[:, :2], scale[:, :2], h)
    with pytest.raises(ValueError, match="context is required"):
        iaf(loc, scale)
    with pytest.raises(ValueError, match="non-finite"):
        iaf(loc * float("nan"), scale, h)


class Encoder(nn.Module):
    def __init__(self, pixels: int, latent: int, context: int) -> None:
        super().__init__()
        self.latent = latent
        self.net = nn.Sequential(
            nn.Linear(pixels, 64), nn.ELU(), nn.Linear(64, 2 * latent + context)
        )

    def forward(self, x):
        out = self.net(x)
        loc, raw, h = out.split([self.latent, self.latent, out.shape[-1] - 2 * self.latent], -1)
        return loc, nn.functional.softplus(raw) + 1e-3, h


def test_a_tiny_vae_with_the_amortized_guide_trains(monkeypatch):
    from sklearn.datasets import load_digits

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    images = torch.tensor(load_digits().data[:256] / 16.0 > 0.5, dtype=torch.float32)
    latent, context = 4, 8
    encoder = Encoder(64, latent, context)
    decoder = nn.Sequential(nn.Linear(latent, 64), nn.ELU(), nn.Linear(64, 64))
    iaf = pf.AmortizedIAF(latent, context, transforms=2, hidden=(32,))

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(latent), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        pyro.module("iaf", iaf)
        loc, scale, h = encoder(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", iaf(loc, scale, h))

    def refuse(self, *args, **kwargs):
        raise AssertionError("the sequential inverse ran")

    monkeypatch.setattr(MaskedAutoregressive, "_sequential", refuse)
    before = {name: p.detach().clone() for name, p in iaf.named_parameters()}
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), pyro.infer.Trace_ELBO())
    losses = [svi.step(images) / len(images) for _ in range(300)]
    assert np.isfinite(losses).all()
    # 64 binary pixels: about 44 nats at the start, far less once the VAE has learned
    assert np.mean(losses[:5]) - np.mean(losses[-20:]) > 10
    unchanged = [n for n, p in iaf.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, unchanged  # the IAF itself was trained, not just the encoder
