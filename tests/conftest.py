"""Shared test configuration: float64 fixtures (torch and JAX), seeding and the CUDA skip."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Under pytest-xdist (``-n auto``, the README's test command) every core runs a worker: one
# thread each for torch (OpenMP) and XLA, so that the workers do not oversubscribe the
# cores. Set before any test module imports torch or JAX; an explicit setting wins.
# The JAX tests are bound by compile time (small arrays, each function run a few times), so
# JAX and XLA are told to compile cheaply: most of JAX's optimisations off
# (``jax_disable_most_optimizations``), no LLVM optimisation passes, and the classic
# elemental emitters instead of XLA's CPU fusion emitters (together they took the README's
# test command from 12 min 24 s to 9 min 24 s on 2 cores, the summed test times from 1522
# to 1072 s; the numbers agree to rounding). The examples'
# smoke runs inherit the setting.
_XLA_TEST_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
_XLA_WORKER_FLAGS = ("--xla_cpu_multi_thread_eigen=false",)
_XLA_CHECKED = "_PYROFLOWS_TEST_XLA_FLAGS"  # the flags this jaxlib accepts, found once


def _accepted_xla_flags(flags: tuple[str, ...]) -> str:
    """The ``flags`` this jaxlib knows (XLA aborts on an unknown flag): all, else one by one."""
    import subprocess
    import sys

    def accepted(chosen: tuple[str, ...]) -> bool:
        probe = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
        env = {**os.environ, "XLA_FLAGS": " ".join(chosen), "JAX_PLATFORMS": "cpu"}
        try:
            run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True)
        except OSError:
            return False
        return run.returncode == 0

    if accepted(flags):
        return " ".join(flags)
    return " ".join(flag for flag in flags if accepted((flag,)))


if "XLA_FLAGS" not in os.environ or _XLA_CHECKED in os.environ:
    # not set by the user: the controller checks the flags once, its workers inherit them
    if _XLA_CHECKED not in os.environ:
        os.environ[_XLA_CHECKED] = _accepted_xla_flags(_XLA_TEST_FLAGS + _XLA_WORKER_FLAGS)
    accepted = os.environ[_XLA_CHECKED].split()
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        accepted = [flag for flag in accepted if flag not in _XLA_WORKER_FLAGS]
    os.environ["XLA_FLAGS"] = " ".join(accepted)
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Property-based tests: CI runs a few derandomized examples per test (reproducible, inside the
# suite's time budget); HYPOTHESIS_PROFILE=fuzz searches deeply (run it before a release).
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("PYROFLOWS_FUZZ_EXAMPLES", "4")),
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=500,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` when no CUDA GPU is available."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not cuda_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in cuda_items:
        item.add_marker(skip)


@pytest.fixture
def float64():
    """Make float64 torch's default dtype for the test, and restore the previous default."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield torch.float64
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture
def seeded():
    """Seed torch's global generator (and Pyro's), restoring torch's RNG state afterwards."""
    import pyro
    import torch

    state = torch.get_rng_state()
    pyro.set_rng_seed(0)
    try:
        yield
    finally:
        torch.set_rng_state(state)


@pytest.fixture
def jax_x64():
    """Enable JAX's float64 (``jax_enable_x64``) for the test, and restore the previous value.

    Build JAX modules inside the test, after this fixture ran: arrays created while x64 is
    off are float32."""
    import jax

    previous = bool(jax.config.read("jax_enable_x64"))
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)
