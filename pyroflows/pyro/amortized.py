"""``AmortizedIAF``: the amortized IAF posterior of a VAE (Kingma et al., 2016).

An encoder maps a data point ``x`` to a mean, a scale and a context vector ``h``. The
posterior draw is

    z0 = loc + scale * eps,    eps ~ Normal(0, I)
    z  = IAF_h(z0)             (a conditional IAF whose MADEs also read h)

so ``q(z | x)`` is a `FlowDistribution` with base ``Normal(loc, scale)`` (batched, one per
data point) and the IAF layers conditioned on ``h``. Sampling is one pass, and the ELBO
scores the guide's own draws from the cache, never through the sequential inverse.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
from torch import Tensor, nn

from pyroflows.pyro.core import check_event
from pyroflows.pyro.distributions import FlowDistribution
from pyroflows.pyro.flows import IAF

__all__ = ["AmortizedIAF"]


class AmortizedIAF(nn.Module):
    """A conditional IAF refining an encoder's diagonal Gaussian, for VAE guides.

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
        super().__init__()
        self.flow = IAF(
            features, context, transforms, hidden, bound=bound, order=order, activation=activation
        )
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
        return f"features={self.features}, context={self.context_features}"
