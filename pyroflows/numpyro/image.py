"""Image structure and preprocessing: squeeze, reshape, factor-out, multi-scale models,
uniform and variational dequantization, logit preprocessing, bits/dim.

The JAX twin of `pyroflows.pyro.image`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array
from numpyro.distributions import constraints

from pyroflows import _checks, _image, structure
from pyroflows.numpyro.core import (
    Bijection,
    Chain,
    Invert,
    _check_size,
    chain_forward,
    check_event_shape,
    is_concrete,
)
from pyroflows.numpyro.coupling import Coupling
from pyroflows.numpyro.distributions import Flow
from pyroflows.numpyro.nn import _check_key
from pyroflows.numpyro.transformers import AffineTransformer, Transformer

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
    """Trade space for channels, the twin of `pyroflows.pyro.Squeeze`: data side
    ``(C, H, W)``, base side ``(4C, H/2, W/2)``, channel ``4c + 2i + j`` holding pixel
    ``(2h + i, 2w + j)`` of channel ``c``. Log-det 0.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> pfj.Squeeze((1, 4, 4)).inverse_and_log_det(jnp.zeros((2, 1, 4, 4)))[0].shape
        (2, 4, 2, 2)
    """

    shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = structure.check_image_shape(shape)
        _image.squeezed(self.shape)
        self.features, self.context_features = int(np.prod(self.shape)), 0

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def base_shape(self) -> tuple[int, ...]:
        return _image.squeezed(self.shape)

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        channels, height, width = self.shape
        batch = x.shape[:-3]
        b = len(batch)
        y = x.reshape(*batch, channels, 2, 2, height // 2, width // 2)
        y = jnp.transpose(y, (*range(b), b, b + 3, b + 1, b + 4, b + 2))
        return y.reshape(*batch, *self.shape), jnp.zeros(batch, x.dtype)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        channels, height, width = self.shape
        batch = y.shape[:-3]
        b = len(batch)
        x = y.reshape(*batch, channels, height // 2, 2, width // 2, 2)
        x = jnp.transpose(x, (*range(b), b, b + 2, b + 4, b + 1, b + 3))
        return x.reshape(*batch, *self.base_shape), jnp.zeros(batch, y.dtype)


class Reshape(Bijection):
    """Reshape events, the twin of `pyroflows.pyro.Reshape`: ``base_shape`` on the base side,
    ``shape`` on the data side. Log-det 0.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> pfj.Reshape((16,), (1, 4, 4)).inverse_and_log_det(jnp.zeros((3, 16)))[0].shape
        (3, 1, 4, 4)
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    from_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, shape: Sequence[int], base_shape: Sequence[int]) -> None:
        self.shape = _image.event_shape("shape", shape)
        self.from_shape = _image.event_shape("base_shape", base_shape)
        if int(np.prod(self.shape)) != int(np.prod(self.from_shape)):
            raise ValueError(
                f"shape {self.shape} and base_shape {self.from_shape} must have the same "
                "number of entries"
            )
        self.features, self.context_features = int(np.prod(self.shape)), 0

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.shape

    @property
    def base_shape(self) -> tuple[int, ...]:
        return self.from_shape

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        batch = x.shape[: x.ndim - len(self.from_shape)]
        return x.reshape(*batch, *self.shape), jnp.zeros(batch, x.dtype)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        batch = y.shape[: y.ndim - len(self.shape)]
        return y.reshape(*batch, *self.from_shape), jnp.zeros(batch, y.dtype)


class FactorOut(Bijection):
    """Run ``bijection`` on the first channels of an image, the others unchanged; the twin
    of `pyroflows.pyro.FactorOut`.

    Examples:
        >>> import pyroflows.numpyro as pfj
        >>> layer = pfj.FactorOut((4, 2, 2), pfj.ActNorm((2, 2, 2)))
    """

    bijection: Bijection
    shape: tuple[int, ...] = eqx.field(static=True)
    channels: int = eqx.field(static=True)

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
        self.shape, self.bijection, self.channels = shape, bijection, inner[0]
        self.features = int(np.prod(shape))
        self.context_features = bijection.context_features

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.shape

    def _apply(self, value: Array, context: Array | None, inverse: bool):
        head, tail = value[..., : self.channels, :, :], value[..., self.channels :, :, :]
        step = self.bijection.inverse_and_log_det if inverse else self.bijection.forward_and_log_det
        head, log_det = step(head, context)
        tail = jnp.broadcast_to(tail, (*head.shape[:-3], *tail.shape[-3:]))
        return jnp.concatenate([head, tail], axis=-3), log_det

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._apply(x, context, inverse=False)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._apply(y, context, inverse=True)


def multi_scale(
    plan: _image.Level,
    context: int = 0,
    hidden: int = 64,
    blocks: int = 2,
    transformer: Transformer | None = None,
    activation: str = "relu",
    *,
    key: Array | None = None,
) -> Chain:
    """The multi-scale model of ``plan`` as one `Chain`, the twin of
    `pyroflows.pyro.multi_scale` (same layers, names and order); ``key`` draws the
    conditioners' weights.

    Examples:
        >>> import jax
        >>> from pyroflows import _image
        >>> import pyroflows.numpyro as pfj
        >>> plan = _image.glow_plan((1, 4, 4), levels=1, steps=1)
        >>> model = pfj.multi_scale(plan, hidden=8, key=jax.random.key(0))
    """
    from pyroflows.numpyro.coupling import ImageCoupling
    from pyroflows.numpyro.linear import ActNorm, Conv1x1
    from pyroflows.numpyro.nn import _check_key

    keys = iter(jax.random.split(_check_key(key, "multi_scale"), 4096))
    transformer = AffineTransformer(3.0) if transformer is None else transformer

    def step(spec: tuple, shape: tuple[int, int, int]) -> Bijection:
        if spec[0] == "coupling":
            return ImageCoupling(
                shape,
                context,
                spec[1],
                spec[2],
                transformer,
                hidden,
                blocks,
                activation,
                key=next(keys),
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
                        key=next(keys),
                    )
                )
            if level.inner is not None:
                path.append(FactorOut(inner_shape, build(level.inner)))
            path.append(Invert(Squeeze(level.shape)))
        return Chain(path[::-1], scan=False)

    return build(plan)


class Logit(Bijection):
    """Logit preprocessing as a bijection between the real line and ``(0, 1)``.

    Forward (base -> data): ``y = (sigmoid(x) - alpha) / (1 - 2 alpha)``; inverse:
    ``x = logit(alpha + (1 - 2 alpha) y)``. Put it last in a flow for data in ``[0, 1]``.

    Args:
        features: Event size.
        alpha: Squeeze of ``[0, 1]`` into ``[alpha, 1 - alpha]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> x, log_det = pfj.Logit(2, alpha=0.05).inverse_and_log_det(jnp.full((5, 2), 0.3))
    """

    alpha: float = eqx.field(static=True)

    def __init__(self, features: int, alpha: float = 1e-6) -> None:
        self.features = features = _check_size("features", features, 1)
        self.context_features = 0
        self.alpha = _checks.check_fraction("alpha", alpha, 0.0, 0.5)

    @property
    def codomain(self) -> constraints.Constraint:
        """The interval that the logit's inverse accepts: ``[0, 1]`` widened by the squeeze,
        ``[-alpha / (1 - 2 alpha), (1 - alpha) / (1 - 2 alpha)]`` (its ends have density 0)."""
        scale = 1 - 2 * self.alpha
        interval = constraints.interval(-self.alpha / scale, (1 - self.alpha) / scale)
        return constraints.independent(interval, 1)

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        scale = 1 - 2 * self.alpha
        y = (jax.nn.sigmoid(x) - self.alpha) / scale
        log_det = -jax.nn.softplus(-x) - jax.nn.softplus(x) - math.log(scale)
        return y, log_det.sum(-1)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        scale = 1 - 2 * self.alpha
        p = self.alpha + scale * y
        x = jnp.log(p) - jnp.log1p(-p)
        log_det = math.log(scale) - jnp.log(p) - jnp.log1p(-p)
        return x, log_det.sum(-1)


def dequantize(key: Array, x: Array, levels: int) -> Array:
    """Uniform dequantization of integer-valued data into ``(0, 1)``: ``(x + u) / levels``.

    Args:
        key: Random key for the noise.
        x: Values in ``{0, ..., levels - 1}`` (floats are rounded).
        levels: Number of discrete values per dimension.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> pfj.dequantize(jax.random.key(0), jnp.array([0, 16]), levels=17).shape
        (2,)
    """
    values = quantized(x, levels)
    noise = jax.random.uniform(key, values.shape, dtype=values.dtype)
    return (values + noise) / levels


def quantized(x: Array, levels: int, dtype: Any = None) -> Array:
    """``x`` rounded, as floats (``dtype``, else ``x``'s own if floating, else the default),
    after checking (when concrete) that it holds values in ``0 .. levels - 1``."""
    if not _checks._is_int(levels) or levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels!r}")
    x = jnp.asarray(x)
    if dtype is None:
        dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.result_type(float)
    values = jnp.round(x.astype(dtype))
    if is_concrete(values) and values.size:
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > levels - 1:
            raise ValueError(
                f"x must hold values in 0..{levels - 1} (levels={levels}), "
                f"got min {low} and max {high}"
            )
    return values


def bits_per_dim(
    log_prob: Array,
    dims: int,
    levels: int,
    *,
    log_q: Array | float | None = None,
    log_det: Array | float | None = None,
) -> Array:
    """Bits per dimension of discrete data from the log-density of its dequantized version.

    ``-(log p(y) + log_det - log_q - dims * log(levels)) / (dims * log 2)``, as in the torch
    backend: ``log_q`` is ``log q(u | x)`` of variational dequantization
    (`pyroflows.numpyro.VariationalDequantizer`; default 0, uniform), ``log_det`` the
    log-determinant, data -> flow, of preprocessing done outside the flow (such as a logit),
    so that the bound is always for the data in ``[0, 1]``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> float(pfj.bits_per_dim(jnp.array(0.0), dims=64, levels=256))
        8.0
    """
    total = log_prob
    if log_det is not None:
        total = total + log_det
    if log_q is not None:
        total = total - log_q
    return -(total - dims * math.log(levels)) / (dims * math.log(2))


class VariationalDequantizer(eqx.Module):
    """The noise distribution ``q(u | x)`` of variational dequantization, the twin of
    `pyroflows.pyro.VariationalDequantizer` (same default noise flow and parameter layout:
    a standard logistic base, so that it starts as uniform dequantization).

    ``dequantizer(key, x)`` draws ``u ~ q(u | x)`` by reparameterisation for discrete data
    ``x`` (values ``0 .. levels - 1``, event shape ``shape``) and returns
    ``((x + u) / levels, log q(u | x))``.

    Args:
        shape: The event shape of one data point (``(D,)`` or ``(C, H, W)``).
        levels: Number of discrete values per dimension.
        transforms: Number of coupling layers of the default noise flow.
        hidden: Hidden widths of their MLP conditioners.
        activation: Activation of the conditioners.
        flow: A custom noise flow: events of the data's shape in ``[0, 1]``, context of ``D``
            features (the flattened image scaled to ``[-0.5, 0.5]``).
        key: Random key (keyword only; for the default noise flow).

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> k1, k2 = jax.random.split(jax.random.key(0))
        >>> dequantizer = pfj.VariationalDequantizer(16, levels=17, hidden=(32,), key=k1)
        >>> x = jax.random.randint(k2, (8, 16), 0, 17)
        >>> y, log_q = dequantizer(jax.random.key(1), x)
    """

    flow: Flow
    shape: tuple[int, ...] = eqx.field(static=True)
    levels: int = eqx.field(static=True)

    def __init__(
        self,
        shape: int | Sequence[int],
        levels: int,
        transforms: int = 4,
        hidden: Sequence[int] = (64, 64),
        *,
        activation: str = "relu",
        flow: Flow | None = None,
        key: Array | None = None,
    ) -> None:
        self.shape = _image.event_shape("shape", shape)
        self.levels = _checks.check_int("levels", levels, 2)
        dims = math.prod(self.shape)
        if flow is None:
            transforms = _checks.check_int("transforms", transforms, 1)
            keys = jax.random.split(_check_key(key, "VariationalDequantizer"), transforms)
            layers: list = [
                Coupling(
                    dims,
                    dims,
                    structure.alternating_mask(dims, i % 2),
                    AffineTransformer(),
                    hidden,
                    activation,
                    key=keys[i],
                )
                for i in range(transforms)
            ]
            layers.append(Logit(dims, alpha=0.0))
            if len(self.shape) > 1:
                layers.append(Reshape(self.shape, (dims,)))
            logistic = dist.Logistic(jnp.zeros(dims), jnp.ones(dims)).to_event(1)
            flow = Flow(layers, logistic)
        _image.check_noise_flow(flow, self.shape, dims)
        self.flow = flow

    def context(self, values: Array) -> Array:
        """The noise flow's context: the image flattened and scaled to ``[-0.5, 0.5]``."""
        flat = values.reshape(*values.shape[: values.ndim - len(self.shape)], -1)
        return flat / (self.levels - 1) - 0.5

    def __call__(self, key: Array, x: Array) -> tuple[Array, Array]:
        """Draw ``u ~ q(u | x)``; return ``((x + u) / levels, log q(u | x))``."""
        values = check_event_shape("x", quantized(x, self.levels), self.shape)
        batch = values.shape[: values.ndim - len(self.shape)]
        base = self.flow.base_distribution()
        noise = base.sample(key, batch)
        edge = -math.log(float(jnp.finfo(noise.dtype).tiny))  # a finite draw, as in torch
        noise = jnp.nan_to_num(noise, posinf=edge, neginf=-edge)
        values = values.astype(noise.dtype)
        u, log_det = chain_forward(self.flow.transforms, noise, self.context(values))
        # a saturated sigmoid, or the division, can round onto the edge of the next cell
        # (y = 1 for the top level): keep y strictly inside its own cell
        y = (values + jnp.maximum(u, jnp.finfo(u.dtype).tiny)) / self.levels
        top = jnp.nextafter((values + 1) / self.levels, jnp.zeros_like(y))
        return jnp.minimum(y, top), base.log_prob(noise) - log_det
