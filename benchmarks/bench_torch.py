"""Training-step benchmark: pyroflows (Pyro backend) against zuko and nflows on CPU.

Trains MAF, NSF (autoregressive, rational-quadratic splines) and RealNVP (affine
coupling) built at the same size in the three libraries and times one training step:

    optimizer.zero_grad(); loss = -log_prob(batch).mean(); loss.backward(); optimizer.step()

``log_prob`` goes through each library's public API as a training loop would call it:
``flow().log_prob(x)`` for pyroflows and zuko (the distribution is rebuilt every step),
``flow.log_prob(x)`` for nflows. Every library gets the same batches (standard normal
samples pushed through a fixed random linear mixing), the same seed and the same
``torch.optim.Adam`` settings. Steps of the three libraries are interleaved in rounds so
that drift in the machine's speed hits all of them alike. Each configuration warms up,
then is timed for at least ``--steps`` steps and ``--min-time`` seconds per library; the
report gives the median milliseconds per step and the interquartile range.

Architectures (features D, 5 transforms, hidden (64, 64), ReLU):

* MAF: MADE conditioners, affine transformer. pyroflows ``pf.MAF``; zuko
  ``zuko.flows.MAF``; nflows ``MaskedAutoregressiveFlow`` (non-residual MADE, one
  feed-forward block = two hidden layers, a ``ReversePermutation`` before each layer).
* NSF: autoregressive MADE conditioners, 8 bins, spline on [-5, 5], identity (linear)
  tails, ``3 * 8 - 1`` parameters per feature in all three. pyroflows ``pf.NSF``; zuko
  ``zuko.flows.NSF`` (its bound is fixed at 5); nflows ``ReversePermutation`` +
  ``MaskedPiecewiseRationalQuadraticAutoregressiveTransform`` layers (nflows has no NSF
  flow class).
* RealNVP: affine coupling with alternating (checkerboard) masks and a plain MLP
  conditioner. pyroflows ``pf.RealNVP``; zuko ``zuko.flows.RealNVP``; nflows
  ``AffineCouplingTransform`` layers with ``nflows.nn.nets.MLP`` conditioners (its
  ``SimpleRealNVP`` only offers residual nets, which cannot have exactly two hidden layers).

The libraries differ in how they bound the scale (tanh soft clamp, ``x / (1 + |x| / c)``,
sigmoid) and in initialisation; the parameter counts are printed so that the matching
sizes are visible.

Usage:
    python benchmarks/bench_torch.py                       # full run, writes results_torch.md
    python benchmarks/bench_torch.py --quick               # smoke test
    python benchmarks/bench_torch.py --profile             # where pyroflows spends the time
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch
from torch import Tensor, nn

LIBRARIES = ("pyroflows", "zuko", "nflows")
MODELS = ("MAF", "NSF", "RealNVP")
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results_torch.md"
DEFAULT_PROFILE_OUT = HERE / "profile_torch.md"


@dataclass(frozen=True)
class Config:
    """Sizes shared by every library."""

    features: int
    batch: int = 512
    transforms: int = 5
    hidden: tuple[int, ...] = (64, 64)
    bins: int = 8
    bound: float = 5.0
    seed: int = 0


@dataclass
class Candidate:
    """One library's model and the function that scores a batch with it."""

    library: str
    model: str
    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]


@dataclass
class Timing:
    """Per-step wall times (seconds) of one candidate."""

    library: str
    params: int
    times: list[float] = field(default_factory=list)
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
        }


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def build_pyroflows(model: str, cfg: Config) -> Candidate:
    """pyroflows recipes (MAF, NSF autoregressive, RealNVP)."""
    import pyroflows.pyro as pf

    if model == "MAF":
        flow = pf.MAF(cfg.features, transforms=cfg.transforms, hidden=cfg.hidden)
    elif model == "NSF":
        flow = pf.NSF(
            cfg.features,
            transforms=cfg.transforms,
            hidden=cfg.hidden,
            bins=cfg.bins,
            bound=cfg.bound,
            mode="autoregressive",
        )
    elif model == "RealNVP":
        flow = pf.RealNVP(cfg.features, transforms=cfg.transforms, hidden=cfg.hidden)
    else:
        raise ValueError(model)
    return Candidate("pyroflows", model, flow, lambda x: flow().log_prob(x))


def build_zuko(model: str, cfg: Config) -> Candidate:
    """zuko flows; its NSF spline bound is fixed at 5 (``MonotonicRQSTransform`` default)."""
    import zuko

    hidden = cfg.hidden
    if model == "MAF":
        flow = zuko.flows.MAF(cfg.features, transforms=cfg.transforms, hidden_features=hidden)
    elif model == "NSF":
        if cfg.bound != 5.0:
            raise ValueError("zuko.flows.NSF has a fixed spline bound of 5")
        flow = zuko.flows.NSF(
            cfg.features, bins=cfg.bins, transforms=cfg.transforms, hidden_features=hidden
        )
    elif model == "RealNVP":
        flow = zuko.flows.RealNVP(cfg.features, transforms=cfg.transforms, hidden_features=hidden)
    else:
        raise ValueError(model)
    return Candidate("zuko", model, flow, lambda x: flow().log_prob(x))


def build_nflows(model: str, cfg: Config) -> Candidate:
    """nflows at the same sizes (non-residual MADE with ``len(hidden) - 1`` blocks)."""
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.autoregressive import MaskedAutoregressiveFlow
    from nflows.flows.base import Flow
    from nflows.nn.nets import MLP
    from nflows.transforms.autoregressive import (
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    )
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.coupling import AffineCouplingTransform
    from nflows.transforms.permutations import ReversePermutation

    width = cfg.hidden[0]
    if any(h != width for h in cfg.hidden):
        raise ValueError("nflows MADEs need equal hidden widths")
    blocks = len(cfg.hidden) - 1  # initial masked layer + one feed-forward block per extra layer
    if model == "MAF":
        flow = MaskedAutoregressiveFlow(
            features=cfg.features,
            hidden_features=width,
            num_layers=cfg.transforms,
            num_blocks_per_layer=blocks,
            use_residual_blocks=False,
        )
    elif model == "NSF":
        layers: list[nn.Module] = []
        for _ in range(cfg.transforms):
            layers.append(ReversePermutation(cfg.features))
            layers.append(
                MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
                    features=cfg.features,
                    hidden_features=width,
                    num_bins=cfg.bins,
                    tails="linear",
                    tail_bound=cfg.bound,
                    num_blocks=blocks,
                    use_residual_blocks=False,
                )
            )
        flow = Flow(CompositeTransform(layers), StandardNormal([cfg.features]))
    elif model == "RealNVP":
        mask = torch.ones(cfg.features)
        mask[::2] = -1  # as SimpleRealNVP: even features pass through first

        class Conditioner(nn.Module):
            # nflows' coupling passes a context argument that its MLP does not take
            def __init__(self, n_in: int, n_out: int) -> None:
                super().__init__()
                self.net = MLP((n_in,), (n_out,), list(cfg.hidden))

            def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
                return self.net(x)

        def conditioner(n_in: int, n_out: int) -> nn.Module:
            return Conditioner(n_in, n_out)

        layers = []
        for _ in range(cfg.transforms):
            layers.append(AffineCouplingTransform(mask.clone(), conditioner))
            mask *= -1
        flow = Flow(CompositeTransform(layers), StandardNormal([cfg.features]))
    else:
        raise ValueError(model)
    return Candidate("nflows", model, flow, lambda x: flow.log_prob(x))


BUILDERS: dict[str, Callable[[str, Config], Candidate]] = {
    "pyroflows": build_pyroflows,
    "zuko": build_zuko,
    "nflows": build_nflows,
}


def build(library: str, model: str, cfg: Config) -> Candidate:
    """Build ``model`` in ``library`` with a fixed seed, in float32."""
    torch.manual_seed(cfg.seed)
    candidate = BUILDERS[library](model, cfg)
    candidate.module.float().train()
    return candidate


def count_params(module: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------
# Data and training step
# --------------------------------------------------------------------------------------


def make_batches(features: int, batch: int, count: int, seed: int = 1234) -> list[Tensor]:
    """``count`` batches of ``z @ A.T`` with ``z`` standard normal and a fixed mixing ``A``.

    ``A`` has unit-norm rows, so each feature keeps unit variance (the splines' [-5, 5]
    interval covers nearly all the data, as it would after standardisation).
    """
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(features, features, generator=gen)
    mixing = mixing / mixing.norm(dim=1, keepdim=True)
    return [
        (torch.randn(batch, features, generator=gen) @ mixing.T).contiguous() for _ in range(count)
    ]


def make_optimizer(module: nn.Module, adam: str, lr: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam`` with the implementation chosen by ``adam``."""
    params = [p for p in module.parameters() if p.requires_grad]
    if adam == "fused":
        return torch.optim.Adam(params, lr=lr, fused=True)
    if adam == "foreach":
        return torch.optim.Adam(params, lr=lr, foreach=True)
    return torch.optim.Adam(params, lr=lr, foreach=False)


def train_step(candidate: Candidate, optimizer: torch.optim.Optimizer, batch: Tensor) -> Tensor:
    """One maximum-likelihood step; returns the (detached) loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = -candidate.log_prob(batch).mean()
    loss.backward()
    optimizer.step()
    return loss.detach()


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
    adam: str,
    lr: float,
) -> dict[str, Timing]:
    """Time the libraries on one (model, features) pair, interleaving them in rounds."""
    batches = make_batches(cfg.features, cfg.batch, count=16, seed=cfg.seed + 1234)
    candidates = {lib: build(lib, model, cfg) for lib in libraries}
    optimizers = {lib: make_optimizer(c.module, adam, lr) for lib, c in candidates.items()}
    timings = {lib: Timing(lib, count_params(c.module)) for lib, c in candidates.items()}
    cursor = dict.fromkeys(libraries, 0)

    def run(lib: str, n: int, record: bool) -> None:
        cand, opt, timing = candidates[lib], optimizers[lib], timings[lib]
        loss = None
        for _ in range(n):
            batch = batches[cursor[lib] % len(batches)]
            cursor[lib] += 1
            start = time.perf_counter()
            loss = train_step(cand, opt, batch)
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


def machine_info(adam: str) -> dict[str, str]:
    """CPU, thread count and library versions."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {
        "cpu": cpu,
        "logical_cpus": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro-ppl": version("pyro-ppl"),
        "zuko": version("zuko"),
        "nflows": version("nflows"),
        "pyroflows": version("pyroflows"),
        "optimizer": f"torch.optim.Adam(lr=1e-3, {adam})",
    }


def _cell(summary: dict[str, float] | None) -> str:
    if summary is None:
        return "n/a"
    return f"{summary['median_ms']:.2f} (IQR {summary['iqr_ms']:.2f})"


def _ratio(results: dict[str, dict], lib: str) -> float | None:
    if lib not in results or "pyroflows" not in results:
        return None
    return results[lib]["median_ms"] / results["pyroflows"]["median_ms"]


def targets(rows: list[dict]) -> list[tuple[str, float | None, float, bool | None]]:
    """The speed targets: zuko/pyroflows >= 1.5 for MAF/NSF at D=8 and >= 1.0 at D=64."""
    out = []
    for row in rows:
        if row["model"] not in ("MAF", "NSF"):
            continue
        goal = {8: 1.5, 64: 1.0}.get(row["features"])
        if goal is None:
            continue
        ratio = _ratio(row["results"], "zuko")
        met = None if ratio is None else ratio >= goal
        out.append((f"{row['model']} D={row['features']}", ratio, goal, met))
    return out


def render_markdown(rows: list[dict], info: dict[str, str], command: str) -> str:
    """Results as markdown: timing table, parameter counts, target check."""
    lines = [
        "# pyroflows vs zuko vs nflows: CPU training step",
        "",
        f"Command: `{command}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        "Median milliseconds per training step (zero_grad, -log_prob(batch).mean(), "
        "backward, Adam step), interquartile range in brackets; batch 512, 5 transforms, "
        "hidden (64, 64), float32. Ratios > 1 mean pyroflows is faster.",
        "",
        "| model | features | pyroflows ms | zuko ms | nflows ms "
        "| zuko/pyroflows | nflows/pyroflows |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        res = row["results"]
        rz, rn = _ratio(res, "zuko"), _ratio(res, "nflows")
        lines.append(
            f"| {row['model']} | {row['features']} | {_cell(res.get('pyroflows'))} "
            f"| {_cell(res.get('zuko'))} | {_cell(res.get('nflows'))} "
            f"| {'n/a' if rz is None else f'{rz:.2f}x'} "
            f"| {'n/a' if rn is None else f'{rn:.2f}x'} |"
        )
    lines += [
        "",
        "Parameter counts (steps timed):",
        "",
        "| model | features | pyroflows | zuko | nflows |",
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
        lines += ["", "Targets (zuko/pyroflows step-time ratio):", ""]
        for name, ratio, goal, met in checks:
            got = "n/a" if ratio is None else f"{ratio:.2f}x"
            verdict = "not measured" if met is None else ("MET" if met else "NOT MET")
            lines.append(f"- {name}: {got}, target >= {goal:.1f}x: **{verdict}**")
    return "\n".join(lines) + "\n"


def run_benchmark(args: argparse.Namespace) -> None:
    """Run every (model, features) configuration and write the results."""
    libraries = tuple(args.libraries or LIBRARIES)
    rows = []
    for model in args.models or MODELS:
        for features in args.features:
            cfg = Config(features=features, batch=args.batch)
            started = time.perf_counter()
            timings = bench_config(
                model,
                cfg,
                libraries,
                warmup=args.warmup,
                steps=args.steps,
                min_time=args.min_time,
                rounds=args.rounds,
                adam=args.adam,
                lr=args.lr,
            )
            results = {lib: t.summary() for lib, t in timings.items()}
            rows.append({"model": model, "features": features, "results": results})
            parts = [
                f"{lib} {r['median_ms']:.2f} ms (IQR {r['iqr_ms']:.2f}, {r['params']} params, "
                f"{r['steps']} steps, loss {r['final_loss']:.3f})"
                for lib, r in results.items()
            ]
            print(
                f"{model:8s} D={features:<3d} "
                + "; ".join(parts)
                + f"  [{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
    info = machine_info(args.adam)
    command = "python " + " ".join(["benchmarks/bench_torch.py", *sys.argv[1:]])
    text = render_markdown(rows, info, command)
    print()
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        payload = {"command": command, "machine": info, "rows": rows}
        out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {out} and {out.with_suffix('.json')}")


# --------------------------------------------------------------------------------------
# Profile mode
# --------------------------------------------------------------------------------------


def phase_times(
    candidate: Candidate, optimizer: torch.optim.Optimizer, batches: list[Tensor], steps: int
) -> dict[str, float]:
    """Median ms of each phase of a step, timed separately with ``perf_counter``."""
    phases: dict[str, list[float]] = {
        "zero_grad": [],
        "flow()": [],
        "log_prob+mean": [],
        "backward": [],
        "adam step": [],
        "total": [],
    }
    module = candidate.module
    calls_flow = candidate.library in ("pyroflows", "zuko")
    for i in range(steps):
        batch = batches[i % len(batches)]
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        if calls_flow:
            dist = module()
            t2 = time.perf_counter()
            loss = -dist.log_prob(batch).mean()
        else:
            t2 = time.perf_counter()
            loss = -module.log_prob(batch).mean()
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        optimizer.step()
        t5 = time.perf_counter()
        for name, value in zip(
            phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t0), strict=True
        ):
            phases[name].append(value * 1e3)
    return {name: statistics.median(v) for name, v in phases.items()}


def profile_candidate(
    candidate: Candidate,
    optimizer: torch.optim.Optimizer,
    batches: list[Tensor],
    steps: int,
    top: int,
) -> tuple[str, dict[str, float]]:
    """torch.profiler (CPU) over ``steps`` steps: top ops by self time, op counts."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        for i in range(steps):
            batch = batches[i % len(batches)]
            with record_function("## zero_grad"):
                optimizer.zero_grad(set_to_none=True)
            with record_function("## forward"):
                loss = -candidate.log_prob(batch).mean()
            with record_function("## backward"):
                loss.backward()
            with record_function("## adam"):
                optimizer.step()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    aten = [e for e in events if e.key.startswith("aten::")]
    self_us = sum(e.self_cpu_time_total for e in aten)
    calls = sum(e.count for e in aten)
    phases = {e.key: e.cpu_time_total / steps / 1e3 for e in events if e.key.startswith("## ")}
    stats = {
        "wall_ms_per_step (profiled)": wall / steps * 1e3,
        "aten_self_ms_per_step": self_us / steps / 1e3,
        "aten_calls_per_step": calls / steps,
        **{f"{k[3:]}_ms (profiled)": v for k, v in phases.items()},
    }
    table = events.table(sort_by="self_cpu_time_total", row_limit=top)
    shapes = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=top
    )
    return table + "\nBy input shape:\n" + shapes, stats


def run_profile(args: argparse.Namespace) -> None:
    """Profile pyroflows and zuko (and nflows if asked) MAF and NSF at ``--profile-features``."""
    libraries = tuple(args.libraries or ("pyroflows", "zuko"))
    models = list(args.models or ("MAF", "NSF"))
    cfg = Config(features=args.profile_features, batch=args.batch)
    batches = make_batches(cfg.features, cfg.batch, count=16, seed=cfg.seed + 1234)
    report = [
        f"# Profile: training step at features {cfg.features}, batch {cfg.batch}",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine_info(args.adam).items()),
        "",
    ]
    for model in models:
        for lib in libraries:
            cand = build(lib, model, cfg)
            opt = make_optimizer(cand.module, args.adam, args.lr)
            for i in range(args.warmup):
                train_step(cand, opt, batches[i % len(batches)])
            phases = phase_times(cand, opt, batches, args.steps)
            table, stats = profile_candidate(cand, opt, batches, args.profile_steps, args.top)
            overhead = stats["wall_ms_per_step (profiled)"] - stats["aten_self_ms_per_step"]
            header = f"## {model} / {lib} (features {cfg.features})"
            body = [
                header,
                "",
                "Phase medians (ms, unprofiled, perf_counter): "
                + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()),
                "",
                "Profiled: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()),
                f"Outside aten ops (Python, dispatch, autograd engine, profiler): "
                f"{overhead:.3f} ms/step",
                "",
                "```",
                table,
                "```",
                "",
            ]
            print("\n".join(body), flush=True)
            report += body
    if args.profile_out:
        out = Path(args.profile_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(report) + "\n")
        print(f"wrote {out}")


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, nargs="+", default=[8, 64])
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, help="default: all (--profile: MAF NSF)"
    )
    parser.add_argument(
        "--libraries", nargs="+", choices=LIBRARIES, help="default: all (--profile: pyroflows zuko)"
    )
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=200, help="minimum timed steps per library")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument(
        "--min-time", type=float, default=5.0, help="minimum timed seconds per library"
    )
    parser.add_argument("--rounds", type=int, default=10, help="interleaving rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--adam",
        choices=("fused", "foreach", "forloop"),
        default="foreach",
        help="torch.optim.Adam implementation (the same for every library)",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--quick", action="store_true", help="few steps: a smoke test")
    parser.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help="markdown results file ('' for none); JSON goes next to it (.json)",
    )
    parser.add_argument("--profile", action="store_true", help="profile instead of benchmark")
    parser.add_argument("--profile-features", type=int, default=8)
    parser.add_argument("--profile-steps", type=int, default=50)
    parser.add_argument("--top", type=int, default=20, help="rows of the profiler tables")
    parser.add_argument("--profile-out", default=str(DEFAULT_PROFILE_OUT))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.min_time, args.rounds = 10, 3, 0.0, 2
        args.profile_steps = 5
        if args.out == str(DEFAULT_OUT):
            args.out = ""  # a smoke test does not overwrite the results
        if args.profile_out == str(DEFAULT_PROFILE_OUT):
            args.profile_out = ""
    return args


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    if args.profile:
        run_profile(args)
    else:
        run_benchmark(args)


if __name__ == "__main__":
    main()
