"""Backend-free planning of big draws: how many rows of a draw go through a flow at once."""

from __future__ import annotations

import math

__all__ = ["chunk_rows"]


def chunk_rows(shape: tuple[int, ...], events: int) -> int | None:
    """Rows of the first axis of a draw of ``shape`` (``(rows, ..., features)``) per chunk of
    about ``events`` events, or ``None`` when the draw is small enough (or a single event)
    to go through at once.

    Examples:
        >>> chunk_rows((1000, 3, 2), 300)
        100
        >>> chunk_rows((10, 2), 300) is None
        True
    """
    if len(shape) < 2:
        return None
    per_row = max(1, math.prod(shape[1:-1]))
    rows = max(1, events // per_row)
    return rows if rows < shape[0] else None
