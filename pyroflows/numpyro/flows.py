"""Recipes: ready-made flows with the same names and arguments in both backends (JAX).

Every recipe takes ``features, context=0, transforms, hidden`` and family-specific keyword
arguments after them, and returns a `pyroflows.numpyro.distributions.Flow` whose
bijections are near the identity at initialisation. Structure (masks, autoregressive
orders) comes from `pyroflows.structure`, so both backends build the same flow.

Choices made here:
    * Autoregressive recipes alternate the natural and the reversed feature order from one
      layer to the next (no separate permutation layers).
    * Coupling recipes alternate the masks ``index % 2 == 0`` and ``index % 2 == 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax import Array
from numpyro.distributions import Distribution

from pyroflows import structure
from pyroflows.numpyro.autoregressive import MaskedAutoregressive
from pyroflows.numpyro.coupling import Coupling
from pyroflows.numpyro.distributions import Flow
from pyroflows.numpyro.linear import Scale
from pyroflows.numpyro.nn import _check_key
from pyroflows.numpyro.transformers import (
    AdditiveTransformer,
    AffineTransformer,
    SplineTransformer,
    Transformer,
)

__all__ = ["NICE", "RealNVP", "NSF", "MAF", "IAF"]


def _check_transforms(transforms: int) -> int:
    if isinstance(transforms, bool) or not isinstance(transforms, int) or transforms < 1:
        raise ValueError(f"transforms must be a positive int, got {transforms!r}")
    return transforms


def _autoregressive(
    features: int,
    context: int,
    transforms: int,
    hidden: Sequence[int],
    transformer: Transformer,
    invert: bool,
    activation: str,
    key: Array | None,
) -> list[MaskedAutoregressive]:
    keys = jax.random.split(_check_key(key, "the recipe"), _check_transforms(transforms))
    return [
        MaskedAutoregressive(
            features,
            context,
            transformer,
            hidden,
            invert=invert,
            order=structure.autoregressive_order(features, i),
            activation=activation,
            key=keys[i],
        )
        for i in range(transforms)
    ]


def _coupling(
    features: int,
    context: int,
    transforms: int,
    hidden: Sequence[int],
    transformer: Transformer,
    activation: str,
    key: Array | None,
) -> list[Coupling]:
    if features < 2:
        raise ValueError(f"coupling flows need features >= 2, got features={features}")
    keys = jax.random.split(_check_key(key, "the recipe"), _check_transforms(transforms))
    return [
        Coupling(
            features,
            context,
            structure.alternating_mask(features, i % 2),
            transformer,
            hidden,
            activation,
            key=keys[i],
        )
        for i in range(transforms)
    ]


def MAF(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    bound: float = 3.0,
    activation: str = "relu",
    base: Distribution | None = None,
    key: Array | None = None,
) -> Flow:
    """Masked autoregressive flow (Papamakarios et al., 2017): one-pass density.

    Args:
        features: Event size.
        context: Context size (0 for an unconditional flow).
        transforms: Number of autoregressive layers.
        hidden: Hidden widths of each MADE.
        bound: Bound on each layer's absolute log-scale.
        activation: Conditioner activation.
        base: Base distribution (default standard normal).
        key: Random key for the initial weights (keyword only, required).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.MAF(features=5, transforms=5, hidden=(64, 64), key=jax.random.key(0))
        >>> flow().log_prob(jnp.zeros((3, 5))).shape
        (3,)
    """
    layers = _autoregressive(
        features, context, transforms, hidden, AffineTransformer(bound), True, activation, key
    )
    return Flow(layers, base)


def IAF(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    bound: float = 3.0,
    activation: str = "relu",
    base: Distribution | None = None,
    key: Array | None = None,
) -> Flow:
    """Inverse autoregressive flow (Kingma et al., 2016): one-pass sampling.

    Same layers as `MAF` used in the other direction: sampling is one pass, scoring new
    data takes ``features`` passes per layer. A sample drawn with
    ``sample_with_intermediates`` (as NumPyro's ELBOs draw guide samples) is scored
    without them. Arguments as in `MAF`.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> d = pfj.IAF(features=4, transforms=3, hidden=(32,), key=jax.random.key(0))()
        >>> x, intermediates = d.sample_with_intermediates(jax.random.key(1), (10,))
        >>> lp = d.log_prob(x, intermediates)  # no sequential pass
    """
    layers = _autoregressive(
        features, context, transforms, hidden, AffineTransformer(bound), False, activation, key
    )
    return Flow(layers, base)


def NSF(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    bins: int = 8,
    bound: float = 5.0,
    mode: str = "autoregressive",
    activation: str = "relu",
    base: Distribution | None = None,
    key: Array | None = None,
) -> Flow:
    """Neural spline flow (Durkan et al., 2019): rational-quadratic spline transformers.

    Args:
        features: Event size.
        context: Context size.
        transforms: Number of layers.
        hidden: Conditioner hidden widths.
        bins: Spline bins.
        bound: The splines act on ``[-bound, bound]``; identity outside.
        mode: ``"autoregressive"`` (MAF-style, one-pass density) or ``"coupling"``
            (one pass both ways).
        activation: Conditioner activation.
        base: Base distribution (default standard normal).
        key: Random key for the initial weights (keyword only, required).

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.NSF(2, transforms=3, bins=8, mode="coupling", key=jax.random.key(0))
    """
    transformer = SplineTransformer(bins, bound)
    if mode == "autoregressive":
        layers = _autoregressive(
            features, context, transforms, hidden, transformer, True, activation, key
        )
    elif mode == "coupling":
        layers = _coupling(features, context, transforms, hidden, transformer, activation, key)
    else:
        raise ValueError(f"mode must be 'autoregressive' or 'coupling', got {mode!r}")
    return Flow(layers, base)


def RealNVP(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    bound: float = 3.0,
    activation: str = "relu",
    base: Distribution | None = None,
    key: Array | None = None,
) -> Flow:
    """RealNVP (Dinh et al., 2017): affine coupling layers with alternating masks.

    Arguments as in `MAF`; needs ``features >= 2``.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.RealNVP(features=4, transforms=4, key=jax.random.key(0))
    """
    layers = _coupling(
        features, context, transforms, hidden, AffineTransformer(bound), activation, key
    )
    return Flow(layers, base)


def NICE(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 4,
    hidden: Sequence[int] = (64, 64),
    *,
    activation: str = "relu",
    base: Distribution | None = None,
    key: Array | None = None,
) -> Flow:
    """NICE (Dinh et al., 2015): additive coupling layers and a final diagonal scaling.

    Arguments as in `MAF`; needs ``features >= 2``. The coupling layers are volume
    preserving; the diagonal scaling (`pyroflows.numpyro.linear.Scale`) carries the
    whole log-determinant. It is the last layer in the data -> base direction, as in the
    paper, so it comes first in the forward (base -> data) order.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.NICE(features=4, transforms=4, key=jax.random.key(0))
    """
    layers = _coupling(
        features, context, transforms, hidden, AdditiveTransformer(), activation, key
    )
    return Flow([Scale(features), *layers], base)
