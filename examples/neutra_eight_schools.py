"""NeuTra: NUTS on the centered eight-schools funnel, warped by a trained `AutoFlow` guide.

What this example shows:

* The centered eight-schools model (``theta_j ~ Normal(mu, tau)``) has a funnel between
  ``tau`` and ``theta``: NUTS on it diverges near small ``tau`` and mixes slowly there.
* NeuTra (Hoffman et al., 2019): train a flow guide by SVI, then run NUTS on the guide's
  base space, where the posterior is close to a standard normal. With pyroflows this is
  NumPyro's own `numpyro.infer.reparam.NeuTraReparam` around a
  `pyroflows.numpyro.AutoFlow` guide (a spline flow): three lines.
* The result against posteriordb's reference draws (10 000 draws of long NUTS runs on the
  non-centered model, the same posterior): per-parameter mean error in reference standard
  deviations and standard-deviation ratio, plus divergences and effective sample sizes
  (ArviZ) of plain and NeuTra NUTS at the same number of draws.

Data: ``../shared/data/posteriordb`` (``--data`` to change it).

Run from the repository root::

    python examples/neutra_eight_schools.py            # about two minutes
    python examples/neutra_eight_schools.py --flow iaf # an IAF guide instead of NSF
    python examples/neutra_eight_schools.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
import zipfile
from pathlib import Path

import arviz
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.reparam import NeuTraReparam

import pyroflows.numpyro as pfj

ROOT = Path(__file__).resolve().parent.parent
NAMES = [f"theta[{j}]" for j in range(1, 9)] + ["mu", "tau"]


def load(data_dir: Path) -> tuple[dict, np.ndarray]:
    """The eight-schools data and the reference draws as an ``(n, 10)`` array (NAMES order)."""
    db = data_dir / "posteriordb"
    if not db.is_dir():
        raise SystemExit(f"posteriordb not found at {db}: pass --data (the shared data folder)")
    with zipfile.ZipFile(db / "data" / "eight_schools.json.zip") as z:
        data = json.loads(z.read("eight_schools.json"))
    draws_zip = db / "draws" / "eight_schools-eight_schools_noncentered.json.zip"
    with zipfile.ZipFile(draws_zip) as z:
        chains = json.loads(z.read(z.namelist()[0]))
    reference = np.concatenate([np.stack([c[n] for n in NAMES], 1) for c in chains])
    return data, reference


def centered(y: jnp.ndarray, sigma: jnp.ndarray) -> None:
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("schools", y.shape[0]):
        theta = numpyro.sample("theta", dist.Normal(mu, tau))
        numpyro.sample("y", dist.Normal(theta, sigma), obs=y)


def as_array(samples: dict) -> np.ndarray:
    return np.concatenate(
        [np.asarray(samples["theta"]), np.asarray(samples["mu"])[:, None],
         np.asarray(samples["tau"])[:, None]],
        1,
    )  # fmt: skip


def scores(draws: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    sd = reference.std(0)
    error = np.abs(draws.mean(0) - reference.mean(0)) / sd
    ratio = draws.std(0) / sd
    return float(error.max()), float(ratio.min()), float(ratio.max())


def run_nuts(model, args, key, warmup: int, samples: int, chains: int, depth: int = 10) -> MCMC:
    mcmc = MCMC(
        NUTS(model, target_accept_prob=0.8, max_tree_depth=depth),
        num_warmup=warmup,
        num_samples=samples,
        num_chains=chains,
        chain_method="sequential",
        progress_bar=False,
    )
    mcmc.run(key, *args, extra_fields=("diverging",))
    return mcmc


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--steps", type=int, default=10000, help="SVI steps of the guide")
    parser.add_argument("--samples", type=int, default=1000, help="NUTS draws per chain")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--flow", choices=["nsf", "iaf"], default="nsf", help="AutoFlow recipe")
    parser.add_argument("--lr", type=float, default=1e-2, help="initial SVI learning rate")
    parser.add_argument("--init-scale", type=float, default=0.1, help="AutoFlow's init_scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    steps, samples, chains = (100, 50, 1) if args.quick else (args.steps, args.samples, 4)
    data, reference = load(args.data)
    y, sigma = jnp.asarray(data["y"], jnp.float32), jnp.asarray(data["sigma"], jnp.float32)
    keys = jax.random.split(jax.random.key(args.seed), 4)
    results = {}

    start = time.perf_counter()
    depth = 4 if args.quick else 10
    plain = run_nuts(centered, (y, sigma), keys[0], samples, samples, chains, depth)
    results["NUTS, centered"] = (plain, time.perf_counter() - start)

    start = time.perf_counter()
    # No MAP exists (the density grows without bound as tau -> 0), so AutoFlow starts from
    # init_loc_fn with the isotropic scale of the best ELBO (it warns): a larger, decaying
    # learning rate and 8 particles. Results of both flows are in examples/README.md.
    options = {"flow": args.flow}
    if args.quick:
        options = dict(flow="iaf", transforms=1, hidden=(16, 16))
    guide = pfj.AutoFlow(centered, init_scale=args.init_scale, **options)
    schedule = optax.exponential_decay(args.lr, steps, 0.01)
    svi = SVI(centered, guide, numpyro.optim.Adam(schedule), Trace_ELBO(num_particles=8))
    params = svi.run(keys[1], steps, y, sigma, progress_bar=False).params
    k_hat = pfj.psis_diagnostic(centered, guide, y, sigma, params=params, key=keys[2])
    start_scale = float(guide.flow(params).layers[-1].scale_tril[0, 0])
    neutra = NeuTraReparam(guide, params)
    warped = run_nuts(
        neutra.reparam(centered), (y, sigma), keys[3], samples, samples, chains, depth
    )
    name = f"NeuTra NUTS (AutoFlow {options['flow'].upper()})"
    results[name] = (warped, time.perf_counter() - start)

    print(f"reference: {len(reference)} posteriordb draws; {chains} chains x {samples} draws each")
    print("| sampler | divergences | min ESS (bulk) | ESS of tau | max abs mean error (ref sd) "
          "| sd ratio min..max | wall time |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---:|")
    summary = {}
    for name, (mcmc, seconds) in results.items():
        raw = mcmc.get_samples(group_by_chain=True)
        # NeuTra's model records the warped sites as deterministic sites: same names
        per_chain = {k: raw[k] for k in ("theta", "mu", "tau")}
        idata = arviz.from_dict(posterior={k: np.asarray(v) for k, v in per_chain.items()})
        ess = arviz.ess(idata, method="bulk")
        min_ess = min(float(ess[k].min()) for k in ("theta", "mu", "tau"))
        flat = {k: np.asarray(v).reshape(chains * samples, *np.shape(v)[2:])
                for k, v in per_chain.items()}  # fmt: skip
        draws = as_array(flat)
        divergences = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
        error, low, high = scores(draws, reference)
        summary[name] = dict(
            divergences=divergences, min_ess=min_ess, ess_tau=float(ess["tau"]),
            max_mean_error=error, sd_ratio=(low, high), seconds=seconds,
        )  # fmt: skip
        summary[name]["tau_chain_means"] = np.asarray(per_chain["tau"]).mean(1).round(2).tolist()
        print(f"| {name} | {divergences} | {min_ess:.0f} | {float(ess['tau']):.0f} | "
              f"{error:.3f} | {low:.2f}..{high:.2f} | {seconds:.0f} s |")  # fmt: skip
    for name in results:
        print(f"{name}: mean of tau per chain {summary[name]['tau_chain_means']}")
    print(f"AutoFlow guide alone: Pareto k-hat {k_hat:.2f} (PSIS, 1000 draws); warm start "
          f"{guide.warm_start_!r} with scale {start_scale:g}")  # fmt: skip
    summary["k_hat"] = k_hat
    return summary


if __name__ == "__main__":
    main()
