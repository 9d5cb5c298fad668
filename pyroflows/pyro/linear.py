"""Linear bijections: ActNorm, elementwise scaling, LU-parameterised linear maps, permutations.

They act on vectors (event_dim 1) and take no context; `ActNorm` also acts on images
(per channel) and `Conv1x1` is the LU-parameterised invertible 1x1 convolution of Glow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pyroflows import structure
from pyroflows.pyro.core import Bijection, batch_shape_of

__all__ = ["ActNorm", "Scale", "LULinear", "Conv1x1", "Permute", "Reverse"]


def _batch_log_det(value: Tensor, like: Tensor) -> Tensor:
    """A scalar log-det broadcast to the batch shape of ``like``."""
    return value.expand(like.shape[:-1])


class ActNorm(Bijection):
    """Per-feature affine map with data-dependent initialisation (Kingma & Dhariwal, 2018).

    Forward (base -> data): ``y = x * exp(log_scale) + loc``. The first time data passes
    through the inverse direction (as in ``log_prob`` or ``fit``) while the module is in
    training mode, ``loc`` and ``log_scale`` are set so that this batch comes out with zero
    mean and unit variance per feature; a feature that is constant in the batch is only
    centred (its scale stays 1), so it never gives an infinite scale. ``set_params`` and
    ``load_state_dict`` mark the layer as initialised.

    Args:
        features: Event size, or the image shape ``(C, H, W)``: then ``loc`` and
            ``log_scale`` have one entry per channel, shared by the pixels (Glow's ActNorm).

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> layer = pf.ActNorm(3)
        >>> z, _ = layer.inverse_and_log_det(5 + 2 * torch.randn(100, 3))
        >>> bool(abs(z.mean()) < 1e-5)
        True
    """

    def __init__(self, features: int | Sequence[int]) -> None:
        if isinstance(features, int | np.integer):
            super().__init__(features)
            channels, self._pixels = self.features, 1
        else:
            shape = structure.check_image_shape(features, "features")
            super().__init__(int(np.prod(shape)), shape=shape)
            channels, self._pixels = shape[0], shape[1] * shape[2]
        self.loc = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    def extra_repr(self) -> str:
        if len(self.event_shape) == 1:
            return super().extra_repr()
        return f"shape={self.event_shape}"

    def _view(self, value: Tensor) -> Tensor:
        """A per-channel parameter shaped to broadcast against an event batch."""
        return value if len(self.event_shape) == 1 else value[:, None, None]

    @torch.no_grad()
    def initialize(self, data: Tensor) -> None:
        """Set ``loc`` / ``log_scale`` from a batch of data (``(..., *event_shape)``)."""
        channels = self.loc.shape[0]
        if len(self.event_shape) == 1:
            flat = data.reshape(-1, channels)
        else:
            flat = data.reshape(-1, channels, self._pixels).transpose(1, 2).reshape(-1, channels)
        if flat.shape[0] < 2:
            return
        std = flat.std(0)
        self.loc.copy_(flat.mean(0))
        self.log_scale.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)).log())
        self.initialized.fill_(True)

    def _log_det(self, sign: float, like: Tensor) -> Tensor:
        total = self.log_scale.sum() * (sign * self._pixels)
        return total.expand(batch_shape_of(like, self.event_shape))

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        y = x * self._view(self.log_scale).exp() + self._view(self.loc)
        return y, self._log_det(1.0, x)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if self.training and not self.initialized:
            self.initialize(y.detach())
        x = (y - self._view(self.loc)) * torch.exp(-self._view(self.log_scale))
        return x, self._log_det(-1.0, y)


class Scale(Bijection):
    """Learnable elementwise scaling ``y = x * exp(log_scale)`` (the last layer of NICE).

    Examples:
        >>> import pyroflows.pyro as pf
        >>> layer = pf.Scale(4)
    """

    def __init__(self, features: int) -> None:
        super().__init__(features)
        features = self.features
        self.log_scale = nn.Parameter(torch.zeros(features))

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return x * self.log_scale.exp(), _batch_log_det(self.log_scale.sum(), x)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return y * torch.exp(-self.log_scale), _batch_log_det(-self.log_scale.sum(), y)


class _LUFactors:
    """The parameters ``lower``, ``upper`` (only their strict triangles are used) and
    ``log_diagonal`` of an ``L U`` factorised ``(size, size)`` matrix, shared by `LULinear`
    and `Conv1x1`: ``L`` is unit-lower and ``U`` upper triangular with diagonal
    ``exp(log_diagonal)``, so the matrix is invertible for every parameter value."""

    def _init_factors(self, size: int) -> None:
        self.lower = nn.Parameter(torch.zeros(size, size))
        self.upper = nn.Parameter(torch.zeros(size, size))
        self.log_diagonal = nn.Parameter(torch.zeros(size))
        ones = torch.ones(size, size)
        self.register_buffer("lower_mask", torch.tril(ones, -1), persistent=False)
        self.register_buffer("upper_mask", torch.triu(ones, 1), persistent=False)
        self.register_buffer("eye", torch.eye(size), persistent=False)

    def factors(self) -> tuple[Tensor, Tensor]:
        """The triangular factors ``(L, U)``."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.upper_mask + torch.diag(self.log_diagonal.exp())
        return lower, upper


class LULinear(_LUFactors, Bijection):
    """Invertible linear map ``y = L U x + bias`` with L unit-lower and U upper triangular.

    The diagonal of ``U`` is ``exp(log_diagonal)``, so the map is invertible for every
    parameter value and ``log|det| = sum(log_diagonal)``. Parameters: ``lower`` and
    ``upper`` (``(features, features)``, only the strict triangles are used),
    ``log_diagonal`` and ``bias``. Initialised to the identity.

    Args:
        features: Event size.

    Examples:
        >>> import pyroflows.pyro as pf
        >>> layer = pf.LULinear(4)
    """

    def __init__(self, features: int) -> None:
        super().__init__(features)
        self._init_factors(self.features)
        self.bias = nn.Parameter(torch.zeros(self.features))

    def weight(self) -> Tensor:
        """The matrix ``L @ U``."""
        lower, upper = self.factors()
        return lower @ upper

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        y = nn.functional.linear(x, self.weight(), self.bias)
        return y, _batch_log_det(self.log_diagonal.sum(), x)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        lower, upper = self.factors()
        rows = (y - self.bias).unsqueeze(-1)
        z = torch.linalg.solve_triangular(lower, rows, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper, z, upper=True).squeeze(-1)
        return x, _batch_log_det(-self.log_diagonal.sum(), y)


class Conv1x1(_LUFactors, Bijection):
    """Invertible 1x1 convolution (Glow): every pixel's channels are mixed by one matrix.

    The matrix is ``P L U`` with a fixed permutation ``P`` (seeded, from
    `pyroflows.structure.permutation`; the identity with ``seed=None``), ``L`` unit-lower
    and ``U`` upper triangular with diagonal ``exp(log_diagonal)``, so it is invertible for
    every parameter value, its inverse takes two triangular solves and
    ``log|det| = H * W * sum(log_diagonal)``. Parameters ``lower``, ``upper`` (``(C, C)``,
    only the strict triangles are used) and ``log_diagonal``; initialised to ``P``.

    Args:
        shape: Image shape ``(C, H, W)``.
        seed: numpy seed of the fixed permutation, or ``None`` for none.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> y, log_det = pf.Conv1x1((3, 4, 4)).forward_and_log_det(torch.randn(2, 3, 4, 4))
    """

    def __init__(self, shape: Sequence[int], seed: int | None = 0) -> None:
        shape = structure.check_image_shape(shape)
        super().__init__(int(np.prod(shape)), shape=shape)
        channels = shape[0]
        self.seed = seed
        self._init_factors(channels)
        order = np.arange(channels) if seed is None else structure.permutation(channels, seed)
        self.register_buffer("order", torch.as_tensor(order), persistent=False)
        self.register_buffer(
            "unorder", torch.as_tensor(structure.inverse_permutation(order)), persistent=False
        )

    def extra_repr(self) -> str:
        return f"shape={self.event_shape}, seed={self.seed}"

    def weight(self) -> Tensor:
        """The ``(C, C)`` matrix ``P L U`` (row ``i`` of the output is row ``order[i]``)."""
        lower, upper = self.factors()
        return (lower @ upper).index_select(0, self.order)

    def _log_det(self, sign: float, like: Tensor) -> Tensor:
        pixels = self.event_shape[1] * self.event_shape[2]
        return (self.log_diagonal.sum() * (sign * pixels)).expand(
            batch_shape_of(like, self.event_shape)
        )

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        y = torch.einsum("ij,...jhw->...ihw", self.weight(), x)
        return y, self._log_det(1.0, x)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        lower, upper = self.factors()
        channels, height, width = self.event_shape
        # channels first, unpermuted, every pixel of every event a column: L U x = P^T y.
        # One right-hand side of C rows (not one per event) keeps the solves, and their
        # backward (no per-event copies of L and U to sum), to two calls.
        rows = y.index_select(-3, self.unorder).reshape(-1, channels, height * width)
        rows = rows.transpose(0, 1).reshape(channels, -1)
        z = torch.linalg.solve_triangular(lower, rows, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper, z, upper=True)
        x = x.reshape(channels, -1, height * width).transpose(0, 1)
        return x.reshape(y.shape), self._log_det(-1.0, y)


class Permute(Bijection):
    """Reorder the features: ``y[..., i] = x[..., permutation[i]]``. Log-det 0.

    Args:
        permutation: A permutation of ``range(features)``; an int ``features`` together
            with ``seed`` draws one with `pyroflows.structure.permutation`.
        seed: numpy seed when ``permutation`` is an int.

    Examples:
        >>> import pyroflows.pyro as pf
        >>> layer = pf.Permute([2, 0, 1])
    """

    def __init__(self, permutation: Sequence[int] | np.ndarray | int, seed: int = 0) -> None:
        if isinstance(permutation, int | np.integer):
            permutation = structure.permutation(int(permutation), seed)
        permutation = np.asarray(permutation, dtype=np.int64)
        inverse = structure.inverse_permutation(permutation)
        super().__init__(int(permutation.size))
        self.register_buffer("permutation", torch.as_tensor(permutation), persistent=False)
        self.register_buffer("inverse", torch.as_tensor(inverse), persistent=False)

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return x.index_select(-1, self.permutation), x.new_zeros(x.shape[:-1])

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return y.index_select(-1, self.inverse), y.new_zeros(y.shape[:-1])


def Reverse(features: int) -> Permute:  # noqa: N802 (named like the bijection it builds)
    """A `Permute` that reverses the order of the features. Log-det 0.

    Examples:
        >>> import pyroflows.pyro as pf
        >>> layer = pf.Reverse(3)
    """
    return Permute(np.arange(features)[::-1].copy())
