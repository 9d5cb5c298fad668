"""Autoregressive bijections: MADE conditioner x transformer, MAF and IAF in one class.

The *one-pass* map of the layer is ``y_i = transformer(x_i; params_i(x_<i, context))``:
the MADE sees the whole input at once, so it takes one network evaluation. Its inverse is
sequential: feature ``k`` of the result is exact after ``k + 1`` evaluations, so it takes
``features`` evaluations.

``invert=False`` (IAF): forward (base -> data, sampling) is the one-pass map; scoring data
takes ``features`` passes. ``invert=True`` (MAF): inverse (data -> base, density) is the
one-pass map; sampling takes ``features`` passes. Both directions are exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from pyroflows.pyro.core import Bijection, broadcast_context
from pyroflows.pyro.nn import MADE
from pyroflows.pyro.transformers import AffineTransformer, Transformer

__all__ = ["MaskedAutoregressive"]


class MaskedAutoregressive(Bijection):
    """Masked autoregressive bijection: MAF (``invert=True``) or IAF (``invert=False``).

    Args:
        features: Event size.
        context: Context size.
        transformer: Elementwise map (default affine).
        hidden: Hidden widths of the MADE conditioner.
        invert: ``True`` makes density evaluation one pass (MAF), ``False`` sampling (IAF).
        order: Autoregressive order, ``order[i]`` = position of feature ``i``
            (default natural order).
        activation: Activation of the conditioner.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> maf = pf.MaskedAutoregressive(3, transformer=pf.AffineTransformer(), invert=True)
        >>> x, log_det = maf.inverse_and_log_det(torch.randn(8, 3))  # one pass
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        transformer: Transformer | None = None,
        hidden: Sequence[int] = (64, 64),
        invert: bool = False,
        order: Sequence[int] | np.ndarray | None = None,
        activation: str = "relu",
    ) -> None:
        super().__init__(features, context)
        features, context = self.features, self.context_features
        self.transformer = transformer if transformer is not None else AffineTransformer()
        self.invert = bool(invert)
        self.order = np.arange(features) if order is None else np.asarray(order, dtype=np.int64)
        self.conditioner = MADE(
            features,
            self.transformer.params_per_feature,
            hidden,
            context,
            self.order,
            activation,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", transformer={self.transformer!r}, invert={self.invert}"

    def _one_pass(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        x, context = broadcast_context(x, context)
        y, log_det = self.transformer.forward(x, self.conditioner(x, context))
        return y, log_det.sum(-1)

    def _sequential(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        y, context = broadcast_context(y, context)
        x = y.new_zeros(())  # the first pass sees all-zero input
        x = x.expand_as(y)
        for _ in range(self.features):
            x, log_det = self.transformer.inverse(y, self.conditioner(x, context))
        return x, log_det.sum(-1)

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if self.invert:
            return self._sequential(x, context)
        return self._one_pass(x, context)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if self.invert:
            return self._one_pass(y, context)
        return self._sequential(y, context)
