"""Backend-free parts of ``fit`` (numpy and the standard library only).

Both backends' ``fit`` use this module, so that they accept and reject the same arguments
with the same messages, draw the same validation split and minibatch order from the same
seed, stop early by the same rule and describe a checkpoint in the same way:

* `check_fit_options` checks every training argument at once and returns `FitOptions`;
* `Plan` draws the validation split and, epoch by epoch, the minibatch order from one numpy
  generator (its state is what a checkpoint stores to resume the stream exactly);
* `Tracker` holds the history and the early-stopping state (best value, best epoch,
  patience counter, whether training stopped);
* `checkpoint_meta`, `check_resume`, `fingerprint` and `atomic_write` describe, check and
  write checkpoint files.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import numbers
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np

from pyroflows._checks import check_int, check_positive

__all__ = [
    "VALIDATION_CHUNK",
    "STOCHASTIC_CHUNK",
    "CHECKPOINT_FORMAT",
    "FitOptions",
    "Plan",
    "Tracker",
    "atomic_write",
    "check_fit_options",
    "check_resume",
    "check_rows",
    "checkpoint_meta",
    "fingerprint",
]

#: Rows per validation call: one call scores many rows with one draw of a stochastic log-det's
#: roulette (``ResidualBlock(logdet="series" | "unbiased")``), so flows with one are validated
#: in chunks of ``STOCHASTIC_CHUNK`` rows, each with its own (seeded) draws: the mean over the
#: chunks averages the roulette out. Other flows use ``VALIDATION_CHUNK`` (memory only).
VALIDATION_CHUNK, STOCHASTIC_CHUNK = 4096, 32

CHECKPOINT_FORMAT = "pyroflows-fit-checkpoint"
CHECKPOINT_VERSION = 1


#: What ``fit`` minimises: the negative log-likelihood, or the conditional flow-matching loss
#: of a continuous flow (`pyroflows.pyro.flow_matching_loss`).
OBJECTIVES = ("likelihood", "flow_matching")
#: Flow matching's pairing of base noise with data rows in a minibatch.
COUPLINGS = ("independent", "ot")


@dataclass(frozen=True)
class FitOptions:
    """The checked training arguments of ``fit``.

    Attributes:
        epochs: Maximum number of epochs.
        batch_size: Minibatch size.
        lr: Adam learning rate (> 0).
        weight_decay: L2 penalty (>= 0).
        validation: The fraction held out, or ``None`` when held-out data was given.
        patience: Epochs without improvement before stopping (``None``: never stop early).
        clip_grad: Max global gradient norm (``None``: no clipping).
        seed: Seed of the split and the minibatch order (>= 0).
        progress: Show a progress bar.
        checkpoint: Checkpoint path, or ``None``.
        every: Epochs between checkpoints.
        objective: ``"likelihood"`` or ``"flow_matching"``.
        coupling: Flow matching's pairing of noise and data: ``"independent"`` or ``"ot"``.
        kinetic: Weight of the RNODE kinetic-energy penalty (>= 0).
        jacobian: Weight of the RNODE Jacobian-norm penalty (>= 0).
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    validation: float | None
    patience: int | None
    clip_grad: float | None
    seed: int
    progress: bool
    checkpoint: str | None
    every: int
    objective: str = "likelihood"
    coupling: str = "independent"
    kinetic: float = 0.0
    jacobian: float = 0.0

    def arguments(self) -> dict[str, Any]:
        """The arguments a resumed run must share with the run that wrote the checkpoint
        (``epochs``, ``progress`` and ``every`` may change)."""
        return {
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "validation": "held-out data" if self.validation is None else self.validation,
            "patience": self.patience,
            "clip_grad": self.clip_grad,
            "seed": self.seed,
            "objective": self.objective,
            "coupling": self.coupling,
            "kinetic": self.kinetic,
            "jacobian": self.jacobian,
        }


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _check_checkpoint(checkpoint: Any) -> str | None:
    if checkpoint is None:
        return None
    if not isinstance(checkpoint, str | os.PathLike):
        raise ValueError(
            f"checkpoint must be None or a file path (str or os.PathLike), got {checkpoint!r}"
        )
    path = os.fspath(checkpoint)
    if not isinstance(path, str) or not path:
        raise ValueError(f"checkpoint must be a non-empty file path, got {checkpoint!r}")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint must be a file path, got the directory {path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(
            f"checkpoint {path!r} lies in a directory that does not exist ({directory!r}); "
            "create it first"
        )
    return path


def check_fit_options(
    *,
    epochs: Any,
    batch_size: Any,
    lr: Any,
    weight_decay: Any,
    validation: Any,
    held_out: bool,
    patience: Any,
    clip_grad: Any,
    seed: Any,
    progress: Any,
    checkpoint: Any,
    every: Any,
    objective: Any = "likelihood",
    coupling: Any = "independent",
    kinetic: Any = 0.0,
    jacobian: Any = 0.0,
) -> FitOptions:
    """Check the training arguments of ``fit``; raise ``ValueError`` naming the first bad one.

    Ints may be Python or numpy ints (bools are not ints here); numbers may be any real
    Python or numpy number. ``held_out`` says whether ``validation`` is held-out data (an
    array or a tuple, which the backend checks) rather than a fraction.

    Examples:
        >>> options = check_fit_options(
        ...     epochs=5, batch_size=32, lr=1e-3, weight_decay=0.0, validation=0.1,
        ...     held_out=False, patience=None, clip_grad=5.0, seed=0, progress=False,
        ...     checkpoint=None, every=None)
        >>> options.epochs, options.validation
        (5, 0.1)
    """
    epochs = check_int("epochs", epochs)
    batch_size = check_int("batch_size", batch_size)
    lr = check_positive("lr", lr)
    weight_decay = check_positive("weight_decay", weight_decay, allow_zero=True)
    if held_out:
        fraction = None
    elif _is_real(validation) and math.isfinite(validation) and 0 <= validation < 1:
        fraction = float(validation)
    else:
        raise ValueError(
            "validation must be a fraction in [0, 1), or held-out data given as val_data or "
            f"(val_data, val_context), got {validation!r}"
        )
    if patience is not None and not (
        isinstance(patience, int | np.integer)
        and not isinstance(patience, bool | np.bool_)
        and patience >= 1
    ):
        raise ValueError(
            f"patience must be None (never stop early) or a positive int, got {patience!r}"
        )
    if clip_grad is not None and not (
        _is_real(clip_grad) and math.isfinite(clip_grad) and clip_grad > 0
    ):
        raise ValueError(
            f"clip_grad must be None (no clipping) or a finite number > 0, got {clip_grad!r}"
        )
    seed = check_int("seed", seed, minimum=0)
    if not isinstance(progress, bool | np.bool_):
        raise ValueError(f"progress must be a bool, got {progress!r}")
    path = _check_checkpoint(checkpoint)
    if every is not None:
        every = check_int("every", every)
        if path is None:
            raise ValueError(
                f"every is the number of epochs between checkpoints and needs checkpoint=path, "
                f"got every={every} without a checkpoint"
            )
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {objective!r}")
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {list(COUPLINGS)}, got {coupling!r}")
    if objective == "likelihood" and coupling != "independent":
        raise ValueError(
            f"coupling={coupling!r} pairs noise and data for objective='flow_matching'; "
            "maximum likelihood has no pairing"
        )
    kinetic = check_positive("kinetic", kinetic, allow_zero=True)
    jacobian = check_positive("jacobian", jacobian, allow_zero=True)
    if objective == "flow_matching" and (kinetic or jacobian):
        raise ValueError(
            "kinetic and jacobian penalise the ODE solves of maximum likelihood; "
            "objective='flow_matching' solves no ODE (its straight paths need no penalty), "
            f"got kinetic={kinetic}, jacobian={jacobian}"
        )
    return FitOptions(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        validation=fraction,
        patience=None if patience is None else int(patience),
        clip_grad=None if clip_grad is None else float(clip_grad),
        seed=seed,
        progress=bool(progress),
        checkpoint=path,
        every=1 if every is None else every,
        objective=objective,
        coupling=coupling,
        kinetic=kinetic,
        jacobian=jacobian,
    )


def event_of(flow: object) -> int | tuple[int, ...]:
    """A flow's event size (vectors) or event shape (images): what a data row must be."""
    shape = tuple(flow.event_shape)  # type: ignore[attr-defined]
    return shape[0] if len(shape) == 1 else shape


def check_rows(name: str, shape: Sequence[int]) -> None:
    """Raise ``ValueError`` when an ``(n, features)`` array named ``name`` has no rows."""
    if shape[0] == 0:
        hint = (
            "pass held-out rows, or a fraction such as validation=0.1"
            if name.startswith("validation")
            else "fit needs at least one row to train on"
        )
        raise ValueError(f"{name} has no rows (shape {tuple(shape)}); {hint}")


def _new_generator(state: dict) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


class Plan:
    """The validation split and the minibatch order of one ``fit``, from one numpy generator.

    The generator is seeded with ``seed``; it first draws the split (when ``fraction`` is
    given), then one permutation of the training rows per epoch. Nothing else draws from it,
    so neither ``epochs`` nor early stopping changes the stream, and its state after an epoch
    (`rng_state`) is all a checkpoint needs to resume the order exactly.

    Args:
        rows: Number of data rows (> 0).
        fraction: Fraction of the rows held out for validation, or ``None`` (held-out data
            given separately: every row trains).
        seed: Seed of the generator.

    Attributes:
        train: Indices of the training rows.
        validation: Indices of the validation rows, or ``None``.

    Examples:
        >>> plan = Plan(10, 0.2, seed=0)
        >>> len(plan.train), len(plan.validation)
        (8, 2)
        >>> sorted(plan.epoch_order()) == list(range(8))
        True
    """

    def __init__(self, rows: int, fraction: float | None, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        if fraction is None:
            self.train, self.validation = np.arange(rows), None
            return
        perm = self._rng.permutation(rows)
        n_val = int(round(fraction * rows))
        self.train = perm[n_val:]
        self.validation = perm[:n_val] if n_val else None
        if not self.train.size:
            raise ValueError(
                f"no training data left after the validation split: validation={fraction} of "
                f"{rows} rows holds out {n_val}; lower validation or pass more data"
            )

    def epoch_order(self) -> np.ndarray:
        """The next epoch's order of the training rows (positions into `train`)."""
        return self._rng.permutation(self.train.size)

    def first_batch(self, batch_size: int) -> np.ndarray:
        """The positions of the next epoch's first minibatch, without advancing the stream."""
        return _new_generator(self.rng_state).permutation(self.train.size)[:batch_size]

    @property
    def rng_state(self) -> dict:
        """The generator's state (a JSON-able dict)."""
        return self._rng.bit_generator.state

    @rng_state.setter
    def rng_state(self, state: dict) -> None:
        self._rng = _new_generator(state)


@dataclass
class Tracker:
    """The history of a ``fit`` and its early-stopping state.

    Attributes:
        patience: Epochs without improvement before stopping (``None``: never).
        train: Mean training NLL per epoch.
        validation: Validation NLL per epoch (empty without validation).
        best_epoch: Epoch of the best validation NLL (0 without validation).
        best: Best validation NLL so far.
        waited: Epochs since the last improvement.
        stopped: Whether early stopping ended the run.
        nfe: Mean number of vector-field evaluations per training step, per epoch (flows
            with continuous layers trained by likelihood; empty otherwise).

    Examples:
        >>> tracker = Tracker(patience=1)
        >>> tracker.record(1.0, 0.5), tracker.record(0.9, 0.6), tracker.stopped
        (True, False, True)
    """

    patience: int | None
    train: list[float] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    best_epoch: int = 0
    best: float = math.inf
    waited: int = 0
    stopped: bool = False
    nfe: list[float] = field(default_factory=list)

    @property
    def epochs_done(self) -> int:
        """Number of epochs recorded."""
        return len(self.train)

    def record(self, train: float, validation: float | None, nfe: float | None = None) -> bool:
        """Record one epoch; return whether its validation NLL is the best so far."""
        self.train.append(float(train))
        if nfe is not None:
            self.nfe.append(float(nfe))
        if validation is None:
            return False
        self.validation.append(float(validation))
        if validation < self.best:
            self.best, self.best_epoch, self.waited = float(validation), len(self.train) - 1, 0
            return True
        self.waited += 1
        if self.patience is not None and self.waited >= self.patience:
            self.stopped = True
        return False

    def history(self) -> dict[str, list[float] | int]:
        """``{"train": [...], "validation": [...], "best_epoch": int}`` (copies), and
        ``"nfe": [...]`` when it was recorded."""
        history: dict[str, list[float] | int] = {
            "train": list(self.train),
            "validation": list(self.validation),
            "best_epoch": self.best_epoch,
        }
        if self.nfe:
            history["nfe"] = list(self.nfe)
        return history

    def state(self) -> dict[str, Any]:
        """The state as a JSON-able dict (``best`` may be ``inf``)."""
        return {
            "train": list(self.train),
            "validation": list(self.validation),
            "best_epoch": self.best_epoch,
            "best": self.best,
            "waited": self.waited,
            "stopped": self.stopped,
            "nfe": list(self.nfe),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], patience: int | None) -> Tracker:
        """A tracker holding ``state`` (as from `state`)."""
        return cls(patience=patience, **state)


def fingerprint(*arrays: np.ndarray | None) -> str:
    """A SHA-256 hex digest of the arrays' dtypes, shapes and values (``None`` allowed)."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none;")
            continue
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def checkpoint_meta(
    backend: str, options: FitOptions, layout: list[list[Any]], data: str
) -> dict[str, Any]:
    """What identifies a run in its checkpoint: format, backend, the flow's layout
    (``[[name, shape, dtype], ...]``), the arguments that must match and the data's
    `fingerprint`."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "backend": backend,
        "layout": [[str(n), [int(s) for s in shape], str(d)] for n, shape, d in layout],
        "arguments": {**options.arguments(), "data": data},
    }


def _layout_difference(saved: list, current: list) -> str:
    saved_map = {n: (list(s), d) for n, s, d in saved}
    current_map = {n: (list(s), d) for n, s, d in current}
    missing = sorted(set(current_map) - set(saved_map))
    unexpected = sorted(set(saved_map) - set(current_map))
    if missing or unexpected:
        return (
            f"the flow has {missing[:3]} that the checkpoint lacks, the checkpoint has "
            f"{unexpected[:3]} that the flow lacks"
        )
    for name, (shape, dtype) in current_map.items():
        if saved_map[name] != (shape, dtype):
            s_shape, s_dtype = saved_map[name]
            return (
                f"{name} is {tuple(shape)} {dtype} in the flow and {tuple(s_shape)} {s_dtype} "
                "in the checkpoint"
            )
    return "the order of the parameters differs"


def check_resume(path: str, saved: Any, expected: dict[str, Any], epochs: int) -> None:
    """Raise ``ValueError`` naming ``checkpoint`` unless the checkpoint metadata ``saved``
    was written by a run like ``expected`` (from `checkpoint_meta`) with at most ``epochs``
    epochs done."""
    backend = expected["backend"]
    if (
        not isinstance(saved, dict)
        or saved.get("format") != CHECKPOINT_FORMAT
        or saved.get("version") != CHECKPOINT_VERSION
    ):
        raise ValueError(
            f"checkpoint {path!r} is not a pyroflows fit checkpoint (format "
            f"{CHECKPOINT_FORMAT!r} version {CHECKPOINT_VERSION}); delete it or pass another path"
        )
    if saved.get("backend") != backend:
        raise ValueError(
            f"checkpoint {path!r} was written by the {saved.get('backend')} backend's fit; "
            f"the {backend} fit cannot resume it (move trained weights with get_params and "
            "set_params instead)"
        )
    if saved["layout"] != expected["layout"]:
        raise ValueError(
            f"checkpoint {path!r} does not match the flow: "
            f"{_layout_difference(saved['layout'], expected['layout'])}; pass the flow the "
            "checkpoint was written for, or another checkpoint path to start afresh"
        )
    differ = [
        f"{name}={saved['arguments'].get(name)!r} in the checkpoint, {value!r} now"
        for name, value in expected["arguments"].items()
        if saved["arguments"].get(name) != value
    ]
    if differ:
        what = "; ".join(d.replace("data=", "data fingerprint ") for d in differ)
        raise ValueError(
            f"checkpoint {path!r} was written by a fit with other arguments or data ({what}); "
            "resume with the same data and arguments (only epochs, every and progress may "
            "change), or pass another checkpoint path to start afresh"
        )
    done = len(saved["tracker"]["train"])
    if done > epochs:
        raise ValueError(
            f"checkpoint {path!r} holds {done} trained epochs, more than epochs={epochs}; "
            f"pass epochs >= {done} to resume it"
        )


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file atomically: ``write`` fills a temporary file in the same directory,
    which then replaces ``path`` (``os.replace``). On any error (``KeyboardInterrupt``
    included) the temporary file is removed and ``path`` is left as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
