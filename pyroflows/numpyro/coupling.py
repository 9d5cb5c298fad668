"""Coupling bijections: mask x conditioner x transformer (JAX twin of the torch file).

The features marked ``True`` in the mask pass through unchanged; with the context they are
the conditioner's input. The conditioner outputs one parameter vector per transformed
feature. Both directions take one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax import Array

from pyroflows import structure
from pyroflows.numpyro.core import Bijection, _check_size, broadcast_context
from pyroflows.numpyro.nn import MLP, _check_key
from pyroflows.numpyro.transformers import AffineTransformer, Transformer

__all__ = ["Coupling"]


class Coupling(Bijection):
    """A coupling layer (NICE, RealNVP, neural spline coupling).

    Args:
        features: Event size (at least 2).
        context: Context size.
        mask: Boolean array of length ``features``; ``True`` features pass through
            (default: `pyroflows.structure.half_mask`).
        transformer: The elementwise map of the other features (default affine).
        hidden: Hidden widths of the MLP conditioner.
        activation: Activation of the conditioner.
        key: Random key (keyword only).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> spline = pfj.SplineTransformer(bins=4)
        >>> layer = pfj.Coupling(4, transformer=spline, key=jax.random.key(0))
        >>> y, log_det = layer.forward_and_log_det(jnp.ones((10, 4)))
    """

    transformer: Transformer
    conditioner: MLP
    identity_index: Array
    transformed_index: Array
    merge_index: Array

    def __init__(
        self,
        features: int,
        context: int = 0,
        mask: Sequence[bool] | np.ndarray | None = None,
        transformer: Transformer | None = None,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        *,
        key: Array | None = None,
    ) -> None:
        self.features = features = _check_size("features", features, 1)
        self.context_features = context = _check_size("context", context, 0)
        key = _check_key(key, "Coupling")
        mask = structure.half_mask(features) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != (features,):
            raise ValueError(f"mask must have shape ({features},), got {mask.shape}")
        if mask.all() or not mask.any():
            raise ValueError("mask must hold at least one True and one False entry")
        self.transformer = transformer if transformer is not None else AffineTransformer()
        identity = np.flatnonzero(mask)
        transformed = np.flatnonzero(~mask)
        self.identity_index = jnp.asarray(identity, dtype=jnp.int32)
        self.transformed_index = jnp.asarray(transformed, dtype=jnp.int32)
        merge = structure.inverse_permutation(np.concatenate([identity, transformed]))
        self.merge_index = jnp.asarray(merge, dtype=jnp.int32)
        self.conditioner = MLP(
            identity.size + context,
            transformed.size * self.transformer.params_per_feature,
            hidden,
            activation,
            key=key,
        )

    def _apply_transformer(self, x: Array, context: Array | None, inverse: bool):
        x_identity = jnp.take(x, self.identity_index, axis=-1)
        x_transformed = jnp.take(x, self.transformed_index, axis=-1)
        x_identity, context = broadcast_context(x_identity, context)
        inputs = x_identity if context is None else jnp.concatenate([x_identity, context], -1)
        out = self.conditioner(inputs)
        transformed = self.transformed_index.shape[0]  # explicit: -1 fails on empty batches
        params = out.reshape(*out.shape[:-1], transformed, self.transformer.params_per_feature)
        x_transformed = jnp.broadcast_to(x_transformed, params.shape[:-1])
        step = self.transformer.inverse if inverse else self.transformer.forward
        y_transformed, log_det = step(x_transformed, params)
        y = jnp.take(jnp.concatenate([x_identity, y_transformed], -1), self.merge_index, axis=-1)
        return y, log_det.sum(-1)

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._apply_transformer(x, context, inverse=False)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._apply_transformer(y, context, inverse=True)
