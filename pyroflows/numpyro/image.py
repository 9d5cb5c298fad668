"""Preprocessing for discrete data: uniform dequantization, logit preprocessing, bits/dim.

The JAX twin of `pyroflows.pyro.image`.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array
from numpyro.distributions import constraints

from pyroflows import _checks
from pyroflows.numpyro.core import Bijection, _check_size

__all__ = ["Logit", "dequantize", "bits_per_dim"]


class Logit(Bijection):
    """Logit preprocessing as a bijection between the real line and ``(0, 1)``.

    Forward (base -> data): ``y = (sigmoid(x) - alpha) / (1 - 2 alpha)``; inverse:
    ``x = logit(alpha + (1 - 2 alpha) y)``. Put it last in a flow for data in ``[0, 1]``.

    Args:
        features: Event size.
        alpha: Squeeze of ``[0, 1]`` into ``[alpha, 1 - alpha]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> x, log_det = pfj.Logit(2, alpha=0.05).inverse_and_log_det(jnp.full((5, 2), 0.3))
    """

    alpha: float = eqx.field(static=True)

    def __init__(self, features: int, alpha: float = 1e-6) -> None:
        self.features = features = _check_size("features", features, 1)
        self.context_features = 0
        self.alpha = _checks.check_fraction("alpha", alpha, 0.0, 0.5)

    @property
    def codomain(self) -> constraints.Constraint:
        """The interval that the logit's inverse accepts: ``[0, 1]`` widened by the squeeze,
        ``[-alpha / (1 - 2 alpha), (1 - alpha) / (1 - 2 alpha)]`` (its ends have density 0)."""
        scale = 1 - 2 * self.alpha
        interval = constraints.interval(-self.alpha / scale, (1 - self.alpha) / scale)
        return constraints.independent(interval, 1)

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        scale = 1 - 2 * self.alpha
        y = (jax.nn.sigmoid(x) - self.alpha) / scale
        log_det = -jax.nn.softplus(-x) - jax.nn.softplus(x) - math.log(scale)
        return y, log_det.sum(-1)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        scale = 1 - 2 * self.alpha
        p = self.alpha + scale * y
        x = jnp.log(p) - jnp.log1p(-p)
        log_det = math.log(scale) - jnp.log(p) - jnp.log1p(-p)
        return x, log_det.sum(-1)


def dequantize(key: Array, x: Array, levels: int) -> Array:
    """Uniform dequantization of integer-valued data into ``(0, 1)``: ``(x + u) / levels``.

    Args:
        key: Random key for the noise.
        x: Values in ``{0, ..., levels - 1}`` (floats are rounded).
        levels: Number of discrete values per dimension.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> pfj.dequantize(jax.random.key(0), jnp.array([0, 16]), levels=17).shape
        (2,)
    """
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels!r}")
    x = jnp.asarray(x)
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)
    values = jnp.round(x.astype(dtype))
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > levels - 1:
        raise ValueError(
            f"x must hold values in 0..{levels - 1} (levels={levels}), got min {low} and max {high}"
        )
    noise = jax.random.uniform(key, x.shape, dtype=dtype)
    return (values + noise) / levels


def bits_per_dim(log_prob: Array, dims: int, levels: int) -> Array:
    """Bits per dimension of discrete data from the log-density of its dequantized version.

    ``-(log p(x_c) - dims * log(levels)) / (dims * log 2)``, as in the torch backend.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> float(pfj.bits_per_dim(jnp.array(0.0), dims=64, levels=256))
        8.0
    """
    return -(log_prob - dims * math.log(levels)) / (dims * math.log(2))
