"""Backend-free argument checks shared by both backends (numpy and the standard library only).

Every constructor argument that is a size, a width list or a positive number is checked
here, once, so that both backends accept the same values (Python and numpy integers alike)
and reject the rest with the same message: the argument's name, what was expected and what
was given.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["check_int", "check_hidden", "check_positive", "check_fraction"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as a Python int; raise ``ValueError`` naming ``name`` unless it is an int
    (Python or numpy) ``>= minimum``.

    Examples:
        >>> import numpy as np
        >>> check_int("features", np.int64(3))
        3
    """
    if not _is_int(value) or value < minimum:
        if minimum == 1:
            kind = "a positive int"
        elif minimum == 0:
            kind = "a non-negative int"
        else:
            kind = f"an int >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def check_hidden(hidden: Any, name: str = "hidden") -> tuple[int, ...]:
    """Hidden widths as a tuple of Python ints; raise ``ValueError`` for anything but a
    sequence of positive ints (a bare int gets a message that shows the tuple to write).

    Examples:
        >>> check_hidden([64, 64])
        (64, 64)
    """
    if _is_int(hidden):
        raise ValueError(
            f"{name} must be a sequence of layer widths such as ({hidden},) or "
            f"({hidden}, {hidden}), got the int {hidden!r}"
        )
    if isinstance(hidden, str) or not isinstance(hidden, Sequence | np.ndarray):
        raise ValueError(f"{name} must be a sequence of positive ints, got {hidden!r}")
    widths = tuple(hidden)
    if any(not _is_int(h) or h < 1 for h in widths):
        raise ValueError(f"{name} must be a sequence of positive ints, got {hidden!r}")
    return tuple(int(h) for h in widths)


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as a float; raise ``ValueError`` naming ``name`` unless it is a finite real
    number ``> 0`` (``>= 0`` with ``allow_zero``).

    Examples:
        >>> check_positive("bound", 5)
        5.0
    """
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool | np.bool_)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        kind = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return float(value)


def check_fraction(name: str, value: Any, low: float, high: float) -> float:
    """``value`` as a float in ``[low, high)``; raise ``ValueError`` naming ``name`` otherwise."""
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool | np.bool_)
        and math.isfinite(value)
        and low <= value < high
    )
    if not ok:
        raise ValueError(f"{name} must be a number in [{low}, {high}), got {value!r}")
    return float(value)
