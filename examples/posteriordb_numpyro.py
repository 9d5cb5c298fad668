"""Variational guides on four posteriordb posteriors, NumPyro (JAX) backend.

Compares NumPyro's ``AutoNormal``, ``AutoMultivariateNormal`` and ``AutoIAFNormal`` with
`pyroflows.numpyro.AutoFlow` (``flow="iaf"`` and ``flow="nsf"``, and the guide
``AutoFlow-iaf-laplace-stl``: ``flow="iaf", base="laplace", stl=True``) on real posteriors
with reference draws from long NUTS runs (posteriordb):

* ``eight_schools_noncentered`` (10 parameters) and ``eight_schools_centered`` (10, a funnel;
  its reference is the non-centered draws of theta, mu, tau),
* ``diamonds`` (26 parameters, a linear regression with strongly correlated coefficients),
* ``gp_pois_regr`` (13 parameters, a latent Gaussian process with Poisson counts).

The models are written out as in ``../shared/data/README.md`` (and posteriordb's Stan code),
in float64 (``jax_enable_x64``), as the reference: the GP's Cholesky factor with a 1e-10
jitter needs it.

Protocol, the same for every guide and the same as the Pyro script's
(`posteriordb_data.guide_settings` gives each guide's settings):

1. Train with ``SVI(model, guide, optim, Trace_ELBO(num_particles=8))`` for ``--steps``
   steps (``svi.run``), Adam with the learning rate decaying exponentially to a tenth of
   its initial value over the run, gradients clipped elementwise at 10. The baselines'
   learning rates were picked per posterior from {3e-3, 1e-2, 3e-2} by the final ELBO
   (`posteriordb_data.BASELINE_LR`); AutoFlow's from {1e-3, 3e-3, 1e-2} the same way
   (`posteriordb_data.AUTOFLOW_LR`). Wall time of training includes
   ``svi.init`` (AutoFlow's MAP/Laplace warm start) and JAX compilation.
2. Score: 10000 importance draws ``log p(x, z) - log q(z)`` of the trained guide
   (`pyroflows.numpyro.importance_log_weights`) give the ELBO (their mean) and the Pareto
   k-hat (ArviZ PSIS on the same draws, exactly what `pyroflows.numpyro.psis_diagnostic`
   computes). 10000 draws of ``guide.sample_posterior`` (transformed parameters such as
   the non-centered theta and the GP's f derived from them) give each reference parameter's
   ``|mean error| / reference sd`` and ``sd / reference sd``.
3. Target of the issue: k-hat < 0.7 and max |mean error| < 0.1 reference sd, judged on
   the means over ``--seeds`` (why 10000 draws and several seeds: ``posteriordb_data``).

Run from anywhere (the data path defaults to ``../shared/data`` next to the repository)::

    python examples/posteriordb_numpyro.py                     # full run, writes outputs/
    python examples/posteriordb_numpyro.py --quick             # smoke run (a few steps)
    python examples/posteriordb_numpyro.py --posteriors diamonds --guides AutoFlow-iaf
    python examples/posteriordb_numpyro.py --out examples/results --data /path/to/data
    python examples/posteriordb_numpyro.py --seeds 0,1,2 --posteriors diamonds --out a &
    python examples/posteriordb_numpyro.py --seeds 0,1,2 --posteriors gp_pois_regr --out b
    python examples/posteriordb_numpyro.py --merge a b --out examples/results  # one table

It prints one line per (posterior, guide, seed) and writes ``posteriordb_numpyro.md`` (a markdown
table) and ``posteriordb_numpyro.json`` (all numbers, per parameter too) into ``--out``.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402
from numpyro.infer.autoguide import (  # noqa: E402
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
)
from numpyro.infer.initialization import init_to_median  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import posteriordb_data as pdb  # noqa: E402

import pyroflows.numpyro as pfj  # noqa: E402

# ---------------------------------------------------------------------------------- models


def eight_schools_noncentered(y: jax.Array, sigma: jax.Array) -> None:
    """theta_j = mu + tau * theta_trans_j, theta_trans_j ~ Normal(0, 1)."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta_trans = numpyro.sample(
        "theta_trans", dist.Normal(jnp.zeros(y.shape[-1]), 1.0).to_event(1)
    )
    theta = mu[..., None] + tau[..., None] * theta_trans
    numpyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)


def eight_schools_centered(y: jax.Array, sigma: jax.Array) -> None:
    """theta_j ~ Normal(mu, tau): the funnel."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    theta = numpyro.sample(
        "theta",
        dist.Normal(mu[..., None] * jnp.ones(y.shape[-1]), tau[..., None]).to_event(1),
    )
    numpyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)


def diamonds(Xc: jax.Array, Y: jax.Array) -> None:  # noqa: N803
    """Y ~ Normal(Intercept + Xc @ b, sigma) with Xc the centred predictors."""
    b = numpyro.sample("b", dist.Normal(jnp.zeros(Xc.shape[-1]), 1.0).to_event(1))
    intercept = numpyro.sample("Intercept", dist.StudentT(3.0, 8.0, 10.0))
    sigma = numpyro.sample("sigma", dist.FoldedDistribution(dist.StudentT(3.0, 0.0, 10.0)))
    mean = intercept[..., None] + b @ Xc.T
    numpyro.sample("Y", dist.Normal(mean, sigma[..., None]).to_event(1), obs=Y)


def gp_pois_regr(x: jax.Array, k: jax.Array) -> None:
    """f = cholesky(K) @ f_tilde, k ~ Poisson(exp(f)), K squared-exponential + 1e-10 I."""
    rho = numpyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = numpyro.sample("alpha", dist.HalfNormal(2.0))
    f_tilde = numpyro.sample("f_tilde", dist.Normal(jnp.zeros(x.shape[-1]), 1.0).to_event(1))
    sq = (x[:, None] - x[None, :]) ** 2
    cov = alpha[..., None, None] ** 2 * jnp.exp(-sq / (2 * rho[..., None, None] ** 2))
    cov = cov + 1e-10 * jnp.eye(x.shape[-1])
    f = (jnp.linalg.cholesky(cov) @ f_tilde[..., None])[..., 0]
    numpyro.sample("k", dist.Poisson(jnp.exp(f)).to_event(1), obs=k)


MODELS: dict[str, Callable] = {
    "eight_schools_noncentered": eight_schools_noncentered,
    "eight_schools_centered": eight_schools_centered,
    "diamonds": diamonds,
    "gp_pois_regr": gp_pois_regr,
}

# ---------------------------------------------------------------------------------- guides


def make_guide(name: str, model: Callable, latent_dim: int, seed: int, options: dict):
    """A guide by name. Flow guides get 3 layers of width ``max(32, 4 * latent_dim)``
    (`posteriordb_data.autoflow_kwargs`; ``options`` may override them)."""
    width = pdb.flow_width(latent_dim)
    init = init_to_median(num_samples=15)
    if name == "AutoNormal":
        return AutoNormal(model, init_loc_fn=init)
    if name == "AutoMultivariateNormal":
        return AutoMultivariateNormal(model, init_loc_fn=init)
    if name == "AutoIAFNormal":
        return AutoIAFNormal(model, init_loc_fn=init, num_flows=3, hidden_dims=[width, width])
    if name.startswith("AutoFlow-"):
        return pfj.AutoFlow(
            model,
            flow=pdb.flow_recipe(name),
            init_loc_fn=init,
            key=jax.random.key(seed + 1),
            **pdb.autoflow_kwargs(latent_dim, options),
        )
    raise ValueError(f"unknown guide {name!r}")


def describe(name: str, settings: pdb.GuideSettings, latent_dim: int) -> str:
    """One line of the guide's architecture and training settings, for the table."""
    width = pdb.flow_width(latent_dim)
    arch = {
        "AutoNormal": "init_scale 0.1",
        "AutoMultivariateNormal": "init_scale 0.1",
        "AutoIAFNormal": f"num_flows 3, hidden [{width}, {width}]",
    }.get(name, pdb.autoflow_options(pdb.autoflow_kwargs(latent_dim, settings.options)))
    return (
        f"{arch}; Adam lr {settings.lr:g} -> {settings.lr / 10:g} (exponential), clip 10, "
        f"Trace_ELBO(num_particles={settings.particles}), init_to_median"
    )


# ---------------------------------------------------------------------------------- run


def run_one(
    posterior: str,
    guide_name: str,
    inputs: dict[str, np.ndarray],
    reference: pdb.Reference,
    *,
    steps: int,
    eval_draws: int,
    moment_draws: int,
    seed: int,
    settings: pdb.GuideSettings | None = None,
) -> pdb.Score:
    model = MODELS[posterior]
    args = tuple(jnp.asarray(v) for v in inputs.values())
    settings = settings or pdb.guide_settings(guide_name, posterior)
    guide = make_guide(guide_name, model, pdb.LATENT_DIM[posterior], seed, settings.options)
    schedule = optax.exponential_decay(settings.lr, transition_steps=steps, decay_rate=0.1)
    optim = numpyro.optim.optax_to_numpyro(optax.chain(optax.clip(10.0), optax.adam(schedule)))
    svi = SVI(model, guide, optim, Trace_ELBO(num_particles=settings.particles))
    key_train, key_eval, key_draws = jax.random.split(jax.random.key(seed), 3)
    start = time.perf_counter()
    result = svi.run(key_train, steps, *args, progress_bar=False)
    params = jax.block_until_ready(result.params)
    train_s = time.perf_counter() - start

    log_weights = pfj.importance_log_weights(
        model, guide, *args, params=params, key=key_eval, num_samples=eval_draws
    )
    samples = guide.sample_posterior(key_draws, params, *args, sample_shape=(moment_draws,))
    return pdb.score_guide(
        posterior,
        guide_name,
        guide,
        {k: np.asarray(v) for k, v in samples.items()},
        inputs,
        reference,
        log_weights,
        train_s=train_s,
        steps=steps,
        settings=describe(guide_name, settings, pdb.LATENT_DIM[posterior]),
    )


def main(argv: list[str] | None = None) -> int:
    return pdb.main(
        argv,
        backend="NumPyro",
        run_one=run_one,
        default_steps=10_000,
        quick_guides="AutoFlow-iaf",  # JAX compiling dominates a smoke run
        versions=f"jax {jax.__version__}, numpyro {numpyro.__version__}, "
        f"optax {optax.__version__}, Python {platform.python_version()}",
        machine=f"{platform.machine()}, {jax.devices()[0].platform}",
    )


if __name__ == "__main__":
    sys.exit(main())
