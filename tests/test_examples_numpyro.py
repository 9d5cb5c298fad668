"""Smoke tests of the NumPyro examples: each runs with ``--quick`` in a subprocess.

The cases and the checks are those of tests/test_examples.py (its ``SCRIPTS`` and
``INFERENCE_SCRIPTS`` whose backend is NumPyro); they live in their own file so that
pytest-xdist, which hands out whole files, can run these compile-bound runs on one worker
while the other runs the torch ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_examples import INFERENCE_SCRIPTS, SCRIPTS, run_inference, run_quick

NUMPYRO_SCRIPTS = [s for s in SCRIPTS if s[2] == "numpyro"]
NUMPYRO_INFERENCE_SCRIPTS = [s for s in INFERENCE_SCRIPTS if s[1] == "numpyro"]


@pytest.mark.parametrize(("script", "figure", "backend", "extra"), NUMPYRO_SCRIPTS)
def test_numpyro_example_quick_run(
    script: str, figure: str, backend: str, extra: tuple[str, ...], tmp_path: Path
) -> None:
    run_quick(script, figure, backend, extra, tmp_path)


@pytest.mark.parametrize(("script", "backend", "marker", "extra"), NUMPYRO_INFERENCE_SCRIPTS)
def test_numpyro_inference_example_quick_run(
    script: str, backend: str, marker: str, extra: tuple[str, ...], tmp_path: Path
) -> None:
    run_inference(script, backend, marker, extra, tmp_path)
