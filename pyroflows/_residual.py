"""Backend-free pieces of the residual family: constants, argument checks, the error, and
the parameter layouts of the planar, radial and Sylvester layers.

Both backends' ``residual.py`` and the Lipschitz networks of their ``nn.py`` take these from
here, so the two read the same numbers, check the same arguments with the same messages, and
raise the same `ConvergenceError` class (``pyroflows.pyro.ConvergenceError is
pyroflows.numpyro.ConvergenceError``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyroflows import _checks

__all__ = [
    "ConvergenceError",
    "LOGDET_MODES",
    "ROULETTE_STOP",
    "POWER_ITERATIONS",
    "POWER_RTOL",
    "POWER_CHECK",
    "LIPSWISH_SLOPE",
    "LIPSCHITZ_ACTIVATION_NAMES",
    "BlockOptions",
    "check_block_options",
    "check_lipschitz_activation",
    "default_atol",
    "convergence_message",
    "SYLVESTER_KINDS",
    "ABOVE_MINUS_ONE_SHIFT",
    "check_solve_options",
    "check_sylvester_options",
    "planar_layout",
    "radial_layout",
    "sylvester_layout",
    "layout_size",
]

LOGDET_MODES = ("exact", "series", "unbiased")
#: The probability that the roulette of ``logdet="unbiased"`` stops after each term.
ROULETTE_STOP = 0.5
#: Power iterations: at most this many per refinement, stopping once the estimate of the
#: spectral norm changes by less than ``POWER_RTOL`` (relative).
POWER_ITERATIONS = 200
POWER_RTOL = 1e-5
#: The torch backend checks that stopping rule every ``POWER_CHECK`` steps (each check waits
#: for the device); the JAX backend checks every step inside its ``while_loop``.
POWER_CHECK = 4
#: The initial raw slope of a learnt LipSwish: ``softplus(log(e - 1)) = 1``.
LIPSWISH_SLOPE = 0.5413248546129181
#: The 1-Lipschitz activations a residual block accepts.
LIPSCHITZ_ACTIVATION_NAMES = ("elu", "lipswish", "tanh")


class ConvergenceError(RuntimeError):
    """An iterative inverse did not reach its tolerance."""


@dataclass(frozen=True)
class BlockOptions:
    """The checked settings of a residual block."""

    lipschitz: float
    logdet: str
    terms: int
    atol: float | None
    max_iter: int


def check_block_options(
    lipschitz: Any, logdet: Any, terms: Any, atol: Any, max_iter: Any
) -> BlockOptions:
    """Check a residual block's settings (``ValueError`` naming the argument); ``terms=None``
    becomes 5 for ``"series"`` and 2 for ``"unbiased"``."""
    try:
        checked = _checks.check_fraction("lipschitz", lipschitz, 0.0, 1.0)
    except ValueError:
        checked = 0.0
    if checked == 0:
        raise ValueError(f"lipschitz must be a number in (0, 1), got {lipschitz!r}")
    lipschitz = checked
    if logdet not in LOGDET_MODES:
        raise ValueError(f"logdet must be one of {LOGDET_MODES}, got {logdet!r}")
    default_terms = 5 if logdet == "series" else 2
    return BlockOptions(
        lipschitz=lipschitz,
        logdet=logdet,
        terms=_checks.check_int("terms", default_terms if terms is None else terms, 1),
        atol=None if atol is None else _checks.check_positive("atol", atol),
        max_iter=_checks.check_int("max_iter", max_iter, 1),
    )


def check_lipschitz_activation(activation: Any) -> str:
    """``activation`` if it names a 1-Lipschitz activation, else a ``ValueError``."""
    if activation not in LIPSCHITZ_ACTIVATION_NAMES:
        raise ValueError(
            f"activation must be one of {list(LIPSCHITZ_ACTIVATION_NAMES)} (1-Lipschitz), "
            f"got {activation!r}"
        )
    return activation


def default_atol(atol: float | None, eps: float) -> float:
    """The fixed-point tolerance: ``atol``, or ``64 * eps`` of the dtype."""
    return 64 * eps if atol is None else atol


#: What a residual block's fixed-point tolerance is relative to: the rounding of ``g(z, c)``
#: scales with its whole input and output, so every element of a row is judged at the
#: largest magnitude of the row's ``z``, its target ``w = z + g`` and its context.
ROW_SCALE = "1 + the largest |z|, |w| or |context| of the row"
#: What the elementwise (planar, Sylvester) solves' tolerance is relative to.
ELEMENT_SCALE = "1 + |x|"


def convergence_message(max_iter: int, atol: float, bad: int | None = None, rows: int = 0,
                        last: float | None = None,
                        owner: str = "ResidualBlock",
                        method: str = "fixed-point inverse",
                        relative: str = ROW_SCALE,
                        unit: str = "rows") -> str:  # fmt: skip
    """The sentence of a `ConvergenceError` (without the counts where they are unknown, as
    inside ``jit``); ``relative`` names what ``atol`` is relative to, ``unit`` what is
    counted (rows of a batch, or elements)."""
    which = f"some {unit}" if bad is None else f"{bad} of {rows} {unit}"
    reached = "" if last is None else f": the largest last step was {last:.3e}"
    return (
        f"the {method} of {owner} did not converge for {which} in "
        f"max_iter={max_iter} iterations{reached} (atol={atol:.3e}, relative to {relative}); "
        "raise max_iter or atol"
    )


# --- planar, radial and Sylvester layers ----------------------------------------------------

#: The ``kind`` of a Sylvester layer: ``Q`` from an orthogonalised matrix, from Householder
#: reflections, or a fixed permutation (identity or reversal).
SYLVESTER_KINDS = ("orthogonal", "householder", "triangular")

#: ``m(x) = softplus(x + ABOVE_MINUS_ONE_SHIFT) - 1`` maps the reals onto ``(-1, inf)`` with
#: ``m(0) = 0``: the planar layer's ``w^T u_hat = m(w^T u)`` and the radial layer's
#: ``beta = alpha * m(beta_raw)`` keep the layers invertible, and zero parameters give the
#: identity. The shift is ``log(e - 1)``.
ABOVE_MINUS_ONE_SHIFT = LIPSWISH_SLOPE


def check_solve_options(atol: Any, max_iter: Any) -> tuple[float | None, int]:
    """``atol`` (``None`` or positive) and ``max_iter`` (>= 1) of an iterative inverse."""
    return (
        None if atol is None else _checks.check_positive("atol", atol),
        _checks.check_int("max_iter", max_iter, 1),
    )


def check_sylvester_options(
    features: int, kind: Any, columns: Any, reflections: Any
) -> tuple[str, int, int]:
    """``kind``, the number of columns ``M`` of ``Q`` and of Householder reflections.

    ``columns`` (``"orthogonal"`` only, default ``features``) is at most ``features``;
    ``reflections`` (``"householder"`` only) defaults to ``features``. The other kinds use
    ``M = features``.
    """
    if kind not in SYLVESTER_KINDS:
        raise ValueError(f"kind must be one of {list(SYLVESTER_KINDS)}, got {kind!r}")
    if columns is not None and kind != "orthogonal":
        raise ValueError(f"columns is for kind='orthogonal' only, got columns={columns!r} "
                         f"with kind={kind!r}")  # fmt: skip
    if reflections is not None and kind != "householder":
        raise ValueError(f"reflections is for kind='householder' only, got "
                         f"reflections={reflections!r} with kind={kind!r}")  # fmt: skip
    m = features if columns is None else _checks.check_int("columns", columns, 1)
    if m > features:
        raise ValueError(f"columns must be at most features={features}, got {m}")
    k = features if reflections is None else _checks.check_int("reflections", reflections, 1)
    return kind, m, k


def planar_layout(features: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a planar layer's parameters, in the order a conditional layer's
    network outputs them."""
    return {"u": (features,), "w": (features,), "b": (1,)}


def radial_layout(features: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a radial layer's parameters (``alpha`` and ``beta`` before their
    positivity maps)."""
    return {"z0": (features,), "alpha": (1,), "beta": (1,)}


def sylvester_layout(
    features: int, kind: str, columns: int, reflections: int
) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a Sylvester layer's parameters: ``q`` (the matrix orthogonalised
    into ``Q``) or ``v`` (the Householder vectors), then ``r``, ``r_tilde`` (full square
    matrices of which the upper triangles are used, diagonals through ``tanh``) and ``b``."""
    layout: dict[str, tuple[int, ...]] = {}
    if kind == "orthogonal":
        layout["q"] = (features, columns)
    elif kind == "householder":
        layout["v"] = (reflections, features)
    layout.update({"r": (columns, columns), "r_tilde": (columns, columns), "b": (columns,)})
    return layout


def layout_size(layout: dict[str, tuple[int, ...]]) -> int:
    """The number of numbers in a layout (the output size of a conditional layer's net)."""
    total = 0
    for shape in layout.values():
        size = 1
        for n in shape:
            size *= n
        total += size
    return total
