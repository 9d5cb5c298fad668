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
import pyro
import torch
from pyro import poutine
from pyro.infer.importance import vectorized_importance_weights
from pyro.poutine.util import site_is_subsample

__all__ = ["importance_log_weights", "psis_diagnostic", "to_inference_data"]


@torch.no_grad()
def importance_log_weights(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    vectorize: bool = False,
    max_plate_nesting: int | None = None,
    **kwargs,
) -> np.ndarray:
    """``log p(x, z) - log q(z)`` for ``num_samples`` draws of ``guide`` (a numpy vector).

    Each draw runs the guide once and the model replayed on it (observed sites included in
    ``log p``). Auxiliary guide sites (as the packed latent of an autoguide) are part of
    ``log q``.

    Args:
        model: A Pyro model.
        guide: A guide for it.
        *args: The model's arguments (the guide gets the same).
        num_samples: Number of draws (at least 2).
        vectorize: Draw all samples at once under one ``pyro.plate`` with Pyro's
            ``vectorized_importance_weights`` instead of one trace per draw. Much faster
            (a trace costs milliseconds of Pyro bookkeeping); it needs a model and guide
            that broadcast over a leading batch dimension, as
            ``Trace_ELBO(vectorize_particles=True)`` does.
        max_plate_nesting: The model's plate depth, for ``vectorize`` (default: found by
            tracing the guide and the model once).
        **kwargs: The model's keyword arguments.

    Examples:
        >>> import torch, pyro, pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> importance_log_weights(model, guide, num_samples=5).round(6).tolist()
        [0.0, 0.0, 0.0, 0.0, 0.0]
        >>> importance_log_weights(model, guide, num_samples=3, vectorize=True).tolist()
        [0.0, 0.0, 0.0]
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    if vectorize:
        if max_plate_nesting is None:
            max_plate_nesting = _plate_nesting(model, guide, args, kwargs)
        log_weights, _, _ = vectorized_importance_weights(
            model,
            guide,
            *args,
            num_samples=num_samples,
            max_plate_nesting=max_plate_nesting,
            **kwargs,
        )
        log_weights = log_weights.detach().cpu().double().numpy()
        if log_weights.shape != (num_samples,):
            raise ValueError(
                f"vectorize=True gave log-weights of shape {log_weights.shape}, expected "
                f"({num_samples},): the model or guide does not broadcast over a leading batch "
                "dimension (or max_plate_nesting is too small); use vectorize=False"
            )
        return log_weights
    weights = np.empty(num_samples)
    for i in range(num_samples):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        weights[i] = float(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
    return weights


def _plate_nesting(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
    """The deepest vectorized plate of one guide trace and the model replayed on it."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return _deepest_plate(guide_trace, model_trace)


def _deepest_plate(*traces) -> int:
    """How many batch dimensions the vectorized plates of ``traces`` take (0: no plate)."""
    dims = [
        -frame.dim
        for trace in traces
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


def psis_diagnostic(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int = 1000,
    vectorize: bool = False,
    max_plate_nesting: int | None = None,
    **kwargs,
) -> float:
    """Pareto k-hat of the guide's importance weights, computed with ArviZ's PSIS.

    Args:
        model: A Pyro model.
        guide: A guide for it (trained).
        *args: The model's arguments.
        num_samples: Importance samples (>= 100 recommended; the tail fit uses about
            ``3 * sqrt(num_samples)`` of them).
        vectorize: Draw all samples under one ``pyro.plate`` (see `importance_log_weights`).
        max_plate_nesting: The model's plate depth, for ``vectorize`` (default: found).
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

    log_weights = importance_log_weights(
        model,
        guide,
        *args,
        num_samples=num_samples,
        vectorize=vectorize,
        max_plate_nesting=max_plate_nesting,
        **kwargs,
    )
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
    guide: Callable,
    *args,
    num_samples: int = 1000,
    num_chains: int = 1,
    vectorize: bool = False,
    max_plate_nesting: int | None = None,
    **kwargs,
):
    """Posterior draws of a guide as an ``arviz.InferenceData`` (group ``posterior``).

    The guide is run ``num_samples * num_chains`` times (or once under a ``pyro.plate`` of
    that size, with ``vectorize=True``); every non-auxiliary sample site becomes a variable
    with dims ``(chain, draw, *site_shape)``. Chains are independent draws here (there is no
    Markov chain), so R-hat is ~1 by construction.

    Args:
        guide: A (trained) guide.
        *args: The model's arguments (the guide gets the same).
        num_samples: Draws per chain.
        num_chains: Number of chains to split the draws into.
        vectorize: Draw everything in one guide run under a ``pyro.plate`` (for guides
            that broadcast over a leading batch dimension, as autoguides do) instead of one
            trace per draw.
        max_plate_nesting: The guide's plate depth, for ``vectorize`` (default: found by
            tracing the guide once).
        **kwargs: The model's keyword arguments.

    Examples:
        >>> import torch, pyro, pyro.distributions as dist
        >>> def guide():
        ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> idata = to_inference_data(guide, num_samples=10)
        >>> idata.posterior["x"].shape
        (1, 10, 2)
        >>> to_inference_data(guide, num_samples=10, vectorize=True).posterior["x"].shape
        (1, 10, 2)
    """
    import arviz

    total = num_samples * num_chains
    if vectorize:
        draws = _vectorized_draws(guide, args, kwargs, total, max_plate_nesting)
    else:
        draws = {}
        for _ in range(total):
            trace = poutine.trace(guide).get_trace(*args, **kwargs)
            for name, value in _reported_sites(trace).items():
                draws.setdefault(name, []).append(value)
        draws = {name: np.stack(values) for name, values in draws.items()}
    if not draws:
        raise ValueError("the guide has no (non-auxiliary) sample sites to report")
    posterior = {
        name: values.reshape(num_chains, num_samples, *values.shape[1:])
        for name, values in draws.items()
    }
    return arviz.from_dict(posterior=posterior)


def _reported_sites(trace) -> dict[str, np.ndarray]:
    """The values of a trace's non-auxiliary sample sites, as numpy arrays (no plate indices)."""
    return {
        name: site["value"].detach().cpu().numpy()
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["infer"].get("is_auxiliary")
        and not site_is_subsample(site)
    }


def _vectorized_draws(
    guide: Callable, args: tuple, kwargs: dict, total: int, max_plate_nesting: int | None
) -> dict[str, np.ndarray]:
    """``total`` draws of every reported site from one guide run under a ``pyro.plate``.

    A first, unbatched run finds the site shapes (and the plate depth). It runs on a forked
    RNG state, so the draws are those of the plated run alone: after ``pyro.set_rng_seed``
    they are the same as the user's own ``pyro.plate`` run of the guide would give.
    """
    with torch.random.fork_rng():
        one = poutine.trace(guide).get_trace(*args, **kwargs)
    shapes = {name: value.shape for name, value in _reported_sites(one).items()}
    if max_plate_nesting is None:
        max_plate_nesting = _deepest_plate(one)
    with pyro.plate("_draws", total, dim=-max_plate_nesting - 1):
        trace = poutine.trace(guide).get_trace(*args, **kwargs)
    draws = {}
    for name, value in _reported_sites(trace).items():
        shape = shapes.get(name)
        if shape is None or value.size != total * int(np.prod(shape)) or value.shape[0] != total:
            raise ValueError(
                f"vectorize=True gave site {name!r} the shape {value.shape}, expected "
                f"({total}, ..., {', '.join(map(str, shape or ()))}): the guide does not "
                "broadcast over a leading batch dimension; use vectorize=False"
            )
        draws[name] = value.reshape(total, *shape)
    return draws
