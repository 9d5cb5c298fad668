"""``fit``: maximum-likelihood training of a flow with optax Adam, minibatches, early stopping.

The JAX twin of `pyroflows.pyro.train`. JAX modules are immutable, so ``fit`` returns the
trained flow together with the history (the torch ``fit`` trains in place).
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

from pyroflows.numpyro.distributions import Flow, _float_dtype
from pyroflows.numpyro.linear import ActNorm

__all__ = ["fit"]


def _as_array(name: str, value: Any, dtype, features: int) -> Array:
    array = np.asarray(value)
    if array.ndim != 2 or array.shape[-1] != features:
        raise ValueError(f"{name} must have shape (n, {features}), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
    finite = np.isfinite(array)
    if not finite.all():
        bad = int((~finite).any(-1).sum())
        raise ValueError(
            f"{name} holds non-finite values (NaN or inf) in {bad} rows (shape {array.shape})"
        )
    return jnp.asarray(array, dtype=dtype)


def _validation_set(validation: Any, flow: Flow, dtype) -> tuple[Array, Array | None]:
    if isinstance(validation, tuple):
        if len(validation) != 2:
            raise ValueError(
                "validation given as a tuple must be (val_data, val_context), got a tuple of "
                f"length {len(validation)}; pass the array alone when the flow has no context"
            )
        val_data, val_context = validation
    else:
        val_data, val_context = validation, None
    val_data = _as_array("validation data", val_data, dtype, flow.features)
    if flow.context_features:
        if val_context is None:
            raise ValueError(
                f"validation context is required: the flow was built with context="
                f"{flow.context_features}, so pass validation=(val_data, val_context)"
            )
        val_context = _as_array("validation context", val_context, dtype, flow.context_features)
        if val_context.shape[0] != val_data.shape[0]:
            raise ValueError(
                "validation context must have one row per validation data row: validation "
                f"data has shape {tuple(val_data.shape)}, validation context has shape "
                f"{tuple(val_context.shape)}"
            )
    elif val_context is not None:
        raise ValueError(
            "validation context was given, but the flow was built without context "
            f"(context=0); got a validation context of shape {np.shape(val_context)}"
        )
    return val_data, val_context


def initialize_actnorm(flow: Flow, data: Array, context: Array | None = None) -> Flow:
    """Initialise the flow's uninitialised top-level ``ActNorm`` layers from ``data``.

    The data goes through the chain in the data -> base direction; each ``ActNorm`` met on
    the way is set so that what reaches it comes out standardised.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.Flow([pfj.ActNorm(2)])
        >>> flow = pfj.initialize_actnorm(flow, jax.random.normal(jax.random.key(0), (50, 2)))
        >>> flow.layers[0].initialized
        True
    """
    layers = list(flow.layers)
    if not any(isinstance(t, ActNorm) and not t.initialized for t in layers):
        return flow
    y = jnp.asarray(data)
    for i in reversed(range(len(layers))):
        t = layers[i]
        if isinstance(t, ActNorm) and not t.initialized:
            layers[i] = t = t.initialize(y)
        y, _ = t.inverse_and_log_det(y, context if t.context_features else None)
    return Flow(layers, flow.base)


def _trainable(flow: Flow) -> Any:
    """Filter spec: the inexact arrays of ``flow.transforms`` (never the base)."""
    spec = jax.tree_util.tree_map(lambda _: False, flow)
    return eqx.tree_at(
        lambda f: f.transforms, spec, jax.tree_util.tree_map(eqx.is_inexact_array, flow.transforms)
    )


def fit(
    flow: Flow,
    data: Any,
    context: Any = None,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    validation: float | tuple = 0.1,
    patience: int | None = 10,
    clip_grad: float | None = 5.0,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Flow, dict[str, list[float] | int]]:
    """Fit a flow by maximum likelihood; return ``(trained_flow, history)``.

    Same arguments and behaviour as `pyroflows.pyro.fit`: minibatch Adam (optax) on the mean
    negative log-likelihood, with gradient clipping, L2 weight decay, a validation set for
    early stopping (the best epoch's parameters are returned), a tqdm progress bar, and
    uninitialised ``ActNorm`` layers set from the first batch. One training step is one
    jitted call.

    Args:
        flow: The flow to train.
        data: Array-like ``(n, features)``.
        context: Array-like ``(n, context)`` for a conditional flow, else ``None``.
        epochs: Maximum number of passes over the training data.
        batch_size: Minibatch size.
        lr: Adam learning rate.
        weight_decay: L2 penalty added to the gradient (as torch's Adam does).
        validation: Fraction of the data held out (0 for none), or held-out data given as
            ``val_data`` or ``(val_data, val_context)``.
        patience: Epochs without validation improvement before stopping (None: never stop).
        clip_grad: Max global gradient norm (None: no clipping).
        seed: Seed of the split and the minibatch order.
        progress: Show a tqdm progress bar.

    Returns:
        The trained flow and ``{"train": [...], "validation": [...], "best_epoch": int}``.

    Raises:
        ValueError: for data of the wrong shape or with non-finite values.
        FloatingPointError: when the loss becomes non-finite.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.MAF(features=2, transforms=2, hidden=(16,), key=jax.random.key(0))
        >>> data = jax.random.normal(jax.random.key(1), (200, 2))
        >>> flow, history = pfj.fit(flow, data, epochs=2, progress=False)
        >>> len(history["train"])
        2
    """
    from tqdm.auto import tqdm

    if not isinstance(flow, Flow):
        raise TypeError(f"flow must be a pyroflows.numpyro.Flow, got {type(flow).__name__}")
    dtype = _float_dtype(flow.transforms)
    data = _as_array("data", data, dtype, flow.features)
    if flow.context_features:
        if context is None:
            raise ValueError(
                f"context is required: the flow was built with context={flow.context_features}, "
                f"so pass an array of shape (n, {flow.context_features}) with data"
            )
        context = _as_array("context", context, dtype, flow.context_features)
        if context.shape[0] != data.shape[0]:
            raise ValueError(
                f"context must have one row per data row: data has {data.shape[0]} rows, "
                f"context has {context.shape[0]}"
            )
    elif context is not None:
        raise ValueError(
            "context was given, but the flow was built without context (context=0); got a "
            f"context of shape {np.shape(context)}"
        )
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1, got {batch_size} and {epochs}")

    rng = np.random.default_rng(seed)
    if isinstance(validation, tuple | list | np.ndarray | jax.Array):
        val_data, val_context = _validation_set(validation, flow, dtype)
        train_idx = np.arange(data.shape[0])
    else:
        if not 0 <= validation < 1:
            raise ValueError(f"validation must be a fraction in [0, 1), got {validation!r}")
        perm = rng.permutation(data.shape[0])
        n_val = int(round(validation * data.shape[0]))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        val_data = data[val_idx] if n_val else None
        val_context = context[val_idx] if (n_val and context is not None) else None
    train_data = data[train_idx]
    train_context = context[train_idx] if context is not None else None
    n = train_data.shape[0]
    if n == 0:
        raise ValueError("no training data left after the validation split")

    flow = initialize_actnorm(
        flow,
        train_data[:batch_size],
        None if train_context is None else train_context[:batch_size],
    )
    params, static = eqx.partition(flow, _trainable(flow))
    parts = []
    if clip_grad is not None:
        parts.append(optax.clip_by_global_norm(clip_grad))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.adam(lr))
    optimizer = optax.chain(*parts)
    opt_state = optimizer.init(params)

    def nll(p, x, c):
        return -eqx.combine(p, static)(c).log_prob(x).mean()

    @jax.jit
    def step(p, state, x, c):
        loss, grads = jax.value_and_grad(nll)(p, x, c)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    evaluate = jax.jit(nll)
    history: dict = {"train": [], "validation": [], "best_epoch": 0}
    best, best_params, waited = math.inf, None, 0
    bar = tqdm(range(epochs), disable=not progress, desc="fit", leave=False)
    for epoch in bar:
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            c = None if train_context is None else train_context[idx]
            params, opt_state, loss = step(params, opt_state, train_data[idx], c)
            loss = float(loss)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became non-finite ({loss}) at epoch {epoch}, batch "
                    f"{start // batch_size}; lower lr (now {lr}), standardise the data, or "
                    "check that the data lies in the support of the flow"
                )
            total += loss * idx.size
        history["train"].append(total / n)
        if val_data is None:
            bar.set_postfix(train=f"{history['train'][-1]:.4f}")
            continue
        chunk = 4096
        val = (
            sum(
                float(
                    evaluate(
                        params,
                        val_data[i : i + chunk],
                        None if val_context is None else val_context[i : i + chunk],
                    )
                )
                * min(chunk, val_data.shape[0] - i)
                for i in range(0, val_data.shape[0], chunk)
            )
            / val_data.shape[0]
        )
        if not math.isfinite(val):
            raise FloatingPointError(
                f"the validation loss became non-finite ({val}) at epoch {epoch}; lower lr "
                f"(now {lr}) or check that the validation data lies in the flow's support"
            )
        history["validation"].append(val)
        bar.set_postfix(train=f"{history['train'][-1]:.4f}", val=f"{val:.4f}")
        if val < best:
            best, waited, history["best_epoch"], best_params = val, 0, epoch, params
        else:
            waited += 1
            if patience is not None and waited >= patience:
                break
    if best_params is not None:
        params = best_params
    return eqx.combine(params, static), history
