"""What AutoFlow costs: guide set-up (the MAP / Laplace warm start) and one SVI step.

For each backend and each of the four posteriordb models of ``examples/posteriordb_*.py``,
times pyroflows' ``AutoFlow`` (IAF, IAF with ``stl=True``, and NSF) against the PPL's own
``AutoIAFNormal`` and ``AutoMultivariateNormal``, all with the settings of those examples
(3 flow layers of width ``max(32, 4 * latent_dim)``, 8 particles):

* set-up: the first ``svi.step`` (Pyro) or ``svi.init`` (NumPyro), which for AutoFlow runs
  the Newton MAP search, the Laplace approximation and the choice of the warm start (and in
  NumPyro compiles what it runs); each backend first does one untimed run, so imports are
  not counted;
* step: the median of ``--steps`` timed SVI steps after 20 untimed ones (NumPyro: the jitted
  ``svi.update``, waited on with ``block_until_ready``).

Run from the repository root (the posteriordb data in ``../shared/data``)::

    python benchmarks/bench_autoflow.py            # both backends, writes results_autoflow.*
    python benchmarks/bench_autoflow.py --quick    # smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

import posteriordb_data as pdb  # noqa: E402

GUIDES = (
    "AutoMultivariateNormal",
    "AutoIAFNormal",
    "AutoFlow-iaf",
    "AutoFlow-iaf stl=True",
    "AutoFlow-nsf",
)


def _guide(guide_name: str, posterior: str) -> tuple[str, pdb.GuideSettings]:
    """The example's guide name and settings; a trailing ``stl=True`` adds that option."""
    name, _, option = guide_name.partition(" ")
    settings = pdb.guide_settings(name, posterior)
    if option == "stl=True":
        settings.options = {**settings.options, "stl": True}
    return name, settings


def bench_pyro(posterior: str, guide_name: str, inputs: dict, steps: int) -> tuple[float, float]:
    import posteriordb_pyro as ex
    import pyro
    import torch
    from pyro.infer import SVI, Trace_ELBO
    from pyro.optim import ClippedAdam

    args = tuple(torch.as_tensor(v) for v in inputs.values())
    name, settings = _guide(guide_name, posterior)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = ex.MODELS[posterior]
    guide = ex.make_guide(name, model, pdb.LATENT_DIM[posterior], settings.options)
    elbo = Trace_ELBO(num_particles=settings.particles, vectorize_particles=True)
    svi = SVI(model, guide, ClippedAdam({"lr": settings.lr}), elbo)
    start = time.perf_counter()
    svi.step(*args)
    setup = time.perf_counter() - start
    for _ in range(20):
        svi.step(*args)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        svi.step(*args)
        times.append(time.perf_counter() - start)
    return setup, statistics.median(times)


def bench_numpyro(posterior: str, guide_name: str, inputs: dict, steps: int) -> tuple[float, float]:
    import jax
    import jax.numpy as jnp
    import numpyro
    import posteriordb_numpyro as ex
    from numpyro.infer import SVI, Trace_ELBO

    args = tuple(jnp.asarray(v) for v in inputs.values())
    name, settings = _guide(guide_name, posterior)
    model = ex.MODELS[posterior]
    guide = ex.make_guide(name, model, pdb.LATENT_DIM[posterior], 0, settings.options)
    svi = SVI(model, guide, numpyro.optim.Adam(settings.lr), Trace_ELBO(settings.particles))
    start = time.perf_counter()
    state = svi.init(jax.random.key(0), *args)
    setup = time.perf_counter() - start
    update = jax.jit(svi.update)
    for _ in range(20):
        state, loss = update(state, *args)
    jax.block_until_ready(loss)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, loss = update(state, *args)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    return setup, statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="data folder (default ../shared/data)")
    parser.add_argument("--backends", default="pyro,numpyro")
    parser.add_argument("--steps", type=int, default=200, help="timed SVI steps")
    parser.add_argument("--quick", action="store_true", help="smoke run: writes nothing")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    root = pdb.resolve_data_dir(args.data)
    posteriors = ["eight_schools_noncentered"] if args.quick else list(pdb.POSTERIORS)
    steps = 5 if args.quick else args.steps
    benches = {"pyro": bench_pyro, "numpyro": bench_numpyro}
    rows = []
    for backend in args.backends.split(","):
        # one untimed run first: imports and the backend's first-use costs are not set-up
        first = posteriors[0]
        inputs = pdb.model_inputs(first, pdb.load_data(root, pdb.POSTERIORS[first]))
        benches[backend](first, GUIDES[0], inputs, 1)
        for posterior in posteriors:
            inputs = pdb.model_inputs(posterior, pdb.load_data(root, pdb.POSTERIORS[posterior]))
            for guide in GUIDES:
                setup, step = benches[backend](posterior, guide, inputs, steps)
                rows.append(
                    dict(backend=backend, posterior=posterior, guide=guide, setup_s=setup,
                         step_ms=1e3 * step)
                )  # fmt: skip
                print(f"{backend:8s} {posterior:26s} {guide:24s} set-up {setup:7.2f} s  "
                      f"step {1e3 * step:7.2f} ms", flush=True)  # fmt: skip
    if args.quick:
        return 0
    import torch

    lines = [
        "# AutoFlow: set-up and step time",
        "",
        f"`python benchmarks/bench_autoflow.py`; {platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, torch {torch.get_num_threads()} threads, "
        f"median of {steps} steps.",
        "",
        "| backend | posterior | guide | set-up [s] | step [ms] |",
        "|---|---|---|---:|---:|",
    ]
    lines += [
        f"| {r['backend']} | {r['posterior']} | {r['guide']} | {r['setup_s']:.2f} | "
        f"{r['step_ms']:.2f} |"
        for r in rows
    ]
    (HERE / "results_autoflow.md").write_text("\n".join(lines) + "\n")
    (HERE / "results_autoflow.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {HERE / 'results_autoflow.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
