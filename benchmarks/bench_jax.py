"""Training-step benchmark: pyroflows (NumPyro backend) against FlowJAX and NumPyro's IAF.

The JAX twin of ``bench_torch.py``. Builds MAF, NSF (autoregressive and coupling), RealNVP
and IAF at the same size in each library and measures, for one jitted training step

    loss, grads = jax.value_and_grad(mean NLL)(params, batch, key)
    updates, opt_state = optax.adam(1e-3).update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

(1) the compile time: wall time of ``jax.jit(step).lower(...).compile()`` (tracing,
lowering and XLA compilation) for a fresh Python function each time, so that no jit cache
is hit; the median of ``--compile-reps`` compilations is reported; and (2) the median
milliseconds per step of the compiled step (``block_until_ready`` on the loss after every
step). Every library gets the same batches (standard normal samples pushed through a fixed
random linear mixing with unit-norm rows, as in ``bench_torch.py``), the same seed and
the same ``optax.adam``. Steps of the libraries are interleaved in rounds so that drift in
the machine's speed hits all of them alike; each configuration warms up, then is timed
for at least ``--steps`` steps and ``--min-time`` seconds per library.

The density goes through each library's public API, as a training loop would call it:
``flow().log_prob(x)`` for pyroflows (the distribution is rebuilt inside the step) and
``paramax.unwrap(eqx.combine(params, static)).log_prob(x)`` for FlowJAX (as its
``fit_to_data`` loss does). Trainable parameters are the inexact arrays of the model; the
base distribution is held fixed in both (FlowJAX's is wrapped in ``paramax.non_trainable``).

Architectures (features D, 5 transforms, hidden (64, 64), ReLU):

* MAF: MADE conditioners, affine transformer. pyroflows ``pfj.MAF`` (alternating natural
  and reversed orders); FlowJAX ``masked_autoregressive_flow`` with its default affine
  transformer (softplus scale with a minimum of 0.01) and a random ``Permute`` per layer.
* NSF: autoregressive MADE conditioners, rational-quadratic splines on [-5, 5] with
  identity tails. pyroflows ``pfj.NSF(mode="autoregressive")`` with 8 bins (23 parameters
  per feature); FlowJAX ``masked_autoregressive_flow`` with
  ``RationalQuadraticSpline(knots=8, interval=5)`` (8 inner knots = 9 bins, 28 parameters
  per feature; ``--knots`` changes it).
* NSF-coupling: the same splines in coupling layers. ``pfj.NSF(mode="coupling")``
  (alternating even/odd masks); FlowJAX ``coupling_flow`` (first D // 2 features pass
  through, a random permutation after each layer).
* RealNVP: affine coupling with an MLP conditioner. ``pfj.RealNVP``; FlowJAX
  ``coupling_flow`` with its default affine transformer.
* IAF: inverse autoregressive flow, scored on its own samples (the variational-inference
  use: NumPyro's ELBOs score a guide's samples with the intermediates of
  ``sample_with_intermediates``, so no sequential inverse runs). The loss is the mean
  ``-log q(x)`` of ``batch`` reparameterised samples ``x`` (a fresh key every step; the
  data batch is not used). pyroflows ``pfj.IAF`` and NumPyro's
  ``InverseAutoregressiveTransform`` (``numpyro.nn.AutoregressiveNN`` with hidden (64, 64)
  and a ``PermuteTransform`` reversal between layers, as ``AutoIAFNormal`` builds it), both
  through ``d.sample_with_intermediates(key, (batch,))`` and ``d.log_prob(x, intermediates)``;
  FlowJAX ``masked_autoregressive_flow(invert=False)`` through ``sample_and_log_prob``
  (one forward pass as well, but with one random key per sample).

The libraries differ in how they bound the scale (tanh soft clamp, softplus with a minimum,
clipping), in initialisation and in how they permute features; the parameter counts are
printed so that the matching sizes are visible. pyroflows runs runs of identical layers with
``jax.lax.scan`` and FlowJAX with its ``Scan`` bijection, so their compile times should
barely grow with the number of layers; the script also compiles every model at
``--scaling-transforms`` layers (default 20) to show it. NumPyro's IAF is a Python loop
over layers.

Usage:
    python benchmarks/bench_jax.py                # full run, writes results_jax.md/.json
    python benchmarks/bench_jax.py --quick        # smoke test, writes nothing
    python benchmarks/bench_jax.py --inspect      # jaxpr / HLO sizes of each step, no timing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import Array

LIBRARIES = ("pyroflows", "flowjax", "numpyro")
MODELS = ("MAF", "NSF", "NSF-coupling", "RealNVP", "IAF")
#: Which libraries have each model (NumPyro ships only the IAF).
AVAILABLE = {
    "MAF": ("pyroflows", "flowjax"),
    "NSF": ("pyroflows", "flowjax"),
    "NSF-coupling": ("pyroflows", "flowjax"),
    "RealNVP": ("pyroflows", "flowjax"),
    "IAF": ("pyroflows", "flowjax", "numpyro"),
}
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results_jax.md"


@dataclass(frozen=True)
class Config:
    """Sizes shared by every library."""

    features: int
    batch: int = 512
    transforms: int = 5
    hidden: tuple[int, ...] = (64, 64)
    bins: int = 8
    knots: int = 8  # FlowJAX's spline: inner knots (knots + 1 bins)
    bound: float = 5.0
    seed: int = 0


@dataclass
class Candidate:
    """One library's model, split into trainable ``params`` and the rest (``static``).

    ``loss(params, batch, key)`` is the scalar mean negative log-density minimised by the
    step; ``key`` is used only by the IAF (its samples).
    """

    library: str
    model: str
    params: Any
    loss: Callable[[Any, Array, Array], Array]


@dataclass
class Timing:
    """Per-step wall times (seconds) and compile times of one candidate."""

    library: str
    params: int
    times: list[float] = field(default_factory=list)
    compile_s: list[float] = field(default_factory=list)
    compile_scaled_s: list[float] = field(default_factory=list)
    final_loss: float = math.nan

    def summary(self) -> dict[str, float]:
        ms = [t * 1e3 for t in self.times]
        q1, _, q3 = statistics.quantiles(ms, n=4) if len(ms) > 1 else (ms[0], 0.0, ms[0])
        return {
            "median_ms": statistics.median(ms),
            "q1_ms": q1,
            "q3_ms": q3,
            "iqr_ms": q3 - q1,
            "steps": len(ms),
            "params": self.params,
            "final_loss": self.final_loss,
            "compile_s": statistics.median(self.compile_s),
            "compile_all_s": self.compile_s,
            "compile_scaled_s": (
                statistics.median(self.compile_scaled_s) if self.compile_scaled_s else None
            ),
        }


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def _split(module: Any, is_leaf: Callable | None = None) -> tuple[Any, Any]:
    return eqx.partition(module, eqx.is_inexact_array, is_leaf=is_leaf)


def build_pyroflows(model: str, cfg: Config) -> Candidate:
    """pyroflows recipes through ``flow().log_prob(x)`` (IAF: its own samples)."""
    import pyroflows.numpyro as pfj

    key = jax.random.key(cfg.seed)
    size = {"transforms": cfg.transforms, "hidden": cfg.hidden, "key": key}
    if model == "MAF":
        flow = pfj.MAF(cfg.features, **size)
    elif model == "NSF":
        flow = pfj.NSF(cfg.features, bins=cfg.bins, bound=cfg.bound, mode="autoregressive", **size)
    elif model == "NSF-coupling":
        flow = pfj.NSF(cfg.features, bins=cfg.bins, bound=cfg.bound, mode="coupling", **size)
    elif model == "RealNVP":
        flow = pfj.RealNVP(cfg.features, **size)
    elif model == "IAF":
        flow = pfj.IAF(cfg.features, **size)
    else:
        raise ValueError(model)
    params, static = _split(flow)

    if model == "IAF":

        def loss(params: Any, batch: Array, key: Array) -> Array:
            d = eqx.combine(params, static)()
            x, intermediates = d.sample_with_intermediates(key, (batch.shape[0],))
            return -d.log_prob(x, intermediates).mean()

    else:

        def loss(params: Any, batch: Array, key: Array) -> Array:
            return -eqx.combine(params, static)().log_prob(batch).mean()

    return Candidate("pyroflows", model, params, loss)


def build_flowjax(model: str, cfg: Config) -> Candidate:
    """FlowJAX flows; the base distribution is wrapped in ``paramax.non_trainable``."""
    import paramax
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import coupling_flow, masked_autoregressive_flow

    width = cfg.hidden[0]
    if any(h != width for h in cfg.hidden):
        raise ValueError("FlowJAX networks need equal hidden widths")
    key = jax.random.key(cfg.seed)
    base = Normal(jnp.zeros(cfg.features))
    size = {"flow_layers": cfg.transforms, "nn_width": width, "nn_depth": len(cfg.hidden)}
    spline = RationalQuadraticSpline(knots=cfg.knots, interval=cfg.bound)
    if model == "MAF":
        flow = masked_autoregressive_flow(key, base_dist=base, **size)
    elif model == "NSF":
        flow = masked_autoregressive_flow(key, base_dist=base, transformer=spline, **size)
    elif model == "NSF-coupling":
        flow = coupling_flow(key, base_dist=base, transformer=spline, **size)
    elif model == "RealNVP":
        flow = coupling_flow(key, base_dist=base, **size)
    elif model == "IAF":
        flow = masked_autoregressive_flow(key, base_dist=base, invert=False, **size)
    else:
        raise ValueError(model)
    flow = eqx.tree_at(lambda f: f.base_dist, flow, replace_fn=paramax.non_trainable)
    params, static = _split(flow, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable))

    if model == "IAF":

        def loss(params: Any, batch: Array, key: Array) -> Array:
            d = paramax.unwrap(eqx.combine(params, static))
            _, log_prob = d.sample_and_log_prob(key, (batch.shape[0],))
            return -log_prob.mean()

    else:

        def loss(params: Any, batch: Array, key: Array) -> Array:
            return -paramax.unwrap(eqx.combine(params, static)).log_prob(batch).mean()

    return Candidate("flowjax", model, params, loss)


def build_numpyro(model: str, cfg: Config) -> Candidate:
    """NumPyro's IAF as ``AutoIAFNormal`` builds it, scored on its own samples."""
    import numpyro.distributions as dist
    from numpyro.distributions.flows import InverseAutoregressiveTransform
    from numpyro.distributions.transforms import PermuteTransform
    from numpyro.nn import AutoregressiveNN

    if model != "IAF":
        raise ValueError(f"NumPyro has no {model} flow")
    d = cfg.features
    keys = jax.random.split(jax.random.key(cfg.seed), cfg.transforms)
    apply_fns, params = [], []
    for k in keys:
        init_fn, apply_fn = AutoregressiveNN(d, list(cfg.hidden), permutation=jnp.arange(d))
        _, p = init_fn(k, (d,))
        apply_fns.append(apply_fn)
        params.append(p)
    reverse = jnp.arange(d)[::-1]

    def loss(params: Any, batch: Array, key: Array) -> Array:
        transforms = []
        for i, (apply_fn, p) in enumerate(zip(apply_fns, params, strict=True)):
            if i > 0:
                transforms.append(PermuteTransform(reverse))
            transforms.append(InverseAutoregressiveTransform(partial(apply_fn, p)))
        base = dist.Normal(jnp.zeros(d), 1.0).to_event(1)
        q = dist.TransformedDistribution(base, transforms)
        x, intermediates = q.sample_with_intermediates(key, (batch.shape[0],))
        return -q.log_prob(x, intermediates).mean()

    return Candidate("numpyro", model, params, loss)


BUILDERS: dict[str, Callable[[str, Config], Candidate]] = {
    "pyroflows": build_pyroflows,
    "flowjax": build_flowjax,
    "numpyro": build_numpyro,
}


def count_params(params: Any) -> int:
    """Number of trainable scalars."""
    return sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))


def _to_float32(params: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)


def build(library: str, model: str, cfg: Config) -> Candidate:
    """Build ``model`` in ``library`` with a fixed seed, parameters in float32."""
    cand = BUILDERS[library](model, cfg)
    cand.params = _to_float32(cand.params)
    return cand


# --------------------------------------------------------------------------------------
# Data and training step
# --------------------------------------------------------------------------------------


def make_batches(features: int, batch: int, count: int, seed: int = 1234) -> list[Array]:
    """``count`` float32 batches of ``z @ A.T``, ``z`` standard normal, ``A`` unit-norm rows."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((features, features))
    mixing /= np.linalg.norm(mixing, axis=1, keepdims=True)
    return [
        jax.device_put((rng.standard_normal((batch, features)) @ mixing.T).astype(np.float32))
        for _ in range(count)
    ]


def make_step(cand: Candidate, opt: optax.GradientTransformation) -> Callable:
    """A fresh (never jitted) training-step function for ``cand``."""

    def step(params: Any, opt_state: Any, batch: Array, key: Array):
        loss, grads = jax.value_and_grad(cand.loss)(params, batch, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def compile_step(cand: Candidate, opt: optax.GradientTransformation, batch: Array, key: Array):
    """``jax.jit(step).lower(...).compile()`` of a fresh step; returns (compiled, seconds)."""
    opt_state = opt.init(cand.params)
    step = make_step(cand, opt)
    start = time.perf_counter()
    compiled = jax.jit(step).lower(cand.params, opt_state, batch, key).compile()
    return compiled, time.perf_counter() - start


# --------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------


def bench_config(
    model: str,
    cfg: Config,
    libraries: tuple[str, ...],
    *,
    warmup: int,
    steps: int,
    min_time: float,
    rounds: int,
    lr: float,
    compile_reps: int,
    scaling_transforms: int,
) -> dict[str, Timing]:
    """Compile and time the libraries on one (model, features) pair."""
    batches = make_batches(cfg.features, cfg.batch, count=16, seed=cfg.seed + 1234)
    keys = list(jax.random.split(jax.random.key(cfg.seed + 99), 64))
    opt = optax.adam(lr)
    candidates = {lib: build(lib, model, cfg) for lib in libraries}
    timings = {lib: Timing(lib, count_params(c.params)) for lib, c in candidates.items()}

    # compile times, the libraries alternating; the last compiled step is the one timed
    compiled = {}
    order = list(libraries)
    for _ in range(compile_reps):
        for lib in order:
            compiled[lib], seconds = compile_step(candidates[lib], opt, batches[0], keys[0])
            timings[lib].compile_s.append(seconds)
        order = order[1:] + order[:1]
    if scaling_transforms:
        deep = replace(cfg, transforms=scaling_transforms)
        for _ in range(max(1, compile_reps // 2)):
            for lib in order:
                _, seconds = compile_step(build(lib, model, deep), opt, batches[0], keys[0])
                timings[lib].compile_scaled_s.append(seconds)
            order = order[1:] + order[:1]

    state = {lib: [c.params, opt.init(c.params)] for lib, c in candidates.items()}
    cursor = dict.fromkeys(libraries, 0)

    def run(lib: str, n: int, record: bool) -> None:
        fn, timing, st = compiled[lib], timings[lib], state[lib]
        loss = None
        for _ in range(n):
            i = cursor[lib]
            cursor[lib] += 1
            batch, key = batches[i % len(batches)], keys[i % len(keys)]
            start = time.perf_counter()
            st[0], st[1], loss = fn(st[0], st[1], batch, key)
            loss.block_until_ready()
            elapsed = time.perf_counter() - start
            if record:
                timing.times.append(elapsed)
        if loss is not None:
            timing.final_loss = float(loss)

    for lib in libraries:
        run(lib, warmup, record=False)
    chunk = max(1, steps // max(1, rounds))
    order = list(libraries)
    while True:
        done = all(len(t.times) >= steps and sum(t.times) >= min_time for t in timings.values())
        if done:
            break
        for lib in order:
            t = timings[lib]
            if len(t.times) < steps or sum(t.times) < min_time:
                run(lib, chunk, record=True)
        order = order[1:] + order[:1]  # rotate who goes first
    return timings


def machine_info() -> dict[str, str]:
    """CPU, device and library versions."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": str(os.cpu_count()),
        "jax_device": str(jax.devices()[0]),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": version("jaxlib"),
        "equinox": version("equinox"),
        "optax": version("optax"),
        "numpyro": version("numpyro"),
        "flowjax": version("flowjax"),
        "pyroflows": version("pyroflows"),
        "optimizer": "optax.adam(1e-3)",
    }


def _cell(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "n/a"
    return f"{summary['median_ms']:.2f} (IQR {summary['iqr_ms']:.2f})"


def _ratio(results: dict[str, dict], lib: str, key: str = "median_ms") -> float | None:
    if lib not in results or "pyroflows" not in results:
        return None
    mine, theirs = results["pyroflows"].get(key), results[lib].get(key)
    if mine is None or theirs is None:
        return None
    return theirs / mine


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def targets(rows: list[dict]) -> list[tuple[str, str, float | None, bool | None]]:
    """Per row with FlowJAX: pyroflows step time and compile time no worse than FlowJAX's."""
    out = []
    for row in rows:
        res = row["results"]
        if "flowjax" not in res or "pyroflows" not in res:
            continue
        name = f"{row['model']} D={row['features']}"
        for what, key in (("step time", "median_ms"), ("compile time", "compile_s")):
            ratio = _ratio(res, "flowjax", key)
            out.append((name, what, ratio, None if ratio is None else ratio >= 1.0))
    return out


def render_markdown(rows: list[dict], info: dict[str, str], command: str, cfg: dict) -> str:
    """Results as markdown: step times, compile times, parameter counts, target check."""
    lines = [
        "# pyroflows vs FlowJAX vs NumPyro: jitted training step (JAX)",
        "",
        f"Command: `{command}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        "Median milliseconds per jitted training step (value_and_grad of the mean NLL, "
        "optax.adam update, block_until_ready), interquartile range in brackets; batch "
        f"{cfg['batch']}, {cfg['transforms']} transforms, hidden (64, 64), float32. "
        "IAF rows: mean -log q of the flow's own samples (one forward pass, see the "
        "script's docstring). Ratios > 1 mean pyroflows is faster.",
        "",
        "| model | features | pyroflows ms | FlowJAX ms | NumPyro ms "
        "| FlowJAX/pyroflows | NumPyro/pyroflows |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        res = row["results"]
        lines.append(
            f"| {row['model']} | {row['features']} | {_cell(res.get('pyroflows'))} "
            f"| {_cell(res.get('flowjax'))} | {_cell(res.get('numpyro'))} "
            f"| {_x(_ratio(res, 'flowjax'))} | {_x(_ratio(res, 'numpyro'))} |"
        )
    deep = cfg["scaling_transforms"]
    lines += [
        "",
        "Compile time in seconds (`jax.jit(step).lower(...).compile()` of a fresh function, "
        f"median of {cfg['compile_reps']}), at {cfg['transforms']} transforms"
        + (f" and at {deep} transforms (`@{deep}`)" if deep else "")
        + ":",
        "",
        "| model | features | pyroflows | FlowJAX | NumPyro"
        + (f" | pyroflows @{deep} | FlowJAX @{deep} | NumPyro @{deep}" if deep else "")
        + " | FlowJAX/pyroflows |",
        "|---|---:|---:|---:|---:|" + ("---:|---:|---:|" if deep else "") + "---:|",
    ]
    for row in rows:
        res = row["results"]
        cells = [_s(res[lib]["compile_s"]) if lib in res else "n/a" for lib in LIBRARIES]
        if deep:
            cells += [
                _s(res[lib]["compile_scaled_s"]) if lib in res else "n/a" for lib in LIBRARIES
            ]
        cells.append(_x(_ratio(res, "flowjax", "compile_s")))
        lines.append(f"| {row['model']} | {row['features']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Parameter counts (steps timed):",
        "",
        "| model | features | pyroflows | FlowJAX | NumPyro |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        res = row["results"]
        cells = [
            "n/a" if lib not in res else f"{res[lib]['params']} ({res[lib]['steps']})"
            for lib in LIBRARIES
        ]
        lines.append(f"| {row['model']} | {row['features']} | " + " | ".join(cells) + " |")
    checks = targets(rows)
    if checks:
        lines += [
            "",
            "## Targets",
            "",
            "pyroflows no slower per step than FlowJAX, and compiling no longer than FlowJAX "
            "(FlowJAX/pyroflows ratio >= 1.00x):",
            "",
            "| model | target | FlowJAX/pyroflows | status |",
            "|---|---|---:|---|",
        ]
        for name, what, ratio, met in checks:
            verdict = "not measured" if met is None else ("MET" if met else "**NOT MET**")
            lines.append(f"| {name} | {what} | {_x(ratio)} | {verdict} |")
    return "\n".join(lines) + "\n"


def run_benchmark(args: argparse.Namespace) -> None:
    """Run every (model, features) configuration and write the results."""
    wanted = tuple(args.libraries or LIBRARIES)
    rows = []
    for model in args.models or MODELS:
        libraries = tuple(lib for lib in wanted if lib in AVAILABLE[model])
        if not libraries:
            continue
        for features in args.features:
            cfg = Config(
                features=features, batch=args.batch, transforms=args.transforms, knots=args.knots
            )
            started = time.perf_counter()
            timings = bench_config(
                model,
                cfg,
                libraries,
                warmup=args.warmup,
                steps=args.steps,
                min_time=args.min_time,
                rounds=args.rounds,
                lr=args.lr,
                compile_reps=args.compile_reps,
                scaling_transforms=args.scaling_transforms,
            )
            results = {lib: t.summary() for lib, t in timings.items()}
            rows.append({"model": model, "features": features, "results": results})
            parts = []
            for lib, r in results.items():
                scaled = r["compile_scaled_s"]
                deep = f"/{scaled:.2f}" if scaled is not None else ""
                parts.append(
                    f"{lib} {r['median_ms']:.2f} ms (IQR {r['iqr_ms']:.2f}, compile "
                    f"{r['compile_s']:.2f}{deep} s, {r['params']} params, {r['steps']} steps, "
                    f"loss {r['final_loss']:.3f})"
                )
            print(
                f"{model:12s} D={features:<3d} "
                + "; ".join(parts)
                + f"  [{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
    info = machine_info()
    command = "python " + " ".join(["benchmarks/bench_jax.py", *sys.argv[1:]])
    settings = {
        "batch": args.batch,
        "transforms": args.transforms,
        "scaling_transforms": args.scaling_transforms,
        "compile_reps": args.compile_reps,
        "steps": args.steps,
        "min_time": args.min_time,
        "knots": args.knots,
    }
    text = render_markdown(rows, info, command, settings)
    print()
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        checks = [
            {"row": name, "target": what, "ratio": ratio, "met": met}
            for name, what, ratio, met in targets(rows)
        ]
        payload = {
            "command": command,
            "machine": info,
            "settings": settings,
            "rows": rows,
            "targets": checks,
        }
        out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {out} and {out.with_suffix('.json')}")


# --------------------------------------------------------------------------------------
# Inspect mode
# --------------------------------------------------------------------------------------


def _count_eqns(jaxpr: Any) -> int:
    """Equations of a jaxpr, counting those of nested jaxprs (scan, cond, pjit, ...)."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _count_eqns(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _count_eqns(sub)
    return total


def run_inspect(args: argparse.Namespace) -> None:
    """Size of each library's training step: jaxpr equations, HLO instructions."""
    wanted = tuple(args.libraries or LIBRARIES)
    opt = optax.adam(args.lr)
    print("| model | features | library | jaxpr eqns (nested) | HLO lines (optimised) |")
    print("|---|---:|---|---:|---:|")
    for model in args.models or MODELS:
        for features in args.features:
            cfg = Config(features, batch=args.batch, transforms=args.transforms, knots=args.knots)
            batch = make_batches(features, cfg.batch, 1)[0]
            key = jax.random.key(0)
            for lib in (lib for lib in wanted if lib in AVAILABLE[model]):
                cand = build(lib, model, cfg)
                step = make_step(cand, opt)
                opt_state = opt.init(cand.params)
                jaxpr = jax.make_jaxpr(step)(cand.params, opt_state, batch, key)
                compiled, _ = compile_step(cand, opt, batch, key)
                hlo = compiled.as_text() or ""
                print(
                    f"| {model} | {features} | {lib} | {_count_eqns(jaxpr.jaxpr)} "
                    f"| {hlo.count(chr(10))} |",
                    flush=True,
                )


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--models", nargs="+", choices=MODELS, help="default: all")
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, help="default: all")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--transforms", type=int, default=5)
    parser.add_argument(
        "--scaling-transforms",
        type=int,
        default=20,
        help="also compile every model at this many transforms (0: skip)",
    )
    parser.add_argument("--knots", type=int, default=8, help="FlowJAX spline inner knots")
    parser.add_argument("--steps", type=int, default=200, help="minimum timed steps per library")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--min-time", type=float, default=5.0, help="minimum timed seconds per library"
    )
    parser.add_argument("--rounds", type=int, default=10, help="interleaving rounds")
    parser.add_argument("--compile-reps", type=int, default=3, help="compilations per library")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--quick", action="store_true", help="few steps: a smoke test")
    parser.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help="markdown results file ('' for none); JSON goes next to it (.json)",
    )
    parser.add_argument(
        "--inspect", action="store_true", help="print jaxpr and HLO sizes instead of timing"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.min_time, args.rounds = 10, 3, 0.0, 2
        args.compile_reps = 1
        if args.out == str(DEFAULT_OUT):
            args.out = ""  # a smoke test does not overwrite the results
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    # a throwaway compilation, so that JAX's one-off start-up costs hit no library
    jax.jit(lambda x: jnp.sin(x) @ x.T).lower(jnp.ones((4, 4))).compile()
    if args.inspect:
        run_inspect(args)
    else:
        run_benchmark(args)


if __name__ == "__main__":
    main()
