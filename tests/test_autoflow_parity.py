"""Cross-backend parity of a trained `AutoFlow`: ``get_params`` of one backend's flow loads
into the other's with ``set_params`` (the warm start's ``FixedAffine`` included) and gives
the same density of the packed latent vector, for each base (float64)."""

from __future__ import annotations

import copy

import jax
import numpy as np
import numpyro
import numpyro.distributions as nd
import pyro
import pyro.distributions as pd
import pytest
import torch
from numpyro.infer import SVI, Trace_ELBO

import pyroflows.numpyro as pfj
import pyroflows.pyro as pf

pytestmark = pytest.mark.usefixtures("float64", "jax_x64")

BASES = [{}, {"base": "laplace"}, {"base_df": 5.0}]


def _pyro_model():
    pyro.sample("loc", pd.Normal(torch.tensor(0.0), 1.0))
    pyro.sample("scale", pd.HalfNormal(torch.tensor(2.0)))
    pyro.sample("w", pd.Normal(torch.zeros(2), 3.0).to_event(1))


def _numpyro_model():
    numpyro.sample("loc", nd.Normal(0.0, 1.0))
    numpyro.sample("scale", nd.HalfNormal(2.0))
    numpyro.sample("w", nd.Normal(np.zeros(2), 3.0).to_event(1))


def _guides(base: dict):
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide_pyro = pf.AutoFlow(_pyro_model, transforms=2, hidden=(8,), **base)
    guide_pyro()  # sets up the flow and its warm start
    guide_jax = pfj.AutoFlow(
        _numpyro_model, transforms=2, hidden=(8,), key=jax.random.key(0), **base
    )
    svi = SVI(_numpyro_model, guide_jax, numpyro.optim.Adam(1e-3), Trace_ELBO())
    flow_jax = guide_jax.flow(svi.get_params(svi.init(jax.random.key(1))))
    return guide_pyro.flow, flow_jax


def _moved(params: dict, seed: int) -> dict:
    """Every array moved by noise, so no value matches by chance (the warm start's too; its
    factor stays lower-triangular)."""
    rng = np.random.default_rng(seed)
    moved = {k: v + 0.2 * rng.standard_normal(v.shape) for k, v in params.items()}
    return {k: np.tril(v) if k.endswith("scale_tril") else v for k, v in moved.items()}


def _assert_same_density(flow_pyro, flow_jax):
    x = np.random.default_rng(3).standard_normal((16, 4))
    log_q_pyro = flow_pyro().log_prob(torch.as_tensor(x)).detach().numpy()
    log_q_jax = np.asarray(flow_jax().log_prob(jax.numpy.asarray(x)))
    np.testing.assert_allclose(log_q_pyro, log_q_jax, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("base", BASES, ids=["normal", "laplace", "student_t"])
def test_autoflow_weights_move_from_numpyro_to_pyro(base):
    flow_pyro, flow_jax = _guides(base)
    params = pfj.get_params(flow_jax)
    assert {"transforms.3.loc", "transforms.3.scale_tril"} <= set(params)
    assert set(params) == set(pf.get_params(flow_pyro))
    flow_jax = pfj.set_params(flow_jax, _moved(params, 0))
    pf.set_params(flow_pyro, pfj.get_params(flow_jax))
    _assert_same_density(flow_pyro, flow_jax)


@pytest.mark.parametrize("base", BASES, ids=["normal", "laplace", "student_t"])
def test_autoflow_weights_move_from_pyro_to_numpyro(base):
    flow_pyro, flow_jax = _guides(base)
    pf.set_params(flow_pyro, _moved(pf.get_params(flow_pyro), 1))
    flow_jax = pfj.set_params(flow_jax, pf.get_params(flow_pyro))
    _assert_same_density(flow_pyro, flow_jax)
    # the warm start is a buffer in torch: carried, but still not trained
    assert "transforms.3.loc" not in dict(flow_pyro.named_parameters())


def _multimodal_flows():
    """The layers of a multimodal start (a frozen transport, then damped trainable layers)
    in both backends, every array moved off its initial value."""
    torch.manual_seed(0)
    transport = pf.NSF(4, transforms=2, hidden=(8,), mode="coupling")
    trainable = pf.MAF(4, transforms=2, hidden=(8,))
    flow_pyro = pf.Flow(
        [
            pf.infer.Frozen(list(transport.transforms)),
            pf.infer.Damped([*trainable.transforms, pf.LULinear(4)], 0.1),
        ]
    )
    key = jax.random.key(0)
    transport_jax = pfj.NSF(4, transforms=2, hidden=(8,), mode="coupling", key=key)
    trainable_jax = pfj.MAF(4, transforms=2, hidden=(8,), key=key)
    flow_jax = pfj.Flow(
        [
            pfj.infer.Frozen(transport_jax.layers),
            pfj.infer.Damped([*trainable_jax.layers, pfj.LULinear(4)], 0.1),
        ]
    )
    params = _moved(pf.get_params(flow_pyro), 2)
    return pf.set_params(flow_pyro, params), pfj.set_params(flow_jax, params)


def test_frozen_transport_and_damped_layers_move_between_backends():
    flow_pyro, flow_jax = _multimodal_flows()
    assert set(pfj.get_params(flow_jax)) == set(pf.get_params(flow_pyro))
    _assert_same_density(flow_pyro, flow_jax)
    flow_pyro2 = pf.set_params(_multimodal_flows()[0], pfj.get_params(flow_jax))
    _assert_same_density(flow_pyro2, flow_jax)


def test_damped_layers_are_the_same_map_with_steps_scaled():
    """`Damped` stores its layers' arrays divided by ``scale`` and computes the map of the
    undivided ones; one Adam step moves the map's parameters ``scale`` times as far."""
    torch.manual_seed(1)
    layers = list(pf.MAF(3, transforms=2, hidden=(8,)).transforms)
    with torch.no_grad():
        for p in torch.nn.ModuleList(layers).parameters():
            p.add_(0.3 * torch.randn_like(p))
    plain = pf.Flow(copy.deepcopy(layers))
    damped = pf.Flow([pf.infer.Damped(copy.deepcopy(layers), 0.1)])
    x = torch.randn(32, 3, dtype=torch.float64)
    torch.testing.assert_close(damped().log_prob(x), plain().log_prob(x), rtol=1e-12, atol=1e-12)
    stored = dict(damped.named_parameters())
    for name, p in plain.named_parameters():
        inner = name.replace("transforms.", "transforms.0.chain.transforms.", 1)
        torch.testing.assert_close(stored[inner] * 0.1, p, rtol=1e-12, atol=1e-15)

    def step(flow):
        before = {n: p.detach().clone() for n, p in flow.named_parameters()}
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
        optimizer.zero_grad()
        (-flow().log_prob(x).mean()).backward()
        optimizer.step()
        return {n: p.detach() - before[n] for n, p in flow.named_parameters()}

    moved_plain = step(plain)
    moved_damped = step(damped)  # in stored units: scale it to the map's
    for name, delta in moved_plain.items():
        inner = name.replace("transforms.", "transforms.0.chain.transforms.", 1)
        live = moved_damped[inner] * 0.1
        torch.testing.assert_close(live, 0.1 * delta, rtol=1e-3, atol=1e-6)
    assert max(float(d.abs().max()) for d in moved_plain.values()) > 5e-3
