"""What scoring a guide costs, and how noisy its k-hat is (Pyro backend).

Two measurements on the posteriordb models of ``examples/posteriordb_pyro.py``:

* time: ``pyroflows.pyro.importance_log_weights`` for ``--draws`` draws of an AutoFlow IAF
  guide on gp_pois_regr (after ``--time-steps`` SVI steps; the cost does not depend on how
  well it is trained), one guide and one model trace per draw (the default) against
  ``vectorize=True`` (all draws under one ``pyro.plate``);
* noise: an AutoFlow IAF guide trained on the centered eight-schools funnel with the
  examples' protocol (``--steps`` SVI steps, seed ``--seed``), then the Pareto k-hat of
  ``--repeats`` independent sets of 1000 importance draws and of one set of 10 000, all
  from the same trained guide: the spread is the estimator's, not training's.

Run from the repository root (the posteriordb data in ``../shared/data``)::

    OMP_NUM_THREADS=1 python benchmarks/bench_psis.py          # writes results_psis.*
    python benchmarks/bench_psis.py --quick                    # smoke run, writes nothing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))

import posteriordb_data as pdb  # noqa: E402


def time_log_weights(root: Path, draws: int, steps: int) -> dict[str, float]:
    """Seconds for ``draws`` log-weights, looped and vectorized, on gp_pois_regr."""
    import posteriordb_pyro as ex

    import pyroflows.pyro as pf

    posterior, guide_name = "gp_pois_regr", "AutoFlow-iaf"
    inputs = pdb.model_inputs(posterior, pdb.load_data(root, pdb.POSTERIORS[posterior]))
    settings = pdb.guide_settings(guide_name, posterior)
    model, guide, args, _ = ex.train(
        posterior, guide_name, inputs, steps=steps, seed=0, settings=settings
    )
    seconds = {}
    for vectorize in (False, True):
        start = time.perf_counter()
        pf.importance_log_weights(model, guide, *args, num_samples=draws, vectorize=vectorize)
        seconds["vectorized" if vectorize else "looped"] = time.perf_counter() - start
    return seconds


def khat_noise(root: Path, steps: int, seed: int, repeats: int) -> dict:
    """k-hats of ``repeats`` sets of 1000 draws and one of 10 000, one trained funnel guide."""
    import posteriordb_pyro as ex

    import pyroflows.pyro as pf

    posterior, guide_name = "eight_schools_centered", "AutoFlow-iaf"
    inputs = pdb.model_inputs(posterior, pdb.load_data(root, pdb.POSTERIORS[posterior]))
    settings = pdb.guide_settings(guide_name, posterior)
    model, guide, args, _ = ex.train(
        posterior, guide_name, inputs, steps=steps, seed=seed, settings=settings
    )

    def khat(draws: int) -> float:
        weights = pf.importance_log_weights(model, guide, *args, num_samples=draws, vectorize=True)
        return pdb.elbo_and_khat(weights)[1]

    return {
        "khat_1000": [khat(1000) for _ in range(repeats)],
        "khat_10000": khat(10_000),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="data folder (default ../shared/data)")
    parser.add_argument("--draws", type=int, default=10_000, help="draws to time")
    parser.add_argument("--time-steps", type=int, default=300, help="SVI steps before timing")
    parser.add_argument("--steps", type=int, default=10_000, help="SVI steps of the funnel")
    parser.add_argument("--seed", type=int, default=1, help="seed of the funnel guide")
    parser.add_argument("--repeats", type=int, default=5, help="sets of 1000 draws")
    parser.add_argument("--quick", action="store_true", help="smoke run: writes nothing")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    import torch

    root = pdb.resolve_data_dir(args.data)
    if args.quick:
        args.draws, args.time_steps, args.steps, args.repeats = 200, 5, 5, 2

    seconds = time_log_weights(root, args.draws, args.time_steps)
    print(
        f"{args.draws} log-weights, AutoFlow IAF on gp_pois_regr: looped "
        f"{seconds['looped']:.2f} s, vectorized {seconds['vectorized']:.2f} s",
        flush=True,
    )
    noise = khat_noise(root, args.steps, args.seed, args.repeats)
    print(
        f"k-hat of one trained funnel guide (seed {args.seed}): 1000 draws "
        f"{', '.join(f'{k:.2f}' for k in noise['khat_1000'])}; 10 000 draws "
        f"{noise['khat_10000']:.2f}",
        flush=True,
    )
    if args.quick:
        return 0
    lines = [
        "# Scoring a guide: cost of the importance weights and noise of k-hat (Pyro)",
        "",
        f"`python benchmarks/bench_psis.py`; {platform.machine()}, {os.cpu_count()} logical "
        f"CPUs, torch {torch.get_num_threads()} threads, torch {torch.__version__}.",
        "",
        f"- {args.draws} log-weights of an AutoFlow IAF guide on gp_pois_regr: one trace per "
        f"draw {seconds['looped']:.2f} s, `vectorize=True` {seconds['vectorized']:.2f} s.",
        f"- k-hat of one AutoFlow IAF guide on the centered eight-schools funnel ({args.steps} "
        f"steps, seed {args.seed}): {args.repeats} sets of 1000 draws "
        f"{', '.join(f'{k:.2f}' for k in noise['khat_1000'])}; one set of 10 000 draws "
        f"{noise['khat_10000']:.2f}.",
    ]
    (HERE / "results_psis.md").write_text("\n".join(lines) + "\n")
    payload = {"seconds": seconds, "draws": args.draws, **noise, "seed": args.seed}
    (HERE / "results_psis.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {HERE / 'results_psis.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
