"""Density estimation on scikit-learn's digits with JAX + NumPyro: a neural spline flow
against Gaussian baselines.

The JAX twin of ``digits.py``: the same data split, preprocessing, model size, training
schedule, printed table and plot.

What this example shows:

* The standard recipe for discrete image data: **uniform dequantization**
  (`pyroflows.numpyro.dequantize`), **logit preprocessing** as the last layer of the flow
  (`pyroflows.numpyro.Logit`, so its log-determinant is part of the density), and
  **bits per dimension** (`pyroflows.numpyro.bits_per_dim`).
* A flow assembled from building blocks: masked autoregressive layers
  (`pyroflows.numpyro.MaskedAutoregressive`) with rational-quadratic spline transformers
  (``--model maf``: affine), each in a seeded random feature order from
  `pyroflows.structure.permutation` (the same orders as the torch script), then `Logit`.
  ``--model residual`` uses invertible residual blocks instead (`pyroflows.numpyro.
  ResidualFlow`'s blocks and ``ActNorm``s): trained with the unbiased Russian-roulette
  log-det (fresh keys every step with `pyroflows.numpyro.with_key`, the power-iteration
  vectors stored after every step with `pyroflows.numpyro.refine_lipschitz`), scored with
  the exact log-det of a twin flow that gets the parameters by `set_params`. ``--model
  ffjord`` uses one continuous flow (`pyroflows.numpyro.Continuous`), trained by flow
  matching on the logit scale (`pyroflows.numpyro.flow_matching_loss`) and scored exactly
  through the ODE (exact trace, dopri5 at 1e-5), as in ``digits.py``.
* A plain JAX training loop on ``flow().log_prob``: one jitted optax step (Adam, cosine
  learning-rate decay per epoch, gradient clipping), fresh dequantization noise every
  epoch, and the parameters of the best validation epoch kept.
* Baselines: full-covariance Gaussians fitted by maximum likelihood (ridge chosen on the
  validation set) to the same dequantized data, in ``[0, 1]^64`` and in logit space.

Data: 1797 images of 8x8 pixels with values 0..16 (17 levels), bundled with scikit-learn,
split at random into 1300 training, 200 validation and 297 test images. Test numbers
average each image's log-density over 10 dequantization draws made with a fixed seed.

Run from the repository root::

    python examples/digits_numpyro.py                # default run: 60 epochs
    python examples/digits_numpyro.py --quick        # a tiny smoke run
    python examples/digits_numpyro.py --model residual   # a residual flow
    python examples/digits_numpyro.py --model ffjord     # a continuous flow, flow matching
    python examples/digits_numpyro.py --model glow       # Glow, 2 levels x 4 steps

It prints a table of test log-likelihoods and bits/dim and writes
``outputs/digits_numpyro.png``: real test digits next to samples of the flow and of the
Gaussians.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import pyroflows.numpyro as pfj
from pyroflows import structure

LEVELS = 17  # pixel values 0..16
DIMS = 64  # 8 x 8 pixels
ALPHA = 0.05  # logit preprocessing squeezes [0, 1] into [ALPHA, 1 - ALPHA]
SPLIT = (1300, 200)  # train, validation; the remaining 297 images are the test set
RIDGES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # candidate ridges of the Gaussian baselines


@dataclass
class Config:
    """Model and training settings (the defaults are the README's run)."""

    model: str = "nsf"
    transforms: int = 5
    hidden: tuple[int, ...] = (128, 128)
    bins: int = 8
    bound: float = 4.0
    epochs: int = 60
    batch_size: int = 128
    lr: float = 1e-3
    eval_draws: int = 10
    samples: int = 36
    validate_every: int = 1


QUICK = Config(transforms=2, hidden=(16,), bins=4, epochs=1, eval_draws=2, samples=16)
# --model residual: residual blocks (Lipschitz 0.9, LipSwish) with an ActNorm before each
RESIDUAL = {"transforms": 8, "hidden": (256, 256)}
# --model ffjord: one continuous block, trained by flow matching (cheap steps, many epochs),
# validated through the ODE (Hutchinson trace) every 20 epochs, tested with the exact trace
FFJORD = {"transforms": 1, "hidden": (512, 512), "epochs": 1500, "lr": 1e-3, "validate_every": 20}
FFJORD_TOL = 1e-5
# --model glow / realnvp: multi-scale image flows on the 8x8 image (1, 8, 8), their latent
# reshaped to the 64 pixels that `Logit` takes; conv ResNet conditioners with 64 channels
IMAGE = {"transforms": 4, "hidden": (64,), "epochs": 100, "lr": 1e-3}


@dataclass
class Result:
    """Held-out scores of one model."""

    name: str
    log_prob: np.ndarray  # per test image, averaged over dequantization draws
    sample: Callable[[int], np.ndarray]  # n -> (n, 64) samples in [0, 1]

    @property
    def nats(self) -> float:
        return float(self.log_prob.mean())

    @property
    def discrete_nats(self) -> float:
        return self.nats - DIMS * math.log(LEVELS)

    @property
    def bits(self) -> float:
        return float(np.mean(pfj.bits_per_dim(self.log_prob, dims=DIMS, levels=LEVELS)))

    @property
    def bits_stderr(self) -> float:
        bits = np.asarray(pfj.bits_per_dim(self.log_prob, dims=DIMS, levels=LEVELS))
        return float(bits.std(ddof=1) / math.sqrt(bits.size))


def load_splits(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Digits as float arrays of integer values 0..16, split into train / validation / test."""
    images = load_digits().data.astype(np.float32)
    images = images[np.random.default_rng(seed).permutation(images.shape[0])]
    n_train, n_val = SPLIT
    parts = images[:n_train], images[n_train : n_train + n_val], images[n_train + n_val :]
    return tuple(jnp.asarray(p) for p in parts)


def dequantized_draws(key: jax.Array, x: jax.Array, draws: int) -> jax.Array:
    """``draws`` independent uniform dequantizations of ``x``: shape ``(draws, *x.shape)``."""
    return jnp.stack([pfj.dequantize(k, x, levels=LEVELS) for k in jax.random.split(key, draws)])


def build_flow(
    config: Config, key: jax.Array, logdet: str = "unbiased", trace: str = "exact"
) -> pfj.Flow:
    """Autoregressive, residual or continuous flow on the logit scale, then `Logit` into
    ``(0, 1)^64`` (base -> data). ``logdet`` is the residual blocks' log-det mode (``--model
    residual``), ``trace`` the continuous flow's (``--model ffjord``)."""
    if config.model == "ffjord":
        cnf = pfj.Continuous(
            DIMS, hidden=config.hidden, trace=trace, atol=FFJORD_TOL, rtol=FFJORD_TOL, key=key
        )
        return pfj.Flow([cnf, pfj.Logit(DIMS, alpha=ALPHA)])
    if config.model in ("glow", "realnvp"):
        shape, channels = (1, 8, 8), config.hidden[0]
        if config.model == "glow":  # 2 levels of `transforms` steps each
            image = pfj.Glow(shape, levels=2, steps=config.transforms, hidden=channels, key=key)
        else:  # 2 levels: 3 checkerboard, squeeze, 3 channel couplings; then 4 checkerboard
            image = pfj.RealNVP(shape=shape, levels=2, hidden=channels, blocks=2, key=key)
        reshape = pfj.Reshape((DIMS,), shape)
        return pfj.Flow([*image.transforms, reshape, pfj.Logit(DIMS, alpha=ALPHA)])
    if config.model == "residual":
        residual = pfj.ResidualFlow(
            DIMS, transforms=config.transforms, hidden=config.hidden, logdet=logdet, key=key
        )
        return pfj.Flow([*residual.transforms, pfj.Logit(DIMS, alpha=ALPHA)])
    layers: list[pfj.Bijection] = []
    for layer, k in enumerate(jax.random.split(key, config.transforms)):
        if config.model == "nsf":
            transformer: pfj.Transformer = pfj.SplineTransformer(config.bins, config.bound)
        else:
            transformer = pfj.AffineTransformer()
        layers.append(
            pfj.MaskedAutoregressive(
                DIMS,
                transformer=transformer,
                hidden=config.hidden,
                invert=True,  # MAF direction: density in one pass, sampling sequential
                order=structure.permutation(DIMS, seed=layer),
                key=k,
            )
        )
    return pfj.Flow([*layers, pfj.Logit(DIMS, alpha=ALPHA)])


@eqx.filter_jit
def mean_bits(flow: pfj.Flow, draws: jax.Array) -> jax.Array:
    return pfj.bits_per_dim(flow().log_prob(draws), DIMS, LEVELS).mean()


def train_flow(
    flow: pfj.Flow,
    train: jax.Array,
    val: jax.Array,
    config: Config,
    key: jax.Array,
    scorer: pfj.Flow | None = None,
) -> tuple[pfj.Flow, list[float]]:
    """Maximum likelihood with fresh dequantization noise every epoch.

    Returns the flow with the parameters of the best validation epoch and the validation
    bits/dim per epoch. ``scorer`` (a flow of the same structure) computes the validation
    scores from a copy of the parameters: the exact-log-det twin of a residual flow.
    """
    n = train.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)

    def schedule(count):  # torch's CosineAnnealingLR, stepped once per epoch
        epoch = count // steps_per_epoch
        return config.lr * 0.5 * (1 + jnp.cos(math.pi * epoch / config.epochs))

    optimizer = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(schedule))
    key, k_init = jax.random.split(key)
    # data-dependent initialisation of the ActNorms (residual flows), as pfj.fit does
    flow = pfj.initialize_actnorm(flow, pfj.dequantize(k_init, train, levels=LEVELS))
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    opt_state = optimizer.init(params)

    def loss_fn(p, batch, k):
        model = eqx.combine(p, static)
        if config.model == "ffjord":  # flow matching of the vector field, logit scale
            cnf, logit = model.layers
            real, _ = logit.inverse_and_log_det(batch)
            return pfj.flow_matching_loss(pfj.Flow([cnf]), jax.lax.stop_gradient(real), key=k)
        # with_key: fresh draws for stochastic log-dets (a no-op for the other flows)
        return -pfj.with_key(model, k)().log_prob(batch).mean()

    @jax.jit
    def step(p, state, batch, k):
        loss, grads = jax.value_and_grad(loss_fn)(p, batch, k)
        updates, state = optimizer.update(grads, state, p)
        # store the refined power-iteration vectors of Lipschitz layers (if any)
        return pfj.refine_lipschitz(optax.apply_updates(p, updates)), state, loss

    def validation_bits(p) -> float:
        flow = eqx.combine(p, static)
        if scorer is not None:
            flow = pfj.set_params(scorer, pfj.get_params(flow))
        return float(mean_bits(flow, val_draws))

    key, k_val = jax.random.split(key)
    val_draws = dequantized_draws(k_val, val, 5)
    history: list[float] = []
    best, best_params = math.inf, params
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    for epoch in range(config.epochs):
        key, k_noise = jax.random.split(key)
        data = pfj.dequantize(k_noise, train, levels=LEVELS)
        order = rng.permutation(n)
        total = 0.0
        for start in range(0, n, config.batch_size):
            batch = data[order[start : start + config.batch_size]]
            key, k_step = jax.random.split(key)
            params, opt_state, loss = step(params, opt_state, batch, k_step)
            total += float(loss) * batch.shape[0]
        if (epoch + 1) % config.validate_every and epoch != config.epochs - 1:
            continue
        val_bits = validation_bits(params)
        history.append(val_bits)
        if val_bits < best:
            best, best_params = val_bits, params
        if epoch % (10 * config.validate_every) < config.validate_every or (
            epoch == config.epochs - 1
        ):
            if config.model == "ffjord":
                train_text = f"flow-matching loss {total / n:.3f}"
            else:
                train_text = f"{float(pfj.bits_per_dim(-total / n, DIMS, LEVELS)):.3f} bits/dim"
            print(
                f"  epoch {epoch + 1:3d}/{config.epochs}  train {train_text}  "
                f"validation {val_bits:.3f} bits/dim",
                flush=True,
            )
    return eqx.combine(best_params, static), history


def gaussian_log_prob(mean: np.ndarray, cov: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Log-density of a full-covariance Gaussian (float64, Cholesky)."""
    chol = np.linalg.cholesky(cov)
    diff = (z - mean).reshape(-1, mean.size)
    sol = np.linalg.solve(chol, diff.T)
    log_det = 2 * np.log(np.diag(chol)).sum()
    lp = -0.5 * ((sol**2).sum(0) + log_det + mean.size * math.log(2 * math.pi))
    return lp.reshape(z.shape[:-1])


def gaussian_results(
    train_draws: jax.Array, val_draws: jax.Array, test_draws: jax.Array, key: jax.Array
) -> tuple[list[Result], dict[str, float]]:
    """The two Gaussian baselines: in ``[0, 1]^64`` and in logit space (float64 numpy)."""
    logit = pfj.Logit(DIMS, alpha=ALPHA)

    def identity(y):
        return np.asarray(y, np.float64), np.zeros(y.shape[:-1])

    def to_logit(y):
        z, log_det = logit.inverse_and_log_det(jnp.asarray(y))
        return np.asarray(z, np.float64), np.asarray(log_det, np.float64)

    def from_logit(z):
        return np.asarray(logit.forward_and_log_det(jnp.asarray(z, jnp.float32))[0])

    results, ridges = [], {}
    spaces = (
        ("Gaussian, full covariance, on [0,1]^64", identity, lambda z: z),
        ("Gaussian, full covariance, logit space", to_logit, from_logit),
    )
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    for name, to_real, to_data in spaces:
        z, _ = to_real(train_draws.reshape(-1, DIMS))
        mean, cov = z.mean(0), np.cov(z.T, bias=True)
        zv, log_det_v = to_real(val_draws)
        scores = {
            r: float((gaussian_log_prob(mean, cov + r * np.eye(DIMS), zv) + log_det_v).mean())
            for r in RIDGES
        }
        ridge = max(scores, key=scores.get)
        cov = cov + ridge * np.eye(DIMS)
        zt, log_det_t = to_real(test_draws)
        log_prob = (gaussian_log_prob(mean, cov, zt) + log_det_t).mean(0)

        def sample(n: int, mean=mean, cov=cov, to_data=to_data) -> np.ndarray:
            return np.clip(to_data(rng.multivariate_normal(mean, cov, n)), 0, 1)

        results.append(Result(name, log_prob, sample))
        ridges[name] = ridge
    return results, ridges


def print_table(results: list[Result], n_test: int, draws: int) -> None:
    print(f"\nHeld-out test set: {n_test} digits, {draws} dequantization draws each")
    header = f"{'model':<42} {'log p(y) [nats]':>16} {'log P(x) >= [nats]':>19} {'bits/dim':>16}"
    print(header)
    print("-" * len(header))
    for r in results:
        bits = f"{r.bits:.3f} +- {r.bits_stderr:.3f}"
        print(f"{r.name:<42} {r.nats:>16.2f} {r.discrete_nats:>19.2f} {bits:>16}")
    print(
        "log p(y): density of the dequantized image y in [0,1]^64\n"
        "log P(x) >= log p(y) - 64 log 17: bound on the log-probability of the discrete image x\n"
        "bits/dim = -(log P bound) / (64 log 2); +- is the standard error over test images"
    )


def plot(real: np.ndarray, results: list[Result], count: int, path: Path) -> None:
    """Real test digits next to samples of each model, as mosaics of 8x8 images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = int(math.isqrt(count))
    count = side * side

    def mosaic(images: np.ndarray) -> np.ndarray:
        tiles = np.asarray(images[:count]).reshape(side, side, 8, 8)
        tiles = np.pad(tiles, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=0.0)
        return tiles.transpose(0, 2, 1, 3).reshape(side * 10, side * 10)

    panels = [("real test digits", np.asarray(real[:count]) / (LEVELS - 1))]
    panels += [(r.name.replace(", ", ",\n", 1), r.sample(count)) for r in results]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.8))
    for ax, (title, images) in zip(axes, panels, strict=True):
        ax.imshow(mosaic(images), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="seed of split, init and noise")
    parser.add_argument("--out", type=Path, default=Path("outputs"), help="output folder")
    parser.add_argument(
        "--model",
        choices=("nsf", "maf", "residual", "ffjord", "glow", "realnvp"),
        default="nsf",
        help="flow layers",
    )
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    args = parser.parse_args(argv)

    config = copy.copy(QUICK if args.quick else Config())
    config.model = args.model
    if args.model == "residual" and not args.quick:
        config = dataclasses.replace(config, **RESIDUAL)
    if args.model == "ffjord":
        config = dataclasses.replace(config, **(FFJORD if not args.quick else {"transforms": 1}))
    if args.model in ("glow", "realnvp") and not args.quick:
        config = dataclasses.replace(config, **IMAGE)
    if args.epochs is not None:
        config.epochs = args.epochs
    key_init, key_train, key_eval, key_base, key_sample = jax.random.split(
        jax.random.key(args.seed), 5
    )
    train, val, test = load_splits(args.seed)
    print(f"digits: {train.shape[0]} train / {val.shape[0]} validation / {test.shape[0]} test")

    # Fixed dequantization draws for evaluation, from their own key.
    test_draws = dequantized_draws(key_eval, test, config.eval_draws)

    flow = build_flow(config, key_init)
    # a residual flow is trained with the stochastic log-det and scored with the exact one;
    # a continuous flow is validated with the Hutchinson trace and tested with the exact one
    scorer = None
    if config.model == "residual":
        scorer = build_flow(config, key_init, logdet="exact")
    elif config.model == "ffjord":
        scorer = build_flow(config, key_init, trace="hutchinson")
    n_params = sum(v.size for v in pfj.get_params(flow).values())
    width = "-".join(map(str, config.hidden))
    if config.model == "residual":
        label = f"residual flow ({config.transforms} blocks, {width}) + Logit"
    elif config.model == "ffjord":
        label = f"continuous flow (field {width}, flow matching) + Logit"
    elif config.model == "glow":
        label = f"Glow (2 levels x {config.transforms} steps, {width} channels) + Logit"
    elif config.model == "realnvp":
        label = f"multi-scale RealNVP (2 levels, {width} channels) + Logit"
    else:
        name = "NSF" if config.model == "nsf" else "MAF"
        label = f"{name} flow ({config.transforms} layers, MADE {width}) + Logit"
    print(f"training {label}: {n_params:,} parameters, {config.epochs} epochs")
    start = time.perf_counter()
    flow, _ = train_flow(flow, train, val, config, key_train, scorer)
    train_seconds = time.perf_counter() - start
    if config.model == "residual":
        flow = pfj.set_params(scorer, pfj.get_params(flow))
    flow_log_prob = np.asarray(
        eqx.filter_jit(lambda f, d: f().log_prob(d).mean(0))(flow, test_draws), np.float64
    )

    sample_flow = eqx.filter_jit(lambda f, k, n: f().sample(k, (n,)))

    def flow_sample(n: int) -> np.ndarray:
        return np.clip(np.asarray(sample_flow(flow, key_sample, n)), 0, 1)

    start = time.perf_counter()
    k_train, k_val, k_gauss = jax.random.split(key_base, 3)
    train_draws = dequantized_draws(k_train, train, 10)
    val_draws = dequantized_draws(k_val, val, 5)
    baselines, ridges = gaussian_results(train_draws, val_draws, test_draws, k_gauss)
    gaussian_seconds = time.perf_counter() - start

    results = [Result(label, flow_log_prob, flow_sample), *baselines]
    print_table(results, test.shape[0], config.eval_draws)
    best_gaussian = min(baselines, key=lambda r: r.bits)
    print(
        f"\nflow test bits/dim {results[0].bits:.3f} vs best Gaussian "
        f"{best_gaussian.bits:.3f} ({best_gaussian.name})"
    )
    print(f"flow training time: {train_seconds:.1f} s (JAX on {jax.devices()[0].platform})")
    ridge_text = ", ".join(f"{k.split(', ')[-1]}: ridge {v:g}" for k, v in ridges.items())
    print(f"Gaussian fits: {gaussian_seconds:.2f} s ({ridge_text})")

    path = args.out / "digits_numpyro.png"
    plot(np.asarray(test), results, config.samples, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
