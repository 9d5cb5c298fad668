"""Layer plans of the multi-scale image recipes, shared by both backends (numpy only).

A plan is a tree of `Level` records in the data -> base order of the paper; each backend
builds the same bijections from it (`pyroflows.pyro.image.multi_scale`,
`pyroflows.numpyro.image.multi_scale`), so both hold the same layers under the same names.

A level of shape ``(C, H, W)`` runs, data -> base: its ``before`` steps; then, if it has an
inner level, a squeeze to ``(4C, H/2, W/2)``, its ``after`` steps, the split prior (when
``prior``) and the inner level on the first ``2C`` channels while the other ``2C`` are
factored out into the latent; and an unsqueeze back to ``(C, H, W)``, so that the whole
model keeps the data's event shape. A level without an inner level but with ``after``
steps squeezes, runs them and unsqueezes (Glow's last level).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyroflows import _checks, structure

#: A step: ("coupling", mask, parity) | ("actnorm",) | ("conv1x1", seed)
Step = tuple


@dataclass(frozen=True)
class Level:
    """One scale of a multi-scale model (see the module docstring)."""

    shape: tuple[int, int, int]
    before: tuple[Step, ...]
    after: tuple[Step, ...]
    prior: bool
    inner: Level | None


def channels(name: str, hidden: object) -> int:
    """The hidden channels of an image recipe: an int, or a sequence of equal widths (the
    vector recipes' default ``(64, 64)`` is 64 channels)."""
    if isinstance(hidden, Sequence) and not isinstance(hidden, str):
        widths = _checks.check_hidden(hidden, name)
        if len(set(widths)) != 1:
            raise ValueError(
                f"{name} of an image flow is one number of channels (an int), got {hidden!r}"
            )
        return widths[0]
    return _checks.check_int(name, hidden, 1)


def event_shape(name: str, shape: object) -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints (an int is a 1-tuple); ``ValueError`` naming
    ``name`` otherwise."""
    dims = tuple(shape) if isinstance(shape, Sequence) else (shape,)
    if not dims or not all(_checks._is_int(d) and d >= 1 for d in dims):
        raise ValueError(f"{name} must be a tuple of positive ints, got {shape!r}")
    return tuple(int(d) for d in dims)


def squeezed(shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W) -> (4C, H/2, W/2)``; ``ValueError`` unless H and W are even."""
    channels, height, width = structure.check_image_shape(shape)
    if height % 2 or width % 2:
        raise ValueError(
            f"a squeeze needs an even height and width, got shape {(channels, height, width)}"
        )
    return 4 * channels, height // 2, width // 2


def _check_levels(shape: tuple[int, int, int], levels: int, squeezes: int, recipe: str) -> int:
    levels = _checks.check_int("levels", levels, 1)
    factor = 2**squeezes
    if shape[1] % factor or shape[2] % factor:
        raise ValueError(
            f"{recipe} with levels={levels} squeezes {squeezes} times, so the height and width "
            f"must be multiples of {factor}; got shape {shape}"
        )
    return levels


def realnvp_plan(shape: Sequence[int], levels: int = 2) -> Level:
    """RealNVP's multi-scale architecture (Dinh et al., 2017): per level, 3 checkerboard
    couplings, a squeeze, 3 channel couplings and a factor-out of half of the channels; the
    last level is 4 checkerboard couplings."""
    shape = structure.check_image_shape(shape)
    levels = _check_levels(shape, levels, levels - 1, "RealNVP")

    def level(shape: tuple[int, int, int], remaining: int) -> Level:
        if remaining == 1:
            before = tuple(("coupling", "checkerboard", i % 2) for i in range(4))
            return Level(shape, before, (), False, None)
        inner_shape = squeezed(shape)
        inner_shape = (inner_shape[0] // 2, *inner_shape[1:])
        return Level(
            shape,
            tuple(("coupling", "checkerboard", i % 2) for i in range(3)),
            tuple(("coupling", "channel", i % 2) for i in range(3)),
            False,
            level(inner_shape, remaining - 1),
        )

    return level(shape, levels)


def glow_plan(shape: Sequence[int], levels: int = 2, steps: int = 4) -> Level:
    """Glow's architecture (Kingma & Dhariwal, 2018): per level a squeeze, ``steps`` steps of
    ActNorm, invertible 1x1 convolution and affine channel coupling, then (all but the
    last level) a split with its learnt prior."""
    shape = structure.check_image_shape(shape)
    levels = _check_levels(shape, levels, levels, "Glow")
    steps = _checks.check_int("steps", steps, 1)

    def level(shape: tuple[int, int, int], remaining: int, seed: int) -> Level:
        after = []
        for i in range(steps):
            after += [("actnorm",), ("conv1x1", seed + i), ("coupling", "channel", i % 2)]
        if remaining == 1:
            return Level(shape, (), tuple(after), False, None)
        inner_shape = squeezed(shape)
        inner_shape = (inner_shape[0] // 2, *inner_shape[1:])
        return Level(shape, (), tuple(after), True, level(inner_shape, remaining - 1, seed + steps))

    return level(shape, levels, 0)


def check_noise_flow(flow: Any, shape: tuple[int, ...], dims: int) -> None:
    """A variational dequantizer's noise flow: events of the data's ``shape`` and a context
    of ``dims`` features (the flattened image); ``ValueError`` otherwise."""
    event = tuple(flow.transforms[-1].event_shape)
    if event != shape or flow.context_features != dims:
        raise ValueError(
            f"flow must give events of shape {shape} with a context of {dims} features (the "
            f"flattened image), got events of shape {event} and context "
            f"{flow.context_features}"
        )


@functools.lru_cache(maxsize=32)
def conv3x3_taps(height: int, width: int) -> np.ndarray:
    """``(9, (H W)^2)`` 0/1 matrix of a 3x3, padding-1 convolution on an ``H x W`` image: row
    ``3 i + j``, column ``(q, p)`` is 1 when input pixel ``q`` sits at offset
    ``(i - 1, j - 1)`` from output pixel ``p``. Both backends' ``Conv3x3`` / ``ConvResNet``
    build a small image's dense convolution matrix from it (``kernel @ taps``); read only."""
    taps = np.zeros((3, 3, height * width, height * width))
    for row in range(height):
        for col in range(width):
            for i in range(3):
                for j in range(3):
                    r, c = row + i - 1, col + j - 1
                    if 0 <= r < height and 0 <= c < width:
                        taps[i, j, r * width + c, row * width + col] = 1.0
    return taps.reshape(9, -1)
