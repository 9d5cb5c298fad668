"""Recipes: ready-made flows with the same names and arguments in both backends.

Every recipe takes ``features, context=0, transforms, hidden`` and family-specific keyword
arguments after them, and returns a `pyroflows.pyro.distributions.Flow` whose
bijections are near the identity at initialisation. Structure (masks, autoregressive
orders) comes from `pyroflows.structure`, so both backends build the same flow.

Choices made here:
    * Autoregressive recipes alternate the natural and the reversed feature order from one
      layer to the next (no separate permutation layers).
    * Coupling recipes alternate the masks ``index % 2 == 0`` and ``index % 2 == 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.distributions import Distribution

from pyroflows import structure
from pyroflows.pyro.autoregressive import MaskedAutoregressive
from pyroflows.pyro.coupling import Coupling
from pyroflows.pyro.distributions import Flow
from pyroflows.pyro.linear import Scale
from pyroflows.pyro.transformers import (
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
) -> list[MaskedAutoregressive]:
    return [
        MaskedAutoregressive(
            features,
            context,
            transformer,
            hidden,
            invert=invert,
            order=structure.autoregressive_order(features, i),
            activation=activation,
        )
        for i in range(_check_transforms(transforms))
    ]


def _coupling(
    features: int,
    context: int,
    transforms: int,
    hidden: Sequence[int],
    transformer: Transformer,
    activation: str,
) -> list[Coupling]:
    if features < 2:
        raise ValueError(f"coupling flows need features >= 2, got features={features}")
    return [
        Coupling(
            features,
            context,
            structure.alternating_mask(features, i % 2),
            transformer,
            hidden,
            activation,
        )
        for i in range(_check_transforms(transforms))
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

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> flow = pf.MAF(features=5, context=0, transforms=5, hidden=(64, 64))
        >>> flow().log_prob(torch.randn(3, 5)).shape
        torch.Size([3])
    """
    layers = _autoregressive(
        features, context, transforms, hidden, AffineTransformer(bound), True, activation
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
) -> Flow:
    """Inverse autoregressive flow (Kingma et al., 2016): one-pass sampling.

    Same layers as `MAF` used in the other direction: sampling (and scoring one's
    own samples, through the cache) is one pass, scoring new data takes ``features``
    passes per layer. Arguments as in `MAF`.

    Examples:
        >>> import pyroflows.pyro as pf
        >>> d = pf.IAF(features=4, transforms=3, hidden=(32,))()
        >>> x = d.rsample((10,))
        >>> lp = d.log_prob(x)  # no sequential pass: scored from the cache
    """
    layers = _autoregressive(
        features, context, transforms, hidden, AffineTransformer(bound), False, activation
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

    Examples:
        >>> import pyroflows.pyro as pf
        >>> flow = pf.NSF(features=2, transforms=3, hidden=(32, 32), bins=8, mode="coupling")
    """
    transformer = SplineTransformer(bins, bound)
    if mode == "autoregressive":
        layers = _autoregressive(
            features, context, transforms, hidden, transformer, True, activation
        )
    elif mode == "coupling":
        layers = _coupling(features, context, transforms, hidden, transformer, activation)
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
) -> Flow:
    """RealNVP (Dinh et al., 2017): affine coupling layers with alternating masks.

    Arguments as in `MAF`; needs ``features >= 2``.

    Examples:
        >>> import pyroflows.pyro as pf
        >>> flow = pf.RealNVP(features=4, transforms=4, hidden=(64, 64))
    """
    layers = _coupling(features, context, transforms, hidden, AffineTransformer(bound), activation)
    return Flow(layers, base)


def NICE(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 4,
    hidden: Sequence[int] = (64, 64),
    *,
    activation: str = "relu",
    base: Distribution | None = None,
) -> Flow:
    """NICE (Dinh et al., 2015): additive coupling layers and a final diagonal scaling.

    Arguments as in `MAF`; needs ``features >= 2``. The coupling layers are volume
    preserving; the diagonal scaling (`pyroflows.pyro.linear.Scale`) carries the
    whole log-determinant. It is the last layer in the data -> base direction, as in the
    paper, so it comes first in the forward (base -> data) order.

    Examples:
        >>> import pyroflows.pyro as pf
        >>> flow = pf.NICE(features=4, transforms=4, hidden=(64, 64))
    """
    layers = _coupling(features, context, transforms, hidden, AdditiveTransformer(), activation)
    return Flow([Scale(features), *layers], base)
