"""Smoke tests of the examples (Pyro and NumPyro): each runs with ``--quick`` in a subprocess.

They check that the scripts run end to end against the installed library (exit code 0),
print their bits/dim table and write their figure; the numbers of the full runs are in
``examples/README.md``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


SCRIPTS = [
    ("digits.py", "digits.png", "torch", ()),
    ("digits.py", "digits.png", "torch", ("--model", "residual")),
    ("digits.py", "digits.png", "torch", ("--model", "glow")),
    (
        "images.py",
        "images_digits_glow_mixture_variational.png",
        "torch",
        ("--transformer", "mixture", "--dequantization", "variational"),
    ),
    ("two_moons.py", "two_moons.png", "torch", ()),
    ("two_moons.py", "two_moons_residual.png", "torch", ("--model", "residual")),
    ("two_moons.py", "two_moons_ffjord-fm.png", "torch", ("--model", "ffjord-fm")),
    ("digits_numpyro.py", "digits_numpyro.png", "numpyro", ()),
    ("two_moons_numpyro.py", "two_moons_numpyro.png", "numpyro", ()),
]


@pytest.mark.parametrize(("script", "figure", "backend", "extra"), SCRIPTS)
def test_example_quick_run(
    script: str, figure: str, backend: str, extra: tuple[str, ...], tmp_path: Path
) -> None:
    pytest.importorskip(backend)
    out = tmp_path / "outputs"
    # One thread: a smoke run gains nothing from more, and it keeps the run fast when
    # other processes (or pytest workers) share the cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--quick", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        # JAX compiles each jitted function on first use: the NumPyro scripts spend most
        # of a quick run compiling, which takes minutes on a small shared CPU
        timeout=120 if backend == "torch" else 240,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    assert (out / figure).is_file()
    assert (out / figure).stat().st_size > 0
    assert "bits/dim" in result.stdout


EVERY_POSTERIOR = ("--posteriors", "gaussian", "iaf", "planar", "radial", "sylvester")
INFERENCE_SCRIPTS = [
    ("vae.py", "torch", "| sylvester |", EVERY_POSTERIOR),
    # the gated conv nets (--channels) on the 8x8 digits; in JAX (compile-bound) with the
    # Sylvester posterior in the same run
    ("vae.py", "torch", "| iaf |", ("--channels", "4", "--posteriors", "iaf")),
    (
        "vae_numpyro.py",
        "numpyro",
        "| sylvester |",
        ("--channels", "4", "--posteriors", "sylvester"),
    ),
]


@pytest.mark.parametrize(("script", "backend", "marker", "extra"), INFERENCE_SCRIPTS)
def test_inference_example_quick_run(
    script: str, backend: str, marker: str, extra: tuple[str, ...], tmp_path: Path
):
    pytest.importorskip(backend)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--quick", *extra],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    assert marker in result.stdout
