"""The image bijections and recipes in the JAX backend, and their parity with torch.

Every case is built in both backends from one maker, in float64; the torch twin's parameters
are moved by N(0, 0.1) noise and copied into JAX with ``get_params`` / ``set_params``. One
jitted probe per case computes what the invariants compare: both round trips, the forward
log_det against ``jax.jacfwd`` of the flattened map, the inverse log_det at the forward
output, and the gradients of a loss. Then the distribution (log_prob against NumPyro's
TransformedDistribution, a sample scored from its intermediates), batch shapes with context
broadcasting, ActNorm's initialisation through `initialize_actnorm`, and torch <-> JAX
parity to 1e-8 of `RealNVP(shape=...)` and `Glow`, with and without context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import torch

import pyroflows.numpyro as pfj
import pyroflows.pyro as pf

pytestmark = pytest.mark.usefixtures("float64", "jax_x64")


@dataclass(frozen=True)
class Case:
    """An image bijection to check: ``make(backend, **key)`` builds it in either backend."""

    id: str
    make: Callable
    context: int = 0

    def __repr__(self) -> str:
        return self.id


def _key(backend) -> dict:
    return {"key": jax.random.key(0)} if backend is pfj else {}


CASES = [
    Case("Squeeze", lambda b: b.Squeeze((2, 4, 4))),
    Case("Reshape", lambda b: b.Reshape((16,), (1, 4, 4))),
    Case("ActNorm", lambda b: b.ActNorm((2, 2, 2))),
    Case("Conv1x1", lambda b: b.Conv1x1((3, 2, 2))),
    Case(
        "Coupling-checkerboard-ctx2",
        lambda b: b.ImageCoupling((1, 4, 4), 2, "checkerboard", 1, None, 4, 1, **_key(b)),
        context=2,
    ),
    Case(
        "Coupling-channel-spline",
        lambda b: b.ImageCoupling(
            (3, 2, 2), 0, "channel", 1, b.SplineTransformer(bins=4, bound=2.5), 4, 0, **_key(b)
        ),
    ),
    Case(
        "Coupling-checkerboard-mixture",
        lambda b: b.ImageCoupling(
            (1, 4, 4), 0, "checkerboard", 0, b.LogisticMixtureTransformer(2), 4, 0, **_key(b)
        ),
    ),
    Case("FactorOut", lambda b: b.FactorOut((4, 2, 2), b.ActNorm((1, 2, 2)))),
]
RECIPES = [
    Case(
        "RealNVP-image",
        lambda b: b.RealNVP(shape=(1, 4, 4), levels=2, hidden=4, blocks=1, **_key(b)),
    ),
    Case(
        "RealNVP-image-ctx2",
        lambda b: b.RealNVP(shape=(2, 2, 2), context=2, levels=1, hidden=4, blocks=0, **_key(b)),
        context=2,
    ),
    Case("Glow", lambda b: b.Glow((2, 4, 4), levels=2, steps=1, hidden=4, **_key(b))),
    Case(
        "Glow-mixture",
        lambda b: b.Glow(
            (1, 4, 4),
            levels=1,
            steps=1,
            hidden=4,
            transformer=b.LogisticMixtureTransformer(2),
            **_key(b),
        ),
    ),
    Case(
        "Glow-ctx2",
        lambda b: b.Glow((1, 4, 4), context=2, levels=2, steps=1, hidden=4, **_key(b)),
        context=2,
    ),
]
BATCH = (2, 3)


def twins(case: Case) -> tuple[pfj.Flow, pf.Flow]:
    """The case as a JAX flow and a torch flow holding the same (perturbed) weights."""
    made = case.make(pf)
    torch_flow = made if isinstance(made, pf.Flow) else pf.Flow([made])
    torch_flow.eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in torch_flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    made = case.make(pfj)
    jax_flow = made if isinstance(made, pfj.Flow) else pfj.Flow([made])
    return pfj.set_params(jax_flow, pf.get_params(torch_flow)), torch_flow


def inputs(case: Case, bijection, batch=BATCH):
    rng = np.random.RandomState(2)
    x = rng.randn(*batch, *bijection.base_shape)
    y = 1.5 * rng.randn(*batch, *bijection.event_shape)
    c = rng.randn(*batch, case.context) if case.context else None
    return x, y, c


@eqx.filter_jit
def _probe(bijection, x, y, c):
    fy, fld = bijection.forward_and_log_det(x, c)
    back, ild = bijection.inverse_and_log_det(fy, c)
    ix, _ = bijection.inverse_and_log_det(y, c)
    iy, _ = bijection.forward_and_log_det(ix, c)

    def flat(v, ci):
        out = bijection.forward_and_log_det(v.reshape(bijection.base_shape), ci)[0]
        return out.reshape(-1)

    x0 = x.reshape(-1, *bijection.base_shape)[:2].reshape(2, -1)
    c0 = None if c is None else c.reshape(-1, c.shape[-1])[:2]
    jac = jax.vmap(jax.jacfwd(flat))(x0, c0)

    def loss(b):
        out, log_det = b.forward_and_log_det(x, c)
        _, inv = b.inverse_and_log_det(y, c)
        return jnp.square(out).sum() + log_det.sum() + inv.sum()

    grads = eqx.filter_grad(loss)(bijection)
    return fy, fld, back, ild, iy, jac, grads


@pytest.mark.parametrize("case", CASES + RECIPES, ids=str)
def test_round_trips_log_dets_and_gradients(case):
    flow, _ = twins(case)
    bijection = flow.transforms[0]
    x, y, c = inputs(case, bijection)
    fy, fld, back, ild, iy, jac, grads = _probe(bijection, x, y, c)
    assert fy.shape == (*BATCH, *bijection.event_shape) and fld.shape == BATCH
    np.testing.assert_allclose(back, x, atol=1e-10, err_msg="inverse(forward(x))")
    np.testing.assert_allclose(ild, -fld, atol=1e-10, err_msg="inverse log_det")
    np.testing.assert_allclose(iy, y, atol=1e-10, err_msg="forward(inverse(y))")
    sign, logabsdet = np.linalg.slogdet(np.asarray(jac))
    assert (sign != 0).all()
    np.testing.assert_allclose(fld.reshape(-1)[:2], logabsdet, atol=1e-9, err_msg="log_det")
    params = pfj.get_params(grads)
    for name, g in params.items():
        assert np.abs(g).sum() > 0, name


@pytest.mark.parametrize("case", RECIPES, ids=str)
def test_recipes_agree_with_torch_to_1e8_and_are_numpyro_distributions(case):
    flow, torch_flow = twins(case)
    bijection = flow.transforms[0]
    _, y, c = inputs(case, bijection, batch=(4,))
    context = None if c is None else c[0]
    d = flow(None if context is None else jnp.asarray(context))
    tc = None if context is None else torch.as_tensor(context)
    expected = torch_flow(tc).log_prob(torch.as_tensor(y)).detach().numpy()
    np.testing.assert_allclose(d.log_prob(jnp.asarray(y)), expected, atol=1e-8, rtol=0)
    # the same base noise gives the same sample
    z = np.random.RandomState(3).randn(3, *bijection.base_shape)
    sample_jax = bijection.forward_and_log_det(jnp.asarray(z), d.context)[0]
    sample_torch = torch_flow.transforms[0].forward_and_log_det(torch.as_tensor(z), tc)[0]
    np.testing.assert_allclose(sample_jax, sample_torch.detach().numpy(), atol=1e-8, rtol=0)
    # NumPyro's own TransformedDistribution gives the same density; samples score from
    # their intermediates
    base = dist.Normal(jnp.zeros(bijection.base_shape), 1.0).to_event(3)
    reference = dist.TransformedDistribution(base, bijection.transform(d.context))
    np.testing.assert_allclose(d.log_prob(jnp.asarray(y)), reference.log_prob(y), atol=1e-10)
    value, intermediates = d.sample_with_intermediates(jax.random.key(4), (3,))
    assert value.shape == (3, *bijection.event_shape)
    np.testing.assert_allclose(d.log_prob(value, intermediates), d.log_prob(value), atol=1e-9)
    # and the weights go back to torch
    pf.set_params(torch_flow, pfj.get_params(flow))


def test_context_broadcasts_against_the_batch():
    case = RECIPES[-1]
    flow, _ = twins(case)
    bijection = flow.transforms[0]
    x = jnp.asarray(np.random.RandomState(5).randn(3, 1, 4, 4))
    c = jnp.asarray(np.random.RandomState(6).randn(2, 1, 2))
    out, log_det = bijection.forward_and_log_det(x, c)
    assert out.shape == (2, 3, 1, 4, 4) and log_det.shape == (2, 3)
    one, one_log_det = bijection.forward_and_log_det(x[2], c[1, 0])
    np.testing.assert_allclose(out[1, 2], one, atol=1e-12)
    np.testing.assert_allclose(log_det[1, 2], one_log_det, atol=1e-12)
    empty, empty_log_det = bijection.forward_and_log_det(jnp.zeros((0, 1, 4, 4)), c[0, 0])
    assert empty.shape == (0, 1, 4, 4) and empty_log_det.shape == (0,)


def test_initialize_actnorm_reaches_inside_the_multi_scale_model_as_torch_does():
    rng = np.random.RandomState(7)
    images = 0.5 + rng.randn(32, 1, 4, 4)
    images[:, :, 0, :] = 0.25  # a constant row: constant channels after the squeeze
    torch_flow = pf.Glow((1, 4, 4), levels=2, steps=1, hidden=4)
    torch_flow.train()
    torch_flow().log_prob(torch.as_tensor(images))  # torch initialises on the first pass
    # fresh, both flows are the same map (zeroed conditioner outputs, the same seeded 1x1
    # permutations), so the same data reaches each ActNorm
    flow = pfj.Glow((1, 4, 4), levels=2, steps=1, hidden=4, key=jax.random.key(0))
    flow = pfj.initialize_actnorm(flow, jnp.asarray(images))
    torch_params = pf.get_params(torch_flow)
    jax_params = pfj.get_params(flow)
    actnorm = [name for name in torch_params if name.endswith(("loc", "log_scale"))]
    assert len(actnorm) == 4  # one ActNorm per level, the second inside the FactorOut
    for name in actnorm:
        assert np.isfinite(jax_params[name]).all()
        np.testing.assert_allclose(jax_params[name], torch_params[name], atol=1e-12, err_msg=name)


def test_fit_trains_a_glow_on_images():
    rng = np.random.RandomState(3)
    level = rng.randn(256, 1, 1, 1)
    images = level + 0.3 * rng.randn(256, 1, 4, 4)
    flow = pfj.Glow((1, 4, 4), levels=1, steps=1, hidden=8, key=jax.random.key(0))
    flow, history = pfj.fit(flow, images, epochs=10, batch_size=64, lr=3e-3, seed=1, progress=False)
    assert history["train"][-1] < history["train"][0] - 0.5
    with pytest.raises(ValueError, match=r"must have shape \(n, 1, 4, 4\)"):
        pfj.fit(flow, images.reshape(256, 16), epochs=1, progress=False)


def test_encode_decode_and_temperature_sampling():
    flow, _ = twins(RECIPES[-1])
    c = jnp.asarray(np.random.RandomState(8).randn(2))
    x = flow(c).sample(jax.random.key(0), (5,))
    z = flow.encode(x, c)
    assert z.shape == (5, 1, 4, 4)
    np.testing.assert_allclose(flow.decode(z, c), x, atol=1e-9)
    mode = flow.sample_at_temperature(jax.random.key(1), (3,), 0.0, c)
    np.testing.assert_allclose(mode, flow.decode(jnp.zeros((3, 1, 4, 4)), c), atol=1e-12)
    cold = flow.sample_at_temperature(jax.random.key(2), (4000,), 0.5, c)
    assert abs(float(flow.encode(cold, c).std()) - 0.5) < 0.02
    laplace = dist.Laplace(jnp.zeros((1, 4, 4)), 1.0).to_event(3)
    with pytest.raises(ValueError, match="custom base"):
        pfj.Flow(flow.transforms, base=laplace).sample_at_temperature(jax.random.key(3), (2,))
