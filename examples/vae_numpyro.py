r"""`vae.py` in JAX + NumPyro: a VAE with an amortized IAF posterior against a Gaussian one.

Same data sets, splits, networks, likelihoods, KL warm-up, optimiser (Adamax 1e-3), early
stopping and report as ``examples/vae.py``; the networks are equinox MLPs registered with
``numpyro.contrib.module.eqx_module`` (``--channels C``: gated conv nets) and the guide is::

    loc, scale, h = eqx_module("encoder", encoder)(x)
    with numpyro.plate("data", len(x)):
        numpyro.sample("z", eqx_module("iaf", iaf)(loc, scale, h))

with ``iaf = pyroflows.numpyro.AmortizedIAF(...)``. NumPyro's ELBO draws the guide's
sample with ``sample_with_intermediates`` and scores it without the IAF's inverse.

Run from the repository root::

    python examples/vae_numpyro.py                    # digits, both posteriors
    python examples/vae_numpyro.py --dataset freyfaces --epochs 2000 --patience 100 \
        --hidden 256 --weight-decay 0.1 --iaf-transforms 4     # the docs' Frey Faces runs
    python examples/vae_numpyro.py --quick            # smoke run
"""

from __future__ import annotations

import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.contrib.module import eqx_module
from numpyro.infer import SVI, Trace_ELBO
from vae_data import MIXTURE, parse_args

import pyroflows.numpyro as pfj

LEVELS = 256


def log_bins(params: jax.Array, values: jax.Array) -> jax.Array:
    """Log-probability of pixel ``values`` under a discretized logistic mixture (see vae.py)."""
    logit_pi, mu, log_s = jnp.split(params, 3, axis=-1)
    log_s = jnp.maximum(log_s, -7.0)
    half = 1.0 / (LEVELS - 1)
    x = (2.0 * values / (LEVELS - 1) - 1.0)[..., None]
    c = x - mu
    inv_s = jnp.exp(-log_s)
    plus, minus, mid = inv_s * (c + half), inv_s * (c - half), inv_s * c
    log_cdf_plus = -jax.nn.softplus(-plus)
    log_sf_minus = -jax.nn.softplus(minus)
    delta = jax.nn.sigmoid(plus) - jax.nn.sigmoid(minus)
    log_pdf_mid = mid - log_s - 2.0 * jax.nn.softplus(mid) + math.log(2 * half)
    log_mid = jnp.where(delta > 1e-5, jnp.log(jnp.maximum(delta, 1e-12)), log_pdf_mid)
    x = jnp.broadcast_to(x, log_mid.shape)
    log_b = jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_sf_minus, log_mid))
    return jax.nn.logsumexp(log_b + jax.nn.log_softmax(logit_pi, -1), axis=-1)


class DiscretizedLogisticMixture(dist.Distribution):
    """A 256-way categorical per pixel from a logistic mixture (log_prob of observed bins)."""

    support = dist.constraints.integer_interval(0, LEVELS - 1)

    def __init__(self, params: jax.Array) -> None:
        self.params = params
        super().__init__(params.shape[:-2], params.shape[-2:-1], validate_args=False)

    def log_prob(self, value: jax.Array) -> jax.Array:
        return log_bins(self.params, value).sum(-1)

    def sample(self, key, sample_shape=()):
        raise NotImplementedError("only scoring is needed here")


def likelihood(kind: str, out: jax.Array) -> dist.Distribution:
    if kind == "bernoulli":
        return dist.Bernoulli(logits=out).to_event(1)
    return DiscretizedLogisticMixture(out.reshape(*out.shape[:-1], -1, 3 * MIXTURE))


class MLP(eqx.Module):
    """An MLP with ELU that maps the last axis (any batch shape)."""

    net: eqx.nn.MLP

    def __init__(self, sizes: list[int], key: jax.Array) -> None:
        self.net = eqx.nn.MLP(sizes[0], sizes[-1], sizes[1], len(sizes) - 2, jax.nn.elu, key=key)

    def __call__(self, x: jax.Array) -> jax.Array:
        flat = x.reshape(-1, x.shape[-1])
        return jax.vmap(self.net)(flat).reshape(*x.shape[:-1], -1)


class GatedConv(eqx.Module):
    """A 3x3 convolution gated by a second one, ``a(x) * sigmoid(b(x))``, residual where the
    shapes match (see vae.py)."""

    conv: eqx.nn.Conv2d | eqx.nn.ConvTranspose2d
    residual: bool = eqx.field(static=True)

    def __init__(self, cin, cout, stride=1, transpose=False, *, key) -> None:
        self.residual = cin == cout and stride == 1
        if transpose:
            self.conv = eqx.nn.ConvTranspose2d(
                cin, 2 * cout, 3, stride, padding=1, output_padding=stride - 1, key=key
            )
        else:
            self.conv = eqx.nn.Conv2d(cin, 2 * cout, 3, stride, 1, key=key)

    def __call__(self, x):
        a, b = jnp.split(self.conv(x), 2, axis=0)
        return x + a * jax.nn.sigmoid(b) if self.residual else a * jax.nn.sigmoid(b)


class ConvNet(eqx.Module):
    """Gated convolutional encoder or decoder, as `vae.py`'s ``ConvNet`` (any batch shape)."""

    linear: eqx.nn.Linear
    convs: list
    bias: jax.Array | None
    shape: tuple[int, int] = eqx.field(static=True)
    grid: tuple[int, int, int] = eqx.field(static=True)
    decoder: bool = eqx.field(static=True)

    def __init__(self, shape, channels, features, *, key, decoder=False, outputs_per_pixel=1):
        height, width = shape
        if height % 4 or width % 4:
            raise ValueError(f"shape: expected height and width divisible by 4, got {shape}")
        c, grid = channels, (2 * channels, height // 4, width // 4)
        self.shape, self.grid, self.decoder = tuple(shape), grid, decoder
        keys = jax.random.split(key, 7)
        if decoder:
            self.linear = eqx.nn.Linear(features, int(np.prod(grid)), key=keys[0])
            self.bias = jnp.zeros(height * width * outputs_per_pixel)
            self.convs = [
                GatedConv(2 * c, 2 * c, key=keys[1]),
                GatedConv(2 * c, c, 2, transpose=True, key=keys[2]),
                GatedConv(c, c, key=keys[3]),
                GatedConv(c, c, 2, transpose=True, key=keys[4]),
                GatedConv(c, c, key=keys[5]),
                eqx.nn.Conv2d(c, outputs_per_pixel, 1, key=keys[6]),
            ]
        else:
            self.convs = [
                GatedConv(1, c, key=keys[1]),
                GatedConv(c, c, 2, key=keys[2]),
                GatedConv(c, 2 * c, key=keys[3]),
                GatedConv(2 * c, 2 * c, 2, key=keys[4]),
                GatedConv(2 * c, 2 * c, key=keys[5]),
            ]
            self.linear = eqx.nn.Linear(int(np.prod(grid)), features, key=keys[0])
            self.bias = None

    def single(self, x):
        if self.decoder:
            y = jax.nn.elu(self.linear(x)).reshape(self.grid)
            for layer in self.convs:
                y = layer(y)
            return jnp.moveaxis(y, 0, -1).reshape(-1) + self.bias  # pixel-major
        y = x.reshape(1, *self.shape)
        for layer in self.convs:
            y = layer(y)
        return self.linear(y.reshape(-1))

    def __call__(self, x):
        flat = x.reshape(-1, x.shape[-1])
        return jax.vmap(self.single)(flat).reshape(*x.shape[:-1], -1)


class Encoder(eqx.Module):
    net: MLP | ConvNet
    sizes: tuple[int, int, int] = eqx.field(static=True)
    rescale: bool = eqx.field(static=True)

    def __init__(self, pixels, hidden, latent, context, rescale, key, shape=(0, 0), channels=0):
        self.sizes = (latent, latent, context)
        self.rescale = rescale
        out = 2 * latent + context
        self.net = (
            ConvNet(shape, channels, out, key=key)
            if channels
            else MLP([pixels, hidden, hidden, out], key)
        )

    def __call__(self, x):
        x = x / 127.5 - 1.0 if self.rescale else x
        loc, raw, h = jnp.split(self.net(x), np.cumsum(self.sizes)[:2], axis=-1)
        return loc, jax.nn.softplus(raw) + 1e-4, h


def build(
    settings: dict,
    posterior: str,
    key: jax.Array,
    transforms: int = 2,
    channels: int = 0,
    options: dict | None = None,
):
    pixels = int(np.prod(settings["shape"]))
    latent, hidden, kind = settings["latent"], settings["hidden"], settings["likelihood"]
    out = pixels if kind == "bernoulli" else pixels * 3 * MIXTURE
    context = 2 * latent if posterior != "gaussian" else 0
    k1, k2, k3 = jax.random.split(key, 3)
    shape = settings["shape"]
    encoder = Encoder(pixels, hidden, latent, context, kind != "bernoulli", k1, shape, channels)
    decoder = (
        ConvNet(shape, channels, latent, key=k2, decoder=True, outputs_per_pixel=out // pixels)
        if channels
        else MLP([latent, hidden, hidden, out], k2)
    )
    amortized = (
        pfj.AmortizedFlow(
            latent,
            context,
            posterior,
            transforms=transforms,
            key=k3,
            **{"hidden": (hidden, hidden), **(options or {})},
        )
        if posterior != "gaussian"
        else None
    )

    def model(x, beta=1.0):
        dec = eqx_module("decoder", decoder)
        with numpyro.plate("data", x.shape[0]):
            with numpyro.handlers.scale(scale=beta):
                z = numpyro.sample("z", dist.Normal(jnp.zeros(latent), 1.0).to_event(1))
            numpyro.sample("x", likelihood(kind, dec(z)), obs=x)

    def guide(x, beta=1.0):
        loc, scale, h = eqx_module("encoder", encoder)(x)
        if amortized is None:
            q = dist.Normal(loc, scale).to_event(1)
        else:
            q = eqx_module("amortized", amortized)(loc, scale, h)
        with numpyro.plate("data", x.shape[0]), numpyro.handlers.scale(scale=beta):
            numpyro.sample("z", q)

    return model, guide, dict(encoder=encoder, decoder=decoder, amortized=amortized, latent=latent)


def elbo_loss(elbo: Trace_ELBO, model, guide):
    """``(params, key, x) -> negative ELBO summed over x`` (beta = 1)."""
    return lambda params, key, x: elbo.loss(key, params, model, guide, x)


def main(argv: list[str] | None = None) -> dict:
    args, data, epochs, warmup, particles = parse_args(__doc__.split("\n")[0], argv, out=False)
    pixels = int(np.prod(data["shape"]))
    train_x, valid_x, test_x = (jnp.asarray(data[k]) for k in ("train", "valid", "test"))
    print(
        f"{args.dataset}: {len(train_x)} train / {len(valid_x)} valid / {len(test_x)} test "
        f"images of {pixels} pixels, latent {data['latent']}; {epochs} epochs, "
        f"KL warm-up {warmup}"
    )
    results = {}
    for posterior in args.posteriors:
        key = jax.random.key(args.seed)
        model, guide, _ = build(
            data,
            posterior,
            key,
            args.flow_transforms,
            args.channels,
            args.flow_options.get(posterior),
        )
        lr = 1e-3

        def decay(rate: float, flow: bool):  # on the amortized flow's weights, or the rest
            return optax.add_decayed_weights(
                rate, mask=lambda p: {k: k.startswith("amortized") == flow for k in p}
            )

        optimizer = optax.chain(
            optax.scale_by_adamax(),
            decay(args.weight_decay, False),
            decay(args.flow_weight_decay, True),
            optax.scale(-lr),
        )
        svi = SVI(model, guide, numpyro.optim.optax_to_numpyro(optimizer), Trace_ELBO())
        state = svi.init(jax.random.key(args.seed + 1), train_x[:100])
        update = jax.jit(svi.update)
        evaluate = jax.jit(elbo_loss(Trace_ELBO(num_particles=1), model, guide))
        evaluate_test = jax.jit(elbo_loss(Trace_ELBO(num_particles=particles), model, guide))
        rng = np.random.default_rng(args.seed)
        best, best_params, best_epoch = math.inf, None, 0
        start = time.perf_counter()
        for epoch in range(1, epochs + 1):
            beta = min(1.0, epoch / max(1, warmup))
            order = rng.permutation(len(train_x))
            total = 0.0
            for i in range(0, len(order), 100):
                state, loss = update(state, train_x[order[i : i + 100]], beta)
                total += float(loss)
            params = svi.get_params(state)
            valid = float(evaluate(params, jax.random.key(epoch), valid_x)) / len(valid_x)
            if valid < best and beta == 1.0:
                best, best_params, best_epoch = valid, params, epoch
            if epoch % max(1, min(50, epochs // 10)) == 0 or epoch == epochs:
                print(f"  {posterior}: epoch {epoch:4d}  train {total / len(train_x):9.2f}  "
                      f"valid {valid:9.2f}  beta {beta:.2f}")  # fmt: skip
            if beta == 1.0 and epoch - best_epoch > args.patience:
                print(f"  early stop at epoch {epoch} (best validation at {best_epoch})")
                break
        seconds = time.perf_counter() - start
        params = best_params if best_params is not None else svi.get_params(state)
        nats = sum(
            float(evaluate_test(params, jax.random.key(10_000 + i), test_x[i : i + 20]))
            for i in range(0, len(test_x), 20)
        ) / len(test_x)
        results[posterior] = dict(
            nats=nats, bits_per_dim=nats / (pixels * math.log(2)), seconds=seconds,
            best_epoch=best_epoch,
        )  # fmt: skip
    print(f"\ntest negative ELBO ({particles} draws per image), lower is better:")
    print("| posterior | nats / image | bits / dim | best epoch | train time |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['nats']:.2f} | {r['bits_per_dim']:.3f} | {r['best_epoch']} | "
              f"{r['seconds']:.0f} s |")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
