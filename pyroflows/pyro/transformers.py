"""Elementwise monotone maps parameterised by a vector per feature ("transformers").

A transformer maps each feature ``x_i`` with its own parameter vector ``params[..., i, :]``.
Coupling and autoregressive bijections compute the parameters with a conditioner network
and hand them to a transformer. Every transformer is the identity at ``params = 0``, so a
conditioner whose last layer is zeroed gives a near-identity flow.

``forward(x, params)`` and ``inverse(y, params)`` both return the mapped value and the
*elementwise* log absolute derivative of the map they compute (same shape as ``x``).

The constants below are part of the cross-backend contract: the JAX backend uses the
same ones so that weights moved between backends give the same density.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pyroflows import _checks
from pyroflows._residual import (
    ELEMENT_SCALE,
    check_solve_options,
    default_atol,
)
from pyroflows.pyro.core import raise_unconverged, solve_bracketed

__all__ = [
    "Transformer",
    "AdditiveTransformer",
    "AffineTransformer",
    "SplineTransformer",
    "LogisticMixtureTransformer",
]

#: Smallest bin width and height of a spline, as a fraction of the interval ``2 * bound``.
MIN_BIN_SIZE = 1e-3
#: Smallest derivative of a spline at an interior knot.
MIN_DERIVATIVE = 1e-3
#: ``softplus(DERIVATIVE_SHIFT) == 1 - MIN_DERIVATIVE``: zero parameters give derivative 1.
DERIVATIVE_SHIFT = math.log(math.expm1(1.0 - MIN_DERIVATIVE))
#: Bound on the absolute log-scale of one logistic component of `LogisticMixtureTransformer`.
MIXTURE_LOG_SCALE_BOUND = 7.0
#: Weight of the identity mixed into `LogisticMixtureTransformer`'s map: its slope is at
#: least this (times ``exp(-bound)``), so that its inverse stays well conditioned.
MIXTURE_LINEAR_WEIGHT = 1e-3


def _large_log(dtype: torch.dtype) -> float:
    """A quarter of the log of the dtype's largest number: ``exp`` of it times a gradient
    stays finite (a flat mixture with ``linear=0`` can have a slope of ``exp(-800)``)."""
    return math.log(torch.finfo(dtype).max) / 4


def softplus(value: Tensor) -> Tensor:
    """``log(1 + exp(value))`` to full float64 precision: torch's default returns ``value``
    itself above 20, which is ``exp(-20) = 2e-9`` off (JAX's softplus is exact); above 40
    the difference is below float64's resolution."""
    return F.softplus(value, threshold=40.0)


def _inside_only(params: Tensor, inside: Tensor) -> Tensor:
    """``params`` where ``inside``, zeros (the identity spline) elsewhere: the spline branch of
    points in the identity tails then has finite values and gradients, whatever the params."""
    return torch.where(inside.unsqueeze(-1), params, 0.0)


def _safe_sqrt(value: Tensor) -> Tensor:
    """``sqrt(max(value, 0))`` with a zero gradient (not 0 / 0) where ``value <= 0``."""
    positive = value > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, value, 1.0)), 0.0)


def _nonnegative(value: Tensor) -> Tensor:
    """``max(value, 0)`` in value, with the gradient of ``value`` itself: a position in a bin
    that rounding put just past a knot is moved onto it (else the log-det's numerator can turn
    negative when the slope there is tiny) without zeroing the input gradient."""
    return value + (value.clamp_min(0) - value).detach()


class Transformer:
    """Abstract elementwise transformer.

    Attributes:
        params_per_feature: Length of the parameter vector of one feature.
    """

    params_per_feature: int

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Map ``x`` ``(..., D)`` with ``params`` ``(..., D, P)``; return ``(y, log|dy/dx|)``."""
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Undo `forward`; return ``(x, log|dx/dy|)``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class AdditiveTransformer(Transformer):
    """``y = x + shift`` (volume preserving, as in NICE). One parameter per feature.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> y, ld = pf.AdditiveTransformer().forward(torch.zeros(3), torch.ones(3, 1))
    """

    params_per_feature = 1

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return x + params[..., 0], torch.zeros_like(x)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return y - params[..., 0], torch.zeros_like(y)


class AffineTransformer(Transformer):
    """``y = x * exp(log_scale) + shift`` with a bounded log-scale.

    Parameters per feature: ``(shift, raw_log_scale)``; the log-scale is soft-clamped as
    ``bound * tanh(raw_log_scale / bound)``, so it stays in ``(-bound, bound)`` and the
    log-det stays finite whatever the conditioner outputs.

    Args:
        bound: Bound on the absolute log-scale of one layer.

    Examples:
        >>> import pyroflows.pyro as pf
        >>> transformer = pf.AffineTransformer(bound=3.0)
    """

    params_per_feature = 2

    def __init__(self, bound: float = 3.0) -> None:
        self.bound = _checks.check_positive("bound", bound)

    def _shift_and_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = params.unbind(-1)
        return shift, torch.tanh(raw / self.bound) * self.bound

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_and_log_scale(params)
        return torch.addcmul(shift, x, log_scale.exp()), log_scale

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_and_log_scale(params)
        return (y - shift) * torch.exp(-log_scale), -log_scale

    def __repr__(self) -> str:
        return f"AffineTransformer(bound={self.bound})"


class SplineTransformer(Transformer):
    """Monotone rational-quadratic spline on ``[-bound, bound]`` with identity tails.

    Durkan et al. (2019), "Neural Spline Flows". Parameters per feature:
    ``bins`` unnormalised widths, ``bins`` unnormalised heights and ``bins - 1`` unnormalised
    derivatives at the interior knots (``3 * bins - 1`` in all). Widths and heights go
    through a softmax and are floored at ``MIN_BIN_SIZE``; derivatives are
    ``MIN_DERIVATIVE + softplus(raw + DERIVATIVE_SHIFT)``, so zero parameters give equal bins
    with slope 1: the identity. The derivative at both ends is 1, so the spline joins the
    linear (identity) tails outside ``[-bound, bound]`` smoothly.

    Numerics: the inside branch is evaluated on inputs clamped into the interval, so inputs far
    outside it give no NaN (and no NaN gradients); the inverse's discriminant is written as a
    sum of two nonnegative terms, ``(d1 dy - d0 e)^2 + 4 s^2 dy e`` with ``dy`` and ``e`` the
    distances to the bin's knots (the textbook ``b^2 - 4ac`` cancels when a bin is much steeper
    than its end derivatives), and its root is taken in the form that does not cancel (the sign
    of the linear coefficient decides which), so it keeps float32 precision when a knot
    derivative is much larger than the bin's slope. The position inside a bin, off by rounding
    at a knot, is clamped to ``[0, 1]`` in value only (the gradient passes as if unclamped), so
    the log-det stays finite at the knots and the input gradient there is right. Points in the
    identity tails see zero parameters in the (discarded) spline branch, so extreme conditioner
    outputs give no NaN gradients there.

    Args:
        bins: Number of bins.
        bound: Half-width of the interval on which the spline acts.

    Examples:
        >>> import pyroflows.pyro as pf
        >>> transformer = pf.SplineTransformer(bins=8, bound=5.0)
        >>> transformer.params_per_feature
        23
    """

    def __init__(self, bins: int = 8, bound: float = 5.0) -> None:
        bins = _checks.check_int("bins", bins, 2)
        if MIN_BIN_SIZE * bins >= 1:
            raise ValueError(f"bins must be < {int(1 / MIN_BIN_SIZE)}, got {bins}")
        self.bins = bins
        self.bound = _checks.check_positive("bound", bound)
        self.params_per_feature = 3 * bins - 1

    def __repr__(self) -> str:
        return f"SplineTransformer(bins={self.bins}, bound={self.bound})"

    def _bin_table(self, params: Tensor, value: Tensor, row: int) -> Tensor:
        """Per element, the bin that ``value`` falls in, as ``(..., 6)``:
        ``(x_left, y_left, x_right, y_right, slope_left, slope_right)``.

        ``row`` 0 looks ``value`` up among the x-knots (forward), 1 among the y-knots.
        The interior knots are ``-bound + cumsum(sizes)`` (sizes floored at ``MIN_BIN_SIZE``
        of the interval); the end knots are exactly ``-bound`` and ``bound``, and a bin's
        right knot is its neighbour's left knot, so the bins tile the interval exactly.
        """
        k, b = self.bins, self.bound
        sizes = F.softmax(params[..., : 2 * k].unflatten(-1, (2, k)), dim=-1)
        sizes = sizes * (2 * b * (1 - MIN_BIN_SIZE * k)) + 2 * b * MIN_BIN_SIZE
        knots = torch.cumsum(sizes[..., :-1], dim=-1) - b  # (..., 2, bins - 1): interior
        end = knots.new_full((*knots.shape[:-1], 1), b)
        inner = softplus(params[..., 2 * k :] + DERIVATIVE_SHIFT) + MIN_DERIVATIVE
        slopes = F.pad(inner, (1, 1), value=1.0)
        table = torch.cat(
            [
                torch.cat([-end, knots], dim=-1),  # left knots, x and y
                torch.cat([knots, end], dim=-1),  # right knots
                slopes[..., :-1].unsqueeze(-2),
                slopes[..., 1:].unsqueeze(-2),
            ],
            dim=-2,
        )
        # the number of interior knots below value: the index lands in [0, bins)
        sorted_knots = knots[..., row, :].contiguous()
        index = torch.searchsorted(sorted_knots, value.unsqueeze(-1).contiguous())
        return table.gather(-1, index.unsqueeze(-2).expand(*index.shape[:-1], 6, 1)).squeeze(-1)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        b = self.bound
        inside = (x >= -b) & (x <= b)
        xc = x.clamp(-b, b)
        x0, y0, x1, y1, d0, d1 = self._bin_table(_inside_only(params, inside), xc, 0).unbind(-1)
        w, h = x1 - x0, y1 - y0
        s = h / w
        # the position in the bin from its nearer end: t from the left, u = 1 - t from the right
        t, u = (xc - x0) / w, (x1 - xc) / w
        right = t > 0.5
        t, u = torch.where(right, 1 - u, t), torch.where(right, u, 1 - t)
        t, u = _nonnegative(t), _nonnegative(u)
        t1 = t * u
        denom = s + (d0 + d1 - 2 * s) * t1
        y = torch.where(
            right, y1 - h * (s * u * u + d1 * t1) / denom, y0 + h * (s * t * t + d0 * t1) / denom
        )
        dnum = s * s * (d1 * t * t + 2 * s * t1 + d0 * u * u)
        log_det = torch.log(dnum) - 2 * torch.log(denom)
        return torch.where(inside, y, x), torch.where(inside, log_det, 0.0)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        b = self.bound
        inside = (y >= -b) & (y <= b)
        yc = y.clamp(-b, b)
        x0, y0, x1, y1, d0, d1 = self._bin_table(_inside_only(params, inside), yc, 1).unbind(-1)
        w, h = x1 - x0, y1 - y0
        s = h / w
        # the distances to both knots, and the quadratic's coefficients written with them so
        # that the large terms d0 * h do not cancel (they would for a steep left end)
        dy, e = yc - y0, y1 - yc
        c = d0 + d1 - 2 * s
        qa = s * (2 * e - h) + d1 * dy - d0 * e
        qb = d0 * e + (2 * s - d1) * dy
        qc = -s * dy
        # the discriminant qb^2 - 4 qa qc, written as a sum of two nonnegative terms (it
        # cancels badly in that form when a bin is much steeper than its end derivatives)
        root = _safe_sqrt((d1 * dy - d0 * e) ** 2 + 4 * s * s * dy * e)
        # The root t in [0, 1], written so that nothing cancels: for qb >= 0 as
        # 2 qc / (-qb - root) (both terms negative), else as (root - qb) / (2 qa) (both
        # positive; qa > 0 there). Near the bin's right end u = 1 - t is taken from the same
        # quadratic written in u (same discriminant), so t (1 - t) keeps its precision where
        # the log-det is most sensitive to it. Branches not taken get harmless denominators.
        positive = qb >= 0
        t = torch.where(
            positive,
            (2 * qc) / torch.where(positive, -qb - root, -1.0),
            (root - qb) / torch.where(positive, 1.0, 2 * qa),
        )
        mb = (2 * s - d0) * e + d1 * dy  # minus the linear coefficient in u
        cu = s * e  # the constant in u, >= 0
        positive = mb >= 0
        u = torch.where(
            positive,
            (2 * cu) / torch.where(positive, mb + root, 1.0),
            (mb - root) / torch.where(positive, 1.0, 2 * qa),
        )
        right = t > 0.5
        t, u = torch.where(right, 1 - u, t), torch.where(right, u, 1 - t)
        t, u = _nonnegative(t), _nonnegative(u)
        t1 = t * u
        denom = s + c * t1
        dnum = s * s * (d1 * t * t + 2 * s * t1 + d0 * u * u)
        log_det = 2 * torch.log(denom) - torch.log(dnum)
        x = torch.where(right, x1 - u * w, x0 + t * w)
        return torch.where(inside, x, y), torch.where(inside, log_det, 0.0)


class LogisticMixtureTransformer(Transformer):
    """Flow++'s transformer: the logit of a mixture-of-logistics CDF, then an affine map.

    Ho et al. (2019), "Flow++". Its explicit direction is `inverse`, the data -> base
    direction of every coupling and autoregressive layer (the one ``log_prob`` takes), as in
    Flow++: per feature ``z = g(y) exp(log_scale) + shift`` with
    ``g(y) = (1 - linear) logit(F(y)) + linear y`` and
    ``F(y) = sum_k w_k sigmoid((y - mu_k) / s_k)``; `forward` (sampling) solves it. The
    small share ``linear`` of the identity (default ``MIXTURE_LINEAR_WEIGHT = 1e-3``;
    Flow++ has 0) keeps the slope at least ``linear exp(-bound)``, as the spline's minimum
    derivative does, so that the solve stays well conditioned between far-apart, sharp
    components.

    Parameters per feature (``3 * components + 2``): ``(shift, raw_log_scale, logits,
    means, raw_log_scales)``, the last three ``components`` long. The weights are
    ``softmax(logits + linspace(-1, 1, components))``; the log-scales are soft-clamped with
    ``tanh``, ``log_scale`` to ``(-bound, bound)`` and ``log s_k`` to
    ``(-MIXTURE_LOG_SCALE_BOUND, MIXTURE_LOG_SCALE_BOUND)``. Zero parameters give the
    identity: every component is then the standard logistic, and
    ``logit(sigmoid(x)) = x`` whatever the weights. The fixed offsets of the logits make
    the components' gradients differ, so training moves them apart (from equal weights, as
    a zero-initialised conditioner gives, they would stay tied for ever). The map is
    strictly increasing and asymptotically linear in both tails, so it needs no interval and
    no identity tails; ``log F`` and ``log(1 - F)`` are log-sum-exps of log-sigmoids, finite
    for any input.

    `forward` has no closed form: it is Newton's method safeguarded by bisection, on a
    bracket that always holds the root (with ``v = (x - shift) exp(-log_scale)``, the
    roots of ``(1 - linear) (y - mu_k) / s_k + linear y = v`` over the components: the
    logit of a mixture of CDFs lies between its components' logits). An element is done
    when its last step is at most ``atol (1 + |y|)``; if one is not done in ``max_iter``
    iterations, `pyroflows.pyro.ConvergenceError` is raised, never an unconverged answer.
    The solve carries no graph: the answer gets its gradient (with respect to ``x`` and the
    parameters) from the implicit function theorem at the root.

    Args:
        components: Number of logistic components.
        bound: Bound on the absolute log-scale of the final affine map.
        linear: Share of the identity in the map, in ``[0, 1)``.
        atol: Tolerance of the solve, relative to ``1 + |y|`` (default ``64 * eps`` of
            the dtype).
        max_iter: Iterations of the solve before it raises.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> transformer = pf.LogisticMixtureTransformer(components=4)
        >>> transformer.params_per_feature
        14
        >>> params = torch.randn(5, 3, 14)
        >>> y, log_det = transformer.forward(torch.randn(5, 3), params)
        >>> x, _ = transformer.inverse(y, params)
    """

    def __init__(
        self,
        components: int = 4,
        bound: float = 3.0,
        *,
        linear: float = MIXTURE_LINEAR_WEIGHT,
        atol: float | None = None,
        max_iter: int = 100,
    ) -> None:
        self.components = _checks.check_int("components", components, 1)
        self.bound = _checks.check_positive("bound", bound)
        self.linear = _checks.check_fraction("linear", linear, 0.0, 1.0)
        self.atol, self.max_iter = check_solve_options(atol, max_iter)
        self.params_per_feature = 3 * self.components + 2

    def __repr__(self) -> str:
        return (
            f"LogisticMixtureTransformer(components={self.components}, bound={self.bound}, "
            f"linear={self.linear})"
        )

    def _unpack(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(shift, log_scale, log_weights, means, log_scales)`` of the components."""
        k, c = self.components, MIXTURE_LOG_SCALE_BOUND
        shift, log_scale = params[..., 0], self.bound * torch.tanh(params[..., 1] / self.bound)
        offsets = torch.linspace(-1.0, 1.0, k, dtype=params.dtype, device=params.device)
        log_weights = torch.log_softmax(params[..., 2 : 2 + k] + offsets, dim=-1)
        means = params[..., 2 + k : 2 + 2 * k]
        log_scales = c * torch.tanh(params[..., 2 + 2 * k :] / c)
        return shift, log_scale, log_weights, means, log_scales

    def _map(self, x: Tensor, log_weights: Tensor, means: Tensor, log_scales: Tensor):
        """``g(y) = (1 - lam) logit(F(y)) + lam y`` and ``log g'(y)`` (``lam = linear``)."""
        lam = self.linear
        z = (x.unsqueeze(-1) - means) * torch.exp(-log_scales)
        below, above = softplus(-z), softplus(z)  # -log sigmoid(z), -log sigmoid(-z)
        log_cdf = torch.logsumexp(log_weights - below, dim=-1)
        log_sf = torch.logsumexp(log_weights - above, dim=-1)
        log_pdf = torch.logsumexp(log_weights - below - above - log_scales, dim=-1)
        g = (1 - lam) * (log_cdf - log_sf) + lam * x
        log_slope = math.log1p(-lam) + log_pdf - log_cdf - log_sf
        if lam:
            log_slope = torch.logaddexp(log_slope, log_slope.new_tensor(math.log(lam)))
        return g, log_slope

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale, log_weights, means, log_scales = self._unpack(params)
        g, log_slope = self._map(y, log_weights, means, log_scales)
        return torch.addcmul(shift, g, log_scale.exp()), log_scale + log_slope

    def _solve(
        self, v: Tensor, log_weights: Tensor, means: Tensor, log_scales: Tensor, atol: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``y`` with ``g(y) = v`` by safeguarded Newton, without a graph; returns ``y``, the
        done flags and the last steps. The bracket: the roots of ``(1 - lam) z_k(y) + lam y
        = v`` for each component ``k`` (``z_k`` its standardised input), between which
        ``g`` crosses ``v``."""
        lam = self.linear
        with torch.no_grad():
            scales = torch.exp(log_scales)
            ends = ((1 - lam) * means + scales * v.unsqueeze(-1)) / ((1 - lam) + lam * scales)
            lo, hi = ends.amin(-1), ends.amax(-1)

        def newton_step(x: Tensor) -> tuple[Tensor, Tensor]:
            g, log_slope = self._map(x, log_weights, means, log_scales)
            f = g - v
            return f, f * torch.exp(-log_slope)

        return solve_bracketed(newton_step, (lo + hi) / 2, lo, hi, atol, self.max_iter)

    def forward(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale, log_weights, means, log_scales = self._unpack(params)
        v = (x - shift) * torch.exp(-log_scale)
        atol = default_atol(self.atol, torch.finfo(x.dtype).eps)
        y, done, step = self._solve(v, log_weights, means, log_scales, atol)
        raise_unconverged(
            done,
            step,
            self.max_iter,
            atol,
            owner=type(self).__name__,
            method="bisection solve",
            relative=ELEMENT_SCALE.replace("x", "y"),
            rows=False,
        )
        # the implicit-function gradient at the root, y itself unchanged in value
        g, log_slope = self._map(y, log_weights, means, log_scales)
        inverse_slope = torch.exp((-log_slope.detach()).clamp_max(_large_log(y.dtype)))
        step = (v - g) * inverse_slope
        y = y + (step - step.detach())
        _, log_slope = self._map(y, log_weights, means, log_scales)
        return y, -(log_scale + log_slope)
