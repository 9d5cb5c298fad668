"""Two moons with NumPyro: a neural spline flow trained with `pyroflows.numpyro.fit`.

The JAX + NumPyro twin of ``two_moons.py``: the same data, preprocessing, model, training
settings, printed table and plot.

What this example shows:

* The shortest path from data to a trained density in JAX: a recipe
  (``pfj.NSF(features=2, ..., mode="coupling", key=...)``: rational-quadratic spline
  coupling layers) and `pyroflows.numpyro.fit` (optax Adam, minibatches, early stopping
  on a validation split, best parameters returned). JAX modules are immutable, so ``fit``
  returns ``(trained_flow, history)``.
* ``flow()`` is a NumPyro distribution: ``log_prob`` scores points (here a grid, for the
  contour plot, and the held-out set) and ``sample(key, shape)`` draws new points; both
  run under ``jax.jit``.
* A flow captures a curved, two-component density that a Gaussian cannot: held-out
  log-likelihoods of both are printed.

Data: ``sklearn.datasets.make_moons(n_samples=2000, noise=0.05)``, standardised with the
training set's mean and standard deviation, split into 1500 training points (of which
`fit` holds out 10% for early stopping) and 500 test points.

Run from the repository root::

    python examples/two_moons_numpyro.py             # default run
    python examples/two_moons_numpyro.py --quick     # a tiny smoke run
    python examples/two_moons_numpyro.py --model residual   # a residual flow instead
    python examples/two_moons_numpyro.py --model ffjord     # FFJORD, maximum likelihood
    python examples/two_moons_numpyro.py --model ffjord-fm  # FFJORD, flow matching

It writes ``outputs/two_moons_numpyro.png`` (``two_moons_numpyro_<model>.png`` for the other
models): test data, the learned density as a contour plot, and samples of the flow. The
continuous flows are set up as in ``two_moons.py``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import make_moons

import pyroflows.numpyro as pfj

N_SAMPLES = 2000
N_TRAIN = 1500


def load_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardised two-moons data, split into train and test."""
    x, _ = make_moons(n_samples=N_SAMPLES, noise=0.05, random_state=seed)
    x = x.astype(np.float32)
    train, test = x[:N_TRAIN], x[N_TRAIN:]  # make_moons shuffles the points
    mean, std = train.mean(0), train.std(0, ddof=1)
    return (train - mean) / std, (test - mean) / std


def gaussian_log_prob(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Log-density of ``x`` under the full-covariance Gaussian fitted to ``train`` by ML."""
    mean = train.mean(0, dtype=np.float64)
    cov = np.cov(train.T, bias=True)
    diff = x - mean
    maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (maha + logdet + x.shape[1] * math.log(2 * math.pi))


@eqx.filter_jit
def log_prob(flow: pfj.Flow, x: jax.Array) -> jax.Array:
    return flow().log_prob(x)


def plot(
    flow: pfj.Flow, test: np.ndarray, samples: np.ndarray, path: Path, grid: int = 200
) -> None:
    """Test data, the flow's density on a ``grid`` x ``grid`` grid, and the flow's samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = 2.5
    axis = np.linspace(-lim, lim, grid, dtype=np.float32)
    gx, gy = np.meshgrid(axis, axis, indexing="xy")
    grid = np.stack([gx.reshape(-1), gy.reshape(-1)], axis=-1)
    density = np.exp(np.asarray(log_prob(flow, jnp.asarray(grid)))).reshape(gx.shape)

    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    axes[0].scatter(*test.T, s=3, alpha=0.6)
    axes[0].set_title("test data")
    contour = axes[1].contourf(gx, gy, density, levels=30, cmap="viridis")
    fig.colorbar(contour, ax=axes[1], fraction=0.046, pad=0.04)
    axes[1].set_title("learned density p(x)")
    axes[2].scatter(*samples.T, s=3, alpha=0.6, color="tab:orange")
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
    train, test = load_data(args.seed)
    key_init, key_sample = jax.random.split(jax.random.key(args.seed))

    options: dict = {"batch_size": 128, "lr": 3e-3, "patience": 30}
    if args.model == "nsf":
        flow = pfj.NSF(
            features=2,
            transforms=transforms,
            hidden=hidden,
            bins=8,
            bound=4.0,
            mode="coupling",
            key=key_init,
        )
        label = f"NSF ({transforms} spline coupling layers, hidden {hidden})"
    elif args.model == "residual":
        flow = pfj.ResidualFlow(2, transforms=transforms, hidden=hidden, key=key_init)
        label = f"ResidualFlow ({transforms} residual blocks, hidden {hidden})"
        options["patience"] = 100  # a residual flow learns slower
    else:
        flow = pfj.FFJORD(2, hidden=hidden, atol=1e-4, rtol=1e-4, key=key_init)
        label = f"FFJORD (1 block, hidden {hidden}, dopri5 at 1e-4)"
        if args.model == "ffjord-fm":
            label += f", flow matching ({args.coupling} pairs)"
            # no early stopping: the flow-matching loss levels off while the NLL still falls
            options.update(objective="flow_matching", coupling=args.coupling, batch_size=256,
                           patience=None)  # fmt: skip
    print(f"training {label} for up to {epochs} epochs")
    start = time.perf_counter()
    flow, history = pfj.fit(
        flow, train, epochs=epochs, seed=args.seed, progress=not args.quick, **options
    )
    seconds = time.perf_counter() - start
    stopped = len(history["train"])
    print(f"stopped after {stopped} epochs (best {history['best_epoch'] + 1}), {seconds:.1f} s")
    if "nfe" in history:
        print(f"NFE per training step: {history['nfe'][0]:.0f} (first epoch), "
              f"{history['nfe'][-1]:.0f} (last)")  # fmt: skip

    if args.model == "residual":  # score exactly: the same parameters, the exact log-det
        exact = pfj.ResidualFlow(2, transforms=transforms, hidden=hidden, logdet="exact",
                                 key=key_init)  # fmt: skip
        flow = pfj.set_params(exact, pfj.get_params(flow))
    nfe = None
    if continuous:  # score at a tight tolerance: the same parameters
        scorer = pfj.FFJORD(2, hidden=hidden, atol=1e-6, rtol=1e-6, key=key_init)
        flow = pfj.set_params(scorer, pfj.get_params(flow))
        nfe = int(flow.layers[0].solve(jnp.asarray(test), reverse=True).nfe)
    flow_ll = float(log_prob(flow, jnp.asarray(test)).mean())
    gauss_ll = float(gaussian_log_prob(train, test).mean())
    samples = np.asarray(eqx.filter_jit(lambda f, k: f().sample(k, (1000,)))(flow, key_sample))

    print(f"\nHeld-out log-likelihood on {test.shape[0]} test points (standardised data)")
    print(f"{'model':<30} {'nats/point':>11} {'bits/dim':>9}")
    flow_name = f"{args.model} flow (pfj.fit)"
    for name, ll in ((flow_name, flow_ll), ("Gaussian, full covariance", gauss_ll)):
        print(f"{name:<30} {ll:>11.3f} {-ll / (2 * math.log(2)):>9.3f}")
    print("(bits/dim here is -log p / (2 log 2) of the continuous density: lower is better)")
    if continuous:
        print(f"training time {seconds:.1f} s; NFE of the test set's solve (tol 1e-6): {nfe}")

    suffix = "" if args.model == "nsf" else f"_{args.model}"
    path = args.out / f"two_moons_numpyro{suffix}.png"
    plot(flow, test, samples, path, grid=100 if continuous else 200)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
