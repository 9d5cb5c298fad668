"""Image structure and preprocessing: squeeze, factor-out, multi-scale models, uniform
dequantization, logit preprocessing, bits/dim.

`Squeeze` trades space for channels, `FactorOut` runs a bijection on the first channels of
an image and passes the others (the factored-out half of a multi-scale model) unchanged,
and `multi_scale` builds a whole multi-scale model (`pyroflows.pyro.RealNVP` with
``shape=``, `pyroflows.pyro.Glow`) as one bijection from a plan of `pyroflows._image`.

Discrete data with ``levels`` values per dimension (pixel intensities ``0..levels-1``) is
made continuous with `dequantize` (``(x + u) / levels`` with ``u ~ U[0, 1)``), which
maps it into ``(0, 1)``. A flow whose last layer is `Logit` then models it on the
real line. `bits_per_dim` turns a continuous log-density of dequantized data into
the usual bits per dimension of the discrete data (a variational bound).

Variational dequantization (Flow++, Ho et al., 2019) learns the noise instead: with
``u ~ q(u | x)`` on ``(0, 1)^D``,
``log P(x) >= E_q[log p((x + u) / levels) - log q(u | x)] - D log(levels)``, which is
tighter, since a flat density inside a cell is what a smooth flow fits worst.
`VariationalDequantizer` is ``q``: a conditional flow on the noise, given the image, ending
in a sigmoid so that ``u`` stays inside the cell; `bits_per_dim` takes its ``log_q``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from pyroflows import _checks, _image, structure
from pyroflows.pyro.core import Bijection, Chain, Invert, chain_forward, check_event_shape
from pyroflows.pyro.coupling import Coupling
from pyroflows.pyro.distributions import Flow
from pyroflows.pyro.transformers import AffineTransformer, Transformer, softplus

__all__ = [
    "Logit",
    "Squeeze",
    "Reshape",
    "FactorOut",
    "multi_scale",
    "dequantize",
    "bits_per_dim",
    "VariationalDequantizer",
]


class Squeeze(Bijection):
    """Trade space for channels: ``(C, H, W)`` (data side) and ``(4C, H/2, W/2)`` (base side).

    The inverse (data -> base) moves each 2x2 patch of a channel into 4 channels (channel
    ``4c + 2i + j`` holds pixel ``(2h + i, 2w + j)`` of channel ``c``); the forward direction
    undoes it. Log-det 0. ``Invert(Squeeze(shape))`` squeezes in the forward direction.

    Args:
        shape: The image shape ``(C, H, W)``, with H and W even.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> z, _ = pf.Squeeze((1, 4, 4)).inverse_and_log_det(torch.zeros(2, 1, 4, 4))
        >>> z.shape
        torch.Size([2, 4, 2, 2])
    """

    def __init__(self, shape: Sequence[int]) -> None:
        shape = structure.check_image_shape(shape)
        super().__init__(int(np.prod(shape)), shape=shape, base_shape=_image.squeezed(shape))

    def extra_repr(self) -> str:
        return f"shape={self.event_shape}"

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        channels, height, width = self.event_shape
        batch = x.shape[:-3]
        y = x.reshape(*batch, channels, 2, 2, height // 2, width // 2)
        b = len(batch)  # (..., C, i, j, h, w) -> (..., C, h, i, w, j)
        y = y.permute(*range(b), b, b + 3, b + 1, b + 4, b + 2)
        return y.reshape(*batch, *self.event_shape), x.new_zeros(batch)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        channels, height, width = self.event_shape
        batch = y.shape[:-3]
        x = y.reshape(*batch, channels, height // 2, 2, width // 2, 2)
        b = len(batch)  # (..., C, h, i, w, j) -> (..., C, i, j, h, w)
        x = x.permute(*range(b), b, b + 2, b + 4, b + 1, b + 3)
        return x.reshape(*batch, *self.base_shape), y.new_zeros(batch)


class Reshape(Bijection):
    """Reshape events: ``base_shape`` on the base side, ``shape`` on the data side. Log-det 0.

    It lets an image flow model flattened data (or a vector flow follow an image flow):
    ``Flow([glow_model, Reshape((64,), (1, 8, 8)), Logit(64)])`` has a standard normal base
    of shape ``(1, 8, 8)`` and takes data of shape ``(..., 64)``.

    Args:
        shape: Event shape of the data side.
        base_shape: Event shape of the base side, of the same size.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> z, _ = pf.Reshape((16,), (1, 4, 4)).inverse_and_log_det(torch.zeros(3, 16))
        >>> z.shape
        torch.Size([3, 1, 4, 4])
    """

    def __init__(self, shape: Sequence[int], base_shape: Sequence[int]) -> None:
        shape = _image.event_shape("shape", shape)
        base_shape = _image.event_shape("base_shape", base_shape)
        size = int(np.prod(shape))
        if size != int(np.prod(base_shape)):
            raise ValueError(
                f"shape {shape} and base_shape {base_shape} must have the same number of entries"
            )
        super().__init__(size, shape=shape, base_shape=base_shape)

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        batch = x.shape[: x.dim() - len(self.base_shape)]
        return x.reshape(*batch, *self.event_shape), x.new_zeros(batch)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        batch = y.shape[: y.dim() - len(self.event_shape)]
        return y.reshape(*batch, *self.base_shape), y.new_zeros(batch)


class FactorOut(Bijection):
    """Run ``bijection`` on the first channels of an image; the others pass unchanged.

    In a multi-scale model the passing channels are the half factored out into the latent
    at this scale, and ``bijection`` is the rest of the model, on the other half.

    Args:
        shape: Image shape ``(C, H, W)``.
        bijection: A bijection on images ``(c, H, W)`` with ``c < C`` (its two sides of
            one shape).

    Examples:
        >>> import pyroflows.pyro as pf
        >>> layer = pf.FactorOut((4, 2, 2), pf.ActNorm((2, 2, 2)))
    """

    def __init__(self, shape: Sequence[int], bijection: Bijection) -> None:
        shape = structure.check_image_shape(shape)
        if not isinstance(bijection, Bijection):
            raise TypeError(
                f"bijection must be a pyroflows Bijection, got {type(bijection).__name__}"
            )
        inner = bijection.event_shape
        if (
            len(inner) != 3
            or bijection.base_shape != inner
            or inner[1:] != shape[1:]
            or not 1 <= inner[0] < shape[0]
        ):
            raise ValueError(
                f"bijection must map images of shape (c, {shape[1]}, {shape[2]}) with "
                f"c < {shape[0]} to the same shape, got event shapes {bijection.base_shape} "
                f"(base side) and {inner} (data side)"
            )
        super().__init__(int(np.prod(shape)), bijection.context_features, shape=shape)
        self.bijection = bijection
        self.channels = inner[0]

    def extra_repr(self) -> str:
        return f"shape={self.event_shape}, channels={self.channels}"

    def _run(self, value: Tensor, context: Tensor | None, inverse: bool):
        head, tail = value[..., : self.channels, :, :], value[..., self.channels :, :, :]
        step = self.bijection.inverse_and_log_det if inverse else self.bijection.forward_and_log_det
        head, log_det = step(head, context)
        tail = tail.expand(*head.shape[:-3], *tail.shape[-3:])
        return torch.cat([head, tail], dim=-3), log_det

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self._run(x, context, inverse=False)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self._run(y, context, inverse=True)


def multi_scale(
    plan: _image.Level,
    context: int = 0,
    hidden: int = 64,
    blocks: int = 2,
    transformer: Transformer | None = None,
    activation: str = "relu",
) -> Chain:
    """The multi-scale model of ``plan`` as one `Chain` (base -> data order) whose two
    sides have the data's shape.

    Args:
        plan: A plan of `pyroflows._image` (`realnvp_plan`, `glow_plan`).
        context: Context size of the couplings.
        hidden: Hidden channels of the couplings' conditioners.
        blocks: Residual blocks of the couplings' conditioners (the split priors have none).
        transformer: Transformer of the couplings (default affine, scales bounded at 3).
        activation: Activation of the conditioners.

    Examples:
        >>> from pyroflows import _image
        >>> import pyroflows.pyro as pf
        >>> model = pf.multi_scale(_image.glow_plan((1, 4, 4), levels=1, steps=1), hidden=8)
    """
    from pyroflows.pyro.coupling import ImageCoupling
    from pyroflows.pyro.linear import ActNorm, Conv1x1

    transformer = AffineTransformer(3.0) if transformer is None else transformer

    def step(spec: tuple, shape: tuple[int, int, int]) -> Bijection:
        if spec[0] == "coupling":
            return ImageCoupling(
                shape, context, spec[1], spec[2], transformer, hidden, blocks, activation
            )
        if spec[0] == "actnorm":
            return ActNorm(shape)
        return Conv1x1(shape, seed=spec[1])

    def build(level: _image.Level) -> Chain:
        path = [step(spec, level.shape) for spec in level.before]  # data -> base order
        if level.after or level.inner is not None:
            inner_shape = _image.squeezed(level.shape)
            path.append(Squeeze(level.shape))
            path += [step(spec, inner_shape) for spec in level.after]
            if level.prior:  # the kept half conditions the half that is factored out
                path.append(
                    ImageCoupling(
                        inner_shape,
                        context,
                        "channel",
                        0,
                        AffineTransformer(3.0),
                        hidden,
                        0,
                        activation,
                    )
                )
            if level.inner is not None:
                path.append(FactorOut(inner_shape, build(level.inner)))
            path.append(Invert(Squeeze(level.shape)))
        return Chain(path[::-1])

    return build(plan)


class Logit(Bijection):
    """Logit preprocessing as a bijection between the real line and ``(0, 1)``.

    Forward (base -> data): ``y = (sigmoid(x) - alpha) / (1 - 2 alpha)``; inverse
    (data -> base): ``x = logit(alpha + (1 - 2 alpha) y)``. Put it last in a flow for data
    in ``[0, 1]`` (after `dequantize`); ``alpha`` keeps the logit finite at 0 and 1.

    Args:
        features: Event size.
        alpha: Squeeze of ``[0, 1]`` into ``[alpha, 1 - alpha]``.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> x, log_det = pf.Logit(2, alpha=0.05).inverse_and_log_det(torch.rand(5, 2))
    """

    @property
    def codomain(self) -> constraints.Constraint:
        """The interval that the logit's inverse accepts: ``[0, 1]`` widened by the squeeze,
        ``[-alpha / (1 - 2 alpha), (1 - alpha) / (1 - 2 alpha)]`` (its ends have density 0)."""
        scale = 1 - 2 * self.alpha
        interval = constraints.interval(-self.alpha / scale, (1 - self.alpha) / scale)
        return constraints.independent(interval, 1)

    def __init__(self, features: int, alpha: float = 1e-6) -> None:
        super().__init__(features)
        features = self.features
        self.alpha = _checks.check_fraction("alpha", alpha, 0.0, 0.5)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}"

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        scale = 1 - 2 * self.alpha
        y = (torch.sigmoid(x) - self.alpha) / scale
        # log sigmoid'(x) = -softplus(-x) - softplus(x)
        log_det = -softplus(-x) - softplus(x) - math.log(scale)
        return y, log_det.sum(-1)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        scale = 1 - 2 * self.alpha
        p = self.alpha + scale * y
        x = torch.log(p) - torch.log1p(-p)
        log_det = math.log(scale) - torch.log(p) - torch.log1p(-p)
        return x, log_det.sum(-1)


def dequantize(x: Tensor, levels: int, generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantization of integer-valued data into ``(0, 1)``.

    Args:
        x: Values in ``{0, ..., levels - 1}`` (any dtype; floats are rounded).
        levels: Number of discrete values per dimension (256 for 8-bit images).
        generator: Optional torch generator for the noise.

    Returns:
        ``(x + u) / levels`` with ``u ~ U[0, 1)``, in the default float dtype unless
        ``x`` is already floating point.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> pf.dequantize(torch.tensor([0, 16]), levels=17).shape
        torch.Size([2])
    """
    values = quantized(x, levels)
    noise = torch.rand(x.shape, dtype=values.dtype, device=x.device, generator=generator)
    return (values + noise) / levels


def quantized(x: Tensor, levels: int, dtype: torch.dtype | None = None) -> Tensor:
    """``x`` rounded, as floats (``dtype``, else ``x``'s own if floating, else the default),
    after checking that it holds values in ``0 .. levels - 1``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not _checks._is_int(levels) or levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels!r}")
    if dtype is None:
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    values = x.to(dtype).round()
    if values.numel() and (values.min() < 0 or values.max() > levels - 1):
        raise ValueError(
            f"x must hold values in 0..{levels - 1} (levels={levels}), "
            f"got min {values.min().item()} and max {values.max().item()}"
        )
    return values


def bits_per_dim(
    log_prob: Tensor,
    dims: int,
    levels: int,
    *,
    log_q: Tensor | float | None = None,
    log_det: Tensor | float | None = None,
) -> Tensor:
    """Bits per dimension of discrete data from the log-density of its dequantized version.

    With ``y = (x + u) / levels``, ``log P(x) >= log p(y) - log q(u | x) - dims * log(levels)``
    (in expectation over ``u ~ q``), so
    ``bits/dim = -(log p(y) - log q(u | x) - dims * log(levels)) / (dims * log 2)`` is an
    upper bound on the discrete model's code length. Uniform dequantization
    (`dequantize`) has ``log q = 0``; variational dequantization passes the ``log_q`` of
    `pyroflows.pyro.VariationalDequantizer`. Average it over draws of ``u``.

    ``log_prob`` must be the density of ``y`` itself, in ``[0, 1]^dims``. A flow that ends in
    `Logit` gives exactly that. If the logit (or any other preprocessing) is applied outside
    the flow, so that the flow scores ``z = logit(y)``, pass that map's log-determinant in the
    data -> flow direction as ``log_det`` (for the logit:
    ``Logit(dims, alpha).inverse_and_log_det(y)[1]``): then ``log p(y) = log p(z) + log_det``,
    and numbers compare with the literature's, which are all in the ``[0, 1]`` (or
    ``[0, 256]``) scale.

    Args:
        log_prob: Log-density of the flow at the dequantized data (any shape).
        dims: Number of dimensions of one data point.
        levels: Number of discrete values per dimension.
        log_q: ``log q(u | x)`` of the dequantization noise (default 0: uniform).
        log_det: Log-determinant of preprocessing done outside the flow (default 0).

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> float(pf.bits_per_dim(torch.tensor(0.0), dims=64, levels=256))
        8.0
    """
    total = log_prob
    if log_det is not None:
        total = total + log_det
    if log_q is not None:
        total = total - log_q
    return -(total - dims * math.log(levels)) / (dims * math.log(2))


class VariationalDequantizer(nn.Module):
    """The noise distribution ``q(u | x)`` of variational dequantization (Flow++).

    By default ``q`` is a conditional flow on the flattened noise: a standard logistic base,
    ``transforms`` affine coupling layers (alternating masks) whose MLP conditioners also see
    the whole image (scaled to ``[-0.5, 0.5]``), then a sigmoid (`Logit` with ``alpha=0``)
    onto ``(0, 1)^D``, reshaped to the data's shape. The sigmoid of a standard logistic is
    uniform, so at its zero-initialised start ``q`` is exactly uniform dequantization, and
    training starts from the uniform bound. A custom ``flow`` can replace it: any `Flow`
    whose events have the data's shape, lie in ``[0, 1]`` and take a context of ``D``
    features (the scaled, flattened image). Train it jointly with the model on the bound
    ``log p(y) - log_q``.

    Calling it on discrete data ``x`` (values ``0 .. levels - 1``, event shape ``shape``)
    draws ``u ~ q(u | x)`` by reparameterisation and returns ``y = (x + u) / levels`` (the
    dequantized data, in ``(0, 1)``) and ``log q(u | x)``, both differentiable with respect
    to the dequantizer's parameters.

    Args:
        shape: The event shape of one data point (``(D,)`` or ``(C, H, W)``).
        levels: Number of discrete values per dimension.
        transforms: Number of coupling layers of the default noise flow.
        hidden: Hidden widths of their MLP conditioners.
        activation: Activation of the conditioners.
        flow: A custom noise flow instead of the default one.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> dequantizer = pf.VariationalDequantizer(16, levels=17, hidden=(32,))
        >>> x = torch.randint(0, 17, (8, 16))
        >>> y, log_q = dequantizer(x)
        >>> model = pf.Flow([*pf.NSF(16, transforms=2).transforms, pf.Logit(16)])
        >>> bpd = pf.bits_per_dim(model().log_prob(y), dims=16, levels=17, log_q=log_q)
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        levels: int,
        transforms: int = 4,
        hidden: Sequence[int] = (64, 64),
        *,
        activation: str = "relu",
        flow: Flow | None = None,
    ) -> None:
        super().__init__()
        self.shape = _image.event_shape("shape", shape)
        self.levels = _checks.check_int("levels", levels, 2)
        dims = math.prod(self.shape)
        if flow is None:
            transforms = _checks.check_int("transforms", transforms, 1)
            layers: list = [
                Coupling(
                    dims,
                    dims,
                    structure.alternating_mask(dims, i % 2),
                    AffineTransformer(),
                    hidden,
                    activation,
                )
                for i in range(transforms)
            ]
            layers.append(Logit(dims, alpha=0.0))
            if len(self.shape) > 1:
                layers.append(Reshape(self.shape, (dims,)))
            logistic = dist.Logistic(torch.zeros(dims), torch.ones(dims)).to_event(1)
            flow = Flow(layers, logistic)
        _image.check_noise_flow(flow, self.shape, dims)
        self.flow = flow

    def extra_repr(self) -> str:
        return f"shape={self.shape}, levels={self.levels}"

    def context(self, values: Tensor) -> Tensor:
        """The noise flow's context: the image flattened and scaled to ``[-0.5, 0.5]``."""
        return values.flatten(values.dim() - len(self.shape)) / (self.levels - 1) - 0.5

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Draw ``u ~ q(u | x)``; return ``((x + u) / levels, log q(u | x))``."""
        values = check_event_shape("x", quantized(x, self.levels), self.shape)
        batch = values.shape[: values.dim() - len(self.shape)]
        base = self.flow.base_distribution()
        # Pyro's Logistic draws u in [0, 1) and returns logit(u): -inf when u is 0 (once in
        # 2^24 float32 draws, so every few epochs on MNIST); keep the noise finite
        noise = base.rsample(batch)
        edge = -math.log(torch.finfo(noise.dtype).tiny)
        noise = torch.nan_to_num(noise, posinf=edge, neginf=-edge)
        values = values.to(noise)
        u, log_det = chain_forward(self.flow.transforms, noise, self.context(values))
        # a saturated sigmoid, or the division, can round onto the edge of the next cell
        # (y = 1 for the top level): keep y strictly inside its own cell
        y = (values + u.clamp_min(torch.finfo(u.dtype).tiny)) / self.levels
        top = torch.nextafter((values + 1) / self.levels, torch.zeros_like(y))
        return torch.minimum(y, top), base.log_prob(noise) - log_det
