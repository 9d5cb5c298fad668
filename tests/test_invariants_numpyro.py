"""The invariant suite of ``test_invariants_pyro.py`` run on the JAX backend.

Every case is built small (3 or 4 features, hidden (8,) or (8, 8), 2 transforms) and, unless
a test says otherwise, has all its parameters moved by N(0, 0.3) noise, so that the maps are
far from the near-identity initialisation. Numbers are compared in float64 (``jax_x64``).

XLA compilation dominates the cost of JAX tests, so each case is compiled once: ``_probe``
computes, under ``jax.jit``, everything the invariants compare (round trip, autodiff
Jacobians, one-element-at-a-time reference via ``lax.map``, ``vmap``-ed Jacobians, gradients,
NumPyro's generic ``TransformedDistribution``, sampling with intermediates, per-layer
Jacobians of autoregressive layers). Its results are cached per case, and the tests below
assert on them; the same compiled probe also runs on the freshly built (near-identity) flow
and on the flow loaded back from disk. Random numbers come from ``jax.random`` keys, drawn
once into a pool (a new shape would cost another compilation).

Invariants: round trip; log_det against the ``jax.jacfwd`` Jacobian (``jax.jacrev`` for the
ODE solves, which are reverse mode only); inverse log_det equal to
minus forward; batch shapes and context broadcasting; gradients reach every parameter;
triangular Jacobian of autoregressive layers; one-pass log_prob equal to the two-pass and to
NumPyro's value; sampling with intermediates; 1-D densities integrate to 1; save and load;
near-identity init; ``lax.scan`` over identical layers equal to running them one by one;
jit / vmap / grad.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import pyroflows.numpyro as pfj
from pyroflows import structure
from pyroflows.numpyro import core

pytestmark = pytest.mark.usefixtures("jax_x64")

# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """A flow to check: ``make(key)`` builds it fresh (deterministically, unperturbed)."""

    id: str
    make: Callable[[jax.Array], pfj.Flow]
    features: int
    context: int = 0
    unit_data: bool = False  # the data side (forward's output) is (0, 1), not the reals
    identity_at_init: bool = True
    volume_preserving: bool = False
    recipe: bool = False
    inexact: float = 0.0  # ODE solves: the solver's error, added to the round-trip tolerances
    reverse_jacobian: bool = False  # reverse mode only (diffrax's solves): jacrev, not jacfwd

    def __repr__(self) -> str:
        return self.id


def _flow(*transforms: pfj.Bijection) -> pfj.Flow:
    return pfj.Flow(list(transforms))


def _spline() -> pfj.SplineTransformer:
    # a narrow bound, so that the test points hit both the spline and its identity tails
    return pfj.SplineTransformer(bins=4, bound=2.5)


def _ma(transformer, invert, key, context=0, features=4, hidden=(8, 8), order=None):
    return pfj.MaskedAutoregressive(
        features, context, transformer, hidden, invert=invert, order=order, key=key
    )


ORDER4 = np.array([2, 0, 3, 1])  # a non-trivial autoregressive order for 4 features

BIJECTIONS: list[Case] = []
for _name, _transformer in (("affine", pfj.AffineTransformer), ("spline", _spline)):
    for _invert in (True, False):
        for _ctx in (0, 2):
            _order = ORDER4 if _ctx else None

            def _make(key, t=_transformer, inv=_invert, c=_ctx, o=_order):
                return _flow(_ma(t(), inv, key, c, order=o))

            _kind = "maf" if _invert else "iaf"
            BIJECTIONS.append(
                Case(f"MA-{_name}-{_kind}" + (f"-ctx{_ctx}" if _ctx else ""), _make, 4, _ctx)
            )
for _name, _transformer in (
    ("additive", pfj.AdditiveTransformer),
    ("affine", pfj.AffineTransformer),
    ("spline", _spline),
    ("mixture", lambda: pfj.LogisticMixtureTransformer(components=3)),
):
    for _ctx in (0, 2):
        _features = 3 if _ctx else 4
        _mask = structure.alternating_mask(3, 1) if _ctx else None

        def _make(key, t=_transformer, c=_ctx, f=_features, m=_mask):
            return _flow(pfj.Coupling(f, c, m, t(), hidden=(8,), key=key))

        BIJECTIONS.append(
            Case(
                f"Coupling-{_name}" + (f"-ctx{_ctx}" if _ctx else ""),
                _make,
                _features,
                _ctx,
                volume_preserving=_name == "additive",
            )
        )


def _chain(key):
    k1, k2 = jax.random.split(key)
    return _flow(
        pfj.Chain(
            [
                pfj.ActNorm(4),
                _ma(pfj.AffineTransformer(), True, k1),
                pfj.LULinear(4),
                pfj.Coupling(4, transformer=_spline(), hidden=(8,), key=k2),
                pfj.Permute(4, seed=5),
                pfj.Scale(4),
            ]
        )
    )


def _chain_ctx2_logit(key):
    k1, k2 = jax.random.split(key)
    return _flow(
        pfj.Chain(
            [
                _ma(_spline(), False, k1, context=2, features=3, hidden=(8,)),
                pfj.Reverse(3),
                pfj.Coupling(3, 2, transformer=pfj.AffineTransformer(), hidden=(8,), key=k2),
                pfj.Logit(3, alpha=0.01),
            ]
        )
    )


BIJECTIONS += [
    Case("ActNorm", lambda key: _flow(pfj.ActNorm(3)), 3),
    Case("Scale", lambda key: _flow(pfj.Scale(4)), 4),
    Case("LULinear", lambda key: _flow(pfj.LULinear(4)), 4),
    Case(
        "Permute",
        lambda key: _flow(pfj.Permute(4, seed=3)),
        4,
        identity_at_init=False,
        volume_preserving=True,
    ),
    Case(
        "Reverse",
        lambda key: _flow(pfj.Reverse(3)),
        3,
        identity_at_init=False,
        volume_preserving=True,
    ),
    Case("Logit", lambda key: _flow(pfj.Logit(3)), 3, unit_data=True, identity_at_init=False),
    Case(
        "Logit-alpha0.05",
        lambda key: _flow(pfj.Logit(3, alpha=0.05)),
        3,
        unit_data=True,
        identity_at_init=False,
    ),
    Case("Chain", _chain, 4, identity_at_init=False),
    Case("Chain-ctx2-logit", _chain_ctx2_logit, 3, 2, unit_data=True, identity_at_init=False),
    Case(
        "Invert-MA-iaf",
        lambda key: _flow(pfj.Invert(_ma(pfj.AffineTransformer(), False, key))),
        4,
    ),
    Case(
        "Invert-MA-spline-maf-ctx2",
        lambda key: _flow(pfj.Invert(_ma(_spline(), True, key, context=2, order=ORDER4))),
        4,
        2,
    ),
    Case(
        "Residual-invert-elu-ctx2",
        lambda key: _flow(
            pfj.ResidualBlock(
                3, 2, hidden=(8,), logdet="exact", invert=True, activation="elu", key=key
            )
        ),
        3,
        2,
    ),
    Case(
        "Planar-invert-ctx2",
        lambda key: _flow(pfj.PlanarLayer(3, 2, (8,), invert=True, key=key)),
        3,
        2,
    ),
    Case("Radial-ctx2", lambda key: _flow(pfj.RadialLayer(3, 2, (8,), key=key)), 3, 2),
    Case(
        "Sylvester-orthogonal-columns2",
        lambda key: _flow(pfj.SylvesterLayer(3, kind="orthogonal", columns=2, key=key)),
        3,
    ),
    Case(
        "Sylvester-householder-invert-ctx2",
        lambda key: _flow(
            pfj.SylvesterLayer(3, 2, (8,), kind="householder", reflections=2, invert=True, key=key)
        ),
        3,
        2,
    ),
    Case(
        "Sylvester-triangular-reverse",
        lambda key: _flow(pfj.SylvesterLayer(4, kind="triangular", reverse=True, key=key)),
        4,
    ),
    Case(
        "Continuous-rk4-ctx2",
        lambda key: _flow(pfj.Continuous(3, 2, (8,), solver="rk4", steps=20, key=key)),
        3,
        2,
        inexact=1e-6,
        reverse_jacobian=True,
    ),
]

RECIPES: list[Case] = []
for _name, _recipe, _kwargs in (
    ("NICE", pfj.NICE, {}),
    ("RealNVP", pfj.RealNVP, {}),
    ("NSF-autoregressive", pfj.NSF, {"mode": "autoregressive", "bins": 4, "bound": 2.5}),
    ("NSF-coupling", pfj.NSF, {"mode": "coupling", "bins": 4, "bound": 2.5}),
    ("MAF", pfj.MAF, {}),
    ("IAF", pfj.IAF, {}),
    ("ResidualFlow", pfj.ResidualFlow, {"logdet": "exact"}),
    ("Planar", pfj.Planar, {}),
    ("Radial", pfj.Radial, {}),
    ("Sylvester", pfj.Sylvester, {}),
    ("FFJORD", pfj.FFJORD, {"solver": "rk4", "steps": 16}),
):
    for _ctx in (0, 2):
        _features = 3 if _ctx else 4
        _hidden = (8,) if _ctx else (8, 8)

        def _make(key, r=_recipe, f=_features, c=_ctx, h=_hidden, kw=_kwargs):
            return r(f, c, transforms=2, hidden=h, key=key, **kw)

        RECIPES.append(
            Case(
                f"{_name}" + (f"-ctx{_ctx}" if _ctx else ""),
                _make,
                _features,
                _ctx,
                recipe=True,
                inexact=1e-5 if _name == "FFJORD" else 0.0,
                reverse_jacobian=_name == "FFJORD",
            )
        )
RECIPES += [
    Case("MixtureCDF", lambda key: pfj.MixtureCDF(4, components=3), 4, recipe=True),
    Case(
        "MixtureCDF-ctx2",
        lambda key: pfj.MixtureCDF(3, 2, 3, hidden=(8,), key=key),
        3,
        2,
        recipe=True,
    ),
]

# Compiling dominates: by default the suite runs a subset of the torch suite's matrix that
# still holds every bijection, transformer and recipe, each with and without context
# somewhere; PYROFLOWS_JAX_FULL=1 runs the torch suite's whole matrix.
LEAN_SKIP = {
    "MA-affine-maf-ctx2",
    "MA-affine-iaf",
    "MA-spline-maf",
    "MA-spline-iaf-ctx2",
    "Coupling-additive-ctx2",
    "Coupling-affine",
    "Coupling-spline",
    "Coupling-mixture",
    "MixtureCDF",  # unconditional: in test_parity.py
    "NICE",
    "RealNVP-ctx2",
    "NSF-autoregressive-ctx2",
    "NSF-coupling",
    "MAF",
    "IAF-ctx2",
    "ResidualFlow",
    "Planar",
    "Planar-ctx2",
    "Radial-ctx2",
    "Sylvester",
    "Sylvester-orthogonal-columns2",
    "FFJORD",  # the bijection case Continuous-rk4-ctx2 runs; the recipe is in test_parity.py
    "FFJORD-ctx2",
}
if os.environ.get("PYROFLOWS_JAX_FULL", "") not in ("1", "true", "yes"):
    BIJECTIONS = [c for c in BIJECTIONS if c.id not in LEAN_SKIP]
    RECIPES = [c for c in RECIPES if c.id not in LEAN_SKIP]
ALL = BIJECTIONS + RECIPES
CONDITIONAL = [c for c in ALL if c.context]


def _ids(cases):
    return [c.id for c in cases]


def _autoregressive_layers(flow: pfj.Flow):
    """``(bijection, order, flipped)`` of every autoregressive layer of ``flow``."""
    found = []

    def visit(t, flipped):
        if isinstance(t, pfj.MaskedAutoregressive):
            found.append((t, t.order, flipped))
        elif isinstance(t, pfj.Invert):
            visit(t.bijection, not flipped)
        elif isinstance(t, pfj.Chain):
            for member in t.layers:
                visit(member, flipped)

    for t in flow.layers:
        visit(t, False)
    return found


AUTOREGRESSIVE = [c for c in ALL if "MA" in c.id or c.id.startswith(("NSF-auto", "IAF", "Chain"))]
# sampling with intermediates is generic (FlowDistribution): checked on these recipes
SAMPLED = [
    c for c in ALL if c.id in {"IAF", "IAF-ctx2", "NICE-ctx2", "NSF-coupling-ctx2", "MAF-ctx2"}
]

# --------------------------------------------------------------------------- random numbers

POOL = 1 << 14
_pools: dict[int, np.ndarray] = {}


def normal(seed: int, shape) -> np.ndarray:
    """Standard normal numbers from ``jax.random.key(seed)`` (float64, as a numpy array).

    One pool of fixed size per seed: each new shape given to ``jax.random`` is compiled."""
    if seed not in _pools:
        _pools[seed] = np.asarray(jax.random.normal(jax.random.key(seed), (POOL,), jnp.float64))
    size = int(np.prod(shape))
    assert size <= POOL
    return _pools[seed][:size].reshape(shape)


def perturb(flow: pfj.Flow, scale: float = 0.3, seed: int = 10) -> pfj.Flow:
    """Add N(0, scale^2) noise to every inexact array of ``flow.transforms`` (ActNorm layers
    are data-initialised first)."""

    def init_actnorm(m):
        if isinstance(m, pfj.ActNorm):
            new = m.initialize(2.0 + 3.0 * normal(seed + 1, (64, m.features)))
            if m.loc.ndim > 1:  # stacked ActNorm layers (a Stack): every layer alike
                new = eqx.tree_at(
                    lambda a: (a.loc, a.log_scale),
                    new,
                    (
                        jnp.broadcast_to(new.loc, m.loc.shape),
                        jnp.broadcast_to(new.log_scale, m.log_scale.shape),
                    ),
                )
            return new
        return m

    transforms = jax.tree_util.tree_map(
        init_actnorm, flow.transforms, is_leaf=lambda m: isinstance(m, pfj.ActNorm)
    )
    pool = normal(seed, (POOL,))
    offset = 0

    def move(leaf):
        nonlocal offset
        if not eqx.is_inexact_array(leaf):
            return leaf
        noise = pool[offset : offset + leaf.size].reshape(leaf.shape)
        offset += leaf.size
        assert offset <= POOL
        return jnp.asarray(np.asarray(leaf) + scale * noise, dtype=leaf.dtype)

    transforms = pfj.refine_lipschitz(jax.tree_util.tree_map(move, transforms))
    return eqx.tree_at(lambda f: f.transforms, flow, transforms)


def build(case: Case, perturbed: bool = True) -> pfj.Flow:
    flow = case.make(jax.random.key(0))
    leaves = jax.tree_util.tree_leaves(eqx.filter(flow.transforms, eqx.is_inexact_array))
    assert all(leaf.dtype == jnp.float64 for leaf in leaves)
    return perturb(flow) if perturbed else flow


def as_bijection(flow: pfj.Flow) -> pfj.Bijection:
    transforms = list(flow.transforms)
    return transforms[0] if len(transforms) == 1 else pfj.Chain(transforms)


def base_points(case: Case, batch) -> np.ndarray:
    """Points on the base side (inputs of forward): reals."""
    return 1.5 * normal(1, (*batch, case.features))


def data_points(case: Case, batch) -> np.ndarray:
    """Points on the data side (inputs of inverse): (0, 1) for Logit cases, else reals."""
    z = normal(2, (*batch, case.features))
    if case.unit_data:
        return 0.02 + 0.96 / (1.0 + np.exp(-1.5 * z))
    return 2.0 * z


def context_points(case: Case, batch) -> np.ndarray | None:
    return normal(3, (*batch, case.context)) if case.context else None


def standard_normal_log_prob(x) -> np.ndarray:
    x = np.asarray(x)
    return -0.5 * (x**2).sum(-1) - 0.5 * x.shape[-1] * np.log(2 * np.pi)


def assert_close(actual, expected, atol, rtol=0.0, msg=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{msg}: shapes {actual.shape} vs {expected.shape}"
    assert np.isfinite(actual).all(), f"{msg}: non-finite values {actual}"
    err = np.abs(actual - expected).max() if actual.size else 0.0
    bound = atol + rtol * np.abs(expected).max() if expected.size else atol
    assert err <= bound, f"{msg}: max abs error {err:.3e} > {bound:.1e}"


# --------------------------------------------------------------------------- the probe

# Batch shapes of the probe. For a conditional case the data points and the context are given
# with smaller batch shapes that broadcast to BATCH: (3,) and (2, 1).
BATCH = (2, 3)


def _inputs(case: Case) -> dict:
    x = base_points(case, BATCH)
    if case.context:
        y = data_points(case, BATCH[1:])
        c = context_points(case, (BATCH[0], 1))
        c_full = np.broadcast_to(c, (*BATCH, case.context))
        sample_context = context_points(case, (5,))
    else:
        y, c, c_full, sample_context = data_points(case, BATCH), None, None, None
    y_full = np.broadcast_to(y, (*BATCH, case.features))
    return {
        "x": x,
        "y": y,
        "c": c,
        "y_full": y_full,
        "c_full": c_full,
        "sample_context": sample_context,
    }


@eqx.filter_jit
def _probe(
    flow: pfj.Flow,
    inputs: dict,
    key: jax.Array,
    sample: bool,
    autoregressive: bool,
    reverse: bool = False,
):
    t = as_bijection(flow)
    features, n = flow.features, BATCH[-1]
    x, y, c = inputs["x"], inputs["y"], inputs["c"]
    flat_c = None if c is None else inputs["c_full"].reshape(-1, flow.context_features)
    flat_x, flat_y = x.reshape(-1, features), inputs["y_full"].reshape(-1, features)
    out = {}

    # one element at a time: the forward Jacobian (jax.jacfwd, vmapped) with the values
    def jacobian(step, p, ci):
        def value(v):
            out, log_det = step(v, ci)
            return out, (out, log_det)

        jac = jax.jacrev if reverse else jax.jacfwd
        return jac(value, has_aux=True)(p)  # (jacobian, (out, log_det))

    jac, (y_one, ld_one) = jax.vmap(lambda p, ci: jacobian(t.forward_and_log_det, p, ci))(
        flat_x, flat_c
    )
    out["jacobian"], out["forward_one"], out["forward_log_det_one"] = jac, y_one, ld_one
    out["inverse_one"] = jax.vmap(t.inverse_and_log_det)(flat_y, flat_c)

    # batched, with the context broadcast: inverse of the data points and of forward(x) ...
    both = jnp.concatenate([inputs["y_full"], y_one.reshape(*BATCH, features)], -2)
    both, both_log_det = t.inverse_and_log_det(both, c)
    out["inverse"], out["x_back"] = both[..., :n, :], both[..., n:, :]
    out["inverse_log_det"] = both_log_det[..., :n]
    out["inverse_log_det_at_forward"] = both_log_det[..., n:]
    # ... and forward of the base points and of inverse(y)
    both, both_log_det = t.forward_and_log_det(jnp.concatenate([x, out["inverse"]], -2), c)
    out["forward"], out["y_back"] = both[..., :n, :], both[..., n:, :]
    out["forward_log_det"] = both_log_det[..., :n]

    # log_prob with its gradient w.r.t. every parameter and the input
    def log_prob(args):
        f, v = args
        lp = f(c).log_prob(v)
        return lp.sum(), lp

    out["grads"], out["log_prob"] = eqx.filter_grad(log_prob, has_aux=True)((flow, y))
    base = flow.base_distribution()
    out["base_log_prob_of_inverse"] = base.log_prob(out["inverse"])
    transforms = [b.transform(c if b.context_features else None) for b in flow.layers]
    out["numpyro_log_prob"] = dist.TransformedDistribution(base, transforms).log_prob(y)

    if sample:  # sample with intermediates, then score with and without them
        sc = inputs["sample_context"]
        d = flow(sc)
        value, intermediates = d.sample_with_intermediates(key, () if sc is not None else (5,))
        out["sample"] = value
        out["sample_log_prob_cached"] = d.log_prob(value, intermediates)
        out["sample_log_prob"] = d.log_prob(value)

    if autoregressive:  # the Jacobian of every autoregressive layer on its own, both ways
        out["layer_jacobians"] = []
        for layer, _, _ in _autoregressive_layers(flow):
            ci = None if not layer.context_features else flat_c[:2]
            out["layer_jacobians"].append(
                [
                    jax.vmap(lambda p, ci, step=step: jacobian(step, p, ci)[0])(flat_x[:2], ci)
                    for step in (layer.forward_and_log_det, layer.inverse_and_log_det)
                ]
            )
    return out


_cache: dict[str, dict] = {}


def probe(case: Case, flow: pfj.Flow | None = None) -> dict:
    """The probe's results (numpy) for ``flow`` (default: the perturbed case, cached)."""
    if flow is None and case.id in _cache:
        return _cache[case.id]
    inputs = {k: None if v is None else jnp.asarray(v) for k, v in _inputs(case).items()}
    result = _probe(
        build(case) if flow is None else flow,
        inputs,
        jax.random.key(7),
        case in SAMPLED,
        case in AUTOREGRESSIVE and not case.recipe,
        case.reverse_jacobian,
    )
    result = jax.tree_util.tree_map(np.asarray, result)
    if flow is None:
        _cache[case.id] = result
    return result


# --------------------------------------------------------------------------- 1. round trip


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_round_trip(case):
    r, inputs = probe(case), _inputs(case)
    if case.identity_at_init:  # the perturbation moved the map far from the identity
        assert np.abs(r["forward"] - inputs["x"]).max() > 1e-2
    assert_close(r["x_back"], inputs["x"], atol=max(1e-9, case.inexact), msg="inverse(forward(x))")
    assert_close(
        r["y_back"], inputs["y_full"], atol=max(1e-9, case.inexact), msg="forward(inverse(y))"
    )


# --------------------------------------------------------------------------- 2. log_det vs jacfwd


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_log_det_matches_jacfwd_jacobian(case):
    """The forward log_det is log|det| of the jax.jacfwd Jacobian; the inverse one follows from
    it, the round trip and ``inverse log_det == -forward log_det`` (test 3)."""
    r = probe(case)
    jac, log_det = r["jacobian"], r["forward_log_det_one"]
    size = int(np.prod(BATCH))
    assert jac.shape == (size, case.features, case.features) and log_det.shape == (size,)
    sign, logabsdet = np.linalg.slogdet(jac)
    assert (sign != 0).all()
    assert_close(log_det, logabsdet, atol=max(1e-8, case.inexact), msg="forward log_det")


# --------------------------------------------------------------------------- 3. inverse log_det


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_inverse_log_det_is_minus_forward(case):
    r = probe(case)
    fwd = r["forward_log_det_one"].reshape(BATCH)
    assert_close(
        r["inverse_log_det_at_forward"], -fwd, atol=max(1e-9, case.inexact), msg="at y = forward(x)"
    )
    if case.volume_preserving:
        assert np.count_nonzero(fwd) == 0
    else:
        assert np.abs(fwd).max() > 1e-3  # the perturbed map changes volume


# --------------------------------------------------------------------------- 4. shapes


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_batched_equals_elementwise(case):
    """Batch (2, 3), with a context of batch (2, 1) against data of batch (3,) where the case
    is conditional, equals vmap over unbatched calls (one element at a time)."""
    r = probe(case)
    f = case.features
    assert r["forward"].shape == (*BATCH, f) and r["forward_log_det"].shape == BATCH
    assert r["inverse"].shape == (*BATCH, f) and r["inverse_log_det"].shape == BATCH
    assert r["log_prob"].shape == BATCH
    x, ld_i = r["inverse_one"]
    assert x.shape == (np.prod(BATCH), f) and ld_i.shape == (np.prod(BATCH),)
    assert_close(r["forward"], r["forward_one"].reshape(*BATCH, f), atol=1e-12, msg="forward")
    ld_f = r["forward_log_det_one"].reshape(BATCH)
    assert_close(r["forward_log_det"], ld_f, atol=1e-12, msg="forward log_det")
    assert_close(r["inverse"], x.reshape(*BATCH, f), atol=1e-12, msg="inverse")
    assert_close(r["inverse_log_det"], ld_i.reshape(BATCH), atol=1e-12, msg="inverse log_det")


@pytest.mark.parametrize("batch", [(), (1,), (4,), (2, 3)], ids=str)
@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_batch_shapes(case, batch):
    """Output shapes for every batch shape (traced with eval_shape, nothing is compiled)."""
    flow = build(case, perturbed=False)
    t = as_bijection(flow)
    f = case.features
    x = jax.ShapeDtypeStruct((*batch, f), jnp.float64)
    c = None if not case.context else jax.ShapeDtypeStruct((*batch, case.context), jnp.float64)
    for step in (t.forward_and_log_det, t.inverse_and_log_det):
        out, ld = jax.eval_shape(step, x, c)
        assert out.shape == (*batch, f) and ld.shape == batch
        assert out.dtype == ld.dtype == jnp.float64
    lp = jax.eval_shape(lambda v, ci: flow(ci).log_prob(v), x, c)
    assert lp.shape == batch


@pytest.mark.parametrize(
    "x_batch, c_batch",
    [((4,), ()), ((), (4,)), ((3,), (2, 1)), ((2, 1), (3,))],
    ids=["x4-c()", "x()-c4", "x3-c2x1", "x2x1-c3"],
)
@pytest.mark.parametrize("case", CONDITIONAL, ids=_ids(CONDITIONAL))
def test_context_broadcasting_shapes(case, x_batch, c_batch):
    flow = build(case, perturbed=False)
    t = as_bijection(flow)
    batch = np.broadcast_shapes(x_batch, c_batch)
    x = jax.ShapeDtypeStruct((*x_batch, case.features), jnp.float64)
    c = jax.ShapeDtypeStruct((*c_batch, case.context), jnp.float64)
    for step in (t.forward_and_log_det, t.inverse_and_log_det):
        out, ld = jax.eval_shape(step, x, c)
        assert out.shape == (*batch, case.features) and ld.shape == batch
    assert jax.eval_shape(lambda v, ci: flow(ci).log_prob(v), x, c).shape == batch


# --------------------------------------------------------------------------- 5. gradients


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_gradients_reach_every_parameter(case):
    r = probe(case)
    flow_grads, input_grad = r["grads"]
    assert np.isfinite(r["log_prob"]).all()
    named = pfj.get_params(flow_grads)
    assert set(named) == set(pfj.get_params(build(case, perturbed=False)))
    for name, g in named.items():
        assert np.isfinite(g).all(), f"{name} has a non-finite gradient"
        if re.search(r"net\.layers\.\d+\.[uv]$", name):  # power-iteration vectors: state
            assert np.abs(g).max() == 0, f"{name} has a gradient"
            continue
        assert np.abs(g).max() > 0, f"{name} has an all-zero gradient"
    assert np.isfinite(input_grad).all() and np.abs(input_grad).max() > 0
    if case.id not in {"Permute", "Reverse", "Logit", "Logit-alpha0.05"}:
        assert named, "a parameterised case reports no parameters"


# --------------------------------------------------------------------------- 6. triangular Jacobian


@pytest.mark.parametrize("case", AUTOREGRESSIVE, ids=_ids(AUTOREGRESSIVE))
def test_autoregressive_jacobian_is_triangular(case):
    layers = _autoregressive_layers(build(case))
    assert layers
    if case.recipe:  # recipes take the seeded orders of structure.recipe_orders; the layers
        # are MaskedAutoregressive layers, whose Jacobians the bijection cases check
        assert len(layers) == 2
        orders = structure.recipe_orders(case.features, len(layers))
        for i, (layer, order, flipped) in enumerate(layers):
            expected = orders[i]
            np.testing.assert_array_equal(np.asarray(order), expected)
            assert not flipped and layer.invert == (not case.id.startswith("IAF"))
        return
    jacobians = probe(case)["layer_jacobians"]
    assert len(jacobians) == len(layers)
    for (_, order, _), row in zip(layers, jacobians, strict=True):
        idx = np.argsort(np.asarray(order))  # feature at each autoregressive position
        for direction, jac in zip(("forward", "inverse"), row, strict=True):
            assert jac.shape == (2, case.features, case.features)
            for j in jac:
                permuted = j[idx][:, idx]
                assert np.count_nonzero(np.triu(permuted, 1)) == 0, (
                    f"{direction}: entries above the diagonal in the order:\n{permuted}"
                )
                assert (np.diagonal(permuted) != 0).all()
                # the conditioner is really used: something below the diagonal is nonzero
                assert np.count_nonzero(np.tril(permuted, -1)) > 0


# --------------------------------------------------------------------------- 7. one-pass log_prob


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_log_prob_one_pass_equals_two_pass(case):
    r = probe(case)
    lp = r["log_prob"]
    assert lp.shape == BATCH
    expected = r["base_log_prob_of_inverse"] + r["inverse_log_det"]
    assert_close(expected, standard_normal_log_prob(r["inverse"]) + r["inverse_log_det"], 1e-12)
    assert_close(lp, expected, atol=1e-10, msg="base.log_prob(inverse) + log_det")
    # (NumPyro scores with the forward log-det at the inverse: an ODE's differs by the solver's
    # error)
    assert_close(
        lp,
        r["numpyro_log_prob"],
        atol=max(1e-10, case.inexact),
        msg="numpyro TransformedDistribution",
    )
    if case.identity_at_init:  # not simply the base density
        assert np.abs(lp - standard_normal_log_prob(_inputs(case)["y_full"])).max() > 1e-3


# --------------------------------------------------------------------------- 8. intermediates


@pytest.mark.parametrize("case", SAMPLED, ids=_ids(SAMPLED))
def test_sample_with_intermediates(case):
    r = probe(case)
    assert r["sample"].shape == (5, case.features) and np.isfinite(r["sample"]).all()
    assert r["sample_log_prob"].shape == (5,)
    assert_close(r["sample_log_prob_cached"], r["sample_log_prob"], atol=max(1e-8, case.inexact))


# --------------------------------------------------------------------------- 9. 1-D densities


ONE_D = [
    (
        "MA-spline-ctx1",
        lambda key: pfj.Flow(
            [pfj.MaskedAutoregressive(1, 1, _spline(), (8,), invert=True, key=key)]
        ),
        0.7,
        (-30.0, 30.0),
    ),
    (
        "MA-affine-iaf",
        lambda key: pfj.Flow([pfj.MaskedAutoregressive(1, 0, hidden=(8,), key=key)]),
        None,
        (-30.0, 30.0),
    ),
    (
        "MA-then-Logit-alpha0.1",  # support (-alpha, 1 - alpha) / (1 - 2 alpha)
        lambda key: pfj.Flow(
            [pfj.MaskedAutoregressive(1, 0, hidden=(8,), key=key), pfj.Logit(1, 0.1)]
        ),
        None,
        (-0.125, 1.125),
    ),
]


@pytest.mark.parametrize(
    "make, context, support", [c[1:] for c in ONE_D], ids=[c[0] for c in ONE_D]
)
def test_one_dimensional_density_integrates_to_one(make, context, support):
    flow = perturb(make(jax.random.key(0)))
    lo, hi = support
    grid = np.linspace(lo, hi, 200_001)
    if lo != -30.0:  # open interval: drop the end points
        grid = grid[1:-1]
    ctx = None if context is None else jnp.full((1,), context)
    lp = np.asarray(eqx.filter_jit(lambda f, v: f(ctx).log_prob(v))(flow, grid[:, None]))
    assert np.isfinite(lp).all()
    density = np.exp(lp)
    total = np.trapezoid(density, grid)
    assert abs(total - 1.0) < 1e-4, f"integral {total}"
    if lo == -30.0:  # the perturbation made it something other than a standard normal
        reference = np.exp(standard_normal_log_prob(grid[:, None]))
        assert np.trapezoid(np.abs(density - reference), grid) > 1e-2


# --------------------------------------------------------------------------- 10. save / load


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_save_and_load(case, tmp_path):
    flow = build(case)
    expected = probe(case)["log_prob"]
    params = pfj.get_params(flow)
    # the template: a fresh flow; its ActNorm layers are marked initialised as in ``flow``
    # (``initialized`` is a static field, so eqx.tree_deserialise_leaves keeps the
    # template's), which also keeps the compiled probe
    fresh = build(case, perturbed=False)
    fresh = pfj.set_params(fresh, pfj.get_params(fresh))
    for name, value in pfj.get_params(fresh).items():
        assert np.abs(value - params[name]).max() > 1e-3, name

    path = tmp_path / "flow.eqx"
    eqx.tree_serialise_leaves(path, flow)
    loaded = eqx.tree_deserialise_leaves(path, fresh)
    np.testing.assert_array_equal(probe(case, loaded)["log_prob"], expected)

    again = pfj.set_params(build(case, perturbed=False), params)
    np.testing.assert_array_equal(probe(case, again)["log_prob"], expected)
    assert bool(_autoregressive_layers(flow)) == (case in AUTOREGRESSIVE)


# --------------------------------------------------------------------------- 11. identity at init


IDENTITY = [c for c in ALL if c.identity_at_init]


@pytest.mark.parametrize("case", IDENTITY, ids=_ids(IDENTITY))
def test_near_identity_at_initialisation(case):
    r, inputs = probe(case, build(case, perturbed=False)), _inputs(case)
    assert_close(r["forward"], inputs["x"], atol=1e-12, msg="forward(x) at init")
    assert_close(r["forward_log_det"], np.zeros(BATCH), atol=1e-12, msg="log_det at init")
    assert_close(r["inverse"], inputs["y_full"], atol=1e-12, msg="inverse(y) at init")
    assert_close(r["inverse_log_det"], np.zeros(BATCH), atol=1e-12)
    expected = standard_normal_log_prob(inputs["y_full"])
    assert_close(r["log_prob"], expected, atol=1e-12)


# --------------------------------------------------------------------------- 12. scan


def _scan_chains():
    keys = jax.random.split(jax.random.key(3), 20)
    ma = [pfj.MaskedAutoregressive(3, 2, hidden=(8,), invert=True, key=k) for k in keys]
    # odd features: the masks alternate, so the layers repeat with period 2
    coupling = [
        pfj.Coupling(3, 2, structure.alternating_mask(3, i % 2), hidden=(8,), key=k)
        for i, k in enumerate(keys)
    ]
    return {"autoregressive": (ma, 1), "coupling-odd": (coupling, 2)}


@pytest.mark.parametrize("kind", ["autoregressive", "coupling-odd"])
def test_scan_equals_layer_by_layer(kind):
    layers, period = _scan_chains()[kind]
    chain = perturb(pfj.Flow([pfj.Chain(layers)]), scale=0.1).transforms[0]
    # the chain holds the 20 layers as one Stack, scanned over 20 / period steps
    assert len(chain.transforms) == 1 and isinstance(chain.transforms[0], core.Stack)
    assert (chain.transforms[0].period, chain.transforms[0].steps) == (period, 20 // period)
    layers = list(chain.layers)
    assert len(layers) == 20
    case = Case("scan", lambda key: None, 3, 2)
    x, c = base_points(case, (4,)), context_points(case, (2, 1))

    @eqx.filter_jit
    def run(chain, x, c):
        y, ld = chain.forward_and_log_det(x, c)
        return y, ld, *chain.inverse_and_log_det(y, c)

    y, ld, x_back, ld_inv = run(chain, x, c)
    # one layer at a time, without the scan (and without any jit)
    with jax.disable_jit():
        z, total = jnp.asarray(x), 0.0
        for layer in layers:
            z, step = layer.forward_and_log_det(z, c)
            total = total + step
        assert_close(y, z, atol=1e-10, rtol=1e-12, msg="forward")
        assert_close(ld, total, atol=1e-10, rtol=1e-12, msg="forward log_det")
        w, total = y, 0.0
        for layer in reversed(layers):
            w, step = layer.inverse_and_log_det(w, c)
            total = total + step
        assert_close(x_back, w, atol=1e-10, rtol=1e-12, msg="inverse")
        assert_close(ld_inv, total, atol=1e-10, rtol=1e-12, msg="inverse log_det")
    assert y.shape == (2, 4, 3) and np.abs(np.asarray(y) - x).max() > 1e-2
    assert_close(x_back, np.broadcast_to(x, (2, 4, 3)), atol=1e-8, msg="round trip")


# --------------------------------------------------------------------------- 13. jit, vmap, grad


EAGER = [c for c in ALL if c.id in {"NICE-ctx2"}]


@pytest.mark.parametrize("case", EAGER, ids=_ids(EAGER))
def test_eager_equals_jit(case):
    """Outside jit (the probe runs everything under jit, vmap and grad) the results agree."""
    r, inputs = probe(case), _inputs(case)
    flow = build(case)
    c = None if inputs["c"] is None else jnp.asarray(inputs["c"])
    lp = flow(c).log_prob(jnp.asarray(inputs["y"]))
    assert_close(lp, r["log_prob"], atol=1e-12)
    y, ld = as_bijection(flow).forward_and_log_det(jnp.asarray(inputs["x"]), c)
    assert_close(y, r["forward"], atol=1e-12)
    assert_close(ld, r["forward_log_det"], atol=1e-12)
