"""Invertible residual blocks (Behrmann et al., 2019; Chen et al., 2019), JAX backend.

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
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from pyroflows import _checks
from pyroflows._residual import (
    LOGDET_MODES,
    ROULETTE_STOP,
    ConvergenceError,
    check_block_options,
    convergence_message,
    default_atol,
)
from pyroflows.numpyro.core import Bijection, broadcast_context, is_concrete
from pyroflows.numpyro.nn import LIPSCHITZ_ACTIVATIONS, LipschitzMLP, _check_key

__all__ = ["ResidualBlock", "ConvergenceError", "LOGDET_MODES", "with_key"]


def _g(activation: str, weights, z: Array, c: Array) -> Array:
    act = LIPSCHITZ_ACTIVATIONS[activation]
    x = jnp.concatenate([z, c], axis=-1)
    *inner, (w_last, b_last) = weights
    for w, b in inner:
        x = act(x @ w.T + b)
    return x @ w_last.T + b_last


def _contract(step, start: Array, atol: float, max_iter: int) -> Array:
    """Iterate ``x <- step(x)`` from ``start`` until no element moves by more than
    ``atol * (1 + |x|)`` (or ``max_iter`` iterations)."""

    def body(state):
        i, x, _ = state
        new = step(x)
        return i + 1, new, jnp.all(jnp.abs(new - x) <= atol * (1 + jnp.abs(new)))

    def cond(state):
        return (state[0] < max_iter) & ~state[2]

    return jax.lax.while_loop(cond, body, (0, start, jnp.asarray(False)))[1]


def _fixed_point(activation: str, atol: float, max_iter: int, weights, w: Array, c: Array):
    """``z`` with ``z + g(z) = w``, by fixed-point iteration, differentiable in both modes
    (``jax.lax.custom_root``: the implicit function theorem, with the tangent and adjoint
    systems ``(I + J_g) t = r`` solved by the same kind of contraction)."""

    def residual(z):
        return z + _g(activation, weights, z, c) - w

    def solve(f, guess):
        return _contract(lambda z: z - f(z), guess, atol, max_iter)

    def contraction(linear, rhs):  # solve linear(t) = t + J t = rhs (or its transpose)
        return _contract(lambda t: rhs - (linear(t) - t), rhs, atol, max_iter)

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
        done = jnp.all(last <= atol * (1 + jnp.abs(jax.lax.stop_gradient(z))), axis=-1)
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
    """``tree`` (a flow, a chain, a block) with a fresh ``key`` in every `ResidualBlock`
    (split from ``key``), so that their stochastic log-dets draw new numbers.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.ResidualFlow(2, transforms=2, hidden=(8,), key=jax.random.key(0))
        >>> flow = pfj.with_key(flow, jax.random.key(1))
    """
    blocks = [
        leaf
        for leaf in jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, ResidualBlock))
        if isinstance(leaf, ResidualBlock)
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
            for leaf in jax.tree_util.tree_leaves(t, is_leaf=lambda x: isinstance(x, ResidualBlock))
            if isinstance(leaf, ResidualBlock)
        ]

    return eqx.tree_at(where, tree, new)
