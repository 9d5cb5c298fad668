"""``AutoFlow``: a Pyro autoguide whose posterior over all latent sites is a flow.

The posterior lives in the unconstrained space of the model's latent sites, packed into one
vector of size ``latent_dim`` (as every Pyro ``AutoContinuous`` guide does). Its draws are

    z = loc + L @ flow(u),    u ~ Normal(0, I)

where ``flow`` is a pyroflows recipe (IAF by default) and the affine layer ``loc + L @``
(an `LULinear`) carries the posterior's location, scales and correlations. By default the
affine layer is warm-started from a Laplace approximation at the MAP (a saddle-free Newton
search on the unconstrained log joint, then the Cholesky factor of the inverse Hessian;
see `pyroflows._autoflow`, shared with the NumPyro backend), so the flow
starts in a standardised space and only has to learn the non-Gaussian part. This is what
makes the guide work from its defaults on badly scaled and strongly correlated posteriors,
where a flow on the raw unconstrained space stalls.

Base distribution: ``u`` is standard normal by default. Every recipe moves a point by a
bounded log-scale per layer (splines are the identity outside their interval), so a flow
keeps its base's tails: on a Gaussian base the guide's tails stay Gaussian. Where the
posterior's tails are heavier (the log-scale of a hierarchical model, whose lower tail
decays only exponentially), the importance weights ``p / q`` then grow without bound far
out and the Pareto k-hat of `psis_diagnostic` rises. Two heavier bases are offered:

* ``base="laplace"``: independent Laplace draws of unit variance. Their tails are
  exponential, as are those of a funnel's log-scale, and unlike a Student-t's they have
  every moment. A rare draw deep in a funnel's neck has a huge loss; train such a guide
  with 16 particles (``Trace_ELBO(num_particles=16)``) so one draw cannot throw it off.
* ``base_df=nu``: independent Student-t draws with ``nu`` degrees of freedom (polynomial
  tails). Small values can make training unstable.

The tails are fixed, not learnt: the ELBO penalises mass where the posterior has little and
rewards none in the far tails, so nothing in it holds a learnt tail weight up. A heavier
base costs some ELBO (the guide's bulk is less Gaussian) and buys a lower k-hat;
measurements are in docs/inference.md.

Multimodal posteriors: the MAP search also runs from ``restarts`` uniform draws in
``[-2, 2]`` per coordinate, and end points that a barrier of more than a nat separates are
distinct modes. Started on one of them, SVI's reverse KL keeps the guide there. With two or
more modes of non-negligible mass (``warm_start_ == "modes"``, ``modes_`` holds the
mixture of their local Gaussians), the guide instead draws from the posterior by importance
resampling from that mixture, fits a spline coupling flow to the draws by maximum
likelihood (`fit`), and freezes it (`Frozen`) under the trainable flow, which SVI then
trains in the space scaled by the within-mode covariance, its steps damped (`Damped`,
``MODE_STEP_SCALE``). Each mode keeps its share of the mass; NeuTra's warped space stays
the base. The NumPyro backend does the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.transforms import ComposeTransformModule, biject_to
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from pyro.poutine.util import site_is_subsample

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
from pyroflows.pyro import flows as recipes
from pyroflows.pyro.core import Bijection, Chain, chain_forward
from pyroflows.pyro.distributions import Flow, FlowDistribution
from pyroflows.pyro.linear import LULinear

__all__ = ["AutoFlow", "Damped", "FixedAffine", "Frozen", "PathGradientFlowDistribution", "RECIPES"]

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

    Args:
        model: A Pyro model.
        flow: A recipe name (``"iaf"`` (default), ``"nsf"``, ``"maf"``, ``"realnvp"``,
            ``"nice"``) or a callable ``latent_dim -> Flow``.
        init_loc_fn: Per-site initialisation (as for Pyro's autoguides); the MAP search
            starts there.
        init_scale: Scale of the affine layer with ``warmup=None``; otherwise the smallest
            of the isotropic scales tried (``init_scale`` x 1, 3.2 and 10, the best Monte
            Carlo ELBO wins) where the Laplace approximation is not used.
        warmup: ``"laplace"`` (default): MAP by saddle-free Newton (L-BFGS above 300
            latent dimensions), then the affine layer is set to the Laplace approximation
            if its Monte Carlo ELBO beats the other starts; ``"map"``: MAP location with an
            isotropic scale; ``None``: the ``init_loc_fn`` location with ``init_scale``.
        warmup_steps: Maximum Newton (or L-BFGS) iterations of each MAP search.
        restarts: Extra MAP searches, from points drawn uniformly in ``[-2, 2]`` per
            unconstrained coordinate (where ``init_to_uniform`` starts), to find the
            posterior's modes; ``0`` searches from ``init_loc_fn`` only. With one mode the
            warm start is as described under ``warmup``; with several (each reached from
            some start, separated by a barrier of more than a nat) see "Multimodal
            posteriors" in the module docstring.
        num_samples: Monte Carlo draws used by `median` and `quantiles`.
        base: The base distribution of ``u``: ``"normal"`` (default), ``"laplace"``
            (independent ``Laplace(0, 1 / sqrt(2))``, unit variance, exponential tails) or
            ``"student_t"`` (needs ``base_df``); see "Base distribution" in the module
            docstring.
        base_df: ``None`` (default) or the degrees of freedom of a Student-t base
            (independent ``StudentT(base_df, 0, 1)`` per latent dimension), held fixed.
            Given alone, it selects ``base="student_t"``.
        stl: Score the guide's own draws with the path gradient only ("sticking the
            landing", Roeder et al., 2017; `PathGradientFlowDistribution`): the same ELBO,
            without the score term, whose mean is zero, in its gradient. It costs a
            Jacobian of the flow per draw (``latent_dim`` batched backward passes).
        **flow_kwargs: Passed to the recipe (``transforms``, ``hidden``, ``bins``, ...).
            Defaults: ``transforms=3``, ``hidden=(w, w)`` with ``w = max(32, 4 * latent_dim)``.

    Examples:
        >>> import torch, pyro, pyro.distributions as dist
        >>> from pyro.infer import SVI, Trace_ELBO
        >>> from pyroflows.pyro import AutoFlow
        >>> def model():
        ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = AutoFlow(model, flow="iaf", transforms=2)
        >>> svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        >>> loss = svi.step()
    """

    def __init__(
        self,
        model: Callable,
        flow: str | Callable[[int], Flow] = "iaf",
        *,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
        warmup: str | None = "laplace",
        warmup_steps: int = 500,
        restarts: int = RESTARTS,
        num_samples: int = 1000,
        base: str = "normal",
        base_df: float | None = None,
        stl: bool = False,
        **flow_kwargs,
    ) -> None:
        self._base_kind = check_arguments(
            flow, warmup, init_scale, "latent_dim -> Flow", base_df, base
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
        self._subsamples = None
        super().__init__(model, init_loc_fn=init_loc_fn)
        # AutoContinuous wraps ``self.model`` in an InitMessenger, which runs ``init_loc_fn``
        # at every latent site of every model run (init_to_median draws prior samples). The
        # potential conditions every latent site, so it runs the bare model: no wasted draws
        # and no use of the global RNG. Kept out of nn.Module's registry, so that a
        # PyroModule model does not become a submodule of its guide.
        self.__dict__["_bare_model"] = model

    # ------------------------------------------------------------------ set-up
    def _build_flow(self) -> Flow:
        d = self.latent_dim
        if isinstance(self._flow_spec, str):
            kwargs = recipe_kwargs(self._flow_spec, d, self._flow_kwargs)
            flow = RECIPES[self._flow_spec.lower()](d, **kwargs)
        else:
            flow = self._flow_spec(d)
            if not isinstance(flow, Flow) or flow.features != d or flow.context_features:
                raise ValueError(
                    f"the flow callable must return an unconditional pyroflows Flow with "
                    f"features={d} (the model's latent dimension), got {flow!r}"
                )
        return flow

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        flow = self._build_flow()
        init = self._init_loc()
        self._fix_subsamples(args, kwargs)
        with torch.enable_grad():  # the MAP search differentiates the model
            start = self._warm_start(init, args, kwargs)
            layers = [*flow.transforms, LULinear(self.latent_dim)]
            loc, scale_tril = (self._tensor(a, init) for a in start[:2])
            if start.mixture is not None:
                loc, scale_tril, transport = self._fit_to_modes(start, init, args, kwargs)
                layers = [*transport, Damped(layers, MODE_STEP_SCALE)]
        self._subsamples = None
        layers = [*layers, FixedAffine(loc, scale_tril)]
        self.flow = Flow(layers, self._base(init)).to(dtype=init.dtype, device=init.device)

    @staticmethod
    def _tensor(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(array, dtype=like.dtype, device=like.device)

    def _fit_to_modes(
        self, start: WarmStart, init: torch.Tensor, args, kwargs
    ) -> tuple[torch.Tensor, torch.Tensor, list]:
        """The frozen Gaussian and the frozen transport of a multimodal start: a spline
        coupling flow fitted by maximum likelihood to posterior draws (see
        `pyroflows._autoflow.mode_fit_data`)."""
        from pyroflows.pyro.train import fit

        def log_density(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                points = self._tensor(x, init)
                values = [-self._safe_potential(p, args, kwargs) for p in points]
            return _numpy(torch.stack(values))

        loc, scale_tril, within, standard, self.mode_fit_ess_ = mode_fit_data(
            start.mixture, log_density
        )
        d = self.latent_dim
        transport = recipes.NSF(d, **recipe_kwargs("nsf", d, {})).to(dtype=init.dtype)
        fit(
            Flow(list(transport.transforms), self._base(init)),
            self._tensor(standard, init),
            **{k: v for k, v in MODE_FIT.items() if k != "draws"},
            progress=False,
        )
        # SVI trains the flow where the modes have unit scale (Adam's steps are then small
        # against every mode's width), between the transport and the frozen Gaussian
        to_within = self._tensor(np.linalg.solve(within, scale_tril), init)
        zeros = init.new_zeros(d)
        layers = [Frozen(list(transport.transforms)), FixedAffine(zeros, to_within)]
        return self._tensor(loc, init), self._tensor(within, init), layers

    def _base(self, like: torch.Tensor) -> dist.Distribution | None:
        """The Laplace or Student-t base (dtype and device of ``like``); ``None``: normal."""
        zeros = like.new_zeros(self.latent_dim)
        if self._base_kind == "laplace":
            return dist.Laplace(zeros, zeros + math.sqrt(0.5)).to_event(1)
        if self._base_kind == "student_t":
            return dist.StudentT(zeros + self._base_df, zeros, zeros + 1.0).to_event(1)
        return None

    def _potential(self, latent: torch.Tensor, args, kwargs) -> torch.Tensor:
        """Minus the log joint density of the model in the unconstrained space."""
        values, log_det = {}, latent.new_zeros(())
        for site, unconstrained in self._unpack_latent(latent):
            transform = biject_to(site["fn"].support)
            value = transform(unconstrained)
            values[site["name"]] = value
            ld = transform.log_abs_det_jacobian(unconstrained, value)
            log_det = log_det + ld.sum()
        model = poutine.condition(self._bare_model, data=values)
        if self._subsamples is not None:  # one fixed minibatch: a deterministic potential
            model = poutine.replay(model, trace=self._subsamples)
        with poutine.block():
            trace = poutine.trace(model).get_trace(*args, **kwargs)
        return -(trace.log_prob_sum() + log_det)

    def _fix_subsamples(self, args, kwargs) -> None:
        """Record the plates' subsample indices of one model run (``None`` if none)."""
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(self.model).get_trace(*args, **kwargs)
        for name in list(trace.nodes):
            if not site_is_subsample(trace.nodes[name]):
                trace.remove_node(name)
        self._subsamples = trace if trace.nodes else None

    def _safe_potential(self, latent: torch.Tensor, args, kwargs) -> torch.Tensor:
        try:
            value = self._potential(latent, args, kwargs)
        except (ValueError, RuntimeError):  # a model that rejects the point (validation)
            return latent.new_full((), float("inf"))
        return value

    def _map_lbfgs(self, init: torch.Tensor, args, kwargs) -> torch.Tensor:
        """L-BFGS with restarts, keeping the best point (for large latent dimensions).

        L-BFGS in float32 on an ill-conditioned posterior can step to a point where the model
        is not finite; the search then restarts from the best finite point seen.
        """
        best_z = init.detach().clone()
        best = float(self._safe_potential(best_z, args, kwargs).detach())
        rounds = 5
        for _ in range(rounds):
            z = best_z.clone().requires_grad_(True)
            optimizer = torch.optim.LBFGS(
                [z],
                lr=1.0,
                max_iter=max(1, self._warmup_steps // rounds),
                history_size=20,
                line_search_fn="strong_wolfe",
            )

            def closure(z=z, optimizer=optimizer):
                nonlocal best, best_z
                optimizer.zero_grad()
                value = self._safe_potential(z, args, kwargs)
                if not torch.isfinite(value):
                    raise FloatingPointError
                value.backward()
                if torch.isfinite(z.grad).all() and float(value.detach()) < best:
                    best, best_z = float(value.detach()), z.detach().clone()
                return value

            start = best
            try:
                optimizer.step(closure)
            except FloatingPointError:
                pass
            if not start - best > 1e-6 * max(1.0, abs(start)):
                break  # no progress in this round
        return best_z

    def _warm_start(self, init: torch.Tensor, args, kwargs) -> WarmStart:
        """Location and Cholesky factor of the frozen Gaussian under the flow.

        The choice among the ``init_loc_fn`` point, the MAP and the Laplace approximation is
        `pyroflows._autoflow.warm_start`'s (recorded in ``self.warm_start_``); this method
        hands it the model's potential and derivatives as float64 numpy callbacks.
        """

        def tensor(z: np.ndarray) -> torch.Tensor:
            return self._tensor(z, init)

        def potential(z: np.ndarray) -> float:
            with torch.no_grad():
                return float(self._safe_potential(tensor(z), args, kwargs))

        def derivatives(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            point = tensor(z).requires_grad_(True)
            value = self._safe_potential(point, args, kwargs)
            if not (value.requires_grad and torch.isfinite(value)):
                return np.full(z.shape, np.nan), np.full(z.shape * 2, np.nan)
            grad = torch.autograd.grad(value, point)[0]
            hessian = torch.autograd.functional.hessian(
                lambda v: self._safe_potential(v, args, kwargs), point.detach()
            )
            return _numpy(grad), _numpy(hessian)

        def lbfgs(z: np.ndarray) -> np.ndarray:
            return _numpy(self._map_lbfgs(tensor(z), args, kwargs))

        start = warm_start(
            _numpy(init),
            warmup=self._warmup,
            init_scale=self._init_scale,
            max_steps=self._warmup_steps,
            potential=potential,
            derivatives=derivatives,
            gaussian_elbo=lambda m, s: self._gaussian_elbo(tensor(m), tensor(s), args, kwargs),
            lbfgs=lbfgs,
            restarts=self._restarts,
        )
        self.warm_start_, self.modes_ = start.name, start.mixture
        return start

    @torch.no_grad()
    def _gaussian_elbo(self, loc, scale_tril, args, kwargs, draws: int = 64) -> float:
        """ELBO (up to a constant) of ``Normal(loc, scale_tril scale_tril^T)``, common draws."""
        generator = torch.Generator(device=loc.device).manual_seed(0)
        eps = torch.randn(draws, self.latent_dim, generator=generator, dtype=loc.dtype)
        points = loc + eps.to(loc.device) @ scale_tril.T
        potential = torch.stack([self._safe_potential(p, args, kwargs) for p in points])
        value = float(-potential.mean() + scale_tril.diagonal().abs().log().sum())
        return value if math.isfinite(value) else -math.inf

    # ------------------------------------------------------------------ posterior
    def get_base_dist(self) -> dist.Distribution:
        return self.flow.base_distribution()

    def get_transform(self, *args, **kwargs) -> ComposeTransformModule:
        """The flow's bijections as one Pyro transform, base -> latent (for NeuTra)."""
        return ComposeTransformModule(list(self.flow.transforms))

    def get_posterior(self, *args, **kwargs) -> FlowDistribution:
        """The flow's distribution over the packed unconstrained latent vector."""
        posterior = self.flow()
        if self._stl:
            return PathGradientFlowDistribution(posterior.base_dist, posterior.bijections)
        return posterior

    def _posterior_draws(self, *args, **kwargs) -> torch.Tensor:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        with torch.no_grad():
            return self.flow().sample((self.num_samples,))

    def _constrain(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each site's constrained values from a batch of packed latents ``(..., latent_dim)``.

        Pyro's ``_unpack_latent`` broadcasts the batch against each site's shape, which fails
        for sites inside a plate; each site's slice is reshaped to ``batch + site shape``.
        """
        batch, pos, values = latent.shape[:-1], 0, {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            shape = self._unconstrained_shapes[name]
            size = math.prod(shape)
            unconstrained = latent[..., pos : pos + size].reshape(batch + shape)
            values[name] = biject_to(site["fn"].support)(unconstrained)
            pos += size
        return values

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Posterior median of each latent site (elementwise, from ``num_samples`` draws)."""
        draws = self._constrain(self._posterior_draws(*args, **kwargs))
        return {name: value.median(0).values for name, value in draws.items()}

    @torch.no_grad()
    def quantiles(self, quantiles, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Posterior quantiles of each latent site (elementwise, from ``num_samples`` draws).

        Args:
            quantiles: Levels in ``(0, 1)``.

        Returns:
            ``{site: tensor of shape (len(quantiles), *site_shape)}``.
        """
        levels = torch.as_tensor(quantiles, dtype=torch.float64)
        if levels.dim() != 1 or not ((levels > 0) & (levels < 1)).all():
            raise ValueError(f"quantiles must be a list of levels in (0, 1), got {quantiles!r}")
        draws = self._constrain(self._posterior_draws(*args, **kwargs))
        result = {}
        for name, value in draws.items():
            q = levels.to(dtype=value.dtype, device=value.device)
            result[name] = torch.quantile(value, q, dim=0)
        return result


class PathGradientFlowDistribution(FlowDistribution):
    """A flow distribution that scores its own draws with the path gradient only.

    ``log_prob`` of the tensor that ``rsample`` just returned, ``x = f(u)``, has the usual
    value, but its gradient with respect to the flow's weights is only the part that flows
    through ``x``: ``grad_x log q(x) . dx/dtheta``, with ``grad_x log q(x) = J^{-T} grad_u
    [log p(u) - log|det J(u)|]`` from the Jacobian ``J`` of the flow at ``u`` (``latent_dim``
    batched backward passes, no weight gradients). The score term ``grad_theta
    log q_theta(x)``, whose mean is zero, is left out: "sticking the landing" (Roeder et al.,
    2017). Its variance vanishes where the guide matches the posterior. Any other value,
    or a call without gradients, gets the plain ``log_prob``.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        cached = self._cached(value)
        if cached is None or not torch.is_grad_enabled():
            return super().log_prob(value)
        full = super().log_prob(value)  # the cached draw: no pass through the flow
        z = cached[0]
        score = _score_of_draws(self.bijections, self.base_dist, z)
        path = (score * value).sum(-1)
        return full.detach() + path - path.detach()


def _score_of_draws(bijections, base: dist.Distribution, z: torch.Tensor) -> torch.Tensor:
    """``grad_x log q(x)`` at ``x = f(z)`` for each draw ``z`` (``(..., features)``), detached."""
    with torch.enable_grad():
        u = z.detach().requires_grad_(True)
        x, log_det = chain_forward(bijections, u, None)
        (grad_u,) = torch.autograd.grad((base.log_prob(u) - log_det).sum(), u, retain_graph=True)
        features = x.shape[-1]
        eye = torch.eye(features, dtype=x.dtype, device=x.device)
        rows = eye.reshape(features, *([1] * (x.dim() - 1)), features).expand(features, *x.shape)
        # each draw's output depends on its own input only: row i of every Jacobian at once
        (jacobian_rows,) = torch.autograd.grad(x, u, grad_outputs=rows, is_grads_batched=True)
    jacobian = jacobian_rows.movedim(0, -2)  # (..., i, j) = d x_i / d u_j
    score = torch.linalg.solve(jacobian.transpose(-1, -2), grad_u.unsqueeze(-1)).squeeze(-1)
    return score.detach()


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


class FixedAffine(Bijection):
    """``y = loc + scale_tril @ x`` with frozen ``loc`` and lower-triangular ``scale_tril``.

    The warm start of `AutoFlow`: it maps the flow's standardised space onto the Laplace
    approximation. ``loc`` and ``scale_tril`` are buffers, not parameters, so every trainable
    parameter of the guide lives in the standardised space, where one Adam learning rate
    suits all of them whatever the posterior's scales.

    Args:
        loc: Location ``(features,)``.
        scale_tril: Lower-triangular factor ``(features, features)`` with a positive diagonal.
    """

    #: Buffers that `get_params` / `set_params` carry, as the JAX backend does, so a trained
    #: `AutoFlow` moves between the backends with its warm start.
    state_buffers = ("loc", "scale_tril")

    def __init__(self, loc: torch.Tensor, scale_tril: torch.Tensor) -> None:
        super().__init__(int(loc.shape[-1]))
        self.register_buffer("loc", loc.clone())
        self.register_buffer("scale_tril", scale_tril.clone())

    def _log_det(self, like: torch.Tensor) -> torch.Tensor:
        log_det = self.scale_tril.diagonal().abs().log().sum()
        return log_det.expand(like.shape[:-1])

    def forward_and_log_det(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc + x @ self.scale_tril.T, self._log_det(x)

    def inverse_and_log_det(
        self, y: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        centred = (y - self.loc).unsqueeze(-1)
        tril = self.scale_tril.expand(*centred.shape[:-2], -1, -1)
        x = torch.linalg.solve_triangular(tril, centred, upper=False).squeeze(-1)
        return x, -self._log_det(y)


class _Method(torch.nn.Module):
    """Calls one method of ``chain`` (so that `torch.func.functional_call` can swap in the
    parameters it runs with)."""

    def __init__(self, chain: Chain, method: str) -> None:
        super().__init__()
        self.chain, self.method = chain, method

    def forward(self, *args):
        return getattr(self.chain, self.method)(*args)


class Damped(Bijection):
    """Bijections whose parameters are stored divided by ``scale`` and used multiplied by
    it, so an optimiser's steps (Adam's are about the learning rate per element, whatever
    the gradient's size) move them ``scale`` times as far.

    `AutoFlow`'s trainable layers above the frozen transport of a multimodal start
    (``MODE_STEP_SCALE``). `get_params` gives the stored values, under the names the JAX
    backend's `Damped` gives them, so the other backend's `Damped` reads them alike.

    Args:
        layers: The bijections, in the forward (base -> data) order.
        scale: The factor, in ``(0, 1]`` to damp.
    """

    def __init__(self, layers, scale: float) -> None:
        chain = Chain(list(layers))
        super().__init__(chain.features)
        self.scale = float(scale)
        with torch.no_grad():
            for p in chain.parameters():
                p.div_(self.scale)
        self.chain = chain

    def _run(self, method: str, *args):
        live = {f"chain.{n}": p * self.scale for n, p in self.chain.named_parameters()}
        return torch.func.functional_call(_Method(self.chain, method), live, args)

    def forward_and_log_det(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run("forward_and_log_det", x)

    def inverse_and_log_det(
        self, y: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._run("inverse_and_log_det", y)


class Frozen(Bijection):
    """Bijections held fixed: their parameters become buffers (listed in each module's
    ``state_buffers``, so `get_params` / `set_params` still carry them, under the same
    names), as `FixedAffine`'s are, so no optimiser moves them.

    `AutoFlow`'s transport warm start on a multimodal posterior: a flow fitted to posterior
    draws before SVI, under the trainable flow. Frozen, it keeps every mode's share of the
    mass while SVI trains the layers on top of it.

    Args:
        layers: The bijections, in the forward (base -> data) order.
    """

    def __init__(self, layers) -> None:
        chain = Chain(list(layers))
        super().__init__(chain.features)
        for module in chain.modules():
            names = [name for name, p in module._parameters.items() if p is not None]
            for name in names:
                value = module._parameters.pop(name).detach().clone()
                module.register_buffer(name, value)
            if names:
                module.state_buffers = (*getattr(module, "state_buffers", ()), *names)
        self.chain = chain

    def forward_and_log_det(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.chain.forward_and_log_det(x)

    def inverse_and_log_det(
        self, y: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.chain.inverse_and_log_det(y)
