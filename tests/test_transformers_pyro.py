"""Elementwise transformers (torch backend): identity at zero, inversion, derivatives, numerics."""

from __future__ import annotations

import math

import pytest
import torch

import pyroflows.pyro as pf
from pyroflows.pyro import transformers as tr

pytestmark = pytest.mark.usefixtures("float64", "seeded")

TRANSFORMERS = {
    "additive": lambda: pf.AdditiveTransformer(),
    "affine": lambda: pf.AffineTransformer(),
    "affine-bound1": lambda: pf.AffineTransformer(bound=1.0),
    "spline": lambda: pf.SplineTransformer(),
    "spline-4bins-bound2": lambda: pf.SplineTransformer(bins=4, bound=2.0),
    "spline-2bins": lambda: pf.SplineTransformer(bins=2, bound=1.0),
    "mixture": lambda: pf.LogisticMixtureTransformer(components=4),
    "mixture-1comp-bound1": lambda: pf.LogisticMixtureTransformer(components=1, bound=1.0),
}
NAMES = list(TRANSFORMERS)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inputs(shape=(50, 3), scale=4.0, seed=1) -> torch.Tensor:
    """Random points that fall both inside and outside the splines' intervals."""
    return scale * torch.randn(*shape, generator=gen(seed))


def random_params(transformer, shape, scale=1.0, seed=2) -> torch.Tensor:
    return scale * torch.randn(*shape, transformer.params_per_feature, generator=gen(seed))


def assert_inverts(x_back, x, y, log_det, atol=1e-10):
    """``x_back == x`` up to ``atol`` plus the error that rounding ``y`` alone causes.

    Where the map is very flat (slope ``exp(log_det)`` down to ~1e-6 for extreme splines),
    recovering ``x`` from ``y`` amplifies the unavoidable rounding of ``y`` by ``1 / slope``.
    """
    slack = 16 * torch.finfo(y.dtype).eps * (1 + y.abs()) * torch.exp(-log_det)
    err = (x_back - x).abs()
    bad = err > atol + slack
    assert not bad.any(), f"inversion error {err[bad].max():.3e} at x = {x[bad][:5]}"


def elementwise_log_derivative(fn, x: torch.Tensor) -> torch.Tensor:
    """log |d fn(x)_i / d x_i| for an elementwise ``fn``, by autograd."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(x).sum(), x)
    return grad.abs().log()


# --------------------------------------------------------------------------- generic contract


@pytest.mark.parametrize("name", NAMES)
def test_identity_at_zero_params(name):
    t = TRANSFORMERS[name]()
    x = inputs()
    params = torch.zeros(*x.shape, t.params_per_feature)
    y, ld = t.forward(x, params)
    assert y.shape == x.shape and ld.shape == x.shape
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld, torch.zeros_like(x), atol=1e-12, rtol=0)
    x_back, ld_inv = t.inverse(x, params)
    torch.testing.assert_close(x_back, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld_inv, torch.zeros_like(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", [0.5, 3.0], ids=["params-sd0.5", "params-sd3"])
@pytest.mark.parametrize("name", NAMES)
def test_round_trip(name, scale):
    t = TRANSFORMERS[name]()
    x = inputs()
    params = random_params(t, x.shape, scale)
    y, ld = t.forward(x, params)
    assert (y - x).abs().max() > 1e-2  # really not the identity
    x_back, ld_inv = t.inverse(y, params)
    assert_inverts(x_back, x, y, ld)
    torch.testing.assert_close(ld_inv, -ld, atol=1e-9, rtol=0)
    # and the other way round, starting from the data side: forward is well conditioned
    z, ld_z = t.inverse(x, params)
    x_again, ld_again = t.forward(z, params)
    torch.testing.assert_close(x_again, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ld_again, -ld_z, atol=1e-9, rtol=0)


@pytest.mark.parametrize("scale", [0.5, 3.0], ids=["params-sd0.5", "params-sd3"])
@pytest.mark.parametrize("name", NAMES)
def test_log_det_matches_autograd_derivative(name, scale):
    t = TRANSFORMERS[name]()
    x = inputs()
    params = random_params(t, x.shape, scale)
    _, ld = t.forward(x, params)
    expected = elementwise_log_derivative(lambda v: t.forward(v, params)[0], x)
    torch.testing.assert_close(ld, expected, atol=1e-9, rtol=0)
    _, ld_inv = t.inverse(x, params)
    expected_inv = elementwise_log_derivative(lambda v: t.inverse(v, params)[0], x)
    torch.testing.assert_close(ld_inv, expected_inv, atol=1e-9, rtol=0)


# --------------------------------------------------------------------------- affine


def test_additive_shifts():
    t = pf.AdditiveTransformer()
    x = inputs((5, 2))
    shift = torch.randn(5, 2, 1, generator=gen(3))
    y, ld = t.forward(x, shift)
    torch.testing.assert_close(y, x + shift[..., 0], atol=0, rtol=0)
    assert torch.count_nonzero(ld) == 0


@pytest.mark.parametrize("bound", [0.5, 3.0])
def test_affine_log_scale_is_bounded_for_huge_params(bound):
    t = pf.AffineTransformer(bound=bound)
    raw = torch.tensor([-1e300, -1e6, -1e3, -50.0, 50.0, 1e3, 1e6, 1e300])
    params = torch.stack([torch.ones_like(raw), raw], -1)
    x = torch.full_like(raw, 0.5)
    y, ld = t.forward(x, params)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    assert (ld.abs() <= bound).all()
    # saturates at the bound: |log-scale| -> bound
    torch.testing.assert_close(ld.abs()[[0, 1, -2, -1]], torch.full((4,), bound))
    torch.testing.assert_close(y, 1.0 + 0.5 * ld.exp(), atol=1e-12, rtol=1e-12)
    x_back, ld_inv = t.inverse(y, params)
    assert torch.isfinite(x_back).all()
    torch.testing.assert_close(x_back, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld_inv, -ld, atol=0, rtol=0)
    # gradients stay finite too
    params = params.clone().requires_grad_(True)
    y, ld = t.forward(x, params)
    (y.sum() + ld.sum()).backward()
    assert torch.isfinite(params.grad).all()


def test_affine_log_scale_is_soft_clamped_tanh():
    t = pf.AffineTransformer(bound=3.0)
    raw = torch.linspace(-20, 20, 41)
    _, ld = t.forward(torch.zeros(41), torch.stack([torch.zeros(41), raw], -1))
    torch.testing.assert_close(ld, 3.0 * torch.tanh(raw / 3.0), atol=1e-14, rtol=0)
    # near zero the log-scale is the raw parameter itself
    _, ld_small = t.forward(torch.zeros(1), torch.tensor([[0.0, 1e-4]]))
    assert ld_small.item() == pytest.approx(1e-4, rel=1e-8)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_affine_rejects_bad_bound(bad):
    with pytest.raises(ValueError, match="bound"):
        pf.AffineTransformer(bound=bad)


# --------------------------------------------------------------------------- spline numerics


def _extreme_params(t, shape, seed=4):
    """Random signs of 50 on every parameter: extreme widths, heights and slopes."""
    signs = torch.randint(0, 2, (*shape, t.params_per_feature), generator=gen(seed)) * 2 - 1
    return 50.0 * signs.to(torch.get_default_dtype())


SPLINE_PARAMS = {
    "random-sd1": lambda t, shape: random_params(t, shape, 1.0, seed=5),
    "random-sd5": lambda t, shape: random_params(t, shape, 5.0, seed=6),
    "extreme-pm50": _extreme_params,
    "all-plus50": lambda t, shape: torch.full((*shape, t.params_per_feature), 50.0),
    "all-minus50": lambda t, shape: torch.full((*shape, t.params_per_feature), -50.0),
    "slopes-pm50": lambda t, shape: torch.cat(
        [
            torch.zeros(*shape, 2 * t.bins),
            50.0 * (torch.arange(t.bins - 1) % 2 * 2 - 1).expand(*shape, t.bins - 1),
        ],
        -1,
    ),
}


def _spline_test_points(bound: float) -> torch.Tensor:
    special = torch.tensor(
        [
            -1e6,
            1e6,
            -bound,
            bound,
            0.0,
            math.nextafter(bound, 0.0),
            math.nextafter(-bound, 0.0),
            math.nextafter(bound, math.inf),
            math.nextafter(-bound, -math.inf),
            -1e-300,
            1e-300,
        ]
    )
    grid = torch.linspace(-1.5 * bound, 1.5 * bound, 301)
    random = 2 * bound * torch.randn(200, generator=gen(7))
    return torch.cat([special, grid, random])


def _knots(t: pf.SplineTransformer, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x- and y-knots (..., bins + 1) of the spline, from its documented parameterisation."""
    k, b = t.bins, t.bound
    sizes = torch.softmax(params[..., : 2 * k].unflatten(-1, (2, k)), dim=-1)
    sizes = sizes * (2 * b * (1 - tr.MIN_BIN_SIZE * k)) + 2 * b * tr.MIN_BIN_SIZE
    knots = torch.nn.functional.pad(torch.cumsum(sizes, -1), (1, 0)) - b
    return knots[..., 0, :], knots[..., 1, :]


SPLINES = {
    "bins8-bound5": (8, 5.0),
    "bins4-bound1": (4, 1.0),
    "bins16-bound3": (16, 3.0),
}


@pytest.mark.parametrize("params_name", list(SPLINE_PARAMS))
@pytest.mark.parametrize("spline", list(SPLINES))
def test_spline_numerics(spline, params_name):
    bins, bound = SPLINES[spline]
    t = pf.SplineTransformer(bins=bins, bound=bound)
    points = _spline_test_points(bound)
    n = points.numel()
    params = SPLINE_PARAMS[params_name](t, (n,)).clone()

    for direction in ("forward", "inverse"):
        step = t.forward if direction == "forward" else t.inverse
        x = points.clone().requires_grad_(True)
        p = params.clone().requires_grad_(True)
        y, ld = step(x, p)
        assert torch.isfinite(y).all(), f"{direction}: non-finite output"
        assert torch.isfinite(ld).all(), f"{direction}: non-finite log_det"
        (y.sum() + ld.sum()).backward()
        assert torch.isfinite(x.grad).all(), f"{direction}: non-finite input gradient"
        assert torch.isfinite(p.grad).all(), f"{direction}: non-finite parameter gradient"

        y, ld = y.detach(), ld.detach()
        outside = points.abs() > bound
        assert outside.any() and (~outside).any()
        # outside the interval: exactly the identity with log_det 0
        assert torch.equal(y[outside], points[outside])
        assert torch.count_nonzero(ld[outside]) == 0
        # inside: maps into the interval
        assert (y[~outside].abs() <= bound * (1 + 1e-12)).all()
        # the derivative is that of autograd (elementwise), away from the knots (there
        # see test_spline_input_gradient_at_knots_and_bound)
        derivative = elementwise_log_derivative(lambda v, step=step: step(v, params)[0], points)
        x_knots, y_knots = _knots(t, params)
        knots = x_knots if direction == "forward" else y_knots
        off_knot = (points.unsqueeze(-1) - knots).abs().min(-1).values > 1e-9
        assert off_knot.sum() > 0.9 * n
        torch.testing.assert_close(ld[off_knot], derivative[off_knot], atol=1e-8, rtol=1e-8)

    # inside the bound, forward and inverse agree
    inside = points.abs() <= bound
    y, ld = t.forward(points, params)
    x_back, ld_back = t.inverse(y, params)
    assert_inverts(x_back[inside], points[inside], y[inside], ld[inside])
    # the log-dets are each other's negatives at corresponding points (x_back, y); against
    # ld(x) only loosely, as ld may vary fast where the spline is flat
    torch.testing.assert_close(ld_back, -t.forward(x_back, params)[1], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ld_back, -ld, atol=1e-6, rtol=0)
    z, ld_z = t.inverse(points, params)
    y_back, _ = t.forward(z, params)
    torch.testing.assert_close(y_back[inside], points[inside], atol=1e-10, rtol=0)
    # the end points are fixed: f(+-bound) = +-bound
    ends = torch.tensor([-bound, bound])
    end_params = params[:2]
    torch.testing.assert_close(t.forward(ends, end_params)[0], ends, atol=1e-12, rtol=0)
    torch.testing.assert_close(t.inverse(ends, end_params)[0], ends, atol=1e-12, rtol=0)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_spline_input_gradient_at_knots_and_bound(direction):
    """At a knot and at +-bound the input gradient equals exp(log_det), not zero."""
    t = pf.SplineTransformer(bins=8, bound=5.0)
    params = torch.randn(64, t.params_per_feature, generator=gen(9))
    x_knots, y_knots = _knots(t, params)
    knots = x_knots if direction == "forward" else y_knots  # includes +-bound
    step = t.forward if direction == "forward" else t.inverse
    for j in range(t.bins + 1):
        points = knots[:, j].clone().requires_grad_(True)
        y, ld = step(points, params)
        (grad,) = torch.autograd.grad(y.sum(), points)
        torch.testing.assert_close(grad, ld.exp(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("params_name", list(SPLINE_PARAMS))
def test_spline_is_monotone_and_continuous(params_name):
    t = pf.SplineTransformer(bins=8, bound=3.0)
    x = torch.linspace(-4.0, 4.0, 40_001)
    params = SPLINE_PARAMS[params_name](t, ()).expand(x.numel(), -1)
    y, ld = t.forward(x, params)
    dy = y.diff()
    assert (dy > 0).all(), "the spline must be strictly increasing"
    # continuous, with a bounded slope: each step is below max slope times the spacing
    assert dy.max() <= ld.exp().max() * (x[1] - x[0]) * (1 + 1e-6)


@pytest.mark.parametrize("params_name", list(SPLINE_PARAMS))
def test_spline_knots_map_to_knots(params_name):
    t = pf.SplineTransformer(bins=6, bound=2.0)
    params = SPLINE_PARAMS[params_name](t, ()).expand(7, -1)
    x_knots, y_knots = _knots(t, params[0])
    y, _ = t.forward(x_knots, params)
    torch.testing.assert_close(y, y_knots, atol=1e-12, rtol=0)
    x, _ = t.inverse(y_knots, params)
    torch.testing.assert_close(x, x_knots, atol=1e-10, rtol=0)


@pytest.mark.parametrize("params_name", list(SPLINE_PARAMS))
def test_spline_inverse_discriminant_is_never_negative(params_name):
    """The inverse solves a quadratic per element; its discriminant is >= 0 in exact maths.

    Recomputed here from the documented parameterisation for points in every bin, it may be
    negative only at rounding level (which the transformer clamps).
    """
    t = pf.SplineTransformer(bins=8, bound=3.0)
    y = torch.cat([torch.linspace(-3.0, 3.0, 2001), 3 * torch.rand(500, generator=gen(8))])
    params = SPLINE_PARAMS[params_name](t, ()).expand(y.numel(), -1)
    x_knots, y_knots = _knots(t, params[0])
    index = (torch.searchsorted(y_knots[1:-1].contiguous(), y)).clamp(0, t.bins - 1)
    widths, heights = x_knots.diff()[index], y_knots.diff()[index]
    inner = torch.nn.functional.softplus(params[0, 2 * t.bins :] + tr.DERIVATIVE_SHIFT)
    slopes = torch.nn.functional.pad(inner + tr.MIN_DERIVATIVE, (1, 1), value=1.0)
    d0, d1 = slopes[index], slopes[index + 1]
    s = heights / widths
    dy = y - y_knots[index]
    c = d0 + d1 - 2 * s
    qa, qb, qc = heights * (s - d0) + dy * c, heights * d0 - dy * c, -s * dy
    disc = qb * qb - 4 * qa * qc
    scale = qb * qb + (4 * qa * qc).abs()
    assert (disc >= -1e-12 * scale).all(), f"most negative relative discriminant {disc.min()}"
    x, ld = t.inverse(y, params)
    assert torch.isfinite(x).all() and torch.isfinite(ld).all()


def test_spline_zero_params_give_unit_slopes():
    # the shift is such that softplus(DERIVATIVE_SHIFT) + MIN_DERIVATIVE == 1
    value = torch.nn.functional.softplus(torch.tensor(tr.DERIVATIVE_SHIFT)) + tr.MIN_DERIVATIVE
    assert value.item() == pytest.approx(1.0, abs=1e-15)


def test_spline_params_per_feature():
    assert pf.SplineTransformer(bins=8).params_per_feature == 23
    assert pf.SplineTransformer(bins=2).params_per_feature == 5


@pytest.mark.parametrize(
    "kwargs",
    [{"bins": 1}, {"bins": 1000}, {"bins": 2.5}, {"bins": True}, {"bound": 0.0}, {"bound": -2.0}],
    ids=str,
)
def test_spline_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        pf.SplineTransformer(**kwargs)


# --------------------------------------------------------------------------- mixture of logistics


def test_mixture_params_per_feature_and_rejects_bad_arguments():
    assert pf.LogisticMixtureTransformer(components=4).params_per_feature == 14
    assert pf.LogisticMixtureTransformer(components=1).params_per_feature == 5
    for kwargs in (
        {"components": 0},
        {"bound": 0.0},
        {"linear": -0.1},
        {"atol": -1.0},
        {"max_iter": 0},
    ):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            pf.LogisticMixtureTransformer(**kwargs)


def test_mixture_is_the_logit_of_the_mixture_cdf():
    t = pf.LogisticMixtureTransformer(components=3)
    x = inputs((20, 2))
    params = random_params(t, x.shape, 1.0)
    y, ld = t.inverse(x, params)  # the explicit direction: data -> base
    shift, raw = params[..., 0], params[..., 1]
    log_scale = 3.0 * torch.tanh(raw / 3.0)
    weights = torch.softmax(params[..., 2:5] + torch.tensor([-1.0, 0.0, 1.0]), -1)
    means, scales = params[..., 5:8], torch.exp(7.0 * torch.tanh(params[..., 8:11] / 7.0))
    cdf = (weights * torch.sigmoid((x.unsqueeze(-1) - means) / scales)).sum(-1)
    pdf = (weights * torch.sigmoid((x.unsqueeze(-1) - means) / scales).mul(
        torch.sigmoid(-(x.unsqueeze(-1) - means) / scales)) / scales).sum(-1)  # fmt: skip
    g = 0.999 * torch.logit(cdf) + 0.001 * x
    torch.testing.assert_close(y, g * log_scale.exp() + shift)
    torch.testing.assert_close(ld, log_scale + torch.log(0.999 * pdf / (cdf * (1 - cdf)) + 0.001))


def test_mixture_is_finite_far_out_with_finite_gradients():
    t = pf.LogisticMixtureTransformer(components=4)
    x = torch.tensor([-1e8, -1e3, -30.0, 0.0, 30.0, 1e3, 1e8]).requires_grad_(True)
    params = random_params(t, x.shape, 3.0).requires_grad_(True)
    y, ld = t.inverse(x, params)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    grads = torch.autograd.grad((y + ld).sum(), (x, params))
    assert all(torch.isfinite(g).all() for g in grads)
    x_back, ld_back = t.forward(y.detach(), params)
    assert torch.isfinite(x_back).all() and torch.isfinite(ld_back).all()
    # the far tails are linear: the map keeps its order there (1e8 is rounding-limited)
    assert (x_back.diff() > 0).all()


def test_mixture_solve_has_the_exact_gradient():
    # the solve (forward) carries no graph; the implicit function theorem gives the gradient
    t = pf.LogisticMixtureTransformer(components=3)
    x = inputs((4, 2), scale=2.0).requires_grad_(True)
    params = random_params(t, (4, 2), 1.0).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: t.forward(a, b), (x, params))


def test_mixture_solve_raises_when_it_does_not_converge():
    t = pf.LogisticMixtureTransformer(components=4, max_iter=2)
    y = inputs((10, 3))
    params = random_params(t, y.shape, 2.0)
    z, _ = t.inverse(y, params)
    with pytest.raises(pf.ConvergenceError, match=r"did not converge for \d+ of 30 elements"):
        t.forward(z, params)


def test_mixture_cdf_with_a_logistic_base_is_the_mixture_and_learns_two_modes():
    """The course's 1-D flow: with a standard logistic base the density is the mixture; fitted
    to bimodal data its components separate (the logit offsets break their symmetry)."""
    import pyro.distributions as dist

    base = dist.Logistic(torch.zeros(1), torch.ones(1)).to_event(1)
    data = torch.cat([torch.randn(600, 1, generator=gen(3)) * 0.3 - 2.0,
                      torch.randn(400, 1, generator=gen(4)) * 0.5 + 1.5])  # fmt: skip
    nll = {}
    for components in (1, 4):
        flow = pf.MixtureCDF(1, components=components, base=base)
        pf.fit(flow, data, epochs=40, batch_size=250, lr=5e-2, patience=None, progress=False)
        params = flow.transforms[0].params.detach()[0].clone()
        if components == 4:  # shift and log-scale are free, so compare with them zeroed
            with torch.no_grad():
                flow.transforms[0].params[0, :2] = 0.0
            t = flow.transforms[0].transformer
            _, _, log_weights, means, log_scales = t._unpack(params)
            by_hand = torch.logsumexp(
                log_weights
                + dist.Logistic(means, log_scales.exp()).log_prob(data[:50]),
                -1,
            )  # fmt: skip
            torch.testing.assert_close(flow().log_prob(data[:50]), by_hand)
            assert means.max() - means.min() > 2.0  # the components did move apart
            flow.transforms[0].params.data[0] = params
        with torch.no_grad():
            nll[components] = -flow().log_prob(data).mean().item()
    assert nll[4] < nll[1] - 0.3, nll
