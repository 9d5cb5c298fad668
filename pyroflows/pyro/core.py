"""The one bijection base class, ``Chain``, ``Invert`` and the adapter to Pyro transforms.

Every pyroflows bijection computes both directions together with the log absolute
determinant of the Jacobian of the map it computes:

* ``forward_and_log_det(x, context=None) -> (y, log_det)``: base -> data (generative);
* ``inverse_and_log_det(y, context=None) -> (x, log_det)``: data -> base.

A bijection is also a Pyro ``TransformModule`` (a ``torch.distributions.Transform`` and an
``nn.Module``), so it can be used as it is in ``pyro.distributions.TransformedDistribution``
and registered with ``pyro.module``. The last ``(input, output, log_det)`` triple is kept in a
one-slot cache checked by identity, so Pyro's ``TransformedDistribution.log_prob`` (inverse, then
``log_abs_det_jacobian``) makes one pass through the bijection, not two.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from pyro.distributions.conditional import ConditionalTransform
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn
from torch.distributions import Transform, constraints

__all__ = ["Bijection", "Chain", "Invert", "ConditionedBijection", "check_event", "check_context"]


def check_event(name: str, value: Tensor, features: int) -> Tensor:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` has shape ``(..., features)``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() < 1 or value.shape[-1] != features:
        raise ValueError(
            f"{name} must have shape (..., {features}) (event size {features}), "
            f"got shape {tuple(value.shape)}"
        )
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got dtype {value.dtype}")
    return value


def check_context(context: Tensor | None, context_features: int) -> Tensor | None:
    """Validate a context argument against the number of context features a bijection expects."""
    if context_features == 0:
        if context is not None:
            raise ValueError(
                "context was given, but this flow was built without context (context=0); "
                f"got a context of shape {tuple(context.shape)}"
            )
        return None
    if context is None:
        raise ValueError(
            f"context is required: this flow was built with context={context_features}, "
            "so pass a tensor of shape (..., "
            f"{context_features}) to flow(context) or to the bijection"
        )
    return check_event("context", context, context_features)


def broadcast_context(x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Expand ``x`` and ``context`` to a common batch shape (the event dims are kept)."""
    if context is None or x.shape[:-1] == context.shape[:-1]:
        return x, context
    try:
        batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"input of shape {tuple(x.shape)} and context of shape {tuple(context.shape)} "
            "have batch shapes that do not broadcast"
        ) from None
    return x.expand(*batch, x.shape[-1]), context.expand(*batch, context.shape[-1])


class _OneSlotCache:
    """Remembers the last (input, output, log_det) of a map, looked up by identity."""

    __slots__ = ("x", "y", "log_det")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.x = self.y = self.log_det = None

    def put(self, x: Tensor, y: Tensor, log_det: Tensor) -> None:
        self.x, self.y, self.log_det = x, y, log_det

    def log_det_of(self, x: Tensor, y: Tensor) -> Tensor | None:
        if x is self.x and y is self.y:
            return self.log_det
        return None


class _PyroAdapter:
    """Implements ``torch.distributions.Transform``'s methods through a bijection's two methods."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def _bijection_and_context(self) -> tuple[Bijection, Tensor | None]:
        raise NotImplementedError

    def _slot(self) -> _OneSlotCache:
        slot = self.__dict__.get("_pf_slot")
        if slot is None:
            slot = self.__dict__["_pf_slot"] = _OneSlotCache()
        return slot

    def _call(self, x: Tensor) -> Tensor:
        bijection, context = self._bijection_and_context()
        check_event("x", x, bijection.features)
        y, log_det = bijection.forward_and_log_det(x, context)
        self._slot().put(x, y, log_det)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        bijection, context = self._bijection_and_context()
        check_event("y", y, bijection.features)
        x, log_det = bijection.inverse_and_log_det(y, context)
        self._slot().put(x, y, -log_det)
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        cached = self._slot().log_det_of(x, y)
        if cached is not None:
            return cached
        bijection, context = self._bijection_and_context()
        _, log_det = bijection.forward_and_log_det(x, context)
        return log_det


class Bijection(_PyroAdapter, TransformModule, ConditionalTransform):
    """Abstract base of every pyroflows bijection (torch backend).

    Subclasses implement `forward_and_log_det` and `inverse_and_log_det`.
    Events are vectors of size ``features`` (event_dim 1) with any leading batch shape;
    ``log_det`` has the batch shape. A conditional bijection (``context > 0``) takes a
    context vector whose batch dims broadcast against the input's.

    Args:
        features: Event size.
        context: Size of the context vector (0 for an unconditional bijection).

    Examples:
        >>> import torch, pyro.distributions as dist
        >>> import pyroflows.pyro as pf
        >>> maf = pf.MaskedAutoregressive(3, transformer=pf.AffineTransformer(), invert=True)
        >>> base = dist.Normal(torch.zeros(3), 1.0).to_event(1)
        >>> d = dist.TransformedDistribution(base, [maf])
        >>> d.log_prob(torch.randn(10, 3)).shape
        torch.Size([10])
    """

    def __init__(self, features: int, context: int = 0) -> None:
        super().__init__()
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"features must be a positive int, got {features!r}")
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise ValueError(f"context must be a non-negative int, got {context!r}")
        self.features = features
        self.context_features = context

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Map base -> data; return ``(y, log|det dy/dx|)``."""
        raise NotImplementedError

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Map data -> base; return ``(x, log|det dx/dy|)``."""
        raise NotImplementedError

    # --- Pyro / torch.distributions interface -------------------------------------------
    def _bijection_and_context(self) -> tuple[Bijection, Tensor | None]:
        if self.context_features:
            raise ValueError(
                f"this bijection needs a context of size {self.context_features}: use "
                "bijection.condition(context) to get a Pyro transform"
            )
        return self, None

    def condition(self, context: Tensor) -> Transform:
        """A Pyro transform with ``context`` fixed (``self`` when the bijection has no context)."""
        if self.context_features == 0:
            return self
        return ConditionedBijection(self, context)

    def with_cache(self, cache_size: int = 1) -> Bijection:
        # Bijections always keep a one-slot cache of their own.
        return self

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def extra_repr(self) -> str:
        text = f"features={self.features}"
        if self.context_features:
            text += f", context={self.context_features}"
        return text


class ConditionedBijection(_PyroAdapter, Transform):
    """A conditional bijection with its context fixed: a plain Pyro/torch ``Transform``."""

    def __init__(self, bijection: Bijection, context: Tensor) -> None:
        super().__init__(cache_size=0)
        self.bijection = bijection
        self.context = check_context(context, bijection.context_features)

    def _bijection_and_context(self) -> tuple[Bijection, Tensor | None]:
        return self.bijection, self.context

    def with_cache(self, cache_size: int = 1) -> ConditionedBijection:
        return self

    def __repr__(self) -> str:
        return (
            f"ConditionedBijection({self.bijection!r}, context shape {tuple(self.context.shape)})"
        )


class Chain(Bijection):
    """Compose bijections: forward applies them in order, inverse in reverse order.

    Args:
        transforms: The bijections, in the forward (base -> data) order. They must share
            ``features``; the chain's context size is the largest of theirs, and each
            conditional member receives the same context.

    Examples:
        >>> import pyroflows.pyro as pf
        >>> chain = pf.Chain([pf.ActNorm(2), pf.Reverse(2)])
    """

    def __init__(self, transforms: Iterable[Bijection]) -> None:
        transforms = list(transforms)
        features, context = chain_sizes(transforms, "transforms")
        super().__init__(features, context)
        self.transforms = nn.ModuleList(transforms)

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return chain_forward(self.transforms, x, context)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return chain_inverse(self.transforms, y, context)


def chain_sizes(transforms: list[Any], name: str) -> tuple[int, int]:
    """Check that ``transforms`` share one event size; return ``(features, context)``."""
    if not transforms:
        raise ValueError(f"{name} must hold at least one bijection, got none")
    for i, t in enumerate(transforms):
        if not isinstance(t, Bijection):
            raise TypeError(f"{name}[{i}] must be a pyroflows Bijection, got {type(t).__name__}")
    sizes = {t.features for t in transforms}
    if len(sizes) != 1:
        raise ValueError(
            f"{name} must share one event size, got features {[t.features for t in transforms]}"
        )
    contexts = {t.context_features for t in transforms} - {0}
    if len(contexts) > 1:
        raise ValueError(
            f"conditional members of {name} must share one context size, got {sorted(contexts)}"
        )
    return sizes.pop(), (contexts.pop() if contexts else 0)


def _member_context(t: Bijection, context: Tensor | None) -> Tensor | None:
    return context if t.context_features else None


def chain_forward(
    transforms: Iterable[Bijection], x: Tensor, context: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Run ``transforms`` forward in order, summing their log-dets."""
    total = None
    for t in transforms:
        x, log_det = t.forward_and_log_det(x, _member_context(t, context))
        total = log_det if total is None else total + log_det
    return x, total


def chain_inverse(
    transforms: nn.ModuleList, y: Tensor, context: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Run ``transforms`` inverse in reverse order, summing their log-dets."""
    total = None
    for t in reversed(transforms):
        y, log_det = t.inverse_and_log_det(y, _member_context(t, context))
        total = log_det if total is None else total + log_det
    return y, total


class Invert(Bijection):
    """Swap the two directions of a bijection.

    ``Invert(b).forward_and_log_det`` is ``b.inverse_and_log_det`` and vice versa; this is
    how the cheap direction of a bijection is moved between sampling and density evaluation.

    Examples:
        >>> import pyroflows.pyro as pf
        >>> iaf = pf.MaskedAutoregressive(3, transformer=pf.AffineTransformer())
        >>> maf_like = pf.Invert(iaf)
    """

    def __init__(self, bijection: Bijection) -> None:
        if not isinstance(bijection, Bijection):
            raise TypeError(
                f"bijection must be a pyroflows Bijection, got {type(bijection).__name__}"
            )
        super().__init__(bijection.features, bijection.context_features)
        self.bijection = bijection

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self.bijection.inverse_and_log_det(x, context)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self.bijection.forward_and_log_det(y, context)
