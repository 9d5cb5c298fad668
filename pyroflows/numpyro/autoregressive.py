"""Autoregressive bijections: MADE conditioner x transformer, MAF and IAF in one class.

The JAX twin of `pyroflows.pyro.autoregressive`. The one-pass map is
``y_i = transformer(x_i; params_i(x_<i, context))``; its inverse takes ``features``
network evaluations (run with ``jax.lax.fori_loop``, so compile time does not grow with
``features``). ``invert=True`` (MAF) makes the density one pass, ``invert=False`` (IAF)
sampling. Both directions are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from pyroflows.numpyro.core import Bijection, _check_size, broadcast_context
from pyroflows.numpyro.nn import MADE, _check_key
from pyroflows.numpyro.transformers import AffineTransformer, Transformer

__all__ = ["MaskedAutoregressive"]


class MaskedAutoregressive(Bijection):
    """Masked autoregressive bijection: MAF (``invert=True``) or IAF (``invert=False``).

    Args:
        features: Event size.
        context: Context size.
        transformer: Elementwise map (default affine).
        hidden: Hidden widths of the MADE conditioner.
        invert: ``True`` makes density evaluation one pass (MAF), ``False`` sampling (IAF).
        order: Autoregressive order, ``order[i]`` = position of feature ``i``.
        activation: Activation of the conditioner.
        key: Random key (keyword only).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> maf = pfj.MaskedAutoregressive(3, invert=True, key=jax.random.key(0))
        >>> x, log_det = maf.inverse_and_log_det(jnp.ones((8, 3)))  # one pass
    """

    transformer: Transformer
    conditioner: MADE
    order: Array
    invert: bool = eqx.field(static=True)

    def __init__(
        self,
        features: int,
        context: int = 0,
        transformer: Transformer | None = None,
        hidden: Sequence[int] = (64, 64),
        invert: bool = False,
        order: Sequence[int] | np.ndarray | None = None,
        activation: str = "relu",
        *,
        key: Array | None = None,
    ) -> None:
        self.features = features = _check_size("features", features, 1)
        self.context_features = context = _check_size("context", context, 0)
        key = _check_key(key, "MaskedAutoregressive")
        self.transformer = transformer if transformer is not None else AffineTransformer()
        self.invert = bool(invert)
        order = np.arange(features) if order is None else np.asarray(order, dtype=np.int64)
        self.order = jnp.asarray(order, dtype=jnp.int32)
        self.conditioner = MADE(
            features,
            self.transformer.params_per_feature,
            hidden,
            context,
            order,
            activation,
            key=key,
        )

    def _one_pass(self, x: Array, context: Array | None) -> tuple[Array, Array]:
        x, context = broadcast_context(x, context)
        y, log_det = self.transformer.forward(x, self.conditioner(x, context))
        return y, log_det.sum(-1)

    def _sequential(self, y: Array, context: Array | None) -> tuple[Array, Array]:
        y, context = broadcast_context(y, context)

        def body(_, x):
            return self.transformer.inverse(y, self.conditioner(x, context))[0]

        # after features - 1 passes every feature but the last in order is exact; the final
        # pass gives the last feature and the log-det
        x = jax.lax.fori_loop(0, self.features - 1, body, jnp.zeros_like(y))
        x, log_det = self.transformer.inverse(y, self.conditioner(x, context))
        return x, log_det.sum(-1)

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        if self.invert:
            return self._sequential(x, context)
        return self._one_pass(x, context)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        if self.invert:
            return self._one_pass(y, context)
        return self._sequential(y, context)
