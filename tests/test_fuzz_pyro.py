"""Property-based (hypothesis) suite over every bijection and recipe of the torch backend.

Every case of the invariant suite (tests/test_invariants_pyro.py) is fuzzed with weights moved
off their identity initialisation by a random perturbation, in float32 and float64, batch
shapes ``()``, ``(0,)``, ``(1,)`` and ``(2, 3)``, and inputs of magnitude 1e-6 to 1e6 of both
signs. Asserted, in both directions:

* outputs and log-dets are finite (where the maths is: a logit's inverse at a value that
  rounding put on the end of its interval is not checked for a round trip);
* each half of the round trip is computed to within a tolerance that accounts for the
  map's conditioning: ``C * eps * (|value| + 1 + sum_k |J_k| (|z_k| + 1))``, with ``J_k``
  the float64 Jacobian of stages ``k, k + 1, ...`` at their float64 input ``z_k`` (one
  rounding per stage, amplified by what follows), or is backward stable (the float64 map
  the other way takes it to within that tolerance of its input), or lies within the range
  of the float64 map over weights moved by ``C * eps`` each (the conditioners' rounding);
  failing all three for the whole map, every stage must pass one of them at the input the
  computation gave it (for maps too nonlinear for first-order propagation: extreme
  contexts make conditioner outputs of 1e4 and more); the round trip's own error is then
  that plus the float64 map's variation across the first half's error, the map's own
  conditioning (see `assert_round_trip`);
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
#: The tolerance of each half of a round trip, in units of ``eps * (conditioned magnitude)``.
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


def _error_bound(t64, point, context64, forward: bool, eps) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 value of one direction at ``point`` (``(n, features)``, float64), and per
    element how far a computation in a precision of ``eps`` may land from it.

    Every stage rounds its output: an error of ``eps * |z_k|`` in the input ``z_k`` of stage
    ``k`` moves the result by ``J_k``, the float64 Jacobian of stages ``k, k + 1, ...`` at
    ``z_k``. The bound is ``C * eps * (|value| + 1 + sum_k |J_k| (|z_k| + 1))`` over the
    float64 intermediates, plus for conditional stages the same term for the context (what
    the conditioner computes from it is rounded too). ``J_k`` is the product of the stages'
    own Jacobians (chain rule), each from ``features`` backward passes (the rows are
    independent).
    """
    stages = _stages(t64)
    steps = [s.forward_and_log_det for s in stages]
    if not forward:
        steps = [s.inverse_and_log_det for s in reversed(stages)]
    n, f = point.shape
    inputs, jacobians, context_jacobians, z = [], [], [], point
    for step in steps:
        v = z.clone().requires_grad_(True)
        c = _ctx(step, context64)
        c = None if c is None else c.clone().requires_grad_(True)
        out = step(v, c)[0]
        if n:
            wrt = [v] if c is None else [v, c]
            rows = [
                torch.autograd.grad(
                    out[:, i].sum(), wrt, retain_graph=True, allow_unused=True,
                    materialize_grads=True,
                )
                for i in range(f)
            ]  # fmt: skip
            jacobians.append(torch.stack([r[0] for r in rows], dim=1))  # (n, out, in)
            context_jacobians.append(None if c is None else torch.stack([r[1] for r in rows], 1))
        inputs.append(z)
        z = out.detach()
    value = z
    total = torch.zeros_like(point)
    if n:
        remaining = torch.eye(f, dtype=point.dtype).expand(n, f, f)
        for z_k, jac, jac_c in zip(
            reversed(inputs), reversed(jacobians), reversed(context_jacobians), strict=True
        ):
            if jac_c is not None:  # the conditioner rounds what it computes from the context
                moved = (remaining @ jac_c).abs() @ (context64.abs() + 1).unsqueeze(-1)
                total += moved.squeeze(-1)
            remaining = remaining @ jac
            total += (remaining.abs() @ (z_k.abs() + 1).unsqueeze(-1)).squeeze(-1)
    return value, C * eps * (value.abs() + 1 + total)


def _ctx(step, context64):
    return context64 if step.__self__.context_features else None


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
    intermediates = stage_values(_stages(t), dtype)
    assert_round_trip(
        case, t64, start, end, again, context, edge, forward, _eps(dtype), label, intermediates
    )


def assert_round_trip(
    case, t64, start, end, again, context, edge, forward, eps, label, intermediates=None
) -> None:
    """Assert that each half of a round trip is computed to within its conditioning.

    ``end`` is the image of ``start`` in the ``forward`` direction (or the inverse), ``again``
    the image of ``end`` the other way, both computed in a precision of ``eps``. Each row of
    each half must pass one of these (`_failing_rows`), for the whole bijection or, failing
    that, for each of its stages at the inputs the computation itself gave that stage:

    * within `_error_bound` of the float64 map at its own (exactly representable) input;
    * backward stable: the float64 map the other way takes the result to within
      `_error_bound` of the input (where a conditioner's outputs are huge and the result
      lies on a bin so steep that its float64 value is far away although it is the exact
      image of a point next to the input);
    * within the range of the float64 map over weights moved by ``C eps`` (relative) each
      (the rounding inside the conditioners, which moves the knots of a spline).

    The per-stage form (``intermediates``, a callable ``(inputs, context, forward)`` giving
    the float64 values of the computation's own stage inputs and outputs) is for maps so
    nonlinear that first-order propagation fails: a stage's rounding error amplified by a
    later conditioner whose outputs are in the tens of thousands. The round trip's own error
    ``again - start`` is those errors plus the float64 map's variation across ``end``'s
    error, which is the map's own conditioning (the float64 round trip itself is exact to
    1e-9 in the invariant suite). Rows in ``edge`` (a logit's saturated end) are skipped.

    ``t64`` is the bijection in float64 torch (the same weights); the tensors may have any
    float dtype and the batch shape of ``start``.
    """
    f = case.features
    flat = {
        "start": start.reshape(-1, f).detach().double(),
        "end": end.reshape(-1, f).detach().double(),
        "again": again.reshape(-1, f).detach().double(),
    }
    context64 = None
    if context is not None:
        shape = torch.broadcast_shapes(start.shape[:-1], context.shape[:-1])
        context64 = context.double().expand(*shape, case.context).reshape(-1, case.context)
    keep = ~edge.reshape(-1)
    for half, point, result, way in (
        ("there", flat["start"], flat["end"], forward),
        ("back", flat["end"], flat["again"], not forward),
    ):
        if half == "back" and not keep.any():
            continue
        rows = keep if half == "back" else torch.ones_like(keep)
        c64 = None if context64 is None else context64[rows]
        inputs, results = point[rows], result[rows]
        still, error, bound, value = _failing_rows(t64, inputs, results, c64, way, eps)
        if still.any() and intermediates is not None:
            still = still.clone()
            still[still.clone()] = _failing_stages(
                t64, intermediates, inputs[still], None if c64 is None else c64[still], way, eps
            )
        if still.any():
            row = int(still.nonzero()[0])
            direction = ("forward" if forward else "inverse") + f", the way {half}"
            raise AssertionError(
                f"{label}: {direction} off by {(error[row]).max().item():.3e} (allowed "
                f"{bound[row].min().item():.3e}) at row {row}, and its float64 image back is "
                f"off the input too: input {inputs[row].tolist()}, context "
                f"{None if c64 is None else c64[row].tolist()}, result {results[row].tolist()}, "
                f"float64 {value[row].tolist()}"
            )


def _failing_rows(t64, inputs, results, c64, way, eps):
    """The rows of ``results`` (the map ``t64`` in direction ``way`` computed at ``inputs``
    in a precision of ``eps``) that pass none of `assert_round_trip`'s three checks, with
    the errors, bounds and float64 values of the first."""
    value, bound = _error_bound(t64, inputs, c64, way, eps)
    error = (results - value).abs()
    bad = (error > bound.nan_to_num(nan=math.inf)).any(-1)
    if not bad.any():
        return bad, error, bound, value
    # backward stability: the float64 map the other way, from the result
    c_bad = None if c64 is None else c64[bad]
    value_back, bound_back = _error_bound(t64, results[bad], c_bad, not way, eps)
    still = ((value_back - inputs[bad]).abs() > bound_back.nan_to_num(nan=math.inf)).any(-1)
    if still.any():
        # the conditioners' own rounding: a relative error of C eps in every weight (what
        # the rounding of each weighted sum amounts to), along the direction that moves the
        # element most, in both senses; the float64 map is evaluated there (not linearised:
        # at a knot of a steep spline it changes bin)
        rows_still = bad.nonzero()[still.nonzero()[:, 0], 0]
        c_still = None if c64 is None else c64[rows_still]
        low, high = _weight_range(t64, inputs[rows_still], c_still, way, C * eps)
        res = results[rows_still]
        slack = bound[rows_still].nan_to_num(nan=math.inf)
        off = ((res < low - slack) | (res > high + slack)).any(-1)
        bad = torch.zeros_like(bad)
        bad[rows_still[off]] = True
    else:
        bad = torch.zeros_like(bad)
    return bad, error, bound, value


def _failing_stages(t64, intermediates, inputs, c64, way, eps) -> torch.Tensor:
    """Per row, whether some stage of ``t64`` fails `_failing_rows` at the input that the
    computation (``intermediates``) gave it."""
    stages = _stages(t64) if way else list(reversed(_stages(t64)))
    values = intermediates(inputs, c64, way)
    assert len(values) == len(stages) + 1
    failing = torch.zeros(inputs.shape[0], dtype=torch.bool)
    for stage, z_in, z_out in zip(stages, values[:-1], values[1:], strict=True):
        c = c64 if stage.context_features else None
        failing |= _failing_rows(stage, z_in, z_out, c, way, eps)[0]
    return failing


def stage_values(stages: list, dtype: torch.dtype):
    """``intermediates`` for `assert_round_trip`: the torch ``stages`` run in ``dtype``."""

    def run(inputs, c64, way):
        z, values = inputs.to(dtype), [inputs]
        c = None if c64 is None else c64.to(dtype)
        for stage in stages if way else reversed(stages):
            step = stage.forward_and_log_det if way else stage.inverse_and_log_det
            z = step(z, c if stage.context_features else None)[0].detach()
            values.append(z.double())
        return values

    return run


def _weight_range(t64, inputs, context64, forward: bool, relative: float):
    """Per element of the result, the range of the float64 map over weights moved by at most
    ``relative`` (relative) each: the map at the weights, and at the weights moved by
    ``+-relative |w|`` with the sign of ``d result / d w`` (the element's steepest direction).
    """
    step = t64.forward_and_log_det if forward else t64.inverse_and_log_det
    weights = [w for w in t64.parameters() if w.requires_grad]
    saved = [w.detach().clone() for w in weights]
    out = step(inputs, context64)[0]
    low, high = out.detach().clone(), out.detach().clone()
    n, f = out.shape
    grads = [
        torch.autograd.grad(
            out[r, i], weights, retain_graph=True, allow_unused=True, materialize_grads=True
        )
        for r in range(n)
        for i in range(f)
    ]  # all of them before the weights move (that would invalidate the graph)
    with torch.no_grad():
        for k, g_k in enumerate(grads):
            r, i = divmod(k, f)
            c = None if context64 is None else context64[r : r + 1]
            for sign in (1.0, -1.0):
                for w, w0, g in zip(weights, saved, g_k, strict=True):
                    w.copy_(w0 + sign * relative * w0.abs() * g.sign())
                value = step(inputs[r : r + 1].clone(), c)[0][0, i]
                low[r, i] = torch.minimum(low[r, i], value)
                high[r, i] = torch.maximum(high[r, i], value)
        for w, w0 in zip(weights, saved, strict=True):
            w.copy_(w0)
    return low, high


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


# every case, the residual blocks included: their fixed-point inverse stops at 64 eps of the
# row's scale, inside the round trip's bound. The continuous family by its bijection case
# (Continuous-rk4-ctx2): the FFJORD recipes are chains of the same layer.
FUZZED = [c for c in ALL if not c.id.startswith("FFJORD")]


@pytest.mark.parametrize("case", FUZZED, ids=[c.id for c in FUZZED])
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
        assert torch.allclose(grad[at], torch.ones_like(grad[at]), rtol=0, atol=1e-4)
