"""Residual-flow benchmark: pyroflows' `ResidualFlow` against normflows' residual flow.

The protocol of the residual-flows issue: two moons, 6 residual blocks with hidden (64, 64),
Lipschitz bound 0.9, the unbiased (Russian-roulette) log-det estimator, an `ActNorm` after
each block, batch 256, Adam 1e-3, float32. normflows is run as its documentation shows,
with ``update_lipschitz`` after every optimiser step (pyroflows refines its spectral norms
inside the training-mode call, with nothing to call). Both libraries get the same batches
and seed, and their steps are interleaved in rounds so that drift in the machine's speed
hits both alike; the report gives the median milliseconds per training step and the
interquartile range. The JAX backend's jitted step (`pyroflows.numpyro`, with fresh keys
and refined Lipschitz vectors every step, as `pyroflows.numpyro.fit` does) is timed after
them, with its compile time.

After training, every flow is scored exactly on 2000 held-out points: pyroflows by copying
its parameters into a ``logdet="exact"`` flow (`get_params` / `set_params`), normflows by the
log-determinant of the autodiff Jacobian of its data -> base map (two backward passes in 2-D).

Usage:
    python benchmarks/bench_residual.py            # full run, writes results_residual.md
    python benchmarks/bench_residual.py --quick    # smoke test, writes nothing
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
BLOCKS, HIDDEN, LIPSCHITZ, BATCH, LR = 6, (64, 64), 0.9, 256, 1e-3
#: pyroflows runs with its default LipSwish (fixed slope) and with ELU; normflows has only
#: its LipSwish with a learnt slope per layer.
ACTIVATIONS = ("lipswish", "elu")


def moons(n: int, seed: int) -> np.ndarray:
    from sklearn.datasets import make_moons

    x, _ = make_moons(n, noise=0.05, random_state=seed)
    return ((x - np.array([0.5, 0.25])) / np.array([0.87, 0.5])).astype(np.float32)


# --------------------------------------------------------------------------- the flows
def pyroflows_flow(activation: str):
    import pyroflows.pyro as pf

    return pf.ResidualFlow(
        2, transforms=BLOCKS, hidden=HIDDEN, lipschitz=LIPSCHITZ, activation=activation
    )


def normflows_flow():
    import normflows as nf

    flows = []
    for _ in range(BLOCKS):
        net = nf.nets.LipschitzMLP([2, *HIDDEN, 2], lipschitz_const=LIPSCHITZ, init_zeros=True)
        flows += [nf.flows.Residual(net, reduce_memory=True), nf.flows.ActNorm(2)]
    return nf.NormalizingFlow(nf.distributions.DiagGaussian(2, trainable=False), flows)


def pyroflows_step(flow, optimizer):
    def step(x):
        optimizer.zero_grad()
        loss = -flow().log_prob(x).mean()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def normflows_step(flow, optimizer):
    import normflows as nf

    def step(x):
        optimizer.zero_grad()
        loss = flow.forward_kld(x)
        loss.backward()
        optimizer.step()
        nf.utils.update_lipschitz(flow, 50)
        return float(loss.detach())

    return step


# --------------------------------------------------------------------------- exact scores
def pyroflows_exact_nll(flow, x: torch.Tensor, activation: str) -> float:
    import pyroflows.pyro as pf

    exact = pf.ResidualFlow(2, transforms=BLOCKS, hidden=HIDDEN, lipschitz=LIPSCHITZ,
                            logdet="exact", activation=activation)  # fmt: skip
    pf.set_params(exact, pf.get_params(flow))
    exact.eval()
    with torch.no_grad():
        return float(-exact().log_prob(x).mean())


def normflows_exact_nll(flow, x: torch.Tensor) -> float:
    import normflows as nf

    flow.eval()
    nf.utils.update_lipschitz(flow, 200)
    for p in flow.parameters():
        p.requires_grad_(False)
    x = x.clone().requires_grad_(True)
    z = x
    for layer in reversed(flow.flows):
        z, _ = layer.inverse(z)
    rows = [torch.autograd.grad(z[:, i].sum(), x, retain_graph=True)[0] for i in range(2)]
    log_det = torch.linalg.slogdet(torch.stack(rows, 1))[1]
    base = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
    return float(-(base + log_det).mean())


# --------------------------------------------------------------------------- JAX
def jax_run(train: np.ndarray, test: np.ndarray, steps: int, seed: int, activation: str) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    import pyroflows.numpyro as pfj

    flow = pfj.ResidualFlow(2, transforms=BLOCKS, hidden=HIDDEN, lipschitz=LIPSCHITZ,
                            activation=activation, key=jax.random.key(seed))  # fmt: skip
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    optimizer = optax.adam(LR)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state, x, key):
        def loss_fn(p):
            f = pfj.with_key(eqx.combine(p, static), key)
            return -jnp.mean(f().log_prob(x))

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = optimizer.update(grads, state, params)
        params = eqx.apply_updates(params, updates)
        refined = pfj.refine_lipschitz(eqx.combine(params, static))
        return eqx.filter(refined, eqx.is_inexact_array), state, loss

    rng = np.random.default_rng(seed)
    batches = [jnp.asarray(train[rng.integers(0, len(train), BATCH)]) for _ in range(steps)]
    t0 = time.perf_counter()
    params, state, loss = step(params, state, batches[0], jax.random.key(0))
    loss.block_until_ready()
    compile_s = time.perf_counter() - t0
    times = []
    for i, x in enumerate(batches[1:], 1):
        t0 = time.perf_counter()
        params, state, loss = step(params, state, x, jax.random.fold_in(jax.random.key(1), i))
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    trained = eqx.combine(params, static)
    exact = pfj.ResidualFlow(2, transforms=BLOCKS, hidden=HIDDEN, lipschitz=LIPSCHITZ,
                             logdet="exact", activation=activation,
                             key=jax.random.key(seed))  # fmt: skip
    exact = pfj.set_params(exact, pfj.get_params(trained))
    nll = float(-jnp.mean(exact().log_prob(jnp.asarray(test))))
    return {"ms": _summary(times), "compile_s": compile_s, "test_nll": nll}


def _summary(times: list[float]) -> dict:
    ms = sorted(1000 * t for t in times)
    q = statistics.quantiles(ms, n=4)
    return {"median": statistics.median(ms), "iqr": q[2] - q[0], "n": len(ms)}


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results_residual.md")
    args = parser.parse_args()
    steps = 20 if args.quick else args.steps
    torch.set_num_threads(args.threads)
    train, test = moons(20000, args.seed), moons(2000, args.seed + 1)
    rng = np.random.default_rng(args.seed)
    batches = [torch.as_tensor(train[rng.integers(0, len(train), BATCH)]) for _ in range(steps)]

    torch.manual_seed(args.seed)
    flows = {f"pyroflows ({a})": pyroflows_flow(a) for a in ACTIVATIONS}
    flows["normflows (LipSwish)"] = normflows_flow()
    steppers = {
        name: (normflows_step if name.startswith("normflows") else pyroflows_step)(
            flow, torch.optim.Adam(flow.parameters(), lr=LR)
        )
        for name, flow in flows.items()
    }
    times: dict[str, list[float]] = {name: [] for name in flows}
    losses: dict[str, list[float]] = {name: [] for name in flows}
    for i, x in enumerate(batches):  # interleaved: one step of each library per round
        for name, step in steppers.items():
            t0 = time.perf_counter()
            losses[name].append(step(x))
            if i >= 5:  # warm-up steps are not timed
                times[name].append(time.perf_counter() - t0)
    x_test = torch.as_tensor(test)
    results = {}
    for a in ACTIVATIONS:
        name = f"pyroflows ({a})"
        results[name] = {
            "ms": _summary(times[name]),
            "train_loss_last_100": float(np.mean(losses[name][-100:])),
            "test_nll": pyroflows_exact_nll(flows[name], x_test, a),
        }
    name = "normflows (LipSwish)"
    results[name] = {
        "ms": _summary(times[name]),
        "train_loss_last_100": float(np.mean(losses[name][-100:])),
        "test_nll": normflows_exact_nll(flows[name], x_test),
    }
    for a in ACTIVATIONS:
        results[f"pyroflows JAX, jitted ({a})"] = jax_run(train, test, steps, args.seed, a)
    ref = results[name]["ms"]["median"]
    lines = [
        "| library | ms / step (IQR) | normflows / this | exact test NLL (nats) | compile |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        compile_s = f"{r['compile_s']:.1f} s" if "compile_s" in r else ""
        lines.append(
            f"| {name} | {r['ms']['median']:.2f} ({r['ms']['iqr']:.2f}) | "
            f"{ref / r['ms']['median']:.2f}x | {r['test_nll']:.4f} | {compile_s} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.quick:
        return
    meta = {
        "steps": steps,
        "seed": args.seed,
        "threads": args.threads,
        "torch": torch.__version__,
        "normflows": version("normflows"),
        "jax": version("jax"),
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    header = (
        f"# ResidualFlow vs normflows (two moons, {BLOCKS} blocks, hidden {HIDDEN}, "
        f"Lipschitz {LIPSCHITZ}, unbiased log-det, batch {BATCH}, Adam {LR}, float32, "
        f"{steps} steps, {args.threads} torch thread(s))\n\n"
    )
    args.out.write_text(header + table + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, **results}, indent=1))


if __name__ == "__main__":
    main()
