"""Structure shared by both backends: masks, MADE degrees and permutations.

Everything here is plain numpy and seeded with numpy's own generator, so the torch and
JAX backends build exactly the same structure from the same arguments (the first rule
of cross-backend parity). Nothing here draws torch or JAX random numbers.

Conventions:
    * A coupling mask is a boolean vector of length ``features``; ``True`` marks a
      feature that passes through unchanged and conditions the others, ``False`` a
      feature that is transformed.
    * MADE degrees are integers; an input of degree ``d`` may influence only outputs of
      degree ``> d``. Inputs carry degrees ``1..features`` in the autoregressive order,
      context inputs degree ``0``.

Examples:
    >>> from pyroflows import structure
    >>> structure.alternating_mask(4, parity=0)
    array([ True, False,  True, False])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "alternating_mask",
    "half_mask",
    "random_mask",
    "permutation",
    "inverse_permutation",
    "autoregressive_order",
    "made_degrees",
    "made_masks",
    "RECIPE_ORDERS",
    "random_orders",
    "paired_random_mask",
    "recipe_orders",
    "recipe_masks",
    "check_image_shape",
    "checkerboard_mask",
    "channel_mask",
]

#: Layer structures of the recipes (their ``order=`` argument): ``"random"`` (seeded random
#: orders / paired random masks, the default) and ``"alternate"`` (natural / reversed orders,
#: even / odd masks: the structure of pyroflows 0.1.0's recipes).
RECIPE_ORDERS = ("random", "alternate")


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_features(features: int, minimum: int = 1) -> int:
    return _check_count("features", features, minimum)


def half_mask(features: int, flip: bool = False) -> np.ndarray:
    """First ``features // 2`` features pass through (``True``); ``flip`` swaps the halves.

    Args:
        features: Event size.
        flip: Let the second half pass through instead.

    Returns:
        Boolean array of shape ``(features,)``.
    """
    features = _check_features(features, 2)
    mask = np.arange(features) < features // 2
    return ~mask if flip else mask


def alternating_mask(features: int, parity: int = 0) -> np.ndarray:
    """Every other feature passes through: those with ``index % 2 == parity``.

    Args:
        features: Event size (at least 2).
        parity: 0 or 1.

    Returns:
        Boolean array of shape ``(features,)``.
    """
    features = _check_features(features, 2)
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")
    return np.arange(features) % 2 == parity


def random_mask(features: int, seed: int) -> np.ndarray:
    """A seeded random mask with ``features // 2`` pass-through features.

    Args:
        features: Event size (at least 2).
        seed: numpy seed; the same seed gives the same mask in both backends.

    Returns:
        Boolean array of shape ``(features,)``.
    """
    features = _check_features(features, 2)
    rng = np.random.default_rng(seed)
    mask = np.zeros(features, dtype=bool)
    mask[rng.permutation(features)[: features // 2]] = True
    return mask


def permutation(features: int, seed: int) -> np.ndarray:
    """A seeded random permutation of ``range(features)`` (int64)."""
    features = _check_features(features)
    return np.random.default_rng(seed).permutation(features).astype(np.int64)


def inverse_permutation(perm: Sequence[int] | np.ndarray) -> np.ndarray:
    """The permutation that undoes ``perm``; raises if ``perm`` is not a permutation."""
    perm = np.asarray(perm, dtype=np.int64)
    if perm.ndim != 1 or not np.array_equal(np.sort(perm), np.arange(perm.size)):
        raise ValueError(f"permutation must hold each of 0..{perm.size - 1} once, got {perm}")
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(perm.size)
    return inverse


def autoregressive_order(features: int, layer: int) -> np.ndarray:
    """The feature order of the ``layer``-th autoregressive layer of a recipe.

    Even layers use the natural order, odd layers the reversed one, so that stacked
    layers see every feature both early and late.

    Returns:
        ``order[i]`` is the position (0-based) of feature ``i`` in the autoregressive order.
    """
    features = _check_features(features)
    order = np.arange(features)
    return order[::-1].copy() if layer % 2 else order


def made_degrees(
    features: int,
    hidden: Sequence[int],
    context: int = 0,
    order: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Degrees of the input and hidden units of a MADE network.

    Args:
        features: Event size.
        hidden: Hidden layer widths.
        context: Number of context inputs (placed after the features, degree 0).
        order: ``order[i]`` is the autoregressive position of feature ``i``
            (default: natural order).

    Returns:
        ``[input_degrees, hidden_degrees_1, ...]``. Input degrees are ``order + 1``
        followed by ``context`` zeros; hidden degrees cycle through
        ``0..features - 1`` (``0`` only where needed: a unit of degree 0 sees only the
        context), so every output of degree ``d`` has inputs of every degree ``< d``.
    """
    features = _check_features(features)
    order = np.arange(features) if order is None else np.asarray(order, dtype=np.int64)
    if order.shape != (features,) or not np.array_equal(np.sort(order), np.arange(features)):
        raise ValueError(f"order must be a permutation of 0..{features - 1}, got {order}")
    inputs = np.concatenate([order + 1, np.zeros(context, dtype=np.int64)])
    degrees = [inputs.astype(np.int64)]
    low = 1 if (context == 0 and features > 1) else 0
    high = max(features - 1, low)  # hidden degrees in [low, high]
    for width in hidden:
        if width < 1:
            raise ValueError(f"hidden widths must be >= 1, got {tuple(hidden)}")
        span = high - low + 1
        degrees.append((low + np.arange(width) % span).astype(np.int64))
    return degrees


def made_masks(
    features: int,
    hidden: Sequence[int],
    params_per_feature: int,
    context: int = 0,
    order: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Connectivity masks of a MADE network, one per linear layer, each ``(out, in)``.

    The output layer has ``features * params_per_feature`` units laid out feature-major:
    unit ``i * params_per_feature + p`` is parameter ``p`` of feature ``i``, so a
    reshape to ``(..., features, params_per_feature)`` gives the transformer's parameters.

    Returns:
        Float64 arrays of 0/1, shapes ``(hidden[0], features + context)``, ...,
        ``(features * params_per_feature, hidden[-1])``.
    """
    degrees = made_degrees(features, hidden, context, order)
    masks = []
    for previous, current in zip(degrees[:-1], degrees[1:], strict=True):
        masks.append((current[:, None] >= previous[None, :]).astype(np.float64))
    order = np.arange(features) if order is None else np.asarray(order, dtype=np.int64)
    outputs = np.repeat(order + 1, params_per_feature)
    masks.append((outputs[:, None] > degrees[-1][None, :]).astype(np.float64))
    return masks


def random_orders(features: int, transforms: int) -> list[np.ndarray]:
    """The feature orders of an autoregressive recipe's layers in its ``"random"`` structure.

    Layer ``i`` takes the seeded random order ``permutation(features, seed=i)``; where that
    equals the previous layer's order it is reversed instead, so that consecutive layers
    never share an order. On two features this gives the natural / reversed alternation
    (the only two orders there are); from four features on the rule almost never applies.

    Args:
        features: Event size.
        transforms: Number of layers.

    Returns:
        One order per layer: ``order[i]`` is the position (0-based) of feature ``i``.

    Examples:
        >>> from pyroflows import structure
        >>> [o.tolist() for o in structure.random_orders(2, 3)]
        [[0, 1], [1, 0], [0, 1]]
    """
    features, transforms = _check_features(features), _check_count("transforms", transforms, 1)
    orders: list[np.ndarray] = []
    for i in range(transforms):
        order = permutation(features, seed=i)
        if orders and np.array_equal(order, orders[-1]):
            order = features - 1 - order  # reversed positions: the sequence read backwards
        orders.append(order)
    return orders


def paired_random_mask(features: int, layer: int) -> np.ndarray:
    """The mask of coupling layer ``layer`` in the recipes' ``"random"`` structure.

    Layers ``2k`` and ``2k + 1`` split the features by the same seeded random half,
    ``random_mask(features, seed=k)``, and swap its roles: in layer ``2k`` the features of
    the half pass through, in layer ``2k + 1`` they are transformed. Every pair of layers
    thus transforms every feature once, conditioned on a different random half each pair.

    Args:
        features: Event size (at least 2).
        layer: Index of the layer in the recipe (0-based).

    Returns:
        Boolean array of shape ``(features,)`` (``True``: passes through).

    Examples:
        >>> from pyroflows import structure
        >>> a, b = structure.paired_random_mask(6, 0), structure.paired_random_mask(6, 1)
        >>> bool((a == ~b).all())
        True
    """
    layer = _check_count("layer", layer, 0)
    mask = random_mask(features, seed=layer // 2)
    return ~mask if layer % 2 else mask


def _check_order(order: str) -> str:
    if order not in RECIPE_ORDERS:
        raise ValueError(f"order must be one of {RECIPE_ORDERS}, got {order!r}")
    return order


def recipe_orders(features: int, transforms: int, order: str = "random") -> list[np.ndarray]:
    """The feature order of each layer of an autoregressive recipe (MAF, IAF, NSF).

    Args:
        features: Event size.
        transforms: Number of layers.
        order: ``"random"``: `random_orders` (layer ``i`` takes ``permutation(features,
            seed=i)``, reversed where it repeats the previous layer's order);
            ``"alternate"``: ``autoregressive_order(features, i)`` (natural order in even
            layers, reversed in odd ones).

    Returns:
        One order per layer (``order[j]`` is the position of feature ``j``), int64.

    Examples:
        >>> from pyroflows import structure
        >>> [o.tolist() for o in structure.recipe_orders(3, 2, "alternate")]
        [[0, 1, 2], [2, 1, 0]]
    """
    features, transforms = _check_features(features), _check_count("transforms", transforms, 1)
    if _check_order(order) == "random":
        return random_orders(features, transforms)
    return [autoregressive_order(features, i) for i in range(transforms)]


def recipe_masks(features: int, transforms: int, order: str = "random") -> list[np.ndarray]:
    """The mask of each layer of a coupling recipe (NICE, RealNVP, NSF coupling).

    Args:
        features: Event size (at least 2).
        transforms: Number of layers.
        order: ``"random"``: layer ``i`` takes ``paired_random_mask(features, i)``;
            ``"alternate"``: ``alternating_mask(features, i % 2)`` (even features pass
            through in even layers, odd features in odd layers).

    Returns:
        One boolean mask per layer (``True``: passes through).

    Examples:
        >>> from pyroflows import structure
        >>> [m.tolist() for m in structure.recipe_masks(3, 2, "alternate")]
        [[True, False, True], [False, True, False]]
    """
    features = _check_features(features, 2)
    transforms = _check_count("transforms", transforms, 1)
    if _check_order(order) == "random":
        return [paired_random_mask(features, i) for i in range(transforms)]
    return [alternating_mask(features, i % 2) for i in range(transforms)]


# ------------------------------------------------------------------------------ images


def check_image_shape(shape: Sequence[int], name: str = "shape") -> tuple[int, int, int]:
    """``shape`` as a ``(C, H, W)`` tuple of positive ints; ``ValueError`` naming ``name``."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"{name} must be a (C, H, W) tuple, got {shape!r}") from None
    if len(dims) != 3 or not all(
        isinstance(d, int | np.integer) and not isinstance(d, bool) and d >= 1 for d in dims
    ):
        raise ValueError(f"{name} must be a (C, H, W) tuple of positive ints, got {shape!r}")
    return int(dims[0]), int(dims[1]), int(dims[2])


def checkerboard_mask(shape: Sequence[int], parity: int = 0) -> np.ndarray:
    """Boolean ``(C, H, W)`` checkerboard: ``True`` (pass through) where ``(h + w) % 2`` is
    ``parity``, the same pattern in every channel (RealNVP's spatial mask).

    Examples:
        >>> checkerboard_mask((1, 2, 2))[0]
        array([[ True, False],
               [False,  True]])
    """
    channels, height, width = check_image_shape(shape)
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")
    if height * width < 2:
        raise ValueError(f"a checkerboard mask needs H * W >= 2, got shape {tuple(shape)}")
    grid = (np.arange(height)[:, None] + np.arange(width)[None, :]) % 2 == parity
    return np.broadcast_to(grid, (channels, height, width)).copy()


def channel_mask(shape: Sequence[int], parity: int = 0) -> np.ndarray:
    """Boolean ``(C, H, W)`` channel mask: the first ``C // 2`` channels pass through
    (``parity`` 0) or the other ones (``parity`` 1). Needs ``C >= 2``.

    Examples:
        >>> channel_mask((2, 1, 1)).ravel()
        array([ True, False])
    """
    channels, height, width = check_image_shape(shape)
    if parity not in (0, 1):
        raise ValueError(f"parity must be 0 or 1, got {parity!r}")
    if channels < 2:
        raise ValueError(f"a channel mask needs C >= 2 channels, got shape {tuple(shape)}")
    first = np.arange(channels) < channels // 2
    keep = first if parity == 0 else ~first
    return np.broadcast_to(keep[:, None, None], (channels, height, width)).copy()
