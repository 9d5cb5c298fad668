"""The residual family, JAX backend: invertible residual blocks (Behrmann et al., 2019;
Chen et al., 2019), and planar, radial and Sylvester layers.

The JAX twin of `pyroflows.pyro.residual`: the same map ``z + g(z[, context])``, the same
log-det modes (``"exact"``, ``"series"``, ``"unbiased"`` with its Neumann-series gradient
through one vector-Jacobian product), the same fixed-point inverse with exact (implicit)
gradients, the same parameter names (``net.layers.0.weight``, ``..., u, v``).

Randomness (Hutchinson probes, the roulette) comes from the block's ``key``: a call draws
from it, so calls with the same key draw the same numbers. `with_key` gives a flow fresh
keys (one per block); `pyroflows.numpyro.fit` does that for every step. The power-iteration
convention is that of `pyroflows.numpyro.nn` (stored vectors used while converged).

A fixed-point inverse that does not converge raises `ConvergenceError` with the count of
rows and the largest last step when called outside ``jit``; inside ``jit`` it raises
equinox's runtime error with the same sentence (without the numbers).

`PlanarLayer`, `RadialLayer` and `SylvesterLayer` are the twins of the torch layers: the same
parameterisations, parameter names (``params.u``, ``params.r_tilde``, ``conditioner.layers.0
.weight``), safe solves and errors (eager `ConvergenceError`, equinox's error under ``jit``).
Their solves carry no gradient; one Newton step in the graph at the root gives the exact
(implicit) derivatives in both forward and reverse mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from pyroflows import _checks
from pyroflows._residual import (
    ABOVE_MINUS_ONE_SHIFT,
    LOGDET_MODES,
    ROULETTE_STOP,
    ConvergenceError,
    check_block_options,
    check_solve_options,
    check_sylvester_options,
    convergence_message,
    default_atol,
    layout_size,
    planar_layout,
    radial_layout,
    sylvester_layout,
)
from pyroflows.numpyro.core import (
    Bijection,
    broadcast_context,
    check_converged,
    is_concrete,
    solve_bracketed,
)
from pyroflows.numpyro.nn import MLP, LipschitzMLP, _check_key, apply_lipschitz

__all__ = [
    "ResidualBlock",
    "PlanarLayer",
    "RadialLayer",
    "SylvesterLayer",
    "ConvergenceError",
    "LOGDET_MODES",
    "with_key",
]


def _g(activation: str, weights, z: Array, c: Array) -> Array:
    return apply_lipschitz(activation, weights, jnp.concatenate([z, c], axis=-1))


def _row_scale(*arrays: Array) -> Array:
    """The largest magnitude of each row over ``arrays`` (shape ``(..., 1)``)."""
    return jnp.max(jnp.abs(jnp.concatenate(arrays, axis=-1)), axis=-1, keepdims=True)


def _contract(step, start: Array, atol: float, max_iter: int, floor: Array) -> Array:
    """Iterate ``x <- step(x)`` from ``start`` until no element moves by more than
    ``atol * (1 + max(floor, max |x|))`` over its row (or ``max_iter`` iterations)."""

    def body(state):
        i, x, _ = state
        new = step(x)
        scale = 1 + jnp.maximum(floor, _row_scale(new))
        return i + 1, new, jnp.all(jnp.abs(new - x) <= atol * scale)

    def cond(state):
        return (state[0] < max_iter) & ~state[2]

    return jax.lax.while_loop(cond, body, (0, start, jnp.asarray(False)))[1]


def _fixed_point(activation: str, atol: float, max_iter: int, weights, w: Array, c: Array):
    """``z`` with ``z + g(z) = w``, by fixed-point iteration, differentiable in both modes
    (``jax.lax.custom_root``: the implicit function theorem, with the tangent and adjoint
    systems ``(I + J_g) t = r`` solved by the same kind of contraction)."""

    def residual(z):
        return z + _g(activation, weights, z, c) - w

    # judged at the row's scale: the rounding of g(z, c) scales with |z|, |w|, |c|
    floor = jax.lax.stop_gradient(_row_scale(w, c))

    def solve(f, guess):
        return _contract(lambda z: z - f(z), guess, atol, max_iter, floor)

    def contraction(linear, rhs):  # solve linear(t) = t + J t = rhs (or its transpose)
        return _contract(lambda t: rhs - (linear(t) - t), rhs, atol, max_iter, _row_scale(rhs))

    def tangent_solve(linear, rhs):
        return jax.lax.custom_linear_solve(
            linear, rhs, solve=contraction, transpose_solve=contraction
        )

    return jax.lax.custom_root(residual, w, solve, tangent_solve)


class ResidualBlock(Bijection):
    """Invertible residual block ``z + g(z[, context])`` with ``Lip(g) < lipschitz``.

    Arguments as in `pyroflows.pyro.ResidualBlock`, plus ``key`` (keyword only; it
    initialises the network and seeds the block's stochastic log-dets, see `with_key`).

    Examples:
        >>> import jax
        >>> from pyroflows.numpyro.residual import ResidualBlock
        >>> block = ResidualBlock(2, hidden=(16,), logdet="exact", key=jax.random.key(0))
        >>> z, log_det = block.inverse_and_log_det(jax.random.normal(jax.random.key(1), (5, 2)))
        >>> z.shape, log_det.shape
        ((5, 2), (5,))
    """

    net: LipschitzMLP
    key: Array  # raw key data (``jax.random.key_data``) of the estimators' key
    lipschitz: float = eqx.field(static=True)
    logdet: str = eqx.field(static=True)
    terms: int = eqx.field(static=True)
    atol: float | None = eqx.field(static=True)
    max_iter: int = eqx.field(static=True)
    invert: bool = eqx.field(static=True)

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        *,
        lipschitz: float = 0.9,
        logdet: str = "unbiased",
        activation: str = "lipswish",
        invert: bool = False,
        terms: int | None = None,
        atol: float | None = None,
        max_iter: int = 200,
        key: Array | None = None,
    ) -> None:
        key = _check_key(key, "ResidualBlock")
        self.features = _checks.check_int("features", features, 1)
        self.context_features = _checks.check_int("context", context, 0)
        options = check_block_options(lipschitz, logdet, terms, atol, max_iter)
        self.lipschitz, self.logdet, self.terms = options.lipschitz, options.logdet, options.terms
        self.atol, self.max_iter = options.atol, options.max_iter
        self.invert = bool(invert)
        net_key, own = jax.random.split(key)
        self.key = jax.random.key_data(own)  # raw key data: serialisable, stackable
        self.net = LipschitzMLP(
            self.features + self.context_features,
            self.features,
            hidden,
            self.lipschitz,
            activation,
            key=net_key,
        )

    # --- the residual map g ----------------------------------------------------------------

    def _flat(self, z: Array, context: Array | None):
        z, context = broadcast_context(z, context)
        flat = z.reshape(-1, self.features)
        if context is None:
            c = jnp.zeros((flat.shape[0], 0), flat.dtype)
        else:
            c = context.reshape(-1, self.context_features).astype(flat.dtype)
        return z.shape, flat, c

    def _g_and_log_det(self, weights, z: Array, c: Array) -> tuple[Array, Array]:
        act = self.net.activation
        if z.shape[0] == 0 or self.logdet == "exact":
            g = _g(act, weights, z, c)
        if z.shape[0] == 0:
            return g, jnp.zeros((0,), z.dtype)
        if self.logdet == "exact":

            def row(zi, ci):
                return _g(act, weights, zi[None], ci[None])[0]

            jacobian = jax.vmap(jax.jacfwd(row))(z, c)
            eye = jnp.eye(self.features, dtype=z.dtype)
            return g, jnp.linalg.slogdet(eye + jacobian)[1]
        g, vjp = jax.vjp(lambda v: _g(act, weights, v, c), z)  # g and its vjp in one pass
        probe_key, roulette_key = jax.random.split(jax.random.wrap_key_data(self.key))
        probe = jax.random.normal(probe_key, z.shape, z.dtype)
        if self.logdet == "series":
            w, total = probe, jnp.zeros(z.shape[0], z.dtype)
            for k in range(1, self.terms + 1):
                w = vjp(w)[0]
                total = total + (-1) ** (k + 1) / k * jnp.sum(w * probe, -1)
            return g, total
        return g, self._unbiased(vjp, probe, roulette_key)

    def _unbiased(self, vjp, probe: Array, key: Array) -> Array:
        """The roulette estimate in value, with the Neumann-series gradient."""
        stop, terms = ROULETTE_STOP, self.terms
        extra = jax.random.geometric(key, stop) - 1  # further terms, >= 0
        n = terms + extra

        def reach(k):  # P(the roulette reaches term k)
            return jnp.where(k <= terms, 1.0, (1 - stop) ** jnp.maximum(k - terms, 0))

        frozen = jax.tree_util.Partial(lambda w: jax.lax.stop_gradient(vjp(w)[0]))

        def body(k, state):
            w, value, neumann = state
            w = frozen(w)
            sign = jnp.where(k % 2 == 1, 1.0, -1.0)
            value = value + sign / k * jnp.sum(w * probe, -1) / reach(k)
            neumann = jnp.where(k < n, neumann - sign * w / reach(k + 1), neumann)
            return w, value, neumann

        start = (probe, jnp.zeros(probe.shape[0], probe.dtype), probe)
        _, value, neumann = jax.lax.fori_loop(1, n + 1, body, start)
        value, neumann = jax.lax.stop_gradient(value), jax.lax.stop_gradient(neumann)
        # one vector-Jacobian product in the graph: d/dtheta (r^T J v) = r^T (dJ) v
        surrogate = jnp.sum(vjp(neumann)[0] * probe, -1)
        return value + surrogate - jax.lax.stop_gradient(surrogate)

    def _explicit(self, z: Array, context: Array | None) -> tuple[Array, Array]:
        shape, flat, c = self._flat(z, context)
        g, log_det = self._g_and_log_det(self.net.weights(), flat, c)
        return (flat + g).reshape(shape), log_det.reshape(shape[:-1])

    def _solve(self, w: Array, context: Array | None) -> tuple[Array, Array]:
        shape, flat, c = self._flat(w, context)
        weights = self.net.weights()
        atol = default_atol(self.atol, float(jnp.finfo(flat.dtype).eps))
        z = _fixed_point(self.net.activation, atol, self.max_iter, weights, flat, c)
        g, log_det = self._g_and_log_det(weights, z, c)
        # the step the iteration would take next, per row against the tolerance
        last = jnp.abs(jax.lax.stop_gradient(flat - g - z))
        scale = 1 + jax.lax.stop_gradient(_row_scale(z, flat, c))
        done = jnp.all(last <= atol * scale, axis=-1)
        if is_concrete(done):
            if not bool(jnp.all(done)):
                bad = int(jnp.sum(~done))
                raise ConvergenceError(
                    convergence_message(
                        self.max_iter, atol, bad, flat.shape[0], float(jnp.max(last))
                    )
                )
        else:
            z, log_det = eqx.error_if(
                (z, log_det), ~jnp.all(done), convergence_message(self.max_iter, atol)
            )
        return z.reshape(shape), -log_det.reshape(shape[:-1])

    # --- the two directions -----------------------------------------------------------------

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        if self.invert:
            return self._explicit(x, context)
        return self._solve(x, context)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        if self.invert:
            return self._solve(y, context)
        return self._explicit(y, context)


def with_key(tree, key: Array):
    """``tree`` (a flow, a chain, a block) with a fresh ``key`` in every `ResidualBlock` and
    every `pyroflows.numpyro.Continuous` (split from ``key``), so that their stochastic
    log-dets (roulette, Hutchinson probes) draw new numbers.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.ResidualFlow(2, transforms=2, hidden=(8,), key=jax.random.key(0))
        >>> flow = pfj.with_key(flow, jax.random.key(1))
    """
    from pyroflows.numpyro.continuous import Continuous

    keyed = (ResidualBlock, Continuous)
    blocks = [
        leaf
        for leaf in jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, keyed))
        if isinstance(leaf, keyed)
    ]
    if not blocks:
        return tree
    keys = jax.random.split(key, len(blocks))
    new = [
        jax.random.key_data(jax.random.split(k, b.key.shape[:-1]) if b.key.ndim > 1 else k)
        for k, b in zip(keys, blocks, strict=True)
    ]

    def where(t):
        return [
            leaf.key
            for leaf in jax.tree_util.tree_leaves(t, is_leaf=lambda x: isinstance(x, keyed))
            if isinstance(leaf, keyed)
        ]

    return eqx.tree_at(where, tree, new)


# --- planar, radial and Sylvester layers ------------------------------------------------------


def above_minus_one(value: Array) -> Array:
    """``softplus(value + log(e - 1)) - 1``: onto ``(-1, inf)``, ``0`` at ``0``."""
    return jax.nn.softplus(value + ABOVE_MINUS_ONE_SHIFT) - 1


def solve_monotone(
    s: Array, q: Array, c: Array, t: Array, atol: float, max_iter: int
) -> tuple[Array, Array, Array]:
    """``x`` with ``x + s * tanh(q * x + c) = t`` elementwise, for ``s * q > -1``: Newton's
    method safeguarded by bisection on ``[t - |s|, t + |s|]``, as in
    `pyroflows.pyro.residual.solve_monotone`. No gradient; returns ``x``, the done flags and
    the last steps."""
    s, q, c, t = (jax.lax.stop_gradient(a) for a in jnp.broadcast_arrays(s, q, c, t))

    def newton_step(x: Array) -> tuple[Array, Array]:
        th = jnp.tanh(q * x + c)
        f = x + s * th - t
        return f, f / (1 + s * q * (1 - th * th))

    return solve_bracketed(newton_step, t, t - jnp.abs(s), t + jnp.abs(s), atol, max_iter)


def _upper(matrix: Array) -> Array:
    """The strict upper triangle of ``matrix`` with ``tanh`` of its diagonal on the diagonal."""
    diagonal = jnp.tanh(jnp.diagonal(matrix, axis1=-2, axis2=-1))
    return jnp.triu(matrix, 1) + diagonal[..., None] * jnp.eye(matrix.shape[-1], dtype=matrix.dtype)


def _orthogonalize(matrix: Array) -> Array:
    """The ``Q`` of the QR decomposition of ``matrix`` ``(..., D, M)``, with its columns'
    signs chosen so that ``R`` has a non-negative diagonal."""
    q, r = jnp.linalg.qr(matrix)
    sign = jnp.sign(jnp.diagonal(r, axis1=-2, axis2=-1))
    return q * jnp.where(sign == 0, 1.0, sign)[..., None, :]


def _householder(vectors: Array) -> Array:
    """``H_1 H_2 ... H_K`` for ``vectors`` ``(..., K, D)`` (a zero vector gives ``I``)."""
    features = vectors.shape[-1]
    norm = jnp.maximum(jnp.sum(vectors**2, -1, keepdims=True), jnp.finfo(vectors.dtype).tiny)
    unit = vectors / jnp.sqrt(norm)
    q = jnp.broadcast_to(
        jnp.eye(features, dtype=vectors.dtype), (*vectors.shape[:-2], features, features)
    )
    for k in range(vectors.shape[-2]):
        vk = unit[..., k, :]
        q = q - 2 * (q @ vk[..., None]) * vk[..., None, :]
    return q


class _ClosedFormLayer(Bijection):
    """Base of the planar, radial and Sylvester layers (as in `pyroflows.pyro.residual`)."""

    params: dict[str, Array]
    conditioner: MLP | None
    #: ``(name, shape)`` of every parameter, in the order of the conditioner's output
    layout: tuple[tuple[str, tuple[int, ...]], ...] = eqx.field(static=True)
    invert: bool = eqx.field(static=True)
    atol: float | None = eqx.field(static=True)
    max_iter: int = eqx.field(static=True)

    owner = "layer"

    def _setup(self, features, context, hidden, activation, invert, atol, max_iter, layout,
               init, key) -> None:  # fmt: skip
        self.features = features
        self.context_features = _checks.check_int("context", context, 0)
        self.atol, self.max_iter = check_solve_options(atol, max_iter)
        self.invert = bool(invert)
        self.layout = tuple(layout.items())
        self.params = {name: init[name] for name in layout}
        self.conditioner = (
            MLP(self.context_features, layout_size(layout), hidden, activation, key=key)
            if self.context_features
            else None
        )

    def _values(self, c: Array | None) -> dict[str, Array]:
        """The parameters, ``(n, *shape)`` with a context and ``(1, *shape)`` without."""
        if self.conditioner is None:
            return {name: value[None] for name, value in self.params.items()}
        flat = self.conditioner(c)
        values, start = {}, 0
        for name, shape in self.layout:
            size = math.prod(shape)
            values[name] = self.params[name] + flat[:, start : start + size].reshape(-1, *shape)
            start += size
        return values

    def _run(self, value: Array, context: Array | None, explicit: bool):
        value, context = broadcast_context(value, context)
        flat = value.reshape(-1, self.features)
        if flat.shape[0] == 0:
            return value, jnp.zeros(value.shape[:-1], value.dtype)
        c = None if context is None else context.reshape(-1, self.context_features)
        c = None if c is None else c.astype(flat.dtype)
        p = self._values(c)
        if explicit:
            out, log_det = self._explicit(flat, p)
        else:
            atol = default_atol(self.atol, float(jnp.finfo(flat.dtype).eps))
            out, log_det = self._solve(flat, p, atol)
            log_det = -log_det
        return out.reshape(value.shape), log_det.reshape(value.shape[:-1])

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._run(x, context, explicit=self.invert)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._run(y, context, explicit=not self.invert)


class PlanarLayer(_ClosedFormLayer):
    """Planar layer ``z + u_hat * tanh(w^T z + b)``: as `pyroflows.pyro.PlanarLayer`, plus
    ``key`` (keyword only).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from pyroflows.numpyro.residual import PlanarLayer
        >>> layer = PlanarLayer(3, key=jax.random.key(0))
        >>> z, log_det = layer.inverse_and_log_det(jnp.ones((5, 3)))
        >>> log_det.shape
        (5,)
    """

    owner = "PlanarLayer"

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        *,
        activation: str = "relu",
        invert: bool = False,
        atol: float | None = None,
        max_iter: int = 100,
        key: Array | None = None,
    ) -> None:
        key = _check_key(key, "PlanarLayer")
        features = _checks.check_int("features", features, 1)
        own, net = jax.random.split(key)
        init = {
            "u": jnp.zeros(features),
            "w": jax.random.normal(own, (features,)) / math.sqrt(features),
            "b": jnp.zeros(1),
        }
        self._setup(features, context, hidden, activation, invert, atol, max_iter,
                    planar_layout(features), init, net)  # fmt: skip

    @staticmethod
    def _u_hat(u: Array, w: Array) -> tuple[Array, Array]:
        wu = jnp.sum(w * u, -1, keepdims=True)
        s = above_minus_one(wu)
        norm = jnp.maximum(jnp.sum(w * w, -1, keepdims=True), jnp.finfo(w.dtype).tiny)
        return u + (s - wu) * w / norm, s

    def _explicit(self, z: Array, p: dict[str, Array]) -> tuple[Array, Array]:
        u_hat, s = self._u_hat(p["u"], p["w"])
        th = jnp.tanh(jnp.sum(p["w"] * z, -1, keepdims=True) + p["b"])
        return z + u_hat * th, jnp.log1p(s * (1 - th * th))[..., 0]

    def _solve(self, y: Array, p: dict[str, Array], atol: float) -> tuple[Array, Array]:
        u_hat, s = self._u_hat(p["u"], p["w"])
        t = jnp.sum(p["w"] * y, -1, keepdims=True) + p["b"]
        a, done, step = solve_monotone(s, jnp.ones_like(s), jnp.zeros_like(s), t, atol,
                                       self.max_iter)  # fmt: skip
        a = check_converged(a, done, step, self.max_iter, atol, owner=self.owner)
        # one Newton step in the graph: the exact (implicit) gradient of the root
        th = jnp.tanh(a)
        a = a - (a + s * th - t) / jax.lax.stop_gradient(1 + s * (1 - th * th))
        th = jnp.tanh(a)
        return y - u_hat * th, jnp.log1p(s * (1 - th * th))[..., 0]


class RadialLayer(_ClosedFormLayer):
    """Radial layer ``z + beta (z - z0) / (alpha + |z - z0|)``: as
    `pyroflows.pyro.RadialLayer`, plus ``key`` (keyword only).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from pyroflows.numpyro.residual import RadialLayer
        >>> z, log_det = RadialLayer(3, key=jax.random.key(0)).inverse_and_log_det(jnp.ones((5, 3)))
        >>> log_det.shape
        (5,)
    """

    owner = "RadialLayer"

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        *,
        activation: str = "relu",
        invert: bool = False,
        key: Array | None = None,
    ) -> None:
        key = _check_key(key, "RadialLayer")
        features = _checks.check_int("features", features, 1)
        own, net = jax.random.split(key)
        init = {
            "z0": jax.random.normal(own, (features,)),
            "alpha": jnp.zeros(1),
            "beta": jnp.zeros(1),
        }
        self._setup(features, context, hidden, activation, invert, None, 1,
                    radial_layout(features), init, net)  # fmt: skip

    @staticmethod
    def _alpha_beta(p: dict[str, Array]) -> tuple[Array, Array]:
        alpha = jax.nn.softplus(p["alpha"])
        return alpha, alpha * above_minus_one(p["beta"])

    def _log_det(self, alpha: Array, beta: Array, r: Array) -> Array:
        h = 1 / (alpha + r)
        log_det = (self.features - 1) * jnp.log1p(beta * h) + jnp.log1p(beta * alpha * h * h)
        return log_det[..., 0]

    @staticmethod
    def _norm(d: Array) -> Array:
        return jnp.sqrt(jnp.maximum(jnp.sum(d * d, -1, keepdims=True), jnp.finfo(d.dtype).tiny))

    def _explicit(self, z: Array, p: dict[str, Array]) -> tuple[Array, Array]:
        alpha, beta = self._alpha_beta(p)
        d = z - p["z0"]
        r = self._norm(d)
        return z + beta * d / (alpha + r), self._log_det(alpha, beta, r)

    def _solve(self, y: Array, p: dict[str, Array], atol: float) -> tuple[Array, Array]:
        alpha, beta = self._alpha_beta(p)
        d = y - p["z0"]
        rho = self._norm(d)
        half_b = (alpha + beta - rho) / 2
        root = jnp.sqrt(half_b * half_b + alpha * rho)
        # r = -half_b + root, written without cancellation for either sign of half_b
        # (the other branch's denominator guarded: the unused side of a where must not be inf)
        positive = half_b > 0
        safe = jnp.where(positive, half_b + root, 1.0)
        r = jnp.where(positive, alpha * rho / safe, root - half_b)
        return p["z0"] + d / (1 + beta / (alpha + r)), self._log_det(alpha, beta, r)


class SylvesterLayer(_ClosedFormLayer):
    """Sylvester layer ``z + Q R tanh(R~ Q^T z + b)``: as `pyroflows.pyro.SylvesterLayer`,
    plus ``key`` (keyword only).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from pyroflows.numpyro.residual import SylvesterLayer
        >>> layer = SylvesterLayer(3, kind="householder", reflections=2, key=jax.random.key(0))
        >>> z, log_det = layer.inverse_and_log_det(jnp.ones((5, 3)))
        >>> log_det.shape
        (5,)
    """

    kind: str = eqx.field(static=True)
    columns: int = eqx.field(static=True)
    reflections: int = eqx.field(static=True)
    reverse: bool = eqx.field(static=True)

    owner = "SylvesterLayer"

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        *,
        kind: str = "orthogonal",
        columns: int | None = None,
        reflections: int | None = None,
        reverse: bool = False,
        activation: str = "relu",
        invert: bool = False,
        atol: float | None = None,
        max_iter: int = 100,
        key: Array | None = None,
    ) -> None:
        key = _check_key(key, "SylvesterLayer")
        features = _checks.check_int("features", features, 1)
        kind, m, k = check_sylvester_options(features, kind, columns, reflections)
        if reverse and kind != "triangular":
            raise ValueError(f"reverse is for kind='triangular' only, got kind={kind!r}")
        q_key, v_key, r_key, net = jax.random.split(key, 4)
        init = {
            "q": jax.random.normal(q_key, (features, m)),
            "v": jax.random.normal(v_key, (k, features)),
            "r": jnp.zeros((m, m)),
            "r_tilde": jax.random.normal(r_key, (m, m)) / math.sqrt(m),
            "b": jnp.zeros(m),
        }
        self.kind, self.columns, self.reflections, self.reverse = kind, m, k, bool(reverse)
        self._setup(features, context, hidden, activation, invert, atol, max_iter,
                    sylvester_layout(features, kind, m, k), init, net)  # fmt: skip

    def _q(self, p: dict[str, Array], like: Array) -> Array:
        if self.kind == "orthogonal":
            return _orthogonalize(p["q"])
        if self.kind == "householder":
            return _householder(p["v"])
        eye = jnp.eye(self.features, dtype=like.dtype)
        return (eye[:, ::-1] if self.reverse else eye)[None]

    def _parts(self, p: dict[str, Array], like: Array):
        return self._q(p, like), _upper(p["r"]), _upper(p["r_tilde"]), p["b"]

    @staticmethod
    def _log_det(r: Array, r_tilde: Array, th: Array) -> Array:
        diagonal = jnp.diagonal(r, axis1=-2, axis2=-1) * jnp.diagonal(r_tilde, axis1=-2, axis2=-1)
        return jnp.sum(jnp.log1p(diagonal * (1 - th * th)), -1)

    def _explicit(self, z: Array, p: dict[str, Array]) -> tuple[Array, Array]:
        q, r, r_tilde, b = self._parts(p, z)
        v = (z[..., None, :] @ q)[..., 0, :]  # Q^T z
        th = jnp.tanh((r_tilde @ v[..., None])[..., 0] + b)
        y = z + (q @ (r @ th[..., None]))[..., 0]
        return y, self._log_det(r, r_tilde, th)

    def _solve(self, y: Array, p: dict[str, Array], atol: float) -> tuple[Array, Array]:
        q, r, r_tilde, b = self._parts(p, y)
        target = (y[..., None, :] @ q)[..., 0, :]  # Q^T y
        m = self.columns
        cols = jnp.arange(m)
        rd, rtd, bd, td = (jax.lax.stop_gradient(a) for a in (r, r_tilde, b, target))

        def back_substitute(j, state):  # v_i once v_(i+1..) are known, i = m - 1 - j
            v, th, done, step = state
            i = m - 1 - j
            later = cols > i
            r_row, rt_row = jnp.take(rd, i, axis=-2), jnp.take(rtd, i, axis=-2)
            known = jnp.sum(r_row * th * later, -1)
            c = jnp.take(bd, i, axis=-1) + jnp.sum(rt_row * v * later, -1)
            s, k = jnp.take(r_row, i, axis=-1), jnp.take(rt_row, i, axis=-1)
            t = jnp.take(td, i, axis=-1) - known
            x, ok, last = solve_monotone(s, k, c, t, atol, self.max_iter)
            here = cols == i
            v = jnp.where(here, x[..., None], v)
            th = jnp.where(here, jnp.tanh(k * x + c)[..., None], th)
            done = jnp.where(here, ok[..., None], done)
            step = jnp.where(here, last[..., None], step)
            return v, th, done, step

        start = (jnp.zeros_like(td), jnp.zeros_like(td), jnp.ones(td.shape, bool),
                 jnp.zeros_like(td))  # fmt: skip
        v, _, done, step = jax.lax.fori_loop(0, m, back_substitute, start)
        v = check_converged(v, done, step, self.max_iter, atol, owner=self.owner)
        # one Newton step of the whole (triangular) system in the graph: exact gradients
        th = jnp.tanh((r_tilde @ v[..., None])[..., 0] + b)
        residual = v + (r @ th[..., None])[..., 0] - target
        jacobian = jnp.eye(m, dtype=y.dtype) + (r * (1 - th * th)[..., None, :]) @ r_tilde
        jacobian = jax.lax.stop_gradient(jnp.broadcast_to(jacobian, (*v.shape, m)))
        v = (
            v
            - jax.scipy.linalg.solve_triangular(jacobian, residual[..., None], lower=False)[..., 0]
        )
        th = jnp.tanh((r_tilde @ v[..., None])[..., 0] + b)
        z = y - (q @ (r @ th[..., None]))[..., 0]
        return z, self._log_det(r, r_tilde, th)
