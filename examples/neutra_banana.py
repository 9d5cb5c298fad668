"""NeuTra on the banana: Pyro's own NeuTra example with `AutoFlow` as the guide.

What this example shows:

* Pyro's ``examples/neutra.py`` trains an ``AutoNormalizingFlow`` guide with one block
  neural autoregressive flow (BNAF) on a banana-shaped density, then runs NUTS on the
  guide's warped space (``NeuTraReparam``). The same protocol runs here with the guide
  swapped by one line for ``pyroflows.pyro.AutoFlow``: 10 000 steps of Adam(0.01) on
  ``Trace_ELBO()``, 500 warm-up and 1000 NUTS draws, Pyro's seed 1.
* The table: the mean loss of the last 500 SVI steps (``-log Z = 0`` here, the density is
  normalised, so the loss is the guide's KL divergence), the guide's and NeuTra's mean and
  standard deviation of ``x1`` against exact draws (the banana samples exactly), NeuTra's
  divergences and effective sample sizes (``pyro.ops.stats.effective_sample_size``).

Run from the repository root::

    python examples/neutra_banana.py            # three guides: about 10 minutes
    python examples/neutra_banana.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.transforms import block_autoregressive, iterated
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormalizingFlow
from pyro.infer.reparam import NeuTraReparam
from pyro.ops.stats import effective_sample_size

import pyroflows.pyro as pf

RESULTS = Path(__file__).resolve().parent / "results"
#: The guides compared: the example's own, and AutoFlow with its default IAF and its spline.
GUIDES = ("AutoNormalizingFlow BNAF", "AutoFlow IAF", "AutoFlow NSF")


class Banana(dist.TorchDistribution):
    """The example's density: a correlated Gaussian ``u`` bent by ``x1 = u1 / a + b (u0^2 +
    a^2)`` with ``x0 = a u0``; exact draws and an exact, normalised density."""

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, a: float = 1.15, b: float = 1.0, rho: float = 0.9) -> None:
        self.a, self.b = a, b
        cov = torch.tensor([[1.0, rho], [rho, 1.0]])
        self.gaussian = dist.MultivariateNormal(torch.zeros(2), covariance_matrix=cov)
        super().__init__(event_shape=(2,))

    def sample(self, sample_shape=()):
        u = self.gaussian.sample(torch.Size(sample_shape))
        x0 = self.a * u[..., 0]
        x1 = u[..., 1] / self.a + self.b * (u[..., 0] ** 2 + self.a**2)
        return torch.stack([x0, x1], -1)

    def log_prob(self, x):
        u0 = x[..., 0] / self.a
        u1 = (x[..., 1] - self.b * (u0**2 + self.a**2)) * self.a
        return self.gaussian.log_prob(torch.stack([u0, u1], -1))  # the map has Jacobian 1


def banana() -> None:
    pyro.sample("x", Banana())


def make_guide(name: str, quick: bool):
    if name.startswith("AutoNormalizingFlow"):
        return AutoNormalizingFlow(banana, partial(iterated, 1, block_autoregressive))
    flow = name.split()[-1].lower()
    return pf.AutoFlow(banana, flow, **(dict(transforms=1, hidden=(16, 16)) if quick else {}))


def run(name: str, args, exact: np.ndarray) -> dict:
    """Train one guide and run NeuTra NUTS with it, as the Pyro example does."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    start = time.perf_counter()
    guide = make_guide(name, args.quick)
    svi = SVI(banana, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    losses = [svi.step() for _ in range(args.steps)]
    seconds = time.perf_counter() - start
    with pyro.plate("draws", args.samples):
        draws = guide()["x"].detach().numpy()
    neutra = NeuTraReparam(guide.requires_grad_(False))
    mcmc = MCMC(
        NUTS(poutine.reparam(banana, config=lambda _: neutra)),
        warmup_steps=args.warmup,
        num_samples=args.samples,
        disable_progbar=True,
    )
    mcmc.run()
    z = mcmc.get_samples()["x_shared_latent"]
    x = neutra.transform_sample(z)["x"].detach().numpy()
    divergences = int(sum(len(v) for v in mcmc.diagnostics()["divergences"].values()))
    n_eff = effective_sample_size(torch.as_tensor(x)[None], chain_dim=0, sample_dim=1)
    return {
        "guide": name,
        "loss_last_500": float(np.mean(losses[-500:])),
        "guide_x1_mean_sd": [float(draws[:, 1].mean()), float(draws[:, 1].std())],
        "neutra_x1_mean_sd": [float(x[:, 1].mean()), float(x[:, 1].std())],
        "exact_x1_mean_sd": [float(exact[:, 1].mean()), float(exact[:, 1].std())],
        "divergences": divergences,
        "n_eff": [float(v) for v in n_eff],
        "svi_seconds": seconds,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10000, help="SVI steps (the example's)")
    parser.add_argument("--warmup", type=int, default=500, help="NUTS warm-up steps")
    parser.add_argument("--samples", type=int, default=1000, help="NUTS and guide draws")
    parser.add_argument("--seed", type=int, default=1, help="Pyro's seed (the example's)")
    parser.add_argument("--guides", nargs="+", default=list(GUIDES), choices=GUIDES)
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--out", type=Path, default=RESULTS / "neutra_banana.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.samples = 100, 50, 100
    pyro.set_rng_seed(0)
    exact = Banana().sample((100_000,)).numpy()
    rows = []
    print(f"banana, {args.steps} SVI steps, NUTS {args.warmup} + {args.samples}")
    print("| guide | loss (last 500) | guide x1 mean, sd | NeuTra x1 mean, sd | divergences "
          "| n_eff (x0, x1) | SVI time |")  # fmt: skip
    print("|---|---:|---|---|---:|---|---:|")
    for name in args.guides:
        row = run(name, args, exact)
        rows.append(row)
        g, n = row["guide_x1_mean_sd"], row["neutra_x1_mean_sd"]
        print(f"| {name} | {row['loss_last_500']:.3f} | {g[0]:.2f}, {g[1]:.2f} | "
              f"{n[0]:.2f}, {n[1]:.2f} | {row['divergences']} | "
              f"{row['n_eff'][0]:.0f}, {row['n_eff'][1]:.0f} | {row['svi_seconds']:.0f} s |",
              flush=True)  # fmt: skip
    e = rows[0]["exact_x1_mean_sd"]
    print(f"exact x1 mean, sd: {e[0]:.2f}, {e[1]:.2f} (100 000 exact draws)")
    if not args.quick:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
