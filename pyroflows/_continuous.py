"""Backend-free pieces of the continuous family: solver and trace names, argument checks,
the solver error and the counts of function evaluations.

Both backends' ``continuous.py`` take these from here, so they accept the same options with
the same messages and raise the same `ODESolveError` class (``pyroflows.pyro.ODESolveError
is pyroflows.numpyro.ODESolveError``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pyroflows import _checks

__all__ = [
    "ODESolveError",
    "ADAPTIVE_SOLVERS",
    "FIXED_SOLVERS",
    "SOLVERS",
    "TRACES",
    "PROBES",
    "MAX_STEPS",
    "STAGES",
    "ContinuousOptions",
    "check_continuous_options",
    "evaluations",
    "solve_failed_message",
    "ot_pairing",
    "flow_matching_layer_error",
]

#: Adaptive solvers (step size from ``atol`` / ``rtol``) and fixed-step ones (``steps``).
ADAPTIVE_SOLVERS = ("dopri5", "tsit5")
FIXED_SOLVERS = ("rk4", "euler")
SOLVERS = ADAPTIVE_SOLVERS + FIXED_SOLVERS
TRACES = ("exact", "hutchinson")
PROBES = ("gaussian", "rademacher")
#: Most steps an adaptive solve may take before `ODESolveError` is raised.
MAX_STEPS = 10_000
#: New evaluations of the vector field per step. ``rk4`` is the 3/8 rule (torchdiffeq's
#: ``"rk4"``: four evaluations); ``dopri5`` and ``tsit5`` have seven stages, the first of
#: which is the last of the previous step (FSAL).
STAGES = {"dopri5": 6, "tsit5": 6, "rk4": 4, "euler": 1}


class ODESolveError(RuntimeError):
    """An ODE solve of a continuous flow failed (too many steps, a step size that
    underflowed, or a state that became non-finite)."""


@dataclass(frozen=True)
class ContinuousOptions:
    trace: str
    probe: str
    solver: str
    steps: int | None
    atol: float
    rtol: float
    t1: float
    adjoint: bool
    max_steps: int

    @property
    def fixed(self) -> bool:
        return self.solver in FIXED_SOLVERS


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def check_continuous_options(
    trace: Any,
    probe: Any,
    solver: Any,
    steps: Any,
    atol: Any,
    rtol: Any,
    t1: Any,
    adjoint: Any,
    max_steps: Any,
) -> ContinuousOptions:
    """Validate the options of a ``Continuous`` bijection (the same in both backends)."""
    trace = _choice("trace", trace, TRACES)
    probe = _choice("probe", probe, PROBES)
    solver = _choice("solver", solver, SOLVERS)
    if solver in FIXED_SOLVERS:
        if steps is None:
            raise ValueError(
                f"solver={solver!r} is a fixed-step solver: give steps (the number of steps "
                "from 0 to t1, an int >= 1), e.g. steps=20"
            )
        steps = _checks.check_int("steps", steps, 1)
    elif steps is not None:
        raise ValueError(
            f"steps is for the fixed-step solvers {list(FIXED_SOLVERS)}; solver={solver!r} "
            f"chooses its own steps from atol and rtol (got steps={steps!r})"
        )
    atol = _checks.check_positive("atol", atol)
    rtol = _checks.check_positive("rtol", rtol)
    t1 = _checks.check_positive("t1", t1)
    if not isinstance(adjoint, bool):
        raise TypeError(f"adjoint must be True or False, got {adjoint!r}")
    max_steps = _checks.check_int("max_steps", max_steps, 1)
    return ContinuousOptions(trace, probe, solver, steps, atol, rtol, t1, adjoint, max_steps)


def evaluations(options: ContinuousOptions, steps_taken: int) -> int:
    """Function evaluations of a solve that took ``steps_taken`` steps (accepted or not)."""
    if options.fixed:
        return STAGES[options.solver] * steps_taken
    return STAGES[options.solver] * steps_taken + 1


def solve_failed_message(owner: str, options: ContinuousOptions, reason: str) -> str:
    """The sentence of an `ODESolveError`, the same in both backends."""
    hint = (
        f"raise max_steps (now {options.max_steps}) or atol / rtol (now {options.atol:g} / "
        f"{options.rtol:g})"
        if not options.fixed
        else f"raise steps (now {options.steps})"
    )
    return (
        f"{owner}: the ODE solve with solver={options.solver!r} failed: {reason}. The vector "
        f"field may have become too stiff or too large (lower the learning rate, add kinetic "
        f"/ jacobian regularisation), or {hint}"
    )


def ot_pairing(noise: np.ndarray, data: np.ndarray) -> np.ndarray:
    """The minibatch optimal-transport coupling of Tong et al. (2023): indices ``perm`` such
    that pairing ``noise[perm[i]]`` with ``data[i]`` minimises the total squared distance
    (an exact assignment, by scipy's ``linear_sum_assignment``).

    Examples:
        >>> ot_pairing(np.array([[0.0], [5.0]]), np.array([[4.0], [1.0]])).tolist()
        [1, 0]
    """
    from scipy.optimize import linear_sum_assignment

    noise, data = np.asarray(noise, np.float64), np.asarray(data, np.float64)
    cost = ((data[:, None, :] - noise[None, :, :]) ** 2).sum(-1)
    _, columns = linear_sum_assignment(cost)
    return columns.astype(np.int32)


def flow_matching_layer_error(layers: list[Any], continuous: type) -> str | None:
    """Why a flow made of ``layers`` cannot be trained by flow matching (``None`` if it can:
    it must be one `Continuous` bijection)."""
    names = [type(layer).__name__ for layer in layers]
    if len(layers) == 1 and isinstance(layers[0], continuous):
        return None
    return (
        "flow matching trains the vector field of one Continuous bijection (a flow such as "
        f"FFJORD(features, transforms=1)); this flow's layers are {names}. Train it by "
        "maximum likelihood (objective='likelihood') instead"
    )
