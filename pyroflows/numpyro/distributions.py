"""``Flow`` (the module users hold) and ``FlowDistribution`` (what calling it gives).

The JAX twin of `pyroflows.pyro.distributions`. ``Flow`` is an equinox module holding the
bijections (``flow.transforms``, tree paths ``transforms.3.conditioner.layers.0.weight``)
and an optional base distribution. ``flow()`` / ``flow(context)`` returns a
`FlowDistribution`, a subclass of NumPyro's ``TransformedDistribution`` whose
``log_prob`` is one pass through the chain and whose ``sample_with_intermediates`` carries
the log-det, so NumPyro's ELBO scores a guide's own samples without the inverse.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax import Array
from numpyro.distributions import Distribution, TransformedDistribution, constraints
from numpyro.distributions.batch_util import promote_batch_shape
from numpyro.distributions.transforms import biject_to

from pyroflows import _checks
from pyroflows._sampling import chunk_rows
from pyroflows.numpyro.core import (
    Bijection,
    Chain,
    batch_shape_of,
    chain_sizes,
    check_context,
    check_event_shape,
    is_concrete,
    real_events,
    stack_runs,
    unstack,
)

__all__ = ["Flow", "FlowDistribution", "ScannedFlowDistribution", "check_key"]


def check_key(key: Any, method: str) -> Array:
    """Raise a ``TypeError`` unless ``key`` is a JAX random key (new or legacy style)."""
    ok = isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.dtype == jnp.uint32 and key.shape[-1:] == (2,))
    )
    if not ok:
        raise TypeError(
            f"{method} needs a JAX random key as its first argument, as NumPyro's "
            f"distributions do: d.{method}(jax.random.key(0), sample_shape); got "
            f"{type(key).__name__} {key!r}"
        )
    return key


def _float_dtype(tree: Any):
    for leaf in jax.tree_util.tree_leaves(tree):
        if eqx.is_inexact_array(leaf):
            return leaf.dtype
    return jnp.result_type(float)


class Flow(eqx.Module):
    """A normalizing flow: a base distribution pushed through a chain of bijections.

    Runs of structurally identical layers (as the recipes build) are stored stacked in
    `pyroflows.numpyro.core.Stack` blocks and run with ``jax.lax.scan``: ``flow.transforms``
    holds these blocks, ``flow.layers`` the layers one by one.

    Args:
        transforms: Bijections in the forward (base -> data) order.
        base: NumPyro distribution with event shape ``(features,)``; default a standard
            normal in the dtype of the flow's parameters. The base is held fixed: its
            arrays pass through ``jax.lax.stop_gradient`` and `pyroflows.numpyro.get_params`
            leaves them out.
        scan: Stack runs of identical layers and scan over them (default ``True``).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> key = jax.random.key(0)
        >>> flow = pfj.Flow([pfj.MaskedAutoregressive(2, invert=True, key=key), pfj.Reverse(2)])
        >>> flow().log_prob(jnp.ones((4, 2))).shape
        (4,)
    """

    transforms: tuple[Bijection, ...]
    base: Distribution | None
    features: int = eqx.field(static=True)
    context_features: int = eqx.field(static=True)

    def __init__(
        self,
        transforms: Iterable[Bijection],
        base: Distribution | None = None,
        *,
        scan: bool = True,
    ) -> None:
        transforms = tuple(transforms)
        self.features, self.context_features = chain_sizes(transforms, "transforms")
        self.transforms = stack_runs(transforms) if scan else transforms
        if base is not None:
            if not isinstance(base, Distribution):
                raise TypeError(f"base must be a NumPyro Distribution, got {type(base).__name__}")
            want = transforms[0].base_shape
            if tuple(base.event_shape) != want:
                what = "features" if len(want) == 1 else "event shape"
                raise ValueError(
                    f"base must have event_shape {want} to match the transforms' "
                    f"{what}, got event_shape {tuple(base.event_shape)}"
                )
        self.base = base

    @property
    def layers(self) -> tuple[Bijection, ...]:
        """The bijections one by one (`pyroflows.numpyro.core.Stack` blocks expanded)."""
        return unstack(self.transforms)

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Event shape of the data: ``(features,)``, or ``(C, H, W)`` for an image flow."""
        return self.transforms[-1].event_shape

    def base_distribution(self) -> Distribution:
        """The base distribution (held fixed: gradients do not flow into it)."""
        if self.base is None:
            shape = self.transforms[0].base_shape
            zeros = jnp.zeros(shape, _float_dtype(self.transforms))
            return dist.Normal(zeros, 1.0).to_event(len(shape))
        return jax.tree_util.tree_map(jax.lax.stop_gradient, self.base)

    def __call__(self, context: Array | None = None) -> FlowDistribution:
        """The flow's distribution, conditioned on ``context`` if the flow has one."""
        context = check_context(context, self.context_features)
        return FlowDistribution(self.base_distribution(), Chain(self.transforms), context)

    def encode(self, x: Array, context: Array | None = None) -> Array:
        """The base point (latent) of data ``x``: the chain's inverse (data -> base).

        Examples:
            >>> import jax, jax.numpy as jnp
            >>> import pyroflows.numpyro as pfj
            >>> flow = pfj.Glow((1, 4, 4), levels=1, steps=1, hidden=8, key=jax.random.key(0))
            >>> x = jnp.full((2, 1, 4, 4), 0.5)
            >>> bool(jnp.allclose(flow.decode(flow.encode(x)), x, atol=1e-5))
            True
        """
        return Chain(self.transforms).inverse_and_log_det(
            x, check_context(context, self.context_features)
        )[0]

    def decode(self, z: Array, context: Array | None = None) -> Array:
        """The data point of a base point ``z``: the chain's forward map (base -> data)."""
        return Chain(self.transforms).forward_and_log_det(
            z, check_context(context, self.context_features)
        )[0]

    def sample_at_temperature(
        self,
        key: Array,
        sample_shape: tuple[int, ...] = (),
        temperature: float = 1.0,
        context: Array | None = None,
    ) -> Array:
        """Draws with the base noise scaled by ``temperature`` (``z ~ N(0, temperature^2)``,
        then `decode`), as in torch. Needs the default standard normal base.

        Examples:
            >>> import jax
            >>> import pyroflows.numpyro as pfj
            >>> flow = pfj.Glow((1, 4, 4), levels=1, steps=1, hidden=8, key=jax.random.key(0))
            >>> flow.sample_at_temperature(jax.random.key(1), (3,), temperature=0.7).shape
            (3, 1, 4, 4)
        """
        temperature = _checks.check_positive("temperature", temperature, allow_zero=True)
        if self.base is not None:
            raise ValueError(
                "sample_at_temperature scales a standard normal base; this flow has a custom "
                f"base ({type(self.base).__name__}): scale its draws yourself and call "
                "flow.decode"
            )
        d = self(context)
        z = d.base_dist.sample(check_key(key, "sample_at_temperature"), tuple(sample_shape))
        return d.chain.forward_and_log_det(z * temperature, d.context)[0]


#: Draws of more events than this go through the flow in chunks of about this many events
#: (along the first sample axis), as in the torch backend.
SAMPLE_CHUNK = 2**16


class FlowDistribution(TransformedDistribution):
    """The distribution of a flow, a NumPyro ``TransformedDistribution``.

    ``log_prob`` runs the chain's inverse once. ``sample_with_intermediates`` returns
    ``[[base sample, log_det]]`` as intermediates; ``log_prob(x, intermediates)`` then costs
    no pass at all. The batch shape is the base's broadcast with the context's batch shape.
    Draws of more than `SAMPLE_CHUNK` events go through the flow in chunks
    (``jax.lax.map``), so their peak memory is that of one chunk.

    Args:
        base: Base distribution (event shape ``(features,)``).
        transforms: The bijections, base -> data.
        context: Context array ``(..., context)`` or ``None``.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> d = pfj.MAF(features=2, transforms=2, hidden=(8,), key=jax.random.key(0))()
        >>> x, intermediates = d.sample_with_intermediates(jax.random.key(1), (5,))
        >>> d.log_prob(x, intermediates).shape  # no pass through the flow
        (5,)
    """

    arg_constraints: dict = {}
    pytree_data_fields = ("chain", "context")
    pytree_aux_fields = ("features", "context_features", "_leaf_ndims")

    def __init__(
        self,
        base: Distribution,
        transforms: Iterable[Bijection],
        context: Array | None = None,
        *,
        validate_args: bool | None = None,
    ) -> None:
        self.chain = transforms if isinstance(transforms, Chain) else Chain(transforms)
        self.features, self.context_features = self.chain.features, self.chain.context_features
        self.context = check_context(context, self.context_features)
        if self.context is not None:
            try:
                batch = jnp.broadcast_shapes(base.batch_shape, self.context.shape[:-1])
            except ValueError:
                raise ValueError(
                    f"context of shape {tuple(self.context.shape)} has a batch shape that does "
                    f"not broadcast against the base's batch shape {tuple(base.batch_shape)}"
                ) from None
            if batch != tuple(base.batch_shape):
                base = base.expand(batch)
        super().__init__(base, self.chain.transform(self.context), validate_args=validate_args)
        # the ranks of the arrays, to see the axes that numpyro's scan stacks on in front
        self._leaf_ndims = tuple(jnp.ndim(leaf) for leaf in jax.tree_util.tree_leaves(self))

    @property
    def bijections(self) -> tuple[Bijection, ...]:
        """The bijections, base -> data, one by one."""
        return self.chain.layers

    def rsample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        return self.sample(key, sample_shape)

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        return self.sample_with_intermediates(key, sample_shape)[0]

    def sample_with_intermediates(
        self, key: Array, sample_shape: tuple[int, ...] = ()
    ) -> tuple[Array, list]:
        z = self.base_dist.sample(check_key(key, "sample"), sample_shape)
        rows = chunk_rows(z.shape, SAMPLE_CHUNK)
        if rows is None:
            x, log_det = self.chain.forward_and_log_det(z, self.context)
        else:  # big draws go through in chunks of the first axis (peak memory of one chunk)
            forward = lambda zi: self.chain.forward_and_log_det(zi, self.context)  # noqa: E731
            x, log_det = jax.lax.map(forward, z, batch_size=rows)
        return x, [[z, log_det]]

    def sample_and_log_prob(
        self, key: Array, sample_shape: tuple[int, ...] = ()
    ) -> tuple[Array, Array]:
        """Draw samples and their log-density in one forward pass."""
        x, intermediates = self.sample_with_intermediates(key, sample_shape)
        return x, self.log_prob(x, intermediates)

    def log_prob(self, value: Array, intermediates: list | None = None) -> Array:
        """Log-density of ``value`` (one pass through the chain's inverse), or of a sample
        from its ``intermediates``. Outside the support (the last bijection's codomain: all
        reals, or an interval after `pyroflows.numpyro.Logit`) it is ``-inf`` (and NumPyro
        warns when validation is on); an empty batch gives an empty result."""
        if intermediates is not None:
            z, log_det = intermediates[0]
            return self.base_dist.log_prob(z) - log_det
        shape, base_shape = self.chain.event_shape, self.chain.base_shape
        value = check_event_shape("value", value, shape)
        # inside jit even a constant value gives a traced check: only a concrete one can raise
        finite = jnp.isfinite(value).all()
        if is_concrete(finite) and not bool(finite):
            raise ValueError(
                f"value holds non-finite entries (NaN or inf); shape {tuple(value.shape)}"
            )
        if self.context is not None:
            try:
                jnp.broadcast_shapes(batch_shape_of(value, shape), self.context.shape[:-1])
            except ValueError:
                raise ValueError(
                    f"value of shape {tuple(value.shape)} and context of shape "
                    f"{tuple(self.context.shape)} have batch shapes that do not broadcast"
                ) from None
        try:
            batch = jnp.broadcast_shapes(batch_shape_of(value, shape), self.batch_shape)
        except ValueError:
            raise ValueError(
                f"value of shape {tuple(value.shape)} has a batch shape that does not broadcast "
                f"against the distribution's batch shape {tuple(self.batch_shape)}"
            ) from None
        if math.prod(batch) == 0:  # NumPyro's own distributions fail on empty batches
            return jnp.zeros(batch, jnp.result_type(value.dtype, _float_dtype(self.chain)))
        support, inside = self.support, None
        if support is not real_events(len(shape)):
            if self._validate_args:
                self._validate_sample(value)
            inside = support(value)
            # score a point of the support in their place, then give them -inf
            safe = biject_to(support)(jnp.zeros_like(value))
            value = jnp.where(inside.reshape(inside.shape + (1,) * len(shape)), value, safe)
        z, log_det = self.chain.inverse_and_log_det(value, self.context)
        log_p = self.base_dist.log_prob(z) + log_det
        if inside is not None:
            # the support's closed ends map to infinity in the base: density 0 there
            finite = jnp.isfinite(z).reshape(*z.shape[: z.ndim - len(base_shape)], -1).all(-1)
            log_p = jnp.where(inside & finite, log_p, -jnp.inf)
        return log_p


class ScannedFlowDistribution(Distribution):
    """A `FlowDistribution` whose arrays carry leading batch axes (those that
    ``numpyro.contrib.control_flow.scan`` stacks on each step's distribution): one flow per
    index of ``prefix``, scored and sampled by ``jax.vmap``. Its batch shape is
    ``prefix + flow.batch_shape``. NumPyro builds it through ``promote_batch_shape``; users do
    not need to.

    Args:
        flow: The stacked flow distribution (every array with ``prefix`` in front).
        prefix: The stacked axes.
    """

    arg_constraints: dict = {}
    pytree_data_fields = ("flow",)
    pytree_aux_fields = ("prefix",)

    def __init__(self, flow: FlowDistribution, prefix: tuple[int, ...]) -> None:
        self.flow = flow
        self.prefix = tuple(prefix)
        super().__init__(self.prefix + tuple(flow.batch_shape), flow.event_shape)

    @property
    def support(self) -> constraints.Constraint:
        return self.flow.support

    def _map(self, fn, axis: int):
        for _ in self.prefix:
            fn = jax.vmap(fn, in_axes=(0, axis), out_axes=axis)
        return fn

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        keys = jax.random.split(check_key(key, "sample"), math.prod(self.prefix))
        keys = keys.reshape(self.prefix + keys.shape[1:])
        fn = self._map(lambda d, k: d.sample(k, sample_shape), 0)
        return jnp.moveaxis(
            fn(self.flow, keys).reshape(self.prefix + tuple(sample_shape) + self._inner()),
            tuple(range(len(self.prefix))),
            tuple(range(len(sample_shape), len(sample_shape) + len(self.prefix))),
        )

    def _inner(self) -> tuple[int, ...]:
        return tuple(self.flow.batch_shape) + tuple(self.flow.event_shape)

    def log_prob(self, value: Array, intermediates: list | None = None) -> Array:
        inner = len(self.flow.batch_shape)
        batch = jnp.broadcast_shapes(jnp.shape(value)[:-1], self.batch_shape)
        value = jnp.broadcast_to(value, batch + tuple(self.event_shape))
        axis = len(batch) - len(self.prefix) - inner  # where the stacked axes sit in value
        if intermediates is not None and axis == 0:
            fn = lambda d, v, i: d.log_prob(v, i)  # noqa: E731
            for _ in self.prefix:
                fn = jax.vmap(fn)
            return fn(self.flow, value, intermediates)
        return self._map(lambda d, v: d.log_prob(v), axis)(self.flow, value)


@promote_batch_shape.register
def _promote_flow_batch_shape(d: FlowDistribution) -> Distribution:
    """The rule numpyro's ``scan`` needs: find the axes stacked in front of every array."""
    leaves = jax.tree_util.tree_leaves(d)
    extra = {jnp.ndim(leaf) - n for leaf, n in zip(leaves, d._leaf_ndims, strict=True)}
    if extra == {0}:
        return d
    if len(extra) != 1 or min(extra) < 0:
        raise ValueError(
            "a FlowDistribution's arrays were stacked unevenly (by numpyro's scan?): "
            f"extra leading axes {sorted(extra)}"
        )
    (k,) = extra
    prefix = tuple(np.shape(leaves[0])[:k])
    return ScannedFlowDistribution(d, prefix)
