"""The backend-free part of ``AutoFlow``: arguments, recipe defaults and the warm start.

Both ``pyroflows.pyro.AutoFlow`` and ``pyroflows.numpyro.AutoFlow`` check their arguments,
fill in the recipe's defaults and choose the frozen Gaussian under the flow here. The warm
start works on float64 numpy vectors through three callbacks that each backend supplies
(the potential, its gradient and Hessian, and a Monte Carlo ELBO of a Gaussian), so the
MAP search, the mode test and the Laplace approximation are written once and give the same
answer in both backends.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "BASES",
    "RECIPE_NAMES",
    "RESIDUAL_RECIPES",
    "AMORTIZED_NAMES",
    "MODE_FIT",
    "MODE_STEP_SCALE",
    "RESTARTS",
    "Mixture",
    "WarmStart",
    "amortized_kwargs",
    "base_kind",
    "check_arguments",
    "check_restarts",
    "find_modes",
    "mode_fit_data",
    "posterior_draws",
    "resample",
    "recipe_kwargs",
    "warm_start",
]

#: Recipe names accepted by ``AutoFlow(model, flow=...)``.
RECIPE_NAMES = (
    "iaf",
    "maf",
    "nsf",
    "realnvp",
    "nice",
    "planar",
    "radial",
    "sylvester",
    "residual",
    "ffjord",
)
#: The recipes of the residual family: built with ``invert=True`` (explicit base -> data map,
#: so a guide samples and scores its draws in one pass).
RESIDUAL_RECIPES = ("planar", "radial", "sylvester", "residual")
#: Flow names accepted by ``AmortizedFlow(..., flow=...)``.
AMORTIZED_NAMES = ("iaf", "planar", "radial", "sylvester")

#: Base distributions accepted by ``AutoFlow(model, base=...)``: a standard normal, a
#: Laplace of unit variance (exponential tails) and a Student-t (polynomial tails, with
#: ``base_df`` degrees of freedom).
BASES = ("normal", "laplace", "student_t")

#: Latent dimensions above which the MAP search is L-BFGS instead of Newton.
NEWTON_MAX_DIM = 300

Derivatives = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

NO_MODE_WARNING = (
    "AutoFlow: the MAP search did not reach a mode (the posterior may have none, as a "
    "funnel); the guide starts from init_loc_fn with an isotropic scale (the best ELBO of "
    "init_scale x 1, 3.2 or 10) instead of the Laplace approximation, so give SVI more steps "
    "or a larger learning rate."
)


def check_arguments(
    flow: Any,
    warmup: Any,
    init_scale: Any,
    flow_signature: str,
    base_df: Any = None,
    base: Any = "normal",
) -> str:
    """Raise a clear error for a bad ``flow``, ``warmup``, ``init_scale``, ``base`` or ``base_df``.

    Args:
        flow: A recipe name or a callable.
        warmup: ``"laplace"``, ``"map"`` or ``None``.
        init_scale: A positive number.
        flow_signature: How the backend's flow callable is called (for the message).
        base_df: ``None`` or a positive number (the Student-t base's degrees of freedom).
        base: One of `BASES`.

    Returns:
        The base distribution to build, from `base_kind`.
    """
    if isinstance(flow, str):
        if flow.lower() not in RECIPE_NAMES:
            raise ValueError(
                f"flow must be one of {sorted(RECIPE_NAMES)} or a callable, got {flow!r}"
            )
    elif not callable(flow):
        raise TypeError(f"flow must be a recipe name or a callable {flow_signature}, got {flow!r}")
    if warmup not in ("laplace", "map", None):
        raise ValueError(f"warmup must be 'laplace', 'map' or None, got {warmup!r}")
    if not (isinstance(init_scale, numbers.Real) and init_scale > 0):
        raise ValueError(f"init_scale must be a number > 0, got {init_scale!r}")
    return base_kind(base, base_df)


def check_stl(stl: Any) -> bool:
    """``stl`` (score the guide's own draws with the path gradient only) must be a bool."""
    if not isinstance(stl, (bool, np.bool_)):
        raise TypeError(f"stl must be True or False, got {stl!r}")
    return bool(stl)


def check_restarts(restarts: Any) -> int:
    """``restarts`` (extra starts of the mode search) must be an integer >= 0."""
    if isinstance(restarts, (bool, np.bool_)) or not (
        isinstance(restarts, numbers.Integral) and restarts >= 0
    ):
        raise ValueError(f"restarts must be an integer >= 0, got {restarts!r}")
    return int(restarts)


def base_kind(base: Any, base_df: Any) -> str:
    """The base distribution ``AutoFlow`` builds: ``"normal"``, ``"laplace"`` or ``"student_t"``.

    ``base_df`` alone (with the default ``base="normal"``) means a Student-t base, so that
    ``AutoFlow(model, base_df=6)`` keeps working; ``base="student_t"`` needs ``base_df``, and
    ``base="laplace"`` takes none.

    Raises:
        ValueError: ``base`` is not one of `BASES`, ``base_df`` is not a finite number > 0,
            or the two do not go together.
    """
    if not (isinstance(base, str) and base in BASES):
        raise ValueError(f"base must be one of {list(BASES)}, got {base!r}")
    if base_df is not None and not (
        isinstance(base_df, numbers.Real) and not isinstance(base_df, bool) and 0 < base_df < np.inf
    ):
        raise ValueError(
            f"base_df must be None (a standard normal base) or a finite number > 0 (the degrees "
            f"of freedom of a Student-t base), got {base_df!r}"
        )
    if base_df is not None:
        if base == "laplace":
            raise ValueError(
                f"base_df is the degrees of freedom of a Student-t base and cannot go with "
                f"base='laplace', got base_df={base_df!r}"
            )
        return "student_t"
    if base == "student_t":
        raise ValueError("base='student_t' needs base_df (its degrees of freedom), got None")
    return base


def recipe_kwargs(name: str, latent_dim: int, user_kwargs: Mapping[str, Any]) -> dict:
    """The recipe's keyword arguments: the user's, over ``AutoFlow``'s defaults.

    Defaults: ``transforms=3`` and ``hidden=(w, w)`` with ``w = max(32, 4 * latent_dim)``;
    ``"nsf"`` builds spline coupling (``mode="coupling"``), which samples in one pass (the
    autoregressive NSF is MAF-direction and would sample one dimension at a time);
    ``order="alternate"`` (natural / reversed orders, even / odd masks) and, for the affine
    recipes (``"iaf"``, ``"maf"``, ``"realnvp"``), ``bound=3.0``: the recipes' defaults
    before they became ``order="random"`` and ``bound=1.0``, so that ``AutoFlow`` keeps
    building the flows its published posteriordb results were measured with. Pass
    ``order="random"`` (and ``bound=1.0``) among the flow's keyword arguments for the
    recipes' new defaults.

    The residual family (``"planar"``, ``"radial"``, ``"sylvester"``, ``"residual"``) is built
    with ``invert=True`` (one-pass sampling and scoring); ``"planar"`` and ``"radial"`` take
    ``transforms=8`` (each layer is a rank-one change), and ``"residual"`` takes
    ``logdet="exact"``: the guide's entropy term is then exact and deterministic, at
    ``latent_dim`` backward passes a block (pass ``logdet="unbiased"`` for large models).
    ``"ffjord"`` is one continuous block (``transforms=1``) with the recipe's exact trace and
    adaptive ``dopri5``: the guide samples and scores its draws in one forward solve.
    """
    width = max(32, 4 * latent_dim)
    name = name.lower()
    if name == "ffjord":
        return {"transforms": 1, "hidden": (width, width), **user_kwargs}
    if name in RESIDUAL_RECIPES:
        transforms = 8 if name in ("planar", "radial") else 3
        kwargs = {"transforms": transforms, "hidden": (width, width), **user_kwargs}
        kwargs.setdefault("invert", True)
        if name == "residual":
            kwargs.setdefault("logdet", "exact")
        return kwargs
    kwargs = {"transforms": 3, "hidden": (width, width), **user_kwargs}
    kwargs.setdefault("order", "alternate")
    if name in ("iaf", "maf", "realnvp"):
        kwargs.setdefault("bound", 3.0)
    if name == "nsf":
        kwargs.setdefault("mode", "coupling")
    return kwargs


def amortized_kwargs(flow: Any, user_kwargs: Mapping[str, Any]) -> tuple[str, dict]:
    """The recipe name and keyword arguments of an ``AmortizedFlow``: ``"iaf"`` with
    ``bound=3.0`` and ``order="alternate"`` (the structure of the published VAE results),
    the residual-family recipes with ``invert=True`` (their explicit map samples and scores
    the posterior's draws in one pass; ``invert=False`` is refused, since a guide would then
    invert every layer at every draw)."""
    if not isinstance(flow, str) or flow.lower() not in AMORTIZED_NAMES:
        raise ValueError(f"flow must be one of {list(AMORTIZED_NAMES)}, got {flow!r}")
    name = flow.lower()
    kwargs = dict(user_kwargs)
    if name == "iaf":
        kwargs.setdefault("bound", 3.0)
        kwargs.setdefault("order", "alternate")
    else:
        if kwargs.get("invert", True) is not True:
            raise ValueError(
                "an AmortizedFlow samples with the layers' explicit map: invert must be True "
                f"(the default), got invert={kwargs['invert']!r}"
            )
        kwargs["invert"] = True
    return name, kwargs


#: The Newton search stops when, for ``RUNAWAY_STEPS`` steps in a row, the Hessian's largest
#: absolute eigenvalue is ``RUNAWAY_GROWTH`` times the one at the start and its condition
#: number exceeds ``1 / SINGULAR`` (numerically singular in float64).
RUNAWAY_GROWTH, SINGULAR, RUNAWAY_STEPS = 1e6, 1e-15, 5


def newton_map(
    init: np.ndarray,
    potential: Callable[[np.ndarray], float],
    derivatives: Derivatives,
    max_steps: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Minimise ``potential`` by saddle-free damped Newton from ``init``.

    Each step moves along the Hessian's eigenvectors scaled by ``1 / (|eigenvalue| +
    damping)``. This is invariant to the scale of each coordinate, so posteriors whose
    scales differ by orders of magnitude converge in a few steps, and the absolute values
    turn saddle directions into descent directions.

    On a posterior without a mode (a funnel) the potential falls without end while the
    curvature blows up; the search then stops early (see ``RUNAWAY_GROWTH``) and the
    caller's mode test rejects the point.

    Returns:
        The best point and the gradient and Hessian there (``None`` if they were not finite
        or the start is not finite), so the caller need not differentiate again.
    """
    z = np.asarray(init, dtype=np.float64)
    value = potential(z)
    if not np.isfinite(value):
        return z, None, None
    damping, converged = 1e-3, False
    first_top, singular_steps = None, 0
    for _ in range(max_steps + 1):
        grad, hessian = derivatives(z)
        if not (np.isfinite(grad).all() and np.isfinite(hessian).all()):
            return z, None, None
        if converged:
            break
        eigval, eigvec = np.linalg.eigh(0.5 * (hessian + hessian.T))
        size = np.abs(eigval)
        top = float(size.max()) + 1e-30
        first_top = first_top or top
        # Running off to a singularity (a funnel's neck): the curvature has grown by orders
        # of magnitude and the Hessian is numerically singular in float64, step after step.
        # No mode lies ahead; stop instead of creeping on for the whole step budget.
        runaway = top > RUNAWAY_GROWTH * first_top and size.min() < SINGULAR * top
        singular_steps = singular_steps + 1 if runaway else 0
        if singular_steps >= RUNAWAY_STEPS:
            break
        projected = eigvec.T @ grad
        for _ in range(40):
            candidate = z - eigvec @ (projected / (size + damping * top))
            new = potential(candidate)
            if new < value:
                break
            damping *= 10.0
        else:
            break  # no step decreases the potential: at a (numerical) minimum
        converged = value - new <= 1e-7 * max(1.0, abs(new))
        z, value = candidate, new
        damping = max(damping / 10.0, 1e-9)
    return z, grad, hessian


def is_mode(grad: np.ndarray | None, hessian: np.ndarray | None, tolerance: float = 0.1) -> bool:
    """Whether a point is a strict local mode: a positive definite Hessian and a Newton
    decrement ``g^T H^-1 g`` below ``tolerance`` (scale-free: half of it is the quadratic
    model's gap to the mode, in nats)."""
    if grad is None or hessian is None:
        return False
    try:
        factor = np.linalg.cholesky(0.5 * (hessian + hessian.T))
    except np.linalg.LinAlgError:
        return False
    half = np.linalg.solve(factor, grad)  # g^T H^-1 g = |C^-1 g|^2 with H = C C^T
    return bool(np.isfinite(half).all() and half @ half < tolerance)


def laplace_scale_tril(hessian: np.ndarray, init_scale: float) -> np.ndarray:
    """Cholesky factor of the inverse Hessian, or a diagonal where it is not positive definite."""
    hessian = 0.5 * (hessian + hessian.T)
    try:
        precision_tril = np.linalg.cholesky(hessian)
        inverse = np.linalg.inv(precision_tril)  # H^-1 = C^-T C^-1
        covariance = inverse.T @ inverse
        scale_tril = np.linalg.cholesky(0.5 * (covariance + covariance.T))
        if np.isfinite(scale_tril).all():
            return scale_tril
    except np.linalg.LinAlgError:
        pass
    diag = np.diagonal(hessian)
    ok = np.isfinite(diag) & (diag > 0)
    scale = np.where(ok, 1.0 / np.sqrt(np.where(ok, diag, 1.0)), init_scale)
    return np.diag(np.minimum(scale, 1e3))


#: Multiples of ``init_scale`` tried for the isotropic candidates (the best ELBO wins).
SCALE_MULTIPLES = (1.0, 10**0.5, 10.0)

#: Extra MAP searches of the mode search (``AutoFlow(restarts=...)``'s default), each from a
#: point drawn uniformly in ``[-RESTART_RADIUS, RESTART_RADIUS]`` per unconstrained coordinate:
#: where ``init_to_uniform`` draws its starts.
RESTARTS, RESTART_RADIUS = 8, 2.0
#: Two end points of the MAP search lie in one basin when the potential on the segment
#: between them rises at most ``BASIN_BARRIER`` nats above the higher end point.
BASIN_BARRIER = 1.0
#: Modes whose estimated posterior mass is below this fraction of the total are left out.
MIN_MODE_WEIGHT = 0.01
#: How ``AutoFlow`` fits its flow to a multimodal start (``warm_start_ == "modes"``):
#: ``fit``'s keyword arguments on ``draws`` draws of the modes' mixture.
MODE_PROPOSAL_WIDTHS, PILOT_DRAWS, MIN_PROPOSAL_ESS = (1.0, 1.5, 2.0, 3.0, 5.0), 512, 0.05
MODE_FIT = {"draws": 4096, "epochs": 60, "batch_size": 256, "lr": 3e-3, "patience": 10}
#: On a multimodal start the trainable layers above the fitted transport store their arrays
#: divided by this factor (`Damped`), so an optimiser's steps move them this much less: the
#: transport already holds the posterior, and at a learning rate chosen for a flow trained
#: from scratch Adam's noise on the refining layers costs more than the reverse KL gains
#: (NumPyro's dual moon, the example's keys, lr 3e-3: loss -1.758 undamped, -1.822 damped).
MODE_STEP_SCALE = 0.1


class Mixture(NamedTuple):
    """Gaussian mixture over a multimodal posterior's modes: one local Gaussian per mode
    (``locs[k]``, ``scale_trils[k]``) and its share of the posterior mass (``weights``)."""

    weights: np.ndarray
    locs: np.ndarray
    scale_trils: np.ndarray

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` draws (float64), from a numpy generator seeded with ``seed``."""
        rng = np.random.default_rng(seed)
        component = rng.choice(len(self.weights), size=n, p=self.weights)
        eps = rng.standard_normal((n, self.locs.shape[-1]))
        return self.locs[component] + np.einsum("nij,nj->ni", self.scale_trils[component], eps)

    def component_log_prob(self, k: int, x: np.ndarray) -> np.ndarray:
        """``log weights[k] + log N(x; locs[k], scale_trils[k] scale_trils[k]^T)`` per row."""
        tril = self.scale_trils[k]
        half = np.linalg.solve(tril, (x - self.locs[k]).T).T
        log_det = np.log(np.abs(np.diagonal(tril))).sum()
        d = self.locs.shape[-1]
        norm = -0.5 * (half**2).sum(-1) - log_det - 0.5 * d * np.log(2 * np.pi)
        return np.log(self.weights[k]) + norm

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        """The mixture's log density at the rows of ``x`` (float64)."""
        per = [self.component_log_prob(k, x) for k in range(len(self.weights))]
        return np.logaddexp.reduce(np.stack(per), axis=0)

    def widened(self, factor: float) -> Mixture:
        """The same mixture with every component's scale multiplied by ``factor``."""
        return Mixture(self.weights, self.locs, factor * self.scale_trils)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The mixture's mean and the Cholesky factor of its covariance."""
        mean = self.weights @ self.locs
        spread = self.locs - mean
        within = np.einsum("kij,klj->kil", self.scale_trils, self.scale_trils)
        cov = np.einsum("k,kij->ij", self.weights, within + spread[:, :, None] * spread[:, None])
        return mean, np.linalg.cholesky(0.5 * (cov + cov.T))


class WarmStart(NamedTuple):
    """The frozen Gaussian under ``AutoFlow``'s flow and how it was chosen.

    ``name`` is ``"init"``, ``"map"``, ``"laplace"`` or ``"modes"``; with ``"modes"`` the
    search found several modes, ``(loc, scale_tril)`` are the moments of ``mixture`` and the
    backend fits the flow to draws of ``mixture`` before SVI starts.
    """

    loc: np.ndarray
    scale_tril: np.ndarray
    name: str
    mixture: Mixture | None = None


def normalised_weights(log_weights: np.ndarray) -> np.ndarray | None:
    """Importance weights summing to 1 (non-finite log-weights count as 0), or ``None`` if
    no log-weight is finite."""
    log_weights = np.where(np.isfinite(log_weights), log_weights, -np.inf)
    if not np.isfinite(log_weights).any():
        return None
    weights = np.exp(log_weights - log_weights.max())
    return weights / weights.sum()


def effective_sample_size(weights: np.ndarray | None) -> float:
    """The effective sample size of normalised weights as a fraction of their number (0 for
    ``None``)."""
    return 0.0 if weights is None else float(1.0 / (len(weights) * (weights**2).sum()))


def resample(draws: np.ndarray, log_weights: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """Systematic resampling of ``draws`` by their importance weights (numpy generator
    seeded with ``seed``); also returns the weights' effective sample size as a fraction of
    the number of draws (0 if no weight is finite)."""
    weights = normalised_weights(log_weights)
    if weights is None:
        return draws, 0.0
    n = len(draws)
    rng = np.random.default_rng(seed + 1)
    positions = (rng.uniform() + np.arange(n)) / n
    index = np.minimum(np.searchsorted(np.cumsum(weights), positions), n - 1)
    return draws[index], effective_sample_size(weights)


def posterior_draws(
    mixture: Mixture, log_density: Callable[[np.ndarray], np.ndarray], n: int, seed: int = 0
) -> tuple[np.ndarray, float]:
    """``n`` approximate posterior draws by importance resampling from a widened mixture.

    Proposals: ``mixture.widened(w)`` for each ``w`` in ``MODE_PROPOSAL_WIDTHS``. A pilot
    of ``PILOT_DRAWS`` draws of each gives the Pareto k-hat of its importance weights
    (PSIS, ArviZ): a proposal whose tails are lighter than the posterior's, which misses
    mass that its own effective sample size cannot show, has a large k-hat. Among the
    proposals with k-hat under 0.7 the one of the largest effective sample size is kept
    (the lowest k-hat if none), and ``n`` draws of it are resampled by their
    PSIS-smoothed weights (`resample`). Returns the draws and their effective sample size
    as a fraction of ``n``: where it is small the draws repeat a few points, and the
    caller uses the mixture's own draws instead.
    """
    import arviz

    def weighted(width: float, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
        proposal = mixture.widened(width)
        draws = proposal.sample(count, seed)
        log_weights = np.asarray(log_density(draws), np.float64) - proposal.log_prob(draws)
        finite = np.isfinite(log_weights)
        if finite.sum() < 10:
            return draws, log_weights, np.inf
        smoothed, k_hat = arviz.psislw(np.where(finite, log_weights, -1e300))
        return draws, np.asarray(smoothed), float(k_hat)

    pilot = []
    for width in MODE_PROPOSAL_WIDTHS:
        _, log_weights, k_hat = weighted(width, min(n, PILOT_DRAWS), seed)
        pilot.append((k_hat, effective_sample_size(normalised_weights(log_weights)), width))
    if not any(np.isfinite(k) for k, _, _ in pilot):
        return mixture.sample(n, seed), 0.0
    reliable = [item for item in pilot if item[0] < 0.7]
    if reliable:
        width = max(reliable, key=lambda item: item[1])[2]
    else:
        width = min(pilot, key=lambda item: item[0])[2]
    draws, log_weights, _ = weighted(width, n, seed + 2)
    return resample(draws, log_weights, seed)


def mode_fit_data(
    mixture: Mixture, log_density: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """What ``AutoFlow`` fits its transport to on a multimodal posterior.

    ``MODE_FIT["draws"]`` posterior draws by `posterior_draws` (the mixture's own draws
    where their effective sample size is under ``MIN_PROPOSAL_ESS``); the Gaussian of
    their mean and covariance, which the transport starts from; and the Cholesky factor of
    the pooled covariance within the modes (each draw assigned to the mixture component most
    likely to have drawn it), the scale of the space where SVI trains the flow.

    Returns:
        ``(loc, scale_tril, within_tril, standardised_draws, ess)``: the draws standardised
        by ``(loc, scale_tril)``.
    """
    n, d = MODE_FIT["draws"], mixture.locs.shape[-1]
    draws, ess = posterior_draws(mixture, log_density, n)
    if ess < MIN_PROPOSAL_ESS:
        draws = mixture.sample(n)
    loc = draws.mean(0)
    jitter = 1e-9 * np.eye(d)
    cov = np.atleast_2d(np.cov(draws, rowvar=False))
    scale_tril = np.linalg.cholesky(cov + jitter * np.trace(cov) / d)
    owner = np.argmax(
        [mixture.component_log_prob(k, draws) for k in range(len(mixture.weights))], 0
    )
    within, count = np.zeros((d, d)), 0
    for k in np.unique(owner):
        members = draws[owner == k]
        if len(members) > d + 1:
            within += len(members) * np.atleast_2d(np.cov(members, rowvar=False))
            count += len(members)
    within = within / count if count else cov
    within_tril = np.linalg.cholesky(within + jitter * np.trace(within) / d)
    standard = np.linalg.solve(scale_tril, (draws - loc).T).T
    return loc, scale_tril, within_tril, standard, ess


def restart_points(init: np.ndarray, restarts: int) -> np.ndarray:
    """The extra starts of the mode search: ``(restarts, dim)`` uniform draws in
    ``[-RESTART_RADIUS, RESTART_RADIUS]`` from a generator seeded with 0 (reproducible)."""
    rng = np.random.default_rng(0)
    return rng.uniform(-RESTART_RADIUS, RESTART_RADIUS, (restarts, init.shape[-1]))


def same_basin(
    a: np.ndarray, b: np.ndarray, potential: Callable[[np.ndarray], float], top: float
) -> bool:
    """Whether no barrier of more than ``BASIN_BARRIER`` nats separates ``a`` and ``b``;
    ``top`` is the higher of their potentials."""
    for t in np.linspace(0.0, 1.0, 11)[1:-1]:
        if not potential(a + t * (b - a)) <= top + BASIN_BARRIER:
            return False
    return True


def find_modes(
    starts: np.ndarray,
    *,
    max_steps: int,
    potential: Callable[[np.ndarray], float],
    derivatives: Derivatives,
    lbfgs: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The distinct local modes reached by a MAP search from each start, lowest potential
    first: ``(z, grad, hessian)`` for each, one per basin (see `same_basin`).

    Starts from which the search reaches no mode (`is_mode`) are dropped; above
    ``NEWTON_MAX_DIM`` dimensions the search is ``lbfgs``, else saddle-free Newton.
    """
    found = []
    for start in starts:
        if start.shape[-1] > NEWTON_MAX_DIM and lbfgs is not None:
            z = np.asarray(lbfgs(start), dtype=np.float64)
            grad, hessian = derivatives(z)
        else:
            z, grad, hessian = newton_map(start, potential, derivatives, max_steps)
        if is_mode(grad, hessian):
            found.append((potential(z), z, grad, hessian))
    found.sort(key=lambda item: item[0])
    kept: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []
    for value, z, grad, hessian in found:  # lowest first: ``value`` is the higher potential
        if not any(same_basin(z, other[1], potential, value) for other in kept):
            kept.append((value, z, grad, hessian))
    return [(z, grad, hessian) for _, z, grad, hessian in kept]


def warm_start(
    init: np.ndarray,
    *,
    warmup: str | None,
    init_scale: float,
    max_steps: int,
    potential: Callable[[np.ndarray], float],
    derivatives: Derivatives,
    gaussian_elbo: Callable[[np.ndarray, np.ndarray], float],
    lbfgs: Callable[[np.ndarray], np.ndarray] | None = None,
    restarts: int = 0,
) -> WarmStart:
    """Location and Cholesky factor of the frozen Gaussian under the flow.

    The MAP search runs from ``init`` and from ``restarts`` more points (`restart_points`);
    its end points are grouped into basins (`find_modes`). With one mode, the candidates
    are isotropic Gaussians at the ``init`` point (always) and at the MAP (``warmup="map"``
    or ``"laplace"``), each with the best of the scales ``init_scale`` times
    ``SCALE_MULTIPLES``, and the Laplace approximation at the MAP (``"laplace"``). The one
    with the highest Monte Carlo ELBO wins, so a posterior without a MAP (a funnel, where the
    search runs off to a singularity) falls back to a sound start instead of a degenerate
    one; when the search reaches no mode at all it warns and starts from ``init``.

    With several modes, each gets its best local Gaussian (isotropic or Laplace, by ELBO)
    and a share of the mass from those ELBOs (a softmax: the ELBO of a mode's Gaussian
    estimates the log of the posterior mass it covers); modes under ``MIN_MODE_WEIGHT`` are
    left out. If more than one remains, the result is ``"modes"``: the moments of that
    mixture, which cover every mode, and the mixture itself. Choosing the best single
    candidate instead would start the guide on one mode, where the reverse KL of SVI keeps it.

    ``warmup=None`` skips all of it: ``init`` with ``init_scale``.

    Args:
        init: Starting point (the ``init_loc_fn`` location), float64.
        warmup: ``"laplace"``, ``"map"`` or ``None``.
        init_scale: Smallest scale of the isotropic candidates.
        max_steps: Maximum Newton (or L-BFGS) iterations of each search.
        potential: Minus the log joint at a point (``inf`` where the model rejects it).
        derivatives: Gradient and Hessian of ``potential`` at a point.
        gaussian_elbo: Monte Carlo ELBO (up to a constant) of ``Normal(loc, L L^T)``.
        lbfgs: MAP search for latent dimensions above ``NEWTON_MAX_DIM``.
        restarts: Extra starts of the search (0: from ``init`` only).

    Returns:
        A `WarmStart`.
    """
    init = np.asarray(init, dtype=np.float64)
    eye = np.eye(init.shape[-1])
    if warmup is None:
        return WarmStart(init, init_scale * eye, "init")

    def isotropic(loc: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], float]:
        tried = [(loc, init_scale * m * eye) for m in SCALE_MULTIPLES]
        scores = [gaussian_elbo(*c) for c in tried]
        best = int(np.argmax(scores))
        return tried[best], scores[best]

    def local(z: np.ndarray, hessian: np.ndarray) -> dict[str, tuple]:
        """The mode's candidates: ``name -> ((loc, scale_tril), elbo)``."""
        found = {"map": isotropic(z)}
        if warmup == "laplace":
            laplace = (z, laplace_scale_tril(hessian, init_scale))
            found["laplace"] = (laplace, gaussian_elbo(*laplace))
        return found

    starts = np.concatenate([init[None], restart_points(init, restarts)])
    modes = find_modes(
        starts, max_steps=max_steps, potential=potential, derivatives=derivatives, lbfgs=lbfgs
    )
    if not modes:
        warnings.warn(NO_MODE_WARNING, stacklevel=4)
        return WarmStart(*isotropic(init)[0], "init")
    per_mode = [local(z, hessian) for z, _, hessian in modes]
    if len(modes) > 1:
        best = [max(found.values(), key=lambda item: item[1]) for found in per_mode]
        scores = np.array([score for _, score in best])
        weights = np.exp(scores - scores.max())
        weights /= weights.sum()
        keep = np.flatnonzero(weights >= MIN_MODE_WEIGHT)
        if len(keep) > 1:
            mixture = Mixture(
                weights[keep] / weights[keep].sum(),
                np.stack([best[k][0][0] for k in keep]),
                np.stack([best[k][0][1] for k in keep]),
            )
            return WarmStart(*mixture.moments(), "modes", mixture)
        per_mode = [per_mode[int(keep[0])]]
    candidates = {"init": isotropic(init), **per_mode[0]}
    name = max(candidates, key=lambda key: candidates[key][1])
    return WarmStart(*candidates[name][0], name)
