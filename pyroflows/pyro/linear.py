"""Linear bijections: ActNorm, elementwise scaling, LU-parameterised linear maps, permutations.

All of them act on vectors (event_dim 1) and take no context.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pyroflows import structure
from pyroflows.pyro.core import Bijection

__all__ = ["ActNorm", "Scale", "LULinear", "Permute", "Reverse"]


def _batch_log_det(value: Tensor, like: Tensor) -> Tensor:
    """A scalar log-det broadcast to the batch shape of ``like``."""
    return value.expand(like.shape[:-1])


class ActNorm(Bijection):
    """Per-feature affine map with data-dependent initialisation (Kingma & Dhariwal, 2018).

    Forward (base -> data): ``y = x * exp(log_scale) + loc``. The first time data passes
    through the inverse direction (as in ``log_prob`` or ``fit``) while the module is in
    training mode, ``loc`` and ``log_scale`` are set so that this batch comes out with zero
    mean and unit variance per feature. ``set_params`` and ``load_state_dict`` mark the
    layer as initialised.

    Args:
        features: Event size.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> layer = pf.ActNorm(3)
        >>> z, _ = layer.inverse_and_log_det(5 + 2 * torch.randn(100, 3))
        >>> bool(abs(z.mean()) < 1e-5)
        True
    """

    def __init__(self, features: int) -> None:
        super().__init__(features)
        features = self.features
        self.loc = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, data: Tensor) -> None:
        """Set ``loc`` / ``log_scale`` from a batch of data (``(..., features)``)."""
        flat = data.reshape(-1, self.features)
        if flat.shape[0] < 2:
            return
        self.loc.copy_(flat.mean(0))
        self.log_scale.copy_(flat.std(0).clamp_min(1e-6).log())
        self.initialized.fill_(True)

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        y = x * self.log_scale.exp() + self.loc
        return y, _batch_log_det(self.log_scale.sum(), x)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if self.training and not self.initialized:
            self.initialize(y.detach())
        x = (y - self.loc) * torch.exp(-self.log_scale)
        return x, _batch_log_det(-self.log_scale.sum(), y)


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


class LULinear(Bijection):
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
        features = self.features
        self.lower = nn.Parameter(torch.zeros(features, features))
        self.upper = nn.Parameter(torch.zeros(features, features))
        self.log_diagonal = nn.Parameter(torch.zeros(features))
        self.bias = nn.Parameter(torch.zeros(features))
        ones = torch.ones(features, features)
        self.register_buffer("lower_mask", torch.tril(ones, -1), persistent=False)
        self.register_buffer("upper_mask", torch.triu(ones, 1), persistent=False)
        self.register_buffer("eye", torch.eye(features), persistent=False)

    def factors(self) -> tuple[Tensor, Tensor]:
        """The triangular factors ``(L, U)``."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.upper_mask + torch.diag(self.log_diagonal.exp())
        return lower, upper

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
