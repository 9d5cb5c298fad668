"""The continuous family: FFJORD-style continuous normalizing flows (Chen et al., 2018;
Grathwohl et al., 2019), solved with torchdiffeq.

`Continuous` is one bijection around an ODE solve. Its state ``z`` follows
``dz/dt = f(z, t[, context])`` from ``t = 0`` (the base side) to ``t = t1`` (the data side),
and the log-determinant of the map follows the instantaneous change of variables,
``d log|det| / dt = tr(df/dz)``, integrated alongside. ``forward_and_log_det`` integrates
from 0 to ``t1``, ``inverse_and_log_det`` from ``t1`` back to 0; both cost one solve.

* ``trace="exact"``: ``tr(df/dz)`` from ``features`` vector-Jacobian products a step (small
  ``features``, tests); ``"hutchinson"``: ``e^T (df/dz) e`` with one probe ``e`` per row,
  drawn once per solve from torch's global generator (``probe="gaussian"`` or
  ``"rademacher"``), an unbiased estimate of the log-det.
* ``solver``: adaptive ``"dopri5"`` or ``"tsit5"`` (Tsitouras' pair run by torchdiffeq's
  step-size control; not with ``adjoint=True``) with ``atol`` / ``rtol`` (the step size is
  shared by the rows of a batch, as in torchdiffeq), or fixed-step ``"rk4"`` (torchdiffeq's
  3/8 rule) and
  ``"euler"`` with ``steps`` steps from 0 to ``t1``. A fixed-step map treats each row on its
  own and is the one that agrees with the JAX backend to rounding.
* ``adjoint=True``: gradients by torchdiffeq's adjoint method (memory independent of the
  number of steps) instead of backpropagation through the solver's operations.

`solve` returns the number of evaluations of the vector field and, with
``regularize=True``, the RNODE integrals (Finlay et al., 2020) of the kinetic energy
``|f|^2`` and of the squared Frobenius norm of ``df/dz`` (exact with ``trace="exact"``, else
estimated with the same probe); `pyroflows.pyro.fit` adds them to the loss with its
``kinetic`` and ``jacobian`` weights. ``bijection.nfe`` is the count of the last solve.

A solve that fails (more than ``max_steps`` steps, a step size that underflows, a
non-finite state) raises `ODESolveError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
import torchdiffeq
from torch import Tensor

from pyroflows._continuous import (
    MAX_STEPS,
    ODESolveError,
    check_continuous_options,
    flow_matching_layer_error,
    ot_pairing,
    solve_failed_message,
)
from pyroflows._train import COUPLINGS
from pyroflows.pyro.core import Bijection, Chain, Invert, broadcast_context
from pyroflows.pyro.nn import MLP

if TYPE_CHECKING:
    from pyroflows.pyro.distributions import Flow

__all__ = ["Continuous", "ContinuousSolve", "ODESolveError", "flow_matching_loss"]

_TORCHDIFFEQ_METHOD = {"dopri5": "dopri5", "rk4": "rk4", "euler": "euler"}

# Tsitouras' 5(4) pair (Tsitouras 2011; the coefficients of his paper, as diffrax uses them),
# for torchdiffeq's adaptive Runge-Kutta machinery, which has no such method of its own.
_TSIT5_C = (0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)
_TSIT5_A = (
    (0.161,),
    (-0.008480655492356989, 0.335480655492357),
    (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
    (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
    (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
     -0.028269050394068383),
    (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
     2.324710524099774),
)  # fmt: skip
_TSIT5_B_HAT = (0.09468075576583945, 0.009183565540343254, 0.4877705284247616,
                1.234297566930479, -2.7077123499835256, 1.866628418170587, 1 / 66)  # fmt: skip
#: The dense-output weights at the middle of a step (torchdiffeq interpolates through them).
_TSIT5_MID = (0.10741235230096871, 0.01135625, 0.39560903056045305, -0.34475214352593553,
              1.3161853649581645, -1.0170608542936508, 0.03125)  # fmt: skip


def _tsit5(f, state: Tensor, times: Tensor, rtol: float, atol: float, max_steps: int) -> Tensor:
    """``state`` integrated over ``times`` by Tsitouras' 5(4) method with torchdiffeq's
    adaptive step-size control (its private Runge-Kutta classes, as its own methods use)."""
    from torchdiffeq._impl.misc import _rms_norm
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver, _ButcherTableau

    def table(values) -> Tensor:
        return torch.tensor(values, dtype=torch.float64)

    b = table((*_TSIT5_A[-1], 0.0))

    class Tsit5(RKAdaptiveStepsizeODESolver):
        order = 5
        tableau = _ButcherTableau(
            alpha=table(_TSIT5_C),
            beta=[table(row) for row in _TSIT5_A],
            c_sol=b,
            c_error=b - table(_TSIT5_B_HAT),
        )
        mid = table(_TSIT5_MID)

    class Field:  # what torchdiffeq's solvers call: the field, and step callbacks
        def __init__(self, sign: float) -> None:
            self.sign = sign  # backwards in time: the flipped problem, as torchdiffeq does

        def __call__(self, t, y, perturb=None):
            return self.sign * f(self.sign * t, y)

        def callback_step(self, *args) -> None:
            pass

        callback_accept_step = callback_reject_step = callback_step

    sign = -1.0 if times[0] > times[1] else 1.0
    func, times = Field(sign), sign * times
    solver = Tsit5(func=func, y0=state, rtol=rtol, atol=atol, norm=_rms_norm,
                   max_num_steps=max_steps)  # fmt: skip
    return solver.integrate(times)


class ContinuousSolve(NamedTuple):
    """What `Continuous.solve` returns: the end state, the log-det of the map, the number
    of evaluations of the vector field, and the RNODE integrals per row (zeros unless
    ``regularize=True``)."""

    value: Tensor
    log_det: Tensor
    nfe: int
    kinetic: Tensor
    jacobian: Tensor


class Continuous(Bijection):
    """Continuous normalizing flow: the flow of the ODE ``dz/dt = f(z, t[, context])``.

    ``f`` is an MLP of ``(z, t[, context])`` (``hidden``, ``activation``) whose last layer
    starts at zero, so a fresh bijection is the identity. Parameter names:
    ``field.layers.0.weight``, ...

    Args:
        features: Event size.
        context: Context size (the context is an input of the vector field).
        hidden: Hidden widths of the vector field's MLP.
        trace: ``"exact"`` or ``"hutchinson"``.
        probe: Hutchinson probes, ``"gaussian"`` or ``"rademacher"``.
        solver: ``"dopri5"`` or ``"tsit5"`` (adaptive), ``"rk4"`` or ``"euler"``
            (fixed-step).
        steps: Number of steps of a fixed-step solver (required for them, else ``None``).
        atol: Absolute tolerance of an adaptive solver.
        rtol: Relative tolerance of an adaptive solver.
        adjoint: Gradients by the adjoint method.
        t1: End time of the flow (> 0).
        activation: Activation of the vector field's MLP.
        max_steps: Most steps of an adaptive solve.

    Examples:
        >>> import torch
        >>> from pyroflows.pyro.continuous import Continuous
        >>> cnf = Continuous(2, hidden=(16,), solver="rk4", steps=10)
        >>> y, log_det = cnf.forward_and_log_det(torch.randn(5, 2))
        >>> log_det.shape, cnf.nfe
        (torch.Size([5]), 40)
    """

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
    ) -> None:
        super().__init__(features, context)
        self.options = check_continuous_options(
            trace, probe, solver, steps, atol, rtol, t1, adjoint, max_steps
        )
        if self.options.solver == "tsit5" and self.options.adjoint:
            raise ValueError(
                "solver='tsit5' with adjoint=True is not available in the torch backend "
                "(torchdiffeq's adjoint runs only its own methods, and it has no Tsitouras "
                f"5(4)); use adjoint=False, or one of {sorted(_TORCHDIFFEQ_METHOD)}"
            )
        self.field = MLP(self.features + 1 + self.context_features, self.features, hidden,
                         activation)  # fmt: skip
        self.nfe = 0

    def extra_repr(self) -> str:
        o = self.options
        text = super().extra_repr() + f", trace={o.trace!r}, solver={o.solver!r}"
        if o.fixed:
            return text + f", steps={o.steps}"
        return (
            text + f", atol={o.atol:g}, rtol={o.rtol:g}" + (", adjoint=True" if o.adjoint else "")
        )

    def velocity(self, z: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """The vector field ``f(z, t[, context])``, shape of ``z`` (``t`` a number or a tensor
        of ``z``'s batch shape)."""
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
        t = t.expand(z.shape[:-1]).unsqueeze(-1)
        parts = [z, t] if context is None else [z, t, context.expand(*z.shape[:-1], -1)]
        return self.field(torch.cat(parts, dim=-1))

    def _dynamics(self, context: Tensor | None, probe: Tensor | None, regularize: bool):
        d, exact = self.features, self.options.trace == "exact"

        def f(t: Tensor, state: Tensor) -> Tensor:
            self._count += 1
            keep = torch.is_grad_enabled()  # build the graph of the trace only when needed
            with torch.enable_grad():
                z = state[:, :d]
                if not z.requires_grad:
                    z = z.detach().requires_grad_(True)
                dz = self.velocity(z, t, context)
                if exact:
                    rows = [
                        torch.autograd.grad(
                            dz[:, i].sum(), z, create_graph=keep, retain_graph=True
                        )[0]  # fmt: skip
                        for i in range(d)
                    ]
                    trace = sum(row[:, i] for i, row in enumerate(rows))
                    frobenius = sum((row * row).sum(-1) for row in rows) if regularize else None
                else:
                    vjp = torch.autograd.grad(dz, z, probe, create_graph=keep)[0]
                    trace = (vjp * probe).sum(-1)
                    frobenius = (vjp * vjp).sum(-1) if regularize else None
            parts = [dz, trace.unsqueeze(-1)]
            if regularize:
                parts += [(dz * dz).sum(-1, keepdim=True), frobenius.unsqueeze(-1)]
            out = torch.cat(parts, dim=-1)
            return out if keep else out.detach()

        return f

    def _probe(self, like: Tensor) -> Tensor:
        if self.options.probe == "rademacher":
            return torch.randint(0, 2, like.shape, device=like.device).to(like.dtype) * 2 - 1
        return torch.randn_like(like)

    def solve(
        self,
        value: Tensor,
        context: Tensor | None = None,
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
        self._count = 0
        zeros = z.new_zeros(batch)
        if n == 0:
            self.nfe = 0
            return ContinuousSolve(value, zeros, 0, zeros, zeros)
        probe = self._probe(z) if (o.trace == "hutchinson" or regularize) else None
        state = torch.cat([z, z.new_zeros(n, extra)], dim=-1)
        ends = (o.t1, 0.0) if reverse else (0.0, o.t1)
        times = torch.tensor(ends, dtype=z.dtype, device=z.device)
        f = self._dynamics(c, probe, regularize)
        if o.fixed:
            steps = o.steps + 1  # torchdiffeq hands over t negated when it runs backwards
            options = {"grid_constructor": lambda func, y0, t: torch.linspace(t[0], t[-1], steps)}
        else:
            options = {"max_num_steps": o.max_steps}
        kwargs = dict(rtol=o.rtol, atol=o.atol, method=_TORCHDIFFEQ_METHOD.get(o.solver),
                      options=options)  # fmt: skip
        try:
            if o.solver == "tsit5":
                end = _tsit5(f, state, times, o.rtol, o.atol, o.max_steps)
            elif o.adjoint:
                params = tuple(p for p in self.parameters() if p.requires_grad)
                if c is not None and c.requires_grad:
                    params += (c,)
                end = torchdiffeq.odeint_adjoint(f, state, times, adjoint_params=params, **kwargs)
            else:
                end = torchdiffeq.odeint(f, state, times, **kwargs)
        except AssertionError as error:  # torchdiffeq's way of saying a solve failed
            raise ODESolveError(solve_failed_message(type(self).__name__, o, str(error))) from None
        end = end[-1]
        if not torch.isfinite(end).all():
            raise ODESolveError(
                solve_failed_message(type(self).__name__, o, "the state became non-finite")
            )
        self.nfe = self._count
        sign = -1.0 if reverse else 1.0  # the integrals of |f|^2, |J|^2 over time, positive
        out = end[:, :d].reshape(value.shape)
        log_det = end[:, d].reshape(batch)
        if not regularize:
            return ContinuousSolve(out, log_det, self.nfe, zeros, zeros)
        kinetic = sign * end[:, d + 1].reshape(batch)
        return ContinuousSolve(out, log_det, self.nfe, kinetic, sign * end[:, d + 2].reshape(batch))

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        solution = self.solve(x, context)
        return solution.value, solution.log_det

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        solution = self.solve(y, context, reverse=True)
        return solution.value, solution.log_det


# --- training: flow matching, and likelihood with the solves' statistics ---------------------


def _layers(bijections, flipped: bool = False):
    """``(layer, flipped)`` of every bijection in forward order, chains and inverses opened."""
    for b in bijections:
        if isinstance(b, Chain):
            yield from (_layers(reversed(list(b.transforms)), True) if flipped
                        else _layers(b.transforms, False))  # fmt: skip
        elif isinstance(b, Invert):
            yield from _layers([b.bijection], not flipped)
        else:
            yield b, flipped


def has_continuous(flow: Flow) -> bool:
    """Whether ``flow`` holds a `Continuous` bijection."""
    return any(isinstance(m, Continuous) for m in flow.modules())


def log_prob_and_stats(
    flow: Flow, value: Tensor, context: Tensor | None = None, *, regularize: bool = False
) -> tuple[Tensor, int, Tensor, Tensor]:
    """``flow(context).log_prob(value)`` in one data -> base pass, with the number of
    vector-field evaluations of its continuous layers and (``regularize=True``) the sums of
    their RNODE kinetic and Jacobian integrals per row. Used by `pyroflows.pyro.fit`."""
    z, total = value, value.new_zeros(value.shape[:-1])
    nfe, kinetic, jacobian = 0, value.new_zeros(()), value.new_zeros(())
    for layer, flipped in reversed(list(_layers(flow.transforms))):
        c = context if layer.context_features else None
        if isinstance(layer, Continuous):
            solution = layer.solve(z, c, reverse=not flipped, regularize=regularize)
            z, log_det = solution.value, solution.log_det
            nfe += solution.nfe
            kinetic, jacobian = kinetic + solution.kinetic, jacobian + solution.jacobian
        elif flipped:
            z, log_det = layer.forward_and_log_det(z, c)
        else:
            z, log_det = layer.inverse_and_log_det(z, c)
        total = total + log_det
    return flow.base_distribution().log_prob(z) + total, nfe, kinetic, jacobian


def flow_matching_loss(
    flow: Flow,
    data: Tensor,
    context: Tensor | None = None,
    *,
    coupling: str = "independent",
) -> Tensor:
    """Conditional flow-matching loss (Lipman et al., 2023; Liu et al., 2023) of a flow made
    of one `Continuous` bijection.

    For data rows ``x1``, base draws ``x0`` (from the flow's base distribution) and times
    ``s ~ U(0, t1)``, the straight path ``x_s = x0 + (s / t1) (x1 - x0)`` has the constant
    velocity ``u = (x1 - x0) / t1``; the loss is the mean over rows of ``|f(x_s, s[, c]) -
    u|^2``. Its minimiser is the vector field whose flow carries the base onto the data, so a
    flow trained this way samples and still scores exactly, through the ODE.
    ``coupling="ot"`` pairs the minibatch's draws with its rows by an exact optimal
    assignment of squared distances (OT-CFM, Tong et al., 2023; scipy's
    ``linear_sum_assignment``), which straightens the learnt paths (unconditional flows
    only: the pairing would ignore the context). Draws come from torch's global generator.

    Args:
        flow: A `Flow` whose one bijection is `Continuous` (e.g. ``FFJORD(features)``).
        data: Data rows ``(n, features)``.
        context: Context rows ``(n, context)`` of a conditional flow.
        coupling: ``"independent"`` or ``"ot"``.

    Returns:
        The loss, a scalar tensor.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> flow = pf.FFJORD(2, hidden=(16,))
        >>> loss = pf.flow_matching_loss(flow, torch.randn(64, 2), coupling="ot")
        >>> loss.backward()
    """
    layers = [layer for layer, _ in _layers(flow.transforms)]
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
    cnf.check_input("data", data)
    if data.dim() != 2:
        raise ValueError(f"data must have shape (n, {cnf.features}), got {tuple(data.shape)}")
    if cnf.context_features:
        if context is None or context.shape != (data.shape[0], cnf.context_features):
            got = None if context is None else tuple(context.shape)
            raise ValueError(
                f"context must have shape ({data.shape[0]}, {cnf.context_features}) (one row "
                f"per data row), got {got}"
            )
    elif context is not None:
        raise ValueError("context was given, but the flow was built without context")
    n, t1 = data.shape[0], cnf.options.t1
    noise = flow.base_distribution().sample((n,)).to(data)
    if coupling == "ot":
        order = ot_pairing(noise.detach().cpu().numpy(), data.detach().cpu().numpy())
        noise = noise[torch.as_tensor(order, device=data.device, dtype=torch.long)]
    fraction = torch.rand(n, 1, dtype=data.dtype, device=data.device)
    point = noise + fraction * (data - noise)
    target = (data - noise) / t1
    velocity = cnf.velocity(point, t1 * fraction.squeeze(-1), context)
    return (velocity - target).square().sum(-1).mean()
