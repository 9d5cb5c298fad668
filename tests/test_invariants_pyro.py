"""One parametrized invariant suite over every bijection and every recipe (torch backend).

Every case is built small (3 or 4 features, hidden (8,) or (8, 8), 2 transforms) and, unless
a test says otherwise, has all its parameters moved by N(0, 0.3) noise, so that the maps are
far from the near-identity initialisation (zeroed last layers would otherwise make every
check trivially pass on the identity). Numbers are compared in float64.

Invariants: round trip; log_det against the autograd Jacobian; inverse log_det equal to minus
forward; batch shapes and context broadcasting; gradients reach every parameter; triangular
Jacobian of autoregressive layers; one-pass log_prob equal to the two-pass / Pyro value;
sample-and-score cache; 1-D densities integrate to 1; save and load; near-identity init.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyro.distributions as dist
import pytest
import torch

import pyroflows.pyro as pf
from pyroflows import structure

pytestmark = pytest.mark.usefixtures("float64", "seeded")

# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """A flow to check: ``make()`` builds it fresh (deterministically, unperturbed)."""

    id: str
    make: Callable[[], pf.Flow]
    features: int
    context: int = 0
    unit_data: bool = False  # the data side (forward's output) is (0, 1), not the reals
    identity_at_init: bool = True
    volume_preserving: bool = False
    recipe: bool = False
    inexact: float = 0.0  # ODE solves: the solver's error, added to the round-trip tolerances

    def __repr__(self) -> str:
        return self.id


def _flow(*transforms: pf.Bijection) -> pf.Flow:
    return pf.Flow(list(transforms))


def _spline() -> pf.SplineTransformer:
    # a narrow bound, so that the test points hit both the spline and its identity tails
    return pf.SplineTransformer(bins=4, bound=2.5)


def _ma(transformer, invert, context=0, features=4, hidden=(8, 8), order=None):
    return pf.MaskedAutoregressive(
        features, context, transformer, hidden, invert=invert, order=order
    )


ORDER4 = np.array([2, 0, 3, 1])  # a non-trivial autoregressive order for 4 features

BIJECTIONS: list[Case] = []
for _name, _transformer in (("affine", pf.AffineTransformer), ("spline", _spline)):
    for _invert in (True, False):
        for _ctx in (0, 2):
            _order = ORDER4 if _ctx else None

            def _make(t=_transformer, inv=_invert, c=_ctx, o=_order):
                return _flow(_ma(t(), inv, c, order=o))

            _kind = "maf" if _invert else "iaf"
            BIJECTIONS.append(
                Case(f"MA-{_name}-{_kind}" + (f"-ctx{_ctx}" if _ctx else ""), _make, 4, _ctx)
            )
for _name, _transformer in (
    ("additive", pf.AdditiveTransformer),
    ("affine", pf.AffineTransformer),
    ("spline", _spline),
    ("mixture", lambda: pf.LogisticMixtureTransformer(components=3)),
):
    for _ctx in (0, 2):
        _features = 3 if _ctx else 4
        _mask = structure.alternating_mask(3, 1) if _ctx else None

        def _make(t=_transformer, c=_ctx, f=_features, m=_mask):
            return _flow(pf.Coupling(f, c, m, t(), hidden=(8,)))

        BIJECTIONS.append(
            Case(
                f"Coupling-{_name}" + (f"-ctx{_ctx}" if _ctx else ""),
                _make,
                _features,
                _ctx,
                volume_preserving=_name == "additive",
            )
        )
BIJECTIONS += [
    Case("ActNorm", lambda: _flow(pf.ActNorm(3)), 3),
    Case("Scale", lambda: _flow(pf.Scale(4)), 4),
    Case("LULinear", lambda: _flow(pf.LULinear(4)), 4),
    Case(
        "Permute",
        lambda: _flow(pf.Permute(4, seed=3)),
        4,
        identity_at_init=False,
        volume_preserving=True,
    ),
    Case(
        "Reverse", lambda: _flow(pf.Reverse(3)), 3, identity_at_init=False, volume_preserving=True
    ),
    Case("Logit", lambda: _flow(pf.Logit(3)), 3, unit_data=True, identity_at_init=False),
    Case(
        "Logit-alpha0.05",
        lambda: _flow(pf.Logit(3, alpha=0.05)),
        3,
        unit_data=True,
        identity_at_init=False,
    ),
    Case(
        "Chain",
        lambda: _flow(
            pf.Chain(
                [
                    pf.ActNorm(4),
                    _ma(pf.AffineTransformer(), True),
                    pf.LULinear(4),
                    pf.Coupling(4, transformer=_spline(), hidden=(8,)),
                    pf.Permute(4, seed=5),
                    pf.Scale(4),
                ]
            )
        ),
        4,
        identity_at_init=False,
    ),
    Case(
        "Chain-ctx2-logit",
        lambda: _flow(
            pf.Chain(
                [
                    _ma(_spline(), False, context=2, features=3, hidden=(8,)),
                    pf.Reverse(3),
                    pf.Coupling(3, 2, transformer=pf.AffineTransformer(), hidden=(8,)),
                    pf.Logit(3, alpha=0.01),
                ]
            )
        ),
        3,
        2,
        unit_data=True,
        identity_at_init=False,
    ),
    Case("Invert-MA-iaf", lambda: _flow(pf.Invert(_ma(pf.AffineTransformer(), False))), 4),
    Case(
        "Invert-MA-spline-maf-ctx2",
        lambda: _flow(pf.Invert(_ma(_spline(), True, context=2, order=ORDER4))),
        4,
        2,
    ),
    Case("Residual", lambda: _flow(pf.ResidualBlock(3, hidden=(8, 8), logdet="exact")), 3),
    Case(
        "Residual-invert-elu-ctx2",
        lambda: _flow(
            pf.ResidualBlock(3, 2, hidden=(8,), logdet="exact", invert=True, activation="elu")
        ),
        3,
        2,
    ),
    Case("Planar-invert-ctx2", lambda: _flow(pf.PlanarLayer(3, 2, (8,), invert=True)), 3, 2),
    Case("Radial-ctx2", lambda: _flow(pf.RadialLayer(3, 2, (8,))), 3, 2),
    Case(
        "Sylvester-orthogonal-columns2",
        lambda: _flow(pf.SylvesterLayer(3, kind="orthogonal", columns=2)),
        3,
    ),
    Case(
        "Sylvester-householder-invert-ctx2",
        lambda: _flow(
            pf.SylvesterLayer(3, 2, (8,), kind="householder", reflections=2, invert=True)
        ),
        3,
        2,
    ),
    Case(
        "Sylvester-triangular-reverse",
        lambda: _flow(pf.SylvesterLayer(4, kind="triangular", reverse=True)),
        4,
    ),
    Case(
        "Continuous-rk4-ctx2",
        lambda: _flow(pf.Continuous(3, 2, (8,), solver="rk4", steps=20)),
        3,
        2,
        inexact=1e-6,
    ),
]

RECIPES: list[Case] = []
for _name, _recipe, _kwargs in (
    ("NICE", pf.NICE, {}),
    ("RealNVP", pf.RealNVP, {}),
    ("NSF-autoregressive", pf.NSF, {"mode": "autoregressive", "bins": 4, "bound": 2.5}),
    ("NSF-coupling", pf.NSF, {"mode": "coupling", "bins": 4, "bound": 2.5}),
    ("MAF", pf.MAF, {}),
    ("IAF", pf.IAF, {}),
    ("ResidualFlow", pf.ResidualFlow, {"logdet": "exact"}),
    ("Planar", pf.Planar, {}),
    ("Radial", pf.Radial, {}),
    ("Sylvester", pf.Sylvester, {}),
    ("FFJORD", pf.FFJORD, {"solver": "rk4", "steps": 16}),
):
    for _ctx in (0, 2):
        _features = 3 if _ctx else 4
        _hidden = (8,) if _ctx else (8, 8)

        def _make(r=_recipe, f=_features, c=_ctx, h=_hidden, kw=_kwargs):
            return r(f, c, transforms=2, hidden=h, **kw)

        RECIPES.append(
            Case(
                f"{_name}" + (f"-ctx{_ctx}" if _ctx else ""),
                _make,
                _features,
                _ctx,
                recipe=True,
                inexact=1e-5 if _name == "FFJORD" else 0.0,
            )
        )

RECIPES += [
    Case("MixtureCDF", lambda: pf.MixtureCDF(4, components=3), 4, recipe=True),
    Case("MixtureCDF-ctx2", lambda: pf.MixtureCDF(3, 2, 3, hidden=(8,)), 3, 2, recipe=True),
]

ALL = BIJECTIONS + RECIPES
CONDITIONAL = [c for c in ALL if c.context]


def _ids(cases):
    return [c.id for c in cases]


def _autoregressive_layers(flow: pf.Flow):
    """``(bijection, order, one-pass direction)`` of every autoregressive layer of ``flow``."""
    found = []

    def visit(t, flipped):
        if isinstance(t, pf.MaskedAutoregressive):
            one_pass = "inverse" if t.invert != flipped else "forward"
            found.append((t, t.order, one_pass, flipped))
        elif isinstance(t, pf.Invert):
            visit(t.bijection, not flipped)
        elif isinstance(t, pf.Chain):
            for member in t.transforms:
                visit(member, flipped)

    for t in flow.transforms:
        visit(t, False)
    return found


AUTOREGRESSIVE = [c for c in ALL if _autoregressive_layers(c.make())]

# --------------------------------------------------------------------------- helpers


def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Add N(0, scale^2) noise to every parameter (data-initialising ActNorm layers first)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, pf.ActNorm):
                data = 2.0 + 3.0 * torch.randn(64, m.features, generator=generator)
                m.initialize(data)
                assert bool(m.initialized)
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    for m in module.modules():  # the power-iteration vectors of the moved weights
        if isinstance(m, pf.nn.LipschitzLinear):
            m.power_iterate()
    return module


def build(case: Case, perturbed: bool = True) -> pf.Flow:
    flow = case.make()
    assert all(p.dtype == torch.float64 for p in flow.parameters())
    return perturb(flow) if perturbed else flow


def as_bijection(flow: pf.Flow) -> pf.Bijection:
    transforms = list(flow.transforms)
    return transforms[0] if len(transforms) == 1 else pf.Chain(transforms)


def gen(seed: int = 1234) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def base_points(case: Case, batch=(6,), g=None) -> torch.Tensor:
    """Points on the base side (inputs of forward): reals."""
    g = g or gen(1)
    return 1.5 * torch.randn(*batch, case.features, generator=g)


def data_points(case: Case, batch=(6,), g=None) -> torch.Tensor:
    """Points on the data side (inputs of inverse): (0, 1) for Logit cases, else reals."""
    g = g or gen(2)
    if case.unit_data:
        return 0.02 + 0.96 * torch.rand(*batch, case.features, generator=g)
    return 2.0 * torch.randn(*batch, case.features, generator=g)


def context_points(case: Case, batch=(6,), g=None) -> torch.Tensor | None:
    if not case.context:
        return None
    g = g or gen(3)
    return torch.randn(*batch, case.context, generator=g)


def standard_normal(features: int):
    return dist.Normal(torch.zeros(features), torch.ones(features)).to_event(1)


def assert_close(actual, expected, atol, rtol=0.0, msg=""):
    actual = torch.as_tensor(actual)
    expected = torch.as_tensor(expected)
    assert actual.shape == expected.shape, f"{msg}: shapes {actual.shape} vs {expected.shape}"
    assert torch.isfinite(actual).all(), f"{msg}: non-finite values {actual}"
    err = (actual - expected).abs().max().item() if actual.numel() else 0.0
    bound = atol + rtol * expected.abs().max().item() if expected.numel() else atol
    assert err <= bound, f"{msg}: max abs error {err:.3e} > {bound:.1e}"


# --------------------------------------------------------------------------- 1. round trip


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_round_trip(case):
    t = as_bijection(build(case))
    x = base_points(case, (16,))
    y_data = data_points(case, (16,))
    context = context_points(case, (16,))

    y, _ = t.forward_and_log_det(x, context)
    x_back, _ = t.inverse_and_log_det(y, context)
    if case.identity_at_init:  # the perturbation moved the map far from the identity
        assert (y - x).abs().max() > 1e-2
    assert_close(x_back, x, atol=max(1e-9, case.inexact), msg="inverse(forward(x))")

    x_of_y, _ = t.inverse_and_log_det(y_data, context)
    y_back, _ = t.forward_and_log_det(x_of_y, context)
    assert_close(y_back, y_data, atol=max(1e-9, case.inexact), msg="forward(inverse(y))")


# --------------------------------------------------------------------------- 2. log_det vs autograd


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_log_det_matches_autograd_jacobian(case):
    t = as_bijection(build(case))
    xs = base_points(case, (3,))
    ys = data_points(case, (3,))
    contexts = context_points(case, (3,))
    for i in range(3):
        c = None if contexts is None else contexts[i]
        for direction, point in (("forward", xs[i]), ("inverse", ys[i])):
            step = t.forward_and_log_det if direction == "forward" else t.inverse_and_log_det
            jac = torch.autograd.functional.jacobian(lambda v, step=step, c=c: step(v, c)[0], point)
            assert jac.shape == (case.features, case.features)
            sign, logabsdet = torch.linalg.slogdet(jac)
            assert sign != 0
            _, log_det = step(point, c)
            assert log_det.shape == ()
            assert_close(
                log_det,
                logabsdet,
                atol=max(1e-8, case.inexact),
                msg=f"{direction} log_det at point {i}",
            )


# --------------------------------------------------------------------------- 3. inverse log_det


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_inverse_log_det_is_minus_forward(case):
    t = as_bijection(build(case))
    x = base_points(case, (16,))
    context = context_points(case, (16,))
    y, fwd = t.forward_and_log_det(x, context)
    _, inv = t.inverse_and_log_det(y, context)
    assert_close(inv, -fwd, atol=max(1e-9, case.inexact), msg="inverse log_det at y = forward(x)")
    if case.volume_preserving:
        assert torch.count_nonzero(fwd) == 0
    else:
        assert fwd.abs().max() > 1e-3  # the perturbed map changes volume

    # the Pyro Transform interface: uncached log_abs_det_jacobian (fresh tensors) agrees
    pyro_t = t.condition(context) if case.context else t
    assert_close(pyro_t.log_abs_det_jacobian(x.clone(), y.clone()), fwd, atol=1e-12)
    assert_close(pyro_t(x), y, atol=1e-12, msg="Transform.__call__")
    assert_close(pyro_t.inv(y.clone()), t.inverse_and_log_det(y, context)[0], atol=1e-12)


# --------------------------------------------------------------------------- 4. shapes


@pytest.mark.parametrize("batch", [(), (1,), (4,), (2, 3)], ids=str)
@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_batch_shapes(case, batch):
    t = as_bijection(build(case))
    x = base_points(case, batch)
    y_in = data_points(case, batch)
    context = context_points(case, batch)
    y, ld = t.forward_and_log_det(x, context)
    assert y.shape == (*batch, case.features)
    assert ld.shape == batch
    x_out, ld_inv = t.inverse_and_log_det(y_in, context)
    assert x_out.shape == (*batch, case.features)
    assert ld_inv.shape == batch
    # each batch element is computed on its own
    flat_x, flat_y = x.reshape(-1, case.features), y_in.reshape(-1, case.features)
    flat_c = None if context is None else context.reshape(-1, case.context)
    for i in range(flat_x.shape[0]):
        c = None if flat_c is None else flat_c[i]
        yi, ldi = t.forward_and_log_det(flat_x[i], c)
        assert_close(yi, y.reshape(-1, case.features)[i], atol=1e-12)
        assert_close(ldi, ld.reshape(-1)[i], atol=1e-12)
        xi, ldii = t.inverse_and_log_det(flat_y[i], c)
        assert_close(xi, x_out.reshape(-1, case.features)[i], atol=1e-12)
        assert_close(ldii, ld_inv.reshape(-1)[i], atol=1e-12)


@pytest.mark.parametrize(
    "x_batch, c_batch",
    [((4,), ()), ((), (4,)), ((3,), (2, 1)), ((2, 1), (3,))],
    ids=["x4-c()", "x()-c4", "x3-c2x1", "x2x1-c3"],
)
@pytest.mark.parametrize("case", CONDITIONAL, ids=_ids(CONDITIONAL))
def test_context_broadcasting(case, x_batch, c_batch):
    flow = build(case)
    t = as_bijection(flow)
    batch = torch.broadcast_shapes(x_batch, c_batch)
    x = base_points(case, x_batch)
    y_in = data_points(case, x_batch)
    context = context_points(case, c_batch)
    x_full = x.expand(*batch, case.features)
    y_full = y_in.expand(*batch, case.features)
    c_full = context.expand(*batch, case.context)
    for step, inputs, full in (
        (t.forward_and_log_det, x, x_full),
        (t.inverse_and_log_det, y_in, y_full),
    ):
        out, ld = step(inputs, context)
        out_full, ld_full = step(full, c_full)
        assert out.shape == (*batch, case.features)
        assert ld.shape == batch
        assert_close(out, out_full, atol=1e-12)
        assert_close(ld, ld_full, atol=1e-12)
    # and through the distribution
    lp = flow(context).log_prob(y_in)
    lp_full = flow(c_full).log_prob(y_full)
    assert lp.shape == batch
    assert_close(lp, lp_full, atol=1e-12)


# --------------------------------------------------------------------------- 5. gradients


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_gradients_reach_every_parameter(case):
    flow = build(case)
    x = data_points(case, (32,)).requires_grad_(True)
    context = context_points(case, (32,))
    lp = flow(context).log_prob(x)
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    named = list(flow.named_parameters())
    for name, p in named:
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().max() > 0, f"{name} has an all-zero gradient"
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    if case.id not in {"Permute", "Reverse", "Logit", "Logit-alpha0.05"}:
        assert named, "a parameterised case reports no parameters"


# --------------------------------------------------------------------------- 6. triangular Jacobian


@pytest.mark.parametrize("case", AUTOREGRESSIVE, ids=_ids(AUTOREGRESSIVE))
def test_autoregressive_jacobian_is_triangular(case):
    flow = build(case)
    layers = _autoregressive_layers(flow)
    assert layers
    if case.recipe:  # recipes take the seeded orders of structure.recipe_orders
        orders = structure.recipe_orders(case.features, len(layers))
        for (_, order, _, _), expected in zip(layers, orders, strict=True):
            np.testing.assert_array_equal(order, expected)
    x = base_points(case, (2,))
    contexts = context_points(case, (2,))
    for layer, order, one_pass, _ in layers:
        position_to_feature = np.argsort(order)  # feature at each autoregressive position
        idx = torch.as_tensor(position_to_feature)
        for i in range(2):
            c = None if contexts is None or not layer.context_features else contexts[i]
            for direction in ("forward", "inverse"):
                step = (
                    layer.forward_and_log_det
                    if direction == "forward"
                    else layer.inverse_and_log_det
                )
                jac = torch.autograd.functional.jacobian(
                    lambda v, step=step, c=c: step(v, c)[0], x[i]
                )
                permuted = jac[idx][:, idx]
                upper = torch.triu(permuted, diagonal=1)
                assert torch.count_nonzero(upper) == 0, (
                    f"{direction} ({'one pass' if direction == one_pass else 'sequential'}): "
                    f"entries above the diagonal in the autoregressive order:\n{permuted}"
                )
                assert (torch.diagonal(permuted) != 0).all()
                # the conditioner is really used: something below the diagonal is nonzero
                assert torch.count_nonzero(torch.tril(permuted, diagonal=-1)) > 0


def test_autoregressive_order_is_used():
    """The Jacobian's sparsity pattern is exactly the one ``order`` prescribes.

    tanh units never die, so every allowed dependence is really there (nonzero)."""
    layer = perturb(
        pf.MaskedAutoregressive(
            4, 0, pf.AffineTransformer(), (8, 8), order=ORDER4, activation="tanh"
        )
    )
    x = base_points(BIJECTIONS[0], ())
    jac = torch.autograd.functional.jacobian(lambda v: layer.forward_and_log_det(v)[0], x)
    # y_i depends on x_j exactly when j comes no later than i in the order
    allowed = torch.as_tensor(ORDER4[None, :] <= ORDER4[:, None])
    assert torch.equal(jac != 0, allowed), f"{jac}"


# --------------------------------------------------------------------------- 7. one-pass log_prob


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_log_prob_one_pass_equals_two_pass(case):
    flow = build(case)
    x = data_points(case, (8,))
    context = context_points(case, (8,))
    lp = flow(context).log_prob(x)
    assert lp.shape == (8,)

    # by hand: inverse through every layer, summing the log-dets
    z, total = x, torch.zeros(8)
    for t in reversed(list(flow.transforms)):
        z, ld = t.inverse_and_log_det(z, context if t.context_features else None)
        total = total + ld
    base = standard_normal(case.features)
    assert_close(lp, base.log_prob(z) + total, atol=1e-10, msg="by hand")

    # Pyro's TransformedDistribution with the bijections (conditioned where conditional)
    transforms = [t.condition(context) if t.context_features else t for t in flow.transforms]
    pyro_lp = dist.TransformedDistribution(base, transforms).log_prob(x.clone())
    assert_close(lp, pyro_lp, atol=1e-10, msg="pyro TransformedDistribution")
    if case.identity_at_init:  # not simply the base density
        assert (lp - base.log_prob(x)).abs().max() > 1e-3


# --------------------------------------------------------------------------- 8. sample-and-score


SAMPLE_SETUPS = [
    (c, batched) for c in RECIPES for batched in ((False, True) if c.context else (False,))
]


@pytest.mark.parametrize(
    "case, batched_context",
    SAMPLE_SETUPS,
    ids=[c.id + ("-context-batch5" if b else "") for c, b in SAMPLE_SETUPS],
)
def test_sample_and_score_cache(case, batched_context):
    flow = build(case)
    context = context_points(case, (5,) if batched_context else ())
    d = flow(context)
    x = d.rsample(() if batched_context else (5,))
    assert x.shape == (5, case.features) and torch.isfinite(x).all()
    cached = d.log_prob(x)
    uncached = d.log_prob(x.clone())
    assert cached.shape == (5,)
    assert_close(cached, uncached, atol=max(1e-8, case.inexact), msg="cached vs uncached")
    # sample_and_log_prob agrees as well
    x2, lp2 = d.sample_and_log_prob((3,))
    assert_close(lp2, d.log_prob(x2.clone()), atol=max(1e-8, case.inexact))


# --------------------------------------------------------------------------- 9. 1-D densities


def _logit_chain():
    return pf.Flow([pf.MaskedAutoregressive(1, 0, pf.AffineTransformer(), (8,)), pf.Logit(1, 0.1)])


ONE_D = [
    ("MAF", lambda: pf.MAF(1, transforms=2, hidden=(8,)), None, (-30.0, 30.0)),
    ("IAF", lambda: pf.IAF(1, transforms=2, hidden=(8,)), None, (-30.0, 30.0)),
    (
        "NSF-autoregressive",
        lambda: pf.NSF(1, transforms=2, hidden=(8,), bins=4, bound=2.5),
        None,
        (-30.0, 30.0),
    ),
    (
        "MA-spline-ctx1",
        lambda: pf.Flow(
            [pf.MaskedAutoregressive(1, 1, _spline(), (8, 8), invert=True) for _ in range(2)]
        ),
        0.7,
        (-30.0, 30.0),
    ),
    ("Logit", lambda: pf.Flow([pf.Logit(1)]), None, (0.0, 1.0)),
    # alpha = 0.1 widens the support to (-alpha, 1 - alpha) / (1 - 2 alpha) = (-0.125, 1.125)
    ("MA-then-Logit-alpha0.1", _logit_chain, None, (-0.125, 1.125)),
]


@pytest.mark.parametrize(
    "make, context, support", [c[1:] for c in ONE_D], ids=[c[0] for c in ONE_D]
)
def test_one_dimensional_density_integrates_to_one(make, context, support):
    flow = perturb(make())
    flow.eval()
    lo, hi = support
    grid = torch.linspace(lo, hi, 200_001)
    if lo == 0.0 or lo == -0.125:  # open interval: drop the end points
        grid = grid[1:-1]
    ctx = None if context is None else torch.full((1,), context)
    with torch.no_grad():
        lp = flow(ctx).log_prob(grid.unsqueeze(-1))
    assert torch.isfinite(lp).all()
    density = lp.exp()
    total = torch.trapezoid(density, grid).item()
    assert abs(total - 1.0) < 1e-4, f"integral {total}"
    # the perturbation made it something other than a standard normal / logit-normal
    if lo == -30.0:
        reference = torch.trapezoid(
            (density - standard_normal(1).log_prob(grid[:, None]).exp()).abs(), grid
        )
        assert reference > 1e-2


# --------------------------------------------------------------------------- 10. save / load


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_save_and_load(case):
    flow = build(case)
    x = data_points(case, (8,))
    context = context_points(case, (8,))
    expected = flow(context).log_prob(x)
    parameterised = any(True for _ in flow.parameters())

    fresh = build(case, perturbed=False)
    if parameterised:
        assert (fresh(context).log_prob(x) - expected).abs().max() > 1e-3
    fresh = build(case, perturbed=False)
    fresh.load_state_dict(flow.state_dict())
    # a batch with other statistics: an ActNorm layer must not initialise itself again
    x_other = x * 0.5 + 0.01 if case.unit_data else 3.0 * x - 1.0
    assert torch.equal(fresh(context).log_prob(x), expected)
    assert torch.equal(fresh(context).log_prob(x_other), flow(context).log_prob(x_other))

    again = pf.set_params(build(case, perturbed=False), pf.get_params(flow))
    assert torch.equal(again(context).log_prob(x_other), flow(context).log_prob(x_other))
    assert torch.equal(again(context).log_prob(x), expected)


# --------------------------------------------------------------------------- 11. identity at init


IDENTITY = [c for c in ALL if c.identity_at_init]


@pytest.mark.parametrize("case", IDENTITY, ids=_ids(IDENTITY))
def test_near_identity_at_initialisation(case):
    flow = build(case, perturbed=False)
    t = as_bijection(flow)
    x = base_points(case, (10,))
    context = context_points(case, (10,))
    y, ld = t.forward_and_log_det(x, context)
    assert_close(y, x, atol=1e-12, msg="forward(x) at init")
    assert_close(ld, torch.zeros(10), atol=1e-12, msg="log_det at init")
    flow.eval()  # an ActNorm layer must not initialise itself from this batch
    x_back, ld_inv = t.inverse_and_log_det(x, context)
    assert_close(x_back, x, atol=1e-12, msg="inverse(x) at init")
    assert_close(ld_inv, torch.zeros(10), atol=1e-12)
    lp = flow(context).log_prob(x)
    assert_close(lp, standard_normal(case.features).log_prob(x), atol=1e-12)


# --------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("case", RECIPES, ids=_ids(RECIPES))
def test_recipe_on_cuda_matches_cpu(case):
    flow = build(case)
    x = data_points(case, (16,))
    context = context_points(case, (16,))
    expected = flow(context).log_prob(x)
    gpu = flow.to("cuda")
    lp = gpu(None if context is None else context.cuda()).log_prob(x.cuda())
    assert lp.is_cuda
    assert_close(lp.cpu(), expected, atol=1e-5)
    d = gpu(None if context is None else context[0].cuda())
    sample = d.sample((7,))
    assert sample.is_cuda and sample.shape == (7, case.features)
    assert torch.isfinite(sample).all()
    assert torch.isfinite(d.log_prob(sample.clone())).all()
