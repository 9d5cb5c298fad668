"""Smoke tests of the posteriordb examples (Pyro and NumPyro), each with ``--quick``.

Each script runs in a subprocess against the installed library and the posteriordb data in
``../shared/data`` (skipped when absent): exit code 0, a results table and its JSON written.
The numbers of the full runs are in ``examples/results/posteriordb_*.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DATA = ROOT.parent / "shared" / "data"

SCRIPTS = [
    ("posteriordb_pyro.py", "posteriordb_pyro", "pyro"),
    ("posteriordb_numpyro.py", "posteriordb_numpyro", "numpyro"),
]


@pytest.mark.parametrize(("script", "stem", "backend"), SCRIPTS)
def test_posteriordb_quick_run(script: str, stem: str, backend: str, tmp_path: Path) -> None:
    if not (DATA / "posteriordb" / "info").is_dir():
        pytest.skip(f"posteriordb data not found under {DATA}")
    pytest.importorskip(backend)
    pytest.importorskip("arviz")
    out = tmp_path / "outputs"
    # One thread: the models are tiny, and it keeps the run fast on a shared machine.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--quick", "--data", str(DATA), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    table = out / f"{stem}.md"
    assert table.is_file()
    text = table.read_text()
    assert "| posterior | guide |" in text
    assert "AutoFlow-iaf" in text
    payload = json.loads((out / f"{stem}.json").read_text())
    assert payload["scores"]
    assert all(not s["error"] for s in payload["scores"])


def test_posteriordb_missing_data_exits_with_message(tmp_path: Path) -> None:
    """A wrong --data path ends the script with a clear message, not a traceback."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import posteriordb_data
    finally:
        sys.path.remove(str(EXAMPLES))
    with pytest.raises(SystemExit, match="posteriordb data not found"):
        posteriordb_data.resolve_data_dir(str(tmp_path / "nowhere"))
