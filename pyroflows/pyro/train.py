"""``fit``: maximum-likelihood training of a flow with Adam, minibatches and early stopping."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import Tensor

from pyroflows.pyro.distributions import Flow

__all__ = ["fit"]


def _as_tensor(name: str, value, like: Tensor, features: int) -> Tensor:
    tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    tensor = tensor.to(dtype=like.dtype, device=like.device)
    if tensor.dim() != 2 or tensor.shape[-1] != features:
        raise ValueError(f"{name} must have shape (n, {features}), got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).any(-1).sum())
        raise ValueError(
            f"{name} holds non-finite values (NaN or inf) in {bad} rows "
            f"(shape {tuple(tensor.shape)})"
        )
    return tensor


def _adam(params: list[Tensor], lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with torch's multi-tensor (``foreach``) update.

    The fused kernel is not used: on the CPU it gains nothing for flow-sized models and its
    first construction imports the compiler stack (about a second and a half).
    """
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, foreach=True)


def _validation_set(validation, flow: Flow, like: Tensor):
    """Parse ``validation`` given as held-out data: ``val_data`` or ``(val_data, val_context)``."""
    if isinstance(validation, tuple):
        if len(validation) != 2:
            raise ValueError(
                "validation given as a tuple must be (val_data, val_context), got a tuple of "
                f"length {len(validation)}; pass the array alone when the flow has no context"
            )
        val_data, val_context = validation
    else:
        val_data, val_context = validation, None
    val_data = _as_tensor("validation data", val_data, like, flow.features)
    if flow.context_features:
        if val_context is None:
            raise ValueError(
                f"validation context is required: the flow was built with context="
                f"{flow.context_features}, so pass validation=(val_data, val_context)"
            )
        val_context = _as_tensor("validation context", val_context, like, flow.context_features)
        if val_context.shape[0] != val_data.shape[0]:
            raise ValueError(
                "validation context must have one row per validation data row: validation "
                f"data has shape {tuple(val_data.shape)}, validation context has shape "
                f"{tuple(val_context.shape)}"
            )
    elif val_context is not None:
        raise ValueError(
            "validation context was given, but the flow was built without context "
            f"(context=0); got a validation context of shape {tuple(np.shape(val_context))}"
        )
    return val_data, val_context


def fit(
    flow: Flow,
    data,
    context=None,
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
) -> dict[str, list[float] | int]:
    """Fit a flow by maximum likelihood.

    Minibatch Adam on the mean negative log-likelihood. A validation set (a fraction of the
    data, or an explicit ``(data, context)`` / ``data`` tuple) drives early stopping: after
    ``patience`` epochs without improvement training stops, and the parameters of the best
    validation epoch are restored.

    Args:
        flow: The flow to train (modified in place).
        data: Array-like ``(n, features)``.
        context: Array-like ``(n, context)`` for a conditional flow, else ``None``.
        epochs: Maximum number of passes over the training data.
        batch_size: Minibatch size.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        validation: Fraction of the data held out (0 for none), or held-out data given as
            ``val_data`` or ``(val_data, val_context)``.
        patience: Epochs without validation improvement before stopping (None: never stop).
        clip_grad: Max gradient norm (None: no clipping).
        seed: Seed of the split and the minibatch order.
        progress: Show a tqdm progress bar.

    Returns:
        ``{"train": [mean NLL per epoch], "validation": [...], "best_epoch": int}``.

    Raises:
        ValueError: for data of the wrong shape or with non-finite values.
        FloatingPointError: when the loss becomes non-finite (lower ``lr``, standardise the
            data, or check the base distribution's support).

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> flow = pf.MAF(features=2, transforms=2, hidden=(16,))
        >>> history = pf.fit(flow, torch.randn(200, 2), epochs=2, progress=False)
        >>> len(history["train"])
        2
    """
    from tqdm.auto import tqdm

    like = next(iter(flow.parameters()), flow.base_distribution().sample())
    data = _as_tensor("data", data, like, flow.features)
    if flow.context_features:
        if context is None:
            raise ValueError(
                f"context is required: the flow was built with context={flow.context_features}, "
                f"so pass an array of shape (n, {flow.context_features}) with data"
            )
        context = _as_tensor("context", context, like, flow.context_features)
        if context.shape[0] != data.shape[0]:
            raise ValueError(
                f"context must have one row per data row: data has {data.shape[0]} rows, "
                f"context has {context.shape[0]}"
            )
    elif context is not None:
        raise ValueError(
            "context was given, but the flow was built without context (context=0); got a "
            f"context of shape {tuple(np.shape(context))}"
        )
    if batch_size < 1 or epochs < 1:
        raise ValueError(f"batch_size and epochs must be >= 1, got {batch_size} and {epochs}")

    generator = torch.Generator().manual_seed(seed)
    if isinstance(validation, tuple | list | np.ndarray | Tensor):
        val_data, val_context = _validation_set(validation, flow, like)
        train_idx = torch.arange(data.shape[0])
    else:
        if not 0 <= validation < 1:
            raise ValueError(f"validation must be a fraction in [0, 1), got {validation!r}")
        perm = torch.randperm(data.shape[0], generator=generator).to(data.device)
        n_val = int(round(validation * data.shape[0]))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        val_data = data[val_idx] if n_val else None
        val_context = context[val_idx] if (n_val and context is not None) else None
    train_data = data[train_idx]
    train_context = context[train_idx] if context is not None else None
    n = train_data.shape[0]
    if n == 0:
        raise ValueError("no training data left after the validation split")

    optimizer = _adam(list(flow.parameters()), lr, weight_decay)
    history: dict = {"train": [], "validation": [], "best_epoch": 0}
    best, best_state, waited = math.inf, None, 0

    def nll(x: Tensor, c: Tensor | None) -> Tensor:
        return -flow(c).log_prob(x).mean()

    was_training = flow.training
    bar = tqdm(range(epochs), disable=not progress, desc="fit", leave=False)
    for epoch in bar:
        flow.train()
        order = torch.randperm(n, generator=generator).to(data.device)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = nll(train_data[idx], None if train_context is None else train_context[idx])
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became non-finite ({loss.item()}) at epoch {epoch}, batch "
                    f"{start // batch_size}; lower lr (now {lr}), standardise the data, or "
                    "check that the data lies in the support of the flow"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(flow.parameters(), clip_grad)
            optimizer.step()
            total += loss.item() * idx.numel()
        history["train"].append(total / n)
        if val_data is None:
            bar.set_postfix(train=f"{history['train'][-1]:.4f}")
            continue
        flow.eval()
        with torch.no_grad():
            val = (
                sum(
                    nll(
                        val_data[i : i + 4096],
                        None if val_context is None else val_context[i : i + 4096],
                    ).item()
                    * min(4096, val_data.shape[0] - i)
                    for i in range(0, val_data.shape[0], 4096)
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
            best, waited, history["best_epoch"] = val, 0, epoch
            best_state = copy.deepcopy(flow.state_dict())
        else:
            waited += 1
            if patience is not None and waited >= patience:
                break
    if best_state is not None:
        flow.load_state_dict(best_state)
    flow.train(was_training)
    return history
