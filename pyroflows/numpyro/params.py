"""``get_params`` / ``set_params``: a flow's weights as a dict of numpy arrays.

Names are the flow's tree paths, with stacked runs of layers expanded to one layer each,
written as torch writes ``named_parameters()`` (``transforms.3.conditioner.layers.0.weight``);
layouts are torch's (linear weights ``(out, in)``), so the dict moves a trained flow between
the backends. Only the inexact (floating) arrays under ``flow.transforms`` are parameters:
masks (boolean), index arrays (integer) and the base distribution are not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from pyroflows.numpyro.linear import ActNorm

__all__ = ["get_params", "set_params"]


def _name(path: tuple) -> str:
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    return ".".join(parts)


def _rescan(obj: Any, scan: bool) -> Any:
    """``obj`` with every chain and flow rebuilt with ``scan`` (stacks expanded or formed)."""
    from pyroflows.numpyro.core import Chain, unstack
    from pyroflows.numpyro.distributions import Flow

    def fix(node: Any) -> Any:
        if isinstance(node, Chain):
            return Chain([_rescan(t, scan) for t in unstack(node.transforms)], scan=scan)
        if isinstance(node, Flow):
            layers = [_rescan(t, scan) for t in unstack(node.transforms)]
            return Flow(layers, node.base, scan=scan)
        return node

    if isinstance(obj, (Chain, Flow)):
        return fix(obj)
    return jax.tree_util.tree_map(fix, obj, is_leaf=lambda n: isinstance(n, (Chain, Flow)))


def _named_leaves(module: Any) -> list[tuple[str, Any]]:
    leaves = jax.tree_util.tree_flatten_with_path(module)[0]
    return [(_name(path), leaf) for path, leaf in leaves]


def _is_param(name: str, leaf: Any, module: Any = None) -> bool:
    """A flow's parameters are the inexact arrays under ``transforms`` (not its base); a bare
    bijection's are all its inexact arrays, named as torch names them."""
    from pyroflows.numpyro.distributions import Flow

    if isinstance(module, Flow) and not name.startswith("transforms."):
        return False
    return eqx.is_inexact_array(leaf)


def _head(names: list[str]) -> str:
    return str(names[:5]) + ("..." if len(names) > 5 else "")


def get_params(flow: eqx.Module) -> dict[str, np.ndarray]:
    """The flow's parameters as ``{name: numpy array}``.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.MAF(features=2, transforms=1, hidden=(4,), key=jax.random.key(0))
        >>> sorted(pfj.get_params(flow))[:2]
        ['transforms.0.conditioner.layers.0.bias', 'transforms.0.conditioner.layers.0.weight']
    """
    return {
        name: np.array(leaf)
        for name, leaf in _named_leaves(_rescan(flow, scan=False))
        if _is_param(name, leaf, flow)
    }


def set_params(flow: eqx.Module, params: Mapping[str, np.ndarray]) -> eqx.Module:
    """A copy of ``flow`` holding ``params`` (as from `get_params` of either backend).

    Every parameter of ``flow`` must be present with the same shape, and no other name may
    be. Values are cast to each parameter's dtype. ``ActNorm`` layers are marked initialised.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> a = pfj.MAF(features=2, transforms=1, hidden=(4,), key=jax.random.key(0))
        >>> b = pfj.MAF(features=2, transforms=1, hidden=(4,), key=jax.random.key(1))
        >>> b = pfj.set_params(b, pfj.get_params(a))
    """
    flow = _rescan(flow, scan=False)  # one layer per name, as in torch
    leaves, treedef = jax.tree_util.tree_flatten_with_path(flow)
    own = {_name(path): leaf for path, leaf in leaves if _is_param(_name(path), leaf, flow)}
    missing = sorted(set(own) - set(params))
    unexpected = sorted(set(params) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"params do not match the flow: missing {_head(missing)}, "
            f"unexpected {_head(unexpected)}"
        )
    for name, leaf in own.items():
        value = np.asarray(params[name])
        if tuple(value.shape) != tuple(leaf.shape):
            raise ValueError(
                f"params[{name!r}] must have shape {tuple(leaf.shape)}, got {tuple(value.shape)}"
            )
    new_leaves = []
    for path, leaf in leaves:
        name = _name(path)
        if name in own:
            leaf = jnp.asarray(np.asarray(params[name]), dtype=leaf.dtype)
        new_leaves.append(leaf)
    flow = jax.tree_util.tree_unflatten(treedef, new_leaves)
    flow = jax.tree_util.tree_map(
        lambda m: m.with_values(m.loc, m.log_scale) if isinstance(m, ActNorm) else m,
        flow,
        is_leaf=lambda m: isinstance(m, ActNorm),
    )
    return _rescan(flow, scan=True)
