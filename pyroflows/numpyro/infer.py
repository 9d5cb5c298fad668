"""``AutoFlow``: a NumPyro autoguide whose posterior over all latent sites is a flow.

The JAX twin of `pyroflows.pyro.infer`. The posterior lives in the unconstrained space
of the model's latent sites, packed into one vector of size ``latent_dim``; its draws are

    z = loc + L @ flow(u),    u ~ Normal(0, I)

with ``flow`` a pyroflows recipe (IAF by default) and ``loc + L @`` an `LULinear` layer
warm-started from a Laplace approximation at the MAP, so that the flow starts in a
standardised space and only has to learn the non-Gaussian part. ``base="laplace"`` swaps
the normal ``u`` for independent unit-variance Laplace draws (exponential tails) and
``base_df`` for Student-t draws with that many degrees of freedom, for posteriors with
heavier than Gaussian tails (the reasons are in `pyroflows.pyro.infer`; on a funnel,
train the Laplace base with 16 particles).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import Array
from numpyro.contrib.module import eqx_module
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.initialization import init_to_median, init_to_uniform

from pyroflows._autoflow import (
    MODE_FIT,
    MODE_STEP_SCALE,
    RESTARTS,
    WarmStart,
    check_arguments,
    check_restarts,
    check_stl,
    mode_fit_data,
    recipe_kwargs,
    warm_start,
)
from pyroflows.numpyro import flows as recipes
from pyroflows.numpyro.core import Bijection, Chain
from pyroflows.numpyro.distributions import Flow, FlowDistribution
from pyroflows.numpyro.linear import LULinear

__all__ = ["AutoFlow", "FixedAffine", "PathGradientFlowDistribution", "RECIPES"]

#: Recipe names accepted by ``AutoFlow(model, flow=...)``.
RECIPES: dict[str, Callable[..., Flow]] = {
    "iaf": recipes.IAF,
    "maf": recipes.MAF,
    "nsf": recipes.NSF,
    "realnvp": recipes.RealNVP,
    "nice": recipes.NICE,
    "planar": recipes.Planar,
    "radial": recipes.Radial,
    "sylvester": recipes.Sylvester,
    "residual": recipes.ResidualFlow,
    "ffjord": recipes.FFJORD,
}


class AutoFlow(AutoContinuous):
    """An ``AutoContinuous`` guide whose posterior is a normalizing flow.

    Same arguments as `pyroflows.pyro.AutoFlow`, plus NumPyro's ``prefix`` and an optional
    ``key`` for the flow's initial weights (default: the guide's first PRNG key, as
    ``SVI.init`` seeds it).

    Args:
        model: A NumPyro model.
        flow: A recipe name (``"iaf"`` (default), ``"nsf"``, ``"maf"``, ``"realnvp"``,
            ``"nice"``) or a callable ``(latent_dim, key) -> Flow``.
        prefix: Prefix of the guide's parameter sites.
        init_loc_fn: Per-site initialisation; the MAP search starts there. Default:
            ``init_to_median``, and where NumPyro finds no valid start there (a median
            with a non-finite density or gradient) ``init_to_uniform``, the start of
            NumPyro's own autoguides.
        init_scale: Scale of the affine layer with ``warmup=None``; otherwise the smallest
            of the isotropic scales tried (``init_scale`` x 1, 3.2 and 10, the best Monte
            Carlo ELBO wins) where the Laplace approximation is not used.
        warmup: ``"laplace"`` (default), ``"map"`` or ``None``, as in the torch backend.
        warmup_steps: Maximum Newton (or L-BFGS) iterations of the MAP search.
        restarts: Extra MAP searches from uniform draws in ``[-2, 2]`` per unconstrained
            coordinate, to find the posterior's modes (see `pyroflows.pyro.AutoFlow`);
            ``0`` searches from ``init_loc_fn`` only.
        num_samples: Monte Carlo draws used by `median` and `quantiles`.
        key: Random key for the flow's initial weights.
        base: ``"normal"`` (default), ``"laplace"`` (unit variance) or ``"student_t"``
            (needs ``base_df``), as in the torch backend.
        base_df: ``None`` (default) or the degrees of freedom of a fixed Student-t base;
            given alone, it selects ``base="student_t"``.
        stl: Score the guide's own draws with the path gradient only ("sticking the
            landing", `PathGradientFlowDistribution`), as in the torch backend.
        **flow_kwargs: Passed to the recipe (defaults ``transforms=3``,
            ``hidden=(w, w)`` with ``w = max(32, 4 * latent_dim)``).

    Examples:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> from numpyro.infer import SVI, Trace_ELBO
        >>> from pyroflows.numpyro import AutoFlow
        >>> def model():
        ...     numpyro.sample("x", dist.Normal(jnp.zeros(2), 1.0).to_event(1))
        >>> guide = AutoFlow(model, flow="iaf", transforms=2)
        >>> svi = SVI(model, guide, numpyro.optim.Adam(1e-2), Trace_ELBO())
        >>> state = svi.init(jax.random.key(0))
    """

    def __init__(
        self,
        model: Callable,
        flow: str | Callable = "iaf",
        *,
        prefix: str = "auto",
        init_loc_fn: Callable | None = None,
        init_scale: float = 0.1,
        warmup: str | None = "laplace",
        warmup_steps: int = 500,
        restarts: int = RESTARTS,
        num_samples: int = 1000,
        key: Array | None = None,
        base: str = "normal",
        base_df: float | None = None,
        stl: bool = False,
        **flow_kwargs,
    ) -> None:
        self._base_kind = check_arguments(
            flow, warmup, init_scale, "(latent_dim, key) -> Flow", base_df, base
        )
        self._stl = check_stl(stl)
        self._base_df = None if base_df is None else float(base_df)
        self._flow_spec = flow
        self._flow_kwargs = flow_kwargs
        self._init_scale = float(init_scale)
        self._warmup = warmup
        self._warmup_steps = int(warmup_steps)
        self._restarts = check_restarts(restarts)
        self.num_samples = int(num_samples)
        self._key = key
        self._flow_init: Flow | None = None
        self._default_init = init_loc_fn is None
        super().__init__(
            model, prefix=prefix, init_loc_fn=init_to_median if init_loc_fn is None else init_loc_fn
        )

    # ------------------------------------------------------------------ set-up
    def _build_flow(self, key: Array) -> Flow:
        d = self.latent_dim
        if isinstance(self._flow_spec, str):
            kwargs = recipe_kwargs(self._flow_spec, d, self._flow_kwargs)
            return RECIPES[self._flow_spec.lower()](d, key=key, **kwargs)
        flow = self._flow_spec(d, key)
        if not isinstance(flow, Flow) or flow.features != d or flow.context_features:
            raise ValueError(
                f"the flow callable must return an unconditional pyroflows Flow with "
                f"features={d} (the model's latent dimension), got {flow!r}"
            )
        return flow

    def _setup_prototype(self, *args, **kwargs) -> None:
        try:
            super()._setup_prototype(*args, **kwargs)
        except RuntimeError as error:
            # the prior median is not a valid start (a potential-only model whose sample()
            # is a placeholder, a density with no gradient there): start where NumPyro's
            # own autoguides do
            if not (self._default_init and "valid initial parameters" in str(error)):
                raise
            self.init_loc_fn = init_to_uniform
            super()._setup_prototype(*args, **kwargs)
        key = self._key
        if key is None:
            key = numpyro.prng_key()
        if key is None:
            key = jax.random.key(0)
        flow = self._build_flow(key)
        dtype = jnp.asarray(self._init_latent).dtype
        layers = [*flow.layers, LULinear(self.latent_dim)]
        with numpyro.handlers.block():  # the MAP search runs the model: hide it from SVI
            start = self._warm_start(jnp.asarray(self._init_latent))
            loc, scale_tril = (jnp.asarray(a, dtype) for a in start[:2])
            if start.mixture is not None:
                loc, scale_tril, transport = self._fit_to_modes(start, key, dtype)
                layers = [*transport, Damped(layers, MODE_STEP_SCALE)]
        self._flow_init = Flow([*layers, FixedAffine(loc, scale_tril)], self._base(dtype))

    def _fit_to_modes(self, start: WarmStart, key: Array, dtype) -> tuple[Array, Array, list]:
        """The frozen Gaussian and the frozen transport of a multimodal start: a spline
        coupling flow fitted by maximum likelihood to posterior draws (see
        `pyroflows._autoflow.mode_fit_data`)."""
        from pyroflows.numpyro.train import fit

        potential = jax.jit(jax.vmap(self._potential))
        loc, scale_tril, within, standard, self.mode_fit_ess_ = mode_fit_data(
            start.mixture, lambda x: -np.asarray(potential(jnp.asarray(x, dtype)), np.float64)
        )
        d = self.latent_dim
        transport = recipes.NSF(d, key=jax.random.fold_in(key, 1), **recipe_kwargs("nsf", d, {}))
        trained, _ = fit(
            Flow(transport.layers, self._base(dtype)),
            jnp.asarray(standard, dtype),
            **{k: v for k, v in MODE_FIT.items() if k != "draws"},
            progress=False,
        )
        # SVI trains the flow where the modes have unit scale (Adam's steps are then small
        # against every mode's width), between the transport and the frozen Gaussian
        to_within = np.linalg.solve(within, scale_tril)
        zeros = jnp.zeros(d, dtype)
        transport = [Frozen(trained.layers), FixedAffine(zeros, jnp.asarray(to_within, dtype))]
        return jnp.asarray(loc, dtype), jnp.asarray(within, dtype), transport

    def _potential(self, latent: Array) -> Array:
        """Minus the log joint density of the model in the unconstrained space."""
        return self._potential_fn(self._unpack_latent(latent))

    def _map_lbfgs(self, safe: Callable, init: Array) -> Array:
        import optax

        solver = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(safe)

        @jax.jit
        def step(z, state):
            value, grad = value_and_grad(z, state=state)
            updates, state = solver.update(grad, state, z, value=value, grad=grad, value_fn=safe)
            return optax.apply_updates(z, updates), state, value

        z, state = init, solver.init(init)
        best_z, best = init, float(safe(init))
        for _ in range(self._warmup_steps):
            z, state, _ = step(z, state)
            value = float(safe(z))
            if not np.isfinite(value):
                break
            if value < best:
                improved = best - value > 1e-7 * max(1.0, abs(value))
                best_z, best = z, value
                if not improved:
                    break
        return best_z

    def _warm_start(self, init: Array) -> WarmStart:
        """Location and Cholesky factor of the frozen Gaussian under the flow.

        The choice among the ``init_loc_fn`` point, the MAP and the Laplace approximation is
        `pyroflows._autoflow.warm_start`'s (recorded in ``self.warm_start_``); this method
        hands it the model's jitted potential and derivatives as float64 numpy callbacks.
        """
        dtype = init.dtype
        if self._warmup is None or isinstance(init, jax.core.Tracer):
            if self._warmup is not None:
                warnings.warn(
                    "AutoFlow was first called under a JAX transformation (jit/vmap), so the "
                    "MAP warm start cannot run; falling back to warmup=None. Call svi.init (or "
                    "the guide once) outside jit to get the Laplace warm start.",
                    stacklevel=3,
                )
            self.warm_start_ = "init"
            self.modes_ = None  # the location may be a tracer: keep it as it is
            return WarmStart(init, self._init_scale * jnp.eye(self.latent_dim, dtype=dtype), "init")
        potential = self._potential

        @jax.jit  # traced, so a model's argument checks cannot raise at a bad trial point
        def safe(z):
            value = potential(z)
            return jnp.where(jnp.isfinite(value), value, jnp.inf)

        derivatives = jax.jit(lambda z: (jax.grad(potential)(z), jax.hessian(potential)(z)))
        # the Monte Carlo ELBO of every candidate uses the same draws and one compiled potential
        batch_potential = jax.jit(jax.vmap(potential))
        eps = jax.random.normal(jax.random.key(0), (256, self.latent_dim), dtype)

        def gaussian_elbo(loc: np.ndarray, scale_tril: np.ndarray) -> float:
            """ELBO (up to a constant) of ``Normal(loc, scale_tril scale_tril^T)``."""
            loc, tril = jnp.asarray(loc, dtype), jnp.asarray(scale_tril, dtype)
            values = batch_potential(loc + eps @ tril.T)
            value = float(-values.mean() + jnp.log(jnp.abs(jnp.diagonal(tril))).sum())
            return value if np.isfinite(value) else -np.inf

        start = warm_start(
            np.asarray(init, dtype=np.float64),
            warmup=self._warmup,
            init_scale=self._init_scale,
            max_steps=self._warmup_steps,
            potential=lambda z: float(safe(jnp.asarray(z, dtype))),
            derivatives=lambda z: _numpy(derivatives(jnp.asarray(z, dtype))),
            gaussian_elbo=gaussian_elbo,
            lbfgs=lambda z: np.asarray(self._map_lbfgs(safe, jnp.asarray(z, dtype)), np.float64),
            restarts=self._restarts,
        )
        self.warm_start_, self.modes_ = start.name, start.mixture
        return start

    # ------------------------------------------------------------------ posterior
    def _base(self, dtype=None) -> dist.Distribution | None:
        """The Laplace or Student-t base, or ``None`` for the flow's standard normal."""
        zeros = jnp.zeros(self.latent_dim, dtype)
        if self._base_kind == "laplace":
            return dist.Laplace(zeros, zeros + np.sqrt(0.5)).to_event(1)
        if self._base_kind == "student_t":
            return dist.StudentT(zeros + self._base_df, zeros, 1.0).to_event(1)
        return None

    def get_base_dist(self) -> dist.Distribution:
        base = self._base()
        return dist.Normal(jnp.zeros(self.latent_dim), 1.0).to_event(1) if base is None else base

    def _get_posterior(self) -> FlowDistribution:
        flow = eqx_module(f"{self.prefix}_flow", self._flow_init)
        return self._stl_posterior(flow())

    def _stl_posterior(self, posterior: FlowDistribution) -> FlowDistribution:
        """``posterior`` as a `PathGradientFlowDistribution` if ``stl=True``."""
        if self._stl:
            return PathGradientFlowDistribution(posterior.base_dist, posterior.chain)
        return posterior

    def flow(self, params: dict) -> Flow:
        """The trained flow (over the packed unconstrained latent) from SVI's ``params``."""
        flow = numpyro.handlers.substitute(
            lambda: eqx_module(f"{self.prefix}_flow", self._flow_init), params
        )()
        return flow

    def _draws(self, params: dict) -> dict[str, Array]:
        return self.sample_posterior(jax.random.key(0), params, sample_shape=(self.num_samples,))

    def median(self, params: dict) -> dict[str, Array]:
        """Posterior median of each latent site (elementwise, from ``num_samples`` draws)."""
        return {name: jnp.median(v, axis=0) for name, v in self._draws(params).items()}

    def quantiles(self, params: dict, quantiles) -> dict[str, Array]:
        """Posterior quantiles of each latent site (elementwise, from ``num_samples`` draws).

        Returns:
            ``{site: array of shape (len(quantiles), *site_shape)}``.
        """
        q = jnp.asarray(quantiles)
        if q.ndim != 1 or not bool(((q > 0) & (q < 1)).all()):
            raise ValueError(f"quantiles must be a list of levels in (0, 1), got {quantiles!r}")
        return {name: jnp.quantile(v, q, axis=0) for name, v in self._draws(params).items()}


class PathGradientFlowDistribution(FlowDistribution):
    """A flow distribution that scores its own draws with the path gradient only.

    ``log_prob(x, intermediates)`` of a draw ``x = f(u)`` has the usual value, but its
    gradient with respect to the flow's weights is only the part that flows through ``x``:
    ``grad_x log q(x) . dx/dtheta``, with ``grad_x log q(x) = J^{-T} grad_u [log p(u) -
    log|det J(u)|]`` from the Jacobian ``J`` of the chain at ``u`` (frozen weights). The
    score term ``grad_theta log q_theta(x)``, whose mean is zero, is left out: "sticking the
    landing" (Roeder et al., 2017). Its variance vanishes where the guide matches the
    posterior. Cost: a Jacobian of the chain per draw (``latent_dim`` forward-mode passes).
    Without intermediates ``log_prob`` is the plain one.
    """

    def log_prob(self, value: Array, intermediates: list | None = None) -> Array:
        if intermediates is None:
            return super().log_prob(value)
        full = super().log_prob(value, intermediates)  # no pass through the flow
        z = intermediates[0][0]
        score = jax.lax.stop_gradient(_score_of_draws(self.chain, self.base_dist, z))
        path = (score * value).sum(-1)
        return jax.lax.stop_gradient(full) + path - jax.lax.stop_gradient(path)


def _score_of_draws(chain, base: dist.Distribution, z: Array) -> Array:
    """``grad_x log q(x)`` at ``x = chain(z)`` for each draw ``z`` (``(..., features)``)."""
    frozen = jax.tree_util.tree_map(
        lambda a: jax.lax.stop_gradient(a) if eqx.is_inexact_array(a) else a, chain
    )

    def outputs(u: Array) -> Array:
        """``x`` and ``log p(u) - log|det J(u)|`` in one vector: one pass gives both."""
        x, log_det = frozen.forward_and_log_det(u[None])
        return jnp.append(x[0], base.log_prob(u) - log_det[0])

    def one(u: Array) -> Array:
        derivatives = jax.jacfwd(outputs)(u)  # rows: the Jacobian J, then grad_u
        return jnp.linalg.solve(derivatives[:-1].T, derivatives[-1])

    z = jax.lax.stop_gradient(z)
    flat = z.reshape(z.size // z.shape[-1], z.shape[-1])
    return jax.vmap(one)(flat).reshape(z.shape)


def _numpy(arrays: tuple[Array, ...]) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(a, dtype=np.float64) for a in arrays)


class FixedAffine(Bijection):
    """``y = loc + scale_tril @ x`` with frozen ``loc`` and lower-triangular ``scale_tril``.

    The warm start of `AutoFlow`: it maps the flow's standardised space onto the Laplace
    approximation. Its arrays are wrapped in ``stop_gradient``, so an optimiser leaves them
    where they are and every trainable parameter of the guide lives in the standardised space,
    where one Adam learning rate suits all of them whatever the posterior's scales.
    """

    loc: Array
    scale_tril: Array

    def __init__(self, loc: Array, scale_tril: Array) -> None:
        self.features = int(loc.shape[-1])
        self.context_features = 0
        self.loc = loc
        self.scale_tril = scale_tril

    def _parts(self) -> tuple[Array, Array, Array]:
        loc = jax.lax.stop_gradient(self.loc)
        tril = jax.lax.stop_gradient(self.scale_tril)
        return loc, tril, jnp.log(jnp.abs(jnp.diagonal(tril))).sum()

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        loc, tril, log_det = self._parts()
        return loc + x @ tril.T, jnp.broadcast_to(log_det, x.shape[:-1])

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        loc, tril, log_det = self._parts()
        flat = (y - loc).reshape(y.size // self.features, self.features)
        x = jax.scipy.linalg.solve_triangular(tril, flat.T, lower=True).T
        return x.reshape(y.shape), jnp.broadcast_to(-log_det, y.shape[:-1])


class Damped(Bijection):
    """Bijections whose arrays are stored divided by ``scale`` and used multiplied by it, so
    an optimiser's steps (Adam's are about the learning rate per array element, whatever
    the gradient's size) move them ``scale`` times as far.

    `AutoFlow`'s trainable layers above the frozen transport of a multimodal start
    (``MODE_STEP_SCALE``). `get_params` gives the stored arrays, under the names torch's
    `Damped` gives them, so the other backend's `Damped` reads them alike.

    Args:
        layers: The bijections, in the forward (base -> data) order.
        scale: The factor, in ``(0, 1]`` to damp.
    """

    chain: Chain
    scale: float = eqx.field(static=True)

    def __init__(self, layers, scale: float) -> None:
        chain = Chain(list(layers))
        self.scale = float(scale)
        self.chain = jax.tree_util.tree_map(
            lambda a: a / self.scale if eqx.is_inexact_array(a) else a, chain
        )
        self.features = chain.features
        self.context_features = 0

    def _live(self) -> Chain:
        return jax.tree_util.tree_map(
            lambda a: a * self.scale if eqx.is_inexact_array(a) else a, self.chain
        )

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._live().forward_and_log_det(x)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._live().inverse_and_log_det(y)


class Frozen(Bijection):
    """Bijections held fixed: their arrays are wrapped in ``stop_gradient``, as in
    `FixedAffine`, so an optimiser leaves them where they are.

    `AutoFlow`'s transport warm start on a multimodal posterior: a flow fitted to posterior
    draws before SVI, under the trainable flow. Frozen, it keeps every mode's share of the
    mass while SVI trains the layers on top of it.
    """

    chain: Chain

    def __init__(self, layers) -> None:
        self.chain = Chain(list(layers))
        self.features = self.chain.features
        self.context_features = 0

    def _frozen(self) -> Chain:
        return jax.tree_util.tree_map(
            lambda a: jax.lax.stop_gradient(a) if eqx.is_inexact_array(a) else a, self.chain
        )

    def forward_and_log_det(self, x: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._frozen().forward_and_log_det(x)

    def inverse_and_log_det(self, y: Array, context: Array | None = None) -> tuple[Array, Array]:
        return self._frozen().inverse_and_log_det(y)
