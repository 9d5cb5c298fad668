"""Backend-free pieces of the residual family: constants, argument checks, the error.

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
    "LIPSCHITZ_ACTIVATION_NAMES",
    "BlockOptions",
    "check_block_options",
    "check_lipschitz_activation",
    "default_atol",
    "convergence_message",
]

LOGDET_MODES = ("exact", "series", "unbiased")
#: The probability that the roulette of ``logdet="unbiased"`` stops after each term.
ROULETTE_STOP = 0.5
#: Power iterations: at most this many per refinement, stopping once the estimate of the
#: spectral norm changes by less than ``POWER_RTOL`` (relative).
POWER_ITERATIONS = 200
POWER_RTOL = 1e-6
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
    lipschitz = _checks.check_fraction("lipschitz", lipschitz, 0.0, 1.0)
    if lipschitz == 0:
        raise ValueError("lipschitz must be a number in (0, 1), got 0")
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


def convergence_message(max_iter: int, atol: float, bad: int | None = None, rows: int = 0,
                        last: float | None = None) -> str:  # fmt: skip
    """The sentence of a `ConvergenceError` (without the counts where they are unknown, as
    inside ``jit``)."""
    which = "some rows" if bad is None else f"{bad} of {rows} rows"
    reached = "" if last is None else f": the largest last step was {last:.3e}"
    return (
        f"the fixed-point inverse of ResidualBlock did not converge for {which} in "
        f"max_iter={max_iter} iterations{reached} (atol={atol:.3e}, relative to 1 + |z|); "
        "raise max_iter or atol"
    )
