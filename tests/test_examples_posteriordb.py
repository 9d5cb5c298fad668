"""Smoke tests of the posteriordb examples (Pyro and NumPyro), each with ``--quick``.

Each script runs in a subprocess against the installed library and the posteriordb data in
``../shared/data`` (skipped when absent): exit code 0, a results table and its JSON written.
The numbers of the full runs are in ``examples/results/posteriordb_*.md``.
"""

from __future__ import annotations

import argparse
import functools
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


def _import_posteriordb_data():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import posteriordb_data
    finally:
        sys.path.remove(str(EXAMPLES))
    return posteriordb_data


def _score(pdb, posterior: str, guide: str, seed: int, khat: float, err: float, error: str = ""):
    return pdb.Score(
        posterior=posterior,
        guide=guide,
        elbo=-10.0 - seed,
        khat=khat,
        max_mean_err=err,
        mean_mean_err=err / 2,
        min_sd_ratio=0.9 + 0.01 * seed,
        max_sd_ratio=1.1 + 0.01 * seed,
        train_s=1.0,
        steps=10,
        settings="s",
        worst_param="a",
        per_param={
            "a": {"mean_err": err, "sd_ratio": 1.0},
            "b": {"mean_err": 0.01, "sd_ratio": 1.0},
        },
        error=error,
        seed=seed,
    )


def test_summaries_average_over_seeds_and_judge_the_target_on_the_means() -> None:
    pdb = _import_posteriordb_data()
    scores = [
        _score(pdb, "diamonds", "AutoFlow-iaf", 0, khat=0.9, err=0.02),
        _score(pdb, "diamonds", "AutoFlow-iaf", 1, khat=0.3, err=0.04),
        _score(pdb, "diamonds", "AutoFlow-iaf", 2, khat=0.6, err=0.06),
        _score(pdb, "diamonds", "AutoNormal", 0, khat=0.2, err=0.5),
    ]
    flow, normal = pdb.summarize(scores)
    assert (flow.guide, flow.seeds) == ("AutoFlow-iaf", [0, 1, 2])
    assert flow.khat == pytest.approx(0.6)
    assert flow.khat_range == (0.3, 0.9)
    assert flow.max_mean_err == pytest.approx(0.04)
    assert flow.max_mean_err_range == (0.02, 0.06)
    assert flow.elbo == pytest.approx(-11.0)
    assert (flow.min_sd_ratio, flow.max_sd_ratio) == (0.9, pytest.approx(1.12))
    assert pdb._target(flow) == "yes"  # seed 0 alone (k-hat 0.9) would miss it
    assert pdb._target(scores[0]) == "no"
    assert normal.seeds == [0] and pdb._target(normal) == "no"


def test_a_failed_seed_marks_the_pair_failed() -> None:
    pdb = _import_posteriordb_data()
    nan = float("nan")
    scores = [
        _score(pdb, "gp_pois_regr", "AutoFlow-nsf", 0, khat=0.4, err=0.05),
        _score(pdb, "gp_pois_regr", "AutoFlow-nsf", 1, khat=nan, err=nan, error="ValueError: x"),
    ]
    (summary,) = pdb.summarize(scores)
    assert summary.khat == pytest.approx(0.4)  # the means are over the seeds that ran
    assert "seed 1: ValueError: x" in summary.error
    assert pdb._target(summary) == "failed"


def test_merge_combines_runs_in_table_order_and_rejects_repeats(tmp_path: Path) -> None:
    pdb = _import_posteriordb_data()
    first = [_score(pdb, "gp_pois_regr", "AutoFlow-iaf", 1, khat=0.5, err=0.05)]
    second = [
        _score(pdb, "gp_pois_regr", "AutoFlow-iaf", 0, khat=0.7, err=0.07),
        _score(pdb, "diamonds", "AutoNormal", 0, khat=1.2, err=10.0),
    ]
    pdb.write_results(tmp_path / "a", "Pyro", first, {"command": "run a"})
    pdb.write_results(tmp_path / "b", "Pyro", second, {"command": "run b"})
    pdb.merge_results([tmp_path / "a", tmp_path / "b"], tmp_path / "all", "Pyro", "merge")
    payload = json.loads((tmp_path / "all" / "posteriordb_pyro.json").read_text())
    order = [(s["posterior"], s["guide"], s["seed"]) for s in payload["scores"]]
    assert order == [
        ("diamonds", "AutoNormal", 0),
        ("gp_pois_regr", "AutoFlow-iaf", 0),
        ("gp_pois_regr", "AutoFlow-iaf", 1),
    ]
    (_, flow) = payload["summary"]
    assert flow["khat"] == pytest.approx(0.6)
    assert payload["meta"]["run 1: command"] == "run a"
    table = (tmp_path / "all" / "posteriordb_pyro.md").read_text()
    assert "| gp_pois_regr | AutoFlow-iaf | -10.50 | 0.60 (0.50-0.70) |" in table
    assert "Every run:" in table
    with pytest.raises(SystemExit, match="appear twice"):
        pdb.merge_results([tmp_path / "a", tmp_path / "a"], tmp_path / "x", "Pyro", "merge")
    pdb.merge_results(
        [tmp_path / "a", tmp_path / "b"],
        tmp_path / "gp",
        "Pyro",
        "merge",
        posteriors=["gp_pois_regr"],
        guides=["AutoFlow-iaf"],
    )
    payload = json.loads((tmp_path / "gp" / "posteriordb_pyro.json").read_text())
    assert [(s["posterior"], s["seed"]) for s in payload["scores"]] == [
        ("gp_pois_regr", 0),
        ("gp_pois_regr", 1),
    ]


def test_seeds_must_be_distinct_integers() -> None:
    pdb = _import_posteriordb_data()
    assert pdb._seeds("0, 1,2") == [0, 1, 2]
    with pytest.raises(SystemExit, match="--seeds"):
        pdb._seeds("0,a")
    with pytest.raises(SystemExit, match="--seeds"):
        pdb._seeds("1,1")


def test_a_run_that_raises_is_recorded_as_failed_with_its_seed() -> None:
    pdb = _import_posteriordb_data()

    def run_one(posterior, guide, inputs, reference, *, steps, seed, settings):
        raise FloatingPointError(f"NaN at step 7 of {steps}")

    train = functools.partial(run_one, steps=50)
    settings = pdb.guide_settings("AutoFlow-iaf", "diamonds")
    score = pdb._run_safely(train, "diamonds", "AutoFlow-iaf", {}, None, seed=3, settings=settings)
    assert (score.seed, score.steps) == (3, 50)
    assert score.error == "FloatingPointError: NaN at step 7 of 50"
    assert pdb._target(score) == "failed"


def test_command_line_overrides_reach_the_settings_and_the_flow_size() -> None:
    pdb = _import_posteriordb_data()
    args = argparse.Namespace(lr=None, particles=16, autoflow={"transforms": 5, "hidden": [8, 8]})
    flow = pdb._settings("AutoFlow-iaf", "gp_pois_regr", args)
    assert (flow.lr, flow.particles) == (pdb.AUTOFLOW_LR["AutoFlow-iaf"]["gp_pois_regr"], 16)
    assert pdb.autoflow_kwargs(13, flow.options) == {"transforms": 5, "hidden": (8, 8)}
    nsf = pdb._settings("AutoFlow-nsf", "gp_pois_regr", args)
    assert nsf.options == {"mode": "coupling", "transforms": 5, "hidden": [8, 8]}
    baseline = pdb._settings("AutoNormal", "gp_pois_regr", args)
    assert (baseline.particles, baseline.options) == (16, {})  # AutoFlow options stay AutoFlow's
    plain = pdb._settings(
        "AutoFlow-iaf", "diamonds", argparse.Namespace(lr=None, particles=None, autoflow=None)
    )
    assert pdb.autoflow_kwargs(26, plain.options) == {"transforms": 3, "hidden": (104, 104)}


def test_the_laplace_stl_guide_is_the_iaf_recipe_with_its_options() -> None:
    pdb = _import_posteriordb_data()
    settings = pdb.guide_settings("AutoFlow-iaf-laplace-stl", "eight_schools_centered")
    assert settings.options == {"base": "laplace", "stl": True}
    assert settings.particles == 8
    assert pdb.flow_recipe("AutoFlow-iaf-laplace-stl") == "iaf"
    assert pdb.flow_recipe("AutoFlow-nsf") == "nsf"
    assert pdb.autoflow_options(settings.options) == "warmup='laplace', base='laplace', stl=True"
    with pytest.raises(ValueError, match="AutoFlow guide name, got 'AutoNormal'"):
        pdb.flow_recipe("AutoNormal")
    # the command line's --autoflow still overrides the variant's own options
    args = argparse.Namespace(lr=None, particles=None, autoflow={"stl": False})
    assert pdb._settings("AutoFlow-iaf-laplace-stl", "diamonds", args).options == {
        "base": "laplace",
        "stl": False,
    }
