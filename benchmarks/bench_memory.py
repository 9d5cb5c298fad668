"""Peak memory (and time) of drawing a million samples from a 5-layer MAF, in both backends.

Each measurement runs in a fresh Python process: it builds ``MAF(features=3)`` (5 transforms,
hidden (64, 64)), warms up with a small draw (so JAX has compiled and torch has allocated its
workspace), then draws ``--samples`` samples without gradients (torch ``flow().sample``,
JAX ``flow().sample(key, ...)``) and reports the process's peak resident memory
(``ru_maxrss``) before and after the draw, and the draw's wall time. The MAF samples in its
sequential direction (``features`` passes per layer), the expensive way.

``--chunk`` sets the backends' ``SAMPLE_CHUNK`` (events per chunk of a draw without
gradients); ``--chunk 0`` turns chunking off, which is how both backends drew before
chunking existed. The default runs both settings, both backends.

Run from the repository root::

    python benchmarks/bench_memory.py            # writes results_memory.{json,md}
    python benchmarks/bench_memory.py --quick    # 20 000 samples, seconds

Target (issue 16): under 1 GB of peak memory in both backends for 10^6 samples.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
backend, samples, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
if backend == "torch":
    import torch
    import pyroflows.pyro as pf
    import pyroflows.pyro.distributions as module
    torch.manual_seed(0)
    flow = pf.MAF(features=3)
    draw = lambda n: flow().sample((n,))
else:
    import jax
    import pyroflows.numpyro as pfj
    import pyroflows.numpyro.distributions as module
    flow = pfj.MAF(features=3, key=jax.random.key(0))
    key = jax.random.key(1)
    sample = jax.jit(lambda key, f, n: f().sample(key, (n,)), static_argnums=2)
    compiled = {}
    def draw(n):
        if n not in compiled:  # compiled ahead of time: compiling allocates nothing for x
            compiled[n] = sample.lower(key, flow, n).compile()
        return compiled[n](key, flow).block_until_ready()
module.SAMPLE_CHUNK = chunk if chunk > 0 else 2**62
draw(1000)
if backend == "jax":
    compiled[samples] = sample.lower(key, flow, samples).compile()
before = rss()
start = time.perf_counter()
x = draw(samples)
seconds = time.perf_counter() - start
assert tuple(x.shape) == (samples, 3)
print(json.dumps({"before_mib": before, "peak_mib": rss(), "seconds": seconds}))
"""


def measure(backend: str, samples: int, chunk: int) -> dict:
    """Run one draw in a fresh process; return its peak memory and time."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, backend, str(samples), str(chunk)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"backend": backend, "samples": samples, "chunk": chunk, **result}


def table(rows: list[dict]) -> str:
    lines = [
        "| backend | chunk (events) | samples | peak RSS (MiB) | RSS before the draw (MiB) "
        "| draw time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        chunk = "off" if r["chunk"] == 0 else str(r["chunk"])
        lines.append(
            f"| {r['backend']} | {chunk} | {r['samples']:,} | {r['peak_mib']:.0f} "
            f"| {r['before_mib']:.0f} | {r['seconds']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, nargs="*", default=[0, 2**16])
    parser.add_argument("--backend", nargs="*", default=["torch", "jax"])
    parser.add_argument("--quick", action="store_true", help="20 000 samples, no files written")
    args = parser.parse_args()
    samples = 20_000 if args.quick else args.samples
    rows = [measure(b, samples, c) for b in args.backend for c in args.chunk]
    text = table(rows)
    print(text)
    if args.quick:
        return
    import jax
    import torch

    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "jax": jax.__version__,
        "machine": platform.machine(),
        "command": "python benchmarks/bench_memory.py",
    }
    (HERE / "results_memory.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (HERE / "results_memory.md").write_text(
        "# Peak memory of 10^6 samples from MAF(features=3), 5 transforms\n\n"
        f"`{meta['command']}` (torch {meta['torch']}, jax {meta['jax']}, CPU). "
        "Peak RSS is the whole process's (imports included).\n\n" + text + "\n"
    )


if __name__ == "__main__":
    main()
