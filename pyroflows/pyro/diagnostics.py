"""Diagnostics of variational guides: Pareto k-hat (PSIS) and ArviZ ``InferenceData``.

* `psis_diagnostic` draws ``num_samples`` guide traces, scores each with the model, and fits
  a generalised Pareto distribution to the largest importance weights
  ``log p(x, z) - log q(z)`` with ArviZ's PSIS (Vehtari et al., 2017/2024). ``k < 0.5`` is
  good, ``k < 0.7`` usable for importance sampling, larger means the guide misses mass.
* `to_inference_data` turns posterior draws of a guide into an ``arviz.InferenceData`` so
  that ``arviz.summary`` and the plots work.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pyro import poutine

__all__ = ["importance_log_weights", "psis_diagnostic", "to_inference_data"]


@torch.no_grad()
def importance_log_weights(
    model: Callable, guide: Callable, *args, num_samples: int = 1000, **kwargs
) -> np.ndarray:
    """``log p(x, z) - log q(z)`` for ``num_samples`` draws of ``guide`` (a numpy vector).

    Each draw runs the guide once and the model replayed on it (observed sites included in
    ``log p``). Auxiliary guide sites (as the packed latent of an autoguide) are part of
    ``log q``.

    Examples:
        >>> import torch, pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> importance_log_weights(model, guide, num_samples=5).round(6).tolist()
        [0.0, 0.0, 0.0, 0.0, 0.0]
    """
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples!r}")
    weights = np.empty(num_samples)
    for i in range(num_samples):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        weights[i] = float(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
    return weights


def psis_diagnostic(
    model: Callable, guide: Callable, *args, num_samples: int = 1000, **kwargs
) -> float:
    """Pareto k-hat of the guide's importance weights, computed with ArviZ's PSIS.

    Args:
        model: A Pyro model.
        guide: A guide for it (trained).
        *args: The model's arguments.
        num_samples: Importance samples (>= 100 recommended; the tail fit uses about
            ``3 * sqrt(num_samples)`` of them).
        **kwargs: The model's keyword arguments.

    Returns:
        k-hat (a float): below 0.5 good, below 0.7 usable, above 0.7 unreliable.

    Examples:
        >>> import torch, pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     pyro.sample("x", dist.Normal(0.0, 1.1))
        >>> k = psis_diagnostic(model, guide, num_samples=200)
    """
    import arviz

    log_weights = importance_log_weights(model, guide, *args, num_samples=num_samples, **kwargs)
    if not np.isfinite(log_weights).all():
        bad = int((~np.isfinite(log_weights)).sum())
        raise ValueError(
            f"{bad} of {num_samples} importance log-weights are not finite: the guide puts mass "
            "where the model has none (or the model is not finite there)"
        )
    _, k = arviz.psislw(log_weights)
    return float(np.asarray(k))


@torch.no_grad()
def to_inference_data(
    guide: Callable, *args, num_samples: int = 1000, num_chains: int = 1, **kwargs
):
    """Posterior draws of a guide as an ``arviz.InferenceData`` (group ``posterior``).

    The guide is run ``num_samples * num_chains`` times; every non-auxiliary sample site
    becomes a variable with dims ``(chain, draw, *site_shape)``. Chains are independent
    draws here (there is no Markov chain), so R-hat is ~1 by construction.

    Args:
        guide: A (trained) guide.
        *args: The model's arguments (the guide gets the same).
        num_samples: Draws per chain.
        num_chains: Number of chains to split the draws into.
        **kwargs: The model's keyword arguments.

    Examples:
        >>> import torch, pyro, pyro.distributions as dist
        >>> def guide():
        ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> idata = to_inference_data(guide, num_samples=10)
        >>> idata.posterior["x"].shape
        (1, 10, 2)
    """
    import arviz

    draws: dict[str, list[np.ndarray]] = {}
    for _ in range(num_samples * num_chains):
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["infer"].get("is_auxiliary"):
                continue
            draws.setdefault(name, []).append(site["value"].detach().cpu().numpy())
    if not draws:
        raise ValueError("the guide has no (non-auxiliary) sample sites to report")
    posterior = {
        name: np.stack(values).reshape(num_chains, num_samples, *values[0].shape)
        for name, values in draws.items()
    }
    return arviz.from_dict(posterior=posterior)
