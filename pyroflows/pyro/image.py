"""Preprocessing for discrete data: uniform dequantization, logit preprocessing, bits/dim.

Discrete data with ``levels`` values per dimension (pixel intensities ``0..levels-1``) is
made continuous with `dequantize` (``(x + u) / levels`` with ``u ~ U[0, 1)``), which
maps it into ``(0, 1)``. A flow whose last layer is `Logit` then models it on the
real line. `bits_per_dim` turns a continuous log-density of dequantized data into
the usual bits per dimension of the discrete data (a variational bound).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import constraints

from pyroflows import _checks
from pyroflows.pyro.core import Bijection
from pyroflows.pyro.transformers import softplus

__all__ = ["Logit", "dequantize", "bits_per_dim"]


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
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels!r}")
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    values = x.to(dtype).round()
    if values.min() < 0 or values.max() > levels - 1:
        raise ValueError(
            f"x must hold values in 0..{levels - 1} (levels={levels}), "
            f"got min {values.min().item()} and max {values.max().item()}"
        )
    noise = torch.rand(x.shape, dtype=dtype, device=x.device, generator=generator)
    return (values + noise) / levels


def bits_per_dim(log_prob: Tensor, dims: int, levels: int) -> Tensor:
    """Bits per dimension of discrete data from the log-density of its dequantized version.

    With ``x_c = (x + u) / levels``, ``log P(x) >= log p(x_c) - dims * log(levels)``, so
    ``bits/dim = -(log p(x_c) - dims * log(levels)) / (dims * log 2)`` is an upper bound on
    the discrete model's code length.

    Args:
        log_prob: Log-density of dequantized data in ``(0, 1)^dims`` (any shape).
        dims: Number of dimensions of one data point.
        levels: Number of discrete values per dimension.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> float(pf.bits_per_dim(torch.tensor(0.0), dims=64, levels=256))
        8.0
    """
    return -(log_prob - dims * math.log(levels)) / (dims * math.log(2))
