"""``AutoFlow``: a NumPyro autoguide whose posterior over all latent sites is a flow.

The JAX twin of `pyroflows.pyro.infer`. The posterior lives in the unconstrained space
of the model's latent sites, packed into one vector of size ``latent_dim``; its draws are

    z = loc + L @ flow(u),    u ~ Normal(0, I)

with ``flow`` a pyroflows recipe (IAF by default) and ``loc + L @`` an `LULinear` layer
warm-started from a Laplace approximation at the MAP, so that the flow starts in a
standardised space and only has to learn the non-Gaussian part.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax import Array
from numpyro.contrib.module import eqx_module
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.initialization import init_to_median

from pyroflows.numpyro import flows as recipes
from pyroflows.numpyro.core import Bijection
from pyroflows.numpyro.distributions import Flow, FlowDistribution
from pyroflows.numpyro.linear import LULinear

__all__ = ["AutoFlow", "FixedAffine", "RECIPES"]

#: Recipe names accepted by ``AutoFlow(model, flow=...)``.
RECIPES: dict[str, Callable[..., Flow]] = {
    "iaf": recipes.IAF,
    "maf": recipes.MAF,
    "nsf": recipes.NSF,
    "realnvp": recipes.RealNVP,
    "nice": recipes.NICE,
}


def _default_hidden(latent_dim: int) -> tuple[int, int]:
    width = max(32, 4 * latent_dim)
    return (width, width)


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
        init_loc_fn: Per-site initialisation; the MAP search starts there.
        init_scale: Scale of the affine layer when ``warmup`` is off or the Laplace
            approximation fails.
        warmup: ``"laplace"`` (default), ``"map"`` or ``None``, as in the torch backend.
        warmup_steps: Maximum BFGS iterations of the MAP search.
        num_samples: Monte Carlo draws used by `median` and `quantiles`.
        key: Random key for the flow's initial weights.
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
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
        warmup: str | None = "laplace",
        warmup_steps: int = 500,
        num_samples: int = 1000,
        key: Array | None = None,
        **flow_kwargs,
    ) -> None:
        if isinstance(flow, str):
            if flow.lower() not in RECIPES:
                raise ValueError(
                    f"flow must be one of {sorted(RECIPES)} or a callable, got {flow!r}"
                )
        elif not callable(flow):
            raise TypeError(
                f"flow must be a recipe name or a callable (latent_dim, key) -> Flow, got {flow!r}"
            )
        if warmup not in ("laplace", "map", None):
            raise ValueError(f"warmup must be 'laplace', 'map' or None, got {warmup!r}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale!r}")
        self._flow_spec = flow
        self._flow_kwargs = flow_kwargs
        self._init_scale = float(init_scale)
        self._warmup = warmup
        self._warmup_steps = int(warmup_steps)
        self.num_samples = int(num_samples)
        self._key = key
        self._flow_init: Flow | None = None
        super().__init__(model, prefix=prefix, init_loc_fn=init_loc_fn)

    # ------------------------------------------------------------------ set-up
    def _build_flow(self, key: Array) -> Flow:
        d = self.latent_dim
        if isinstance(self._flow_spec, str):
            kwargs = {"transforms": 3, "hidden": _default_hidden(d), **self._flow_kwargs}
            if self._flow_spec.lower() == "nsf":
                # spline coupling samples in one pass (the autoregressive NSF is MAF-direction)
                kwargs.setdefault("mode", "coupling")
            return RECIPES[self._flow_spec.lower()](d, key=key, **kwargs)
        flow = self._flow_spec(d, key)
        if not isinstance(flow, Flow) or flow.features != d or flow.context_features:
            raise ValueError(
                f"the flow callable must return an unconditional pyroflows Flow with "
                f"features={d} (the model's latent dimension), got {flow!r}"
            )
        return flow

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        key = self._key
        if key is None:
            key = numpyro.prng_key()
        if key is None:
            key = jax.random.key(0)
        flow = self._build_flow(key)
        with numpyro.handlers.block():  # the MAP search runs the model: hide it from SVI
            loc, scale_tril = self._warm_start(jnp.asarray(self._init_latent))
        dtype = jnp.asarray(self._init_latent).dtype
        standardise = FixedAffine(loc.astype(dtype), scale_tril.astype(dtype))
        self._flow_init = Flow([*flow.layers, LULinear(self.latent_dim), standardise])

    def _potential(self, latent: Array) -> Array:
        """Minus the log joint density of the model in the unconstrained space."""
        return self._potential_fn(self._unpack_latent(latent))

    def _map(self, init: Array) -> Array:
        """MAP of the unconstrained log joint, keeping the best finite point.

        Up to 300 latent dimensions: saddle-free damped Newton (steps along the Hessian's
        eigenvectors scaled by ``1 / (|eigenvalue| + damping)``). It is invariant to the scale of
        each coordinate, so posteriors whose scales differ by orders of magnitude converge in a
        few steps even in float32. Larger: L-BFGS (optax) with a zoom line search.
        """
        potential = self._potential

        @jax.jit  # traced, so a model's argument checks cannot raise at a bad trial point
        def safe(z):
            value = potential(z)
            return jnp.where(jnp.isfinite(value), value, jnp.inf)

        if self.latent_dim > 300:
            return self._map_lbfgs(safe, init)
        derivatives = jax.jit(lambda z: (jax.grad(potential)(z), jax.hessian(potential)(z)))
        z, value = init, float(safe(init))
        if not np.isfinite(value):
            return init
        damping = 1e-3
        for _ in range(self._warmup_steps):
            grad, hessian = derivatives(z)
            if not (bool(jnp.isfinite(grad).all()) and bool(jnp.isfinite(hessian).all())):
                break
            eigval, eigvec = jnp.linalg.eigh(0.5 * (hessian + hessian.T))
            size = jnp.abs(eigval)
            top = float(size.max()) + 1e-30
            projected = eigvec.T @ grad
            for _ in range(40):
                step = -eigvec @ (projected / (size + damping * top))
                candidate = z + step
                new = float(safe(candidate))
                if new < value:
                    break
                damping *= 10.0
            else:
                break  # no step decreases the potential: at a (numerical) minimum
            decrease = value - new
            z, value = candidate, new
            damping = max(damping / 10.0, 1e-9)
            if decrease <= 1e-7 * max(1.0, abs(value)):
                break
        return z

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

    def _warm_start(self, init: Array) -> tuple[Array, Array]:
        """Location and Cholesky factor of the frozen Gaussian under the flow.

        Candidates: the ``init_loc_fn`` point with ``init_scale`` (always), the MAP with
        ``init_scale`` (``warmup="map"`` or ``"laplace"``) and the Laplace approximation at
        the MAP (``"laplace"``). The one with the highest Monte Carlo ELBO wins (recorded in
        ``self.warm_start_``), so a posterior without a MAP (a funnel, where the search runs
        off to a singularity) falls back to a sound start instead of a degenerate one.
        """
        d = self.latent_dim
        eye = jnp.eye(d, dtype=init.dtype)
        candidates = {"init": (init, self._init_scale * eye)}
        self.warm_start_ = "init"
        if self._warmup is None:
            return candidates["init"]
        if isinstance(init, jax.core.Tracer):
            warnings.warn(
                "AutoFlow was first called under a JAX transformation (jit/vmap), so the MAP "
                "warm start cannot run; falling back to warmup=None. Call svi.init (or the "
                "guide once) outside jit to get the Laplace warm start.",
                stacklevel=3,
            )
            return candidates["init"]
        z = self._map(init)
        if not self._is_mode(z):
            warnings.warn(
                "AutoFlow: the MAP search did not reach a mode (the posterior may have none, "
                "as a funnel); the guide starts from init_loc_fn with init_scale instead of the "
                "Laplace approximation, so give SVI more steps or a larger learning rate.",
                stacklevel=3,
            )
            return candidates["init"]
        candidates["map"] = (z, self._init_scale * eye)
        if self._warmup == "laplace":
            candidates["laplace"] = (z, self._laplace(z))
        scores = {name: self._gaussian_elbo(*c) for name, c in candidates.items()}
        self.warm_start_ = max(scores, key=lambda name: scores[name])
        return candidates[self.warm_start_]

    def _is_mode(self, z: Array, tolerance: float = 0.1) -> bool:
        """Whether ``z`` is a strict local mode: positive definite Hessian and a Newton
        decrement ``g^T H^-1 g`` below ``tolerance`` (scale-free: half of it is the
        quadratic model's gap to the mode, in nats)."""
        grad = jax.jit(jax.grad(self._potential))(z)
        hessian = jax.jit(jax.hessian(self._potential))(z)
        factor = jnp.linalg.cholesky(0.5 * (hessian + hessian.T))
        if not (bool(jnp.isfinite(factor).all()) and bool(jnp.isfinite(grad).all())):
            return False
        step = jax.scipy.linalg.cho_solve((factor, True), grad)
        return float(grad @ step) < tolerance

    def _laplace(self, z: Array) -> Array:
        """Cholesky factor of the inverse Hessian of the potential at ``z`` (or a diagonal)."""
        eye = jnp.eye(self.latent_dim, dtype=z.dtype)
        hessian = jax.jit(jax.hessian(self._potential))(z)
        hessian = 0.5 * (hessian + hessian.T)
        precision_tril = jnp.linalg.cholesky(hessian)
        if bool(jnp.isfinite(precision_tril).all()):
            cov = jax.scipy.linalg.cho_solve((precision_tril, True), eye)
            scale_tril = jnp.linalg.cholesky(0.5 * (cov + cov.T))
            if bool(jnp.isfinite(scale_tril).all()):
                return scale_tril
        # not at a strict maximum (a funnel, a flat direction): a diagonal fallback
        diag = jnp.diagonal(hessian)
        ok = jnp.isfinite(diag) & (diag > 0)
        scale = jnp.where(ok, jax.lax.rsqrt(jnp.maximum(diag, 1e-12)), self._init_scale)
        return jnp.diag(jnp.minimum(scale, 1e3))

    def _gaussian_elbo(self, loc: Array, scale_tril: Array, draws: int = 256) -> float:
        """ELBO (up to a constant) of ``Normal(loc, scale_tril scale_tril^T)``, common draws."""
        eps = jax.random.normal(jax.random.key(0), (draws, self.latent_dim), loc.dtype)
        potential = jax.jit(jax.vmap(self._potential))(loc + eps @ scale_tril.T)
        value = float(-potential.mean() + jnp.log(jnp.abs(jnp.diagonal(scale_tril))).sum())
        return value if np.isfinite(value) else -np.inf

    # ------------------------------------------------------------------ posterior
    def get_base_dist(self) -> dist.Distribution:
        return dist.Normal(jnp.zeros(self.latent_dim), 1.0).to_event(1)

    def _get_posterior(self) -> FlowDistribution:
        flow = eqx_module(f"{self.prefix}_flow", self._flow_init)
        return flow()

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
        flat = (y - loc).reshape(-1, self.features)
        x = jax.scipy.linalg.solve_triangular(tril, flat.T, lower=True).T
        return x.reshape(y.shape), jnp.broadcast_to(-log_det, y.shape[:-1])
