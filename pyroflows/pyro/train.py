"""``fit``: maximum-likelihood training of a flow with Adam, minibatches, early stopping and
checkpoints.

The argument checks, the validation split and minibatch order (numpy, from ``seed``), the
early-stopping rule and the checkpoint metadata live in `pyroflows._train`, shared with the
JAX ``fit``: the same seed gives the same split and batches in both backends.
"""

from __future__ import annotations

import copy
import json
import math
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyroflows._continuous import flow_matching_layer_error
from pyroflows._train import (
    STOCHASTIC_CHUNK,
    VALIDATION_CHUNK,
    Plan,
    Tracker,
    atomic_write,
    check_fit_options,
    check_resume,
    check_rows,
    checkpoint_meta,
    event_of,
    fingerprint,
)
from pyroflows.pyro.continuous import (
    Continuous,
    _layers,
    flow_matching_loss,
    has_continuous,
    log_prob_and_stats,
)
from pyroflows.pyro.distributions import Flow

__all__ = ["fit"]


def _as_tensor(name: str, value: Any, like: Tensor, features: int | tuple[int, ...]) -> Tensor:
    """``value`` as a detached ``(n, features)`` tensor of ``like``'s dtype and device
    (``(n, *features)`` when ``features`` is an event shape, such as an image's)."""
    if isinstance(value, Tensor):
        tensor = value.detach()  # data is a constant of the fit, never part of a graph
    else:
        tensor = torch.as_tensor(np.asarray(value))
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    tensor = tensor.to(dtype=like.dtype, device=like.device)
    event = (features,) if isinstance(features, int) else tuple(features)
    if tensor.dim() != 1 + len(event) or tuple(tensor.shape[1:]) != event:
        want = ", ".join(map(str, event))
        raise ValueError(f"{name} must have shape (n, {want}), got shape {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).flatten(1).any(-1).sum())
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


def _data_and_context(flow: Flow, data: Any, context: Any, like: Tensor):
    """Check ``data`` and ``context`` against the flow; return them as tensors."""
    data = _as_tensor("data", data, like, event_of(flow))
    check_rows("data", data.shape)
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
    return data, context


def _validation_set(validation: Any, flow: Flow, like: Tensor):
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
    val_data = _as_tensor("validation data", val_data, like, event_of(flow))
    check_rows("validation data", val_data.shape)
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


def _numpy(*tensors: Tensor | None) -> list[np.ndarray | None]:
    return [None if t is None else t.detach().cpu().numpy() for t in tensors]


def _layout(flow: Flow) -> list[list[Any]]:
    """``[[name, shape, dtype], ...]`` of the flow's state (parameters and buffers)."""
    return [
        [name, list(t.shape), str(t.dtype).removeprefix("torch.")]
        for name, t in flow.state_dict().items()
    ]


def _save(path: str, meta: dict, flow: Flow, optimizer, best_state, plan, tracker) -> None:
    """Write the checkpoint atomically (``torch.save`` of a dict; metadata as JSON)."""
    state = {
        "meta": json.dumps({**meta, "rng": plan.rng_state, "tracker": tracker.state()}),
        "flow": flow.state_dict(),
        "optimizer": optimizer.state_dict(),
        "best": best_state,
        "torch_rng": torch.get_rng_state(),
    }
    atomic_write(path, lambda file: torch.save(state, file))


def _resume(path: str, meta: dict, flow: Flow, optimizer, plan, epochs: int, like: Tensor):
    """Load the checkpoint at ``path`` into the flow, optimizer and plan; return the tracker
    state and the best state."""
    try:
        state = torch.load(path, map_location=like.device, weights_only=True)
        saved = json.loads(state["meta"])
    except Exception as error:  # any unreadable file gets the same message
        raise ValueError(
            f"checkpoint {path!r} could not be read as a pyroflows.pyro fit checkpoint "
            f"({type(error).__name__}: {error}); delete it or pass another path"
        ) from error
    check_resume(path, saved, meta, epochs)
    flow.load_state_dict(state["flow"])
    optimizer.load_state_dict(state["optimizer"])
    plan.rng_state = saved["rng"]
    torch.set_rng_state(state["torch_rng"])
    return saved["tracker"], state["best"]


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
    checkpoint: str | os.PathLike | None = None,
    every: int | None = None,
    objective: str = "likelihood",
    coupling: str = "independent",
    kinetic: float = 0.0,
    jacobian: float = 0.0,
) -> dict[str, list[float] | int]:
    """Fit a flow by maximum likelihood (or a continuous flow by flow matching).

    Minibatch Adam on the mean negative log-likelihood. A validation set (a fraction of the
    data, or held-out data) drives early stopping: after ``patience`` epochs without
    improvement training stops, and the parameters of the best validation epoch are
    restored. Uninitialised ``ActNorm`` layers initialise themselves on the first batch.

    The validation split and the minibatch order come from a numpy generator seeded with
    ``seed`` (the same as in `pyroflows.numpyro.fit`, so both backends see the same
    batches). Data, context and validation data are constants: tensors that require grad are
    detached.

    Checkpoints: with ``checkpoint=path``, the full training state is written to ``path``
    every ``every`` epochs and when training ends: the flow's ``state_dict``, Adam's state,
    the number of epochs done, the generator state of the minibatch order, torch's global
    RNG state, the history and the early-stopping state (best value, best epoch, best
    ``state_dict``, patience counter). The file is a ``torch.save`` dict (metadata as a JSON
    string, loaded with ``weights_only=True``), written to a temporary file in the same
    directory and moved over ``path`` with ``os.replace``, so it is never partial. When
    ``path`` exists, ``fit`` resumes from it and continues to ``epochs`` epochs; the run
    then ends with the same parameters and history as one that was never interrupted. A
    run that stopped early stays stopped. Resuming checks that the checkpoint was written
    for a flow of the same layout, with the same data and the same arguments (only
    ``epochs``, ``every`` and ``progress`` may change), and restores torch's global RNG.

    Continuous flows (`FFJORD`, `Continuous` layers): the history's ``"nfe"`` is the mean
    number of vector-field evaluations per training step in each epoch, and ``kinetic`` /
    ``jacobian`` add the RNODE penalties (Finlay et al., 2020) to the loss: their weights
    times the batch means of each row's integral of ``|f|^2`` and of ``|df/dz|_F^2`` along
    its path, which keep the dynamics simple and the NFE down (``"train"`` records the NLL
    alone). ``objective="flow_matching"`` trains a flow of one `Continuous` bijection with
    `flow_matching_loss` instead (no ODE is solved while training; ``coupling="ot"`` for the
    minibatch optimal-transport pairing). Its early stopping and ``"validation"`` use the
    flow-matching loss of the validation set, with the same base draws and times every
    epoch; score the trained flow with ``flow().log_prob``, which solves the ODE exactly.

    Args:
        flow: The flow to train (modified in place).
        data: Array-like ``(n, features)`` with ``n >= 1`` (``(n, C, H, W)`` for an image
            flow).
        context: Array-like ``(n, context)`` for a conditional flow, else ``None``.
        epochs: Maximum number of passes over the training data (int >= 1).
        batch_size: Minibatch size (int >= 1).
        lr: Adam learning rate (> 0).
        weight_decay: Adam (L2) weight decay (>= 0).
        validation: Fraction of the data held out, in ``[0, 1)`` (0 for none), or held-out
            data given as ``val_data`` or ``(val_data, val_context)``.
        patience: Epochs without validation improvement before stopping (int >= 1), or
            ``None`` to never stop early.
        clip_grad: Max gradient norm (> 0), or ``None`` for no clipping.
        seed: Seed of the split and the minibatch order (int >= 0).
        progress: Show a tqdm progress bar.
        checkpoint: Path of the checkpoint file to write and to resume from, or ``None``.
        every: Epochs between checkpoints (int >= 1, default 1); needs ``checkpoint``.
        objective: ``"likelihood"`` (default) or ``"flow_matching"``.
        coupling: Flow matching's pairing of base draws and data rows: ``"independent"``
            or ``"ot"``.
        kinetic: Weight of the RNODE kinetic-energy penalty (>= 0; likelihood only).
        jacobian: Weight of the RNODE Jacobian-norm penalty (>= 0; likelihood only).

    Returns:
        ``{"train": [mean NLL per epoch], "validation": [...], "best_epoch": int}``, with
        ``"nfe": [...]`` for a continuous flow trained by likelihood (with flow matching,
        ``"train"`` and ``"validation"`` hold the flow-matching loss).

    Raises:
        ValueError: for an argument out of range (the message names it), data of the wrong
            shape, without rows or with non-finite values, or a ``checkpoint`` that does
            not match the flow, the data or the arguments.
        FloatingPointError: when the loss becomes non-finite (lower ``lr``, standardise the
            data, or check the base distribution's support).

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> flow = pf.MAF(features=2, transforms=2, hidden=(16,))
        >>> history = pf.fit(flow, torch.randn(200, 2), epochs=2, progress=False)
        >>> len(history["train"])
        2

        Resumable training: a run given an existing checkpoint goes on from it.

        >>> import os, tempfile
        >>> data = torch.randn(200, 2)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "maf.pt")
        ...     _ = pf.fit(flow, data, epochs=2, checkpoint=path, progress=False)
        ...     history = pf.fit(flow, data, epochs=4, checkpoint=path, every=2, progress=False)
        >>> len(history["train"])  # epochs 0 and 1 from the checkpoint, then 2 and 3
        4
    """
    from tqdm.auto import tqdm

    held_out = isinstance(validation, tuple | list | np.ndarray | Tensor)
    options = check_fit_options(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        validation=validation,
        held_out=held_out,
        patience=patience,
        clip_grad=clip_grad,
        seed=seed,
        progress=progress,
        checkpoint=checkpoint,
        every=every,
        objective=objective,
        coupling=coupling,
        kinetic=kinetic,
        jacobian=jacobian,
    )
    matching = options.objective == "flow_matching"
    if matching:
        problem = flow_matching_layer_error([t for t, _ in _layers(flow.transforms)], Continuous)
        if problem is not None:
            raise ValueError(problem)
    continuous = has_continuous(flow) and not matching
    regularize = bool(options.kinetic or options.jacobian)
    if regularize and not has_continuous(flow):
        raise ValueError(
            "kinetic and jacobian penalise the ODE solves of continuous layers (FFJORD, "
            "Continuous); this flow has none"
        )
    like = next(iter(flow.parameters()), flow.base_distribution().sample())
    data, context = _data_and_context(flow, data, context, like)
    plan = Plan(data.shape[0], options.validation, options.seed)
    if held_out:
        val_data, val_context = _validation_set(validation, flow, like)
    elif plan.validation is None:
        val_data, val_context = None, None
    else:
        val_idx = torch.as_tensor(plan.validation, device=data.device)
        val_data = data[val_idx]
        val_context = None if context is None else context[val_idx]
    train_idx = torch.as_tensor(plan.train, device=data.device)
    train_data = data[train_idx]
    train_context = None if context is None else context[train_idx]
    n = train_data.shape[0]

    optimizer = _adam(list(flow.parameters()), options.lr, options.weight_decay)
    tracker, best_state = Tracker(options.patience), None
    path = options.checkpoint
    if path is not None:
        meta = checkpoint_meta(
            "torch",
            options,
            _layout(flow),
            fingerprint(*_numpy(data, context, val_data, val_context)),
        )
        if os.path.exists(path):
            state, best_state = _resume(path, meta, flow, optimizer, plan, options.epochs, like)
            tracker = Tracker.from_state(state, options.patience)

    def nll(x: Tensor, c: Tensor | None) -> Tensor:
        if matching:
            return flow_matching_loss(flow, x, c, coupling=options.coupling)
        return -flow(c).log_prob(x).mean()

    def step_loss(x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor, int]:
        """(the loss to minimise, the NLL to record, the evaluations of the vector fields)"""
        if not continuous:
            loss = nll(x, c)
            return loss, loss, 0
        lp, nfe, kin, jac = log_prob_and_stats(flow, x, c, regularize=regularize)
        loss = -lp.mean()
        penalty = options.kinetic * kin.mean() + options.jacobian * jac.mean()
        return (loss + penalty if regularize else loss), loss, nfe

    was_training = flow.training
    start = tracker.epochs_done
    bar = tqdm(
        range(start, options.epochs if not tracker.stopped else start),
        total=options.epochs,
        initial=start,
        disable=not options.progress,
        desc="fit",
        leave=False,
    )
    for epoch in bar:
        flow.train()
        order = torch.as_tensor(plan.epoch_order(), device=data.device)
        total, evaluations, steps = 0.0, 0, 0
        for begin in range(0, n, options.batch_size):
            idx = order[begin : begin + options.batch_size]
            c = None if train_context is None else train_context[idx]
            loss, recorded, nfe = step_loss(train_data[idx], c)
            evaluations, steps = evaluations + nfe, steps + 1
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became non-finite ({loss.item()}) at epoch {epoch}, batch "
                    f"{begin // options.batch_size}; lower lr (now {options.lr}), standardise "
                    "the data, or check that the data lies in the support of the flow"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if options.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(flow.parameters(), options.clip_grad)
            optimizer.step()
            total += recorded.item() * idx.numel()
        val = None
        if val_data is not None:
            flow.eval()
            val = _validation_loss(nll, val_data, val_context, options.seed, _chunk(flow))
            if not math.isfinite(val):
                raise FloatingPointError(
                    f"the validation loss became non-finite ({val}) at epoch {epoch}; lower lr "
                    f"(now {options.lr}) or check that the validation data lies in the flow's "
                    "support"
                )
        if tracker.record(total / n, val, evaluations / steps if continuous else None):
            best_state = copy.deepcopy(flow.state_dict())
        bar.set_postfix(
            train=f"{tracker.train[-1]:.4f}", **({} if val is None else {"val": f"{val:.4f}"})
        )
        done = tracker.epochs_done
        if path is not None and (
            done % options.every == 0 or done == options.epochs or tracker.stopped
        ):
            _save(path, meta, flow, optimizer, best_state, plan, tracker)
        if tracker.stopped:
            break
    bar.close()
    if best_state is not None:
        flow.load_state_dict(best_state)
    flow.train(was_training)
    return tracker.history()


def _chunk(flow: Flow) -> int:
    """Validation rows per call: fewer for a flow with a stochastic log-det (see
    `pyroflows._train.STOCHASTIC_CHUNK`)."""
    from pyroflows.pyro.residual import ResidualBlock

    stochastic = any(
        (isinstance(m, ResidualBlock) and m.logdet != "exact")
        or (isinstance(m, Continuous) and m.options.trace != "exact")
        for m in flow.modules()
    )
    return STOCHASTIC_CHUNK if stochastic else VALIDATION_CHUNK


def _validation_loss(
    nll, val_data: Tensor, val_context: Tensor | None, seed: int, chunk: int = VALIDATION_CHUNK
) -> float:
    """The mean NLL of the validation set, in chunks of ``chunk`` rows, without gradients.

    Random numbers drawn inside (the probes of a stochastic log-det, ``ResidualBlock``'s
    ``"series"`` and ``"unbiased"``) come from a generator reseeded the same way every epoch,
    as JAX's ``fit`` keeps one validation key: the epochs' validation losses then differ only
    by the parameters, and early stopping does not chase the estimator's noise. The global
    generator is left as it was."""
    total = 0.0
    accelerator = val_data.device.type != "cpu"
    devices = [val_data.device] if accelerator else []
    kind = val_data.device.type if accelerator else "cuda"  # no accelerator generator touched
    with torch.random.fork_rng(devices=devices, device_type=kind), torch.no_grad():
        torch.manual_seed(seed + 2**31 - 1)
        for i in range(0, val_data.shape[0], chunk):
            c = None if val_context is None else val_context[i : i + chunk]
            x = val_data[i : i + chunk]
            total += nll(x, c).item() * x.shape[0]
    return total / val_data.shape[0]
