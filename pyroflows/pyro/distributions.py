"""``Flow`` (the module users hold) and ``FlowDistribution`` (what calling it gives).

``Flow`` is an ``nn.Module`` holding a base distribution and a list of bijections
(``flow.transforms``, parameter names ``transforms.3.conditioner.layers.0.weight``).
``flow()`` or ``flow(context)`` returns a `FlowDistribution`, a subclass of Pyro's
``TransformedDistribution`` that scores data in one pass through the chain and scores its
own samples from a one-slot cache, so an IAF guide never runs its sequential direction.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from pyro.distributions import TransformedDistribution
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Size, Tensor, nn
from torch.distributions import Distribution, Transform, biject_to, constraints

from pyroflows import _checks
from pyroflows._sampling import chunk_rows
from pyroflows.pyro.core import (
    Bijection,
    batch_shape_of,
    chain_forward,
    chain_inverse,
    chain_sizes,
    check_context,
    check_dtype,
    check_event_shape,
    first_tensor,
    real_events,
)

__all__ = ["Flow", "FlowDistribution", "StandardNormal"]


class StandardNormal(TorchDistribution):
    """Standard normal over vectors (event_dim 1) or images: the default base of every flow.

    Equal to ``Normal(zeros, ones).to_event(1)``, with a log-density of three kernels and
    no argument checks (it has no arguments to check).

    Args:
        like: A tensor of the event shape (``(features,)``, or ``(C, H, W)`` for images)
            whose dtype and device the samples take.
        batch_shape: Batch shape.

    Examples:
        >>> import torch
        >>> from pyroflows.pyro.distributions import StandardNormal
        >>> StandardNormal(torch.zeros(3)).log_prob(torch.zeros(3))
        tensor(-2.7568)
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, like: Tensor, batch_shape: Size | tuple = ()) -> None:
        self._like = like
        super().__init__(Size(batch_shape), like.shape, validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return real_events(len(self.event_shape))

    def expand(self, batch_shape, _instance=None) -> StandardNormal:
        return StandardNormal(self._like, check_expand(self.batch_shape, batch_shape))

    @property
    def mean(self) -> Tensor:
        return self._like.new_zeros(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Tensor:
        return self._like.new_ones(self.batch_shape + self.event_shape)

    def rsample(self, sample_shape: Size | tuple = ()) -> Tensor:
        shape = self._extended_shape(Size(sample_shape))
        return torch.randn(shape, dtype=self._like.dtype, device=self._like.device)

    def log_prob(self, value: Tensor) -> Tensor:
        features = self.event_shape.numel()
        squares = value.square().flatten(-len(self.event_shape)).sum(-1)
        lp = squares.mul(-0.5) - 0.5 * features * math.log(2 * math.pi)
        if self.batch_shape and lp.shape != self.batch_shape:
            lp = lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))
        return lp

    def entropy(self) -> Tensor:
        features = self.event_shape.numel()
        value = 0.5 * features * (1 + math.log(2 * math.pi))
        return self._like.new_full(self.batch_shape, value)


def check_expand(batch_shape: Size, new_shape) -> Size:
    """``new_shape`` as a ``Size``; raise ``ValueError`` unless ``batch_shape`` expands to it
    (torch's rule: dims of size 1 grow, others must match, new dims go on the left)."""
    new_shape = Size(new_shape)
    ok = len(new_shape) >= len(batch_shape) and all(
        old in (1, new)
        for old, new in zip(reversed(batch_shape), reversed(new_shape), strict=False)
    )
    if not ok:
        raise ValueError(
            f"cannot expand a distribution of batch shape {tuple(batch_shape)} to batch shape "
            f"{tuple(new_shape)}: each dim must be 1 or equal to the new one"
        )
    return new_shape


# Attributes of torch transforms that are caches or back-references, not state.
_SKIPPED = frozenset({"_inv", "_cached_x_y"})


class _Base(nn.Module):
    """Holds a distribution's tensors as buffers, so they follow ``.to()`` and ``.double()``."""

    def __init__(self, distribution: Distribution) -> None:
        super().__init__()
        self._template = distribution
        self._paths: list[tuple[tuple[str, ...], str]] = []
        self._collect(distribution, ())

    def _collect(self, obj: object, path: tuple[str, ...]) -> None:
        for name, value in vars(obj).items():
            if name in _SKIPPED:
                continue
            if isinstance(value, Tensor):
                buffer = "_".join((*path, name)).replace("[", "").replace("]", "").lstrip("_")
                buffer = f"b{len(self._paths)}_{buffer}"
                self.register_buffer(buffer, value.detach().clone())
                self._paths.append(((*path, name), buffer))
            elif isinstance(value, (Distribution, Transform)):
                self._collect(value, (*path, name))
            elif isinstance(value, (list, tuple)) and any(
                isinstance(v, (Distribution, Transform)) for v in value
            ):
                # e.g. the transforms of a TransformedDistribution base
                for i, v in enumerate(value):
                    if isinstance(v, (Distribution, Transform)):
                        self._collect(v, (*path, name, f"[{i}]"))

    def forward(self) -> Distribution:
        if not self._paths:
            return self._template
        root = copy.copy(self._template)
        for path, buffer in self._paths:
            node = root
            for name in path[:-1]:
                node = _copy_child(node, name)
            setattr(node, path[-1], getattr(self, buffer))
        return root


def _copy_child(node: object, name: str) -> object:
    """Replace ``node``'s child ``name`` (an attribute, or ``[i]`` of a list) by a shallow copy."""
    if name.startswith("["):
        index = int(name[1:-1])
        child = _shallow_copy(node[index])
        node[index] = child
        return child
    child = getattr(node, name)
    if isinstance(child, (list, tuple)):
        child = list(child)  # the list is copied so the template's stays untouched
    else:
        child = _shallow_copy(child)
    setattr(node, name, child)
    return child


def _shallow_copy(obj: object) -> object:
    copied = copy.copy(obj)
    if isinstance(copied, Transform):
        copied._inv = None  # else ``.inv`` would still run the template transform
    return copied


class Flow(nn.Module):
    """A normalizing flow: a base distribution pushed through a chain of bijections.

    Args:
        transforms: Bijections in the forward (base -> data) order.
        base: Base distribution with event shape ``(features,)``; default a standard
            normal. Any Pyro distribution works (uniform, logistic, a mixture...); its
            tensors are copied into buffers so the flow's ``.to(device)`` and ``.double()``
            move it too.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> flow = pf.Flow([pf.MaskedAutoregressive(2, invert=True), pf.Reverse(2)])
        >>> flow().log_prob(torch.randn(4, 2)).shape
        torch.Size([4])
    """

    def __init__(self, transforms: Iterable[Bijection], base: Distribution | None = None) -> None:
        super().__init__()
        transforms = list(transforms)
        self.features, self.context_features = chain_sizes(transforms, "transforms")
        #: Event shape of the data: ``(features,)``, or ``(C, H, W)`` for an image flow.
        self.event_shape = transforms[-1].event_shape
        self.transforms = nn.ModuleList(transforms)
        if base is None:
            # Carries the dtype and device of the default base; not part of the state.
            self.register_buffer(
                "base_like", torch.zeros(transforms[0].base_shape), persistent=False
            )
            self.base = None
        else:
            if not isinstance(base, Distribution):
                raise TypeError(
                    f"base must be a torch/Pyro Distribution, got {type(base).__name__}"
                )
            want = transforms[0].base_shape
            if tuple(base.event_shape) != want:
                what = "features" if len(want) == 1 else "event shape"
                raise ValueError(
                    f"base must have event_shape {want} to match the transforms' "
                    f"{what}, got event_shape {tuple(base.event_shape)}"
                )
            self.base = _Base(base)

    def base_distribution(self) -> Distribution:
        """The base distribution, on the flow's device and dtype."""
        if self.base is None:
            return StandardNormal(self.base_like)
        return self.base()

    def forward(self, context: Tensor | None = None) -> FlowDistribution:
        """The flow's distribution, conditioned on ``context`` if the flow has one."""
        context = check_context(context, self.context_features)
        return FlowDistribution(self.base_distribution(), self.transforms, context)

    def encode(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The base point (latent) of data ``x``: the chain's inverse (data -> base).

        Examples:
            >>> import torch
            >>> import pyroflows.pyro as pf
            >>> flow = pf.Glow((1, 4, 4), levels=1, steps=1, hidden=8)
            >>> x = torch.rand(2, 1, 4, 4)
            >>> bool(torch.allclose(flow.decode(flow.encode(x)), x, atol=1e-5))
            True
        """
        return self(context).bijections_inverse(x)

    def decode(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """The data point of a base point ``z``: the chain's forward map (base -> data)."""
        return self(context).bijections_forward(z)

    def sample_at_temperature(
        self,
        sample_shape: Size | tuple = (),
        temperature: float = 1.0,
        context: Tensor | None = None,
    ) -> Tensor:
        """Draws with the base noise scaled by ``temperature`` (Glow's reduced-temperature
        samples: ``z ~ N(0, temperature^2)``, then `decode`), without gradients. Needs the
        default standard normal base; ``temperature=1`` is ``flow(context).sample``.

        Examples:
            >>> import pyroflows.pyro as pf
            >>> flow = pf.Glow((1, 4, 4), levels=1, steps=1, hidden=8)
            >>> flow.sample_at_temperature((3,), temperature=0.7).shape
            torch.Size([3, 1, 4, 4])
        """
        temperature = _checks.check_positive("temperature", temperature, allow_zero=True)
        if self.base is not None:
            raise ValueError(
                "sample_at_temperature scales a standard normal base; this flow has a custom "
                f"base ({type(self.base._template).__name__}): scale its draws yourself and "
                "call flow.decode"
            )
        d = self(context)
        with torch.no_grad():
            z = d.base_dist.sample(Size(sample_shape)) * temperature
            return d.bijections_forward(z)

    def extra_repr(self) -> str:
        text = f"features={self.features}"
        if len(self.event_shape) != 1:
            text = f"shape={self.event_shape}"
        if self.context_features:
            text += f", context={self.context_features}"
        return text


#: Draws of more events than this go through the flow in chunks of about this many events
#: (along the first sample dimension) when no gradient is needed.
SAMPLE_CHUNK = 2**16


class FlowDistribution(TransformedDistribution):
    """The distribution of a flow, a Pyro ``TransformedDistribution``.

    ``log_prob`` runs the chain's inverse once (``inverse_and_log_det``) and never the
    inverse and the log-det separately. ``rsample`` and ``sample`` keep their last
    ``(sample, base sample, log_det)`` in a one-slot cache: ``log_prob`` of that very
    tensor costs no pass at all. The cache is checked by identity and by the tensor's version
    counter, so a sample edited in place is scored afresh; and a sample drawn without
    gradients (``sample()``, or anything under ``torch.no_grad()``) is scored from the cache
    only while gradients are off: with gradients on its score goes through the inverse, so
    that the score has its gradient with respect to the flow's parameters (what Pyro's
    score-function ELBO needs for a base without ``rsample``, such as a mixture).

    The batch shape is that of the base distribution broadcast with the context's batch
    shape. Draws without gradients of more than `SAMPLE_CHUNK` events go through the flow in
    chunks, so their peak memory is that of one chunk. The support is the last bijection's
    codomain (all reals, or the unit cube after
    `pyroflows.pyro.Logit`); ``log_prob`` of a value outside it raises a ``ValueError`` when
    argument validation is on (torch's and Pyro's default) and is ``-inf`` otherwise.

    Args:
        base: Base distribution (event shape ``(features,)``).
        transforms: The bijections, base -> data.
        context: Context tensor ``(..., context)`` or ``None``.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> d = pf.MAF(features=2, transforms=2, hidden=(8,))()
        >>> x = d.rsample((5,))
        >>> d.log_prob(x).shape  # scored from the cache
        torch.Size([5])
    """

    arg_constraints: dict = {}

    def __init__(
        self,
        base: Distribution,
        transforms: Iterable[Bijection],
        context: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        self.bijections = list(transforms)
        self.features, self.context_features = chain_sizes(self.bijections, "transforms")
        self._shape = self.bijections[-1].event_shape
        self._base_shape = self.bijections[0].base_shape
        self._like = next((t for t in map(first_tensor, self.bijections) if t is not None), None)
        self.context = check_context(context, self.context_features)
        if context is not None:
            check_dtype("context", context, self._like)
            try:
                batch = torch.broadcast_shapes(base.batch_shape, context.shape[:-1])
            except RuntimeError:
                raise ValueError(
                    f"context of shape {tuple(context.shape)} has a batch shape that does not "
                    f"broadcast against the base's batch shape {tuple(base.batch_shape)}"
                ) from None
            if batch != base.batch_shape:
                base = base.expand(batch)
        pyro_transforms = [
            t.condition(context) if t.context_features else t for t in self.bijections
        ]
        super().__init__(base, pyro_transforms, validate_args=validate_args)
        # (sample, base sample, log_det, sample's version, drawn with gradients)
        self._last: tuple[Tensor, Tensor, Tensor, int, bool] | None = None

    def expand(self, batch_shape, _instance=None) -> FlowDistribution:
        batch_shape = check_expand(self.batch_shape, batch_shape)
        context = self.context
        if context is not None:
            context = context.expand(*batch_shape, context.shape[-1])
        return type(self)(self.base_dist.expand(batch_shape), self.bijections, context)

    def bijections_forward(self, z: Tensor) -> Tensor:
        """The chain's forward map of base points ``z`` (checked), with the context."""
        check_event_shape("z", z, self._base_shape)
        check_dtype("z", z, self._like)
        return chain_forward(self.bijections, z, self.context)[0]

    def bijections_inverse(self, x: Tensor) -> Tensor:
        """The chain's inverse of data points ``x`` (checked): their base points."""
        check_event_shape("x", x, self._shape)
        check_dtype("x", x, self._like)
        return chain_inverse(self.bijections, x, self.context)[0]

    def _forward(self, z: Tensor) -> Tensor:
        check_dtype("the base distribution's sample", z, self._like)
        rows = chunk_rows(z.shape, SAMPLE_CHUNK)
        if torch.is_grad_enabled() or rows is None:
            x, log_det = chain_forward(self.bijections, z, self.context)
        else:  # without gradients, big draws go through in chunks (peak memory of one chunk)
            parts = [chain_forward(self.bijections, c, self.context) for c in z.split(rows)]
            x, log_det = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        self._last = (x, z, log_det, x._version, torch.is_grad_enabled())
        return x

    def rsample(self, sample_shape: Size | tuple = ()) -> Tensor:
        return self._forward(self.base_dist.rsample(Size(sample_shape)))

    def sample(self, sample_shape: Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            if self.base_dist.has_rsample:
                return self.rsample(sample_shape)
            # a base without rsample (a mixture, say) is sampled without gradients
            return self._forward(self.base_dist.sample(Size(sample_shape)))

    def sample_and_log_prob(self, sample_shape: Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """Draw reparameterised samples and their log-density in one forward pass."""
        x = self.rsample(sample_shape)
        return x, self.log_prob(x)

    def _cached(self, value: Tensor) -> tuple[Tensor, Tensor] | None:
        """``(base sample, log_det)`` of ``value`` if it is the last sample, unedited, and its
        cached score has the gradients that the current grad mode asks for."""
        last = self._last
        if last is None or value is not last[0] or value._version != last[3]:
            return None
        if torch.is_grad_enabled() and not last[4]:
            return None
        return last[1], last[2]

    def log_prob(self, value: Tensor) -> Tensor:
        cached = self._cached(value)
        if cached is not None:
            z, log_det = cached
            return self.base_dist.log_prob(z) - log_det
        check_event_shape("value", value, self._shape)
        check_dtype("value", value, self._like)
        if not torch.isfinite(value).all():
            raise ValueError(
                f"value holds non-finite entries (NaN or inf); shape {tuple(value.shape)}"
            )
        if self.context is not None:
            try:
                torch.broadcast_shapes(batch_shape_of(value, self._shape), self.context.shape[:-1])
            except RuntimeError:
                raise ValueError(
                    f"value of shape {tuple(value.shape)} and context of shape "
                    f"{tuple(self.context.shape)} have batch shapes that do not broadcast"
                ) from None
        support = self.support
        inside = None
        if support is not real_events(len(self._shape)):
            inside = support.check(value)
            if not inside.all():
                if self._validate_args:
                    raise ValueError(
                        f"value holds {int((~inside).sum())} events outside the flow's support "
                        f"{support} (its last bijection's codomain); shape {tuple(value.shape)}"
                    )
                # score a point of the support in their place, then give them -inf
                safe = biject_to(support)(torch.zeros_like(value))
                mask = inside.view(inside.shape + (1,) * len(self._shape))
                value = torch.where(mask, value, safe)
        z, log_det = chain_inverse(self.bijections, value, self.context)
        log_p = self.base_dist.log_prob(z) + log_det
        if inside is not None:
            # the support's closed ends map to infinity in the base: density 0 there
            finite = torch.isfinite(z).flatten(-len(self._base_shape)).all(-1)
            log_p = log_p.masked_fill(~inside | ~finite, -math.inf)
        return log_p
