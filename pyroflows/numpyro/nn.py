"""Conditioner networks: a plain MLP, a masked MLP (MADE) and a Lipschitz MLP, as equinox
modules.

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

from pyroflows import _checks, _image, structure
from pyroflows._residual import (
    LIPSWISH_SLOPE,
    POWER_ITERATIONS,
    POWER_RTOL,
    check_lipschitz_activation,
)

__all__ = [
    "Linear",
    "MLP",
    "MaskedLinear",
    "MADE",
    "get_activation",
    "LipschitzLinear",
    "LipschitzMLP",
    "lipswish",
    "power_iterate",
    "refine_lipschitz",
    "LIPSCHITZ_ACTIVATIONS",
    "Conv3x3",
    "ConvResNet",
]

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


def _torch_init(shape: tuple[int, ...], fan_in: int, key: Array, zero: bool):
    """``(weight, bias)`` as torch initialises a linear or conv layer: ``U(-b, b)`` with
    ``b = 1 / sqrt(fan_in)`` for both (zeros with ``zero``); ``bias`` of shape ``shape[:1]``."""
    if zero:
        return jnp.zeros(shape), jnp.zeros(shape[:1])
    bound = 1 / np.sqrt(max(fan_in, 1))
    wkey, bkey = jax.random.split(key)
    weight = jax.random.uniform(wkey, shape, minval=-bound, maxval=bound)
    return weight, jax.random.uniform(bkey, shape[:1], minval=-bound, maxval=bound)


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
        shape = (out_features, in_features)
        self.weight, self.bias = _torch_init(shape, in_features, key, zero)

    def __call__(self, x: Array) -> Array:
        return x @ self.weight.T + self.bias


class Conv3x3(eqx.Module):
    """A 3x3 convolution with padding 1 on ``(N, C, H, W)``, stored as torch stores it:
    ``weight`` ``(out, in, 3, 3)`` and ``bias`` ``(out,)``, torch's default initialisation.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        key: Random key (keyword only).
        zero: Initialise weight and bias at zero.
    """

    weight: Array
    bias: Array

    def __init__(self, in_channels: int, out_channels: int, *, key: Array, zero: bool = False):
        shape = (out_channels, in_channels, 3, 3)
        self.weight, self.bias = _torch_init(shape, in_channels * 9, key, zero)

    def __call__(self, x: Array) -> Array:
        weight, bias = self.weight.astype(x.dtype), self.bias.astype(x.dtype)
        n, channels, height, width = x.shape
        out, pixels = weight.shape[0], height * width
        if pixels <= 9 and channels * out * pixels * pixels <= DENSE_CONV_SMALL_IMAGE:
            # XLA's CPU convolution is slow on tiny images (64 -> 64 channels on 2x2
            # pixels: 4 ms for a batch of 64); the dense matrix of the convolution,
            # ``(C H W, out H W)``, built from the kernel by a 0/1 matrix (its entries are
            # the kernel's exactly), takes one matrix product and the same multiplications
            # (each output pixel sees every input pixel). Equal up to float rounding.
            taps = jnp.asarray(_image.conv3x3_taps(height, width), dtype=x.dtype)
            dense = (weight.reshape(out * channels, 9) @ taps).reshape(
                out, channels, pixels, pixels
            )
            dense = dense.transpose(1, 2, 0, 3).reshape(channels * pixels, out * pixels)
            y = x.reshape(n, channels * pixels) @ dense
            return y.reshape(n, out, height, width) + bias[:, None, None]
        y = jax.lax.conv_general_dilated(
            x, weight, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW")
        )
        return y + bias[:, None, None]


#: Largest dense matrix (``in * H * W`` by ``out * H * W`` entries) of a 3x3 convolution on
#: an image of at most 9 pixels that `Conv3x3` runs as one matrix product instead of XLA's
#: convolution (the torch twin, `pyroflows.pyro.nn`, has the same rule and one more).
DENSE_CONV_SMALL_IMAGE = 2**20


class ConvResNet(eqx.Module):
    """A small convolutional ResNet, the twin of `pyroflows.pyro.nn.ConvResNet`: ``input``
    (3x3 conv to ``hidden`` channels), ``blocks`` residual blocks
    (``x + conv(act(conv(act(x))))``) and a zero-initialised ``output`` conv; the same
    parameter names and layouts as in torch.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from pyroflows.numpyro.nn import ConvResNet
        >>> net = ConvResNet(2, 4, hidden=8, blocks=1, key=jax.random.key(0))
        >>> net(jnp.ones((5, 2, 6, 6))).shape
        (5, 4, 6, 6)
    """

    input: Conv3x3
    blocks: tuple[tuple[Conv3x3, Conv3x3], ...]
    output: Conv3x3
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        blocks: int = 2,
        activation: str = "relu",
        *,
        key: Array | None = None,
    ) -> None:
        key = _check_key(key, "ConvResNet")
        hidden = _checks.check_int("hidden", hidden, 1)
        blocks = _checks.check_int("blocks", blocks, 0)
        get_activation(activation)
        keys = iter(jax.random.split(key, 2 + 2 * blocks))
        self.input = Conv3x3(in_channels, hidden, key=next(keys))
        self.blocks = tuple(
            (Conv3x3(hidden, hidden, key=next(keys)), Conv3x3(hidden, hidden, key=next(keys)))
            for _ in range(blocks)
        )
        self.output = Conv3x3(hidden, out_channels, key=next(keys), zero=True)
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        """``(N, in_channels, H, W) -> (N, out_channels, H, W)``."""
        act = get_activation(self.activation)
        h = self.input(x)
        for first, second in self.blocks:
            h = h + second(act(first(act(h))))
        return self.output(act(h))


class MaskedLinear(eqx.Module):
    """A linear layer whose weight is multiplied by a fixed boolean mask ``(out, in)``.

    The mask is a boolean array, so it is not an inexact array: equinox's and NumPyro's
    parameter filters (``eqx.is_inexact_array``) leave it out of training. The weight starts
    as `Linear`'s, drawn for the full input width (as in torch; not rescaled to the inputs the
    mask leaves a unit).
    """

    weight: Array
    bias: Array
    mask: Array

    def __init__(self, mask: np.ndarray, *, key: Array, zero: bool = False) -> None:
        out_features, in_features = mask.shape
        linear = Linear(in_features, out_features, key=key, zero=zero)
        self.weight = linear.weight
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


# ------------------------------------------------------------------ Lipschitz networks
#
# The JAX twin of the torch backend's Lipschitz networks. `LipschitzLinear` holds ``u`` and
# ``v``, the power-iteration vectors of its weight (arrays of the module that travel with
# `get_params`, never trained: they enter the maths through ``stop_gradient``). A module is
# immutable, so the convention differs from torch's in one point: there is no train / eval
# switch: every call refines ``u`` and ``v`` from their stored values
# by power iteration until the spectral-norm estimate settles, and uses the stored ones as
# they are when they are converged already (a pure function of the weight and the stored
# vectors: between two optimiser steps every call computes the same map). `refine_lipschitz`
# stores the refined vectors; `pyroflows.numpyro.fit` calls it after every step, so that the
# next call starts from converged vectors, and a flow fresh from `fit` or from `set_params`
# of a torch flow uses its stored vectors, as torch's eval mode does (the two backends then
# agree to 1e-8).


def lipswish(x: Array, slope: Array | None = None) -> Array:
    """``x * sigmoid(beta * x) / 1.1`` with ``beta = softplus(slope)`` (``beta = 1`` without
    a slope), as `pyroflows.pyro.nn.lipswish`."""
    if slope is None:
        return x * jax.nn.sigmoid(x) / 1.1
    return x * jax.nn.sigmoid(jax.nn.softplus(slope) * x) / 1.1


#: The 1-Lipschitz activations a residual block accepts.
LIPSCHITZ_ACTIVATIONS = {"lipswish": lipswish, "elu": jax.nn.elu, "tanh": jnp.tanh}


def apply_lipschitz(activation: str, weights, x: Array) -> Array:
    """A `LipschitzMLP` as a pure function of its ``(weight, bias, slope)`` list."""
    act = LIPSCHITZ_ACTIVATIONS[activation]
    *inner, (w_last, b_last, _) = weights
    for w, b, slope in inner:
        h = x @ w.T + b
        x = act(h) if slope is None else lipswish(h, slope)
    return x @ w_last.T + b_last


def _normalize(value: Array, previous: Array) -> Array:
    norm = jnp.linalg.norm(value)
    tiny = jnp.finfo(value.dtype).tiny ** 0.5
    return jnp.where(norm > tiny, value / jnp.maximum(norm, tiny), previous)


def power_iterate(weight: Array, u: Array, v: Array, iterations: int = POWER_ITERATIONS):
    """``(u, v)`` refined by power iteration on ``weight`` (at most ``iterations`` steps,
    fewer once ``u^T W v`` settles to ``POWER_RTOL``), without gradients. Vectors that are
    converged already (the first step moves the estimate by less than ``POWER_RTOL``) come
    back as they are."""
    weight, u, v = (jax.lax.stop_gradient(a) for a in (weight, u, v))
    u, v = _normalize(u, u), _normalize(v, v)

    def body(state):
        i, u, v, sigma, _ = state
        v = _normalize(weight.T @ u, v)
        u = _normalize(weight @ v, u)
        new = u @ (weight @ v)
        return i + 1, u, v, new, jnp.abs(new - sigma) > POWER_RTOL * jnp.abs(new)

    def cond(state):
        return (state[0] < iterations) & state[4]

    start = (0, u, v, u @ (weight @ v), jnp.asarray(True))
    steps, new_u, new_v, _, _ = jax.lax.while_loop(cond, body, start)
    # settled at the first step: the stored vectors were converged; keep them as they are
    converged = steps <= 1
    return jnp.where(converged, u, new_u), jnp.where(converged, v, new_v)


class LipschitzLinear(eqx.Module):
    """A linear layer whose weight is divided by ``max(1, sigma / lipschitz)``, ``sigma`` the
    power-iteration estimate ``u^T W v`` of its spectral norm.

    Args:
        in_features: Input size.
        out_features: Output size.
        lipschitz: Bound on the spectral norm of the normalised weight.
        key: Random key (keyword only).
        zero: Initialise weight and bias at zero.
    """

    weight: Array
    bias: Array
    u: Array
    v: Array
    lipschitz: float = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        lipschitz: float,
        *,
        key: Array,
        zero: bool = False,
    ) -> None:
        lkey, ukey, vkey = jax.random.split(key, 3)
        linear = Linear(in_features, out_features, key=lkey, zero=zero)
        self.weight, self.bias = linear.weight, linear.bias
        self.lipschitz = lipschitz
        u = jax.random.normal(ukey, (out_features,))
        v = jax.random.normal(vkey, (in_features,))
        self.u, self.v = power_iterate(self.weight, u, v)

    def vectors(self, refine: bool) -> tuple[Array, Array]:
        """``(u, v)``: refined from the stored ones when ``refine``, else as stored."""
        if refine:
            return power_iterate(self.weight, self.u, self.v)
        u, v = jax.lax.stop_gradient(self.u), jax.lax.stop_gradient(self.v)
        return _normalize(u, u), _normalize(v, v)

    def normalized_weight(self, refine: bool) -> Array:
        u, v = self.vectors(refine)
        sigma = u @ (self.weight @ v)
        return self.weight / jnp.maximum(sigma / self.lipschitz, 1.0)


class LipschitzMLP(eqx.Module):
    """An MLP of `LipschitzLinear` layers and a 1-Lipschitz activation (Lipschitz constant at
    most ``lipschitz ** len(layers)``); the last layer is zero-initialised.

    Args:
        in_features: Input size.
        out_features: Output size.
        hidden: Hidden widths.
        lipschitz: Bound on each layer's spectral norm, in ``(0, 1)``.
        activation: ``"lipswish"``, ``"elu"`` or ``"tanh"``.
        key: Random key (keyword only).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from pyroflows.numpyro.nn import LipschitzMLP
        >>> net = LipschitzMLP(3, 3, hidden=(16,), lipschitz=0.9, key=jax.random.key(0))
        >>> net(jnp.ones((2, 3))).shape
        (2, 3)
    """

    layers: tuple[LipschitzLinear, ...]
    slopes: Array | None
    activation: str = eqx.field(static=True)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        lipschitz: float = 0.9,
        activation: str = "lipswish",
        *,
        key: Array | None = None,
    ) -> None:
        key = _check_key(key, "LipschitzMLP")
        check_lipschitz_activation(activation)
        sizes = [in_features, *_check_hidden(hidden), out_features]
        keys = jax.random.split(key, len(sizes) - 1)
        last = len(sizes) - 2
        self.layers = tuple(
            LipschitzLinear(a, b, lipschitz, key=k, zero=i == last)
            for i, (a, b, k) in enumerate(zip(sizes[:-1], sizes[1:], keys, strict=True))
        )
        self.activation = activation
        # LipSwish learns its slope beta = softplus(slope) per hidden layer, from beta = 1
        self.slopes = (
            jnp.full((len(sizes) - 2,), LIPSWISH_SLOPE) if activation == "lipswish" else None
        )

    def weights(self, refine: bool = True) -> list[tuple[Array, Array, Array | None]]:
        """``(weight, bias, slope)`` of every layer (as `pyroflows.pyro.nn.LipschitzMLP`)."""
        out = []
        for i, layer in enumerate(self.layers):
            slope = self.slopes[i] if self.slopes is not None and i < len(self.slopes) else None
            out.append((layer.normalized_weight(refine), layer.bias, slope))
        return out

    def apply(self, weights: list[tuple[Array, Array, Array | None]], x: Array) -> Array:
        """The network with the given normalised weights at ``x``."""
        return apply_lipschitz(self.activation, weights, x)

    def refined(self) -> LipschitzMLP:
        """This network with every layer's ``u`` and ``v`` refined and stored."""
        layers = []
        for layer in self.layers:
            u, v = power_iterate(layer.weight, layer.u, layer.v)
            layers.append(eqx.tree_at(lambda m: (m.u, m.v), layer, (u, v)))
        return eqx.tree_at(lambda m: m.layers, self, tuple(layers))

    def __call__(self, x: Array) -> Array:
        return self.apply(self.weights(), x)


def refine_lipschitz(tree):
    """``tree`` (a flow, a chain, a network) with the power-iteration vectors of every
    `LipschitzLinear` refined and stored (`pyroflows.numpyro.fit` calls it after each step;
    call it after the optimiser step of your own loop to save the next calls' iterations)."""

    def refine(leaf):
        if not isinstance(leaf, LipschitzLinear):
            return leaf
        if leaf.weight.ndim == 3:  # stacked layers (`pyroflows.numpyro.Stack`)
            u, v = jax.vmap(power_iterate)(leaf.weight, leaf.u, leaf.v)
        else:
            u, v = power_iterate(leaf.weight, leaf.u, leaf.v)
        return eqx.tree_at(lambda m: (m.u, m.v), leaf, (u, v))

    return jax.tree_util.tree_map(refine, tree, is_leaf=lambda x: isinstance(x, LipschitzLinear))
