"""Property-based (hypothesis) suite over the bijections and recipes of the JAX backend.

The cases are those of the parity suite (tests/test_parity.py), one per kind of bijection and
recipe: each is built in torch, moved off its identity initialisation by a random
perturbation, and copied into JAX in float32 or float64 with ``get_params`` / ``set_params``
(and the rounded weights copied back into the float64 torch twin, so that both hold one map).
JAX then maps inputs of magnitude 1e-6 to 1e6 of both signs, batch shape ``(2, 3)``, in both
directions, and asserts what tests/test_fuzz_pyro.py asserts: finite outputs, log-dets and
gradients (input and every parameter), and round trips within the conditioning-aware bound,
whose float64 Jacobians the torch twin computes. float32 runs in JAX's default mode (where
the JAX-specific hazards, ``jnp.where`` / ``jnp.clip`` gradients and dtype promotion, show),
float64 with ``jax_enable_x64`` for the cases with special functions (splines, logit; see
``WITH_SPECIAL_FUNCTIONS``). One compiled function per case and dtype runs every example.
The other batch shapes (``()``, ``(0,)``, ``(1,)``) are traced for every case by the
invariant suite and run in the regression and conformance suites (empty batches).
``HYPOTHESIS_PROFILE=fuzz`` searches deeply.
"""

from __future__ import annotations

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from test_fuzz_pyro import assert_round_trip, magnitudes, unit_values
from test_invariants_pyro import perturb
from test_parity import ALL, Case, build_torch

import pyroflows.numpyro as pfj
import pyroflows.pyro as pf

pytestmark = pytest.mark.usefixtures("float64")

# one case per kind of bijection and recipe (the parity suite holds a few more variants)
CASES = [
    c
    for c in ALL
    if c.id
    in {
        "NICE-ctx0",
        "RealNVP-ctx2",
        "NSF-autoregressive-bins4-ctx0",
        "NSF-coupling-bins4-ctx2",
        "MAF-ctx2",
        "IAF-ctx0",
        "Coupling-affine-odd-mask",
        "Coupling-additive-odd-mask",
        "MA-spline-order-maf-ctx2-gelu",
        "ActNorm",
        "LULinear",
        "Permute-LULinear",
        "Reverse-Scale",
        "Logit",
        "Invert-MA-spline-ctx2",
        "Chain-ctx2",
        "Planar-ctx2",
        "Radial-ctx0",
        "Sylvester-orthogonal-ctx2",
    }
]
BATCH = (2, 3)


@st.composite
def examples(draw, case: Case):
    shape = BATCH + (case.features,)
    x = draw(magnitudes(shape))
    y = draw((unit_values if case.unit_data else magnitudes)(shape))
    context = draw(magnitudes(BATCH + (case.context,))) if case.context else None
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([0.3, 1.0]))
    return x, y, context, seed, scale


def _twins(case: Case, seed: int, scale: float, dtype) -> tuple[pfj.Bijection, pf.Bijection]:
    """The case in JAX (``dtype``) and in torch (float64), holding the same weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        flow = perturb(build_torch(case), scale=scale, seed=seed)
    jax_flow = pfj.set_params(_cast(build_jax(case), dtype), pf.get_params(flow))
    pf.set_params(flow, pfj.get_params(jax_flow))  # the rounded weights (float32)
    return pfj.Chain(jax_flow.transforms), pf.Chain(list(flow.transforms))


def build_jax(case: Case) -> pfj.Flow:
    keys = iter(jax.random.split(jax.random.key(0), 8))
    return case.make(pfj, lambda: {"key": next(keys)})


def _cast(tree, dtype):
    return jax.tree_util.tree_map(
        lambda leaf: leaf.astype(dtype) if eqx.is_inexact_array(leaf) else leaf, tree
    )


@eqx.filter_jit
def _run(bijection: pfj.Bijection, x, y, context):
    """Both directions, their round trips, and the gradients, in one compiled call."""
    fy, fld = bijection.forward_and_log_det(x, context)
    fx, _ = bijection.inverse_and_log_det(fy, context)
    ix, ild = bijection.inverse_and_log_det(y, context)
    iy, _ = bijection.forward_and_log_det(ix, context)

    def total(b, v):
        out, log_det = b.forward_and_log_det(v, context)
        return out.sum() + log_det.sum()

    grads = eqx.filter_grad(total)(bijection, x)
    grad_x = jax.grad(lambda v: total(bijection, v))(x)
    return fy, fld, fx, ix, ild, iy, grads, grad_x


def _jax_stages(bijection: pfj.Bijection) -> list[pfj.Bijection]:
    if isinstance(bijection, pfj.Chain):
        return [stage for layer in bijection.layers for stage in _jax_stages(layer)]
    return [bijection]


def _jax_values(bijection: pfj.Bijection, dtype):
    """``intermediates`` for `assert_round_trip`: the JAX stages run in ``dtype`` (the
    stages of the torch twin, ``_stages``, are the same maps in the same order)."""
    stages = _jax_stages(bijection)

    def run(inputs, c64, way):
        z, values = jnp.asarray(inputs.numpy(), dtype), [inputs]
        c = None if c64 is None else jnp.asarray(c64.numpy(), dtype)
        for stage in stages if way else reversed(stages):
            step = stage.forward_and_log_det if way else stage.inverse_and_log_det
            z = step(z, c if stage.context_features else None)[0]
            values.append(torch.as_tensor(np.asarray(z, np.float64)))
        return values

    return run


def _edge(case: Case, t64: pf.Bijection, y: np.ndarray) -> torch.Tensor:
    if not case.unit_data:
        return torch.zeros(y.shape[:-1], dtype=torch.bool)
    constraint = t64.codomain.base_constraint
    value = torch.as_tensor(np.array(y))
    return ((value <= constraint.lower_bound) | (value >= constraint.upper_bound)).any(-1)


# float32 for every case; float64 (compiled again, with jax_enable_x64) where the torch and
# JAX maths could part by rounding: the splines' and the logit's special functions (float64
# found torch's softplus threshold), not the affine and linear maps
WITH_SPECIAL_FUNCTIONS = {
    "NSF-autoregressive-bins4-ctx0",
    "NSF-coupling-bins4-ctx2",
    "MA-spline-order-maf-ctx2-gelu",
    "Invert-MA-spline-ctx2",
    "Chain-ctx2",
    "Logit",
}
SETUPS = [(c, "float32") for c in CASES] + [
    (c, "float64") for c in CASES if c.id in WITH_SPECIAL_FUNCTIONS
]


@pytest.mark.parametrize(("case", "dtype"), SETUPS, ids=[f"{c.id}-{dtype}" for c, dtype in SETUPS])
def test_fuzz_bijection(case, dtype, request):
    if dtype == "float64":
        request.getfixturevalue("jax_x64")  # float32 runs in JAX's default mode
    dtype = np.dtype(dtype)
    eps = float(np.finfo(dtype).eps)

    @given(examples(case))
    def check(example):
        x, y, context, seed, scale = example
        bijection, t64 = _twins(case, seed, scale, dtype)
        cast = lambda v: None if v is None else jnp.asarray(v, dtype)  # noqa: E731
        out = _run(bijection, cast(x), cast(y), cast(context))
        fy, fld, fx, ix, ild, iy, grads, grad_x = jax.tree_util.tree_map(np.asarray, out)
        label = f"{dtype}, seed {seed}, scale {scale}"
        for name, value in (("forward", fy), ("forward log-det", fld)):
            assert value.dtype == dtype and np.isfinite(value).all(), f"{label}: {name}"
        for name, value in (("inverse", ix), ("inverse log-det", ild)):
            assert value.dtype == dtype and np.isfinite(value).all(), f"{label}: {name}"
        leaves = [g for g in jax.tree_util.tree_leaves(grads) if eqx.is_inexact_array(g)]
        assert all(np.isfinite(g).all() for g in [*leaves, grad_x]), f"{label}: gradients"
        c64 = None if context is None else torch.as_tensor(np.array(cast(context), np.float64))
        tensor = lambda v: torch.as_tensor(np.array(v, np.float64))  # noqa: E731
        x64, y64 = tensor(cast(x)), tensor(cast(y))
        forward_edge = _edge(case, t64, fy)
        assert np.isfinite(fx[~forward_edge.numpy()]).all(), f"{label}: forward round trip"
        assert np.isfinite(iy).all(), f"{label}: inverse round trip"
        stages = _jax_values(bijection, dtype)
        assert_round_trip(
            case, t64, x64, tensor(fy), tensor(fx), c64, forward_edge, True, eps, label, stages
        )
        y_edge = _edge(case, t64, y)
        assert_round_trip(
            case, t64, y64, tensor(ix), tensor(iy), c64, y_edge, False, eps, label, stages
        )

    check()


# ------------------------------------------------------------------------- the spline's bound


@pytest.mark.usefixtures("jax_x64")
@given(
    st.integers(0, 2**16),
    st.sampled_from([1.0, 3.0, 10.0]),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from([0.5, 2.5, 5.0]),
)
def test_fuzz_spline_at_its_bound(seed, scale, dtype, bound):
    eps = float(np.finfo(dtype).eps)
    offsets = np.array([0.0, -1e-6, 1e-6, -eps, eps, -1e-3, 1e-3])
    points = np.concatenate([bound * (1 + offsets), -bound * (1 + offsets)]).astype(dtype)
    params = (scale * np.random.default_rng(seed).standard_normal((points.size, 23))).astype(dtype)
    out = _spline_values(bound, jnp.asarray(points), jnp.asarray(params))
    outside = np.abs(points) > bound
    near = ~outside & (np.abs(np.abs(points) - bound) <= 1e-6 * bound + 2 * eps * bound)
    at = np.abs(points) == bound
    for value, log_det, grad in np.asarray(out).reshape(2, 3, -1):
        assert np.isfinite(value).all() and np.isfinite(log_det).all() and np.isfinite(grad).all()
        np.testing.assert_array_equal(value[outside], points[outside])  # the identity
        assert (log_det[outside] == 0).all() and (grad[outside] == 1).all()
        np.testing.assert_allclose(value[near], points[near], rtol=0, atol=1e-4 * bound)
        np.testing.assert_allclose(grad[at], 1.0, rtol=0, atol=1e-4)  # the end slope


def _spline_values(bound: float, points, params):
    return _spline_jit(bound)(points, params)


_COMPILED: dict = {}


def _spline_jit(bound: float):
    if bound not in _COMPILED:
        spline = pfj.SplineTransformer(bins=8, bound=bound)

        def values(points, params):
            rows = []
            for step in (spline.forward, spline.inverse):
                value, log_det = step(points, params)
                grad = jax.grad(lambda v, step=step: step(v, params)[0].sum())(points)
                rows.append(jnp.stack([value, log_det, grad]))
            return jnp.stack(rows)

        _COMPILED[bound] = jax.jit(values)
    return _COMPILED[bound]
