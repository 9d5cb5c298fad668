"""Two moons: a neural spline flow trained with `pyroflows.pyro.fit` against a Gaussian.

What this example shows:

* The shortest path from data to a trained density: a recipe
  (``pf.NSF(features=2, ..., mode="coupling")``: rational-quadratic spline coupling
  layers) and `pyroflows.pyro.fit` (Adam, minibatches, early stopping on a validation
  split, best parameters restored).
* ``flow()`` is a Pyro distribution: ``log_prob`` scores points (here a grid, for the
  contour plot, and the held-out set) and ``sample`` draws new points.
* A flow captures a curved, two-component density that a Gaussian cannot: held-out
  log-likelihoods of both are printed.

Data: ``sklearn.datasets.make_moons(n_samples=2000, noise=0.05)``, standardised with the
training set's mean and standard deviation, split into 1500 training points (of which
`fit` holds out 10% for early stopping) and 500 test points.

Run from the repository root::

    python examples/two_moons.py             # default run (well under a minute)
    python examples/two_moons.py --quick     # a tiny smoke run
    python examples/two_moons.py --model residual   # a residual flow instead
    python examples/two_moons.py --model ffjord     # FFJORD, by maximum likelihood
    python examples/two_moons.py --model ffjord-fm  # FFJORD, by flow matching

It writes ``outputs/two_moons.png`` (``two_moons_<model>.png`` for the other models): test
data, the learned density as a contour plot, and samples of the flow.

The continuous flows (one `pf.FFJORD` block, vector field hidden (64, 64), exact trace)
train at dopri5 tolerances 1e-4 and are scored at 1e-6; the table adds the training time
and the number of vector-field evaluations (NFE) of the test set's solve. Flow matching
solves no ODE while training, so it can afford many more epochs.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from sklearn.datasets import make_moons
from torch import Tensor

import pyroflows.pyro as pf

N_SAMPLES = 2000
N_TRAIN = 1500


def load_data(seed: int) -> tuple[Tensor, Tensor]:
    """Standardised two-moons data, split into train and test."""
    x, _ = make_moons(n_samples=N_SAMPLES, noise=0.05, random_state=seed)
    x = torch.as_tensor(x, dtype=torch.get_default_dtype())
    train, test = x[:N_TRAIN], x[N_TRAIN:]  # make_moons shuffles the points
    mean, std = train.mean(0), train.std(0)
    return (train - mean) / std, (test - mean) / std


def fit_gaussian(train: Tensor) -> torch.distributions.MultivariateNormal:
    """Full-covariance Gaussian by maximum likelihood."""
    cov = torch.cov(train.T, correction=0)
    return torch.distributions.MultivariateNormal(train.mean(0), cov)


def plot(flow: pf.Flow, test: Tensor, samples: Tensor, path: Path, grid: int = 200) -> None:
    """Test data, the flow's density on a ``grid`` x ``grid`` grid, and the flow's samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = 2.5
    axis = torch.linspace(-lim, lim, grid)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)
    with torch.no_grad():
        density = flow().log_prob(grid).exp().reshape(gx.shape)

    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    axes[0].scatter(*test.T.numpy(), s=3, alpha=0.6)
    axes[0].set_title("test data")
    contour = axes[1].contourf(gx.numpy(), gy.numpy(), density.numpy(), levels=30, cmap="viridis")
    fig.colorbar(contour, ax=axes[1], fraction=0.046, pad=0.04)
    axes[1].set_title("learned density p(x)")
    axes[2].scatter(*samples.T.numpy(), s=3, alpha=0.6, color="tab:orange")
    axes[2].set_title("flow samples")
    for ax in axes:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="max epochs (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, init and batches")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="output folder")
    parser.add_argument(
        "--model",
        choices=("nsf", "residual", "ffjord", "ffjord-fm"),
        default="nsf",
        help="spline coupling (default), a residual flow (unbiased log-det in training), or "
        "FFJORD trained by maximum likelihood or by flow matching",
    )
    parser.add_argument(
        "--coupling",
        choices=("independent", "ot"),
        default="independent",
        help="ffjord-fm: pairing of noise and data (ot: minibatch optimal transport)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = parser.parse_args(argv)

    continuous = args.model.startswith("ffjord")
    default_epochs = {"nsf": 300, "residual": 300, "ffjord": 60, "ffjord-fm": 2000}
    epochs = args.epochs or (2 if args.quick else default_epochs[args.model])
    transforms, hidden = (2, (16,)) if args.quick else (6, (64, 64))
    torch.manual_seed(args.seed)
    train, test = load_data(args.seed)

    options: dict = {"batch_size": 128, "lr": 3e-3, "patience": 30}
    if args.model == "nsf":
        flow = pf.NSF(
            features=2, transforms=transforms, hidden=hidden, bins=8, bound=4.0, mode="coupling"
        )
        label = f"NSF ({transforms} spline coupling layers, hidden {hidden})"
    elif args.model == "residual":
        flow = pf.ResidualFlow(2, transforms=transforms, hidden=hidden)
        label = f"ResidualFlow ({transforms} residual blocks, hidden {hidden})"
        options["patience"] = 100  # a residual flow learns slower
    else:
        flow = pf.FFJORD(2, hidden=hidden, atol=1e-4, rtol=1e-4)
        label = f"FFJORD (1 block, hidden {hidden}, dopri5 at 1e-4)"
        if args.model == "ffjord-fm":
            label += f", flow matching ({args.coupling} pairs)"
            # no early stopping: the flow-matching loss levels off while the NLL still falls
            options.update(objective="flow_matching", coupling=args.coupling, batch_size=256,
                           patience=None)  # fmt: skip
    print(f"training {label} for up to {epochs} epochs")
    start = time.perf_counter()
    history = pf.fit(flow, train, epochs=epochs, seed=args.seed, progress=not args.quick, **options)
    seconds = time.perf_counter() - start
    stopped = len(history["train"])
    print(f"stopped after {stopped} epochs (best {history['best_epoch'] + 1}), {seconds:.1f} s")
    if "nfe" in history:
        print(f"NFE per training step: {history['nfe'][0]:.0f} (first epoch), "
              f"{history['nfe'][-1]:.0f} (last)")  # fmt: skip

    if args.model == "residual":  # score exactly: the same parameters, the exact log-det
        exact = pf.ResidualFlow(2, transforms=transforms, hidden=hidden, logdet="exact")
        flow = pf.set_params(exact, pf.get_params(flow)).eval()
    if continuous:  # score at a tight tolerance: the same parameters
        flow = pf.set_params(pf.FFJORD(2, hidden=hidden, atol=1e-6, rtol=1e-6),
                             pf.get_params(flow))  # fmt: skip
    gaussian = fit_gaussian(train)
    with torch.no_grad():
        flow_ll = flow().log_prob(test).mean().item()
        nfe = flow.transforms[0].nfe if continuous else None
        gauss_ll = gaussian.log_prob(test).mean().item()
        samples = flow().sample((1000,))

    print(f"\nHeld-out log-likelihood on {test.shape[0]} test points (standardised data)")
    print(f"{'model':<30} {'nats/point':>11} {'bits/dim':>9}")
    flow_name = f"{args.model} flow (pf.fit)"
    for name, ll in ((flow_name, flow_ll), ("Gaussian, full covariance", gauss_ll)):
        print(f"{name:<30} {ll:>11.3f} {-ll / (2 * math.log(2)):>9.3f}")
    print("(bits/dim here is -log p / (2 log 2) of the continuous density: lower is better)")
    if continuous:
        print(f"training time {seconds:.1f} s; NFE of the test set's solve (tol 1e-6): {nfe}")

    name = "two_moons.png" if args.model == "nsf" else f"two_moons_{args.model}.png"
    plot(flow, test, samples, args.out / name, grid=100 if continuous else 200)
    path = args.out / name
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
