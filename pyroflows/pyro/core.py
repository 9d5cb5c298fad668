"""The one bijection base class, ``Chain``, ``Invert`` and the adapter to Pyro transforms.

Every pyroflows bijection computes both directions together with the log absolute
determinant of the Jacobian of the map it computes:

* ``forward_and_log_det(x, context=None) -> (y, log_det)``: base -> data (generative);
* ``inverse_and_log_det(y, context=None) -> (x, log_det)``: data -> base.

A bijection is also a Pyro ``TransformModule`` (a ``torch.distributions.Transform`` and an
``nn.Module``), so it can be used as it is in ``pyro.distributions.TransformedDistribution``
and registered with ``pyro.module``. The last ``(input, output, log_det)`` triple is kept in a
one-slot cache checked by identity and by the tensors' version counters (an in-place edit
misses the cache), so Pyro's ``TransformedDistribution`` scores its own samples without the
inverse pass and its ``log_prob`` (inverse, then ``log_abs_det_jacobian``) makes one pass
through the bijection, not two. The cache is dropped by ``copy.deepcopy`` and pickling.

The two methods check their arguments (shape, dtype, device, context) when they are called
from outside a pyroflows bijection; calls between bijections (a `Chain`'s members, a flow's
layers) skip the checks, which the outermost call has made.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from pyro.distributions.conditional import ConditionalTransform
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn
from torch.distributions import Transform, constraints

from pyroflows import _checks
from pyroflows._residual import ELEMENT_SCALE, ConvergenceError, convergence_message

__all__ = [
    "Bijection",
    "Chain",
    "Invert",
    "ConditionedBijection",
    "check_event",
    "check_context",
    "check_dtype",
]


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


def check_event_shape(name: str, value: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` has shape ``(..., *shape)``
    (`check_event` for vectors, where ``shape`` is ``(features,)``)."""
    if len(shape) == 1:
        return check_event(name, value, shape[0])
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    dims = ", ".join(map(str, shape))
    if value.dim() < len(shape) or tuple(value.shape[value.dim() - len(shape) :]) != shape:
        raise ValueError(
            f"{name} must have shape (..., {dims}) (event shape {shape}), "
            f"got shape {tuple(value.shape)}"
        )
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got dtype {value.dtype}")
    return value


def real_events(ndim: int) -> constraints.Constraint:
    """The constraint of real events with ``ndim`` dims (``real_vector`` for vectors)."""
    return constraints.real_vector if ndim == 1 else constraints.independent(constraints.real, ndim)


def batch_shape_of(value: Tensor, shape: tuple[int, ...]) -> torch.Size:
    """The batch shape of ``value``, an event batch of event shape ``shape``."""
    return value.shape[: value.dim() - len(shape)]


_CONVERT = {torch.float32: ".float()", torch.float64: ".double()", torch.float16: ".half()"}


def check_dtype(name: str, value: Tensor, like: Tensor | None) -> Tensor:
    """Raise a ``ValueError`` unless ``value`` has the dtype and device of ``like`` (a tensor
    of the flow; ``None`` when the flow has none, and then anything goes)."""
    if like is None:
        return value
    if value.dtype != like.dtype:
        convert = _CONVERT.get(like.dtype, f".to({like.dtype})")
        back = _CONVERT.get(value.dtype, f".to({value.dtype})")
        raise ValueError(
            f"{name} has dtype {value.dtype}, but the flow's parameters have dtype {like.dtype}; "
            f"convert the input with {name}{convert} (numpy arrays arrive as float64 from "
            f"torch.from_numpy) or the flow with flow{back}"
        )
    if value.device != like.device:
        raise ValueError(
            f"{name} is on device {value.device}, but the flow's parameters are on "
            f"{like.device}; move the input with {name}.to('{like.device}') or the flow with "
            f"flow.to('{value.device}')"
        )
    return value


def check_finite(name: str, value: Tensor) -> Tensor:
    """Raise a ``ValueError`` naming ``name`` if ``value`` holds a NaN or an infinity."""
    if not torch.isfinite(value).all():
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(
            f"{name} holds {bad} non-finite entries (NaN or inf); shape {tuple(value.shape)}"
        )
    return value


def check_context(context: Tensor | None, context_features: int) -> Tensor | None:
    """Validate a context argument against the number of context features a bijection expects:
    presence, shape ``(..., context_features)``, a floating dtype and finite entries."""
    if context_features == 0:
        if context is not None:
            shape = tuple(context.shape) if isinstance(context, Tensor) else type(context)
            raise ValueError(
                "context was given, but this flow was built without context (context=0); "
                f"got a context of shape {shape}"
            )
        return None
    if context is None:
        raise ValueError(
            f"context is required: this flow was built with context={context_features}, "
            "so pass a tensor of shape (..., "
            f"{context_features}) to flow(context) or to the bijection"
        )
    check_event("context", context, context_features)
    return check_finite("context", context)


def solve_bracketed(
    newton_step: Callable[[Tensor], tuple[Tensor, Tensor]],
    x: Tensor,
    lo: Tensor,
    hi: Tensor,
    atol: float,
    max_iter: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Elementwise root of an increasing function by Newton's method safeguarded by bisection.

    ``newton_step(x)`` gives ``(f(x), f(x) / f'(x))``; the root lies in ``[lo, hi]``, which
    shrinks by the sign of ``f``, and a Newton step that leaves it is replaced by its
    midpoint. An element is done when its last step moved it by at most
    ``atol * (1 + |x|)``. No gradient; returns ``x``, the done flags and the last steps (the
    caller raises for elements not done in ``max_iter`` iterations).
    """
    with torch.no_grad():
        done = torch.zeros_like(x, dtype=torch.bool)
        step = torch.zeros_like(x)
        for _ in range(max_iter):
            f, delta = newton_step(x)
            hi = torch.where(f > 0, x, hi)
            lo = torch.where(f < 0, x, lo)
            new = x - delta
            new = torch.where((new > lo) & (new < hi), new, (lo + hi) / 2)
            step = (new - x).abs()
            x = new
            done = step <= atol * (1 + x.abs())
            if bool(done.all()):
                break
    return x, done, step


def raise_unconverged(
    done: Tensor,
    step: Tensor,
    max_iter: int,
    atol: float,
    *,
    owner: str,
    method: str = "inverse",
    relative: str = ELEMENT_SCALE,
    rows: bool = True,
) -> None:
    """Raise `ConvergenceError` unless every row (``rows``: the first axis; else every
    element) of an iterative solve is ``done``; the message counts them and gives the
    largest last ``step``."""
    counted = done.reshape(done.shape[0], -1).all(-1) if rows else done.reshape(-1)
    if not bool(counted.all()):
        raise ConvergenceError(
            convergence_message(
                max_iter,
                atol,
                int((~counted).sum()),
                counted.numel(),
                float(step.max()),
                owner=owner,
                method=method,
                relative=relative,
                unit="rows" if rows else "elements",
            )
        )


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


# ------------------------------------------------------------------ argument checks


class _Depth(threading.local):
    value = 0


_DEPTH = _Depth()


@contextmanager
def nested() -> Iterator[None]:
    """Calls of bijection methods inside this block skip the argument checks (their caller,
    a chain or a flow distribution, has checked the arguments once)."""
    _DEPTH.value += 1
    try:
        yield
    finally:
        _DEPTH.value -= 1


def first_tensor(module: nn.Module) -> Tensor | None:
    """A parameter (else a floating buffer) of ``module``: its dtype and device are the flow's."""
    for p in module.parameters():
        return p
    for b in module.buffers():
        if b.is_floating_point():
            return b
    return None


def _checked(method: Callable, name: str) -> Callable:
    """Wrap a bijection's ``forward_and_log_det`` / ``inverse_and_log_det`` with the checks."""

    @functools.wraps(method)
    def wrapper(self: Bijection, value: Tensor, context: Tensor | None = None):
        if _DEPTH.value:
            return method(self, value, context)
        self.check_input(name, value)
        context = check_context(context, self.context_features)
        if context is not None:
            check_dtype("context", context, first_tensor(self))
            shape = self.base_shape if name == "x" else self.event_shape
            try:
                torch.broadcast_shapes(batch_shape_of(value, shape), context.shape[:-1])
            except RuntimeError:
                raise ValueError(
                    f"{name} of shape {tuple(value.shape)} and context of shape "
                    f"{tuple(context.shape)} have batch shapes that do not broadcast"
                ) from None
        with nested():
            return method(self, value, context)

    wrapper._pf_checked = True  # type: ignore[attr-defined]
    return wrapper


class _OneSlotCache:
    """Remembers the last (input, output, log_det) of a map, looked up by identity and by the
    tensors' version counters (so an in-place edit of either misses). Copies are empty."""

    __slots__ = ("x", "y", "log_det", "versions")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.x = self.y = self.log_det = self.versions = None

    def put(self, x: Tensor, y: Tensor, log_det: Tensor) -> None:
        self.x, self.y, self.log_det = x, y, log_det
        self.versions = (x._version, y._version)

    def _valid(self) -> bool:
        return self.versions == (self.x._version, self.y._version)

    def log_det_of(self, x: Tensor, y: Tensor) -> Tensor | None:
        if x is self.x and y is self.y and self._valid():
            return self.log_det
        return None

    def output_of(self, x: Tensor) -> Tensor | None:
        if x is self.x and self._valid():
            return self.y
        return None

    def input_of(self, y: Tensor) -> Tensor | None:
        if y is self.y and self._valid():
            return self.x
        return None

    def __deepcopy__(self, memo: dict) -> _OneSlotCache:
        return _OneSlotCache()

    def __reduce__(self):
        return (_OneSlotCache, ())


class _PyroAdapter:
    """Implements ``torch.distributions.Transform``'s methods through a bijection's two methods.

    The transform keeps a one-slot cache (``cache_size`` 1, torch's convention): calling it
    on its last output's input, or its inverse on its last output, returns the remembered
    tensor, and ``log_abs_det_jacobian`` of the last pair costs no pass.
    """

    bijective = True

    def _bijection_and_context(self) -> tuple[Bijection, Tensor | None]:
        raise NotImplementedError

    def _slot(self) -> _OneSlotCache | None:
        if not self._cache_size:
            return None
        slot = self.__dict__.get("_pf_slot")
        if slot is None:
            slot = self.__dict__["_pf_slot"] = _OneSlotCache()
        return slot

    def __call__(self, x: Tensor) -> Tensor:
        slot = self._slot()
        y = slot.output_of(x) if slot is not None else None
        return self._call(x) if y is None else y

    def _inv_call(self, y: Tensor) -> Tensor:
        slot = self._slot()
        x = slot.input_of(y) if slot is not None else None
        return self._inverse(y) if x is None else x

    def _call(self, x: Tensor) -> Tensor:
        bijection, context = self._bijection_and_context()
        y, log_det = bijection.forward_and_log_det(x, context)
        slot = self._slot()
        if slot is not None:
            slot.put(x, y, log_det)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        bijection, context = self._bijection_and_context()
        x, log_det = bijection.inverse_and_log_det(y, context)
        slot = self._slot()
        if slot is not None:
            slot.put(x, y, -log_det)
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        slot = self._slot()
        cached = slot.log_det_of(x, y) if slot is not None else None
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
    context vector whose batch dims broadcast against the input's. Called from outside a
    bijection, both methods check their input (shape, floating dtype, the dtype and device of
    the parameters) and their context (given exactly when the bijection has one, of shape
    ``(..., context)``, finite) and raise a ``ValueError`` that names the argument.

    As a torch ``Transform`` it has ``cache_size`` 1 (`with_cache(0)` gives a view without the
    cache), its domain and codomain are the real vectors unless a subclass says otherwise
    (`pyroflows.pyro.Logit` maps onto the unit cube), and ``bijection.inv`` of a conditional
    bijection has ``.condition(context)``, as Pyro's conditional transforms do.

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

    @property
    def domain(self) -> constraints.Constraint:
        return real_events(len(self.base_shape))

    @property
    def codomain(self) -> constraints.Constraint:
        return real_events(len(self.event_shape))

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        shape: Sequence[int] | None = None,
        base_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(cache_size=1)
        self.features = _checks.check_int("features", features, 1)
        self.context_features = _checks.check_int("context", context, 0)
        #: Event shape on the data side (the output of ``forward_and_log_det``) and on the
        #: base side (its input): ``(features,)`` for vectors, ``(C, H, W)`` for images.
        #: They differ only for bijections that reshape, such as `pyroflows.pyro.Squeeze`.
        self.event_shape = (self.features,) if shape is None else tuple(shape)
        self.base_shape = self.event_shape if base_shape is None else tuple(base_shape)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, direction in (("forward_and_log_det", "x"), ("inverse_and_log_det", "y")):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_pf_checked", False):
                setattr(cls, name, _checked(method, direction))

    def check_input(self, name: str, value: Tensor) -> Tensor:
        """Raise a ``ValueError`` naming ``name`` unless ``value`` is an event batch this
        bijection takes: shape ``(..., features)`` (``(..., *base_shape)`` for the input ``x``
        of the forward direction and ``(..., *event_shape)`` for ``y`` when the event is not
        a vector), floating, the parameters' dtype and device."""
        check_event_shape(name, value, self.base_shape if name == "x" else self.event_shape)
        return check_dtype(name, value, first_tensor(self))

    def forward_shape(self, shape: Sequence[int]) -> torch.Size:
        """The shape of ``forward(x)`` for ``x`` of shape ``shape`` (torch's Transform API)."""
        return torch.Size(tuple(shape)[: len(shape) - len(self.base_shape)] + self.event_shape)

    def inverse_shape(self, shape: Sequence[int]) -> torch.Size:
        """The shape of ``inverse(y)`` for ``y`` of shape ``shape``."""
        return torch.Size(tuple(shape)[: len(shape) - len(self.event_shape)] + self.base_shape)

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

    @property
    def inv(self) -> Transform:
        """The inverse transform; for a conditional bijection, one with ``.condition(context)``."""
        if self.context_features:
            return ConditionalInverse(self)
        return super().inv

    def with_cache(self, cache_size: int = 1) -> Transform:
        """``self`` for ``cache_size=1`` (bijections keep a one-slot cache); for 0, a view of
        the bijection (the same parameters) that caches nothing."""
        if cache_size == 1:
            return self
        if cache_size == 0:
            return ConditionedBijection(self, None, cache_size=0)
        raise ValueError(f"cache_size must be 0 or 1, got {cache_size!r}")

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    __repr__ = nn.Module.__repr__

    def extra_repr(self) -> str:
        text = f"features={self.features}"
        if len(self.event_shape) != 1 or self.base_shape != self.event_shape:
            text = f"shape={self.event_shape}"
            if self.base_shape != self.event_shape:
                text += f", base_shape={self.base_shape}"
        if self.context_features:
            text += f", context={self.context_features}"
        return text


class ConditionedBijection(_PyroAdapter, Transform):
    """A bijection with its context fixed: a plain Pyro/torch ``Transform``.

    Args:
        bijection: The bijection.
        context: Its context (``None`` for an unconditional bijection).
        cache_size: 1 (default) to remember the last call, 0 for none.
    """

    def __init__(self, bijection: Bijection, context: Tensor | None, cache_size: int = 1) -> None:
        if cache_size not in (0, 1):
            raise ValueError(f"cache_size must be 0 or 1, got {cache_size!r}")
        super().__init__(cache_size=cache_size)
        self.bijection = bijection
        self.context = check_context(context, bijection.context_features)
        if self.context is not None:
            check_dtype("context", self.context, first_tensor(bijection))

    @property
    def domain(self) -> constraints.Constraint:
        return self.bijection.domain

    @property
    def codomain(self) -> constraints.Constraint:
        return self.bijection.codomain

    def forward_shape(self, shape: Sequence[int]) -> torch.Size:
        return self.bijection.forward_shape(shape)

    def inverse_shape(self, shape: Sequence[int]) -> torch.Size:
        return self.bijection.inverse_shape(shape)

    def _bijection_and_context(self) -> tuple[Bijection, Tensor | None]:
        return self.bijection, self.context

    def with_cache(self, cache_size: int = 1) -> ConditionedBijection:
        if cache_size == self._cache_size:
            return self
        return ConditionedBijection(self.bijection, self.context, cache_size)

    def __repr__(self) -> str:
        context = None if self.context is None else tuple(self.context.shape)
        return (
            f"ConditionedBijection({self.bijection!r}, context shape {context}, "
            f"cache_size={self._cache_size})"
        )


class ConditionalInverse(Transform, ConditionalTransform):
    """The inverse of a conditional bijection: ``.condition(context)`` gives the inverse
    transform with that context (``bijection.condition(context).inv``)."""

    bijective = True

    def __init__(self, bijection: Bijection) -> None:
        super().__init__()
        self.bijection = bijection

    @property
    def domain(self) -> constraints.Constraint:
        return self.bijection.codomain

    @property
    def codomain(self) -> constraints.Constraint:
        return self.bijection.domain

    @property
    def inv(self) -> Bijection:
        return self.bijection

    def condition(self, context: Tensor) -> Transform:
        return self.bijection.condition(context).inv

    def _call(self, y: Tensor) -> Tensor:
        self.bijection._bijection_and_context()  # raises: a context is needed
        raise AssertionError("unreachable")

    _inverse = _call

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self._call(x)

    def __repr__(self) -> str:
        return f"ConditionalInverse({self.bijection!r})"


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
        super().__init__(
            features,
            context,
            shape=transforms[-1].event_shape,
            base_shape=transforms[0].base_shape,
        )
        self.transforms = nn.ModuleList(transforms)

    @property
    def domain(self) -> constraints.Constraint:
        return self.transforms[0].domain

    @property
    def codomain(self) -> constraints.Constraint:
        return self.transforms[-1].codomain

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
    for i in range(len(transforms) - 1):
        out, into = transforms[i].event_shape, transforms[i + 1].base_shape
        if out != into:
            raise ValueError(
                f"{name}[{i}] gives events of shape {out} but {name}[{i + 1}] takes events of "
                f"shape {into}"
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
    """Run ``transforms`` forward in order, summing their log-dets (arguments unchecked)."""
    total = None
    with nested():
        for t in transforms:
            x, log_det = t.forward_and_log_det(x, _member_context(t, context))
            total = log_det if total is None else total + log_det
    return x, total


def chain_inverse(
    transforms: nn.ModuleList, y: Tensor, context: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Run ``transforms`` inverse in reverse order, summing their log-dets (unchecked)."""
    total = None
    with nested():
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
        super().__init__(
            bijection.features,
            bijection.context_features,
            shape=bijection.base_shape,
            base_shape=bijection.event_shape,
        )
        self.bijection = bijection

    @property
    def domain(self) -> constraints.Constraint:
        return self.bijection.codomain

    @property
    def codomain(self) -> constraints.Constraint:
        return self.bijection.domain

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self.bijection.inverse_and_log_det(x, context)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self.bijection.forward_and_log_det(y, context)
