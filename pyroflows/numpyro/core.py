"""The one bijection base class, ``Chain``, ``Invert`` and the adapter to NumPyro transforms.

Every pyroflows bijection computes both directions together with the log absolute
determinant of the Jacobian of the map it computes:

* ``forward_and_log_det(x, context=None) -> (y, log_det)``: base -> data (generative);
* ``inverse_and_log_det(y, context=None) -> (x, log_det)``: data -> base.

A bijection is an equinox module (a pytree of its arrays). ``bijection.transform(context)``
wraps it as a NumPyro ``Transform`` for ``numpyro.distributions.TransformedDistribution``;
its ``call_with_intermediates`` hands the log-det to NumPyro, so scoring a sample drawn with
``sample_with_intermediates`` (as NumPyro's ELBOs do for guides) never runs the inverse.

Called from outside a bijection, the two methods check their arguments (shape, floating
dtype, context); calls between bijections skip the checks, which the outermost call made.
Inside ``jit`` only the static checks (shapes, dtypes, presence of a context) run: a NaN in
a traced context cannot raise.

Runs of bijections with identical structure (same classes, static settings and array
shapes, as recipes build them) are stored stacked, once, in a `Stack` and run with
``jax.lax.scan``, so tracing and compile time do not grow with the number of layers.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from numpyro.distributions import constraints
from numpyro.distributions.transforms import Transform

from pyroflows import _checks
from pyroflows._residual import ELEMENT_SCALE, ConvergenceError, convergence_message

__all__ = [
    "Bijection",
    "BijectionTransform",
    "Chain",
    "Invert",
    "Stack",
    "check_context",
    "check_event",
]


def check_event(name: str, value: Any, features: int) -> Array:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` has shape ``(..., features)``."""
    value = jnp.asarray(value) if not isinstance(value, jax.Array) else value
    if value.ndim < 1 or value.shape[-1] != features:
        raise ValueError(
            f"{name} must have shape (..., {features}) (event size {features}), "
            f"got shape {tuple(value.shape)}"
        )
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating point array, got dtype {value.dtype}")
    return value


def check_event_shape(name: str, value: Any, shape: tuple[int, ...]) -> Array:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` has shape ``(..., *shape)``
    (`check_event` for vectors, where ``shape`` is ``(features,)``)."""
    if len(shape) == 1:
        return check_event(name, value, shape[0])
    value = jnp.asarray(value) if not isinstance(value, jax.Array) else value
    dims = ", ".join(map(str, shape))
    if value.ndim < len(shape) or tuple(value.shape[value.ndim - len(shape) :]) != shape:
        raise ValueError(
            f"{name} must have shape (..., {dims}) (event shape {shape}), "
            f"got shape {tuple(value.shape)}"
        )
    if not jnp.issubdtype(value.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating point array, got dtype {value.dtype}")
    return value


def batch_shape_of(value: Array, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The batch shape of ``value``, an event batch of event shape ``shape``."""
    return tuple(value.shape[: value.ndim - len(shape)])


def real_events(ndim: int) -> constraints.Constraint:
    """The constraint of real events with ``ndim`` dims (``real_vector`` for vectors)."""
    return constraints.real_vector if ndim == 1 else constraints.independent(constraints.real, ndim)


def is_concrete(value: Any) -> bool:
    """Whether ``value`` holds numbers now (not a tracer inside ``jit``, ``vmap`` or ``grad``)."""
    return not isinstance(value, jax.core.Tracer)


def check_finite(name: str, value: Array) -> Array:
    """Raise a ``ValueError`` naming ``name`` if a concrete ``value`` holds a NaN or an inf."""
    if is_concrete(value):
        finite = np.isfinite(np.asarray(value))
        if not finite.all():
            raise ValueError(
                f"{name} holds {int((~finite).sum())} non-finite entries (NaN or inf); "
                f"shape {tuple(value.shape)}"
            )
    return value


def check_context(context: Any, context_features: int) -> Array | None:
    """Validate a context argument against the number of context features expected:
    presence, shape ``(..., context_features)``, a floating dtype and (when concrete) finite
    entries."""
    if context_features == 0:
        if context is not None:
            raise ValueError(
                "context was given, but this flow was built without context (context=0); "
                f"got a context of shape {tuple(jnp.shape(context))}"
            )
        return None
    if context is None:
        raise ValueError(
            f"context is required: this flow was built with context={context_features}, "
            f"so pass an array of shape (..., {context_features}) to flow(context) or to "
            "the bijection"
        )
    return check_finite("context", check_event("context", context, context_features))


def solve_bracketed(
    newton_step: Callable[[Array], tuple[Array, Array]],
    x: Array,
    lo: Array,
    hi: Array,
    atol: float,
    max_iter: int,
) -> tuple[Array, Array, Array]:
    """Elementwise root of an increasing function by Newton's method safeguarded by bisection,
    as `pyroflows.pyro.core.solve_bracketed`: ``newton_step(x)`` gives
    ``(f(x), f(x) / f'(x))``, the root lies in ``[lo, hi]``, an element is done when its last
    step is at most ``atol * (1 + |x|)``. A ``lax.while_loop`` (stop gradients on the
    inputs first); returns ``x``, the done flags and the last steps."""

    def body(state):
        i, x, lo, hi, _, _ = state
        f, delta = newton_step(x)
        hi = jnp.where(f > 0, x, hi)
        lo = jnp.where(f < 0, x, lo)
        new = x - delta
        new = jnp.where((new > lo) & (new < hi), new, (lo + hi) / 2)
        step = jnp.abs(new - x)
        return i + 1, new, lo, hi, step <= atol * (1 + jnp.abs(new)), step

    def cond(state):
        return (state[0] < max_iter) & ~jnp.all(state[4])

    start = (0, x, lo, hi, jnp.zeros(x.shape, bool), jnp.zeros_like(x))
    _, x, _, _, done, step = jax.lax.while_loop(cond, body, start)
    return x, done, step


def check_converged(
    out: Any,
    done: Array,
    step: Array,
    max_iter: int,
    atol: float,
    *,
    owner: str,
    method: str = "inverse",
    relative: str = ELEMENT_SCALE,
    rows: bool = True,
) -> Any:
    """``out``, after raising `ConvergenceError` (eagerly) or equinox's runtime error (under
    ``jit``) unless every row (``rows``: the first axis; else every element) of an iterative
    solve is ``done``, as `pyroflows.pyro.core.raise_unconverged`."""
    counted = jnp.all(done.reshape(done.shape[0], -1), axis=-1) if rows else done.reshape(-1)
    unit = "rows" if rows else "elements"
    text = dict(owner=owner, method=method, relative=relative, unit=unit)
    if is_concrete(counted):
        if not bool(jnp.all(counted)):
            raise ConvergenceError(
                convergence_message(
                    max_iter,
                    atol,
                    int(jnp.sum(~counted)),
                    counted.shape[0],
                    float(jnp.max(step)),
                    **text,
                )
            )
        return out
    return eqx.error_if(out, ~jnp.all(counted), convergence_message(max_iter, atol, **text))


def broadcast_context(x: Array, context: Array | None) -> tuple[Array, Array | None]:
    """Broadcast ``x`` and ``context`` to a common batch shape (the event dims are kept)."""
    if context is None or x.shape[:-1] == context.shape[:-1]:
        return x, context
    try:
        batch = jnp.broadcast_shapes(x.shape[:-1], context.shape[:-1])
    except ValueError:
        raise ValueError(
            f"input of shape {tuple(x.shape)} and context of shape {tuple(context.shape)} "
            "have batch shapes that do not broadcast"
        ) from None
    x = jnp.broadcast_to(x, (*batch, x.shape[-1]))
    return x, jnp.broadcast_to(context, (*batch, context.shape[-1]))


def _float_dtype_of(tree: Any) -> Any:
    """The dtype of the first floating array in ``tree`` (``None`` if it has none)."""
    for leaf in jax.tree_util.tree_leaves(tree):
        if eqx.is_inexact_array(leaf):
            return leaf.dtype
    return None


def _check_size(name: str, value: Any, minimum: int) -> int:
    return _checks.check_int(name, value, minimum)


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


def _checked(method: Callable, name: str) -> Callable:
    """Wrap a bijection's ``forward_and_log_det`` / ``inverse_and_log_det`` with the checks."""

    @functools.wraps(method)
    def wrapper(self: Bijection, value: Any, context: Any = None):
        if _DEPTH.value:
            return method(self, value, context)
        value = self.check_input(name, value)
        context = check_context(context, self.context_features)
        if context is not None:
            shape = self.base_shape if name == "x" else self.event_shape
            try:
                jnp.broadcast_shapes(batch_shape_of(value, shape), context.shape[:-1])
            except ValueError:
                raise ValueError(
                    f"{name} of shape {tuple(value.shape)} and context of shape "
                    f"{tuple(context.shape)} have batch shapes that do not broadcast"
                ) from None
        with nested():
            return method(self, value, context)

    wrapper._pf_checked = True  # type: ignore[attr-defined]
    return wrapper


class Bijection(eqx.Module):
    """Abstract base of every pyroflows bijection (JAX backend).

    Subclasses implement `forward_and_log_det` and `inverse_and_log_det`. Events are
    vectors of size ``features`` (event_dim 1) with any leading batch shape; ``log_det``
    has the batch shape. A conditional bijection (``context_features > 0``) takes a
    context vector whose batch dims broadcast against the input's.

    Attributes:
        features: Event size.
        context_features: Size of the context vector (0 for an unconditional bijection).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import numpyro.distributions as dist
        >>> import pyroflows.numpyro as pfj
        >>> maf = pfj.MaskedAutoregressive(3, invert=True, key=jax.random.key(0))
        >>> base = dist.Normal(jnp.zeros(3), 1.0).to_event(1)
        >>> d = dist.TransformedDistribution(base, maf.transform())
        >>> d.log_prob(jnp.ones((10, 3))).shape
        (10,)
    """

    features: int = eqx.field(static=True)
    context_features: int = eqx.field(static=True)

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Event shape of the data side (the output of ``forward_and_log_det``):
        ``(features,)`` for vectors, ``(C, H, W)`` for images."""
        return (self.features,)

    @property
    def base_shape(self) -> tuple[int, ...]:
        """Event shape of the base side; differs from `event_shape` only for bijections that
        reshape, such as `pyroflows.numpyro.Squeeze`."""
        return self.event_shape

    #: The sets the forward map goes from and to (NumPyro constraints): the real events,
    #: unless a subclass says otherwise (`pyroflows.numpyro.Logit` maps onto an interval).
    @property
    def domain(self) -> constraints.Constraint:
        return real_events(len(self.base_shape))

    @property
    def codomain(self) -> constraints.Constraint:
        return real_events(len(self.event_shape))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, direction in (("forward_and_log_det", "x"), ("inverse_and_log_det", "y")):
            method = cls.__dict__.get(name)
            if method is not None and not getattr(method, "_pf_checked", False):
                setattr(cls, name, _checked(method, direction))

    def check_input(self, name: str, value: Any) -> Array:
        """``value`` as an array; raise a ``ValueError`` naming ``name`` unless it has shape
        ``(..., features)`` and a floating dtype. A dtype other than the parameters' is
        promoted with them, as JAX promotes (float32 data into a float64 flow gives float64)."""
        value = check_event_shape(name, value, self.base_shape if name == "x" else self.event_shape)
        dtype = _float_dtype_of(self)
        if dtype is not None and value.dtype != dtype:
            value = value.astype(jnp.promote_types(value.dtype, dtype))
        return value

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        """Map base -> data; return ``(y, log|det dy/dx|)``."""
        raise NotImplementedError

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        """Map data -> base; return ``(x, log|det dx/dy|)``."""
        raise NotImplementedError

    def forward_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of ``forward(x)`` for ``x`` of shape ``shape``."""
        return tuple(shape)[: len(shape) - len(self.base_shape)] + self.event_shape

    def inverse_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of ``inverse(y)`` for ``y`` of shape ``shape``."""
        return tuple(shape)[: len(shape) - len(self.event_shape)] + self.base_shape

    def transform(self, context: Array | None = None) -> BijectionTransform:
        """This bijection, with ``context`` fixed, as a NumPyro ``Transform``."""
        return BijectionTransform(self, check_context(context, self.context_features))


class BijectionTransform(Transform):
    """A bijection (with its context fixed) as a NumPyro ``Transform``.

    ``call_with_intermediates`` returns the log-det as the intermediate, which
    ``log_abs_det_jacobian`` then reuses: one forward pass scores a sample.

    Args:
        bijection: The bijection.
        context: Its context (``None`` for an unconditional bijection).
    """

    def __init__(self, bijection: Bijection, context: Array | None = None) -> None:
        self.bijection = bijection
        self.context = context

    @property
    def domain(self) -> constraints.Constraint:
        return self.bijection.domain

    @property
    def codomain(self) -> constraints.Constraint:
        return self.bijection.codomain

    def forward_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.bijection.forward_shape(shape)

    def inverse_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.bijection.inverse_shape(shape)

    def __call__(self, x: Array) -> Array:
        return self.bijection.forward_and_log_det(x, self.context)[0]

    def call_with_intermediates(self, x: Array) -> tuple[Array, Array]:
        return self.bijection.forward_and_log_det(x, self.context)

    def _inverse(self, y: Array) -> Array:
        return self.bijection.inverse_and_log_det(y, self.context)[0]

    def log_abs_det_jacobian(self, x: Array, y: Array, intermediates: Any = None) -> Array:
        if intermediates is not None:
            return intermediates
        return self.bijection.forward_and_log_det(x, self.context)[1]

    def tree_flatten(self):
        return (self.bijection, self.context), ()

    @classmethod
    def tree_unflatten(cls, aux_data, params):
        return cls(*params)

    def eq(self, other: object, static: bool = False) -> Any:
        """Equal when the bijections have the same structure and equal arrays and the
        contexts are equal (NumPyro's rule: a Python bool with ``static``, else possibly a
        traced array). Arrays are compared by value when they are concrete, so two
        ``.transform()``s of one bijection are equal, also after ``jit`` or ``vmap``."""
        if self is other:
            return True
        if not isinstance(other, BijectionTransform):
            return False
        mine, treedef = jax.tree_util.tree_flatten((self.bijection, self.context))
        theirs, other_treedef = jax.tree_util.tree_flatten((other.bijection, other.context))
        if treedef != other_treedef:
            return False
        result: Any = True
        for a, b in zip(mine, theirs, strict=True):
            if a is b:
                continue
            if jnp.shape(a) != jnp.shape(b):
                return False
            if is_concrete(a) and is_concrete(b):
                if not np.array_equal(np.asarray(a), np.asarray(b)):
                    return False
            elif static:
                return False
            else:
                result = result & jnp.array_equal(a, b)
        return result

    def __eq__(self, other: object) -> bool:
        return bool(self.eq(other, static=True))

    def __hash__(self) -> int:
        return hash((type(self.bijection), self.bijection.features))


def chain_sizes(transforms: Sequence[Any], name: str) -> tuple[int, int]:
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


# ------------------------------------------------------------------ stacking and scanning


def _signature(bijection: Bijection) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(bijection)
    return treedef, tuple((jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves)


def _blocks(transforms: Sequence[Bijection]) -> list[tuple[int, list[Bijection]]]:
    """Split a chain into blocks ``(period, layers)``.

    A block of period ``p`` holds ``k * p`` layers (``k >= 2``) in which layer ``i`` has the
    structure of layer ``i + p``; period 2 covers alternating structures (coupling masks of
    an odd number of features). Period 0 marks a single layer that is not stacked. `Stack`
    blocks are never stacked again.
    """
    sigs = [None if isinstance(t, Stack) else _signature(t) for t in transforms]
    n, i, blocks = len(transforms), 0, []
    while i < n:
        best_period, best_steps = 1, 1
        for period in (1, 2):
            steps = 1
            while (
                i + (steps + 1) * period <= n
                and all(sigs[i + j] is not None for j in range(period))
                and all(sigs[i + steps * period + j] == sigs[i + j] for j in range(period))
            ):
                steps += 1
            if steps >= 2 and steps * period > best_steps * best_period:
                best_period, best_steps = period, steps
        size = best_period * best_steps
        blocks.append((best_period if best_steps >= 2 else 0, list(transforms[i : i + size])))
        i += size
    return blocks


def _member_context(t: Bijection, context: Array | None) -> Array | None:
    return context if t.context_features else None


class Stack(Bijection):
    """``steps`` repetitions of a group of ``period`` bijections, held stacked and run by scan.

    Every array of ``layers[j]`` has a leading axis of size ``steps``: entry ``s`` belongs to
    layer ``s * period + j`` of the chain. `Chain` and `pyroflows.numpyro.Flow` build
    stacks from runs of structurally identical layers (``scan=True``), so the arrays are
    stacked once, when the flow is built, and a training step neither re-stacks them nor
    traces more than one group of layers. `layers_list` gives the layers back one by one;
    `pyroflows.numpyro.get_params` names the parameters per layer, as the torch backend does.

    Args:
        layers: The bijections, in chain order; their number must be a multiple of
            ``period`` and layer ``i`` must have the structure of layer ``i + period``.
        period: Size of the repeated group.
    """

    layers: tuple[Bijection, ...]
    steps: int = eqx.field(static=True)
    period: int = eqx.field(static=True)

    def __init__(self, layers: Sequence[Bijection], period: int = 1) -> None:
        layers = list(layers)
        if period < 1 or len(layers) < period or len(layers) % period:
            raise ValueError(
                f"Stack needs a positive multiple of period={period} layers, got {len(layers)}"
            )
        self.features, self.context_features = chain_sizes(layers, "layers")
        for i in range(period, len(layers)):
            if _signature(layers[i]) != _signature(layers[i - period]):
                raise ValueError(
                    f"layers[{i}] and layers[{i - period}] differ in structure and cannot be "
                    "stacked"
                )
        self.steps = len(layers) // period
        self.period = period
        self.layers = tuple(
            jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *layers[j::period])
            for j in range(period)
        )

    @property
    def domain(self) -> constraints.Constraint:
        return self.layers[0].domain

    @property
    def codomain(self) -> constraints.Constraint:
        return self.layers[-1].codomain

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.layers[-1].event_shape

    @property
    def base_shape(self) -> tuple[int, ...]:
        return self.layers[0].base_shape

    def layers_list(self) -> list[Bijection]:
        """The stacked layers one by one, in chain order."""
        return [
            jax.tree_util.tree_map(lambda leaf, s=s: leaf[s], self.layers[j])
            for s in range(self.steps)
            for j in range(self.period)
        ]

    def _scan(self, x: Array, context: Array | None, inverse: bool) -> tuple[Array, Array]:
        def body(carry, members):
            y, acc = carry
            for t in reversed(members) if inverse else members:
                step = t.inverse_and_log_det if inverse else t.forward_and_log_det
                y, log_det = step(y, _member_context(t, context))
                acc = acc + log_det
            return (y, acc), None

        # The carry must have its final shape from the first step on (context broadcasting,
        # by whichever member of the group is conditional): the shapes of one whole group.
        group = tuple(jax.tree_util.tree_map(lambda leaf: leaf[0], t) for t in self.layers)
        zero = jnp.zeros((), jnp.result_type(x))
        (shape_x, shape_ld), _ = jax.eval_shape(body, (x, zero), group)
        x = jnp.broadcast_to(x, shape_x.shape)
        acc = jnp.zeros(shape_ld.shape, jnp.result_type(x))
        (x, acc), _ = jax.lax.scan(body, (x, acc), self.layers, reverse=inverse)
        return x, acc

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._scan(x, context, inverse=False)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._scan(y, context, inverse=True)


def stack_runs(transforms: Sequence[Bijection]) -> tuple[Bijection, ...]:
    """Replace every run of structurally identical layers by a `Stack` (built once)."""
    out: list[Bijection] = []
    for period, layers in _blocks(transforms):
        if period:
            out.append(Stack(layers, period))
        else:
            out.extend(layers)
    return tuple(out)


def unstack(transforms: Sequence[Bijection]) -> tuple[Bijection, ...]:
    """The layers of a chain one by one, with every `Stack` expanded."""
    out: list[Bijection] = []
    for t in transforms:
        out.extend(t.layers_list() if isinstance(t, Stack) else [t])
    return tuple(out)


def chain_forward(
    transforms: Sequence[Bijection], x: Array, context: Array | None
) -> tuple[Array, Array]:
    """Run ``transforms`` forward in order, summing their log-dets (arguments unchecked)."""
    total = jnp.zeros(())
    with nested():
        for t in transforms:
            x, log_det = t.forward_and_log_det(x, _member_context(t, context))
            total = total + log_det
    return x, total


def chain_inverse(
    transforms: Sequence[Bijection], y: Array, context: Array | None
) -> tuple[Array, Array]:
    """Run ``transforms`` inverse in reverse order, summing their log-dets (unchecked)."""
    total = jnp.zeros(())
    with nested():
        for t in reversed(transforms):
            y, log_det = t.inverse_and_log_det(y, _member_context(t, context))
            total = total + log_det
    return y, total


class Chain(Bijection):
    """Compose bijections: forward applies them in order, inverse in reverse order.

    With ``scan=True`` (default) runs of structurally identical layers are stored as one
    `Stack` each (``chain.transforms`` then holds the stacks) and run with
    ``jax.lax.scan``, so tracing and compile time do not grow with depth; ``chain.layers``
    gives the layers one by one either way.

    Args:
        transforms: The bijections, in the forward (base -> data) order. They must share
            ``features``; the chain's context size is the largest of theirs, and each
            conditional member receives the same context.
        scan: Stack runs of identical layers and scan over them.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> chain = pfj.Chain([pfj.ActNorm(2), pfj.Reverse(2)])
    """

    transforms: tuple[Bijection, ...]

    def __init__(self, transforms: Iterable[Bijection], *, scan: bool = True) -> None:
        transforms = tuple(transforms)
        self.features, self.context_features = chain_sizes(transforms, "transforms")
        self.transforms = stack_runs(transforms) if scan else transforms

    @property
    def layers(self) -> tuple[Bijection, ...]:
        """The layers one by one (stacks expanded)."""
        return unstack(self.transforms)

    @property
    def domain(self) -> constraints.Constraint:
        return self.transforms[0].domain

    @property
    def codomain(self) -> constraints.Constraint:
        return self.transforms[-1].codomain

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.transforms[-1].event_shape

    @property
    def base_shape(self) -> tuple[int, ...]:
        return self.transforms[0].base_shape

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return chain_forward(self.transforms, x, context)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return chain_inverse(self.transforms, y, context)


class Invert(Bijection):
    """Swap the two directions of a bijection.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> iaf = pfj.MaskedAutoregressive(3, key=jax.random.key(0))
        >>> maf_like = pfj.Invert(iaf)
    """

    bijection: Bijection

    def __init__(self, bijection: Bijection) -> None:
        if not isinstance(bijection, Bijection):
            raise TypeError(
                f"bijection must be a pyroflows Bijection, got {type(bijection).__name__}"
            )
        self.features = bijection.features
        self.context_features = bijection.context_features
        self.bijection = bijection

    @property
    def domain(self) -> constraints.Constraint:
        return self.bijection.codomain

    @property
    def codomain(self) -> constraints.Constraint:
        return self.bijection.domain

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.bijection.base_shape

    @property
    def base_shape(self) -> tuple[int, ...]:
        return self.bijection.event_shape

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self.bijection.inverse_and_log_det(x, context)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self.bijection.forward_and_log_det(y, context)
