"""The recipes' layer structure: feature orders and coupling masks in both backends.

* The default, ``order="random"``: autoregressive layer ``i`` takes
  ``structure.permutation(features, seed=i)`` (reversed where it repeats the previous
  layer's order); coupling layers ``2k`` and ``2k + 1`` a seeded random half of the
  features (``structure.random_mask(features, seed=k)``) and its complement as pass-through
  features.
* ``order="alternate"``: the structure of pyroflows 0.1.0 (natural / reversed orders, even /
  odd masks).
* Both backends build the same structure; the JAX flows still stack their layers.
* The affine density recipes (MAF, RealNVP) bound each layer's log-scale by 1 (0.1.0: 3);
  IAF, a guide, keeps 3.
* ``AutoFlow`` keeps building the alternating structure with bound 3 (its published
  results used them), with the same weights as before for the same seed.
"""

from __future__ import annotations

import jax
import numpy as np
import numpyro
import numpyro.distributions as nd
import pyro
import pyro.distributions as pd
import pytest
import torch

import pyroflows.numpyro as pfj
import pyroflows.pyro as pf
from pyroflows import _autoflow, structure
from pyroflows.numpyro.core import Stack

AUTOREGRESSIVE = [("MAF", {}), ("IAF", {}), ("NSF", {})]
COUPLING = [("RealNVP", {}), ("NICE", {}), ("NSF", {"mode": "coupling"})]
# One event size and width everywhere: JAX compiles its eager ops once per shape, so the
# JAX flows of all tests share the compiled initialisers.
FEATURES, TRANSFORMS, HIDDEN = 5, 4, (8,)


def _torch_layers(flow: pf.Flow) -> list:
    return [t for t in flow.transforms if isinstance(t, pf.MaskedAutoregressive | pf.Coupling)]


def _jax_layers(flow: pfj.Flow) -> list:
    return [t for t in flow.layers if isinstance(t, pfj.MaskedAutoregressive | pfj.Coupling)]


def _mask(layer) -> np.ndarray:
    """Pass-through mask of a coupling layer of either backend."""
    mask = np.zeros(layer.features, dtype=bool)
    mask[np.asarray(layer.identity_index)] = True
    return mask


def _structure(layer) -> np.ndarray:
    """A layer's order (autoregressive) or pass-through mask (coupling)."""
    if isinstance(layer, pf.MaskedAutoregressive | pfj.MaskedAutoregressive):
        return np.asarray(layer.order)
    return _mask(layer)


def _torch_flow(name: str, features: int = FEATURES, **kwargs) -> pf.Flow:
    return getattr(pf, name)(features, transforms=TRANSFORMS, hidden=HIDDEN, **kwargs)


def _jax_flow(name: str, **kwargs) -> pfj.Flow:
    return getattr(pfj, name)(
        FEATURES, transforms=TRANSFORMS, hidden=HIDDEN, key=jax.random.key(0), **kwargs
    )


def _expected_random(kind: str, features: int, i: int) -> np.ndarray:
    """Layer ``i`` of the default structure, written out from the seeded primitives."""
    if kind == "autoregressive":
        order = structure.permutation(features, seed=i)
        if i and np.array_equal(order, _expected_random(kind, features, i - 1)):
            return features - 1 - order
        return order
    half = structure.random_mask(features, seed=i // 2)
    return ~half if i % 2 else half


def _expected_alternate(kind: str, features: int, i: int) -> np.ndarray:
    if kind == "autoregressive":
        natural = np.arange(features)
        return natural[::-1] if i % 2 else natural
    return np.arange(features) % 2 == i % 2


CASES = [("autoregressive", n, kw) for n, kw in AUTOREGRESSIVE] + [
    ("coupling", n, kw) for n, kw in COUPLING
]
IDS = [f"{n}-{kind}" for kind, n, _ in CASES]


@pytest.mark.parametrize(("kind", "name", "kwargs"), CASES, ids=IDS)
def test_default_structure_in_both_backends(kind, name, kwargs):
    """Default ``order="random"``: the same seeded pairs in torch and JAX, and the JAX
    layers still stack (arrays of equal shapes; period 2 for coupling on 5 features)."""
    flow_jax = _jax_flow(name, **kwargs)
    for layers in (_torch_layers(_torch_flow(name, **kwargs)), _jax_layers(flow_jax)):
        assert len(layers) == TRANSFORMS
        for i, layer in enumerate(layers):
            np.testing.assert_array_equal(_structure(layer), _expected_random(kind, FEATURES, i))
    stacks = [t for t in flow_jax.transforms if isinstance(t, Stack)]
    assert len(stacks) == 1 and stacks[0].steps * stacks[0].period == TRANSFORMS


@pytest.mark.parametrize(("kind", "name", "kwargs"), CASES, ids=IDS)
def test_alternate_is_the_old_structure_in_both_backends(kind, name, kwargs):
    flow_jax = _jax_flow(name, order="alternate", **kwargs)
    torch_layers = _torch_layers(_torch_flow(name, order="alternate", **kwargs))
    for layers in (torch_layers, _jax_layers(flow_jax)):
        for i, layer in enumerate(layers):
            np.testing.assert_array_equal(_structure(layer), _expected_alternate(kind, FEATURES, i))
    assert any(isinstance(t, Stack) for t in flow_jax.transforms)


@pytest.mark.parametrize("features", [1, 2, 3, 8])
def test_autoregressive_orders_for_other_sizes(features):
    """Consecutive layers never share an order where there are two or more (2 features:
    the natural and the reversed order in turn, as ``order="alternate"``)."""
    layers = _torch_layers(_torch_flow("MAF", features))
    orders = [_structure(layer) for layer in layers]
    for i, order in enumerate(orders):
        np.testing.assert_array_equal(order, _expected_random("autoregressive", features, i))
    if features > 1:
        assert all(not np.array_equal(a, b) for a, b in zip(orders, orders[1:]))
    if features == 2:
        for i, order in enumerate(orders):
            np.testing.assert_array_equal(order, _expected_alternate("autoregressive", 2, i))


@pytest.mark.parametrize("features", [2, 3, 8])
def test_coupling_pairs_transform_every_feature(features):
    layers = _torch_layers(_torch_flow("RealNVP", features))
    for i, layer in enumerate(layers):
        np.testing.assert_array_equal(_mask(layer), _expected_random("coupling", features, i))
    for first, second in zip(layers[0::2], layers[1::2], strict=True):
        np.testing.assert_array_equal(_mask(first), ~_mask(second))


def test_two_features_coupling_is_unchanged():
    """On 2 features the random halves of seeds 0, 1, 2 happen to be the alternation, so
    the two-moons examples' ``NSF(mode="coupling")`` with 6 layers (and its published
    numbers) is the same flow under either order."""
    for a, b in zip(
        structure.recipe_masks(2, 6), structure.recipe_masks(2, 6, "alternate"), strict=True
    ):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name, default", [("MAF", 1.0), ("IAF", 3.0), ("RealNVP", 1.0)])
def test_affine_recipes_default_bound(name, default):
    for flow in (_torch_flow(name), _jax_flow(name)):
        layers = _torch_layers(flow) if isinstance(flow, pf.Flow) else _jax_layers(flow)
        assert [layer.transformer.bound for layer in layers] == [default] * TRANSFORMS
    layers = _torch_layers(_torch_flow(name, bound=2.0))
    assert [layer.transformer.bound for layer in layers] == [2.0] * TRANSFORMS


@pytest.mark.parametrize("name", ["MAF", "IAF", "NSF", "RealNVP", "NICE"])
def test_unknown_order_is_rejected(name):
    with pytest.raises(ValueError, match="order must be one of"):
        _torch_flow(name, order="reversed")
    with pytest.raises(ValueError, match="order must be one of"):
        _jax_flow(name, order="reversed")


# --------------------------------------------------------------------------- AutoFlow


def test_recipe_kwargs_default_to_the_old_structure():
    for name in _autoflow.RECIPE_NAMES:
        kwargs = _autoflow.recipe_kwargs(name, 3, {})
        if name in _autoflow.RESIDUAL_RECIPES:  # no orders: built in the guide direction
            assert kwargs["invert"] is True and "order" not in kwargs
            assert kwargs["transforms"] == (8 if name in ("planar", "radial") else 3)
            continue
        if name == "ffjord":  # one continuous block, no orders
            assert kwargs == {"transforms": 1, "hidden": (32, 32)}
            continue
        assert kwargs["order"] == "alternate"
        assert kwargs.get("bound") == (3.0 if name in ("iaf", "maf", "realnvp") else None)
    assert _autoflow.recipe_kwargs("maf", 3, {"order": "random"})["order"] == "random"
    assert _autoflow.recipe_kwargs("iaf", 3, {"bound": 1.0})["bound"] == 1.0


def _pyro_model():
    pyro.sample("a", pd.Normal(torch.zeros(2), 1.0).to_event(1))
    pyro.sample("b", pd.Normal(torch.zeros(3), 1.0).to_event(1))


def _numpyro_model():
    numpyro.sample("a", nd.Normal(np.zeros(2), 1.0).to_event(1))
    numpyro.sample("b", nd.Normal(np.zeros(3), 1.0).to_event(1))


@pytest.mark.parametrize("flow", ["iaf", "maf", "nsf", "realnvp", "nice"])
def test_autoflow_builds_the_same_flows_as_before(flow):
    """AutoFlow's flows have the alternating structure (and affine bound 3) in both
    backends, and the torch flow has the weights of the explicit ``order="alternate"``
    recipe built from the same seed."""
    d = FEATURES
    options = {"transforms": TRANSFORMS, "hidden": HIDDEN}
    guide = pf.AutoFlow(_pyro_model, flow=flow, **options)
    guide.latent_dim = d
    torch.manual_seed(0)
    built = guide._build_flow()
    torch.manual_seed(0)
    kwargs = {"mode": "coupling"} if flow == "nsf" else {}
    explicit = pf.infer.RECIPES[flow](d, order="alternate", **options, **kwargs)
    state, expected = built.state_dict(), explicit.state_dict()
    assert state.keys() == expected.keys()
    for key in state:
        torch.testing.assert_close(state[key], expected[key], rtol=0, atol=0)

    guide_jax = pfj.AutoFlow(_numpyro_model, flow=flow, key=jax.random.key(0), **options)
    guide_jax.latent_dim = d
    built_jax = guide_jax._build_flow(jax.random.key(0))
    kind = "autoregressive" if flow in ("iaf", "maf") else "coupling"
    for layers in (_torch_layers(built), _jax_layers(built_jax)):
        assert len(layers) == TRANSFORMS
        for i, layer in enumerate(layers):
            np.testing.assert_array_equal(_structure(layer), _expected_alternate(kind, d, i))
            if flow in ("iaf", "maf", "realnvp"):
                assert layer.transformer.bound == 3.0


def test_amortized_iaf_keeps_the_alternating_orders():
    """AmortizedIAF builds its published structure (``order="alternate"``) in both backends
    unless asked for another."""
    torch_iaf = pf.AmortizedIAF(FEATURES, 2, transforms=TRANSFORMS, hidden=HIDDEN)
    jax_iaf = pfj.AmortizedIAF(FEATURES, 2, TRANSFORMS, HIDDEN, key=jax.random.key(0))
    for layers in (_torch_layers(torch_iaf.flow), _jax_layers(jax_iaf.flow)):
        assert len(layers) == TRANSFORMS
        for i, layer in enumerate(layers):
            expected = _expected_alternate("autoregressive", FEATURES, i)
            np.testing.assert_array_equal(_structure(layer), expected)
    shuffled = pf.AmortizedIAF(FEATURES, 2, TRANSFORMS, HIDDEN, order="random")
    for i, layer in enumerate(_torch_layers(shuffled.flow)):
        np.testing.assert_array_equal(
            _structure(layer), _expected_random("autoregressive", FEATURES, i)
        )
