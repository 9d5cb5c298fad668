"""Coupling bijections: mask x conditioner x transformer (JAX twin of the torch file).

The features marked ``True`` in the mask pass through unchanged; with the context they are
the conditioner's input. The conditioner outputs one parameter vector per transformed
feature. Both directions take one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import Array

from pyroflows import structure
from pyroflows.numpyro.core import Bijection, _check_size, batch_shape_of, broadcast_context
from pyroflows.numpyro.nn import MLP, ConvResNet, _check_key
from pyroflows.numpyro.transformers import AffineTransformer, Transformer

__all__ = ["Coupling", "Elementwise", "ImageCoupling"]

IMAGE_MASKS = ("checkerboard", "channel")


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


class Elementwise(Bijection):
    """Every feature mapped by a transformer, the twin of `pyroflows.pyro.Elementwise`: the
    parameters are learnt directly (``params``, zero at the start) without context, or
    computed from the context alone by an MLP.

    Args:
        features: Event size.
        context: Context size.
        transformer: The elementwise map (default affine).
        hidden: Hidden widths of the MLP conditioner (with context only).
        activation: Activation of the conditioner.
        key: Random key (keyword only; needed with context).

    Examples:
        >>> import jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> layer = pfj.Elementwise(2, transformer=pfj.LogisticMixtureTransformer(3))
        >>> y, log_det = layer.forward_and_log_det(jnp.ones((10, 2)))
    """

    transformer: Transformer
    params: Array | None
    conditioner: MLP | None

    def __init__(
        self,
        features: int,
        context: int = 0,
        transformer: Transformer | None = None,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        *,
        key: Array | None = None,
    ) -> None:
        self.features = features = _check_size("features", features, 1)
        self.context_features = context = _check_size("context", context, 0)
        self.transformer = transformer if transformer is not None else AffineTransformer()
        size = self.transformer.params_per_feature
        if context:
            key = _check_key(key, "Elementwise")
            self.conditioner = MLP(context, features * size, hidden, activation, key=key)
            self.params = None
        else:
            self.conditioner = None
            self.params = jnp.zeros((features, size))

    def _apply_transformer(self, x: Array, context: Array | None, inverse: bool):
        size = self.transformer.params_per_feature
        if self.context_features:
            x, context = broadcast_context(x, context)
            out = self.conditioner(context)
            params = out.reshape(*out.shape[:-1], self.features, size)
            x = jnp.broadcast_to(x, params.shape[:-1])
        else:
            params = jnp.broadcast_to(self.params, (*x.shape, size))
        step = self.transformer.inverse if inverse else self.transformer.forward
        y, log_det = step(x, params)
        return y, log_det.sum(-1)

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._apply_transformer(x, context, inverse=False)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._apply_transformer(y, context, inverse=True)


class ImageCoupling(Bijection):
    """A coupling layer on images ``(C, H, W)``, the twin of `pyroflows.pyro.ImageCoupling`:
    a checkerboard or channel mask, a conv ResNet conditioner (zero-initialised output), the
    context as constant extra channels. Same arguments as in torch, and ``key``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> layer = pfj.ImageCoupling(
        ...     (2, 4, 4), mask="channel", hidden=8, blocks=1, key=jax.random.key(0)
        ... )
        >>> y, log_det = layer.forward_and_log_det(jnp.ones((3, 2, 4, 4)))
        >>> log_det.shape
        (3,)
    """

    transformer: Transformer
    conditioner: ConvResNet
    pass_mask: Array | None
    identity_index: Array | None
    transformed_index: Array | None
    merge_index: Array | None
    shape: tuple[int, ...] = eqx.field(static=True)
    mask_kind: str = eqx.field(static=True)
    parity: int = eqx.field(static=True)

    def __init__(
        self,
        shape: Sequence[int],
        context: int = 0,
        mask: str = "checkerboard",
        parity: int = 0,
        transformer: Transformer | None = None,
        hidden: int = 64,
        blocks: int = 2,
        activation: str = "relu",
        *,
        key: Array | None = None,
    ) -> None:
        self.shape = shape = structure.check_image_shape(shape)
        self.features = int(np.prod(shape))
        self.context_features = context = _check_size("context", context, 0)
        key = _check_key(key, "ImageCoupling")
        if mask not in IMAGE_MASKS:
            raise ValueError(f"mask must be one of {IMAGE_MASKS}, got {mask!r}")
        make = structure.checkerboard_mask if mask == "checkerboard" else structure.channel_mask
        keep = make(shape, parity)
        self.mask_kind, self.parity = mask, parity
        self.transformer = transformer if transformer is not None else AffineTransformer()
        params = self.transformer.params_per_feature
        if mask == "checkerboard":
            self.pass_mask = jnp.asarray(keep, dtype=bool)
            self.identity_index = self.transformed_index = self.merge_index = None
            inputs, outputs = shape[0], shape[0] * params
        else:
            identity, transformed = np.flatnonzero(keep[:, 0, 0]), np.flatnonzero(~keep[:, 0, 0])
            merge = structure.inverse_permutation(np.concatenate([identity, transformed]))
            self.pass_mask = None
            self.identity_index = jnp.asarray(identity, dtype=jnp.int32)
            self.transformed_index = jnp.asarray(transformed, dtype=jnp.int32)
            self.merge_index = jnp.asarray(merge, dtype=jnp.int32)
            inputs, outputs = identity.size, transformed.size * params
        self.conditioner = ConvResNet(
            inputs + context, outputs, hidden, blocks, activation, key=key
        )

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.shape

    def _params(self, inputs: Array, context: Array | None) -> Array:
        """Conditioner output ``(N, c, H, W, P)`` for ``inputs`` ``(N, c_in, H, W)``."""
        if context is not None:
            planes = jnp.broadcast_to(
                context[:, :, None, None], (*context.shape, *inputs.shape[-2:])
            )
            inputs = jnp.concatenate([inputs, planes.astype(inputs.dtype)], axis=1)
        out = self.conditioner(inputs)
        p = self.transformer.params_per_feature
        out = out.reshape(out.shape[0], out.shape[1] // p, p, *out.shape[2:])
        return jnp.moveaxis(out, 2, -1)

    def _apply_transformer(self, x: Array, context: Array | None, inverse: bool):
        shape = self.shape
        batch = batch_shape_of(x, shape)
        if context is not None:
            batch = jnp.broadcast_shapes(batch, context.shape[:-1])
            x = jnp.broadcast_to(x, (*batch, *shape))
            k = context.shape[-1]
            context = jnp.broadcast_to(context, (*batch, k)).reshape(-1, k)
        flat = x.reshape(-1, *shape)
        step = self.transformer.inverse if inverse else self.transformer.forward
        if self.mask_kind == "checkerboard":
            keep = self.pass_mask
            y_all, log_det = step(flat, self._params(jnp.where(keep, flat, 0.0), context))
            y = jnp.where(keep, flat, y_all)
            log_det = jnp.where(keep, 0.0, log_det).sum(axis=(1, 2, 3))
        else:
            identity = jnp.take(flat, self.identity_index, axis=1)
            transformed = jnp.take(flat, self.transformed_index, axis=1)
            y_transformed, log_det = step(transformed, self._params(identity, context))
            y = jnp.take(jnp.concatenate([identity, y_transformed], 1), self.merge_index, axis=1)
            log_det = log_det.sum(axis=(1, 2, 3))
        return y.reshape(*batch, *shape), log_det.reshape(batch)

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._apply_transformer(x, context, inverse=False)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._apply_transformer(y, context, inverse=True)
