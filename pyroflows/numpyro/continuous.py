"""The continuous family, JAX backend: FFJORD-style continuous normalizing flows (Chen et al.,
2018; Grathwohl et al., 2019), solved with diffrax.

The JAX twin of `pyroflows.pyro.continuous`: the same ODE ``dz/dt = f(z, t[, context])``
from ``t = 0`` (base side) to ``t1`` (data side) with ``d log|det| / dt = tr(df/dz)``
alongside, the same options (``trace``, ``probe``, ``solver``, ``steps``, ``atol``,
``rtol``, ``adjoint``, ``t1``) and parameter names (``field.layers.0.weight``, ...).

* Solvers: diffrax's ``Dopri5`` and ``Tsit5`` (adaptive, PID step-size control), ``Euler``,
  and ``"rk4"`` as the 3/8 rule (torchdiffeq's ``"rk4"``) written as a diffrax Runge-Kutta
  tableau, so that the fixed-step maps agree with torch's to rounding.
* Gradients: reverse mode through the solver's steps (discretise, then differentiate), by
  diffrax's ``RecursiveCheckpointAdjoint``: fixed-step solvers with ``adjoint=False`` keep
  every step, ``adjoint=True`` keeps checkpoints and recomputes between them (less memory);
  adaptive solvers always use diffrax's checkpointing (``adjoint`` changes nothing there).
  Every mode gives the same gradients to rounding. Forward mode (``jax.jvp``,
  ``jax.jacfwd``) is not supported: use ``jax.jacrev``. (``DirectAdjoint``, which has forward
  mode, costs three to seven times as much per training step; diffrax's continuous
  ``BacksolveAdjoint`` is not used: its documentation calls it unreliable.)
* Hutchinson probes come from the bijection's ``key``: calls with the same key draw the same
  probes; `pyroflows.numpyro.with_key` gives a flow fresh keys and `pyroflows.numpyro.fit`
  does that every step.

`Continuous.solve` returns the number of evaluations of the vector field (from the solver's
step counts) and, with ``regularize=True``, the RNODE integrals. A failed solve (more than
``max_steps`` steps, a non-finite state) raises `ODESolveError` when called outside ``jit``
and equinox's runtime error with the same sentence under ``jit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from pyroflows import _checks
from pyroflows._continuous import (
    MAX_STEPS,
    ContinuousOptions,
    ODESolveError,
    check_continuous_options,
    evaluations,
    flow_matching_layer_error,
    ot_pairing,
    solve_failed_message,
)
from pyroflows._train import COUPLINGS
from pyroflows.numpyro.core import Bijection, Chain, Invert, broadcast_context, is_concrete
from pyroflows.numpyro.nn import MLP, _check_key

if TYPE_CHECKING:
    from pyroflows.numpyro.distributions import Flow

__all__ = ["Continuous", "ContinuousSolve", "ODESolveError", "flow_matching_loss"]


class _RK38(diffrax.AbstractERK):
    """The classical fourth-order 3/8 rule (torchdiffeq's ``"rk4"``), fixed steps only."""

    tableau: ClassVar[diffrax.ButcherTableau] = diffrax.ButcherTableau(
        a_lower=(np.array([1 / 3]), np.array([-1 / 3, 1.0]), np.array([1.0, -1.0, 1.0])),
        b_sol=np.array([1 / 8, 3 / 8, 3 / 8, 1 / 8]),
        b_error=np.zeros(4),
        c=np.array([1 / 3, 2 / 3, 1.0]),
    )
    interpolation_cls: ClassVar = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms) -> int:
        del terms
        return 4


_SOLVERS = {"dopri5": diffrax.Dopri5, "tsit5": diffrax.Tsit5, "rk4": _RK38, "euler": diffrax.Euler}


def _vector_field(t, state, args):
    module, c, probe, regularize = args
    return module.derivative(t, state, c, probe, regularize)


# One term for every solve: the bijection travels in ``args``, so diffrax's compiled solve
# is reused by later calls of the same structure (a closure per call would recompile).
_TERM = diffrax.ODETerm(_vector_field)


class ContinuousSolve(NamedTuple):
    """What `Continuous.solve` returns: the end state, the log-det of the map, the number
    of evaluations of the vector field, and the RNODE integrals per row (zeros unless
    ``regularize=True``)."""

    value: Array
    log_det: Array
    nfe: Array
    kinetic: Array
    jacobian: Array


class Continuous(Bijection):
    """Continuous normalizing flow: the flow of the ODE ``dz/dt = f(z, t[, context])``.

    Arguments as in `pyroflows.pyro.Continuous` (``"tsit5"`` also with ``adjoint=True``
    here), plus ``key`` (keyword only; it initialises the vector field and seeds the Hutchinson
    probes, see `pyroflows.numpyro.with_key`).

    Examples:
        >>> import jax
        >>> from pyroflows.numpyro.continuous import Continuous
        >>> cnf = Continuous(2, hidden=(16,), solver="rk4", steps=10, key=jax.random.key(0))
        >>> solution = cnf.solve(jax.numpy.ones((5, 2)))
        >>> solution.log_det.shape, int(solution.nfe)
        ((5,), 40)
    """

    field: MLP
    key: Array  # raw key data (``jax.random.key_data``) of the probes' key
    options: ContinuousOptions = eqx.field(static=True)

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        *,
        trace: str = "exact",
        probe: str = "gaussian",
        solver: str = "dopri5",
        steps: int | None = None,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        adjoint: bool = False,
        t1: float = 1.0,
        activation: str = "tanh",
        max_steps: int = MAX_STEPS,
        key: Array | None = None,
    ) -> None:
        key = _check_key(key, "Continuous")
        self.features = _checks.check_int("features", features, 1)
        self.context_features = _checks.check_int("context", context, 0)
        self.options = check_continuous_options(
            trace, probe, solver, steps, atol, rtol, t1, adjoint, max_steps
        )
        field_key, own = jax.random.split(key)
        self.key = jax.random.key_data(own)
        self.field = MLP(self.features + 1 + self.context_features, self.features, hidden,
                         activation, key=field_key)  # fmt: skip

    def velocity(self, z: Array, t, context: Array | None = None) -> Array:
        """The vector field ``f(z, t[, context])``, shape of ``z`` (``t`` a number or an
        array of ``z``'s batch shape)."""
        t = jnp.broadcast_to(jnp.asarray(t, z.dtype), z.shape[:-1])[..., None]
        parts = [z, t]
        if context is not None:
            parts.append(jnp.broadcast_to(context, (*z.shape[:-1], context.shape[-1])))
        return self.field(jnp.concatenate(parts, axis=-1))

    def derivative(self, t, state: Array, c: Array | None, probe: Array | None,
                   regularize: bool) -> Array:  # fmt: skip
        """The time derivative of the solve's state ``[z, log_det(, kinetic, jacobian)]``
        (rows ``(n, ...)``)."""
        d = self.features
        z = state[:, :d]
        if self.options.trace == "exact":

            def row(zi, ci):
                return self.velocity(zi, t, ci)

            dz = self.velocity(z, t, c)
            jac = (
                jax.vmap(jax.jacfwd(row))(z, c)
                if c is not None
                else jax.vmap(jax.jacfwd(lambda zi: row(zi, None)))(z)
            )
            trace = jnp.trace(jac, axis1=-2, axis2=-1)
            frobenius = jnp.sum(jac * jac, axis=(-2, -1)) if regularize else None
        else:
            dz, vjp = jax.vjp(lambda v: self.velocity(v, t, c), z)
            (back,) = vjp(probe)
            trace = jnp.sum(back * probe, axis=-1)
            frobenius = jnp.sum(back * back, axis=-1) if regularize else None
        parts = [dz, trace[:, None]]
        if regularize:
            parts += [jnp.sum(dz * dz, axis=-1, keepdims=True), frobenius[:, None]]
        return jnp.concatenate(parts, axis=-1)

    def _probe(self, like: Array) -> Array:
        key = jax.random.wrap_key_data(self.key)
        if self.options.probe == "rademacher":
            return jax.random.rademacher(key, like.shape, like.dtype)
        return jax.random.normal(key, like.shape, like.dtype)

    def solve(
        self,
        value: Array,
        context: Array | None = None,
        *,
        reverse: bool = False,
        regularize: bool = False,
    ) -> ContinuousSolve:
        """Integrate ``value`` from ``t = 0`` to ``t1`` (``reverse=True``: from ``t1`` to 0).

        Args:
            value: Points ``(..., features)``.
            context: Context ``(..., context)`` of a conditional bijection.
            reverse: Integrate backwards in time (the data -> base direction).
            regularize: Also integrate the RNODE kinetic and Jacobian terms.

        Returns:
            A `ContinuousSolve` (end state, log-det, NFE, kinetic and Jacobian integrals).
        """
        value, context = broadcast_context(value, context)
        batch, d, o = value.shape[:-1], self.features, self.options
        z = value.reshape(-1, d)
        c = None if context is None else context.reshape(-1, context.shape[-1])
        n = z.shape[0]
        extra = 3 if regularize else 1
        zeros = jnp.zeros(batch, value.dtype)
        if n == 0:
            return ContinuousSolve(value, zeros, jnp.asarray(0), zeros, zeros)
        probe = self._probe(z) if (o.trace == "hutchinson" or regularize) else None
        state = jnp.concatenate([z, jnp.zeros((n, extra), z.dtype)], axis=-1)
        t0, t1 = (o.t1, 0.0) if reverse else (0.0, o.t1)
        if o.fixed:
            controller = diffrax.StepTo(ts=jnp.linspace(t0, t1, o.steps + 1, dtype=z.dtype))
            max_steps = o.steps
        else:
            controller = diffrax.PIDController(rtol=o.rtol, atol=o.atol)
            max_steps = o.max_steps
        # reverse mode through the solver's steps: every step kept (fixed steps, no adjoint),
        # else diffrax's checkpoints
        keep_all = o.fixed and not o.adjoint
        adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=o.steps if keep_all else None)
        solution = diffrax.diffeqsolve(
            _TERM,
            _SOLVERS[o.solver](),
            t0=jnp.asarray(t0, z.dtype),
            t1=jnp.asarray(t1, z.dtype),
            dt0=None,
            y0=state,
            stepsize_controller=controller,
            adjoint=adjoint,
            max_steps=max_steps,
            args=(self, c, probe, regularize),
            throw=False,
        )
        end = self._check(solution, solution.ys[-1])
        nfe = evaluations(o, solution.stats["num_steps"])
        sign = -1.0 if reverse else 1.0  # the integrals of |f|^2, |J|^2 over time, positive
        out = end[:, :d].reshape(value.shape)
        log_det = end[:, d].reshape(batch)
        if not regularize:
            return ContinuousSolve(out, log_det, nfe, zeros, zeros)
        kinetic = sign * end[:, d + 1].reshape(batch)
        return ContinuousSolve(out, log_det, nfe, kinetic, sign * end[:, d + 2].reshape(batch))

    def _check(self, solution, end: Array) -> Array:
        """``end``, after raising (eagerly) or planting equinox's runtime error (under
        ``jit``) unless the solve succeeded with a finite state."""
        failed = solution.result != diffrax.RESULTS.successful
        finite = jnp.all(jnp.isfinite(end))
        owner = type(self).__name__
        if is_concrete(end) and is_concrete(failed):
            if bool(failed):
                reason = diffrax.RESULTS[solution.result]
                raise ODESolveError(solve_failed_message(owner, self.options, reason))
            if not bool(finite):
                raise ODESolveError(
                    solve_failed_message(owner, self.options, "the state became non-finite")
                )
            return end
        reason = "it took too many steps or the state became non-finite"
        return eqx.error_if(
            end, failed | ~finite, solve_failed_message(owner, self.options, reason)
        )

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        solution = self.solve(x, context)
        return solution.value, solution.log_det

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        solution = self.solve(y, context, reverse=True)
        return solution.value, solution.log_det


# --- training: flow matching, and likelihood with the solves' statistics ---------------------


def _layers(bijections, flipped: bool = False):
    """``(layer, flipped)`` of every bijection in forward order, chains and inverses opened
    (stacks given one layer at a time)."""
    for b in bijections:
        if isinstance(b, Chain):
            yield from (_layers(reversed(b.layers), True) if flipped
                        else _layers(b.layers, False))  # fmt: skip
        elif isinstance(b, Invert):
            yield from _layers([b.bijection], not flipped)
        else:
            yield b, flipped


def has_continuous(flow: Flow) -> bool:
    """Whether ``flow`` holds a `Continuous` bijection."""
    leaves = jax.tree_util.tree_leaves(flow, is_leaf=lambda x: isinstance(x, Continuous))
    return any(isinstance(leaf, Continuous) for leaf in leaves)


def log_prob_and_stats(
    flow: Flow, value: Array, context: Array | None = None, *, regularize: bool = False
) -> tuple[Array, Array, Array, Array]:
    """``flow(context).log_prob(value)`` in one data -> base pass, with the number of
    vector-field evaluations of its continuous layers and (``regularize=True``) the sums of
    their RNODE kinetic and Jacobian integrals per row. Used by `pyroflows.numpyro.fit`."""
    z, total = value, jnp.zeros(value.shape[:-1], value.dtype)
    nfe, kinetic, jacobian = jnp.asarray(0), jnp.zeros((), value.dtype), jnp.zeros((), value.dtype)
    for layer, flipped in reversed(list(_layers(flow.layers))):
        c = context if layer.context_features else None
        if isinstance(layer, Continuous):
            solution = layer.solve(z, c, reverse=not flipped, regularize=regularize)
            z, log_det = solution.value, solution.log_det
            nfe = nfe + solution.nfe
            kinetic, jacobian = kinetic + solution.kinetic, jacobian + solution.jacobian
        elif flipped:
            z, log_det = layer.forward_and_log_det(z, c)
        else:
            z, log_det = layer.inverse_and_log_det(z, c)
        total = total + log_det
    return flow.base_distribution().log_prob(z) + total, nfe, kinetic, jacobian


def flow_matching_loss(
    flow: Flow,
    data: Array,
    context: Array | None = None,
    *,
    key: Array,
    coupling: str = "independent",
) -> Array:
    """Conditional flow-matching loss of a flow made of one `Continuous` bijection (as
    `pyroflows.pyro.flow_matching_loss`); the base draws and times come from ``key``. With
    ``coupling="ot"`` the assignment runs on the host (``jax.pure_callback`` to scipy), so
    the loss can be jitted.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.FFJORD(2, hidden=(16,), key=jax.random.key(0))
        >>> data = jax.random.normal(jax.random.key(1), (64, 2))
        >>> loss = pfj.flow_matching_loss(flow, data, key=jax.random.key(2), coupling="ot")
        >>> loss.shape
        ()
    """
    layers = [layer for layer, _ in _layers(flow.layers)]
    problem = flow_matching_layer_error(layers, Continuous)
    if problem is not None:
        raise ValueError(problem)
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {list(COUPLINGS)}, got {coupling!r}")
    (cnf,) = layers
    if coupling == "ot" and cnf.context_features:
        raise ValueError(
            "coupling='ot' pairs draws with rows regardless of their context, which would bias "
            "a conditional flow; use coupling='independent' for flows with context"
        )
    data = cnf.check_input("data", data)
    if data.ndim != 2:
        raise ValueError(f"data must have shape (n, {cnf.features}), got {tuple(data.shape)}")
    if cnf.context_features:
        if context is None or tuple(jnp.shape(context)) != (data.shape[0], cnf.context_features):
            got = None if context is None else tuple(jnp.shape(context))
            raise ValueError(
                f"context must have shape ({data.shape[0]}, {cnf.context_features}) (one row "
                f"per data row), got {got}"
            )
    elif context is not None:
        raise ValueError("context was given, but the flow was built without context")
    n, t1 = data.shape[0], cnf.options.t1
    noise_key, time_key = jax.random.split(key)
    noise = flow.base_distribution().sample(noise_key, (n,)).astype(data.dtype)
    if coupling == "ot":
        shape = jax.ShapeDtypeStruct((n,), jnp.int32)
        order = jax.pure_callback(ot_pairing, shape, jax.lax.stop_gradient(noise),
                                  jax.lax.stop_gradient(data))  # fmt: skip
        noise = noise[order]
    fraction = jax.random.uniform(time_key, (n, 1), data.dtype)
    point = noise + fraction * (data - noise)
    target = (data - noise) / t1
    velocity = cnf.velocity(point, t1 * fraction[:, 0], context)
    return jnp.mean(jnp.sum((velocity - target) ** 2, axis=-1))
