"""Elementwise monotone maps parameterised by a vector per feature ("transformers").

The JAX twin of `pyroflows.pyro.transformers`: the same maps, constants and parameter
layouts, so that weights moved between backends give the same density. A transformer maps
each feature ``x_i`` with its own parameter vector ``params[..., i, :]`` and is the
identity at ``params = 0``. ``forward(x, params)`` and ``inverse(y, params)`` return the
mapped value and the *elementwise* log absolute derivative of the map they compute.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from pyroflows import _checks
from pyroflows._residual import (
    ELEMENT_SCALE,
    check_solve_options,
    default_atol,
)
from pyroflows.numpyro.core import check_converged, solve_bracketed

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
#: Weight of the identity mixed into `LogisticMixtureTransformer`'s map (its minimum slope,
#: times ``exp(-bound)``).
MIXTURE_LINEAR_WEIGHT = 1e-3


def _inside_only(params: Array, inside: Array) -> Array:
    """``params`` where ``inside``, zeros (the identity spline) elsewhere: the spline branch of
    points in the identity tails then has finite values and gradients, whatever the params."""
    return jnp.where(inside[..., None], params, 0.0)


def _safe_sqrt(value: Array) -> Array:
    """``sqrt(max(value, 0))`` with a zero gradient (not 0 / 0) where ``value <= 0``."""
    positive = value > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, value, 1.0)), 0.0)


def _nonnegative(value: Array) -> Array:
    """``max(value, 0)`` in value, with the gradient of ``value`` itself (as in the torch
    backend): rounding past a knot is undone without zeroing the input gradient."""
    return value + jax.lax.stop_gradient(jnp.maximum(value, 0.0) - value)


class Transformer(eqx.Module):
    """Abstract elementwise transformer (an equinox module without arrays).

    Attributes:
        params_per_feature: Length of the parameter vector of one feature.
    """

    def forward(self, x: Array, params: Array) -> tuple[Array, Array]:
        """Map ``x`` ``(..., D)`` with ``params`` ``(..., D, P)``; return ``(y, log|dy/dx|)``."""
        raise NotImplementedError

    def inverse(self, y: Array, params: Array) -> tuple[Array, Array]:
        """Undo `forward`; return ``(x, log|dx/dy|)``."""
        raise NotImplementedError


class AdditiveTransformer(Transformer):
    """``y = x + shift`` (volume preserving, as in NICE). One parameter per feature.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> y, ld = pfj.AdditiveTransformer().forward(jnp.zeros(3), jnp.ones((3, 1)))
    """

    params_per_feature = 1

    def forward(self, x: Array, params: Array) -> tuple[Array, Array]:
        return x + params[..., 0], jnp.zeros_like(x)

    def inverse(self, y: Array, params: Array) -> tuple[Array, Array]:
        return y - params[..., 0], jnp.zeros_like(y)


class AffineTransformer(Transformer):
    """``y = x * exp(log_scale) + shift`` with a bounded log-scale.

    Parameters per feature: ``(shift, raw_log_scale)``; the log-scale is
    ``bound * tanh(raw_log_scale / bound)``, inside ``(-bound, bound)``.

    Args:
        bound: Bound on the absolute log-scale of one layer.

    Examples:
        >>> import pyroflows.numpyro as pfj
        >>> transformer = pfj.AffineTransformer(bound=3.0)
    """

    params_per_feature = 2
    bound: float = eqx.field(static=True)

    def __init__(self, bound: float = 3.0) -> None:
        self.bound = _checks.check_positive("bound", bound)

    def _shift_and_log_scale(self, params: Array) -> tuple[Array, Array]:
        shift, raw = params[..., 0], params[..., 1]
        return shift, jnp.tanh(raw / self.bound) * self.bound

    def forward(self, x: Array, params: Array) -> tuple[Array, Array]:
        shift, log_scale = self._shift_and_log_scale(params)
        return x * jnp.exp(log_scale) + shift, log_scale

    def inverse(self, y: Array, params: Array) -> tuple[Array, Array]:
        shift, log_scale = self._shift_and_log_scale(params)
        return (y - shift) * jnp.exp(-log_scale), -log_scale


class SplineTransformer(Transformer):
    """Monotone rational-quadratic spline on ``[-bound, bound]`` with identity tails.

    Durkan et al. (2019). Parameters per feature: ``bins`` unnormalised widths, ``bins``
    unnormalised heights and ``bins - 1`` unnormalised interior derivatives (``3 * bins - 1``);
    zero parameters give the identity. Same numerics as the torch backend: inputs are clamped
    into the interval for the inside branch (no NaN far outside; the slope at exactly +-bound is
    the spline's, 1), the inverse's discriminant is a sum of two nonnegative terms and its root
    is taken in the form that does not cancel, the position inside a bin is clamped to
    ``[0, 1]`` in value only (finite log-dets and the right gradient at a knot), and points in the
    identity tails see zero parameters in the spline branch (no NaN gradients from extreme
    conditioner outputs).

    Args:
        bins: Number of bins.
        bound: Half-width of the interval on which the spline acts.

    Examples:
        >>> import pyroflows.numpyro as pfj
        >>> pfj.SplineTransformer(bins=8, bound=5.0).params_per_feature
        23
    """

    bins: int = eqx.field(static=True)
    bound: float = eqx.field(static=True)

    def __init__(self, bins: int = 8, bound: float = 5.0) -> None:
        bins = _checks.check_int("bins", bins, 2)
        if MIN_BIN_SIZE * bins >= 1:
            raise ValueError(f"bins must be < {int(1 / MIN_BIN_SIZE)}, got {bins}")
        self.bins = bins
        self.bound = _checks.check_positive("bound", bound)

    @property
    def params_per_feature(self) -> int:
        """``3 * bins - 1``."""
        return 3 * self.bins - 1

    def _bin_table(self, params: Array, value: Array, row: int) -> Array:
        """Per element, ``(x_left, y_left, x_right, y_right, slope_left, slope_right)`` of the
        bin that ``value`` falls in; ``row`` 0 looks among the x-knots, 1 among the y-knots.
        The end knots are exactly ``-bound`` and ``bound`` and a bin's right knot is its
        neighbour's left knot (as in the torch backend)."""
        k, b = self.bins, self.bound
        raw = params[..., : 2 * k].reshape(*params.shape[:-1], 2, k)
        sizes = jax.nn.softmax(raw, axis=-1)
        sizes = sizes * (2 * b * (1 - MIN_BIN_SIZE * k)) + 2 * b * MIN_BIN_SIZE
        knots = jnp.cumsum(sizes[..., :-1], axis=-1) - b  # (..., 2, bins - 1): interior
        end = jnp.full((*knots.shape[:-1], 1), b, knots.dtype)
        inner = jax.nn.softplus(params[..., 2 * k :] + DERIVATIVE_SHIFT) + MIN_DERIVATIVE
        ones = jnp.ones_like(inner[..., :1])
        slopes = jnp.concatenate([ones, inner, ones], axis=-1)
        table = jnp.concatenate(
            [
                jnp.concatenate([-end, knots], axis=-1),  # left knots, x and y
                jnp.concatenate([knots, end], axis=-1),  # right knots
                slopes[..., None, :-1],
                slopes[..., None, 1:],
            ],
            axis=-2,
        )  # (..., 6, bins)
        # index = number of interior knots strictly below value (torch.searchsorted, left)
        index = jnp.sum(knots[..., row, :] < value[..., None], axis=-1)
        index = jnp.broadcast_to(index[..., None, None], (*table.shape[:-1], 1))
        return jnp.take_along_axis(table, index, axis=-1)[..., 0]

    def forward(self, x: Array, params: Array) -> tuple[Array, Array]:
        b = self.bound
        inside = (x >= -b) & (x <= b)
        # inside, x itself (jnp.clip would halve the gradient at exactly +-bound)
        xc = jnp.where(inside, x, jnp.clip(x, -b, b))
        table = self._bin_table(_inside_only(params, inside), xc, 0)
        x0, y0, x1, y1, d0, d1 = jnp.moveaxis(table, -1, 0)
        w, h = x1 - x0, y1 - y0
        s = h / w
        # the position in the bin from its nearer end: t from the left, u = 1 - t from the right
        t, u = (xc - x0) / w, (x1 - xc) / w
        right = t > 0.5
        t, u = jnp.where(right, 1 - u, t), jnp.where(right, u, 1 - t)
        t, u = _nonnegative(t), _nonnegative(u)
        t1 = t * u
        denom = s + (d0 + d1 - 2 * s) * t1
        y = jnp.where(
            right, y1 - h * (s * u * u + d1 * t1) / denom, y0 + h * (s * t * t + d0 * t1) / denom
        )
        dnum = s * s * (d1 * t * t + 2 * s * t1 + d0 * u * u)
        log_det = jnp.log(dnum) - 2 * jnp.log(denom)
        return jnp.where(inside, y, x), jnp.where(inside, log_det, 0.0)

    def inverse(self, y: Array, params: Array) -> tuple[Array, Array]:
        b = self.bound
        inside = (y >= -b) & (y <= b)
        # inside, y itself (jnp.clip would halve the gradient at exactly +-bound)
        yc = jnp.where(inside, y, jnp.clip(y, -b, b))
        table = self._bin_table(_inside_only(params, inside), yc, 1)
        x0, y0, x1, y1, d0, d1 = jnp.moveaxis(table, -1, 0)
        w, h = x1 - x0, y1 - y0
        s = h / w
        # the distances to both knots, and the quadratic's coefficients written with them so
        # that the large terms d0 * h do not cancel (they would for a steep left end)
        dy, e = yc - y0, y1 - yc
        c = d0 + d1 - 2 * s
        qa = s * (2 * e - h) + d1 * dy - d0 * e
        qb = d0 * e + (2 * s - d1) * dy
        qc = -s * dy
        # the discriminant qb^2 - 4 qa qc as a sum of two nonnegative terms (as in torch)
        root = _safe_sqrt((d1 * dy - d0 * e) ** 2 + 4 * s * s * dy * e)
        # t in [0, 1] in the form that does not cancel, and near the right end u = 1 - t
        # from the quadratic in u (as in the torch backend)
        positive = qb >= 0
        t = jnp.where(
            positive,
            (2 * qc) / jnp.where(positive, -qb - root, -1.0),
            (root - qb) / jnp.where(positive, 1.0, 2 * qa),
        )
        mb = (2 * s - d0) * e + d1 * dy  # minus the linear coefficient in u
        cu = s * e  # the constant in u, >= 0
        positive = mb >= 0
        u = jnp.where(
            positive,
            (2 * cu) / jnp.where(positive, mb + root, 1.0),
            (mb - root) / jnp.where(positive, 1.0, 2 * qa),
        )
        right = t > 0.5
        t, u = jnp.where(right, 1 - u, t), jnp.where(right, u, 1 - t)
        t, u = _nonnegative(t), _nonnegative(u)
        t1 = t * u
        denom = s + c * t1
        dnum = s * s * (d1 * t * t + 2 * s * t1 + d0 * u * u)
        log_det = 2 * jnp.log(denom) - jnp.log(dnum)
        x = jnp.where(right, x1 - u * w, x0 + t * w)
        return jnp.where(inside, x, y), jnp.where(inside, log_det, 0.0)


class LogisticMixtureTransformer(Transformer):
    """Flow++'s transformer: the logit of a mixture-of-logistics CDF, then an affine map.

    Ho et al. (2019). The explicit direction is `inverse` (data -> base, the one ``log_prob``
    takes): ``z = g(y) exp(log_scale) + shift`` with
    ``g(y) = (1 - linear) logit(F(y)) + linear y`` and
    ``F(y) = sum_k w_k sigmoid((y - mu_k) / s_k)``: the same map, parameter layout, soft
    clamps, logit offsets ``linspace(-1, 1, components)`` and share ``linear`` of the
    identity (a minimum slope, for a well-conditioned solve) as
    `pyroflows.pyro.LogisticMixtureTransformer`; zero parameters give the identity.
    `forward` is Newton's method safeguarded by bisection on a bracket that holds the root,
    done per element at ``atol (1 + |y|)``; an element not done in ``max_iter`` iterations
    raises `pyroflows.numpyro.ConvergenceError` (eagerly) or equinox's runtime error (under
    ``jit``). The solve is outside the graph; the implicit function theorem at the root
    gives the answer its exact gradient.

    Args:
        components: Number of logistic components.
        bound: Bound on the absolute log-scale of the final affine map.
        linear: Share of the identity in the map, in ``[0, 1)``.
        atol: Tolerance of the solve, relative to ``1 + |y|`` (default ``64 * eps`` of
            the dtype).
        max_iter: Iterations of the solve before it raises.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> transformer = pfj.LogisticMixtureTransformer(components=4)
        >>> transformer.params_per_feature
        14
        >>> params = jax.random.normal(jax.random.key(0), (5, 3, 14))
        >>> y, log_det = transformer.forward(jax.numpy.zeros((5, 3)), params)
        >>> x, _ = transformer.inverse(y, params)
    """

    components: int = eqx.field(static=True)
    bound: float = eqx.field(static=True)
    linear: float = eqx.field(static=True)
    atol: float | None = eqx.field(static=True)
    max_iter: int = eqx.field(static=True)

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

    @property
    def params_per_feature(self) -> int:
        """``3 * components + 2``."""
        return 3 * self.components + 2

    def _unpack(self, params: Array) -> tuple[Array, Array, Array, Array, Array]:
        """``(shift, log_scale, log_weights, means, log_scales)`` of the components."""
        k, c = self.components, MIXTURE_LOG_SCALE_BOUND
        shift, log_scale = params[..., 0], self.bound * jnp.tanh(params[..., 1] / self.bound)
        offsets = jnp.linspace(-1.0, 1.0, k, dtype=params.dtype)
        log_weights = jax.nn.log_softmax(params[..., 2 : 2 + k] + offsets, axis=-1)
        means = params[..., 2 + k : 2 + 2 * k]
        log_scales = c * jnp.tanh(params[..., 2 + 2 * k :] / c)
        return shift, log_scale, log_weights, means, log_scales

    def _map(self, x: Array, log_weights: Array, means: Array, log_scales: Array):
        """``g(y) = (1 - lam) logit(F(y)) + lam y`` and ``log g'(y)`` (``lam = linear``)."""
        lam = self.linear
        z = (x[..., None] - means) * jnp.exp(-log_scales)
        below, above = jax.nn.softplus(-z), jax.nn.softplus(z)
        log_cdf = jax.nn.logsumexp(log_weights - below, axis=-1)
        log_sf = jax.nn.logsumexp(log_weights - above, axis=-1)
        log_pdf = jax.nn.logsumexp(log_weights - below - above - log_scales, axis=-1)
        g = (1 - lam) * (log_cdf - log_sf) + lam * x
        log_slope = math.log1p(-lam) + log_pdf - log_cdf - log_sf
        if lam:
            log_slope = jnp.logaddexp(log_slope, math.log(lam))
        return g, log_slope

    def inverse(self, y: Array, params: Array) -> tuple[Array, Array]:
        shift, log_scale, log_weights, means, log_scales = self._unpack(params)
        g, log_slope = self._map(y, log_weights, means, log_scales)
        return g * jnp.exp(log_scale) + shift, log_scale + log_slope

    def _solve(
        self, v: Array, log_weights: Array, means: Array, log_scales: Array, atol: float
    ) -> tuple[Array, Array, Array]:
        """``y`` with ``g(y) = v`` by safeguarded Newton on the torch backend's bracket,
        without a gradient; returns ``y``, the done flags and the last steps."""
        lam = self.linear
        v, log_weights, means, log_scales = (
            jax.lax.stop_gradient(a) for a in (v, log_weights, means, log_scales)
        )
        scales = jnp.exp(log_scales)
        ends = ((1 - lam) * means + scales * v[..., None]) / ((1 - lam) + lam * scales)
        lo, hi = ends.min(-1), ends.max(-1)

        def newton_step(x: Array) -> tuple[Array, Array]:
            g, log_slope = self._map(x, log_weights, means, log_scales)
            f = g - v
            return f, f * jnp.exp(-log_slope)

        return solve_bracketed(newton_step, (lo + hi) / 2, lo, hi, atol, self.max_iter)

    def forward(self, x: Array, params: Array) -> tuple[Array, Array]:
        shift, log_scale, log_weights, means, log_scales = self._unpack(params)
        v = (x - shift) * jnp.exp(-log_scale)
        atol = default_atol(self.atol, float(jnp.finfo(jnp.result_type(x)).eps))
        y, done, step = self._solve(v, log_weights, means, log_scales, atol)
        y = check_converged(
            y,
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
        large = math.log(float(jnp.finfo(y.dtype).max)) / 4  # a finite exp, as in torch
        step = (v - g) * jax.lax.stop_gradient(jnp.exp(jnp.minimum(-log_slope, large)))
        y = y + (step - jax.lax.stop_gradient(step))
        _, log_slope = self._map(y, log_weights, means, log_scales)
        return y, -(log_scale + log_slope)
