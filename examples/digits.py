"""Density estimation on scikit-learn's digits: a neural spline flow against a Gaussian.

What this example shows:

* The standard recipe for discrete image data: **uniform dequantization**
  (`pyroflows.pyro.dequantize`), **logit preprocessing** as the last layer of the flow
  (`pyroflows.pyro.Logit`, so its log-determinant is part of the density), and
  **bits per dimension** (`pyroflows.pyro.bits_per_dim`), an upper bound on the code
  length of the discrete data.
* A flow assembled from building blocks rather than a recipe: masked autoregressive
  layers (`pyroflows.pyro.MaskedAutoregressive`) with rational-quadratic spline
  transformers (an autoregressive neural spline flow; ``--model maf`` uses affine
  transformers instead), each in a seeded random feature order from
  `pyroflows.structure.permutation`, then `Logit`. ``--model residual`` uses invertible
  residual blocks instead (`pyroflows.pyro.ResidualFlow`'s blocks and ``ActNorm``s,
  trained with the unbiased Russian-roulette log-det, scored with the exact one).
  ``--model ffjord`` uses one continuous flow (`pyroflows.pyro.Continuous`, the vector
  field an MLP), trained by flow matching on the logit scale (`pyroflows.pyro
  .flow_matching_loss`: no ODE solve in training) and scored exactly through the ODE
  (exact trace, dopri5 at 1e-5), validated every 20 epochs (Hutchinson trace).
  ``--model glow`` and ``--model realnvp`` use the multi-scale image flows
  (`pyroflows.pyro.Glow`, `pyroflows.pyro.RealNVP` with ``shape=(1, 8, 8)``) on the image,
  with `pyroflows.pyro.Reshape` handing their output to ``Logit`` as 64 pixels.
* A plain PyTorch training loop on ``flow().log_prob``: fresh dequantization noise every
  epoch (`pyroflows.pyro.fit` would see one fixed dequantized copy and overfit it
  sooner), cosine learning-rate decay, and the parameters of the best validation epoch
  kept.
* Baselines: full-covariance Gaussians fitted by maximum likelihood (ridge chosen on the
  validation set) to the same dequantized data, once in ``[0, 1]^64`` and once in logit
  space (with the `Logit` layer's log-determinant), scored with the same bits/dim
  formula.

Data: 1797 images of 8x8 pixels with values 0..16 (17 levels), bundled with scikit-learn
(no download), split at random into 1300 training, 200 validation and 297 test images.
Test numbers average each image's log-density over 10 dequantization draws made with a
fixed seed, so they do not move from run to run.

Run from the repository root::

    python examples/digits.py                # default run: 60 epochs
    python examples/digits.py --quick        # a tiny smoke run (seconds)
    python examples/digits.py --model residual   # a residual flow (a few minutes)
    python examples/digits.py --model ffjord     # a continuous flow by flow matching
    python examples/digits.py --model glow       # Glow, 2 levels x 4 steps (2 minutes)

It prints a table of test log-likelihoods and bits/dim and writes ``outputs/digits.png``:
real test digits next to samples of the flow and of the Gaussians.
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

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import Tensor

import pyroflows.pyro as pf
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
# validated through the ODE every 20 epochs
FFJORD = {"transforms": 1, "hidden": (512, 512), "epochs": 1500, "lr": 1e-3, "validate_every": 20}
FFJORD_TOL = 1e-5
# --model glow / realnvp: multi-scale image flows on the 8x8 image (1, 8, 8), their latent
# reshaped to the 64 pixels that `Logit` takes; conv ResNet conditioners with 64 channels
IMAGE = {"transforms": 4, "hidden": (64,), "epochs": 100, "lr": 1e-3}


@dataclass
class Result:
    """Held-out scores of one model."""

    name: str
    log_prob: Tensor  # per test image: log-density of the dequantized image, averaged over draws
    sample: Callable[[int], Tensor]  # n -> (n, 64) samples in [0, 1]

    @property
    def nats(self) -> float:
        """Mean log-density of the dequantized test images, in nats per image."""
        return self.log_prob.mean().item()

    @property
    def discrete_nats(self) -> float:
        """Lower bound on the mean log-probability of the discrete test images."""
        return self.nats - DIMS * math.log(LEVELS)

    @property
    def bits(self) -> float:
        return pf.bits_per_dim(self.log_prob, dims=DIMS, levels=LEVELS).mean().item()

    @property
    def bits_stderr(self) -> float:
        bits = pf.bits_per_dim(self.log_prob, dims=DIMS, levels=LEVELS)
        return (bits.std() / math.sqrt(bits.numel())).item()


def load_splits(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Digits as float tensors of integer values 0..16, split into train / validation / test."""
    images = torch.as_tensor(load_digits().data, dtype=torch.get_default_dtype())
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    images = images[order]
    n_train, n_val = SPLIT
    return images[:n_train], images[n_train : n_train + n_val], images[n_train + n_val :]


def dequantized_draws(x: Tensor, draws: int, generator: torch.Generator) -> Tensor:
    """``draws`` independent uniform dequantizations of ``x``: shape ``(draws, *x.shape)``."""
    return torch.stack([pf.dequantize(x, levels=LEVELS, generator=generator) for _ in range(draws)])


def build_flow(config: Config, logdet: str = "unbiased", trace: str = "exact") -> pf.Flow:
    """Autoregressive (or residual) flow on the logit scale, then `Logit` into ``(0, 1)^64``.

    Layers are listed in the forward (base -> data) order, as in every `pf.Flow`, so
    `Logit` comes last: scoring an image first takes it to the real line. ``logdet`` is the
    residual blocks' log-det mode (``--model residual`` only), ``trace`` the continuous
    flow's (``--model ffjord`` only).
    """
    if config.model == "ffjord":
        cnf = pf.Continuous(
            DIMS, hidden=config.hidden, trace=trace, atol=FFJORD_TOL, rtol=FFJORD_TOL
        )
        return pf.Flow([cnf, pf.Logit(DIMS, alpha=ALPHA)])
    if config.model in ("glow", "realnvp"):
        shape, channels = (1, 8, 8), config.hidden[0]
        if config.model == "glow":  # 2 levels of `transforms` steps each
            image = pf.Glow(shape, levels=2, steps=config.transforms, hidden=channels)
        else:  # 2 levels: 3 checkerboard, squeeze, 3 channel couplings; then 4 checkerboard
            image = pf.RealNVP(shape=shape, levels=2, hidden=channels, blocks=2)
        reshape = pf.Reshape((DIMS,), shape)
        return pf.Flow([*image.transforms, reshape, pf.Logit(DIMS, alpha=ALPHA)])
    if config.model == "residual":
        residual = pf.ResidualFlow(
            DIMS, transforms=config.transforms, hidden=config.hidden, logdet=logdet
        )
        return pf.Flow([*residual.transforms, pf.Logit(DIMS, alpha=ALPHA)])
    layers: list[pf.Bijection] = []
    for layer in range(config.transforms):
        if config.model == "nsf":
            transformer: pf.Transformer = pf.SplineTransformer(config.bins, config.bound)
        else:
            transformer = pf.AffineTransformer()
        layers.append(
            pf.MaskedAutoregressive(
                DIMS,
                transformer=transformer,
                hidden=config.hidden,
                invert=True,  # MAF direction: density in one pass, sampling sequential
                order=structure.permutation(DIMS, seed=layer),
            )
        )
    return pf.Flow([*layers, pf.Logit(DIMS, alpha=ALPHA)])


def train_flow(
    flow: pf.Flow,
    train: Tensor,
    val: Tensor,
    config: Config,
    generator: torch.Generator,
    scorer: pf.Flow | None = None,
) -> list[float]:
    """Maximum likelihood with fresh dequantization noise every epoch.

    Returns the validation bits/dim per epoch; the flow ends with the parameters of the
    best validation epoch. ``scorer`` (a flow of the same structure) computes the
    validation scores from a copy of the parameters: the exact-log-det twin of a
    residual flow trained with the stochastic one.
    """
    optimizer = torch.optim.Adam(flow.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    val_draws = dequantized_draws(val, 5, generator)
    history: list[float] = []
    best, best_state = math.inf, copy.deepcopy(flow.state_dict())
    n = train.shape[0]
    for epoch in range(config.epochs):
        flow.train()
        data = pf.dequantize(train, levels=LEVELS, generator=generator)
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, config.batch_size):
            batch = data[order[start : start + config.batch_size]]
            if config.model == "ffjord":  # flow matching of the vector field, logit scale
                cnf, logit = flow.transforms
                with torch.no_grad():
                    real, _ = logit.inverse_and_log_det(batch)
                loss = pf.flow_matching_loss(pf.Flow([cnf]), real)
            else:
                loss = -flow().log_prob(batch).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(flow.parameters(), 5.0)
            optimizer.step()
            total += loss.item() * batch.shape[0]
        schedule.step()
        if (epoch + 1) % config.validate_every and epoch != config.epochs - 1:
            continue
        flow.eval()
        scored = flow if scorer is None else pf.set_params(scorer, pf.get_params(flow)).eval()
        with torch.no_grad():
            val_bits = pf.bits_per_dim(scored().log_prob(val_draws), DIMS, LEVELS).mean().item()
        history.append(val_bits)
        if val_bits < best:
            best, best_state = val_bits, copy.deepcopy(flow.state_dict())
        if epoch % (10 * config.validate_every) < config.validate_every or (
            epoch == config.epochs - 1
        ):
            if config.model == "ffjord":
                train_text = f"flow-matching loss {total / n:.3f}"
            else:
                train_bits = pf.bits_per_dim(torch.tensor(-total / n), DIMS, LEVELS).item()
                train_text = f"{train_bits:.3f} bits/dim"
            print(
                f"  epoch {epoch + 1:3d}/{config.epochs}  train {train_text}  "
                f"validation {val_bits:.3f} bits/dim",
                flush=True,
            )
    flow.load_state_dict(best_state)
    flow.eval()
    return history


def fit_gaussian(
    train: Tensor, val: Tensor, to_real: Callable[[Tensor], tuple[Tensor, Tensor]]
) -> tuple[torch.distributions.MultivariateNormal, float]:
    """Full-covariance Gaussian on ``to_real(y)``, by maximum likelihood plus a ridge.

    ``to_real`` maps dequantized images to the space the Gaussian lives in and returns the
    log-determinant of that map. The ridge is the one of `RIDGES` with the best
    validation log-likelihood. Computed in float64.
    """
    z, _ = to_real(train.double().flatten(0, -2))
    mean = z.mean(0)
    cov = torch.cov(z.T, correction=0)
    eye = torch.eye(DIMS, dtype=z.dtype)
    best: tuple[float, torch.distributions.MultivariateNormal | None, float] = (-math.inf, None, 0)
    for ridge in RIDGES:
        gaussian = torch.distributions.MultivariateNormal(mean, cov + ridge * eye)
        zv, log_det = to_real(val.double())
        score = (gaussian.log_prob(zv) + log_det).mean().item()
        if score > best[0]:
            best = (score, gaussian, ridge)
    assert best[1] is not None
    return best[1], best[2]


def gaussian_results(
    train_draws: Tensor, val_draws: Tensor, test_draws: Tensor
) -> tuple[list[Result], dict[str, float]]:
    """The two Gaussian baselines: in ``[0, 1]^64`` and in logit space."""
    logit = pf.Logit(DIMS, alpha=ALPHA).double()

    def identity(y: Tensor) -> tuple[Tensor, Tensor]:
        return y, y.new_zeros(y.shape[:-1])

    def to_logit(y: Tensor) -> tuple[Tensor, Tensor]:
        return logit.inverse_and_log_det(y)

    def from_logit(z: Tensor) -> Tensor:
        return logit.forward_and_log_det(z)[0]

    results, ridges = [], {}
    spaces: Sequence[tuple[str, Callable, Callable[[Tensor], Tensor]]] = (
        ("Gaussian, full covariance, on [0,1]^64", identity, lambda z: z),
        ("Gaussian, full covariance, logit space", to_logit, from_logit),
    )
    for name, to_real, to_data in spaces:
        gaussian, ridge = fit_gaussian(train_draws, val_draws, to_real)
        z, log_det = to_real(test_draws.double())
        log_prob = (gaussian.log_prob(z) + log_det).mean(0).float()

        def sample(n: int, gaussian=gaussian, to_data=to_data) -> Tensor:
            with torch.no_grad():
                return to_data(gaussian.sample((n,))).float().clamp(0, 1)

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


def plot(real: Tensor, results: list[Result], count: int, path: Path) -> None:
    """Real test digits next to samples of each model, as mosaics of 8x8 images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = int(math.isqrt(count))
    count = side * side

    def mosaic(images: Tensor) -> np.ndarray:
        tiles = images[:count].reshape(side, side, 8, 8).detach().cpu().numpy()
        tiles = np.pad(tiles, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=0.0)
        return tiles.transpose(0, 2, 1, 3).reshape(side * 10, side * 10)

    panels = [("real test digits", real[:count] / (LEVELS - 1))]
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
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    train, val, test = load_splits(args.seed)
    print(f"digits: {train.shape[0]} train / {val.shape[0]} validation / {test.shape[0]} test")

    # Fixed dequantization draws for evaluation, from their own seed.
    eval_generator = torch.Generator().manual_seed(args.seed + 1)
    test_draws = dequantized_draws(test, config.eval_draws, eval_generator)

    flow = build_flow(config)
    # a residual flow is trained with the stochastic log-det and scored with the exact one;
    # a continuous flow is validated with the Hutchinson trace (one vector-Jacobian product
    # an evaluation instead of 64) and tested with the exact one
    scorer = None
    if config.model == "residual":
        scorer = build_flow(config, logdet="exact")
    elif config.model == "ffjord":
        scorer = build_flow(config, trace="hutchinson")
    n_params = sum(p.numel() for p in flow.parameters())
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
    train_flow(flow, train, val, config, generator, scorer)
    train_seconds = time.perf_counter() - start
    exact = scorer if config.model == "residual" else None
    scored = flow if exact is None else pf.set_params(exact, pf.get_params(flow)).eval()
    with torch.no_grad():
        flow_log_prob = scored().log_prob(test_draws).mean(0)

    def flow_sample(n: int) -> Tensor:
        with torch.no_grad():
            return flow().sample((n,)).clamp(0, 1)

    start = time.perf_counter()
    train_draws = dequantized_draws(train, 10, generator)
    val_draws = dequantized_draws(val, 5, generator)
    baselines, ridges = gaussian_results(train_draws, val_draws, test_draws)
    gaussian_seconds = time.perf_counter() - start

    results = [Result(label, flow_log_prob, flow_sample), *baselines]
    print_table(results, test.shape[0], config.eval_draws)
    best_gaussian = min(baselines, key=lambda r: r.bits)
    print(
        f"\nflow test bits/dim {results[0].bits:.3f} vs best Gaussian "
        f"{best_gaussian.bits:.3f} ({best_gaussian.name})"
    )
    print(f"flow training time: {train_seconds:.1f} s (torch threads: {torch.get_num_threads()})")
    ridge_text = ", ".join(f"{k.split(', ')[-1]}: ridge {v:g}" for k, v in ridges.items())
    print(f"Gaussian fits: {gaussian_seconds:.2f} s ({ridge_text})")

    torch.manual_seed(args.seed)
    path = args.out / "digits.png"
    plot(test, results, config.samples, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
