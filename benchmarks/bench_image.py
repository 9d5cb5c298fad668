"""Image-flow benchmark: pyroflows' `Glow` against normflows' `MultiscaleFlow` + `GlowBlock`.

The protocol of the image-flows issue: scikit-learn's digits as ``(1, 8, 8)`` images (17
levels), Glow with 2 levels x 4 steps, 64 hidden channels, channel-split affine couplings,
batch 64, Adam 1e-3, float32, the same number of epochs for every model.

Data and preprocessing, the same for every model: the split of ``examples/digits.py``
(1300 training images, 297 test images; its 200 validation images are not used), fresh
uniform dequantization ``(x + u) / 17`` of the training set every epoch and a fresh random
order (one torch generator, so every model sees the same batches; the last 20 images of
each shuffled epoch are dropped, so every step has 64 images), then logit preprocessing
``logit(0.05 + 0.9 y)`` whose log-determinant is part of every density: pyroflows puts
``Reshape`` + ``Logit(64, alpha=0.05)`` after the image flow, as ``examples/digits.py``
does, normflows gets its own ``nf.transforms.Logit(alpha=0.05)`` as the ``transform`` of
``MultiscaleFlow`` (the same map and log-determinant; checked at start-up). Every density
is therefore one of dequantized images in ``[0, 1]^64``, and test bits/dim are
``pf.bits_per_dim`` of the log-density averaged over 10 fixed dequantization draws of
each test image (the protocol of ``examples/digits.py``).

The models:

* pyroflows ``Glow((1, 8, 8), levels=2, steps=4, hidden=64, blocks=b)`` for ``b`` = 0 and
  1, in both backends. Its conditioners are conv ResNets: ``blocks=0`` is a 3x3 conv to
  64 channels and a 3x3 conv out (the nearest to normflows' conditioner in size),
  ``blocks=1`` (the default, ``examples/digits.py --model glow``) adds one residual block
  of two 3x3 convs with 64 channels. Its split prior is a conv-conditioned affine map of
  the factored-out half.
* normflows 1.7.3 built as its Glow example builds it, at the same size: per level 4
  ``GlowBlock(channels, 64, split_mode="channel", scale=True)`` (its defaults: conditioner
  3x3 conv, 1x1 conv, 3x3 conv with 64 hidden channels, sigmoid scale, LU 1x1
  convolution, ActNorm) and a ``Squeeze``, the levels joined by ``Merge``, and a
  ``GlowBase`` (learnt per-channel mean and scale) for each level's latent; unconditional
  (``class_cond=False``).

Measured in one run, interleaved: every round, each model takes one training step on the
same batch (the models in a fresh random order every round), timed with
``time.perf_counter`` around ``zero_grad``, ``-log_prob(batch).mean()``, ``backward``
and ``optimizer.step`` (``torch.optim.Adam(lr=1e-3, foreach=True)`` for every torch
model, as in ``bench_torch.py``), and around one jitted ``value_and_grad`` + ``optax.adam``
update + read-back of the loss in JAX (compiled ahead of time: the compile time is reported
on its own). The first epoch is warm-up; the report gives the median milliseconds per step
over the other epochs with the interquartile range. Threads: ``--threads`` torch threads,
and with one thread also one XLA thread; ``OPENBLAS_NUM_THREADS`` is set to 1 (unless set
already) because JAX's CPU triangular solves (in its ``Conv1x1``) call scipy's OpenBLAS,
whose threads fight XLA's for the 2 cores of the development machine (a solve then takes
milliseconds instead of microseconds; torch's solves use MKL and are not affected).

ActNorm layers are initialised from the first training batch in every model (torch's and
normflows' on their first pass, JAX's by ``pfj.initialize_actnorm``).

Usage:
    python benchmarks/bench_image.py            # full run, writes results_image.md / .json
    python benchmarks/bench_image.py --quick    # smoke test, writes nothing
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads OpenBLAS

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
SHAPE, DIMS, PIXEL_LEVELS, ALPHA = (1, 8, 8), 64, 17, 0.05
LEVELS, STEPS, HIDDEN, BATCH, LR = 2, 4, 64, 64, 1e-3
SPLIT = (1300, 200)  # train, validation (unused) of examples/digits.py; 297 test images
EVAL_DRAWS = 10
BLOCKS = (0, 1)  # residual blocks of pyroflows' conditioners: nearest size, default


@dataclass
class Model:
    """One model under test: a training step, a scorer and its bookkeeping."""

    name: str
    library: str
    tag: str  # short name for the progress lines
    params: int
    step: Callable  # (numpy batch (64, 64)) -> float loss
    log_prob: Callable  # (numpy draws (D, n, 64)) -> numpy (D, n)
    compile_s: float | None = None
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    trace: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- data
def load_splits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits (values 0..16) split as ``examples/digits.py`` splits them: train, test."""
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().data, dtype=torch.float32)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    images = images[order]
    n_train, n_val = SPLIT
    return images[:n_train], images[n_train + n_val :]


def epoch_batches(train: torch.Tensor, generator: torch.Generator) -> list[np.ndarray]:
    """One epoch: a fresh dequantization, a fresh order, full batches of 64."""
    import pyroflows.pyro as pf

    data = pf.dequantize(train, levels=PIXEL_LEVELS, generator=generator)
    order = torch.randperm(train.shape[0], generator=generator)
    n = train.shape[0] // BATCH * BATCH
    return [data[order[i : i + BATCH]].numpy() for i in range(0, n, BATCH)]


def bits(log_prob: np.ndarray) -> tuple[float, float]:
    """Mean test bits/dim (log-density averaged over the draws first) and its std. error."""
    per_image = -(log_prob.mean(0) - DIMS * math.log(PIXEL_LEVELS)) / (DIMS * math.log(2))
    return float(per_image.mean()), float(per_image.std(ddof=1) / math.sqrt(per_image.size))


# --------------------------------------------------------------------------- torch models
def pyroflows_torch(blocks: int, device: torch.device) -> Model:
    import pyroflows.pyro as pf

    image = pf.Glow(SHAPE, levels=LEVELS, steps=STEPS, hidden=HIDDEN, blocks=blocks)
    flow = pf.Flow([*image.transforms, pf.Reshape((DIMS,), SHAPE), pf.Logit(DIMS, alpha=ALPHA)])
    flow.to(device)
    optimizer = torch.optim.Adam(flow.parameters(), lr=LR, foreach=True)

    def step(x: np.ndarray) -> float:
        batch = torch.as_tensor(x, device=device)
        optimizer.zero_grad()
        loss = -flow().log_prob(batch).mean()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def log_prob(draws: np.ndarray) -> np.ndarray:
        flow.eval()
        with torch.no_grad():
            out = flow().log_prob(torch.as_tensor(draws, device=device)).cpu().numpy()
        flow.train()
        return out

    params = sum(p.numel() for p in flow.parameters())
    label = "default" if blocks == 1 else "nearest normflows' size"
    name = f"pyroflows Glow, blocks={blocks} ({label})"
    return Model(name, "pyroflows-torch", f"torch b{blocks}", params, step, log_prob)


def normflows_model():
    import normflows as nf

    channels = SHAPE[0]
    q0, merges, flows = [], [], []
    for i in range(LEVELS):  # level 0 is the innermost (base side), as in normflows' example
        level_channels = channels * 2 ** (LEVELS + 1 - i)
        level = [
            nf.flows.GlowBlock(level_channels, HIDDEN, split_mode="channel", scale=True)
            for _ in range(STEPS)
        ]
        flows.append([*level, nf.flows.Squeeze()])
        if i > 0:
            merges.append(nf.flows.Merge())
            side = SHAPE[1] // 2 ** (LEVELS - i)
            latent = (channels * 2 ** (LEVELS - i), side, side)
        else:
            side = SHAPE[1] // 2**LEVELS
            latent = (channels * 2 ** (LEVELS + 1), side, side)
        q0.append(nf.distributions.GlowBase(latent))
    transform = nf.transforms.Logit(alpha=ALPHA)
    return nf.MultiscaleFlow(q0, flows, merges, transform=transform, class_cond=False)


def normflows_torch(device: torch.device) -> Model:
    with warnings.catch_warnings():  # normflows' LU set-up calls torch's deprecated torch.lu
        warnings.simplefilter("ignore")
        model = normflows_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, foreach=True)

    def step(x: np.ndarray) -> float:
        batch = torch.as_tensor(x, device=device).view(-1, *SHAPE)
        optimizer.zero_grad()
        loss = model.forward_kld(batch)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def log_prob(draws: np.ndarray) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            images = torch.as_tensor(draws, device=device).reshape(-1, *SHAPE)
            out = model.log_prob(images, None).reshape(draws.shape[:-1]).cpu().numpy()
        model.train()
        return out

    params = sum(p.numel() for p in model.parameters())
    name = "normflows MultiscaleFlow + GlowBlock"
    return Model(name, "normflows", "normflows", params, step, log_prob)


def check_logit() -> float:
    """Largest difference between the two libraries' logit maps + log-dets on a batch."""
    import normflows as nf

    import pyroflows.pyro as pf

    y = torch.rand(256, DIMS, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours, ours_ld = pf.Logit(DIMS, alpha=ALPHA).double().inverse_and_log_det(y)
    theirs, theirs_ld = nf.transforms.Logit(alpha=ALPHA).inverse(y.view(-1, *SHAPE))
    gap = max(
        float((ours - theirs.reshape(-1, DIMS)).abs().max()),
        float((ours_ld - theirs_ld).abs().max()),
    )
    if gap > 1e-9:
        raise AssertionError(f"the logit preprocessing differs between the libraries: {gap}")
    return gap


# --------------------------------------------------------------------------- JAX models
def pyroflows_jax(blocks: int, first_batch: np.ndarray, seed: int) -> Model:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    import pyroflows.numpyro as pfj

    image = pfj.Glow(
        SHAPE, levels=LEVELS, steps=STEPS, hidden=HIDDEN, blocks=blocks, key=jax.random.key(seed)
    )
    flow = pfj.Flow([*image.transforms, pfj.Reshape((DIMS,), SHAPE), pfj.Logit(DIMS, alpha=ALPHA)])
    flow = pfj.initialize_actnorm(flow, jnp.asarray(first_batch))
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    optimizer = optax.adam(LR)
    state = optimizer.init(params)

    def train_step(p, s, x):
        def loss_fn(p):
            return -eqx.combine(p, static)().log_prob(x).mean()

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    start = time.perf_counter()
    compiled = jax.jit(train_step).lower(params, state, jnp.asarray(first_batch)).compile()
    compile_s = time.perf_counter() - start
    score = jax.jit(lambda p, x: eqx.combine(p, static)().log_prob(x))
    current = {"params": params, "state": state}

    def step(x: np.ndarray) -> float:
        current["params"], current["state"], loss = compiled(
            current["params"], current["state"], jnp.asarray(x)
        )
        return float(loss)

    def log_prob(draws: np.ndarray) -> np.ndarray:
        return np.asarray(score(current["params"], jnp.asarray(draws)))

    count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    label = "default" if blocks == 1 else "nearest normflows' size"
    name = f"pyroflows JAX Glow, blocks={blocks} ({label})"
    return Model(name, "pyroflows-jax", f"jax b{blocks}", count, step, log_prob, compile_s)


# --------------------------------------------------------------------------- report
def summary(times: list[float]) -> dict:
    ms = sorted(1000 * t for t in times)
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {"median": statistics.median(ms), "iqr": q[2] - q[0], "n": len(ms)}


def report(results: dict, meta: dict) -> str:
    ref = results["normflows MultiscaleFlow + GlowBlock"]
    ref_ms, ref_bits = ref["ms"]["median"], ref["test_bits"]
    lines = [
        f"# Glow vs normflows (digits (1, 8, 8), {LEVELS} levels x {STEPS} steps, {HIDDEN} "
        f"hidden channels, channel split, batch {BATCH}, Adam {LR}, float32, "
        f"{meta['epochs']} epochs = {meta['steps']} steps, {meta['threads']} thread(s), "
        f"{meta['device']})",
        "",
        f"Digits split as in `examples/digits.py` (seed {meta['seed']}: 1300 training images, "
        f"297 test images), uniform dequantization into [0, 1] (fresh every epoch, the same "
        f"batches for every model, {meta['steps_per_epoch']} full batches an epoch), logit "
        f"preprocessing `logit({ALPHA} + {1 - 2 * ALPHA:g} y)` with its log-det inside every "
        f"density (pyroflows: `Reshape` + `Logit` after the flow; normflows: its own "
        f"`transforms.Logit` as `MultiscaleFlow`'s transform; the two agree to "
        f"{meta['logit_check_max_diff']:.0e} in float64). Test bits/dim: `bits_per_dim` of the "
        f"log-density averaged over {EVAL_DRAWS} fixed dequantization draws per test image, "
        f"after the last epoch. Steps interleaved, the models in a fresh random order every "
        f"round; median over all steps after the first epoch. torch "
        f"`Adam(lr={LR}, foreach=True)`, JAX `optax.adam({LR})` in one jitted step "
        f"(compile time separate). "
        f"OPENBLAS_NUM_THREADS={meta['openblas_threads']}, XLA_FLAGS='{meta['xla_flags']}'. "
        f"{meta['machine']}, {meta['cpus']} logical CPUs, {meta['date']}. "
        + (
            "No GPU: images / s are CPU numbers (64 / step time)."
            if meta["device"] == "cpu"
            else f"torch models on {meta['device']}."
        ),
        "",
        "| model | parameters | ms / step (IQR) | images / s | normflows / this | "
        "test bits/dim (s.e.) | compile (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        ms = r["ms"]["median"]
        compile_s = f"{r['compile_s']:.1f}" if r.get("compile_s") is not None else ""
        lines.append(
            f"| {name} | {r['params']:,} | {ms:.2f} ({r['ms']['iqr']:.2f}) | "
            f"{1000 * BATCH / ms:.0f} | {ref_ms / ms:.2f}x | "
            f"{r['test_bits']:.4f} ({r['test_bits_se']:.4f}) | {compile_s} |"
        )
    lines += [
        "",
        "Target: at least 1.5x faster per step at no worse test bits/dim "
        "(within 0.02) than normflows:",
        "",
    ]
    for name, r in results.items():
        if r["library"] == "normflows":
            continue
        speed = ref_ms / r["ms"]["median"]
        gap = r["test_bits"] - ref_bits
        met = speed >= 1.5 and gap <= 0.02
        lines.append(
            f"- {name}: {speed:.2f}x, bits/dim {gap:+.4f} against normflows: "
            f"{'met' if met else '**not met**'}"
        )
    lines += ["", "Test bits/dim by epoch:", ""]
    epochs = [t["epoch"] for t in next(iter(results.values()))["trace"]]
    lines.append("| model | " + " | ".join(str(e) for e in epochs) + " |")
    lines.append("|---|" + "---:|" * len(epochs))
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{t['bits']:.3f}" for t in r["trace"]) + " |")
    lines += ["", meta["versions"], ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=10, help="epochs between test scores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="torch device of the torch models")
    parser.add_argument("--no-jax", action="store_true")
    parser.add_argument("--quick", action="store_true", help="2 epochs, writes nothing")
    parser.add_argument("--out", type=Path, default=HERE / "results_image.md")
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs
    every = 1 if args.quick else args.eval_every
    if args.threads == 1:  # one XLA thread too (read when JAX starts its CPU backend)
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    logit_gap = check_logit()

    train, test = load_splits(args.seed)
    import pyroflows.pyro as pf

    eval_generator = torch.Generator().manual_seed(args.seed + 1)
    test_draws = torch.stack(
        [
            pf.dequantize(test, levels=PIXEL_LEVELS, generator=eval_generator)
            for _ in range(EVAL_DRAWS)
        ]
    ).numpy()
    generator = torch.Generator().manual_seed(args.seed)
    first_epoch = epoch_batches(train, generator)

    torch.manual_seed(args.seed)
    models = [pyroflows_torch(b, device) for b in BLOCKS] + [normflows_torch(device)]
    if not args.no_jax:
        models += [pyroflows_jax(b, first_epoch[0], args.seed) for b in BLOCKS]
    for m in models:
        compiled = f", compiled in {m.compile_s:.1f} s" if m.compile_s is not None else ""
        print(f"{m.name}: {m.params:,} parameters{compiled}", flush=True)

    steps, shuffle = 0, np.random.default_rng(args.seed)
    for epoch in range(epochs):
        batches = first_epoch if epoch == 0 else epoch_batches(train, generator)
        for x in batches:
            # interleaved, in a fresh random order every round: no model always follows the
            # same one (a step can leave the caches cold or another runtime's threads busy)
            for k in shuffle.permutation(len(models)):
                m = models[k]
                start = time.perf_counter()
                m.losses.append(m.step(x))
                if epoch > 0:  # the first epoch is warm-up
                    m.times.append(time.perf_counter() - start)
            steps += 1
        if (epoch + 1) % every == 0 or epoch == epochs - 1:
            for m in models:
                b, _ = bits(m.log_prob(test_draws))
                m.trace.append({"epoch": epoch + 1, "bits": b})
            text = ", ".join(f"{m.tag} {m.trace[-1]['bits']:.3f}" for m in models)
            print(f"epoch {epoch + 1}/{epochs}: test bits/dim {text}", flush=True)

    results = {}
    per_epoch = len(first_epoch)
    for m in models:
        b, se = bits(m.log_prob(test_draws))
        train_loss = float(np.mean(m.losses[-per_epoch:]))
        results[m.name] = {
            "library": m.library,
            "params": m.params,
            "ms": summary(m.times),
            "compile_s": m.compile_s,
            "test_bits": b,
            "test_bits_se": se,
            "train_bits_last_epoch": float(
                pf.bits_per_dim(torch.tensor(-train_loss), DIMS, PIXEL_LEVELS)
            ),
            "trace": m.trace,
        }
    packages = ["torch", "normflows", "jax", "equinox", "optax"]
    meta = {
        "epochs": epochs,
        "steps": steps,
        "steps_per_epoch": per_epoch,
        "seed": args.seed,
        "threads": args.threads,
        "device": str(device),
        "logit_check_max_diff": logit_gap,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": ", ".join(f"{p} {version(p)}" for p in packages),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }
    text = report(results, meta)
    print(text)
    if args.quick:
        return
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, **results}, indent=1))


if __name__ == "__main__":
    main()
