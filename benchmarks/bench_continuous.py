"""Continuous-flow benchmark: pyroflows' `FFJORD` against zuko's `CNF`.

The protocol of the continuous-flows issue: two moons, one continuous block with a vector
field MLP of hidden (64, 64), exact trace, dopri5 at atol = rtol = 1e-4 in both libraries,
batch 256, Adam 5e-3, 300 steps, float32, one torch thread. Both libraries see the same
batches. Reported per run: the wall time of the 300 steps, the mean number of evaluations of
the vector field per training step (forward solve; zuko's, counted by a hook on its MLP,
includes its backward solve), and the held-out NLL of 2000 points, scored by each library's
own flow at a tight tolerance (atol = rtol = 1e-6).

Flow matching: pyroflows' `flow_matching_loss` (straight paths; independent and minibatch-OT
pairing) trains the same vector field with no ODE solve; its held-out NLL is measured every
100 steps (the scoring time is not counted), and the report gives the training time at which
it first reaches zuko's maximum-likelihood NLL.

The JAX backend's jitted maximum-likelihood and flow-matching steps are timed after them,
with their compile times.

Usage:
    python benchmarks/bench_continuous.py            # full run, writes results_continuous.md
    python benchmarks/bench_continuous.py --quick    # smoke test, writes nothing
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
HIDDEN, BATCH, LR, TOL, SCORE_TOL = (64, 64), 256, 5e-3, 1e-4, 1e-6


def moons(n: int, seed: int) -> np.ndarray:
    from sklearn.datasets import make_moons

    x, _ = make_moons(n, noise=0.05, random_state=seed)
    return ((x - np.array([0.5, 0.25])) / np.array([0.87, 0.5])).astype(np.float32)


def batches(data: np.ndarray, steps: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [data[rng.integers(0, len(data), BATCH)] for _ in range(steps)]


# --------------------------------------------------------------------------- torch runs


def pyroflows_flow(tol: float = TOL):
    import pyroflows.pyro as pf

    return pf.FFJORD(2, hidden=HIDDEN, atol=tol, rtol=tol)


def pyroflows_nll(flow, test: torch.Tensor) -> float:
    import pyroflows.pyro as pf

    scorer = pyroflows_flow(SCORE_TOL)
    pf.set_params(scorer, pf.get_params(flow))
    with torch.no_grad():
        return -float(scorer().log_prob(test).mean())


def zuko_flow():
    import zuko

    return zuko.flows.CNF(2, hidden_features=HIDDEN, atol=TOL, rtol=TOL, exact=True)


def zuko_nll(flow, test: torch.Tensor) -> float:
    transform = flow.transform
    saved = transform.atol, transform.rtol
    transform.atol = transform.rtol = SCORE_TOL
    try:
        with torch.no_grad():
            return -float(flow().log_prob(test).mean())
    finally:
        transform.atol, transform.rtol = saved


def run_likelihood(name: str, steps: list[np.ndarray], test: torch.Tensor) -> dict:
    torch.manual_seed(0)
    if name == "pyroflows":
        flow = pyroflows_flow()
        (cnf,) = flow.transforms
        nfe = lambda: cnf.nfe  # noqa: E731
        score = pyroflows_nll
    else:
        flow = zuko_flow()
        calls = [0]
        flow.transform.ode.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        nfe = lambda: calls[0]  # noqa: E731
        score = zuko_nll
    optimizer = torch.optim.Adam(flow.parameters(), lr=LR)
    forward, backward, losses = [], [], []
    start = time.perf_counter()
    for x in steps:
        before = nfe() if name == "zuko" else 0
        optimizer.zero_grad()
        loss = -flow().log_prob(torch.as_tensor(x)).mean()
        after_forward = nfe()
        loss.backward()
        optimizer.step()
        forward.append(after_forward - before)
        # zuko's adjoint evaluates the field again going back; pyroflows backpropagates
        # through the stored solve (no new evaluations)
        backward.append(nfe() - after_forward if name == "zuko" else 0)
        losses.append(float(loss.detach()))
    wall = time.perf_counter() - start
    return {
        "library": name,
        "objective": "likelihood",
        "wall_s": wall,
        "nfe_per_step": float(np.mean(forward)),
        "nfe_backward_per_step": float(np.mean(backward)),
        "final_train_nll": float(np.mean(losses[-20:])),
        "test_nll": score(flow, test),
    }


def run_flow_matching(coupling: str, steps: list[np.ndarray], test, every: int) -> dict:
    import pyroflows.pyro as pf

    torch.manual_seed(0)
    flow = pyroflows_flow()
    optimizer = torch.optim.Adam(flow.parameters(), lr=LR)
    trace, elapsed = [], 0.0
    for i, x in enumerate(steps, start=1):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = pf.flow_matching_loss(flow, torch.as_tensor(x), coupling=coupling)
        loss.backward()
        optimizer.step()
        elapsed += time.perf_counter() - start
        if i % every == 0:
            trace.append({"step": i, "train_s": elapsed, "test_nll": pyroflows_nll(flow, test)})
    return {
        "library": "pyroflows",
        "objective": f"flow matching ({coupling})",
        "wall_s": elapsed,
        "trace": trace,
        "test_nll": trace[-1]["test_nll"],
    }


# --------------------------------------------------------------------------- JAX runs


def run_jax(steps: list[np.ndarray], test: np.ndarray, objective: str) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    import pyroflows.numpyro as pfj

    flow = pfj.FFJORD(2, hidden=HIDDEN, atol=TOL, rtol=TOL, key=jax.random.key(0))
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    optimizer = optax.adam(LR)
    state = optimizer.init(params)

    def loss_fn(p, x, key):
        model = eqx.combine(p, static)
        if objective == "likelihood":
            return -model().log_prob(x).mean()
        return pfj.flow_matching_loss(model, x, key=key)

    @jax.jit
    def step(p, s, x, key):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, key)
        updates, s = optimizer.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    key = jax.random.key(1)
    start = time.perf_counter()
    params, state, loss = step(params, state, jnp.asarray(steps[0]), key)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for i, x in enumerate(steps[1:], start=1):
        params, state, loss = step(params, state, jnp.asarray(x), jax.random.fold_in(key, i))
    jax.block_until_ready(loss)
    per_step = (time.perf_counter() - start) / max(1, len(steps) - 1)
    scorer = pfj.FFJORD(2, hidden=HIDDEN, atol=SCORE_TOL, rtol=SCORE_TOL, key=jax.random.key(0))
    scorer = pfj.set_params(scorer, pfj.get_params(eqx.combine(params, static)))
    nll = -float(eqx.filter_jit(lambda f, x: f().log_prob(x).mean())(scorer, jnp.asarray(test)))
    return {
        "library": "pyroflows-jax",
        "objective": objective,
        "compile_s": compile_s,
        "ms_per_step": 1000 * per_step,
        "wall_s": compile_s + per_step * (len(steps) - 1),
        "test_nll": nll,
    }


# --------------------------------------------------------------------------- report


def report(results: list[dict], meta: dict) -> str:
    zuko = next(r for r in results if r["library"] == "zuko")
    ours = next(
        r for r in results if r["library"] == "pyroflows" and r["objective"] == "likelihood"
    )
    lines = [
        "# Continuous flows: pyroflows FFJORD vs zuko CNF (two moons)",
        "",
        f"{meta['steps']} steps, batch {BATCH}, Adam {LR}, dopri5 atol = rtol = {TOL}, exact "
        f"trace, hidden {HIDDEN}, float32, one torch thread; held-out NLL of 2000 points at "
        f"atol = rtol = {SCORE_TOL}. {meta['versions']}",
        "",
        "| library | objective | wall time (s) | NFE per step, forward + backward | "
        "held-out NLL (nats) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        if "nfe_per_step" in r:
            nfe = f"{r['nfe_per_step']:.0f} + {r['nfe_backward_per_step']:.0f}"
        else:
            nfe = "n/a" if r["objective"] == "likelihood" else "0 (no solve)"
        lines.append(
            f"| {r['library']} | {r['objective']} | {r['wall_s']:.1f} | {nfe} | "
            f"{r['test_nll']:.3f} |"
        )
    lines += [
        "",
        f"Maximum likelihood: pyroflows / zuko wall time {zuko['wall_s'] / ours['wall_s']:.2f}x "
        f"faster, held-out NLL {ours['test_nll']:.3f} vs {zuko['test_nll']:.3f}.",
        "",
    ]
    for r in results:
        if "trace" not in r:
            continue
        reached = next((t for t in r["trace"] if t["test_nll"] <= zuko["test_nll"]), None)
        when = (
            f"reaches zuko's NLL {zuko['test_nll']:.3f} after {reached['step']} steps, "
            f"{reached['train_s']:.1f} s of training"
            if reached
            else f"does not reach zuko's NLL {zuko['test_nll']:.3f} in "
            f"{r['trace'][-1]['step']} steps"
        )
        points = ", ".join(f"{t['step']}: {t['test_nll']:.3f}" for t in r["trace"])
        lines.append(f"- {r['objective']}: {when} (held-out NLL by step: {points}).")
    jax_rows = [r for r in results if r["library"] == "pyroflows-jax"]
    if jax_rows:
        lines += [
            "",
            "| JAX backend | compile (s) | ms per step | held-out NLL |",
            "|---|---:|---:|---:|",
        ]
        for r in jax_rows:
            lines.append(
                f"| {r['objective']} | {r['compile_s']:.1f} | {r['ms_per_step']:.1f} | "
                f"{r['test_nll']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few steps, write nothing")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--matching-steps", type=int, default=3000)
    parser.add_argument("--no-jax", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = 4 if args.quick else args.steps
    matching_steps = 4 if args.quick else args.matching_steps
    every = 2 if args.quick else 100
    train = moons(20_000, seed=0)
    test_np = moons(2_000, seed=1)
    test = torch.as_tensor(test_np)
    ml_batches = batches(train, steps, seed=2)
    fm_batches = batches(train, matching_steps, seed=3)
    results = [run_likelihood(name, ml_batches, test) for name in ("pyroflows", "zuko")]
    for coupling in ("independent", "ot"):
        results.append(run_flow_matching(coupling, fm_batches, test, every))
    if not args.no_jax:
        results.append(run_jax(ml_batches, test_np, "likelihood"))
        results.append(run_jax(fm_batches, test_np, "flow_matching"))
    versions = ", ".join(
        f"{p} {version(p)}" for p in ("torch", "torchdiffeq", "zuko", "jax", "diffrax")
    )
    meta = {"steps": steps, "versions": versions, "machine": platform.platform()}
    text = report(results, meta)
    print(text)
    if not args.quick:
        (HERE / "results_continuous.json").write_text(
            json.dumps({"meta": meta, "results": results}, indent=1)
        )
        (HERE / "results_continuous.md").write_text(text)


if __name__ == "__main__":
    main()
