r"""A VAE with an amortized IAF posterior (Kingma et al., 2016) against a diagonal Gaussian one.

What this example shows:

* `pyroflows.pyro.AmortizedIAF` in a plain Pyro VAE: the encoder outputs a mean, a scale
  and a context vector ``h``; the guide is three lines::

      loc, scale, h = encoder(x)
      with pyro.plate("data", len(x)):
          pyro.sample("z", iaf(loc, scale, h))

  The ELBO scores the guide's own draws from the flow's cache: the IAF's sequential
  inverse never runs.
* The same encoder, decoder and training loop with a diagonal Gaussian posterior
  (``pyro.sample("z", Normal(loc, scale).to_event(1))``), the baseline.
* Training with `pyro.infer.SVI`, KL warm-up (``poutine.scale`` on the latent site),
  Adamax, and the parameters of the best validation epoch kept (early stopping).
* Test negative ELBO in bits per dimension, and a figure of test images, their
  reconstructions and samples from the prior.

Data sets:

* ``--dataset digits`` (default, seconds to a minute): scikit-learn's 8x8 digits,
  binarized at half intensity (64 binary pixels, Bernoulli likelihood), split at random
  (seed 0) into 1300 training, 200 validation and 297 test images; 8 latent dimensions.
* ``--dataset freyfaces``: 1965 faces of 28x20 pixels (``../shared/data/freyfaces``),
  the Sylvester-flows protocol of the data README: random 1565 / 200 / 200 split made as
  in that paper's code (``np.random.seed(S)`` then ``np.random.shuffle``; ``--split-seed
  S``, default 123, the paper averages 123, 321 and 231), 64 latent dimensions, a 256-way
  categorical likelihood per pixel. The categorical's 256 probabilities come from a
  discretized mixture of 3 logistics per pixel (as PixelCNN++), so the decoder outputs 9
  numbers per pixel instead of 256; it is still a proper distribution over the 256 values.
  The published numbers (negative ELBO, bits/dim) are 4.53 for a diagonal Gaussian
  posterior and 4.47 for IAF, with gated convolutional networks on a GPU. This script uses
  MLPs by default; ``--channels C`` switches to gated conv nets (slow on a CPU).

Run from the repository root::

    python examples/vae.py                                  # digits, both posteriors
    python examples/vae.py --dataset freyfaces --epochs 2000 --patience 100 \
        --hidden 256 --weight-decay 0.1 --iaf-transforms 4     # the docs' Frey Faces runs
    python examples/vae.py --quick                          # smoke run
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from torch import Tensor, nn
from torch.nn import functional as F
from vae_data import MIXTURE, parse_args

import pyroflows.pyro as pf


# --------------------------------------------------------------------------- likelihoods
def _log_bins(params: Tensor, values: Tensor, levels: int = 256) -> Tensor:
    """Log-probability of pixel ``values`` (integers 0..levels-1, broadcast against
    ``params[..., 0]``) under a discretized mixture of logistics.

    ``params`` is ``(..., 3 * MIXTURE)``: mixture logits, means (on the [-1, 1] scale of the
    pixel values) and log-scales. Bin ``v`` covers ``[x_v - h, x_v + h]`` with
    ``x_v = 2 v / (levels - 1) - 1``; the two end bins take the tails, so the ``levels``
    probabilities sum to one.
    """
    logit_pi, mu, log_s = params.chunk(3, dim=-1)
    log_s = log_s.clamp(min=-7.0)
    half = 1.0 / (levels - 1)
    x = (2.0 * values / (levels - 1) - 1.0).unsqueeze(-1)
    c = x - mu
    inv_s = torch.exp(-log_s)
    plus, minus, mid = inv_s * (c + half), inv_s * (c - half), inv_s * c
    log_cdf_plus = -F.softplus(-plus)  # log sigmoid(plus): the bottom bin
    log_sf_minus = -F.softplus(minus)  # log (1 - sigmoid(minus)): the top bin
    delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    log_pdf_mid = mid - log_s - 2.0 * F.softplus(mid) + math.log(2 * half)
    log_mid = torch.where(delta > 1e-5, torch.log(delta.clamp_min(1e-12)), log_pdf_mid)
    x = x.expand_as(log_mid)
    log_bins = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_sf_minus, log_mid))
    return torch.logsumexp(log_bins + F.log_softmax(logit_pi, -1), dim=-1)


class DiscretizedLogisticMixture(dist.TorchDistribution):
    """A 256-way categorical per pixel whose probabilities come from a logistic mixture.

    ``log_prob`` evaluates only the observed bin of each pixel (cheap); `bin_log_probs`
    gives all 256 (for pictures of the mean image).
    """

    support = dist.constraints.integer_interval(0, 255)
    arg_constraints: dict = {}

    def __init__(self, params: Tensor) -> None:
        self.params = params  # (..., pixels, 3 * MIXTURE)
        super().__init__(params.shape[:-2], params.shape[-2:-1], validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return _log_bins(self.params, value).sum(-1)

    def bin_log_probs(self) -> Tensor:
        values = torch.arange(256.0, device=self.params.device)
        return _log_bins(self.params.unsqueeze(-2), values)


def likelihood(kind: str, out: Tensor) -> dist.Distribution:
    if kind == "bernoulli":
        return dist.Bernoulli(logits=out).to_event(1)
    pixels = out.shape[-1] // (3 * MIXTURE)
    return DiscretizedLogisticMixture(out.reshape(*out.shape[:-1], pixels, 3 * MIXTURE))


# --------------------------------------------------------------------------- networks
def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


class GatedConv(nn.Module):
    """A 3x3 convolution gated by a second one: ``a(x) * sigmoid(b(x))``, added to ``x``
    where the shapes match (a residual block; it trained faster here than the plain gate).

    ``stride=2`` halves the height and width; with ``transpose=True`` it doubles them.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, transpose: bool = False):
        super().__init__()
        self.residual = cin == cout and stride == 1
        if transpose:
            self.conv = nn.ConvTranspose2d(cin, 2 * cout, 3, stride, 1, output_padding=stride - 1)
        else:
            self.conv = nn.Conv2d(cin, 2 * cout, 3, stride, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.conv(x).chunk(2, dim=1)
        return x + a * torch.sigmoid(b) if self.residual else a * torch.sigmoid(b)


class ConvNet(nn.Module):
    """Gated convolutional encoder (``image -> features``) or decoder (``features -> per-pixel
    outputs``) for images whose height and width are divisible by 4.

    The encoder runs five gated convolutions (``channels``, two of them with stride 2, then
    ``2 * channels``) and a linear map of the flattened ``H/4 x W/4`` grid; the decoder
    mirrors it with transposed convolutions and ends in a 1x1 convolution to
    ``outputs_per_pixel`` channels plus a learned bias per pixel and output, returned
    pixel-major as ``(..., H * W * outputs)``.
    """

    def __init__(
        self, shape: tuple[int, int], channels: int, features: int, *, decoder: bool = False,
        outputs_per_pixel: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        height, width = shape
        if height % 4 or width % 4:
            raise ValueError(f"shape: expected height and width divisible by 4, got {shape}")
        c, grid = channels, (2 * channels, height // 4, width // 4)
        self.shape, self.grid, self.decoder = shape, grid, decoder
        if decoder:
            self.linear = nn.Linear(features, int(np.prod(grid)))
            self.bias = nn.Parameter(torch.zeros(height * width * outputs_per_pixel))
            self.convs = nn.Sequential(
                GatedConv(2 * c, 2 * c), GatedConv(2 * c, c, 2, transpose=True), GatedConv(c, c),
                GatedConv(c, c, 2, transpose=True), GatedConv(c, c),
                nn.Conv2d(c, outputs_per_pixel, 1),
            )  # fmt: skip
        else:
            self.convs = nn.Sequential(
                GatedConv(1, c), GatedConv(c, c, 2), GatedConv(c, 2 * c),
                GatedConv(2 * c, 2 * c, 2), GatedConv(2 * c, 2 * c),
            )  # fmt: skip
            self.linear = nn.Linear(int(np.prod(grid)), features)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        if self.decoder:
            y = self.convs(F.elu(self.linear(x)).reshape(-1, *self.grid))
            return y.permute(0, 2, 3, 1).reshape(*batch, -1) + self.bias  # pixel-major
        y = self.convs(x.reshape(-1, 1, *self.shape))
        return self.linear(y.flatten(1)).reshape(*batch, -1)


class Encoder(nn.Module):
    """``x -> (loc, scale, h)``; an MLP, or with ``channels`` a `ConvNet` on ``shape``."""

    def __init__(
        self, pixels: int, hidden: int, latent: int, context: int, scale01: bool,
        shape: tuple[int, int] = (0, 0), channels: int = 0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.sizes = [latent, latent, context]
        self.scale01 = scale01  # 0..255 pixels are rescaled to [-1, 1] for the network
        out = 2 * latent + context
        self.net = ConvNet(shape, channels, out) if channels else mlp([pixels, hidden, hidden, out])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.scale01:
            x = x / 127.5 - 1.0
        loc, raw, h = self.net(x).split(self.sizes, dim=-1)
        return loc, F.softplus(raw) + 1e-4, h


class VAE(nn.Module):
    """Decoder, encoder and (for a ``posterior`` other than ``"gaussian"``) the amortized
    flow."""

    def __init__(
        self,
        settings: dict,
        posterior: str,
        transforms: int = 2,
        channels: int = 0,
        options: dict | None = None,
    ) -> None:
        super().__init__()
        pixels = int(np.prod(settings["shape"]))
        latent, hidden = settings["latent"], settings["hidden"]
        self.kind = settings["likelihood"]
        self.latent = latent
        out = pixels if self.kind == "bernoulli" else pixels * 3 * MIXTURE
        context = 2 * latent if posterior != "gaussian" else 0
        shape = settings["shape"]
        self.encoder = Encoder(
            pixels, hidden, latent, context, self.kind != "bernoulli", shape, channels
        )
        self.decoder = (
            ConvNet(shape, channels, latent, decoder=True, outputs_per_pixel=out // pixels)
            if channels
            else mlp([latent, hidden, hidden, out])
        )
        self.amortized = (
            pf.AmortizedFlow(
                latent,
                context,
                posterior,
                transforms=transforms,
                **{"hidden": (hidden, hidden), **(options or {})},
            )
            if posterior != "gaussian"
            else None
        )
        self.register_buffer("zero", torch.zeros(()))
        self.beta = 1.0  # KL warm-up factor

    def model(self, x: Tensor) -> None:
        pyro.module("decoder", self.decoder)
        prior = dist.Normal(self.zero.expand(self.latent), 1.0).to_event(1)
        with pyro.plate("data", x.shape[0]):
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", prior)
            pyro.sample("x", likelihood(self.kind, self.decoder(z)), obs=x)

    def guide(self, x: Tensor) -> None:
        pyro.module("encoder", self.encoder)
        loc, scale, h = self.encoder(x)
        if self.amortized is None:
            posterior = dist.Normal(loc, scale).to_event(1)
        else:
            pyro.module("amortized", self.amortized)
            posterior = self.amortized(loc, scale, h)
        with pyro.plate("data", x.shape[0]), poutine.scale(scale=self.beta):
            pyro.sample("z", posterior)


# --------------------------------------------------------------------------- training
@torch.no_grad()
def negative_elbo(vae: VAE, data: Tensor, particles: int = 1, batch: int = 100) -> float:
    """Mean negative ELBO per image (nats), averaged over ``particles`` draws."""
    beta, vae.beta = vae.beta, 1.0
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    total = sum(elbo.loss(vae.model, vae.guide, chunk) for chunk in data.split(batch))
    vae.beta = beta
    return total / len(data)


def train(
    vae: VAE,
    data: dict,
    epochs: int,
    warmup: int,
    patience: int,
    seed: int,
    log,
    weight_decay: float = 0.0,
    flow_weight_decay: float | None = None,
) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    train_x, valid_x = (torch.as_tensor(data[k]) for k in ("train", "valid"))
    lr = 1e-3
    optim = pyro.optim.Adamax({"lr": lr})
    svi = SVI(vae.model, vae.guide, optim, Trace_ELBO())
    # decoupled weight decay, as optax.add_decayed_weights in JAX; the amortized flow's
    # weights decay at their own rate (default the same): (parameter, factor) pairs, once
    flow_decay = weight_decay if flow_weight_decay is None else flow_weight_decay
    flow_ids = set() if vae.amortized is None else {id(p) for p in vae.amortized.parameters()}
    rates = ((p, flow_decay if id(p) in flow_ids else weight_decay) for p in vae.parameters())
    decays = [(p, 1.0 - lr * rate) for p, rate in rates if rate]

    def step(batch: Tensor) -> float:
        loss = svi.step(batch)
        with torch.no_grad():
            for p, factor in decays:
                p.mul_(factor)
        return loss

    best, best_state, best_epoch, history = math.inf, None, 0, []
    for epoch in range(1, epochs + 1):
        vae.beta = min(1.0, epoch / max(1, warmup))
        order = torch.randperm(len(train_x))
        loss = sum(step(train_x[i]) for i in order.split(100)) / len(train_x)
        valid = negative_elbo(vae, valid_x)
        history.append((epoch, loss, valid))
        if valid < best and vae.beta == 1.0:
            best, best_state, best_epoch = valid, copy.deepcopy(vae.state_dict()), epoch
        if epoch % max(1, min(50, epochs // 10)) == 0 or epoch == epochs:
            log(f"  epoch {epoch:4d}  train {loss:9.2f}  valid {valid:9.2f} nats  β {vae.beta:.2f}")
        if vae.beta == 1.0 and epoch - best_epoch > patience:
            log(f"  early stop at epoch {epoch} (best validation at {best_epoch})")
            break
    if best_state is not None:
        vae.load_state_dict(best_state)
    return dict(best_epoch=best_epoch, history=history)


# --------------------------------------------------------------------------- plot
@torch.no_grad()
def plot(vaes: dict[str, VAE], test: np.ndarray, shape: tuple[int, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = torch.as_tensor(test[:8])
    rows = [("test images", x.numpy())]
    for name, vae in vaes.items():
        loc, scale, h = vae.encoder(x)
        z = loc if vae.amortized is None else vae.amortized(loc, scale, h).sample()
        rows.append((f"{name}: reconstructions", mean_image(vae, z)))
        rows.append((f"{name}: prior samples", mean_image(vae, torch.randn(8, vae.latent))))
    fig, axes = plt.subplots(len(rows), 8, figsize=(8, 1.2 * len(rows) * shape[0] / shape[1]))
    for r, (title, images) in enumerate(rows):
        for c in range(8):
            axes[r, c].imshow(images[c].reshape(shape), cmap="gray")
            axes[r, c].axis("off")
        axes[r, 0].set_title(title, loc="left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mean_image(vae: VAE, z: Tensor) -> np.ndarray:
    out = vae.decoder(z)
    if vae.kind == "bernoulli":
        return torch.sigmoid(out).numpy()
    params = out.reshape(len(z), -1, 3 * MIXTURE)
    log_probs = DiscretizedLogisticMixture(params).bin_log_probs()  # (n, pixels, 256)
    return (log_probs.exp() * torch.arange(256.0)).sum(-1).numpy()


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    args, data, epochs, warmup, particles = parse_args(__doc__.split("\n")[0], argv, out=True)
    pixels = int(np.prod(data["shape"]))
    test = torch.as_tensor(data["test"])
    print(
        f"{args.dataset}: {len(data['train'])} train / {len(data['valid'])} valid / "
        f"{len(data['test'])} test images of {pixels} pixels, latent {data['latent']}, "
        f"{data['likelihood']} likelihood; {epochs} epochs, KL warm-up {warmup}"
    )
    results, vaes = {}, {}
    for posterior in args.posteriors:
        torch.manual_seed(args.seed)
        vae = VAE(
            data,
            posterior,
            args.flow_transforms,
            args.channels,
            args.flow_options.get(posterior),
        )
        print(f"{posterior} posterior ({sum(p.numel() for p in vae.parameters())} parameters)")
        start = time.perf_counter()
        info = train(
            vae,
            data,
            epochs,
            warmup,
            args.patience,
            args.seed,
            print,
            args.weight_decay,
            args.flow_weight_decay,
        )
        seconds = time.perf_counter() - start
        pyro.set_rng_seed(args.seed)
        nats = negative_elbo(vae, test, particles=particles, batch=20)
        results[posterior] = dict(
            nats=nats, bits_per_dim=nats / (pixels * math.log(2)), seconds=seconds, **info
        )
        vaes[posterior] = vae
    print(f"\ntest negative ELBO ({particles} draws per image), lower is better:")
    print("| posterior | nats / image | bits / dim | best epoch | train time |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['nats']:.2f} | {r['bits_per_dim']:.3f} | {r['best_epoch']} | "
            f"{r['seconds']:.0f} s |"
        )
    figure = args.out / f"vae_{args.dataset}.png"
    plot(vaes, data["test"], data["shape"], figure)
    print(f"wrote {figure}")
    return results


if __name__ == "__main__":
    main()
