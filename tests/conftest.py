"""Shared test configuration: float64 fixture, seeding and the CUDA skip."""

from __future__ import annotations

import pytest


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
