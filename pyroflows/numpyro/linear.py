"""Linear bijections: ActNorm, elementwise scaling, LU-parameterised linear maps, permutations.

The JAX twin of `pyroflows.pyro.linear`: they act on vectors and take no context; `ActNorm`
also acts on images (per channel) and `Conv1x1` is Glow's invertible 1x1 convolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from pyroflows import structure
from pyroflows.numpyro.core import Bijection, _check_size, batch_shape_of

__all__ = ["ActNorm", "Scale", "LULinear", "Conv1x1", "Permute", "Reverse"]


def _batch_log_det(value: Array, like: Array) -> Array:
    """A scalar log-det broadcast to the batch shape of ``like``."""
    return jnp.broadcast_to(value, like.shape[:-1])


class ActNorm(Bijection):
    """Per-feature affine map with data-dependent initialisation (Kingma & Dhariwal, 2018).

    Forward (base -> data): ``y = x * exp(log_scale) + loc``. JAX modules are immutable, so
    the data-dependent initialisation is explicit: ``layer.initialize(data)`` returns a
    layer whose inverse maps ``data`` to zero mean and unit variance, and `pyroflows.numpyro.fit`
    initialises every top-level ``ActNorm`` of a flow from the first batch. ``set_params``
    marks the layer initialised.

    Args:
        features: Event size, or the image shape ``(C, H, W)``: then ``loc`` and
            ``log_scale`` have one entry per channel, shared by the pixels (Glow's ActNorm).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> data = 5 + 2 * jax.random.normal(jax.random.key(0), (100, 3))
        >>> layer = pfj.ActNorm(3).initialize(data)
        >>> z, _ = layer.inverse_and_log_det(data)
        >>> bool(abs(z.mean()) < 1e-5)
        True
    """

    loc: Array
    log_scale: Array
    initialized: bool = eqx.field(static=True)
    shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, features: int | Sequence[int], *, initialized: bool = False) -> None:
        if isinstance(features, int | np.integer):
            self.features = channels = _check_size("features", features, 1)
            self.shape = (channels,)
        else:
            self.shape = structure.check_image_shape(features, "features")
            self.features, channels = int(np.prod(self.shape)), self.shape[0]
        self.context_features = 0
        self.loc = jnp.zeros(channels)
        self.log_scale = jnp.zeros(channels)
        self.initialized = bool(initialized)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.shape

    def _view(self, value: Array) -> Array:
        return value if len(self.shape) == 1 else value[:, None, None]

    def _pixels(self) -> int:
        return 1 if len(self.shape) == 1 else self.shape[1] * self.shape[2]

    def initialize(self, data: Array) -> ActNorm:
        """A copy with ``loc`` / ``log_scale`` set from ``data`` (``(..., *event_shape)``); a
        feature (channel) that is constant in ``data`` is only centred, its scale kept 1."""
        data = jnp.asarray(data)
        channels = self.shape[0]  # (not loc's first axis: that is the steps of a Stack)
        if len(self.shape) == 1:
            flat = jnp.reshape(data, (data.size // channels, channels))
        else:
            per = jnp.reshape(data, (-1, channels, self._pixels()))
            flat = jnp.swapaxes(per, 1, 2).reshape(-1, channels)
        if flat.shape[0] < 2:
            return self
        std = jnp.std(flat, axis=0, ddof=1)
        return self.with_values(flat.mean(0), jnp.log(jnp.where(std > 1e-6, std, 1.0)))

    def with_values(self, loc: Array, log_scale: Array) -> ActNorm:
        """A copy holding ``loc`` and ``log_scale``, marked initialised."""
        layer = ActNorm(self.shape if len(self.shape) > 1 else self.features, initialized=True)
        return eqx.tree_at(
            lambda m: (m.loc, m.log_scale),
            layer,
            (jnp.asarray(loc, self.loc.dtype), jnp.asarray(log_scale, self.log_scale.dtype)),
        )

    def _log_det(self, sign: float, like: Array) -> Array:
        total = self.log_scale.sum() * (sign * self._pixels())
        return jnp.broadcast_to(total, batch_shape_of(like, self.shape))

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        y = x * jnp.exp(self._view(self.log_scale)) + self._view(self.loc)
        return y, self._log_det(1.0, x)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        x = (y - self._view(self.loc)) * jnp.exp(-self._view(self.log_scale))
        return x, self._log_det(-1.0, y)


class Scale(Bijection):
    """Learnable elementwise scaling ``y = x * exp(log_scale)`` (the last layer of NICE).

    Examples:
        >>> import pyroflows.numpyro as pfj
        >>> layer = pfj.Scale(4)
    """

    log_scale: Array

    def __init__(self, features: int) -> None:
        self.features = features = _check_size("features", features, 1)
        self.context_features = 0
        self.log_scale = jnp.zeros(features)

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return x * jnp.exp(self.log_scale), _batch_log_det(self.log_scale.sum(), x)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return y * jnp.exp(-self.log_scale), _batch_log_det(-self.log_scale.sum(), y)


def _lu_factors(lower: Array, upper: Array, log_diagonal: Array) -> tuple[Array, Array]:
    """The triangular factors ``(L, U)`` of `LULinear` and `Conv1x1`: ``L`` the strict lower
    triangle of ``lower`` plus the identity, ``U`` the strict upper triangle of ``upper``
    with diagonal ``exp(log_diagonal)``."""
    eye = jnp.eye(log_diagonal.shape[-1], dtype=lower.dtype)
    return jnp.tril(lower, -1) + eye, jnp.triu(upper, 1) + jnp.diag(jnp.exp(log_diagonal))


class LULinear(Bijection):
    """Invertible linear map ``y = L U x + bias`` with L unit-lower and U upper triangular.

    Same parameters as the torch layer: ``lower`` and ``upper`` (``(features, features)``,
    only the strict triangles are used), ``log_diagonal`` and ``bias``; identity at
    initialisation; ``log|det| = sum(log_diagonal)``.

    Examples:
        >>> import pyroflows.numpyro as pfj
        >>> layer = pfj.LULinear(4)
    """

    lower: Array
    upper: Array
    log_diagonal: Array
    bias: Array

    def __init__(self, features: int) -> None:
        self.features = features = _check_size("features", features, 1)
        self.context_features = 0
        self.lower = jnp.zeros((features, features))
        self.upper = jnp.zeros((features, features))
        self.log_diagonal = jnp.zeros(features)
        self.bias = jnp.zeros(features)

    def factors(self) -> tuple[Array, Array]:
        """The triangular factors ``(L, U)``."""
        return _lu_factors(self.lower, self.upper, self.log_diagonal)

    def weight(self) -> Array:
        """The matrix ``L @ U``."""
        lower, upper = self.factors()
        return lower @ upper

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        y = x @ self.weight().T + self.bias
        return y, _batch_log_det(self.log_diagonal.sum(), x)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        lower, upper = self.factors()
        rows = (
            (y - self.bias).reshape(y.size // self.features, self.features).T
        )  # (features, batch)
        z = jax.scipy.linalg.solve_triangular(lower, rows, lower=True, unit_diagonal=True)
        x = jax.scipy.linalg.solve_triangular(upper, z, lower=False)
        return x.T.reshape(y.shape), _batch_log_det(-self.log_diagonal.sum(), y)


class Conv1x1(Bijection):
    """Invertible 1x1 convolution (Glow), the twin of `pyroflows.pyro.Conv1x1`.

    The matrix is ``P L U`` with a fixed seeded permutation ``P`` (``seed=None``: none),
    ``L`` unit-lower, ``U`` upper triangular with diagonal ``exp(log_diagonal)``;
    ``log|det| = H * W * sum(log_diagonal)``. Parameters ``lower``, ``upper``,
    ``log_diagonal``, as in torch.

    Args:
        shape: Image shape ``(C, H, W)``.
        seed: numpy seed of the fixed permutation, or ``None``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> y, log_det = pfj.Conv1x1((3, 4, 4)).forward_and_log_det(jnp.ones((2, 3, 4, 4)))
    """

    lower: Array
    upper: Array
    log_diagonal: Array
    order: Array
    unorder: Array
    shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, shape: Sequence[int], seed: int | None = 0) -> None:
        self.shape = structure.check_image_shape(shape)
        self.features, self.context_features = int(np.prod(self.shape)), 0
        channels = self.shape[0]
        self.lower = jnp.zeros((channels, channels))
        self.upper = jnp.zeros((channels, channels))
        self.log_diagonal = jnp.zeros(channels)
        order = np.arange(channels) if seed is None else structure.permutation(channels, seed)
        self.order = jnp.asarray(order, dtype=jnp.int32)
        self.unorder = jnp.asarray(structure.inverse_permutation(order), dtype=jnp.int32)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.shape

    def factors(self) -> tuple[Array, Array]:
        """The triangular factors ``(L, U)``."""
        return _lu_factors(self.lower, self.upper, self.log_diagonal)

    def weight(self) -> Array:
        """The ``(C, C)`` matrix ``P L U``."""
        lower, upper = self.factors()
        return jnp.take(lower @ upper, self.order, axis=0)

    def _log_det(self, sign: float, like: Array) -> Array:
        pixels = self.shape[1] * self.shape[2]
        total = self.log_diagonal.sum() * (sign * pixels)
        return jnp.broadcast_to(total, batch_shape_of(like, self.shape))

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        y = jnp.einsum("ij,...jhw->...ihw", self.weight(), x)
        return y, self._log_det(1.0, x)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        lower, upper = self.factors()
        channels, height, width = self.shape
        # channels first, unpermuted, every pixel of every event a column: L U x = P^T y
        rows = jnp.moveaxis(
            jnp.take(y, self.unorder, axis=-3).reshape(-1, channels, height * width), 1, 0
        )
        rows = rows.reshape(channels, -1)
        z = jax.scipy.linalg.solve_triangular(lower, rows, lower=True, unit_diagonal=True)
        x = jax.scipy.linalg.solve_triangular(upper, z, lower=False)
        x = jnp.moveaxis(x.reshape(channels, -1, height * width), 0, 1).reshape(y.shape)
        return x, self._log_det(-1.0, y)


class Permute(Bijection):
    """Reorder the features: ``y[..., i] = x[..., permutation[i]]``. Log-det 0.

    Args:
        permutation: A permutation of ``range(features)``; an int ``features`` together
            with ``seed`` draws one with `pyroflows.structure.permutation`.
        seed: numpy seed when ``permutation`` is an int.

    Examples:
        >>> import pyroflows.numpyro as pfj
        >>> layer = pfj.Permute([2, 0, 1])
    """

    permutation: Array
    inverse: Array

    def __init__(self, permutation: Sequence[int] | np.ndarray | int, seed: int = 0) -> None:
        if isinstance(permutation, int | np.integer):
            permutation = structure.permutation(int(permutation), seed)
        permutation = np.asarray(permutation, dtype=np.int64)
        inverse = structure.inverse_permutation(permutation)
        self.features = int(permutation.size)
        self.context_features = 0
        self.permutation = jnp.asarray(permutation, dtype=jnp.int32)
        self.inverse = jnp.asarray(inverse, dtype=jnp.int32)

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return jnp.take(x, self.permutation, axis=-1), jnp.zeros(x.shape[:-1], x.dtype)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return jnp.take(y, self.inverse, axis=-1), jnp.zeros(y.shape[:-1], y.dtype)


def Reverse(features: int) -> Permute:  # noqa: N802
    """Reverse the order of the features (a `Permute`).

    Examples:
        >>> import pyroflows.numpyro as pfj
        >>> layer = pfj.Reverse(3)
    """
    return Permute(np.arange(features)[::-1].copy())
