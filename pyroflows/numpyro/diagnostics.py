"""Diagnostics of variational guides: Pareto k-hat (PSIS) and ArviZ ``InferenceData``.

The JAX twin of `pyroflows.pyro.diagnostics`, with NumPyro's explicit state: the trained
``params`` (from ``svi.get_params(state)``) and a PRNG ``key`` are keyword arguments.

* `psis_diagnostic` draws ``num_samples`` guide traces (vectorised with ``jax.vmap``),
  scores each with the model, and fits a generalised Pareto distribution to the largest
  importance weights ``log p(x, z) - log q(z)`` with ArviZ's PSIS. ``k < 0.5`` is good,
  ``k < 0.7`` usable, larger means the guide misses mass.
* `to_inference_data` turns posterior draws of a guide into an ``arviz.InferenceData``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax import Array
from numpyro import handlers
from numpyro.infer.util import log_density

__all__ = ["importance_log_weights", "psis_diagnostic", "to_inference_data"]


def _key(key: Array | None) -> Array:
    return jax.random.key(0) if key is None else key


def _check_num_samples(num_samples: int) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an int >= 2, got {num_samples!r}")
    return num_samples


def importance_log_weights(
    model: Callable,
    guide: Callable,
    *args,
    params: dict,
    key: Array | None = None,
    num_samples: int = 1000,
    **kwargs,
) -> np.ndarray:
    """``log p(x, z) - log q(z)`` for ``num_samples`` draws of ``guide`` (a numpy vector).

    Args:
        model: A NumPyro model.
        guide: A guide for it.
        *args: The model's arguments (the guide gets the same).
        params: The guide's (and model's) parameters, e.g. ``svi.get_params(state)``.
        key: PRNG key (default ``jax.random.key(0)``).
        num_samples: Number of draws.
        **kwargs: The model's keyword arguments.

    Examples:
        >>> import jax, numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> importance_log_weights(model, guide, params={}, num_samples=3).round(6).tolist()
        [0.0, 0.0, 0.0]
    """
    num_samples = _check_num_samples(num_samples)

    def one(k: Array) -> Array:
        guide_log, guide_trace = log_density(handlers.seed(guide, k), args, kwargs, params)
        model_log, _ = log_density(handlers.replay(model, guide_trace), args, kwargs, params)
        return model_log - guide_log

    keys = jax.random.split(_key(key), num_samples)
    return np.asarray(jax.vmap(one)(keys), dtype=np.float64)


def psis_diagnostic(
    model: Callable,
    guide: Callable,
    *args,
    params: dict,
    key: Array | None = None,
    num_samples: int = 1000,
    **kwargs,
) -> float:
    """Pareto k-hat of the guide's importance weights, computed with ArviZ's PSIS.

    Args:
        model: A NumPyro model.
        guide: A (trained) guide for it.
        *args: The model's arguments.
        params: The trained parameters (``svi.get_params(state)``).
        key: PRNG key (default ``jax.random.key(0)``).
        num_samples: Importance samples (>= 100 recommended).
        **kwargs: The model's keyword arguments.

    Returns:
        k-hat (a float): below 0.5 good, below 0.7 usable, above 0.7 unreliable.

    Examples:
        >>> import numpyro, numpyro.distributions as dist
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
        >>> def guide():
        ...     numpyro.sample("x", dist.Normal(0.0, 1.1))
        >>> k = psis_diagnostic(model, guide, params={}, num_samples=200)
    """
    import arviz

    log_weights = importance_log_weights(
        model, guide, *args, params=params, key=key, num_samples=num_samples, **kwargs
    )
    if not np.isfinite(log_weights).all():
        bad = int((~np.isfinite(log_weights)).sum())
        raise ValueError(
            f"{bad} of {num_samples} importance log-weights are not finite: the guide puts mass "
            "where the model has none (or the model is not finite there)"
        )
    _, k = arviz.psislw(log_weights)
    return float(np.asarray(k))


def to_inference_data(
    guide: Callable,
    *args,
    params: dict,
    key: Array | None = None,
    num_samples: int = 1000,
    num_chains: int = 1,
    **kwargs,
):
    """Posterior draws of a guide as an ``arviz.InferenceData`` (group ``posterior``).

    Every non-auxiliary sample site of the guide becomes a variable with dims
    ``(chain, draw, *site_shape)``. Chains are independent draws (no Markov chain).

    Args:
        guide: A (trained) guide.
        *args: The model's arguments (the guide gets the same).
        params: The trained parameters (``svi.get_params(state)``).
        key: PRNG key (default ``jax.random.key(0)``).
        num_samples: Draws per chain.
        num_chains: Number of chains to split the draws into.
        **kwargs: The model's keyword arguments.

    Examples:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> def guide():
        ...     numpyro.sample("x", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        >>> to_inference_data(guide, params={}, num_samples=10).posterior["x"].shape
        (1, 10, 2)
    """
    import arviz

    num_samples = _check_num_samples(num_samples)
    total = num_samples * num_chains

    def one(k: Array) -> dict[str, Array]:
        trace = handlers.trace(handlers.seed(handlers.substitute(guide, data=params), k))
        nodes = trace.get_trace(*args, **kwargs)
        return {
            name: site["value"]
            for name, site in nodes.items()
            if site["type"] == "sample" and not site["infer"].get("is_auxiliary", False)
        }

    draws = jax.vmap(one)(jax.random.split(_key(key), total))
    if not draws:
        raise ValueError("the guide has no (non-auxiliary) sample sites to report")
    posterior = {
        name: np.asarray(value).reshape(num_chains, num_samples, *value.shape[1:])
        for name, value in draws.items()
    }
    return arviz.from_dict(posterior=posterior)
