"""``fit``: maximum-likelihood training of a flow with optax Adam, minibatches, early stopping
and checkpoints.

The JAX twin of `pyroflows.pyro.train`. JAX modules are immutable, so ``fit`` returns the
trained flow together with the history (the torch ``fit`` trains in place). The argument
checks, the validation split and minibatch order (numpy, from ``seed``), the early-stopping
rule and the checkpoint metadata live in `pyroflows._train`, shared with the torch ``fit``.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from functools import partial
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

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
from pyroflows.numpyro.continuous import (
    Continuous,
    _layers,
    flow_matching_loss,
    has_continuous,
    log_prob_and_stats,
)
from pyroflows.numpyro.core import Bijection, Chain, Invert, Stack, _member_context
from pyroflows.numpyro.distributions import Flow, _float_dtype
from pyroflows.numpyro.image import FactorOut
from pyroflows.numpyro.linear import ActNorm
from pyroflows.numpyro.nn import refine_lipschitz
from pyroflows.numpyro.params import _name
from pyroflows.numpyro.residual import with_key

__all__ = ["fit", "initialize_actnorm"]


def _as_array(name: str, value: Any, dtype, features: int | tuple[int, ...]) -> Array:
    array = np.asarray(value)
    event = (features,) if isinstance(features, int) else tuple(features)
    if array.ndim != 1 + len(event) or tuple(array.shape[1:]) != event:
        want = ", ".join(map(str, event))
        raise ValueError(f"{name} must have shape (n, {want}), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must hold numbers, got dtype {array.dtype}")
    finite = np.isfinite(array)
    if not finite.all():
        bad = int((~finite).reshape(array.shape[0], -1).any(-1).sum()) if array.size else 0
        raise ValueError(
            f"{name} holds non-finite values (NaN or inf) in {bad} rows (shape {array.shape})"
        )
    return jnp.asarray(array, dtype=dtype)


def _adam(lr: float, weight_decay: float, clip_grad: float | None) -> optax.GradientTransformation:
    """Adam as torch runs it: global-norm clipping, then L2 decay added to the gradient."""
    parts = []
    if clip_grad is not None:
        parts.append(optax.clip_by_global_norm(clip_grad))
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.adam(lr))
    return optax.chain(*parts)


def _data_and_context(flow: Flow, data: Any, context: Any, dtype) -> tuple[Array, Array | None]:
    """Check ``data`` and ``context`` against the flow; return them as arrays."""
    data = _as_array("data", data, dtype, event_of(flow))
    check_rows("data", data.shape)
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
    return data, context


def _validation_set(validation: Any, flow: Flow, dtype) -> tuple[Array, Array | None]:
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
    val_data = _as_array("validation data", val_data, dtype, event_of(flow))
    check_rows("validation data", val_data.shape)
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


# ------------------------------------------------------------------ ActNorm initialisation


def _uninitialized(tree: Any) -> bool:
    """Whether ``tree`` holds an ``ActNorm`` that is not initialised."""
    layers = jax.tree_util.tree_leaves(tree, is_leaf=lambda m: isinstance(m, ActNorm))
    return any(isinstance(m, ActNorm) and not m.initialized for m in layers)


def _init_members(
    members: list[Bijection], y: Array, context: Array | None, inverse: bool
) -> tuple[list[Bijection], Array]:
    """`_init_pass` through a chain's members (in reverse order for the inverse)."""
    members = list(members)
    for i in reversed(range(len(members))) if inverse else range(len(members)):
        members[i], y = _init_pass(members[i], y, _member_context(members[i], context), inverse)
    return members, y


def _init_pass(
    t: Bijection, y: Array, context: Array | None, inverse: bool
) -> tuple[Bijection, Array]:
    """Run ``t`` on ``y`` (its inverse when ``inverse``), initialising each uninitialised
    ``ActNorm`` that the pass meets in its inverse direction, as torch's ActNorm initialises
    itself; return the new ``t`` and its output. `Chain`, `Stack` and `Invert` are entered;
    their structure (stacks included) is kept."""
    if _uninitialized(t):
        if isinstance(t, ActNorm) and inverse:
            t = t.initialize(y)
        elif isinstance(t, Invert):
            inner, y = _init_pass(t.bijection, y, context, not inverse)
            return eqx.tree_at(lambda m: m.bijection, t, inner), y
        elif isinstance(t, Chain):
            members, y = _init_members(t.transforms, y, context, inverse)
            return eqx.tree_at(lambda m: m.transforms, t, tuple(members)), y
        elif isinstance(t, Stack):
            layers, y = _init_members(t.layers_list(), y, context, inverse)
            return Stack(layers, t.period), y
        elif isinstance(t, FactorOut):  # the inner bijection sees the first channels
            head, tail = y[..., : t.channels, :, :], y[..., t.channels :, :, :]
            inner, head = _init_pass(t.bijection, head, context, inverse)
            tail = jnp.broadcast_to(tail, (*head.shape[:-3], *tail.shape[-3:]))
            return eqx.tree_at(lambda m: m.bijection, t, inner), jnp.concatenate([head, tail], -3)
        elif not isinstance(t, ActNorm):
            warnings.warn(
                f"initialize_actnorm cannot look inside a {type(t).__name__}: its ActNorm "
                "layers are left uninitialised (initialise them with ActNorm.initialize, or "
                "set them with set_params)",
                stacklevel=4,
            )
    step = t.inverse_and_log_det if inverse else t.forward_and_log_det
    return t, step(y, context)[0]


def initialize_actnorm(flow: Flow, data: Array, context: Array | None = None) -> Flow:
    """Initialise the flow's uninitialised ``ActNorm`` layers from ``data``, as torch does.

    The data goes through the flow in the data -> base direction; each uninitialised
    ``ActNorm`` met on the way *in its inverse direction* is set so that what reaches it
    comes out standardised (zero mean, unit variance per feature), and the pass goes on
    with the initialised layer. This is what torch's ``ActNorm`` does on its first inverse
    pass in training mode, in the same order and with the same values. The pass enters
    `Chain` and `Invert` layers and the `pyroflows.numpyro.core.Stack` blocks of stacked
    runs (which keep their structure); an ``ActNorm`` that runs forward in this pass (under
    one ``Invert``, say) is left alone, as in torch. Initialised layers are kept, so calling
    this twice changes nothing; the pass stops after the last layer it has to initialise.
    Another composite bijection holding an uninitialised ``ActNorm`` gets a warning.

    Args:
        flow: The flow.
        data: ``(n, features)`` data, ``n >= 2``.
        context: ``(n, context)`` context for a conditional flow.

    Returns:
        The flow with its ActNorm layers initialised (the same structure otherwise).

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.Flow([pfj.Chain([pfj.ActNorm(2), pfj.Reverse(2)])])
        >>> flow = pfj.initialize_actnorm(flow, jax.random.normal(jax.random.key(0), (50, 2)))
        >>> flow.transforms[0].transforms[0].initialized
        True
    """
    members, y = list(flow.transforms), jnp.asarray(data)
    pending = [_uninitialized(t) for t in members]
    if not any(pending):
        return flow
    for i in reversed(range(len(members))):
        if not any(pending[: i + 1]):  # no ActNorm left to initialise: stop the pass here
            break
        members[i], y = _init_pass(members[i], y, _member_context(members[i], context), True)
    return eqx.tree_at(lambda f: f.transforms, flow, tuple(members))


# ------------------------------------------------------------------ training


def _trainable(flow: Flow) -> Any:
    """Filter spec: the inexact arrays of ``flow.transforms`` (never the base)."""
    spec = jax.tree_util.tree_map(lambda _: False, flow)
    return eqx.tree_at(
        lambda f: f.transforms, spec, jax.tree_util.tree_map(eqx.is_inexact_array, flow.transforms)
    )


def _numpy(*arrays: Array | None) -> list[np.ndarray | None]:
    return [None if a is None else np.asarray(a) for a in arrays]


def _layout(params: Any) -> list[list[Any]]:
    """``[[name, shape, dtype], ...]`` of the trainable arrays (tree paths, stacks kept)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return [[_name(path), list(leaf.shape), str(leaf.dtype)] for path, leaf in leaves]


def _save(path: str, meta: dict, params, opt_state, best_params, plan, tracker) -> None:
    """Write the checkpoint atomically (numpy ``.npz``: the arrays, metadata as JSON)."""
    extra = {"rng": plan.rng_state, "tracker": tracker.state(), "best": best_params is not None}
    arrays = {"meta": np.array(json.dumps({**meta, **extra}))}
    for prefix, tree in (("params", params), ("opt", opt_state), ("best", best_params)):
        for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
            arrays[f"{prefix}.{i}"] = np.asarray(leaf)
    atomic_write(path, lambda file: np.savez(file, **arrays))


def _restore(path: str, arrays: dict, prefix: str, like: Any) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(like)
    restored = []
    for i, leaf in enumerate(leaves):
        value = arrays.get(f"{prefix}.{i}")
        if value is None or value.shape != jnp.shape(leaf):
            raise ValueError(
                f"checkpoint {path!r} holds no {prefix} array {i} of shape {jnp.shape(leaf)}; "
                "it does not match this flow and optimizer"
            )
        restored.append(jnp.asarray(value, dtype=jnp.result_type(leaf)))
    if f"{prefix}.{len(leaves)}" in arrays:
        raise ValueError(f"checkpoint {path!r} holds more {prefix} arrays than this fit has")
    return jax.tree_util.tree_unflatten(treedef, restored)


def _resume(path: str, meta: dict, params, opt_state, plan, epochs: int):
    """Read the checkpoint at ``path``; return the params, optimizer state, tracker state
    and best params it holds, and set the plan's generator state."""
    try:
        with np.load(path, allow_pickle=False) as file:
            arrays = {key: file[key] for key in file.files}
        saved = json.loads(str(arrays.pop("meta")))
    except Exception as error:  # any unreadable file gets the same message
        raise ValueError(
            f"checkpoint {path!r} could not be read as a pyroflows.numpyro fit checkpoint "
            f"({type(error).__name__}: {error}); delete it or pass another path"
        ) from error
    check_resume(path, saved, meta, epochs)
    params_now = _restore(path, arrays, "params", params)
    opt_state = _restore(path, arrays, "opt", opt_state)
    best_params = _restore(path, arrays, "best", params) if saved["best"] else None
    plan.rng_state = saved["rng"]
    return params_now, opt_state, saved["tracker"], best_params


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
) -> tuple[Flow, dict[str, list[float] | int]]:
    """Fit a flow by maximum likelihood (or a continuous flow by flow matching); return
    ``(trained_flow, history)``.

    Same arguments and behaviour as `pyroflows.pyro.fit`: minibatch Adam (optax) on the mean
    negative log-likelihood, with gradient clipping, L2 weight decay, a validation set for
    early stopping (the best epoch's parameters are returned) and a tqdm progress bar. One
    training step is one jitted call. Uninitialised ``ActNorm`` layers, nested ones
    included, are set from the first minibatch by `initialize_actnorm`, as torch's
    initialise themselves.

    The validation split and the minibatch order come from a numpy generator seeded with
    ``seed``, as in `pyroflows.pyro.fit`: the same seed gives the same batches in both
    backends, and in float64 the same history and parameters.

    Checkpoints: with ``checkpoint=path``, the full training state is written to ``path``
    every ``every`` epochs and when training ends: the trainable arrays, the optax state,
    the number of epochs done, the generator state of the minibatch order, the history and
    the early-stopping state (best value, best epoch, best arrays, patience counter). The
    file is a numpy ``.npz`` archive (the arrays as tree leaves, the metadata as a JSON
    string; no pickle), written to a temporary file in the same directory and moved over
    ``path`` with ``os.replace``, so it is never partial. When ``path`` exists, ``fit``
    resumes from it and continues to ``epochs`` epochs; the run then ends with the same
    parameters and history as one that was never interrupted. A run that stopped early
    stays stopped. Resuming checks that the checkpoint was written for a flow of the same
    layout, with the same data and the same arguments (only ``epochs``, ``every`` and
    ``progress`` may change).

    Continuous flows: ``"nfe"`` in the history, the RNODE ``kinetic`` / ``jacobian``
    penalties and ``objective="flow_matching"`` (with ``coupling``) as in
    `pyroflows.pyro.fit`; the base draws and times of flow matching come from the seed and
    the step's number, the validation ones from a fixed key.

    Args:
        flow: The flow to train.
        data: Array-like ``(n, features)`` with ``n >= 1`` (``(n, C, H, W)`` for an image
            flow).
        context: Array-like ``(n, context)`` for a conditional flow, else ``None``.
        epochs: Maximum number of passes over the training data (int >= 1).
        batch_size: Minibatch size (int >= 1).
        lr: Adam learning rate (> 0).
        weight_decay: L2 penalty added to the gradient, as torch's Adam does (>= 0).
        validation: Fraction of the data held out, in ``[0, 1)`` (0 for none), or held-out
            data given as ``val_data`` or ``(val_data, val_context)``.
        patience: Epochs without validation improvement before stopping (int >= 1), or
            ``None`` to never stop early.
        clip_grad: Max global gradient norm (> 0), or ``None`` for no clipping.
        seed: Seed of the split and the minibatch order (int >= 0).
        progress: Show a tqdm progress bar.
        checkpoint: Path of the checkpoint file to write and to resume from, or ``None``.
        every: Epochs between checkpoints (int >= 1, default 1); needs ``checkpoint``.
        objective: ``"likelihood"`` (default) or ``"flow_matching"``.
        coupling: Flow matching's pairing: ``"independent"`` or ``"ot"``.
        kinetic: Weight of the RNODE kinetic-energy penalty (>= 0; likelihood only).
        jacobian: Weight of the RNODE Jacobian-norm penalty (>= 0; likelihood only).

    Returns:
        The trained flow and ``{"train": [...], "validation": [...], "best_epoch": int}``.

    Raises:
        ValueError: for an argument out of range (the message names it), data of the wrong
            shape, without rows or with non-finite values, or a ``checkpoint`` that does
            not match the flow, the data or the arguments.
        FloatingPointError: when the loss becomes non-finite.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.MAF(features=2, transforms=2, hidden=(16,), key=jax.random.key(0))
        >>> data = jax.random.normal(jax.random.key(1), (200, 2))
        >>> flow, history = pfj.fit(flow, data, epochs=2, progress=False)
        >>> len(history["train"])
        2

        Resumable training: a run given an existing checkpoint goes on from it.

        >>> import os, tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = os.path.join(tmp, "maf.npz")
        ...     _ = pfj.fit(flow, data, epochs=2, checkpoint=path, progress=False)
        ...     flow, history = pfj.fit(flow, data, epochs=4, checkpoint=path, every=2,
        ...                             progress=False)
        >>> len(history["train"])  # epochs 0 and 1 from the checkpoint, then 2 and 3
        4
    """
    from tqdm.auto import tqdm

    if not isinstance(flow, Flow):
        raise TypeError(f"flow must be a pyroflows.numpyro.Flow, got {type(flow).__name__}")
    held_out = isinstance(validation, tuple | list | np.ndarray | jax.Array)
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
        problem = flow_matching_layer_error([t for t, _ in _layers(flow.layers)], Continuous)
        if problem is not None:
            raise ValueError(problem)
    continuous = has_continuous(flow) and not matching
    regularize = bool(options.kinetic or options.jacobian)
    if regularize and not has_continuous(flow):
        raise ValueError(
            "kinetic and jacobian penalise the ODE solves of continuous layers (FFJORD, "
            "Continuous); this flow has none"
        )
    dtype = _float_dtype(flow.transforms)
    data, context = _data_and_context(flow, data, context, dtype)
    plan = Plan(data.shape[0], options.validation, options.seed)
    if held_out:
        val_data, val_context = _validation_set(validation, flow, dtype)
    elif plan.validation is None:
        val_data, val_context = None, None
    else:
        val_data = data[plan.validation]
        val_context = None if context is None else context[plan.validation]
    train_data = data[plan.train]
    train_context = None if context is None else context[plan.train]
    n = train_data.shape[0]

    # torch's ActNorm initialises itself on the first batch; here the same batch, up front
    # (also when resuming: the structure must be that of the run that wrote the checkpoint)
    first = plan.first_batch(options.batch_size)
    flow = initialize_actnorm(
        flow, train_data[first], None if train_context is None else train_context[first]
    )
    params, static = eqx.partition(flow, _trainable(flow))
    optimizer = _adam(options.lr, options.weight_decay, options.clip_grad)
    opt_state = optimizer.init(params)
    tracker, best_params = Tracker(options.patience), None
    path = options.checkpoint
    if path is not None:
        meta = checkpoint_meta(
            "jax",
            options,
            _layout(params),
            fingerprint(*_numpy(data, context, val_data, val_context)),
        )
        if os.path.exists(path):
            params, opt_state, state, best_params = _resume(
                path, meta, params, opt_state, plan, options.epochs
            )
            tracker = Tracker.from_state(state, options.patience)

    # residual blocks: fresh keys for their stochastic log-dets every step (from the seed
    # and the step's number, so a resumed run draws what an uninterrupted one does), and
    # their power-iteration vectors refined and stored after every step
    base_key = jax.random.key(options.seed)

    def nll(p, x, c, key):
        model = with_key(eqx.combine(p, static), key)
        if matching:
            return flow_matching_loss(model, x, c, key=key, coupling=options.coupling)
        return -model(c).log_prob(x).mean()

    def step_loss(p, x, c, key):
        """(the loss to minimise, (the NLL to record, the evaluations of the vector fields))"""
        if not continuous:
            loss = nll(p, x, c, key)
            return loss, (loss, jnp.asarray(0))
        model = with_key(eqx.combine(p, static), key)
        lp, nfe, kin, jac = log_prob_and_stats(model, x, c, regularize=regularize)
        loss = -lp.mean()
        penalty = options.kinetic * kin.mean() + options.jacobian * jac.mean()
        return (loss + penalty if regularize else loss), (loss, nfe)

    @jax.jit
    def step(p, state, x, c, key):
        (_, (loss, nfe)), grads = jax.value_and_grad(step_loss, has_aux=True)(p, x, c, key)
        updates, state = optimizer.update(grads, state, p)
        return refine_lipschitz(optax.apply_updates(p, updates)), state, loss, nfe

    evaluate = jax.jit(nll)
    validation_key = jax.random.fold_in(base_key, 2**31 - 1)  # no training step has it
    batches = -(-n // options.batch_size)
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
        order = plan.epoch_order()
        total, evaluations, steps = 0.0, 0, 0
        for begin in range(0, n, options.batch_size):
            idx = order[begin : begin + options.batch_size]
            c = None if train_context is None else train_context[idx]
            key = jax.random.fold_in(base_key, epoch * batches + begin // options.batch_size)
            params, opt_state, loss, nfe = step(params, opt_state, train_data[idx], c, key)
            loss, evaluations, steps = float(loss), evaluations + int(nfe), steps + 1
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"the loss became non-finite ({loss}) at epoch {epoch}, batch "
                    f"{begin // options.batch_size}; lower lr (now {options.lr}), standardise "
                    "the data, or check that the data lies in the support of the flow"
                )
            total += loss * idx.size
        val = None
        if val_data is not None:
            score = partial(evaluate, params)
            val = _validation_loss(score, val_data, val_context, validation_key, _chunk(flow))
            if not math.isfinite(val):
                raise FloatingPointError(
                    f"the validation loss became non-finite ({val}) at epoch {epoch}; lower lr "
                    f"(now {options.lr}) or check that the validation data lies in the flow's "
                    "support"
                )
        if tracker.record(total / n, val, evaluations / steps if continuous else None):
            best_params = params
        bar.set_postfix(
            train=f"{tracker.train[-1]:.4f}", **({} if val is None else {"val": f"{val:.4f}"})
        )
        done = tracker.epochs_done
        if path is not None and (
            done % options.every == 0 or done == options.epochs or tracker.stopped
        ):
            _save(path, meta, params, opt_state, best_params, plan, tracker)
        if tracker.stopped:
            break
    bar.close()
    if best_params is not None:
        params = best_params
    return eqx.combine(params, static), tracker.history()


def _chunk(flow) -> int:
    """Validation rows per call: fewer for a flow with a stochastic log-det (see
    `pyroflows._train.STOCHASTIC_CHUNK`)."""
    from pyroflows.numpyro.residual import ResidualBlock

    keyed = (ResidualBlock, Continuous)
    blocks = jax.tree_util.tree_leaves(flow, is_leaf=lambda x: isinstance(x, keyed))
    stochastic = any(
        (isinstance(b, ResidualBlock) and b.logdet != "exact")
        or (isinstance(b, Continuous) and b.options.trace != "exact")
        for b in blocks
    )
    return STOCHASTIC_CHUNK if stochastic else VALIDATION_CHUNK


def _validation_loss(
    nll, val_data: Array, val_context: Array | None, key: Array, chunk: int = VALIDATION_CHUNK
) -> float:
    """The mean NLL of the validation set, in chunks of ``chunk`` rows, chunk ``i`` with the
    key ``fold_in(key, i)`` (the same keys every epoch)."""
    total = 0.0
    for j, i in enumerate(range(0, val_data.shape[0], chunk)):
        c = None if val_context is None else val_context[i : i + chunk]
        x = val_data[i : i + chunk]
        total += float(nll(x, c, key=jax.random.fold_in(key, j))) * x.shape[0]
    return total / val_data.shape[0]
