"""Conditioner networks: a plain MLP, a masked MLP (MADE), a Lipschitz MLP, a conv ResNet.

Both keep their linear layers in ``self.layers`` (an ``nn.ModuleList``), so parameter
names are ``layers.0.weight``, ``layers.0.bias``, ... in both backends, with weights stored
``(out, in)``. The last layer is zero-initialised: a fresh conditioner outputs zeros and
the transformer it feeds starts as the identity.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyroflows import _checks, _image, structure
from pyroflows._residual import (
    LIPSWISH_SLOPE,
    POWER_CHECK,
    POWER_ITERATIONS,
    POWER_RTOL,
    check_lipschitz_activation,
)

__all__ = [
    "MLP",
    "MaskedLinear",
    "MADE",
    "get_activation",
    "LipschitzLinear",
    "LipschitzMLP",
    "lipswish",
    "LIPSCHITZ_ACTIVATIONS",
    "ConvResNet",
]

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


class ConvResNet(nn.Module):
    """A small convolutional ResNet: the conditioner of image coupling layers.

    ``input`` (3x3 conv to ``hidden`` channels), ``blocks`` residual blocks
    (``x + conv(act(conv(act(x))))``, 3x3 convs) and ``output`` (3x3 conv, zero-initialised,
    so a fresh conditioner outputs zeros). Padding keeps the height and width. Parameter
    names: ``input.weight``, ``blocks.0.0.weight``, ``blocks.0.1.weight``, ...,
    ``output.weight`` (weights ``(out, in, 3, 3)`` in both backends).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        hidden: Channels of the hidden layers.
        blocks: Number of residual blocks.
        activation: Name of the activation.

    Examples:
        >>> import torch
        >>> from pyroflows.pyro.nn import ConvResNet
        >>> ConvResNet(2, 4, hidden=8, blocks=1)(torch.ones(5, 2, 6, 6)).shape
        torch.Size([5, 4, 6, 6])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        blocks: int = 2,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        hidden = _checks.check_int("hidden", hidden, 1)
        blocks = _checks.check_int("blocks", blocks, 0)
        self.input = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Conv2d(hidden, hidden, 3, padding=1) for _ in range(2)])
            for _ in range(blocks)
        )
        self.output = nn.Conv2d(hidden, out_channels, 3, padding=1)
        self.activation = activation
        self._act = get_activation(activation)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, in_channels, H, W) -> (N, out_channels, H, W)``."""
        h = _conv3x3(self.input, x)
        for first, second in self.blocks:
            h = h + _conv3x3(second, self._act(_conv3x3(first, self._act(h))))
        return _conv3x3(self.output, self._act(h))


#: Largest dense matrix (``in * H * W`` by ``out * H * W`` entries) of a 3x3 convolution that
#: `_conv3x3` runs as one matrix product on CPU: for any image size, and, on images of at
#: most 9 pixels (where the dense product does no more multiplications than the
#: convolution), up to `DENSE_CONV_SMALL_IMAGE` entries.
DENSE_CONV_ENTRIES = 2**17
DENSE_CONV_SMALL_IMAGE = 2**20


@functools.lru_cache(maxsize=32)
def _conv3x3_taps(height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """`pyroflows._image.conv3x3_taps` as a tensor of ``dtype`` on ``device``."""
    with torch.inference_mode(False):  # a cached normal tensor, usable under autograd later
        return torch.as_tensor(_image.conv3x3_taps(height, width), dtype=dtype, device=device)


def _conv3x3(layer: nn.Conv2d, x: Tensor) -> Tensor:
    """``layer(x)`` for a 3x3, padding-1 ``nn.Conv2d`` on ``(N, C, H, W)``.

    On CPU, small images with few channels go through the convolution's dense matrix
    ``(C H W, out H W)`` (built from the kernel by a 0/1 matrix, so its entries are the
    kernel's exactly) in one ``addmm``: there oneDNN's per-call overhead, mostly in the
    backward pass, outweighs the arithmetic (a Glow step on 8x8 digits spends half its time
    in convolutions of 2x2 and 4x4 images). The result is the convolution's up to float
    rounding (the sums run in another order); the parameters are the layer's own.
    """
    n, channels, height, width = x.shape
    pixels = height * width
    out = layer.out_channels
    entries = channels * out * pixels * pixels
    if x.device.type != "cpu" or not (
        entries <= DENSE_CONV_ENTRIES or (pixels <= 9 and entries <= DENSE_CONV_SMALL_IMAGE)
    ):
        return layer(x)
    taps = _conv3x3_taps(height, width, layer.weight.dtype, layer.weight.device)
    # (out, C, q, p) -> (C q, out p): x's pixels q in, the output's pixels p out
    dense = (layer.weight.reshape(out * channels, 9) @ taps).view(out, channels, pixels, pixels)
    dense = dense.permute(1, 2, 0, 3).reshape(channels * pixels, out * pixels)
    bias = layer.bias.repeat_interleave(pixels)
    return torch.addmm(bias, x.reshape(n, channels * pixels), dense).view(n, out, height, width)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask ``(out, in)``.

    The weight starts as `torch.nn.Linear`'s, drawn for the full input width (not rescaled
    to the number of inputs the mask leaves a unit): the smaller start of the masked units
    is what lets early stopping find the better held-out fit on small data sets (held-out
    NLL of ``NSF`` on breast_cancer 0.06 against 0.14 nats per dimension with the rescaled
    start; ``benchmarks/README.md``, "Density quality").
    """

    def __init__(self, mask: np.ndarray) -> None:
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features)
        self.register_buffer("mask", torch.as_tensor(mask, dtype=torch.get_default_dtype()))

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


# ------------------------------------------------------------------ Lipschitz networks
#
# For residual flows: `LipschitzLinear` keeps the spectral norm of its weight below a
# coefficient by power iteration on persistent vectors ``u`` and ``v`` (buffers that travel with
# `get_params`, so the other backend and every log-det mode see the same normalised weights). In
# training mode each call first refines ``u`` and ``v`` from their last values (until the
# estimate settles: a few iterations when the weights moved little), so the bound holds after
# every optimiser step without the user calling anything; in eval mode the stored vectors are
# used as they are. The refinement runs only when the weight has changed since the last one
# (torch's version counter of the tensor, which every in-place update such as an optimiser step
# bumps), so between two steps every call computes the same map: a sample and its score, a round
# trip, a Jacobian all see one set of normalised weights. The normalised weights are computed
# once per call of the owner (`LipschitzMLP.weights`); the network is then a pure function of
# them (`LipschitzMLP.apply`), which the log-det estimators and the fixed-point inverse evaluate
# many times. Power iteration approaches the spectral norm from below; when a large step makes
# the top two singular values nearly equal, the warm-started vectors can settle near the second
# one, short of the norm by at most the gap between the two (1.4% seen after Adam steps at lr
# 0.1): a network of several layers is still far inside its bound (``lipschitz ** layers``).


def lipswish(x: Tensor, slope: Tensor | None = None) -> Tensor:
    """``x * sigmoid(beta * x) / 1.1`` with ``beta = softplus(slope)`` (``beta = 1`` without
    a slope): the swish, scaled to be 1-Lipschitz for every ``beta > 0`` (Chen et al.,
    2019, who learn ``beta``; a `LipschitzMLP` learns one per hidden layer)."""
    if slope is None:
        return x * torch.sigmoid(x) / 1.1
    return x * torch.sigmoid(F.softplus(slope) * x) / 1.1


#: The 1-Lipschitz activations a residual block accepts.
LIPSCHITZ_ACTIVATIONS = {"lipswish": lipswish, "elu": F.elu, "tanh": torch.tanh}


class LipschitzLinear(nn.Linear):
    """A linear layer whose weight is divided by ``max(1, sigma / lipschitz)``.

    ``sigma = u^T W v`` estimates the spectral norm of ``W`` by power iteration on the buffers
    ``u`` ``(out,)`` and ``v`` ``(in,)``.

    Args:
        in_features: Input size.
        out_features: Output size.
        lipschitz: Bound on the spectral norm of the normalised weight.
    """

    state_buffers = ("u", "v")

    def __init__(self, in_features: int, out_features: int, lipschitz: float) -> None:
        super().__init__(in_features, out_features)
        self.lipschitz = lipschitz
        u = torch.randn(out_features)
        v = torch.randn(in_features)
        self.register_buffer("u", u / u.norm())
        self.register_buffer("v", v / v.norm())
        self._refined_at = -1  # the weight's version at the last refinement
        self.power_iterate()

    @torch.no_grad()
    def power_iterate(self, iterations: int = POWER_ITERATIONS) -> None:
        """Refine ``u`` and ``v`` in place by power iteration: at most ``iterations`` steps,
        fewer once the spectral-norm estimate ``|W v|`` settles (``POWER_RTOL``, checked every
        ``POWER_CHECK`` steps). A zero weight keeps its vectors (a zeroed layer must not lose
        them), and so does a run that ends on a zero or non-finite vector."""
        weight = self.weight.detach()
        if not bool(weight.any()):
            self.mark_refined()
            return
        u, v = self.u, self.v
        sigma = (weight @ v).norm()
        for i in range(1, iterations + 1):
            wtu = torch.mv(weight.t(), u)
            v = wtu / wtu.norm()
            wv = torch.mv(weight, v)
            previous, sigma = sigma, wv.norm()
            u = wv / sigma
            if (i % POWER_CHECK == 0 or i == iterations) and bool(
                (sigma - previous).abs() <= POWER_RTOL * sigma
            ):
                break
        if bool(torch.isfinite(u).all() & torch.isfinite(v).all() & (sigma > 0)):
            self.u.copy_(u)
            self.v.copy_(v)
        self.mark_refined()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._refined_at = None  # a copy (pickle, deepcopy) keeps its vectors as they are

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.mark_refined()  # loaded vectors are used as they are until the weight changes

    def mark_refined(self) -> None:
        """Take ``u`` and ``v`` as refined for the current weight (`set_params` calls it, so
        loaded vectors are used as they are until the weight changes)."""
        self._refined_at = self.weight._version

    def normalized_weight(self) -> Tensor:
        """The weight divided by ``max(1, sigma / lipschitz)`` (in training mode, ``u`` and
        ``v`` refined first if the weight changed since their last refinement)."""
        if self._refined_at is None:
            self.mark_refined()
        if self.training and self.weight._version != self._refined_at:
            self.power_iterate()
        # new tensors: a later call refines u and v in place while this graph may be alive
        u, v = self.u / self.u.norm(), self.v / self.v.norm()
        sigma = torch.dot(u, self.weight @ v)
        return self.weight / torch.clamp(sigma / self.lipschitz, min=1.0)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lipschitz={self.lipschitz}"


class LipschitzMLP(nn.Module):
    """An MLP of `LipschitzLinear` layers and a 1-Lipschitz activation.

    Its Lipschitz constant is at most ``lipschitz ** len(layers)``. The last layer is
    zero-initialised, so a fresh network outputs zeros.

    Args:
        in_features: Input size.
        out_features: Output size.
        hidden: Hidden widths.
        lipschitz: Bound on each layer's spectral norm, in ``(0, 1)``.
        activation: ``"lipswish"``, ``"elu"`` or ``"tanh"``.

    Examples:
        >>> import torch
        >>> from pyroflows.pyro.nn import LipschitzMLP
        >>> net = LipschitzMLP(3, 3, hidden=(16,), lipschitz=0.9)
        >>> net(torch.ones(2, 3)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        lipschitz: float = 0.9,
        activation: str = "lipswish",
    ) -> None:
        super().__init__()
        check_lipschitz_activation(activation)
        sizes = [in_features, *_checks.check_hidden(hidden), out_features]
        self.layers = nn.ModuleList(
            LipschitzLinear(a, b, lipschitz) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.activation = activation
        self._act = LIPSCHITZ_ACTIVATIONS[activation]
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)
        # LipSwish learns its slope beta = softplus(slope) per hidden layer, from beta = 1
        slopes = torch.full((len(sizes) - 2,), LIPSWISH_SLOPE) if activation == "lipswish" else None
        self.slopes = None if slopes is None else nn.Parameter(slopes)

    def weights(self) -> list[tuple[Tensor, Tensor, Tensor | None]]:
        """``(weight, bias, slope)`` of every layer: the normalised weight (refined first in
        training mode), the bias, and the slope of the LipSwish after it (``None`` for the
        last layer and for the other activations)."""
        out = []
        for i, layer in enumerate(self.layers):
            slope = self.slopes[i] if self.slopes is not None and i < len(self.slopes) else None
            out.append((layer.normalized_weight(), layer.bias, slope))
        return out

    def apply(self, weights: list[tuple[Tensor, Tensor, Tensor | None]], x: Tensor) -> Tensor:
        """The network with the given normalised weights at ``x``."""
        *inner, (w_last, b_last, _) = weights
        for w, b, slope in inner:
            h = F.linear(x, w, b)
            x = self._act(h) if slope is None else lipswish(h, slope)
        return F.linear(x, w_last, b_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.apply(self.weights(), x)
