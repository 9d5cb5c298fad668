"""``get_params`` / ``set_params``: a flow's weights as a dict of numpy arrays.

The names are torch's ``named_parameters()`` names (``transforms.3.conditioner.layers.0.weight``)
and the layouts are torch's (linear weights ``(out, in)``). The JAX backend uses the same
names and layouts, so the dict moves a trained flow between backends. Frozen values that a
layer lists in ``state_buffers`` (`AutoFlow`'s warm start: ``transforms.N.loc`` and
``transforms.N.scale_tril``) travel with the parameters, as they do in JAX.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from pyroflows.pyro.linear import ActNorm
from pyroflows.pyro.nn import LipschitzLinear

__all__ = ["get_params", "set_params"]


def _head(names: list[str]) -> str:
    return str(names[:5]) + ("..." if len(names) > 5 else "")


def _named_values(flow: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters, and the buffers a module lists in ``state_buffers`` (frozen values
    that JAX keeps as arrays of the flow, as `AutoFlow`'s warm start ``FixedAffine``)."""
    values = dict(flow.named_parameters())
    for prefix, module in flow.named_modules():
        for buffer in getattr(module, "state_buffers", ()):
            values[f"{prefix}.{buffer}" if prefix else buffer] = getattr(module, buffer)
    return values


def get_params(flow: nn.Module) -> dict[str, np.ndarray]:
    """The flow's parameters (and ``state_buffers``) as ``{name: numpy array}`` (copies, on
    the CPU).

    Examples:
        >>> import pyroflows.pyro as pf
        >>> params = pf.get_params(pf.MAF(features=2, transforms=1, hidden=(4,)))
        >>> sorted(params)[:2]
        ['transforms.0.conditioner.layers.0.bias', 'transforms.0.conditioner.layers.0.weight']
    """
    return {name: p.detach().cpu().numpy().copy() for name, p in _named_values(flow).items()}


def set_params(flow: nn.Module, params: Mapping[str, np.ndarray]) -> nn.Module:
    """Copy ``params`` (as from `get_params`, possibly of the other backend) into ``flow``.

    Every parameter of ``flow`` must be present with the same shape, and no other name may
    be. Values are cast to each parameter's dtype and device. ``ActNorm`` layers are marked
    initialised. Returns ``flow`` (modified in place).

    Examples:
        >>> import pyroflows.pyro as pf
        >>> a = pf.MAF(features=2, transforms=1, hidden=(4,))
        >>> b = pf.set_params(pf.MAF(features=2, transforms=1, hidden=(4,)), pf.get_params(a))
    """
    own = _named_values(flow)
    missing = sorted(set(own) - set(params))
    unexpected = sorted(set(params) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"params do not match the flow: missing {_head(missing)}, "
            f"unexpected {_head(unexpected)}"
        )
    for name, p in own.items():
        value = np.asarray(params[name])
        if tuple(value.shape) != tuple(p.shape):
            raise ValueError(
                f"params[{name!r}] must have shape {tuple(p.shape)}, got {tuple(value.shape)}"
            )
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(torch.as_tensor(np.asarray(params[name]), dtype=p.dtype, device=p.device))
    for module in flow.modules():
        if isinstance(module, ActNorm):
            module.initialized.fill_(True)
        if isinstance(module, LipschitzLinear):
            module.mark_refined()  # the loaded power-iteration vectors are used as they are
    return flow
