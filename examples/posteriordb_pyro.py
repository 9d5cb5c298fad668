"""Variational guides on four posteriordb posteriors, Pyro (PyTorch) backend.

Compares Pyro's ``AutoNormal``, ``AutoMultivariateNormal`` and ``AutoIAFNormal`` with
`pyroflows.pyro.AutoFlow` (``flow="iaf"`` and ``flow="nsf"``, and the guide
``AutoFlow-iaf-laplace-stl``: ``flow="iaf", base="laplace", stl=True``) on real posteriors
with reference draws from long NUTS runs (posteriordb):

* ``eight_schools_noncentered`` (10 parameters) and ``eight_schools_centered`` (10, a funnel;
  its reference is the non-centered draws of theta, mu, tau),
* ``diamonds`` (26 parameters, a linear regression with strongly correlated coefficients),
* ``gp_pois_regr`` (13 parameters, a latent Gaussian process with Poisson counts).

The models are written out as in ``../shared/data/README.md`` (and posteriordb's Stan code),
in float64 as the reference (the GP's Cholesky factor with a 1e-10 jitter needs it), without
plates and with broadcasting in mind, so that ``Trace_ELBO(vectorize_particles=True)`` and
drawing from a guide under one ``pyro.plate`` work.

Protocol, the same for every guide and the same as the NumPyro script's
(`posteriordb_data.guide_settings` gives each guide's settings):

1. Train with ``SVI(model, guide, ClippedAdam, Trace_ELBO(num_particles=8,
   vectorize_particles=True))`` for ``--steps`` steps (default 10000), the learning rate
   decaying exponentially to a tenth of its initial value over the run (``lrd``),
   gradients clipped elementwise at 10 (ClippedAdam's default). The baselines' learning
   rates were picked from {3e-3, 1e-2, 3e-2} on 10000-step NumPyro runs
   (`posteriordb_data.BASELINE_LR`), AutoFlow's from {1e-3, 3e-3, 1e-2} the same way
   (`posteriordb_data.AUTOFLOW_LR`). Training wall time includes the guide's set-up
   (AutoFlow's MAP/Laplace warm start).
2. Score: 10000 importance draws ``log p(x, z) - log q(z)`` of the trained guide
   (`pyroflows.pyro.importance_log_weights` with ``vectorize=True``) give the ELBO (their
   mean) and the Pareto k-hat (ArviZ PSIS on the same draws, exactly what
   `pyroflows.pyro.psis_diagnostic` computes). 10000 guide draws
   (`pyroflows.pyro.to_inference_data` with ``vectorize=True``: one ``pyro.plate``;
   transformed parameters such as the non-centered theta and the GP's f derived from
   them) give each reference parameter's ``|mean error| / reference sd`` and
   ``sd / reference sd``.
3. Target of the issue: k-hat < 0.7 and max |mean error| < 0.1 reference sd, judged on
   the means over ``--seeds`` (why 10000 draws and several seeds: ``posteriordb_data``).

Run from anywhere (the data path defaults to ``../shared/data`` next to the repository)::

    python examples/posteriordb_pyro.py                     # full run, writes outputs/
    python examples/posteriordb_pyro.py --quick             # smoke run (a few steps)
    python examples/posteriordb_pyro.py --posteriors diamonds --guides AutoFlow-iaf
    python examples/posteriordb_pyro.py --out examples/results --data /path/to/data
    python examples/posteriordb_pyro.py --seeds 0,1,2 --posteriors diamonds --out a &
    python examples/posteriordb_pyro.py --seeds 0,1,2 --posteriors gp_pois_regr --out b
    python examples/posteriordb_pyro.py --merge a b --out examples/results  # one table

It prints one line per (posterior, guide, seed) and writes ``posteriordb_pyro.md`` (a
markdown table) and ``posteriordb_pyro.json`` (all numbers, per parameter too) into ``--out``.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormal
from pyro.infer.autoguide.initialization import init_to_median
from pyro.optim import ClippedAdam

sys.path.insert(0, str(Path(__file__).resolve().parent))

import posteriordb_data as pdb  # noqa: E402

import pyroflows.pyro as pf  # noqa: E402

torch.set_default_dtype(torch.float64)
# These models and guides are tiny: one thread is fastest, and on a shared or small machine
# several OpenMP threads can make every op tens of times slower (measured: 4 s instead of
# 0.1 s per step on a loaded 2-core machine).
torch.set_num_threads(1)
logging.getLogger("pyro").setLevel(logging.WARNING)  # "Guessed max_plate_nesting" lines

# ---------------------------------------------------------------------------------- models


def eight_schools_noncentered(y: torch.Tensor, sigma: torch.Tensor) -> None:
    """theta_j = mu + tau * theta_trans_j, theta_trans_j ~ Normal(0, 1)."""
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(5.0)))
    theta_trans = pyro.sample("theta_trans", dist.Normal(torch.zeros_like(y), 1.0).to_event(1))
    theta = mu[..., None] + tau[..., None] * theta_trans
    pyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)


def eight_schools_centered(y: torch.Tensor, sigma: torch.Tensor) -> None:
    """theta_j ~ Normal(mu, tau): the funnel."""
    mu = pyro.sample("mu", dist.Normal(y.new_tensor(0.0), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(y.new_tensor(5.0)))
    loc = mu[..., None] * torch.ones_like(y)
    theta = pyro.sample("theta", dist.Normal(loc, tau[..., None]).to_event(1))
    pyro.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)


def diamonds(Xc: torch.Tensor, Y: torch.Tensor) -> None:  # noqa: N803
    """Y ~ Normal(Intercept + Xc @ b, sigma) with Xc the centred predictors."""
    b = pyro.sample("b", dist.Normal(Xc.new_zeros(Xc.shape[-1]), 1.0).to_event(1))
    intercept = pyro.sample("Intercept", dist.StudentT(3.0, Y.new_tensor(8.0), 10.0))
    sigma = pyro.sample(
        "sigma", dist.FoldedDistribution(dist.StudentT(3.0, Y.new_tensor(0.0), 10.0))
    )
    mean = intercept[..., None] + b @ Xc.T
    pyro.sample("Y", dist.Normal(mean, sigma[..., None]).to_event(1), obs=Y)


def gp_pois_regr(x: torch.Tensor, k: torch.Tensor) -> None:
    """f = cholesky(K) @ f_tilde, k ~ Poisson(exp(f)), K squared-exponential + 1e-10 I."""
    rho = pyro.sample("rho", dist.Gamma(x.new_tensor(25.0), 4.0))
    alpha = pyro.sample("alpha", dist.HalfNormal(x.new_tensor(2.0)))
    f_tilde = pyro.sample("f_tilde", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
    sq = (x[:, None] - x[None, :]) ** 2
    cov = alpha[..., None, None] ** 2 * torch.exp(-sq / (2 * rho[..., None, None] ** 2))
    cov = cov + 1e-10 * torch.eye(x.shape[-1], dtype=x.dtype)
    f = (torch.linalg.cholesky(cov) @ f_tilde[..., None])[..., 0]
    pyro.sample("k", dist.Poisson(torch.exp(f)).to_event(1), obs=k)


MODELS: dict[str, Callable] = {
    "eight_schools_noncentered": eight_schools_noncentered,
    "eight_schools_centered": eight_schools_centered,
    "diamonds": diamonds,
    "gp_pois_regr": gp_pois_regr,
}

# ---------------------------------------------------------------------------------- guides


def make_guide(name: str, model: Callable, latent_dim: int, options: dict):
    """A guide by name. Flow guides get 3 layers of width ``max(32, 4 * latent_dim)``
    (`posteriordb_data.autoflow_kwargs`; ``options`` may override them)."""
    width = pdb.flow_width(latent_dim)
    init = init_to_median(num_samples=15)
    if name == "AutoNormal":
        return AutoNormal(model, init_loc_fn=init)
    if name == "AutoMultivariateNormal":
        return AutoMultivariateNormal(model, init_loc_fn=init)
    if name == "AutoIAFNormal":  # its init_loc_fn is unused (Pyro warns): leave it out
        return AutoIAFNormal(model, hidden_dim=[width, width], num_transforms=3)
    if name.startswith("AutoFlow-"):
        return pf.AutoFlow(
            model,
            flow=pdb.flow_recipe(name),
            init_loc_fn=init,
            **pdb.autoflow_kwargs(latent_dim, options),
        )
    raise ValueError(f"unknown guide {name!r}")


def describe(name: str, settings: pdb.GuideSettings, latent_dim: int) -> str:
    """One line of the guide's architecture and training settings, for the table."""
    width = pdb.flow_width(latent_dim)
    arch = {
        "AutoNormal": "init_scale 0.1, init_to_median",
        "AutoMultivariateNormal": "init_scale 0.1, init_to_median",
        "AutoIAFNormal": f"num_transforms 3, hidden_dim [{width}, {width}]",
    }.get(
        name,
        "init_to_median, "
        + pdb.autoflow_options(pdb.autoflow_kwargs(latent_dim, settings.options)),
    )
    return (
        f"{arch}; ClippedAdam lr {settings.lr:g} -> {settings.lr / 10:g} (lrd), clip 10, "
        f"Trace_ELBO(num_particles={settings.particles}, vectorize_particles=True)"
    )


# ---------------------------------------------------------------------------------- run


def train(
    posterior: str,
    guide_name: str,
    inputs: dict[str, np.ndarray],
    *,
    steps: int,
    seed: int,
    settings: pdb.GuideSettings,
) -> tuple[Callable, Callable, tuple[torch.Tensor, ...], float]:
    """Train one guide with the protocol: ``(model, guide, model args, wall seconds)``."""
    model = MODELS[posterior]
    args = tuple(torch.as_tensor(v) for v in inputs.values())
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    guide = make_guide(guide_name, model, pdb.LATENT_DIM[posterior], settings.options)
    optim = ClippedAdam({"lr": settings.lr, "lrd": 0.1 ** (1 / steps), "clip_norm": 10.0})
    elbo = Trace_ELBO(num_particles=settings.particles, vectorize_particles=True)
    svi = SVI(model, guide, optim, elbo)
    for _ in range(steps):
        svi.step(*args)
    return model, guide, args, time.perf_counter() - start


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
    settings = settings or pdb.guide_settings(guide_name, posterior)
    model, guide, args, train_s = train(
        posterior, guide_name, inputs, steps=steps, seed=seed, settings=settings
    )
    log_weights = pf.importance_log_weights(
        model, guide, *args, num_samples=eval_draws, vectorize=True
    )
    with torch.no_grad():
        idata = pf.to_inference_data(guide, *args, num_samples=moment_draws, vectorize=True)
    return pdb.score_guide(
        posterior,
        guide_name,
        guide,
        {name: draws.values[0] for name, draws in idata.posterior.data_vars.items()},
        inputs,
        reference,
        log_weights,
        train_s=train_s,
        steps=steps,
        settings=describe(guide_name, settings, pdb.LATENT_DIM[posterior]),
    )


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    return pdb.main(
        argv,
        backend="Pyro",
        run_one=run_one,
        default_steps=10_000,
        quick_guides="AutoNormal,AutoFlow-iaf",
        versions=f"torch {torch.__version__}, pyro-ppl {pyro.__version__}, "
        f"Python {platform.python_version()}",
        machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    )


if __name__ == "__main__":
    sys.exit(main())
