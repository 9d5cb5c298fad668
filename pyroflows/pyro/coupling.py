"""Coupling bijections: mask x conditioner x transformer, on vectors and on images.

The features marked ``True`` in the mask pass through unchanged; together with the
context they are the conditioner's input. The conditioner outputs one parameter vector
per transformed feature, and the transformer maps the transformed features with them.
Both directions take one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from pyroflows import structure
from pyroflows.pyro.core import Bijection, batch_shape_of, broadcast_context
from pyroflows.pyro.nn import MLP, ConvResNet
from pyroflows.pyro.transformers import AffineTransformer, Transformer

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

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> layer = pf.Coupling(4, transformer=pf.SplineTransformer(bins=4))
        >>> y, log_det = layer.forward_and_log_det(torch.randn(10, 4))
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        mask: Sequence[bool] | np.ndarray | None = None,
        transformer: Transformer | None = None,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
    ) -> None:
        super().__init__(features, context)
        features, context = self.features, self.context_features
        mask = structure.half_mask(features) if mask is None else np.asarray(mask, dtype=bool)
        if mask.shape != (features,):
            raise ValueError(f"mask must have shape ({features},), got {mask.shape}")
        if mask.all() or not mask.any():
            raise ValueError("mask must hold at least one True and one False entry")
        self.transformer = transformer if transformer is not None else AffineTransformer()
        self.mask = mask
        identity = np.flatnonzero(mask)
        transformed = np.flatnonzero(~mask)
        self.register_buffer("identity_index", torch.as_tensor(identity), persistent=False)
        self.register_buffer("transformed_index", torch.as_tensor(transformed), persistent=False)
        merge = structure.inverse_permutation(np.concatenate([identity, transformed]))
        self.register_buffer("merge_index", torch.as_tensor(merge), persistent=False)
        self.conditioner = MLP(
            identity.size + context,
            transformed.size * self.transformer.params_per_feature,
            hidden,
            activation,
        )

    def extra_repr(self) -> str:
        mask = "".join("1" if m else "0" for m in self.mask)
        return super().extra_repr() + f", transformer={self.transformer!r}, mask={mask}"

    def _params(self, x_identity: Tensor, context: Tensor | None) -> Tensor:
        x_identity, context = broadcast_context(x_identity, context)
        inputs = x_identity if context is None else torch.cat([x_identity, context], dim=-1)
        out = self.conditioner(inputs)
        return out.unflatten(-1, (-1, self.transformer.params_per_feature))

    def _apply_transformer(self, x: Tensor, context: Tensor | None, inverse: bool):
        x_identity = x.index_select(-1, self.identity_index)
        x_transformed = x.index_select(-1, self.transformed_index)
        params = self._params(x_identity, context)
        x_identity = x_identity.expand(*params.shape[:-2], x_identity.shape[-1])
        x_transformed = x_transformed.expand(*params.shape[:-1])
        step = self.transformer.inverse if inverse else self.transformer.forward
        y_transformed, log_det = step(x_transformed, params)
        y = torch.cat([x_identity, y_transformed], dim=-1).index_select(-1, self.merge_index)
        return y, log_det.sum(-1)

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self._apply_transformer(x, context, inverse=False)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self._apply_transformer(y, context, inverse=True)


class Elementwise(Bijection):
    """Every feature mapped by a transformer: the coupling in which no feature passes through.

    Without context the transformer's parameters are learnt directly (``params``, shape
    ``(features, params_per_feature)``, zero at the start: the identity); with context they
    are computed from the context alone by an MLP (zero-initialised output). With
    `LogisticMixtureTransformer` this is the mixture-CDF flow (`MixtureCDF`); with a spline
    it is a learnt monotone marginal map.

    Args:
        features: Event size.
        context: Context size.
        transformer: The elementwise map (default affine).
        hidden: Hidden widths of the MLP conditioner (with context only).
        activation: Activation of the conditioner.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> layer = pf.Elementwise(2, transformer=pf.LogisticMixtureTransformer(3))
        >>> y, log_det = layer.forward_and_log_det(torch.randn(10, 2))
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        transformer: Transformer | None = None,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
    ) -> None:
        super().__init__(features, context)
        features, context = self.features, self.context_features
        self.transformer = transformer if transformer is not None else AffineTransformer()
        size = self.transformer.params_per_feature
        if context:
            self.conditioner = MLP(context, features * size, hidden, activation)
        else:
            self.params = torch.nn.Parameter(torch.zeros(features, size))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", transformer={self.transformer!r}"

    def _apply_transformer(self, x: Tensor, context: Tensor | None, inverse: bool):
        size = self.transformer.params_per_feature
        if self.context_features:
            x, context = broadcast_context(x, context)
            params = self.conditioner(context).unflatten(-1, (self.features, size))
            x = x.expand(*params.shape[:-1])
        else:
            params = self.params.expand(*x.shape, size)
        step = self.transformer.inverse if inverse else self.transformer.forward
        y, log_det = step(x, params)
        return y, log_det.sum(-1)

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self._apply_transformer(x, context, inverse=False)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self._apply_transformer(y, context, inverse=True)


class ImageCoupling(Bijection):
    """A coupling layer on images ``(C, H, W)`` with a convolutional ResNet conditioner.

    ``mask="checkerboard"``: the pixels where ``(h + w) % 2 == parity`` pass through (in
    every channel); the conditioner sees the image with the other pixels zeroed and gives
    the parameters of every pixel, of which those of the transformed pixels are used.
    ``mask="channel"``: the first ``C // 2`` channels pass through (``parity=0``, else the
    others) and condition the rest. A context vector ``(..., context)`` (a class label, say)
    enters the conditioner as ``context`` constant extra channels. The conditioner is a
    `pyroflows.pyro.nn.ConvResNet` with a zero-initialised output, so a fresh layer is the
    identity.

    Args:
        shape: Image shape ``(C, H, W)``.
        context: Context size.
        mask: ``"checkerboard"`` or ``"channel"`` (needs ``C >= 2``).
        parity: 0 or 1: which half passes through.
        transformer: The elementwise map (default affine; any transformer of
            `pyroflows.pyro.transformers`, such as a spline).
        hidden: Channels of the conditioner's hidden layers.
        blocks: Residual blocks of the conditioner.
        activation: Activation of the conditioner.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> layer = pf.ImageCoupling((2, 4, 4), mask="channel", hidden=8, blocks=1)
        >>> y, log_det = layer.forward_and_log_det(torch.randn(3, 2, 4, 4))
        >>> log_det.shape
        torch.Size([3])
    """

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
    ) -> None:
        shape = structure.check_image_shape(shape)
        super().__init__(int(np.prod(shape)), context, shape=shape)
        if mask not in IMAGE_MASKS:
            raise ValueError(f"mask must be one of {IMAGE_MASKS}, got {mask!r}")
        make = structure.checkerboard_mask if mask == "checkerboard" else structure.channel_mask
        keep = make(shape, parity)
        self.mask_kind, self.parity = mask, parity
        self.transformer = transformer if transformer is not None else AffineTransformer()
        params = self.transformer.params_per_feature
        channels = shape[0]
        if mask == "checkerboard":
            self.register_buffer(
                "pass_mask",
                torch.as_tensor(keep, dtype=torch.get_default_dtype()),
                persistent=False,
            )
            inputs, outputs = channels, channels * params
        else:
            identity, transformed = np.flatnonzero(keep[:, 0, 0]), np.flatnonzero(~keep[:, 0, 0])
            merge = structure.inverse_permutation(np.concatenate([identity, transformed]))
            self.register_buffer("identity_index", torch.as_tensor(identity), persistent=False)
            self.register_buffer(
                "transformed_index", torch.as_tensor(transformed), persistent=False
            )
            self.register_buffer("merge_index", torch.as_tensor(merge), persistent=False)
            inputs, outputs = identity.size, transformed.size * params
        self.conditioner = ConvResNet(
            inputs + self.context_features, outputs, hidden, blocks, activation
        )

    def extra_repr(self) -> str:
        text = f"shape={self.event_shape}"
        if self.context_features:
            text += f", context={self.context_features}"
        return (
            text
            + f", mask={self.mask_kind!r}, parity={self.parity}, transformer={self.transformer!r}"
        )

    def _params(self, inputs: Tensor, context: Tensor | None) -> Tensor:
        """Conditioner output ``(N, c, H, W, P)`` for ``inputs`` ``(N, c_in, H, W)``."""
        if context is not None:
            planes = context[:, :, None, None].expand(-1, -1, *inputs.shape[-2:])
            inputs = torch.cat([inputs, planes], dim=1)
        out = self.conditioner(inputs)
        params = self.transformer.params_per_feature
        return out.unflatten(1, (-1, params)).movedim(2, -1)

    def _apply_transformer(self, x: Tensor, context: Tensor | None, inverse: bool):
        shape = self.event_shape
        batch = batch_shape_of(x, shape)
        if context is not None:
            batch = torch.broadcast_shapes(batch, context.shape[:-1])
            x = x.expand(*batch, *shape)
            context = context.expand(*batch, context.shape[-1]).reshape(-1, context.shape[-1])
        flat = x.reshape(-1, *shape)
        step = self.transformer.inverse if inverse else self.transformer.forward
        if self.mask_kind == "checkerboard":
            keep = self.pass_mask
            y_all, log_det = step(flat, self._params(flat * keep, context))
            passes = keep > 0
            y = torch.where(passes, flat, y_all)
            log_det = torch.where(passes, 0.0, log_det).flatten(1).sum(-1)
        else:
            identity = flat.index_select(1, self.identity_index)
            transformed = flat.index_select(1, self.transformed_index)
            y_transformed, log_det = step(transformed, self._params(identity, context))
            y = torch.cat([identity, y_transformed], dim=1).index_select(1, self.merge_index)
            log_det = log_det.flatten(1).sum(-1)
        return y.reshape(*batch, *shape), log_det.reshape(batch)

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self._apply_transformer(x, context, inverse=False)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self._apply_transformer(y, context, inverse=True)
