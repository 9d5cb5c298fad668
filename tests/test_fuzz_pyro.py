"""Property-based (hypothesis) suite over every bijection and recipe of the torch backend.

Every case of the invariant suite (tests/test_invariants_pyro.py) is fuzzed with weights moved
off their identity initialisation by a random perturbation, in float32 and float64, batch
shapes ``()``, ``(0,)``, ``(1,)`` and ``(2, 3)``, and inputs of magnitude 1e-6 to 1e6 of both
signs. Asserted, in both directions:

* outputs and log-dets are finite (where the maths is: a logit's inverse at a value that
  rounding put on the end of its interval is not checked for a round trip);
* the round trip comes back within a tolerance that accounts for the map's conditioning:
  ``C * eps * (|x| + sum_j |J^-1_ij| (|y_j| + 1) + 1)``, with the Jacobian ``J`` taken in
  float64 at the point (an input error of one rounding in ``y`` moves ``x`` by ``J^-1``);
* gradients with respect to the input and to every parameter are finite.

A second property checks the spline at, just inside and just outside its bound.

CI runs a few derandomized examples per case (the ``ci`` profile in conftest.py); run
``HYPOTHESIS_PROFILE=fuzz python -m pytest tests/test_fuzz_pyro.py`` for a deep search.
"""

from __future__ import annotations

import copy
import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given
from test_invariants_pyro import ALL, Case, as_bijection, perturb

import pyroflows.pyro as pf

BATCHES = [(), (0,), (1,), (2, 3)]
DTYPES = [torch.float32, torch.float64]
#: The round trip's tolerance in units of ``eps * (conditioned magnitude)``.
C = 64.0


@st.composite
def magnitudes(draw, shape: tuple[int, ...]) -> np.ndarray:
    """Numbers of magnitude 1e-6 to 1e6 of both signs (log-uniform magnitudes)."""
    size = math.prod(shape)
    logs = draw(st.lists(st.floats(-6, 6), min_size=size, max_size=size))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=size, max_size=size))
    return (np.array(signs) * 10.0 ** np.array(logs)).reshape(shape)


@st.composite
def unit_values(draw, shape: tuple[int, ...]) -> np.ndarray:
    """Numbers in (0, 1) from 1e-6 to 1 - 1e-6 (near both ends and in between)."""
    size = math.prod(shape)
    logs = draw(st.lists(st.floats(-6, -0.31), min_size=size, max_size=size))
    ends = draw(st.lists(st.booleans(), min_size=size, max_size=size))
    value = 10.0 ** np.array(logs)
    return np.where(ends, 1.0 - value, value).reshape(shape)


@st.composite
def examples(draw, case: Case):
    batch = draw(st.sampled_from(BATCHES))
    dtype = draw(st.sampled_from(DTYPES))
    x = draw(magnitudes(batch + (case.features,)))
    y = draw((unit_values if case.unit_data else magnitudes)(batch + (case.features,)))
    context = draw(magnitudes(batch + (case.context,))) if case.context else None
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([0.3, 1.0]))
    return batch, dtype, x, y, context, seed, scale


def _tensor(value, dtype):
    return None if value is None else torch.as_tensor(value, dtype=dtype)


def _stages(t: pf.Bijection) -> list[pf.Bijection]:
    """The bijection as a sequence of stages in the forward order (chains flattened)."""
    if isinstance(t, pf.Chain):
        return [stage for member in t.transforms for stage in _stages(member)]
    return [t]


def _round_trip_bound(t64, end64, context64, start64, forward_back: bool, eps) -> torch.Tensor:
    """Per element, how far the way back from ``end`` may land from ``start``.

    Every stage of the way back rounds its output (and the way there rounded ``end``): an
    error of ``eps * |z_k|`` after stage ``k`` moves the result by the float64 Jacobian of
    the remaining stages, ``J_k``. The bound is ``C * eps * (|start| + 1 + sum_k |J_k|
    (|z_k| + 1))`` with the stages' float64 intermediates ``z_k`` from ``end``.
    """
    stages = _stages(t64)
    steps = [s.forward_and_log_det for s in stages]
    if not forward_back:
        steps = [s.inverse_and_log_det for s in reversed(stages)]
    total = C * eps * (start64.abs() + 1)
    for n in range(end64.shape[0]):
        c = None if context64 is None else context64[n]
        z = end64[n]
        for k in range(len(steps)):

            def rest(v, k=k, c=c):
                for step in steps[k:]:
                    v = step(v, c if step.__self__.context_features else None)[0]
                return v

            jac = torch.autograd.functional.jacobian(rest, z)
            total[n] += C * eps * (jac.abs() @ (z.abs() + 1))
            step = steps[k]
            z = step(z, c if step.__self__.context_features else None)[0].detach()
    return total


def _on_the_edge(case: Case, t: pf.Bijection, y: torch.Tensor) -> torch.Tensor:
    """Rows whose data-side value lies on (or beyond) the end of a Logit's interval."""
    if not case.unit_data:
        return torch.zeros(y.shape[:-1], dtype=torch.bool)
    constraint = t.codomain.base_constraint
    lo, hi = constraint.lower_bound, constraint.upper_bound
    return ((y <= lo) | (y >= hi)).any(-1)


def _check_direction(case, t, t64, start, context, dtype, direction: str, label: str) -> None:
    forward = direction == "forward"
    step = t.forward_and_log_det if forward else t.inverse_and_log_det
    back = t.inverse_and_log_det if forward else t.forward_and_log_det
    end, log_det = step(start, context)
    assert end.shape == start.shape and log_det.shape == start.shape[:-1]
    assert end.dtype == dtype
    assert torch.isfinite(end).all(), f"{label}: {direction}: non-finite output"
    assert torch.isfinite(log_det).all(), f"{label}: {direction}: non-finite log-det"
    edge = _on_the_edge(case, t, end) if forward else _on_the_edge(case, t, start)
    again, _ = back(end, context)
    assert torch.isfinite(again[~edge]).all(), f"{label}: {direction}: non-finite round trip"
    assert_round_trip(case, t64, start, end, again, context, edge, forward, _eps(dtype), label)


def assert_round_trip(case, t64, start, end, again, context, edge, forward, eps, label) -> None:
    """Assert that ``again`` (the way back from ``end``, itself the image of ``start``) is
    within the conditioning-aware bound of ``start``, except on the rows in ``edge``.

    ``t64`` is the bijection in float64 torch (the same weights); the other arguments are
    tensors of any float dtype with the batch shape of ``start``.
    """
    f = case.features
    flat_start = start.reshape(-1, f).detach().double()
    flat_context = None
    if context is not None:
        shape = torch.broadcast_shapes(start.shape[:-1], context.shape[:-1])
        flat_context = context.double().expand(*shape, case.context).reshape(-1, case.context)
    step64 = t64.forward_and_log_det if forward else t64.inverse_and_log_det
    end64 = step64(flat_start, flat_context)[0].detach()
    # the Jacobians at the float64 end and at the computed one (a map that is steep between
    # the two, within a rounding of each other, is that ill-conditioned)
    computed = end.reshape(-1, f).detach().double()
    bound = torch.maximum(
        _round_trip_bound(t64, end64, flat_context, flat_start, not forward, eps),
        _round_trip_bound(t64, computed, flat_context, flat_start, not forward, eps),
    )
    error = (again.reshape(-1, f).detach().double() - flat_start).abs()
    bad = (error > bound.nan_to_num(nan=math.inf)) & ~edge.reshape(-1, 1)
    if bad.any():
        row = int(bad.any(-1).nonzero()[0])
        direction = "forward" if forward else "inverse"
        raise AssertionError(
            f"{label}: {direction} round trip off by {error[bad].max().item():.3e} (allowed "
            f"{bound[bad].min().item():.3e}) at row {row}: start {flat_start[row].tolist()}, "
            f"context {None if flat_context is None else flat_context[row].tolist()}, "
            f"end {computed[row].tolist()}, back {again.reshape(-1, f)[row].tolist()}, "
            f"float64 end {end64[row].tolist()}"
        )


def _eps(dtype) -> float:
    return torch.finfo(dtype).eps


def _check_gradients(t, x, context) -> None:
    x = x.clone().requires_grad_(True)
    y, log_det = t.forward_and_log_det(x, context)
    params = [p for p in t.parameters() if p.requires_grad]
    grads = torch.autograd.grad(
        y.sum() + log_det.sum(), [x, *params], allow_unused=True, materialize_grads=True
    )
    for g in grads:
        assert torch.isfinite(g).all(), "non-finite gradient"


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_fuzz_bijection(case):
    @given(examples(case))
    def check(example):
        batch, dtype, x, y, context, seed, scale = example
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # the layers' default initialisation draws from it
            t = as_bijection(perturb(case.make().to(dtype), scale=scale, seed=seed))
        t64 = copy.deepcopy(t).double()  # the same map in float64, for its Jacobian
        x, y, context = _tensor(x, dtype), _tensor(y, dtype), _tensor(context, dtype)
        label = f"{dtype}, seed {seed}, scale {scale}"
        _check_direction(case, t, t64, x, context, dtype, "forward", label)
        _check_direction(case, t, t64, y, context, dtype, "inverse", label)
        _check_gradients(t, x, context)

    check()


# ------------------------------------------------------------------------- the spline's bound


@given(
    st.integers(0, 2**16),
    st.sampled_from([1.0, 3.0, 10.0]),
    st.sampled_from(DTYPES),
    st.sampled_from([0.5, 2.5, 5.0]),
)
def test_fuzz_spline_at_its_bound(seed, scale, dtype, bound):
    spline = pf.SplineTransformer(bins=8, bound=bound)
    generator = torch.Generator().manual_seed(seed)
    eps = _eps(dtype)
    offsets = torch.tensor([0.0, -1e-6, 1e-6, -eps, eps, -1e-3, 1e-3], dtype=torch.float64)
    points = torch.cat([bound * (1 + offsets), -bound * (1 + offsets)]).to(dtype)
    params = (scale * torch.randn(points.shape[0], 23, generator=generator)).to(dtype)
    outside = points.abs() > bound
    for step in (spline.forward, spline.inverse):
        value = points.clone().requires_grad_(True)
        out, log_det = step(value, params)
        (grad,) = torch.autograd.grad(out.sum(), value)
        assert torch.isfinite(out).all() and torch.isfinite(log_det).all()
        assert torch.isfinite(grad).all()
        # outside: the identity, exactly
        assert torch.equal(out[outside], points[outside])
        assert (log_det[outside] == 0).all() and (grad[outside] == 1).all()
        # at and just inside: continuous with the identity, and the slope at the bound is 1
        near = ~outside & ((points.abs() - bound).abs() <= 1e-6 * bound + 2 * eps * bound)
        assert torch.allclose(out[near], points[near], rtol=0, atol=1e-4 * bound)
        at = points.abs() == bound
        assert torch.allclose(grad[at], torch.ones_like(grad[at]), rtol=0, atol=1e-2)
