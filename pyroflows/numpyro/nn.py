"""Conditioner networks: a plain MLP and a masked MLP (MADE), as equinox modules.

The JAX twin of `pyroflows.pyro.nn`. Linear layers live in ``layers`` (a tuple), so
parameter paths are ``layers.0.weight``, ``layers.0.bias``, ... with weights stored
``(out, in)``, as in torch. The last layer is zero-initialised.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from pyroflows import _checks, structure

__all__ = ["Linear", "MLP", "MaskedLinear", "MADE", "get_activation"]

_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch's default gelu
    "silu": jax.nn.silu,
}


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


def _check_key(key: Array | None, owner: str) -> Array:
    if key is None:
        raise ValueError(
            f"{owner} needs a random key: pass key=jax.random.key(seed) (keyword only)"
        )
    return key


class Linear(eqx.Module):
    """``y = x @ weight.T + bias`` with torch's default initialisation.

    Args:
        in_features: Input size.
        out_features: Output size.
        key: Random key (keyword only).
        zero: Initialise weight and bias at zero.
    """

    weight: Array
    bias: Array

    def __init__(self, in_features: int, out_features: int, *, key: Array, zero: bool = False):
        if zero:
            self.weight = jnp.zeros((out_features, in_features))
            self.bias = jnp.zeros((out_features,))
            return
        bound = 1 / np.sqrt(max(in_features, 1))
        wkey, bkey = jax.random.split(key)
        self.weight = jax.random.uniform(
            wkey, (out_features, in_features), minval=-bound, maxval=bound
        )
        self.bias = jax.random.uniform(bkey, (out_features,), minval=-bound, maxval=bound)

    def __call__(self, x: Array) -> Array:
        return x @ self.weight.T + self.bias


class MaskedLinear(eqx.Module):
    """A linear layer whose weight is multiplied by a fixed boolean mask ``(out, in)``.

    The mask is a boolean array, so it is not an inexact array: equinox's and NumPyro's
    parameter filters (``eqx.is_inexact_array``) leave it out of training.
    """

    weight: Array
    bias: Array
    mask: Array

    def __init__(self, mask: np.ndarray, *, key: Array, zero: bool = False) -> None:
        out_features, in_features = mask.shape
        linear = Linear(in_features, out_features, key=key, zero=zero)
        fan_in = np.maximum(mask.sum(-1, keepdims=True), 1)
        self.weight = linear.weight * jnp.asarray(np.sqrt(in_features / fan_in))
        self.bias = linear.bias
        self.mask = jnp.asarray(mask, dtype=bool)

    def __call__(self, x: Array) -> Array:
        return x @ jnp.where(self.mask, self.weight, 0).T + self.bias


class MLP(eqx.Module):
    """Multi-layer perceptron with a zero-initialised output layer.

    Args:
        in_features: Input size.
        out_features: Output size.
        hidden: Hidden layer widths.
        activation: Name of the activation between layers.
        key: Random key (keyword only).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from pyroflows.numpyro.nn import MLP
        >>> MLP(3, 4, hidden=(16,), key=jax.random.key(0))(jnp.ones((2, 3))).shape
        (2, 4)
    """

    layers: tuple[Linear, ...]
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        *,
        key: Array | None = None,
    ) -> None:
        key = _check_key(key, "MLP")
        sizes = [in_features, *_check_hidden(hidden), out_features]
        get_activation(activation)
        keys = jax.random.split(key, len(sizes) - 1)
        last = len(sizes) - 2
        self.layers = tuple(
            Linear(a, b, key=k, zero=i == last)
            for i, (a, b, k) in enumerate(zip(sizes[:-1], sizes[1:], keys, strict=True))
        )
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        act = get_activation(self.activation)
        *inner, last = self.layers
        for layer in inner:
            x = act(layer(x))
        return last(x)


class MADE(eqx.Module):
    """Masked autoencoder for distribution estimation (Germain et al., 2015).

    Maps ``(..., features)`` (and an optional context) to ``(..., features,
    params_per_feature)``; the parameters of feature ``i`` depend only on the features that
    precede ``i`` in ``order`` and on the context. Masks from `pyroflows.structure.made_masks`.

    Args:
        features: Event size.
        params_per_feature: Number of parameters per feature.
        hidden: Hidden widths.
        context: Context size.
        order: Autoregressive order.
        activation: Activation name.
        key: Random key (keyword only).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from pyroflows.numpyro.nn import MADE
        >>> MADE(3, 2, hidden=(16,), key=jax.random.key(0))(jnp.ones((5, 3))).shape
        (5, 3, 2)
    """

    layers: tuple[MaskedLinear, ...]
    features: int = eqx.field(static=True)
    params_per_feature: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        features: int,
        params_per_feature: int,
        hidden: Sequence[int] = (64, 64),
        context: int = 0,
        order: np.ndarray | None = None,
        activation: str = "relu",
        *,
        key: Array | None = None,
    ) -> None:
        key = _check_key(key, "MADE")
        masks = structure.made_masks(
            features, _check_hidden(hidden), params_per_feature, context, order
        )
        get_activation(activation)
        keys = jax.random.split(key, len(masks))
        self.layers = tuple(
            MaskedLinear(m, key=k, zero=i == len(masks) - 1)
            for i, (m, k) in enumerate(zip(masks, keys, strict=True))
        )
        self.features = features
        self.params_per_feature = params_per_feature
        self.activation = activation

    def __call__(self, x: Array, context: Array | None = None) -> Array:
        if context is not None:
            x = jnp.concatenate([x, context], axis=-1)
        act = get_activation(self.activation)
        *inner, last = self.layers
        for layer in inner:
            x = act(layer(x))
        out = last(x)
        return out.reshape(*out.shape[:-1], self.features, self.params_per_feature)
