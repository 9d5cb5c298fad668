"""Conditioner networks: a plain MLP and a masked MLP (MADE).

Both keep their linear layers in ``self.layers`` (an ``nn.ModuleList``), so parameter
names are ``layers.0.weight``, ``layers.0.bias``, ... in both backends, with weights stored
``(out, in)``. The last layer is zero-initialised: a fresh conditioner outputs zeros and
the transformer it feeds starts as the identity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyroflows import _checks, structure

__all__ = ["MLP", "MaskedLinear", "MADE", "get_activation"]

_ACTIVATIONS = {"relu": F.relu, "elu": F.elu, "tanh": torch.tanh, "gelu": F.gelu, "silu": F.silu}


def get_activation(name: str):
    """The activation function called ``name`` (relu, elu, tanh, gelu, silu)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}"
        ) from None


def _check_hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    return _checks.check_hidden(hidden)


class MLP(nn.Module):
    """Multi-layer perceptron with a zero-initialised output layer.

    Args:
        in_features: Input size.
        out_features: Output size.
        hidden: Hidden layer widths.
        activation: Name of the activation between layers.

    Examples:
        >>> import torch
        >>> from pyroflows.pyro.nn import MLP
        >>> MLP(3, 4, hidden=(16,))(torch.ones(2, 3)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        sizes = [in_features, *_check_hidden(hidden), out_features]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.activation = activation
        self._act = get_activation(activation)
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        *inner, last = self.layers
        for layer in inner:
            x = self._act(layer(x))
        return last(x)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask ``(out, in)``."""

    def __init__(self, mask: np.ndarray) -> None:
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features)
        self.register_buffer("mask", torch.as_tensor(mask, dtype=torch.get_default_dtype()))
        # Rescale the default init to the number of inputs a unit really has.
        with torch.no_grad():
            fan_in = self.mask.sum(-1, keepdim=True).clamp_min(1)
            self.weight.mul_((in_features / fan_in).sqrt())

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al., 2015).

    Maps ``(..., features)`` (and an optional context ``(..., context)``) to parameters
    ``(..., features, params_per_feature)`` where the parameters of feature ``i`` depend
    only on features that precede ``i`` in ``order`` (and on the context).

    Args:
        features: Event size.
        params_per_feature: Number of parameters per feature.
        hidden: Hidden widths.
        context: Context size.
        order: Autoregressive order (see `pyroflows.structure.made_degrees`).
        activation: Activation name.

    Examples:
        >>> import torch
        >>> from pyroflows.pyro.nn import MADE
        >>> MADE(3, 2, hidden=(16,))(torch.ones(5, 3)).shape
        torch.Size([5, 3, 2])
    """

    def __init__(
        self,
        features: int,
        params_per_feature: int,
        hidden: Sequence[int] = (64, 64),
        context: int = 0,
        order: np.ndarray | None = None,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        masks = structure.made_masks(
            features, _check_hidden(hidden), params_per_feature, context, order
        )
        self.features = features
        self.params_per_feature = params_per_feature
        self.layers = nn.ModuleList(MaskedLinear(m) for m in masks)
        self.activation = activation
        self._act = get_activation(activation)
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if context is not None:
            x = torch.cat([x, context], dim=-1)
        *inner, last = self.layers
        for layer in inner:
            x = self._act(layer(x))
        out = last(x)
        return out.unflatten(-1, (self.features, self.params_per_feature))
