"""Amortized flow posteriors of a VAE: ``AmortizedIAF`` (Kingma et al., 2016) and
``AmortizedFlow``, which also builds planar, radial and Sylvester posteriors (van den Berg
et al., 2018).

An encoder maps a data point ``x`` to a mean, a scale and a context vector ``h``. The
posterior draw is

    z0 = loc + scale * eps,    eps ~ Normal(0, I)
    z  = F_h(z0)               (a conditional flow whose networks also read h)

so ``q(z | x)`` is a `FlowDistribution` with base ``Normal(loc, scale)`` (batched, one per
data point) and the flow's layers conditioned on ``h``: for IAF the MADEs read ``h``; for the
planar, radial and Sylvester layers, every parameter of a layer is its own value plus a
network of ``h`` (the paper's amortized flows). Sampling is one pass, and the ELBO scores the
guide's own draws from the cache, never through an inverse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro.distributions as dist
from torch import Tensor, nn

from pyroflows._autoflow import amortized_kwargs
from pyroflows.pyro import flows as recipes
from pyroflows.pyro.core import check_event
from pyroflows.pyro.distributions import FlowDistribution

__all__ = ["AmortizedFlow", "AmortizedIAF"]

_RECIPES = {
    "iaf": recipes.IAF,
    "planar": recipes.Planar,
    "radial": recipes.Radial,
    "sylvester": recipes.Sylvester,
}


class AmortizedFlow(nn.Module):
    """A conditional flow refining an encoder's diagonal Gaussian, for VAE guides.

    ``posterior(loc, scale, h)`` returns ``q(z | x)``: ``Normal(loc, scale)`` pushed through
    the layers of the recipe ``flow`` conditioned on ``h``. The layers are the recipe's
    (``posterior.flow``), so `get_params` / `set_params` on it carry the weights across
    backends. Planar, radial and Sylvester layers are built with ``invert=True``: their
    explicit map is the sampling direction.

    Args:
        features: Latent size.
        context: Size of the encoder's context vector ``h`` (0: no context).
        flow: ``"iaf"``, ``"planar"``, ``"radial"`` or ``"sylvester"``.
        transforms: Number of layers.
        hidden: Hidden sizes of each layer's network of ``h`` (for IAF, of its MADE).
        **flow_kwargs: Passed to the recipe: ``kind``, ``columns``, ``reflections`` for
            Sylvester; ``bound`` and ``order`` for IAF (default ``bound=3.0``,
            ``order="alternate"``); ``activation``.

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> posterior = pf.AmortizedFlow(2, 8, "sylvester", transforms=2, hidden=(16,))
        >>> q = posterior(torch.zeros(5, 2), torch.ones(5, 2), torch.randn(5, 8))
        >>> z = q.rsample()
        >>> q.log_prob(z).shape
        torch.Size([5])
    """

    def __init__(
        self,
        features: int,
        context: int,
        flow: str = "iaf",
        transforms: int = 2,
        hidden: Sequence[int] = (64, 64),
        **flow_kwargs: Any,
    ) -> None:
        super().__init__()
        self.kind, kwargs = amortized_kwargs(flow, flow_kwargs)
        self.flow = _RECIPES[self.kind](features, context, transforms, hidden, **kwargs)
        self.features = self.flow.features
        self.context_features = self.flow.context_features

    def forward(
        self, loc: Tensor, scale: Tensor, context: Tensor | None = None
    ) -> FlowDistribution:
        """The posterior ``q(z | x)`` for the encoder's ``loc``, ``scale`` and ``context``.

        Args:
            loc: Mean of the Gaussian stage, ``(..., features)``.
            scale: Its standard deviation, positive, same shape as ``loc``.
            context: The encoder's context ``h``, ``(..., context)``.

        Returns:
            A `FlowDistribution` with event shape ``(features,)`` and the batch shape of
            ``loc`` broadcast with ``context``.
        """
        check_event("loc", loc, self.features)
        check_event("scale", scale, self.features)
        if scale.shape != loc.shape:
            raise ValueError(
                f"scale must have the shape of loc {tuple(loc.shape)}, got {tuple(scale.shape)}"
            )
        if not bool((scale > 0).all()) or not bool(scale.isfinite().all()):
            raise ValueError("scale must be positive and finite everywhere (the encoder's output)")
        if not bool(loc.isfinite().all()):
            raise ValueError("loc holds non-finite entries (NaN or inf): check the encoder")
        base = dist.Normal(loc, scale).to_event(1)
        return FlowDistribution(base, self.flow.transforms, context)

    def extra_repr(self) -> str:
        return f"flow={self.kind!r}, features={self.features}, context={self.context_features}"


class AmortizedIAF(AmortizedFlow):
    """A conditional IAF refining an encoder's diagonal Gaussian, for VAE guides:
    ``AmortizedFlow(features, context, "iaf", ...)``.

    ``iaf(loc, scale, h)`` returns the posterior ``q(z | x)``: ``Normal(loc, scale)`` pushed
    through ``transforms`` IAF layers conditioned on ``h``. The layers are those of the
    `IAF` recipe (``iaf.flow``), so `get_params` / `set_params` on ``iaf.flow`` carry the
    weights across backends.

    Args:
        features: Latent size.
        context: Size of the encoder's context vector ``h`` (0: no context).
        transforms: Number of IAF layers.
        hidden: Hidden sizes of each layer's MADE.
        bound: Bound on the affine log-scale (as in `IAF`).
        order: The IAF layers' feature orders, as in `IAF`; default ``"alternate"``
            (natural and reversed in turn), the structure its published VAE results were
            measured with (the recipes' default is ``"random"``).
        activation: MADE activation.

    Examples:
        >>> import torch, pyro
        >>> import pyroflows.pyro as pf
        >>> iaf = pf.AmortizedIAF(features=2, context=8, transforms=2, hidden=(16,))
        >>> loc, scale, h = torch.zeros(5, 2), torch.ones(5, 2), torch.randn(5, 8)
        >>> q = iaf(loc, scale, h)  # in a guide: pyro.sample("z", q) under a plate of 5
        >>> z = q.rsample()
        >>> q.log_prob(z).shape
        torch.Size([5])
    """

    def __init__(
        self,
        features: int,
        context: int,
        transforms: int = 2,
        hidden: Sequence[int] = (64, 64),
        *,
        bound: float = 3.0,
        order: str = "alternate",
        activation: str = "relu",
    ) -> None:
        super().__init__(
            features,
            context,
            "iaf",
            transforms,
            hidden,
            bound=bound,
            order=order,
            activation=activation,
        )

    def extra_repr(self) -> str:
        return f"features={self.features}, context={self.context_features}"
