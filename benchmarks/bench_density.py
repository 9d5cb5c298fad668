"""Density quality at equal budget: pyroflows (both backends) against zuko and FlowJAX.

Held-out negative log-likelihood of flows trained by maximum likelihood on three tabular
data sets bundled with scikit-learn (no download): ``wine`` (178 x 13), ``breast_cancer``
(569 x 30) and ``digits`` (1797 x 64, the 8x8 images as plain vectors).

Protocol, the same for every library:

* Split: a permutation of the rows by ``numpy.random.default_rng(seed)``, 70% training,
  15% validation, 15% test (rounded: ``n_train = round(0.7 n)``, ``n_val = round(0.15 n)``,
  the rest is the test set).
* Preprocessing: digits' pixels take 17 integer values (0..16), so they are dequantized
  first: ``x + u`` with ``u ~ U[0, 1)``, one draw per seed from the same generator, right
  after the permutation (without it, near-constant pixels give spiky densities and the
  scores are dominated by a few test points). Columns constant on the training split are
  dropped (none is, after dequantization), then every column is z-scored with the
  training split's mean and standard deviation. Data are float32.
* Models: 5 transforms, conditioner hidden widths (64, 64), ReLU, standard normal base.
  Spline models use 8 bins on [-5, 5] with identity tails (FlowJAX: ``knots=7``, its
  ``knots`` counts the inner knots; ``interval=5``).
* Training: Adam with learning rate 1e-3, minibatches of 128 (a fresh shuffle every epoch,
  the last batch smaller), gradient norm clipped at 5 (the default of ``pf.fit``, applied
  to the peers too), early stopping on the validation NLL with patience 30, the best
  validation epoch's weights restored, at most ``--max-epochs`` (default 1000) epochs.
  pyroflows trains with its own ``fit`` (``pf.fit`` / ``pfj.fit`` with
  ``validation=val``); zuko with a plain torch loop and FlowJAX with a plain optax / equinox
  loop that do the same.
* Score: the mean test NLL divided by the number of (kept) columns: nats per dimension.

Recipes (``--recipes``):

* ``nsf``: autoregressive neural spline flow. ``pf.NSF`` / ``pfj.NSF``; ``zuko.flows.NSF``;
  FlowJAX ``masked_autoregressive_flow`` with ``RationalQuadraticSpline(knots=7,
  interval=5)``.
* ``maf``: affine masked autoregressive flow. ``pf.MAF`` / ``pfj.MAF``; ``zuko.flows.MAF``;
  FlowJAX ``masked_autoregressive_flow`` with its default affine transformer.
* ``realnvp``: affine coupling. ``pf.RealNVP`` / ``pfj.RealNVP``; ``zuko.flows.RealNVP``;
  FlowJAX ``coupling_flow`` with its default affine transformer.
* ``nsf-coupling``: spline coupling. ``pf.NSF(mode="coupling")``; zuko's ``RealNVP`` class
  with its ``MonotonicRQSTransform`` (8 bins) as the univariate transformation; FlowJAX
  ``coupling_flow`` with the spline above.

Libraries (``--libraries``): ``pyroflows-torch`` (``pyroflows.pyro``), ``pyroflows-jax``
(``pyroflows.numpyro``), ``zuko`` (its defaults: natural / reversed orders and alternating
masks), ``zuko-random`` (zuko with ``randperm=True`` / ``randmask=True``), ``flowjax``
(its defaults: a random permutation after every layer). ``--order`` passes ``order=`` to
the pyroflows recipes (``random`` or ``alternate``; ``none`` passes nothing: the recipes'
default). Each record stores the variant it ran (``--variant`` names it, default the order).

Differences between the libraries that remain (they are the libraries' own choices):

* Scale bound of the affine transformer: pyroflows ``3 tanh(s / 3)`` on the log-scale;
  zuko a soft clip of the log-scale to about +-6.9; FlowJAX ``softplus(s) + 0.01`` on the
  scale.
* Spline parameterisation: pyroflows and zuko learn 8 widths, 8 heights and the 7 inner
  derivatives (boundary derivatives 1); FlowJAX also learns the 2 boundary derivatives.
* Initialisation: pyroflows zeroes the last layer of every conditioner (identity at the
  start); zuko and FlowJAX use their own random initialisations.
* Feature orders and masks, as listed above: that difference is what this benchmark
  measures.

Usage::

    python benchmarks/bench_density.py                       # everything, 3 seeds
    python benchmarks/bench_density.py --quick               # smoke test (seconds), writes nothing
    python benchmarks/bench_density.py --datasets wine --libraries zuko flowjax --seeds 0 1
    python benchmarks/bench_density.py --table-only          # rebuild results_density.md

Each finished run is merged into ``--out`` (default ``benchmarks/results_density.json``,
under a file lock, so split runs may write the same file) and the Markdown table
``results_density.md`` is rebuilt from it. Runs are single-threaded (``OMP_NUM_THREADS=1``,
one torch thread, XLA's CPU client single-threaded) unless the environment says otherwise.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import fcntl  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
DATASETS = ("wine", "breast_cancer", "digits")
LIBRARIES = ("pyroflows-torch", "pyroflows-jax", "zuko", "zuko-random", "flowjax")
DEFAULT_LIBRARIES = ("pyroflows-torch", "pyroflows-jax", "zuko", "flowjax")
RECIPES = ("nsf", "maf", "realnvp", "nsf-coupling")
ORDERS = ("none", "random", "alternate")


@dataclass(frozen=True)
class Protocol:
    """The settings every library trains under."""

    transforms: int = 5
    hidden: tuple[int, ...] = (64, 64)
    bins: int = 8
    bound: float = 5.0
    lr: float = 1e-3
    batch_size: int = 128
    patience: int = 30
    max_epochs: int = 1000
    clip_grad: float = 5.0
    affine_bound: float | None = None  # pyroflows MAF / RealNVP ``bound=``; None: default


@dataclass(frozen=True)
class Split:
    """A z-scored 70/15/15 split (float32)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    dropped: int

    @property
    def features(self) -> int:
        return self.train.shape[1]


@dataclass
class Result:
    """What one training run gives (NLLs in nats per dimension)."""

    test_nll: float
    test_nll_median: float
    test_nll_max: float
    val_nll: float
    best_epoch: int
    epochs: int
    seconds: float
    params: int


def _test_scores(log_prob: np.ndarray, features: int) -> dict[str, float]:
    """Mean, median and largest test NLL per dimension from the per-point log-densities.

    The mean is the score; the median and the maximum show when a few test points far
    outside the training data dominate it (affine flows can give such points huge NLLs).
    """
    nll = -np.asarray(log_prob, dtype=np.float64) / features
    return {
        "test_nll": float(nll.mean()),
        "test_nll_median": float(np.median(nll)),
        "test_nll_max": float(nll.max()),
    }


# ------------------------------------------------------------------------------------ data


def load_split(name: str, seed: int, rows: int | None = None) -> Split:
    """Load a bundled scikit-learn data set and split and z-score it as the protocol says.

    Args:
        name: One of `DATASETS`.
        seed: Seed of the row permutation.
        rows: Use only the first ``rows`` rows of the permuted data (smoke tests).

    Returns:
        The three z-scored parts, float32.
    """
    from sklearn import datasets

    loaders = {
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
    }
    x = np.asarray(loaders[name](return_X_y=True)[0], dtype=np.float64)
    rng = np.random.default_rng(seed)
    x = x[rng.permutation(x.shape[0])]
    if name == "digits":  # 17 integer levels: uniform dequantization, one fixed draw
        x = x + rng.uniform(size=x.shape)
    if rows is not None:
        x = x[:rows]
    n = x.shape[0]
    n_train, n_val = int(round(0.7 * n)), int(round(0.15 * n))
    train, val, test = x[:n_train], x[n_train : n_train + n_val], x[n_train + n_val :]
    mean, sd = train.mean(0), train.std(0)
    keep = sd > 0

    def z(part: np.ndarray) -> np.ndarray:
        return ((part[:, keep] - mean[keep]) / sd[keep]).astype(np.float32)

    return Split(z(train), z(val), z(test), int((~keep).sum()))


def epoch_batches(rng: np.random.Generator, n: int, batch_size: int) -> Iterator[np.ndarray]:
    """Index batches of one epoch: a fresh permutation, the last batch smaller."""
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


class EarlyStopping:
    """Patience counter on the validation NLL that remembers the best epoch."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = math.inf
        self.best_epoch = -1
        self.waited = 0

    def update(self, value: float, epoch: int) -> tuple[bool, bool]:
        """Record an epoch; returns ``(improved, stop)``."""
        if value < self.best:
            self.best, self.best_epoch, self.waited = value, epoch, 0
            return True, False
        self.waited += 1
        return False, self.waited >= self.patience


# ------------------------------------------------------------------------------- pyroflows


def _recipe_call(module: Any, recipe: str, features: int, p: Protocol, order: str) -> Callable:
    """A function ``**extra -> Flow`` for a pyroflows recipe (``extra``: ``key=`` in JAX)."""
    kwargs: dict[str, Any] = {"transforms": p.transforms, "hidden": p.hidden}
    if order != "none":
        kwargs["order"] = order
    if recipe == "nsf":
        return lambda **kw: module.NSF(features, bins=p.bins, bound=p.bound, **kwargs, **kw)
    if recipe == "nsf-coupling":
        return lambda **kw: module.NSF(
            features, bins=p.bins, bound=p.bound, mode="coupling", **kwargs, **kw
        )
    affine = {} if p.affine_bound is None else {"bound": p.affine_bound}
    if recipe == "maf":
        return lambda **kw: module.MAF(features, **kwargs, **affine, **kw)
    if recipe == "realnvp":
        return lambda **kw: module.RealNVP(features, **kwargs, **affine, **kw)
    raise ValueError(f"unknown recipe {recipe!r}")


def _fit_options(split: Split, p: Protocol, seed: int) -> dict[str, Any]:
    """The keyword arguments of ``pf.fit`` / ``pfj.fit`` for the protocol (both backends)."""
    return {
        "epochs": p.max_epochs,
        "batch_size": p.batch_size,
        "lr": p.lr,
        "validation": split.val,
        "patience": p.patience,
        "clip_grad": p.clip_grad,
        "seed": seed,
        "progress": False,
    }


def run_pyroflows_torch(split: Split, recipe: str, seed: int, p: Protocol, order: str) -> Result:
    import torch

    import pyroflows.pyro as pf

    torch.manual_seed(seed)
    flow = _recipe_call(pf, recipe, split.features, p, order)()
    start = time.perf_counter()
    history = pf.fit(
        flow,
        split.train,
        **_fit_options(split, p, seed),
    )
    seconds = time.perf_counter() - start
    with torch.no_grad():
        log_prob = flow().log_prob(torch.as_tensor(split.test)).numpy()
    best = history["best_epoch"]
    return Result(
        **_test_scores(log_prob, split.features),
        val_nll=history["validation"][best] / split.features,
        best_epoch=best,
        epochs=len(history["train"]),
        seconds=seconds,
        params=sum(t.numel() for t in flow.parameters()),
    )


def run_pyroflows_jax(split: Split, recipe: str, seed: int, p: Protocol, order: str) -> Result:
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import pyroflows.numpyro as pfj

    flow = _recipe_call(pfj, recipe, split.features, p, order)(key=jax.random.key(seed))
    start = time.perf_counter()
    flow, history = pfj.fit(
        flow,
        split.train,
        **_fit_options(split, p, seed),
    )
    seconds = time.perf_counter() - start
    log_prob = np.asarray(flow().log_prob(jnp.asarray(split.test)))
    best = history["best_epoch"]
    leaves = jax.tree_util.tree_leaves(eqx.filter(flow.transforms, eqx.is_inexact_array))
    return Result(
        **_test_scores(log_prob, split.features),
        val_nll=history["validation"][best] / split.features,
        best_epoch=best,
        epochs=len(history["train"]),
        seconds=seconds,
        params=int(sum(leaf.size for leaf in leaves)),
    )


# ------------------------------------------------------------------------------------ zuko


def _zuko_flow(recipe: str, features: int, p: Protocol, random: bool) -> Any:
    import zuko
    from zuko.transforms import MonotonicRQSTransform

    common = {"transforms": p.transforms, "hidden_features": p.hidden}
    if recipe == "nsf":
        return zuko.flows.NSF(features, bins=p.bins, randperm=random, **common)
    if recipe == "maf":
        return zuko.flows.MAF(features, randperm=random, **common)
    if recipe == "realnvp":
        return zuko.flows.RealNVP(features, randmask=random, **common)
    if recipe == "nsf-coupling":  # zuko's NSF class is autoregressive; this is its coupling
        return zuko.flows.RealNVP(
            features,
            randmask=random,
            univariate=MonotonicRQSTransform,  # bound 5 (its default), slope 1e-3
            shapes=[(p.bins,), (p.bins,), (p.bins - 1,)],
            **common,
        )
    raise ValueError(f"unknown recipe {recipe!r}")


def run_zuko(split: Split, recipe: str, seed: int, p: Protocol, random: bool = False) -> Result:
    import torch

    torch.manual_seed(seed)
    flow = _zuko_flow(recipe, split.features, p, random)
    train, val, test = (torch.as_tensor(a) for a in (split.train, split.val, split.test))
    optimizer = torch.optim.Adam(flow.parameters(), lr=p.lr)
    rng = np.random.default_rng(seed)
    stopper = EarlyStopping(p.patience)
    best_state, epochs = None, 0
    start = time.perf_counter()
    for epoch in range(p.max_epochs):
        epochs = epoch + 1
        flow.train()
        for idx in epoch_batches(rng, train.shape[0], p.batch_size):
            loss = -flow().log_prob(train[torch.as_tensor(idx)]).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"zuko: non-finite loss at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), p.clip_grad)
            optimizer.step()
        flow.eval()
        with torch.no_grad():
            val_nll = -flow().log_prob(val).mean().item()
        if not math.isfinite(val_nll):
            raise FloatingPointError(f"zuko: non-finite validation loss at epoch {epoch}")
        improved, stop = stopper.update(val_nll, epoch)
        if improved:
            best_state = copy.deepcopy(flow.state_dict())
        if stop:
            break
    seconds = time.perf_counter() - start
    flow.load_state_dict(best_state)
    with torch.no_grad():
        log_prob = flow().log_prob(test).numpy()
    return Result(
        **_test_scores(log_prob, split.features),
        val_nll=stopper.best / split.features,
        best_epoch=stopper.best_epoch,
        epochs=epochs,
        seconds=seconds,
        params=sum(t.numel() for t in flow.parameters() if t.requires_grad),
    )


# --------------------------------------------------------------------------------- FlowJAX


def _flowjax_flow(recipe: str, features: int, p: Protocol, key: Any) -> Any:
    import jax.numpy as jnp
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow, masked_autoregressive_flow

    base = Normal(jnp.zeros(features))
    depth, width = len(p.hidden), p.hidden[0]
    if len(set(p.hidden)) != 1:
        raise ValueError(f"FlowJAX's MLPs have one width, got hidden={p.hidden}")
    common = {"base_dist": base, "flow_layers": p.transforms, "nn_width": width, "nn_depth": depth}
    spline = RationalQuadraticSpline(knots=p.bins - 1, interval=p.bound)
    if recipe == "nsf":
        return masked_autoregressive_flow(key, transformer=spline, **common)
    if recipe == "maf":
        return masked_autoregressive_flow(key, **common)
    if recipe == "realnvp":
        return coupling_flow(key, **common)
    if recipe == "nsf-coupling":
        return coupling_flow(key, transformer=spline, **common)
    raise ValueError(f"unknown recipe {recipe!r}")


def run_flowjax(split: Split, recipe: str, seed: int, p: Protocol) -> Result:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax
    import paramax

    dist = _flowjax_flow(recipe, split.features, p, jax.random.key(seed))
    params, static = eqx.partition(
        dist, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable)
    )
    optimizer = optax.chain(optax.clip_by_global_norm(p.clip_grad), optax.adam(p.lr))
    opt_state = optimizer.init(params)
    train, val, test = (jnp.asarray(a) for a in (split.train, split.val, split.test))

    def nll(params: Any, x: Any) -> Any:
        return -paramax.unwrap(eqx.combine(params, static)).log_prob(x).mean()

    @jax.jit
    def step(params: Any, opt_state: Any, x: Any) -> tuple[Any, Any, Any]:
        loss, grads = jax.value_and_grad(nll)(params, x)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    evaluate = jax.jit(nll)
    rng = np.random.default_rng(seed)
    stopper = EarlyStopping(p.patience)
    best_params, epochs = params, 0
    start = time.perf_counter()
    for epoch in range(p.max_epochs):
        epochs = epoch + 1
        for idx in epoch_batches(rng, train.shape[0], p.batch_size):
            params, opt_state, loss = step(params, opt_state, train[idx])
            if not math.isfinite(float(loss)):
                raise FloatingPointError(f"flowjax: non-finite loss at epoch {epoch}")
        val_nll = float(evaluate(params, val))
        if not math.isfinite(val_nll):
            raise FloatingPointError(f"flowjax: non-finite validation loss at epoch {epoch}")
        improved, stop = stopper.update(val_nll, epoch)
        if improved:
            best_params = params
        if stop:
            break
    seconds = time.perf_counter() - start
    log_prob = np.asarray(paramax.unwrap(eqx.combine(best_params, static)).log_prob(test))
    leaves = jax.tree_util.tree_leaves(params)
    return Result(
        **_test_scores(log_prob, split.features),
        val_nll=stopper.best / split.features,
        best_epoch=stopper.best_epoch,
        epochs=epochs,
        seconds=seconds,
        params=int(sum(leaf.size for leaf in leaves)),
    )


def run_one(library: str, split: Split, recipe: str, seed: int, p: Protocol, order: str):
    """Train and score one (library, recipe, seed) on ``split``."""
    if library == "pyroflows-torch":
        return run_pyroflows_torch(split, recipe, seed, p, order)
    if library == "pyroflows-jax":
        return run_pyroflows_jax(split, recipe, seed, p, order)
    if library == "zuko":
        return run_zuko(split, recipe, seed, p, random=False)
    if library == "zuko-random":
        return run_zuko(split, recipe, seed, p, random=True)
    if library == "flowjax":
        return run_flowjax(split, recipe, seed, p)
    raise ValueError(f"unknown library {library!r}")


# --------------------------------------------------------------------------------- results


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "jax", "equinox", "optax", "zuko", "flowjax", "scikit-learn"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = Path(tempfile.gettempdir()) / f"{path.resolve().as_posix().replace('/', '_')}.lock"
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _key(record: dict) -> tuple:
    return tuple(record[k] for k in ("dataset", "library", "variant", "recipe", "seed"))


def merge_record(path: Path, record: dict) -> list[dict]:
    """Add ``record`` to the JSON file at ``path`` (replacing one with the same key)."""
    with _locked(path):
        data = json.loads(path.read_text()) if path.exists() else {"records": []}
        records = [r for r in data["records"] if _key(r) != _key(record)]
        records.append(record)
        records.sort(key=_key)
        data["records"] = records
        path.write_text(json.dumps(data, indent=1) + "\n")
    return records


def _fmt(x: float | None) -> str:
    return "fail" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _finite(x: float) -> float | None:
    """JSON has no NaN: a failed run's numbers are stored as null."""
    return x if math.isfinite(x) else None


def _column(record: dict) -> str:
    lib, variant = record["library"], record["variant"]
    return lib if variant == "default" else f"{lib} ({variant})"


def _column_rank(column: str) -> tuple:
    library, _, variant = column.partition(" (")
    rank = LIBRARIES.index(library) if library in LIBRARIES else len(LIBRARIES)
    return rank, variant != "alternate)", variant


def _cell(records: list[dict], key: str) -> tuple[str, float | None]:
    """``**mean** (per-seed values)`` of ``key`` over one cell's seeds, and the mean."""
    rs = sorted(records, key=lambda r: r["seed"])
    values = [r.get(key) for r in rs]
    mean = statistics.fmean(values) if all(v is not None for v in values) else None
    n = "" if len(rs) == 3 else f"; n={len(rs)}"
    return f"**{_fmt(mean)}** ({', '.join(_fmt(v) for v in values)}{n})", mean


def _recipe_table(records: list[dict], key: str) -> list[str]:
    """Rows data sets (and their mean), columns libraries, cells ``key`` over the seeds."""
    cols = sorted({_column(r) for r in records}, key=_column_rank)
    lines = ["| data set | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    means: dict[str, list[float | None]] = {c: [] for c in cols}
    for dataset in DATASETS:
        cells = []
        for col in cols:
            rs = [r for r in records if r["dataset"] == dataset and _column(r) == col]
            text, mean = _cell(rs, key) if rs else ("", None)
            cells.append(text)
            means[col].append(mean)
        if any(cells):
            lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    overall = [
        _fmt(statistics.fmean(m)) if m and all(v is not None for v in m) else ""
        for m in means.values()
    ]
    return [*lines, "| mean of the data sets | " + " | ".join(overall) + " |", ""]


def table(records: list[dict]) -> str:
    """Markdown tables of the records: per recipe, rows data sets, columns libraries."""
    lines = [
        "# Density benchmark: held-out NLL (nats per dimension, lower is better)",
        "",
        "Written by `benchmarks/bench_density.py` (protocol in its docstring and in",
        "`benchmarks/README.md`). Each cell: mean over the seeds in bold, then the per-seed",
        "values (seeds in increasing order; `n=` where there are not 3). pyroflows columns:",
        "`(alternate)` is the recipes' structure before `order='random'` became their default",
        "(measured with that code; `order='alternate'` builds the same flows), `(random)` the",
        "default. `fan-in init` marks runs made before the masked layers' weights started as",
        "`torch.nn.Linear`'s (they were rescaled to each unit's unmasked inputs; 2026-12-04);",
        "`(alternate)` and `(random, bound 3)` were measured with that start too.",
        "`zuko` is zuko's default (alternating orders and masks), `zuko-random`",
        "its `randperm=True` / `randmask=True`; `flowjax` is FlowJAX's default (a random",
        "permutation after each layer). The last row of each table is the mean of the three",
        "data sets' means.",
        "",
        "## Mean test NLL (the score)",
        "",
    ]
    for recipe in RECIPES:
        subset = [r for r in records if r["recipe"] == recipe]
        if subset:
            lines += [f"### {recipe}", "", *_recipe_table(subset, "test_nll")]
    lines += [
        "## Median test NLL (per test point)",
        "",
        "The same runs scored by the median over test points of the per-point NLL per",
        "dimension: insensitive to the few test points far outside the training data that",
        "dominate some means (the largest per-point NLL of every run is in the table of",
        "runs below).",
        "",
    ]
    for recipe in RECIPES:
        subset = [r for r in records if r["recipe"] == recipe]
        if subset and all("test_nll_median" in r for r in subset):
            lines += [f"### {recipe}", "", *_recipe_table(subset, "test_nll_median")]
    lines += [
        "## Runs",
        "",
        "| data set | recipe | library | seed | test | test median | test max | val | best "
        "epoch | epochs | s | params |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.0f}"
        lines.append(
            f"| {r['dataset']} | {r['recipe']} | {_column(r)} | {r['seed']} | "
            f"{_fmt(r['test_nll'])} | {_fmt(r.get('test_nll_median'))} | "
            f"{_fmt(r.get('test_nll_max'))} | {_fmt(r['val_nll'])} | {r['best_epoch']} | "
            f"{r['epochs']} | {seconds} | {r['params']} |"
        )
    return "\n".join(lines) + "\n"


def write_table(json_path: Path) -> Path:
    records = json.loads(json_path.read_text())["records"] if json_path.exists() else []
    md = json_path.with_suffix(".md")
    md.write_text(table(records))
    return md


# ------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--datasets", nargs="+", choices=DATASETS, help="default: all (--quick: wine)"
    )
    parser.add_argument(
        "--libraries", nargs="+", choices=LIBRARIES, default=list(DEFAULT_LIBRARIES)
    )
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=["nsf", "maf"])
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2 (--quick: 0)")
    parser.add_argument(
        "--order",
        choices=ORDERS,
        default="none",
        help="order= passed to the pyroflows recipes ('none': the recipes' default)",
    )
    parser.add_argument(
        "--variant",
        default=None,
        help="label of the pyroflows runs in the results (default: the order, or 'default')",
    )
    parser.add_argument(
        "--affine-bound",
        type=float,
        default=None,
        help="bound= passed to the pyroflows MAF / RealNVP recipes (default: theirs)",
    )
    parser.add_argument("--max-epochs", type=int, default=Protocol.max_epochs)
    parser.add_argument("--patience", type=int, default=Protocol.patience)
    parser.add_argument("--out", type=Path, default=HERE / "results_density.json")
    parser.add_argument(
        "--skip-done", action="store_true", help="skip runs whose record is already in --out"
    )
    parser.add_argument("--note", default="", help="free text stored with every record")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny, writes nothing")
    parser.add_argument("--table-only", action="store_true", help="rebuild the .md from --out")
    args = parser.parse_args(argv)
    if args.variant is None:
        args.variant = "default" if args.order == "none" else args.order
    if args.datasets is None:
        args.datasets = ["wine"] if args.quick else list(DATASETS)
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.table_only:
        print(f"wrote {write_table(args.out)}")
        return
    import torch

    torch.set_num_threads(1)
    protocol = Protocol(
        max_epochs=args.max_epochs, patience=args.patience, affine_bound=args.affine_bound
    )
    rows = None
    if args.quick:
        protocol = Protocol(
            transforms=2, hidden=(16, 16), max_epochs=2, patience=1, affine_bound=args.affine_bound
        )
        rows = 200
    versions = _versions()
    done: set[tuple] = set()
    if args.skip_done and args.out.exists():
        done = {_key(r) for r in json.loads(args.out.read_text())["records"]}
    for dataset in args.datasets:
        for seed in args.seeds:
            split = load_split(dataset, seed, rows)
            for recipe in args.recipes:
                for library in args.libraries:
                    variant = args.variant if library.startswith("pyroflows") else "default"
                    if (dataset, library, variant, recipe, seed) in done:
                        continue
                    try:
                        result = run_one(library, split, recipe, seed, protocol, args.order)
                    except FloatingPointError as error:
                        print(f"  {library} {recipe} {dataset} seed {seed}: {error}", flush=True)
                        result = Result(*(math.nan,) * 4, -1, -1, math.nan, -1)
                    record = {
                        "dataset": dataset,
                        "library": library,
                        "variant": variant,
                        "recipe": recipe,
                        "seed": seed,
                        "features": split.features,
                        "dropped_columns": split.dropped,
                        "n_train": split.train.shape[0],
                        **{
                            k: _finite(v) if isinstance(v, float) else v
                            for k, v in asdict(result).items()
                        },
                        "note": args.note,
                        "protocol": asdict(protocol),
                        "versions": versions,
                        "measured": time.strftime("%Y-%m-%d %H:%M"),
                    }
                    print(
                        f"{dataset:13s} seed {seed} {recipe:12s} {_column(record):28s} "
                        f"test {_fmt(result.test_nll)} val {_fmt(result.val_nll)} "
                        f"best {result.best_epoch:4d}/{result.epochs:4d} "
                        f"{result.seconds:6.1f} s  {result.params} params",
                        flush=True,
                    )
                    if not args.quick:
                        merge_record(args.out, record)
                        write_table(args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
