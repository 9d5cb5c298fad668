"""Coupling bijections: mask x conditioner x transformer.

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
from pyroflows.pyro.core import Bijection, broadcast_context
from pyroflows.pyro.nn import MLP
from pyroflows.pyro.transformers import AffineTransformer, Transformer

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
