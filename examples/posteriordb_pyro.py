"""Variational guides on four posteriordb posteriors, Pyro (PyTorch) backend.

Compares Pyro's ``AutoNormal``, ``AutoMultivariateNormal`` and ``AutoIAFNormal`` with
`pyroflows.pyro.AutoFlow` (``flow="iaf"`` and ``flow="nsf"``) on real posteriors with
reference draws from long NUTS runs (posteriordb):

* ``eight_schools_noncentered`` (10 parameters) and ``eight_schools_centered`` (10, a funnel;
  its reference is the non-centered draws of theta, mu, tau),
* ``diamonds`` (26 parameters, a linear regression with strongly correlated coefficients),
* ``gp_pois_regr`` (13 parameters, a latent Gaussian process with Poisson counts).

The models are written out as in ``../shared/data/README.md`` (and posteriordb's Stan code),
in float64 as the reference (the GP's Cholesky factor with a 1e-10 jitter needs it), without
plates and with broadcasting in mind, so that ``Trace_ELBO(vectorize_particles=True)`` and
drawing from a guide under one ``pyro.plate`` work.

Protocol, the same for every guide (`guide_settings` gives each guide's settings):

1. Train with ``SVI(model, guide, ClippedAdam, Trace_ELBO(num_particles=8,
   vectorize_particles=True))`` for ``--steps`` steps (default 2000: a Pyro step costs
   10 to 40 ms here, against about 1 ms for NumPyro's jitted one, so the NumPyro script runs
   10000 in the same wall time), the learning rate decaying
   exponentially to a tenth of its initial value over the run (``lrd``), gradients clipped
   elementwise at 10 (ClippedAdam's default). The baselines' learning rates were picked from
   {3e-3, 1e-2, 3e-2} on 10000-step NumPyro runs (`BASELINE_LR`). AutoFlow warm-starts at
   the Laplace approximation, so it wants a small learning rate: 3e-3 here (1e-3 in the
   NumPyro script, with five times the steps); on centered eight schools, where it has no
   MAP to start from, 1e-2. Training
   wall time includes the guide's set-up (AutoFlow's MAP/Laplace warm start).
2. Score: 1000 importance draws ``log p(x, z) - log q(z)`` of the trained guide
   (`pyroflows.pyro.importance_log_weights`) give the ELBO (their mean) and the Pareto
   k-hat (ArviZ PSIS on the same draws, exactly what `pyroflows.pyro.psis_diagnostic`
   computes). 10000 guide draws (under one ``pyro.plate``; transformed parameters such as
   the non-centered theta and the GP's f derived from them) give each reference parameter's
   ``|mean error| / reference sd`` and ``sd / reference sd``.
3. Target of the issue: k-hat < 0.7 and max |mean error| < 0.1 reference sd.

Run from anywhere (the data path defaults to ``../shared/data`` next to the repository)::

    python examples/posteriordb_pyro.py                     # full run, writes outputs/
    python examples/posteriordb_pyro.py --quick             # smoke run (a few steps)
    python examples/posteriordb_pyro.py --posteriors diamonds --guides AutoFlow-iaf
    python examples/posteriordb_pyro.py --out examples/results --data /path/to/data

It prints one line per (posterior, guide) and writes ``posteriordb_pyro.md`` (a markdown
table) and ``posteriordb_pyro.json`` (all numbers, per parameter too) into ``--out``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
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

#: Unconstrained latent dimension of each model (sets the guides' hidden widths).
LATENT_DIM = {
    "eight_schools_noncentered": 10,
    "eight_schools_centered": 10,
    "diamonds": 26,
    "gp_pois_regr": 13,
}

# ---------------------------------------------------------------------------------- guides


@dataclass
class GuideSettings:
    """Training settings of one guide on one posterior."""

    lr: float
    particles: int = 8
    options: dict = field(default_factory=dict)  # extra AutoFlow keyword arguments


#: The baselines' learning rates, per posterior: the best final ELBO of 10000-step NumPyro
#: runs over {3e-3, 1e-2, 3e-2} (the Pyro script uses the same ones).
BASELINE_LR: dict[str, dict[str, float]] = {
    "AutoNormal": {
        "eight_schools_noncentered": 1e-2,
        "eight_schools_centered": 3e-2,
        "diamonds": 3e-2,
        "gp_pois_regr": 1e-2,
    },
    "AutoMultivariateNormal": {
        "eight_schools_noncentered": 1e-2,
        "eight_schools_centered": 3e-2,
        "diamonds": 3e-2,
        "gp_pois_regr": 1e-2,
    },
    "AutoIAFNormal": {
        "eight_schools_noncentered": 3e-3,
        "eight_schools_centered": 3e-3,
        "diamonds": 3e-3,
        "gp_pois_regr": 3e-3,
    },
}

#: AutoFlow's learning rate (its warm start sits at the Laplace approximation: a small one).
AUTOFLOW_LR = 3e-3
#: Centered eight schools has no MAP (the log joint grows without bound as tau -> 0 with
#: theta -> mu): AutoFlow's MAP search finds no mode there and the guide starts from
#: ``init_to_median`` with ``init_scale`` instead of the Laplace approximation (it warns),
#: so its flow has to learn the location and scales too.
CENTERED_LR = 1e-2


def guide_settings(guide: str, posterior: str) -> GuideSettings:
    """The settings used for ``guide`` on ``posterior``."""
    if guide in BASELINE_LR:
        return GuideSettings(lr=BASELINE_LR[guide][posterior])
    # The NSF recipe's default mode ("autoregressive") is MAF-direction: drawing from it runs
    # the conditioner once per latent dimension and layer, which makes every SVI step 5 to 10
    # times slower than IAF here; coupling layers draw in one pass.
    options: dict = {"mode": "coupling"} if guide == "AutoFlow-nsf" else {}
    lr = CENTERED_LR if posterior == "eight_schools_centered" else AUTOFLOW_LR
    return GuideSettings(lr=lr, options=options)


def make_guide(name: str, model: Callable, latent_dim: int, options: dict):
    """A guide by name. Flow guides get 3 layers of width ``max(32, 4 * latent_dim)``."""
    width = max(32, 4 * latent_dim)
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
            flow=name.split("-", 1)[1],
            init_loc_fn=init,
            transforms=3,
            hidden=(width, width),
            **options,
        )
    raise ValueError(f"unknown guide {name!r}")


def _options(options: dict) -> str:
    options = {"warmup": "laplace", **options}
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def describe(name: str, settings: GuideSettings, latent_dim: int) -> str:
    """One line of the guide's architecture and training settings, for the table."""
    width = max(32, 4 * latent_dim)
    arch = {
        "AutoNormal": "init_scale 0.1, init_to_median",
        "AutoMultivariateNormal": "init_scale 0.1, init_to_median",
        "AutoIAFNormal": f"num_transforms 3, hidden_dim [{width}, {width}]",
    }.get(
        name,
        f"transforms 3, hidden ({width}, {width}), init_to_median, " + _options(settings.options),
    )
    return (
        f"{arch}; ClippedAdam lr {settings.lr:g} -> {settings.lr / 10:g} (lrd), clip 10, "
        f"Trace_ELBO(num_particles={settings.particles}, vectorize_particles=True)"
    )


# ---------------------------------------------------------------------------------- run


@torch.no_grad()
def guide_draws(guide: Callable, num_draws: int, *args) -> dict[str, np.ndarray]:
    """``num_draws`` draws of every (non-auxiliary) latent site, vectorised under a plate."""
    with pyro.plate("_draws", num_draws, dim=-1):
        trace = poutine.trace(guide).get_trace(*args)
    return {
        name: site["value"].detach().cpu().numpy()
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["infer"].get("is_auxiliary")
    }


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
    settings: GuideSettings | None = None,
) -> pdb.Score:
    model = MODELS[posterior]
    args = tuple(torch.as_tensor(v) for v in inputs.values())
    settings = settings or guide_settings(guide_name, posterior)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    start = time.perf_counter()
    guide = make_guide(guide_name, model, LATENT_DIM[posterior], settings.options)
    optim = ClippedAdam({"lr": settings.lr, "lrd": 0.1 ** (1 / steps), "clip_norm": 10.0})
    elbo = Trace_ELBO(num_particles=settings.particles, vectorize_particles=True)
    svi = SVI(model, guide, optim, elbo)
    for _ in range(steps):
        svi.step(*args)
    train_s = time.perf_counter() - start

    log_weights = pf.importance_log_weights(model, guide, *args, num_samples=eval_draws)
    samples = pdb.derive(posterior, guide_draws(guide, moment_draws, *args), inputs)
    draws = pdb.flatten_draws(samples, reference.names)
    return pdb.score(
        posterior,
        guide_name,
        draws,
        reference,
        log_weights,
        train_s=train_s,
        steps=steps,
        settings=describe(guide_name, settings, LATENT_DIM[posterior])
        + (f"; warm start used: {guide.warm_start_}" if hasattr(guide, "warm_start_") else ""),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="data folder (default ../shared/data)")
    parser.add_argument(
        "--posteriors", default=None, help="comma-separated names, or 'all' (the default)"
    )
    parser.add_argument("--guides", default=None, help="comma-separated names, or 'all'")
    parser.add_argument("--steps", type=int, default=None, help="SVI steps (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs", help="folder for the table and JSON")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: few steps and draws, eight_schools_noncentered with AutoNormal and "
        "AutoFlow-iaf unless --posteriors/--guides say otherwise",
    )
    args = parser.parse_args(argv)

    root = pdb.resolve_data_dir(args.data)
    if args.quick:  # a smoke run: one posterior, one baseline and AutoFlow, unless asked
        args.posteriors = args.posteriors or "eight_schools_noncentered"
        args.guides = args.guides or "AutoNormal,AutoFlow-iaf"
    posteriors = pdb.select(args.posteriors, list(pdb.POSTERIORS), "posteriors")
    guides = pdb.select(args.guides, pdb.GUIDES, "guides")
    steps = args.steps or (30 if args.quick else 2000)
    eval_draws, moment_draws = (200, 500) if args.quick else (1000, 10_000)
    warnings.filterwarnings("ignore", category=FutureWarning)

    version, load = pdb.repo_version(), os.getloadavg()[0]  # before the long runs
    scores: list[pdb.Score] = []
    total = time.perf_counter()
    for posterior in posteriors:
        name = pdb.POSTERIORS[posterior]
        inputs = pdb.model_inputs(posterior, pdb.load_data(root, name))
        reference = pdb.load_reference(root, name)
        for guide_name in guides:
            try:
                s = run_one(
                    posterior,
                    guide_name,
                    inputs,
                    reference,
                    steps=steps,
                    eval_draws=eval_draws,
                    moment_draws=moment_draws,
                    seed=args.seed,
                )
            except Exception as error:  # report and go on with the other runs
                traceback.print_exc()
                s = pdb.Score(posterior, guide_name, *[float("nan")] * 6, 0.0, steps, "")
                s.error = f"{type(error).__name__}: {error}"
            scores.append(s)
            print(
                f"{posterior:26s} {guide_name:24s} elbo {s.elbo:10.2f}  k-hat {s.khat:6.2f}  "
                f"max err {s.max_mean_err:6.3f}  mean err {s.mean_mean_err:6.3f}  "
                f"sd ratio [{s.min_sd_ratio:.2f}, {s.max_sd_ratio:.2f}]  {s.train_s:6.1f} s"
                + (f"  FAILED {s.error}" if s.error else ""),
                flush=True,
            )
    meta = {
        "command": "python examples/posteriordb_pyro.py " + shlex.join(sys.argv[1:]),
        "steps": steps,
        "importance draws (ELBO, k-hat)": eval_draws,
        "draws for moments": moment_draws,
        "seed": args.seed,
        "pyroflows commit": version,
        "load average (1 min) at the start": f"{load:.1f} (other processes share the cores)",
        "total wall time [s]": round(time.perf_counter() - total, 1),
        "versions": f"torch {torch.__version__}, pyro-ppl {pyro.__version__}, "
        f"Python {platform.python_version()}",
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
    }
    path = pdb.write_results(Path(args.out), "Pyro", scores, meta)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
