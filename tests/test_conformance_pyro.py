"""Conformance with the contracts of torch and Pyro, for every bijection and recipe (torch).

Written from the contracts of ``torch.distributions.Transform`` (domain and codomain,
``inv``, ``log_abs_det_jacobian``, ``forward_shape`` / ``inverse_shape``, caching and
``with_cache``), Pyro's ``TransformModule`` (``pyro.module``, ``state_dict``),
``ConditionalTransform`` (``condition``, and the inverse's ``condition``), Pyro's
``TransformedDistribution`` (scoring, the sample cache) and ``Distribution`` (shapes,
``expand``, ``support``, ``mask``, plates and traces, ``to_event``), plus pickling and
``copy.deepcopy``. Every case of the invariant suite is moved off its identity
initialisation first (tests/test_invariants_pyro.py's ``perturb``).
"""

from __future__ import annotations

import copy
import io
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from test_invariants_pyro import ALL, as_bijection, build, context_points, data_points

pytestmark = pytest.mark.usefixtures("float64", "seeded")


def _transform(case, t):
    """The bijection as a plain torch transform (conditioned on a context if it has one)."""
    context = context_points(case, ())
    return (t.condition(context) if case.context else t), context


def _close(a, b, tol=1e-8):
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_torch_transform_contract(case):
    t = as_bijection(build(case))
    transform, context = _transform(case, t)
    assert transform.bijective
    assert transform.domain.event_dim == 1 and transform.codomain.event_dim == 1
    assert transform.forward_shape((2, 3, case.features)) == (2, 3, case.features)
    assert transform.inverse_shape((5, case.features)) == (5, case.features)
    y = data_points(case, (5,))
    assert transform.codomain.check(y).all()
    x = transform.inv(y)
    assert transform.domain.check(x).all()
    _close(transform(x), y)
    log_det = transform.log_abs_det_jacobian(x, y)
    assert log_det.shape == (5,)
    _close(log_det, t.forward_and_log_det(x.clone(), context)[1])
    _close(transform.inv.log_abs_det_jacobian(y, x), -log_det)
    # the one-slot cache (cache_size 1): the inverse of the last output is the last input
    assert transform._cache_size == 1 and transform.with_cache(1)._cache_size == 1
    x2 = torch.randn(4, case.features)
    y2 = transform(x2)
    assert transform.inv(y2) is x2
    y2.mul_(1.0)  # an in-place edit misses the cache
    assert transform.inv(y2) is not x2
    uncached = transform.with_cache(0)
    assert uncached._cache_size == 0
    y3 = uncached(x2)
    assert uncached.inv(y3) is not x2
    _close(uncached.inv(y3), x2)


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_inverse_transform_contract(case):
    t = as_bijection(build(case))
    y = data_points(case, (3,))
    if case.context:
        c = context_points(case, ())
        inverse = t.inv.condition(c)
        assert t.inv.inv is t
        _close(inverse(y), t.inverse_and_log_det(y, c)[0])
        with pytest.raises(ValueError, match="context"):
            t(y)
    else:
        assert t.inv.inv is t
        _close(t.inv(y), t.inverse_and_log_det(y)[0])
        assert repr(t.inv.domain) == repr(t.codomain)


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_transform_module_contract(case):
    flow = build(case)
    t = as_bijection(flow)
    pyro.clear_param_store()
    pyro.module("flow", flow)
    names = set(pyro.get_param_store().keys())
    assert names == {f"flow$$${name}" for name, _ in flow.named_parameters()}
    fresh = case.make()
    fresh.load_state_dict(flow.state_dict())
    y = data_points(case, (4,))
    c = context_points(case, (4,))
    _close(_lp(fresh, y, c), _lp(flow, y, c))
    assert "features=" in repr(t)


def _lp(flow, y, c):
    return flow(c).log_prob(y) if c is not None else flow().log_prob(y)


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_pickle_and_deepcopy_after_use(case):
    flow = build(case)
    c = context_points(case, (4,))
    d = flow(c) if c is not None else flow()
    x = d.rsample()
    score = d.log_prob(x).sum()
    if score.requires_grad:
        score.backward()  # the caches now hold tensors with a graph
    y = data_points(case, (4,))
    expected = _lp(flow, y, c)
    buffer = io.BytesIO()
    torch.save(flow, buffer)
    buffer.seek(0)
    for other in (
        copy.deepcopy(flow),
        pickle.loads(pickle.dumps(flow)),
        torch.load(buffer, weights_only=False),
    ):
        _close(_lp(other, y, c), expected)


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_pyros_transformed_distribution_agrees(case):
    flow = build(case)
    c = context_points(case, ())
    base = dist.Normal(torch.zeros(case.features), 1.0).to_event(1)
    transforms = [b.condition(c) if b.context_features else b for b in flow.transforms]
    theirs = dist.TransformedDistribution(base, transforms)
    ours = flow(c) if case.context else flow()
    y = data_points(case, (4,))
    _close(theirs.log_prob(y), ours.log_prob(y))
    x = theirs.rsample((3,))
    _close(theirs.log_prob(x), ours.log_prob(x.clone()))


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_distribution_contract(case):
    flow = build(case)
    c = context_points(case, (2, 1)) if case.context else None
    d = flow(c) if c is not None else flow()
    batch = (2, 1) if c is not None else ()
    f = case.features
    assert d.batch_shape == batch and d.event_shape == (f,) and d.has_rsample
    for shape in ((), (3,), (2, 4)):
        x = d.sample(shape)
        assert x.shape == (*shape, *batch, f)
        assert d.log_prob(x).shape == (*shape, *batch)
        assert d.support.check(x).all()
    expanded = d.expand((5, 2, 3))
    assert expanded.batch_shape == (5, 2, 3)
    y = data_points(case, (3,))
    lp = expanded.log_prob(y.reshape(3, f).expand(2, 3, f))
    assert lp.shape == (5, 2, 3) and torch.isfinite(lp).all()
    masked = d.mask(torch.tensor(False))
    assert (masked.log_prob(d.sample((2,))) == 0).all()
    independent = d.expand((4, *batch)).to_event(len(batch) + 1)
    assert independent.batch_shape == () and independent.event_shape == (4, *batch, f)
    z = independent.sample()
    _close(independent.log_prob(z), d.expand((4, *batch)).log_prob(z).sum())


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_a_flow_likelihood_in_a_plate_and_a_trace(case):
    flow = build(case)
    y = data_points(case, (6,))
    c = context_points(case, (6,))

    def model():
        with pyro.plate("data", 6):
            pyro.sample("y", flow(c) if c is not None else flow(), obs=y)

    trace = poutine.trace(model).get_trace()
    _close(trace.log_prob_sum(), _lp(flow, y, c).sum())
    scaled = poutine.trace(poutine.scale(model, scale=0.5)).get_trace()
    _close(scaled.log_prob_sum(), 0.5 * _lp(flow, y, c).sum())
