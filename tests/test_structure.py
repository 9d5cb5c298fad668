"""``pyroflows.structure``: masks, permutations, autoregressive orders and MADE connectivity."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pyroflows import structure

# --------------------------------------------------------------------------- coupling masks


@pytest.mark.parametrize("features", [2, 3, 4, 7])
def test_half_mask(features):
    mask = structure.half_mask(features)
    assert mask.dtype == bool and mask.shape == (features,)
    np.testing.assert_array_equal(mask, np.arange(features) < features // 2)
    flipped = structure.half_mask(features, flip=True)
    np.testing.assert_array_equal(flipped, ~mask)
    assert mask.sum() == features // 2 and flipped.sum() == features - features // 2


@pytest.mark.parametrize("features", [2, 3, 4, 7])
def test_alternating_mask(features):
    even = structure.alternating_mask(features, parity=0)
    odd = structure.alternating_mask(features, parity=1)
    assert even.dtype == bool and even.shape == (features,)
    np.testing.assert_array_equal(even, np.arange(features) % 2 == 0)
    np.testing.assert_array_equal(odd, ~even)
    assert even.sum() == (features + 1) // 2 and odd.sum() == features // 2
    assert even.any() and (~even).any() and odd.any() and (~odd).any()


@pytest.mark.parametrize("features", [2, 3, 6, 11])
def test_random_mask_is_seeded_and_has_the_right_count(features):
    masks = [structure.random_mask(features, seed) for seed in range(20)]
    for seed, mask in enumerate(masks):
        assert mask.dtype == bool and mask.shape == (features,)
        assert mask.sum() == features // 2
        np.testing.assert_array_equal(mask, structure.random_mask(features, seed))
    # different seeds give different masks (there are C(features, features // 2) >= 2 masks)
    assert len({m.tobytes() for m in masks}) > 1


def test_random_mask_seed_value():
    """The mask is numpy's default_rng(seed).permutation, pinned: the JAX backend relies on it."""
    rng = np.random.default_rng(7)
    expected = np.zeros(6, dtype=bool)
    expected[rng.permutation(6)[:3]] = True
    np.testing.assert_array_equal(structure.random_mask(6, 7), expected)


@pytest.mark.parametrize(
    "call",
    [
        lambda: structure.half_mask(1),
        lambda: structure.half_mask(0),
        lambda: structure.alternating_mask(1),
        lambda: structure.alternating_mask(4, parity=2),
        lambda: structure.alternating_mask(4, parity=-1),
        lambda: structure.random_mask(1, seed=0),
        lambda: structure.random_mask(-3, seed=0),
    ],
    ids=["half-1", "half-0", "alternating-1", "parity-2", "parity-neg", "random-1", "random-neg"],
)
def test_masks_reject_bad_arguments(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("bad", [2.0, "4", True, None], ids=repr)
def test_features_must_be_an_int(bad):
    with pytest.raises(TypeError, match="features"):
        structure.half_mask(bad)
    with pytest.raises(TypeError, match="features"):
        structure.permutation(bad, 0)


def test_numpy_integers_are_accepted():
    np.testing.assert_array_equal(structure.half_mask(np.int64(4)), structure.half_mask(4))
    assert structure.made_degrees(np.int32(3), (4,))[0].tolist() == [1, 2, 3]


# --------------------------------------------------------------------------- permutations


@pytest.mark.parametrize("features", [1, 2, 5, 16])
def test_permutation_is_seeded_and_valid(features):
    for seed in range(5):
        perm = structure.permutation(features, seed)
        assert perm.dtype == np.int64 and perm.shape == (features,)
        np.testing.assert_array_equal(np.sort(perm), np.arange(features))
        np.testing.assert_array_equal(perm, structure.permutation(features, seed))
    np.testing.assert_array_equal(
        structure.permutation(features, 3), np.random.default_rng(3).permutation(features)
    )


@pytest.mark.parametrize("features", [1, 2, 5, 16])
def test_inverse_permutation_undoes(features):
    for seed in range(5):
        perm = structure.permutation(features, seed)
        inverse = structure.inverse_permutation(perm)
        assert inverse.dtype == np.int64
        np.testing.assert_array_equal(perm[inverse], np.arange(features))
        np.testing.assert_array_equal(inverse[perm], np.arange(features))
        values = np.random.default_rng(seed).normal(size=features)
        np.testing.assert_array_equal(values[perm][inverse], values)
    # lists work too, and a known case
    np.testing.assert_array_equal(structure.inverse_permutation([2, 0, 1]), [1, 2, 0])


@pytest.mark.parametrize(
    "bad",
    [[0, 0, 1], [1, 2, 3], [0, 2], [-1, 0], [[0, 1], [1, 0]]],
    ids=["duplicate", "shifted", "gap", "negative", "2d"],
)
def test_inverse_permutation_rejects_non_permutations(bad):
    with pytest.raises(ValueError, match="permutation"):
        structure.inverse_permutation(bad)


def test_permutation_rejects_bad_features():
    with pytest.raises(ValueError):
        structure.permutation(0, seed=0)


def test_autoregressive_order_alternates():
    for layer in range(4):
        order = structure.autoregressive_order(5, layer)
        expected = np.arange(5) if layer % 2 == 0 else np.arange(5)[::-1]
        np.testing.assert_array_equal(order, expected)
    # a copy, not a view into something shared
    order = structure.autoregressive_order(3, 1)
    order[0] = 99
    assert structure.autoregressive_order(3, 1)[0] == 2


# --------------------------------------------------------------------------- MADE


def _orders(features):
    yield "natural", None
    yield "reversed", np.arange(features)[::-1].copy()
    if features > 2:
        yield "seeded", structure.permutation(features, 11)


MADE_COMBOS = [
    (features, hidden, context, params, order_name, order)
    for features, hidden, context, params in itertools.product(
        [1, 2, 3, 5], [(), (1,), (3,), (8,), (8, 8), (2, 7, 3)], [0, 2], [1, 3]
    )
    for order_name, order in _orders(features)
]


def _connectivity(masks):
    """``paths[o, i] > 0`` iff some path of unmasked weights joins input ``i`` to output ``o``."""
    paths = masks[0]
    for mask in masks[1:]:
        paths = mask @ paths
    return paths


@pytest.mark.parametrize(
    "features, hidden, context, params, order_name, order",
    MADE_COMBOS,
    ids=[
        f"f{f}-h{'x'.join(map(str, h)) or 'none'}-c{c}-p{p}-{o}" for f, h, c, p, o, _ in MADE_COMBOS
    ],
)
def test_made_masks_are_autoregressive(features, hidden, context, params, order_name, order):
    masks = structure.made_masks(features, hidden, params, context, order)
    position = np.arange(features) if order is None else np.asarray(order)
    widths = [features + context, *hidden, features * params]
    assert len(masks) == len(hidden) + 1
    for mask, (n_in, n_out) in zip(masks, itertools.pairwise(widths), strict=True):
        assert mask.shape == (n_out, n_in) and mask.dtype == np.float64
        assert set(np.unique(mask)) <= {0.0, 1.0}

    paths = _connectivity(masks)  # (features * params, features + context)
    # output unit i * params + p belongs to feature i: feature-major layout
    out_feature = np.repeat(np.arange(features), params)
    allowed = position[None, :] < position[out_feature][:, None]  # (outputs, features)
    connected = paths[:, :features] > 0
    assert not (connected & ~allowed).any(), "an output depends on a later or its own input"
    if all(w >= features for w in hidden) or not hidden:
        # wide enough: every allowed dependence is there (no output is cut off needlessly)
        np.testing.assert_array_equal(connected, allowed)
    if context:
        # the context reaches every output
        assert (paths[:, features:] > 0).all()
    # each output feature's parameters see exactly the same inputs
    grouped = (paths > 0).reshape(features, params, features + context)
    assert (grouped == grouped[:, :1]).all()


@pytest.mark.parametrize("context", [0, 3])
def test_made_degrees(context):
    order = np.array([2, 0, 1])
    degrees = structure.made_degrees(3, (4, 5), context, order)
    assert len(degrees) == 3
    np.testing.assert_array_equal(degrees[0], [3, 1, 2] + [0] * context)
    low = 0 if context else 1
    for width, hidden in zip((4, 5), degrees[1:], strict=True):
        assert hidden.shape == (width,) and hidden.dtype == np.int64
        assert hidden.min() >= low and hidden.max() <= 2
        assert set(hidden.tolist()) == set(range(low, 3))


def test_made_single_feature_without_context_has_no_input_dependence():
    masks = structure.made_masks(1, (4,), 2, 0)
    assert (_connectivity(masks) == 0).all()
    assert masks[-1].shape == (2, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"features": 0, "hidden": (4,)},
        {"features": -2, "hidden": (4,)},
        {"features": 3, "hidden": (4, 0)},
        {"features": 3, "hidden": (-1,)},
        {"features": 3, "hidden": (4,), "order": [0, 1]},
        {"features": 3, "hidden": (4,), "order": [0, 1, 1]},
        {"features": 3, "hidden": (4,), "order": [1, 2, 3]},
        {"features": 3, "hidden": (4,), "order": [[0, 1, 2]]},
        {"features": 3, "hidden": (4,), "context": -1},
    ],
    ids=[
        "features-0",
        "features-neg",
        "hidden-0",
        "hidden-neg",
        "order-short",
        "order-duplicate",
        "order-shifted",
        "order-2d",
        "context-neg",
    ],
)
def test_made_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        structure.made_degrees(**kwargs)
    with pytest.raises(ValueError):
        structure.made_masks(params_per_feature=2, **kwargs)


# --------------------------------------------------------------------------- recipe structure


@pytest.mark.parametrize("features", [1, 2, 3, 4, 6, 13])
def test_random_orders_are_seeded_and_never_repeat_the_previous_layer(features):
    orders = structure.random_orders(features, 8)
    assert len(orders) == 8
    for i, order in enumerate(orders):
        assert order.dtype == np.int64
        np.testing.assert_array_equal(np.sort(order), np.arange(features))
        drawn = structure.permutation(features, seed=i)
        if i and np.array_equal(drawn, orders[i - 1]):
            np.testing.assert_array_equal(order, features - 1 - drawn)  # reversed
        else:
            np.testing.assert_array_equal(order, drawn)
        if i and features > 1:
            assert not np.array_equal(order, orders[i - 1])
    assert structure.random_orders(features, 3)[2].tolist() == orders[2].tolist()


def test_random_orders_values():
    # two features: the seeded draws are [0, 1] three times, then [1, 0]: alternation
    assert [o.tolist() for o in structure.random_orders(2, 4)] == [[0, 1], [1, 0], [0, 1], [1, 0]]
    # from 4 features on the rule does not apply here: plain seeded permutations
    for features in (13, 30, 64):
        for i, order in enumerate(structure.random_orders(features, 5)):
            np.testing.assert_array_equal(order, structure.permutation(features, seed=i))


@pytest.mark.parametrize("features", [2, 3, 6, 13])
def test_paired_random_mask_pairs_complement(features):
    for layer in range(6):
        mask = structure.paired_random_mask(features, layer)
        half = structure.random_mask(features, seed=layer // 2)
        np.testing.assert_array_equal(mask, ~half if layer % 2 else half)
        assert mask.any() and not mask.all()


def test_recipe_orders_and_masks():
    orders = structure.recipe_orders(7, 5)
    assert len(orders) == 5
    for order, expected in zip(orders, structure.random_orders(7, 5), strict=True):
        np.testing.assert_array_equal(order, expected)
    for i, order in enumerate(structure.recipe_orders(7, 5, "alternate")):
        np.testing.assert_array_equal(order, structure.autoregressive_order(7, i))
    masks = structure.recipe_masks(7, 5)
    for i, mask in enumerate(masks):
        np.testing.assert_array_equal(mask, structure.paired_random_mask(7, i))
    for i, mask in enumerate(structure.recipe_masks(7, 5, "alternate")):
        np.testing.assert_array_equal(mask, structure.alternating_mask(7, i % 2))
    # distinct pairs for enough features
    assert len({tuple(o) for o in structure.recipe_orders(13, 6)}) == 6
    assert set(structure.RECIPE_ORDERS) == {"random", "alternate"}


@pytest.mark.parametrize(
    "call",
    [
        lambda: structure.recipe_orders(3, 2, "reversed"),
        lambda: structure.recipe_masks(3, 2, "natural"),
        lambda: structure.recipe_orders(3, 0),
        lambda: structure.recipe_masks(1, 2),
        lambda: structure.random_orders(3, 0),
        lambda: structure.paired_random_mask(1, 0),
    ],
)
def test_recipe_structure_rejects_bad_arguments(call):
    with pytest.raises(ValueError):
        call()
