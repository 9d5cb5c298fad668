"""Cross-backend parity: the same weights give the same flow in torch and in JAX (float64).

For every recipe (with and without context, NSF in both modes with a few ``bins`` / ``bound``
values) and for the building blocks (coupling with custom masks and odd features,
autoregressive with a custom order, ActNorm, Scale, LULinear, Permute, Reverse, Logit,
Invert, Chain), in float64:

* torch -> JAX: build in torch, move every parameter by N(0, 0.3^2) noise, copy with
  ``pf.get_params`` -> ``pfj.set_params``; the parameter names and shapes agree, log_prob
  agrees to 1e-8 (relative, above 1) on random inputs of several batch shapes (with context
  broadcasting), and
  ``forward_and_log_det`` of the same base noise gives the same sample and log-det;
* JAX -> torch: move the JAX parameters, copy them into torch, and compare again.

The JAX side of a case is compiled once (``_jax_values``) and reused for both directions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import pyroflows.numpyro as pfj
import pyroflows.pyro as pf

pytestmark = pytest.mark.usefixtures("float64", "jax_x64")

TOL = 1e-8


@dataclass(frozen=True)
class Case:
    """``make(backend, kw)`` builds the flow with ``backend`` (``pf`` or ``pfj``); ``kw()``
    gives the extra keyword arguments of one constructor (a fresh ``key=`` in JAX)."""

    id: str
    make: Callable
    features: int
    context: int = 0
    unit_data: bool = False

    def __repr__(self) -> str:
        return self.id


def _recipe(name, features, context, **kwargs):
    def make(m, kw):
        return getattr(m, name)(features, context, transforms=3, hidden=(8, 8), **kwargs, **kw())

    return make


RECIPES: list[Case] = []
for _ctx in (0, 2):
    for _id, _name, _kwargs in (
        ("NICE", "NICE", {}),
        ("RealNVP", "RealNVP", {}),
        ("NSF-autoregressive-bins4", "NSF", {"bins": 4, "bound": 2.5}),
        ("NSF-coupling-bins4", "NSF", {"bins": 4, "bound": 2.5, "mode": "coupling"}),
        ("MAF", "MAF", {}),
        ("IAF", "IAF", {}),
        ("ResidualFlow", "ResidualFlow", {"logdet": "exact"}),
        ("Planar", "Planar", {}),
        ("Radial", "Radial", {}),
        ("Sylvester-orthogonal", "Sylvester", {}),
        ("Sylvester-householder", "Sylvester", {"kind": "householder", "reflections": 2}),
        ("Sylvester-triangular", "Sylvester", {"kind": "triangular"}),
        ("FFJORD-rk4", "FFJORD", {"solver": "rk4", "steps": 6}),
    ):
        RECIPES.append(Case(f"{_id}-ctx{_ctx}", _recipe(_name, 3, _ctx, **_kwargs), 3, _ctx))
RECIPES += [
    # the other fixed-step solver and activation, unconditional
    Case("FFJORD-euler-elu", _recipe("FFJORD", 2, 0, solver="euler", steps=9, activation="elu"), 2),
    Case("NSF-autoregressive-bins3-bound5", _recipe("NSF", 4, 0, bins=3, bound=5.0), 4),
    Case(
        "NSF-coupling-bins6-bound1.5-ctx1",
        _recipe("NSF", 4, 1, bins=6, bound=1.5, mode="coupling"),
        4,
        1,
    ),
    Case("MAF-bound1-tanh", _recipe("MAF", 4, 0, bound=1.0, activation="tanh"), 4),
    Case("MixtureCDF-ctx0", lambda m, kw: m.MixtureCDF(3, 0, 3, **kw()), 3),
    Case("MixtureCDF-ctx2", lambda m, kw: m.MixtureCDF(3, 2, 3, hidden=(8,), **kw()), 3, 2),
]

ODD_MASK = np.array([True, False, True])  # odd features, two pass through
MASK5 = np.array([False, True, True, False, False])
ORDER4 = np.array([2, 0, 3, 1])


def _flow(m, *transforms):
    return m.Flow(list(transforms))


BLOCKS: list[Case] = [
    Case(
        "Coupling-affine-odd-mask",
        lambda m, kw: _flow(
            m, m.Coupling(3, 0, ODD_MASK, m.AffineTransformer(2.0), hidden=(8, 8), **kw())
        ),
        3,
    ),
    Case(
        "Coupling-spline-mask5-ctx2-elu",
        lambda m, kw: _flow(
            m,
            m.Coupling(
                5, 2, MASK5, m.SplineTransformer(5, 2.0), hidden=(8,), activation="elu", **kw()
            ),
        ),
        5,
        2,
    ),
    Case(
        "Coupling-mixture-mask5-ctx2",
        lambda m, kw: _flow(
            m,
            m.Coupling(5, 2, MASK5, m.LogisticMixtureTransformer(3, 2.0), hidden=(8,), **kw()),
        ),
        5,
        2,
    ),
    Case(
        "Coupling-additive-odd-mask",
        lambda m, kw: _flow(
            m, m.Coupling(3, 0, ~ODD_MASK, m.AdditiveTransformer(), hidden=(8,), **kw())
        ),
        3,
    ),
    Case(
        "MA-affine-order-iaf",
        lambda m, kw: _flow(
            m, m.MaskedAutoregressive(4, 0, m.AffineTransformer(), (8, 8), order=ORDER4, **kw())
        ),
        4,
    ),
    Case(
        "MA-spline-order-maf-ctx2-gelu",
        lambda m, kw: _flow(
            m,
            m.MaskedAutoregressive(
                4,
                2,
                m.SplineTransformer(4, 2.5),
                (8,),
                invert=True,
                order=ORDER4,
                activation="gelu",
                **kw(),
            ),
        ),
        4,
        2,
    ),
    Case("ActNorm", lambda m, kw: _flow(m, m.ActNorm(3)), 3),
    Case("Scale", lambda m, kw: _flow(m, m.Scale(4)), 4),
    Case("LULinear", lambda m, kw: _flow(m, m.LULinear(4)), 4),
    Case(
        "Permute-LULinear",
        lambda m, kw: _flow(m, m.Permute(4, seed=3), m.LULinear(4), m.Permute([1, 3, 0, 2])),
        4,
    ),
    Case("Reverse-Scale", lambda m, kw: _flow(m, m.Scale(3), m.Reverse(3)), 3),
    Case(
        "Logit",
        lambda m, kw: _flow(m, m.Scale(3), m.Logit(3, alpha=0.05)),
        3,
        unit_data=True,
    ),
    Case(
        "Invert-MA-spline-ctx2",
        lambda m, kw: _flow(
            m,
            m.Invert(m.MaskedAutoregressive(3, 2, m.SplineTransformer(3, 2.0), (8,), **kw())),
        ),
        3,
        2,
    ),
    Case(
        "Chain-ctx2",
        lambda m, kw: _flow(
            m,
            m.Chain(
                [
                    m.ActNorm(4),
                    m.MaskedAutoregressive(4, 2, m.AffineTransformer(), (8,), invert=True, **kw()),
                    m.LULinear(4),
                    m.Coupling(4, 2, transformer=m.SplineTransformer(4, 2.5), hidden=(8,), **kw()),
                    m.Permute(4, seed=5),
                    m.Scale(4),
                ]
            ),
            m.Reverse(4),
        ),
        4,
        2,
    ),
]

ALL = RECIPES + BLOCKS


def _ids(cases):
    return [c.id for c in cases]


# --------------------------------------------------------------------------- building


def build_torch(case: Case) -> pf.Flow:
    flow = case.make(pf, dict)
    assert all(p.dtype == torch.float64 for p in flow.parameters())
    return flow


def build_jax(case: Case) -> pfj.Flow:
    keys = iter(jax.random.split(jax.random.key(0), 8))
    flow = case.make(pfj, lambda: {"key": next(keys)})
    params = pfj.get_params(flow)
    assert all(p.dtype == np.float64 for p in params.values())
    return flow


def perturb_torch(flow: pf.Flow, seed: int = 0) -> pf.Flow:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in flow.modules():
            if isinstance(m, pf.ActNorm):
                m.initialize(2.0 + 3.0 * torch.randn(64, m.features, generator=generator))
        for p in flow.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    for m in flow.modules():  # the power-iteration vectors of the moved weights
        if isinstance(m, pf.nn.LipschitzLinear):
            m.power_iterate()
    return flow


def perturb_jax(flow: pfj.Flow, seed: int = 1) -> pfj.Flow:
    """Move every inexact array of ``flow.transforms`` (noise from ``jax.random.key(seed)``)."""
    params = eqx.filter(flow.transforms, eqx.is_inexact_array)
    size = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    pool = np.asarray(jax.random.normal(jax.random.key(seed), (4096,), jnp.float64))
    assert size <= pool.size
    offsets = itertools.accumulate([0] + [leaf.size for leaf in jax.tree_util.tree_leaves(params)])
    offsets = iter(offsets)

    def move(leaf):
        if not eqx.is_inexact_array(leaf):
            return leaf
        start = next(offsets)
        noise = pool[start : start + leaf.size].reshape(leaf.shape)
        return jnp.asarray(np.asarray(leaf) + 0.3 * noise)

    moved = jax.tree_util.tree_map(move, flow.transforms)
    # the power-iteration vectors (moved too) refined for the moved weights
    return eqx.tree_at(lambda f: f.transforms, flow, pfj.refine_lipschitz(moved))


# --------------------------------------------------------------------------- inputs and values


def _inputs(case: Case) -> dict:
    rng = np.random.default_rng(123)
    f, c = case.features, case.context
    if case.unit_data:
        y = rng.uniform(0.02, 0.98, (2, 3, f))
    else:
        y = 2.0 * rng.standard_normal((2, 3, f))
    return {
        "y": y,  # data points, batch (2, 3); the context has batch (2, 1)
        "c": rng.standard_normal((2, 1, c)) if c else None,
        "y_one": y[0, 0],  # one unbatched point and context
        "c_one": rng.standard_normal(c) if c else None,
        "z": 1.5 * rng.standard_normal((5, f)),  # base noise, batch (5,)
        "c_z": rng.standard_normal((5, c)) if c else None,
    }


@eqx.filter_jit
def _jax_values(flow: pfj.Flow, inputs: dict) -> dict:
    sample, log_det = pfj.Chain(flow.transforms).forward_and_log_det(inputs["z"], inputs["c_z"])
    return {
        "log_prob": flow(inputs["c"]).log_prob(inputs["y"]),
        "log_prob_one": flow(inputs["c_one"]).log_prob(inputs["y_one"]),
        "sample": sample,
        "log_det": log_det,
    }


def jax_values(flow: pfj.Flow, case: Case) -> dict:
    inputs = {k: None if v is None else jnp.asarray(v) for k, v in _inputs(case).items()}
    return jax.tree_util.tree_map(np.asarray, _jax_values(flow, inputs))


def torch_values(flow: pf.Flow, case: Case) -> dict:
    inputs = {k: None if v is None else torch.as_tensor(v) for k, v in _inputs(case).items()}
    flow.eval()
    with torch.no_grad():
        sample, log_det = pf.Chain(list(flow.transforms)).forward_and_log_det(
            inputs["z"], inputs["c_z"]
        )
        values = {
            "log_prob": flow(inputs["c"]).log_prob(inputs["y"]),
            "log_prob_one": flow(inputs["c_one"]).log_prob(inputs["y_one"]),
            "sample": sample,
            "log_det": log_det,
        }
    return {k: v.numpy() for k, v in values.items()}


def assert_same(jax_out: dict, torch_out: dict, msg: str) -> None:
    assert set(jax_out) == set(torch_out)
    for name, value in torch_out.items():
        other = jax_out[name]
        assert other.shape == value.shape, f"{msg} {name}: shapes {other.shape} vs {value.shape}"
        assert np.isfinite(value).all(), f"{msg} {name}: non-finite torch values"
        # relative to the size of the values above 1: a strongly perturbed IAF scores some
        # points near -1000 through its sequential inverse
        bound = TOL * max(1.0, np.abs(value).max())
        err = np.abs(other - value).max()
        assert err <= bound, f"{msg} {name}: max abs error {err:.3e} > {bound:.1e}"


def assert_same_names_and_shapes(torch_params: dict, jax_params: dict) -> None:
    assert set(torch_params) == set(jax_params), sorted(set(torch_params) ^ set(jax_params))
    for name, value in torch_params.items():
        assert value.shape == jax_params[name].shape, name


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_weights_give_the_same_flow_both_ways(case):
    # torch -> JAX
    torch_flow = perturb_torch(build_torch(case))
    jax_flow = build_jax(case)
    params = pf.get_params(torch_flow)
    assert params, "no parameters to compare"
    assert_same_names_and_shapes(params, pfj.get_params(jax_flow))
    before = jax_values(jax_flow, case)
    jax_flow = pfj.set_params(jax_flow, params)
    for name, value in pfj.get_params(jax_flow).items():
        np.testing.assert_array_equal(value, params[name])
    expected = torch_values(torch_flow, case)
    assert_same(jax_values(jax_flow, case), expected, "torch -> JAX")
    # the copy changed the JAX flow (its own initial weights give another density)
    assert np.abs(before["log_prob"] - expected["log_prob"]).max() > 1e-3

    # JAX -> torch
    moved = perturb_jax(jax_flow)
    moved_params = pfj.get_params(moved)
    assert max(np.abs(moved_params[k] - params[k]).max() for k in params) > 0.1
    torch_flow = pf.set_params(build_torch(case), moved_params)
    expected = jax_values(moved, case)
    assert (
        np.abs(
            expected["log_prob"] - torch_values(perturb_torch(build_torch(case)), case)["log_prob"]
        ).max()
        > 1e-3
    )
    assert_same(expected, torch_values(torch_flow, case), "JAX -> torch")


RECIPE_OPTIONS = [
    ("MAF", {"context": 0}),
    ("MAF", {"context": 3, "hidden": (5, 7), "transforms": 4, "activation": "tanh"}),
    ("IAF", {"context": 1, "hidden": (6,), "transforms": 2}),
    ("NSF", {"context": 0, "bins": 3, "mode": "autoregressive"}),
    ("NSF", {"context": 2, "bins": 5, "mode": "coupling", "hidden": (4, 4, 4)}),
    ("NSF", {"context": 0, "bins": 2, "mode": "coupling", "activation": "silu"}),
    ("RealNVP", {"context": 0, "transforms": 3, "hidden": (6,)}),
    ("RealNVP", {"context": 2, "transforms": 1, "activation": "elu"}),
    ("NICE", {"context": 0, "transforms": 5, "hidden": (3, 4)}),
    ("NICE", {"context": 1, "transforms": 2}),
]


@pytest.mark.parametrize(
    "name, options",
    RECIPE_OPTIONS,
    ids=[f"{n}-" + "-".join(f"{k}{v}" for k, v in o.items()) for n, o in RECIPE_OPTIONS],
)
@pytest.mark.parametrize("features", [3])
def test_parameter_names_and_shapes_match(name, options, features):
    options = dict(options)
    context = options.pop("context")
    options.setdefault("hidden", (8,))
    torch_flow = getattr(pf, name)(features, context, **options)
    jax_flow = getattr(pfj, name)(features, context, key=jax.random.key(0), **options)
    torch_params, jax_params = pf.get_params(torch_flow), pfj.get_params(jax_flow)
    assert_same_names_and_shapes(torch_params, jax_params)
    assert all(v.dtype == np.float64 for v in jax_params.values())
    # torch order of named_parameters: a copy both ways keeps every value
    again = pf.set_params(getattr(pf, name)(features, context, **options), jax_params)
    for key, value in pf.get_params(again).items():
        np.testing.assert_array_equal(value, jax_params[key])
    transforms = options.get("transforms", 5 if name != "NICE" else 4)
    layers = {k.split(".")[1] for k in torch_params}
    assert len(layers) == transforms + (name == "NICE")
