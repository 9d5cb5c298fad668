"""Backend-free helpers of the posteriordb examples: data, reference draws, scores, tables.

Shared by ``posteriordb_pyro.py`` and ``posteriordb_numpyro.py``; it needs numpy only (and
ArviZ for the Pareto k-hat), so importing it pulls in neither torch nor JAX.

The data live outside the repository (see ``../shared/data/README.md``)::

    <data>/posteriordb/data/NAME.json.zip         the model's data
    <data>/posteriordb/draws/POSTERIOR.json.zip   10 chains, each {param name: 1000 draws}
    <data>/posteriordb/info/POSTERIOR.json        model, data and reference names

`resolve_data_dir` finds ``<data>``: the ``--data`` argument (absolute, relative to the current
directory, or relative to the repository root), by default ``../shared/data`` relative to the
repository root.

Why the scores use 10000 importance draws and several seeds: one run's k-hat is noisy. The
same trained guide gave k-hats from 0.52 to 0.84 on five sets of 1000 importance draws
(Pyro IAF, centered eight schools; ``benchmarks/bench_psis.py``), and training seeds move
it too; with ``--seeds 0,1,2`` the table reports the means over the seeds (and every run
below them).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shlex
import sys
import time
import traceback
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "POSTERIORS",
    "GUIDES",
    "Reference",
    "Score",
    "resolve_data_dir",
    "load_data",
    "load_reference",
    "flatten_draws",
    "derive",
    "model_inputs",
    "score_guide",
    "elbo_and_khat",
    "Summary",
    "summarize",
    "write_results",
    "merge_results",
    "select",
    "repo_version",
    "LATENT_DIM",
    "BASELINE_LR",
    "GuideSettings",
    "AUTOFLOW_LR",
    "AUTOFLOW_OPTIONS",
    "guide_settings",
    "flow_recipe",
    "flow_width",
    "autoflow_kwargs",
    "autoflow_options",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = "../shared/data"

#: Short names used on the command line -> posteriordb posterior names.
POSTERIORS: dict[str, str] = {
    "eight_schools_noncentered": "eight_schools-eight_schools_noncentered",
    "eight_schools_centered": "eight_schools-eight_schools_centered",
    "diamonds": "diamonds-diamonds",
    "gp_pois_regr": "gp_pois_regr-gp_pois_regr",
}

#: Guide names used on the command line, in table order.
GUIDES: tuple[str, ...] = (
    "AutoNormal",
    "AutoMultivariateNormal",
    "AutoIAFNormal",
    "AutoFlow-iaf",
    "AutoFlow-iaf-laplace-stl",
    "AutoFlow-nsf",
)

#: AutoFlow's keyword arguments per guide, beyond the recipe (``flow_recipe``) and the size.
#: ``AutoFlow-nsf``: spline coupling (AutoFlow's default for "nsf", spelled out for the
#: table); the autoregressive NSF is MAF-direction and would draw one latent dimension at a
#: time. ``AutoFlow-iaf-laplace-stl``: the setting docs/inference.md recommends for
#: hierarchical models (a Laplace base under the IAF and sticking-the-landing path gradients).
AUTOFLOW_OPTIONS: dict[str, dict] = {
    "AutoFlow-iaf-laplace-stl": {"base": "laplace", "stl": True},
    "AutoFlow-nsf": {"mode": "coupling"},
}


#: Unconstrained latent dimension of each model (sets the guides' hidden widths).
LATENT_DIM: dict[str, int] = {
    "eight_schools_noncentered": 10,
    "eight_schools_centered": 10,
    "diamonds": 26,
    "gp_pois_regr": 13,
}

#: The baselines' learning rates, per posterior: the best final ELBO of 10000-step NumPyro
#: runs over {3e-3, 1e-2, 3e-2} (the Pyro script uses the same ones).
BASELINE_LR: dict[str, dict[str, float]] = {
    "AutoNormal": {
        "eight_schools_noncentered": 1e-2,
        "eight_schools_centered": 3e-2,
        "diamonds": 3e-2,
        "gp_pois_regr": 1e-2,
    },
    "AutoMultivariateNormal": {
        "eight_schools_noncentered": 1e-2,
        "eight_schools_centered": 3e-2,
        "diamonds": 3e-2,
        "gp_pois_regr": 1e-2,
    },
    "AutoIAFNormal": {
        "eight_schools_noncentered": 3e-3,
        "eight_schools_centered": 3e-3,
        "diamonds": 3e-3,
        "gp_pois_regr": 3e-3,
    },
}


@dataclass
class GuideSettings:
    """Training settings of one guide on one posterior."""

    lr: float
    particles: int = 8
    options: dict = field(default_factory=dict)  # extra AutoFlow keyword arguments


#: AutoFlow's learning rates, per posterior: picked like the baselines', by the final ELBO of
#: 10000-step NumPyro runs (never by the reference draws), over {1e-3, 3e-3, 1e-2} (1e-3 is
#: the rate AutoFlow's documentation recommends after its warm start). Final ELBOs at
#: 1e-3 / 3e-3 / 1e-2:
#:
#: * eight_schools_noncentered: IAF -31.34 / -31.33 / -31.34, NSF -31.35 / -31.37 / -31.41;
#: * eight_schools_centered: IAF -31.57 / -31.53 / -31.44, NSF -31.96 / -31.75 / -31.94 (no
#:   MAP: the MAP search finds no mode and the guide starts from ``init_to_median`` with an
#:   isotropic scale, so its flow has to learn the location and the scales too);
#: * diamonds: IAF 3190.59 / 3190.56 / 3190.50, NSF 3190.58 / 3190.55 / 3190.48;
#: * gp_pois_regr: IAF -47.87 / -47.79 / -47.93, NSF -48.12 / -47.97 / -48.34.
#:
#: Command: ``posteriordb_numpyro.py --posteriors P --guides AutoFlow-iaf,AutoFlow-nsf
#: --lr LR``. The IAF on a Laplace base (``--autoflow '{"base": "laplace"}'``, the runs in
#: ``results/variants/base_laplace``) picks the same rates: eight_schools_noncentered
#: -31.70 / -31.62 / -31.63, eight_schools_centered -32.35 / -32.04 / -31.77, diamonds
#: 3188.64 / 3188.62 / 3188.56, gp_pois_regr -48.71 / -48.41 / -48.66.
#: ``AutoFlow-iaf-laplace-stl`` (``--guides AutoFlow-iaf-laplace-stl --lr LR``, seed 0) picks
#: them too: eight_schools_noncentered -31.65 / -31.56 / -31.75, eight_schools_centered
#: -32.04 / -31.83 / -31.64, diamonds 3188.65 / 3188.63 / 3188.58, gp_pois_regr
#: -48.70 / -48.38 / -48.50.
AUTOFLOW_LR: dict[str, dict[str, float]] = {
    "AutoFlow-iaf": {
        "eight_schools_noncentered": 3e-3,
        "eight_schools_centered": 1e-2,
        "diamonds": 1e-3,
        "gp_pois_regr": 3e-3,
    },
    "AutoFlow-iaf-laplace-stl": {
        "eight_schools_noncentered": 3e-3,
        "eight_schools_centered": 1e-2,
        "diamonds": 1e-3,
        "gp_pois_regr": 3e-3,
    },
    "AutoFlow-nsf": {
        "eight_schools_noncentered": 1e-3,
        "eight_schools_centered": 3e-3,
        "diamonds": 1e-3,
        "gp_pois_regr": 3e-3,
    },
}


def guide_settings(guide: str, posterior: str) -> GuideSettings:
    """The settings used for ``guide`` on ``posterior`` (the same in both scripts)."""
    if guide in BASELINE_LR:
        return GuideSettings(lr=BASELINE_LR[guide][posterior])
    options = dict(AUTOFLOW_OPTIONS.get(guide, {}))  # a copy: callers may update it
    return GuideSettings(lr=AUTOFLOW_LR[guide][posterior], options=options)


def flow_recipe(guide: str) -> str:
    """The ``flow`` recipe of an AutoFlow guide name (``"AutoFlow-iaf-laplace-stl"``: ``"iaf"``)."""
    if not guide.startswith("AutoFlow-"):
        raise ValueError(f"guide must be an AutoFlow guide name, got {guide!r}")
    return guide.split("-")[1]


def flow_width(latent_dim: int) -> int:
    """Hidden width of every flow guide (AutoFlow's default): ``max(32, 4 * latent_dim)``."""
    return max(32, 4 * latent_dim)


def autoflow_kwargs(latent_dim: int, options: Mapping) -> dict:
    """AutoFlow's size arguments in the comparison, then ``options`` (which may override them).

    3 transforms of hidden width `flow_width` (as the PPL's AutoIAFNormal gets); a ``hidden``
    given as a list (from ``--autoflow`` JSON) becomes a tuple.
    """
    width = flow_width(latent_dim)
    kwargs = {"transforms": 3, "hidden": (width, width), **options}
    if isinstance(kwargs["hidden"], list):
        kwargs["hidden"] = tuple(kwargs["hidden"])
    return kwargs


def autoflow_options(options: Mapping) -> str:
    """AutoFlow's extra keyword arguments as text, for the settings column."""
    options = {"warmup": "laplace", **options}
    return ", ".join(f"{k}={v!r}" for k, v in options.items())


def resolve_data_dir(path: str | None) -> Path:
    """The ``posteriordb`` folder under ``path`` (or ``path`` itself if it is that folder).

    A relative ``path`` is looked up in the current directory first, then relative to the
    repository root, so the scripts work from anywhere. Exits with a clear message when the
    data cannot be found.
    """
    given = Path(path if path is not None else DEFAULT_DATA).expanduser()
    candidates = [given] if given.is_absolute() else [Path.cwd() / given, REPO_ROOT / given]
    for base in candidates:
        for folder in (base / "posteriordb", base):
            if (folder / "info").is_dir() and (folder / "draws").is_dir():
                return folder.resolve()
    tried = ", ".join(str(c) for c in candidates)
    sys.exit(
        f"posteriordb data not found (tried {tried}); pass --data DIR, where DIR holds "
        "posteriordb/{data,draws,info} (see ../shared/data/README.md)"
    )


def _read_zipped_json(path: Path):
    with zipfile.ZipFile(path) as archive:
        (member,) = archive.namelist()
        return json.loads(archive.read(member))


def _info(root: Path, posterior: str) -> dict:
    return json.loads((root / "info" / f"{posterior}.json").read_text())


def load_data(root: Path, posterior: str) -> dict:
    """The model data of a posteriordb posterior (a dict of numbers and lists)."""
    return _read_zipped_json(root / "data" / f"{_info(root, posterior)['data_name']}.json.zip")


@dataclass
class Reference:
    """Reference posterior draws: ``draws[i, j]`` is draw ``i`` of parameter ``names[j]``."""

    name: str
    names: list[str]
    draws: np.ndarray
    mean: np.ndarray = field(init=False)
    sd: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.mean = self.draws.mean(0)
        self.sd = self.draws.std(0, ddof=1)


def load_reference(root: Path, posterior: str) -> Reference:
    """Reference draws of ``posterior`` (following ``reference_posterior_name``), chains pooled."""
    name = _info(root, posterior)["reference_posterior_name"]
    chains = _read_zipped_json(root / "draws" / f"{name}.json.zip")
    names = list(chains[0])
    draws = np.concatenate([np.array([chain[n] for n in names]).T for chain in chains], axis=0)
    return Reference(name=name, names=names, draws=draws.astype(np.float64))


_INDEXED = re.compile(r"^(\w+)\[([\d,\s]+)\]$")


def flatten_draws(samples: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Columns of guide draws matching reference names (``theta[3]`` -> ``theta[:, 2]``).

    Args:
        samples: ``{site: array (num_draws, *site_shape)}``.
        names: Reference parameter names, Stan style (1-based indices).

    Returns:
        ``(num_draws, len(names))``.
    """
    columns = []
    for name in names:
        match = _INDEXED.match(name)
        if match:
            site, index = match.group(1), tuple(int(i) - 1 for i in match.group(2).split(","))
        else:
            site, index = name, ()
        value = np.asarray(samples[site], dtype=np.float64)
        columns.append(value[(slice(None), *index)] if index else value.reshape(len(value)))
    return np.stack(columns, axis=1)


def model_inputs(posterior: str, data: Mapping) -> dict[str, np.ndarray]:
    """The model's inputs as float64 numpy arrays (diamonds: the centred predictors ``Xc``)."""
    if posterior.startswith("eight_schools"):
        return {"y": np.asarray(data["y"], float), "sigma": np.asarray(data["sigma"], float)}
    if posterior == "diamonds":
        x = np.asarray(data["X"], float)[:, 1:]  # drop the intercept column
        return {"Xc": x - x.mean(0), "Y": np.asarray(data["Y"], float)}
    if posterior == "gp_pois_regr":
        return {"x": np.asarray(data["x"], float), "k": np.asarray(data["k"], float)}
    raise ValueError(f"unknown posterior {posterior!r}")


def derive(posterior: str, samples: Mapping, inputs: Mapping) -> dict[str, np.ndarray]:
    """Add the transformed parameters that the reference draws hold (numpy, float64).

    * eight_schools_noncentered: ``theta = mu + tau * theta_trans``.
    * gp_pois_regr: ``f = cholesky(K) @ f_tilde``, K the squared-exponential kernel + 1e-10 I.
    """
    out = {name: np.asarray(value, dtype=np.float64) for name, value in samples.items()}
    if posterior == "eight_schools_noncentered":
        out["theta"] = out["mu"][:, None] + out["tau"][:, None] * out["theta_trans"]
    elif posterior == "gp_pois_regr":
        out["f"] = gp_f(out["rho"], out["alpha"], out["f_tilde"], inputs["x"])
    return out


def gp_f(rho: np.ndarray, alpha: np.ndarray, f_tilde: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``f = cholesky(K) @ f_tilde`` for draws ``(n,)``, ``(n,)``, ``(n, N)`` (numpy)."""
    sq = (x[:, None] - x[None, :]) ** 2
    cov = alpha[:, None, None] ** 2 * np.exp(-sq / (2 * rho[:, None, None] ** 2))
    cov = cov + 1e-10 * np.eye(len(x))
    return np.einsum("nij,nj->ni", np.linalg.cholesky(cov), f_tilde)


@dataclass
class Score:
    """The scores of one (posterior, guide) run."""

    posterior: str
    guide: str
    elbo: float
    khat: float
    max_mean_err: float
    mean_mean_err: float
    min_sd_ratio: float
    max_sd_ratio: float
    train_s: float
    steps: int
    settings: str
    worst_param: str = ""
    per_param: dict = field(default_factory=dict)
    error: str = ""
    seed: int = 0


def elbo_and_khat(log_weights: np.ndarray) -> tuple[float, float]:
    """ELBO (mean log-weight) and Pareto k-hat (ArviZ PSIS, as ``psis_diagnostic`` does)."""
    import arviz

    log_weights = np.asarray(log_weights, dtype=np.float64)
    if not np.isfinite(log_weights).all():
        return float("nan"), float("inf")
    _, k = arviz.psislw(log_weights)
    return float(log_weights.mean()), float(np.asarray(k))


def score_guide(
    posterior: str,
    guide_name: str,
    guide: object,
    samples: Mapping[str, np.ndarray],
    inputs: Mapping,
    reference: Reference,
    log_weights: np.ndarray,
    *,
    train_s: float,
    steps: int,
    settings: str,
) -> Score:
    """Score a trained guide from its draws of the model's latent sites (numpy arrays).

    The reference parameters are derived from ``samples`` (`derive`). Mean error is
    ``|guide mean - reference mean| / reference sd`` per parameter; the sd ratio is
    ``guide sd / reference sd``; ELBO and k-hat come from ``log_weights``. AutoFlow's chosen
    warm start (``guide.warm_start_``) is appended to the settings text.
    """
    draws = flatten_draws(derive(posterior, samples, inputs), reference.names)
    if hasattr(guide, "warm_start_"):
        settings += f"; warm start used: {guide.warm_start_}"
    mean_err = np.abs(draws.mean(0) - reference.mean) / reference.sd
    sd_ratio = draws.std(0, ddof=1) / reference.sd
    elbo, khat = elbo_and_khat(log_weights)
    worst = int(np.nanargmax(mean_err)) if np.isfinite(mean_err).any() else 0
    return Score(
        posterior=posterior,
        guide=guide_name,
        elbo=elbo,
        khat=khat,
        max_mean_err=float(np.max(mean_err)),
        mean_mean_err=float(np.mean(mean_err)),
        min_sd_ratio=float(np.min(sd_ratio)),
        max_sd_ratio=float(np.max(sd_ratio)),
        train_s=train_s,
        steps=steps,
        settings=settings,
        worst_param=reference.names[worst],
        per_param={
            n: {"mean_err": float(e), "sd_ratio": float(r)}
            for n, e, r in zip(reference.names, mean_err, sd_ratio, strict=True)
        },
    )


def _fmt(x: float, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def _target(s: Score | Summary) -> str:
    if s.error:
        return "failed"
    return "yes" if s.khat < 0.7 and s.max_mean_err < 0.1 else "no"


@dataclass
class Summary:
    """The scores of one (posterior, guide) pair over its seeds: means, and min and max."""

    posterior: str
    guide: str
    seeds: list[int]
    elbo: float
    khat: float
    khat_range: tuple[float, float]
    max_mean_err: float
    max_mean_err_range: tuple[float, float]
    mean_mean_err: float
    min_sd_ratio: float
    max_sd_ratio: float
    train_s: float
    worst_param: str
    error: str = ""


def summarize(scores: Sequence[Score]) -> list[Summary]:
    """Group the runs by (posterior, guide), in order of first appearance, over their seeds.

    ELBO, k-hat, max and mean mean error and training time are averaged over the seeds (a
    failed seed makes the pair failed); the sd-ratio extremes are taken over all seeds; the
    worst parameter is the one with the largest mean error averaged over the seeds.
    """
    groups: dict[tuple[str, str], list[Score]] = {}
    for s in scores:
        groups.setdefault((s.posterior, s.guide), []).append(s)
    summaries = []
    for (posterior, guide), runs in groups.items():
        errors = "; ".join(f"seed {r.seed}: {r.error}" for r in runs if r.error)
        ok = [r for r in runs if not r.error] or runs
        khats = [r.khat for r in ok]
        max_errs = [r.max_mean_err for r in ok]
        params = ok[0].per_param
        worst = max(
            params,
            key=lambda n: np.mean([r.per_param[n]["mean_err"] for r in ok]),
            default="",
        )
        summaries.append(
            Summary(
                posterior=posterior,
                guide=guide,
                seeds=[r.seed for r in runs],
                elbo=float(np.mean([r.elbo for r in ok])),
                khat=float(np.mean(khats)),
                khat_range=(float(np.min(khats)), float(np.max(khats))),
                max_mean_err=float(np.mean(max_errs)),
                max_mean_err_range=(float(np.min(max_errs)), float(np.max(max_errs))),
                mean_mean_err=float(np.mean([r.mean_mean_err for r in ok])),
                min_sd_ratio=float(np.min([r.min_sd_ratio for r in ok])),
                max_sd_ratio=float(np.max([r.max_sd_ratio for r in ok])),
                train_s=float(np.mean([r.train_s for r in ok])),
                worst_param=worst,
                error=errors,
            )
        )
    return summaries


def _with_range(mean: float, span: tuple[float, float], digits: int, several: bool) -> str:
    text = _fmt(mean, digits)
    return f"{text} ({_fmt(span[0], digits)}-{_fmt(span[1], digits)})" if several else text


def write_results(out: Path, backend: str, scores: Sequence[Score], meta: Mapping) -> Path:
    """Write ``posteriordb_<backend>.md`` (a table) and ``.json`` (all numbers) into ``out``.

    With several seeds per (posterior, guide), the main table holds the means over the seeds
    with their range in brackets, and a second table lists every run.
    """
    out.mkdir(parents=True, exist_ok=True)
    summaries = summarize(scores)
    several = any(len(m.seeds) > 1 for m in summaries)
    seeds = sorted({s.seed for s in scores})
    lines = [
        f"# posteriordb: variational guides, {backend}",
        "",
        "Generated by `examples/posteriordb_"
        + ("pyro" if backend == "Pyro" else "numpyro")
        + ".py`. Command: `"
        + str(meta.get("command", ""))
        + "`.",
        "",
        "ELBO and k-hat from the same importance draws log p(x, z) - log q(z); mean error"
        " |guide mean - reference mean| / reference sd and sd ratio guide sd / reference sd"
        " over the parameters with reference draws; target: k-hat < 0.7 and max mean error"
        " < 0.1.",
        "",
    ]
    if several:
        lines += [
            f"Means over seeds {', '.join(map(str, seeds))} (min-max in brackets; the target"
            " is judged on the means; sd ratios are the extremes over all seeds).",
            "",
        ]
    lines += [
        "| posterior | guide | ELBO | k-hat | max mean err | worst param | mean mean err "
        "| sd ratio min | sd ratio max | train [s] | target |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for m in summaries:
        lines.append(
            f"| {m.posterior} | {m.guide} | {_fmt(m.elbo)} | "
            f"{_with_range(m.khat, m.khat_range, 2, several)} | "
            f"{_with_range(m.max_mean_err, m.max_mean_err_range, 3, several)} | "
            f"{m.worst_param} | {_fmt(m.mean_mean_err, 3)} | "
            f"{_fmt(m.min_sd_ratio)} | {_fmt(m.max_sd_ratio)} | {_fmt(m.train_s, 1)} | "
            f"{_target(m)} |"
        )
    if several:
        lines += [
            "",
            "Every run:",
            "",
            "| posterior | guide | seed | ELBO | k-hat | max mean err (param) | target |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for s in scores:
            lines.append(
                f"| {s.posterior} | {s.guide} | {s.seed} | {_fmt(s.elbo)} | {_fmt(s.khat)} | "
                f"{_fmt(s.max_mean_err, 3)} ({s.worst_param}) | {_target(s)} |"
            )
    failed = [s for s in scores if s.error]
    if failed:
        lines += ["", "Failures:", ""]
        lines += [f"- {s.posterior} / {s.guide} (seed {s.seed}): {s.error}" for s in failed]
    lines += ["", "Settings:", ""]
    seen = set()
    for s in scores:
        if (s.guide, s.settings) not in seen:
            seen.add((s.guide, s.settings))
            lines.append(f"- {s.guide} ({s.posterior}): {s.settings}")
    lines += ["", "Run:", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    stem = f"posteriordb_{'pyro' if backend == 'Pyro' else 'numpyro'}"
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    payload = {
        "backend": backend,
        "meta": dict(meta),
        "summary": [vars(m) for m in summaries],
        "scores": [vars(s) for s in scores],
    }
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


def merge_results(
    folders: Sequence[Path],
    out: Path,
    backend: str,
    command: str,
    *,
    posteriors: Sequence[str] = tuple(POSTERIORS),
    guides: Sequence[str] = GUIDES,
) -> Path:
    """Combine the JSON results of several runs (e.g. one per core or per seed) into one table.

    Only the runs of ``posteriors`` and ``guides`` are kept. They are ordered by posterior,
    guide (table order) and seed; a (posterior, guide, seed) present in two folders is an
    error. Each source run's notes are kept, numbered.
    """
    stem = f"posteriordb_{'pyro' if backend == 'Pyro' else 'numpyro'}"
    scores: list[Score] = []
    meta: dict = {"command": command}
    for i, folder in enumerate(folders, start=1):
        path = Path(folder) / f"{stem}.json"
        if not path.is_file():
            sys.exit(f"--merge: no {stem}.json in {folder}")
        payload = json.loads(path.read_text())
        scores += [
            Score(**s)
            for s in payload["scores"]
            if s["posterior"] in posteriors and s["guide"] in guides
        ]
        for key, value in payload["meta"].items():
            meta[f"run {i}: {key}"] = value
    keys = [(s.posterior, s.guide, s.seed) for s in scores]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        sys.exit(f"--merge: these (posterior, guide, seed) runs appear twice: {repeated}")
    order = {name: i for i, name in enumerate(POSTERIORS)}
    rank = {name: i for i, name in enumerate(GUIDES)}
    scores.sort(key=lambda s: (order.get(s.posterior, 99), rank.get(s.guide, 99), s.seed))
    return write_results(out, backend, scores, meta)


def repo_version() -> str:
    """The repository's commit (``git rev-parse --short HEAD``, ``+dirty`` with local edits)."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty else "")


def select(requested: str | None, known: Sequence[str], what: str) -> list[str]:
    """Parse a comma-separated filter (``None`` or ``"all"``: everything), exiting on typos."""
    if requested is None or requested == "all":
        return list(known)
    chosen = [r.strip() for r in requested.split(",") if r.strip()]
    unknown = [c for c in chosen if c not in known]
    if unknown:
        sys.exit(f"unknown {what} {unknown}; choose from {list(known)}")
    return chosen


RunOne = Callable[..., "Score"]


def _seeds(text: str) -> list[int]:
    """Parse ``--seeds`` ("0,1,2"), exiting with a message on anything but integers."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        sys.exit(f"--seeds takes comma-separated integers such as 0,1,2, got {text!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        sys.exit(f"--seeds takes distinct comma-separated integers such as 0,1,2, got {text!r}")
    return seeds


def _settings(guide: str, posterior: str, args: argparse.Namespace) -> GuideSettings:
    """The protocol's settings of ``guide`` on ``posterior`` with the command line's overrides."""
    settings = guide_settings(guide, posterior)
    if args.lr is not None:
        settings.lr = args.lr
    if args.particles is not None:
        settings.particles = args.particles
    if args.autoflow and guide.startswith("AutoFlow-"):
        settings.options = {**settings.options, **args.autoflow}
    return settings


def _run_safely(
    train: functools.partial,
    posterior: str,
    guide_name: str,
    inputs: Mapping,
    reference: Reference,
    *,
    seed: int,
    settings: GuideSettings,
) -> Score:
    """One training run and its scores; an exception is printed and recorded, not raised.

    ``train`` is the script's ``run_one`` with the step and draw counts bound.
    """
    try:
        s = train(posterior, guide_name, inputs, reference, seed=seed, settings=settings)
    except Exception as error:  # report and go on with the other runs
        traceback.print_exc()
        steps = train.keywords.get("steps", 0)
        s = Score(posterior, guide_name, *[float("nan")] * 6, 0.0, steps, "")
        s.error = f"{type(error).__name__}: {error}"
    s.seed = seed
    return s


def main(
    argv: list[str] | None,
    *,
    backend: str,
    run_one: RunOne,
    default_steps: int,
    quick_guides: str,
    versions: str,
    machine: str,
) -> int:
    """The command line of both scripts: parse, run every (posterior, guide), write the table.

    Args:
        argv: Command-line arguments (``None``: ``sys.argv[1:]``).
        backend: ``"Pyro"`` or ``"NumPyro"`` (names the script and the output files).
        run_one: ``(posterior, guide, inputs, reference, *, steps, eval_draws, moment_draws,
            seed, settings) -> Score``: trains one guide and scores it.
        default_steps: SVI steps of a full run.
        quick_guides: The guides of a ``--quick`` run.
        versions: Library versions, for the table's run notes.
        machine: The machine, for the table's run notes.
    """
    script = f"posteriordb_{backend.lower()}.py"
    parser = argparse.ArgumentParser(description=f"posteriordb comparison of guides, {backend}")
    parser.add_argument("--data", default=None, help="data folder (default ../shared/data)")
    parser.add_argument(
        "--posteriors", default=None, help="comma-separated names, or 'all' (the default)"
    )
    parser.add_argument("--guides", default=None, help="comma-separated names, or 'all'")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"SVI steps (default {default_steps})"
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed of a single-seed run")
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated seeds (e.g. 0,1,2): every guide trains once per seed and the "
        "table reports the means over the seeds",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="DIR",
        help="train nothing: combine the results of earlier runs (their --out folders, e.g. "
        "one run per core) into one table in --out, keeping the runs of --posteriors and "
        "--guides",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate for every guide instead of the protocol's (to pick rates by ELBO)",
    )
    parser.add_argument(
        "--particles",
        type=int,
        default=None,
        help="ELBO particles for every guide instead of the protocol's 8",
    )
    parser.add_argument(
        "--autoflow",
        type=json.loads,
        default=None,
        metavar="JSON",
        help='extra AutoFlow keyword arguments, e.g. \'{"transforms": 5, "hidden": [104, 104]}\' '
        "(they override the protocol's size)",
    )
    parser.add_argument("--out", default="outputs", help="folder for the table and JSON")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run: few steps and draws, eight_schools_noncentered with {quick_guides} "
        "unless --posteriors/--guides say otherwise",
    )
    args = parser.parse_args(argv)
    arguments = sys.argv[1:] if argv is None else argv
    command = f"python examples/{script} " + shlex.join(arguments)
    if args.merge:
        path = merge_results(
            [Path(m) for m in args.merge],
            Path(args.out),
            backend,
            command,
            posteriors=select(args.posteriors, list(POSTERIORS), "posteriors"),
            guides=select(args.guides, GUIDES, "guides"),
        )
        print(f"wrote {path}")
        return 0
    seeds = _seeds(args.seeds) if args.seeds is not None else [args.seed]

    root = resolve_data_dir(args.data)
    if args.quick:  # a smoke run: one posterior and few guides, unless asked
        args.posteriors = args.posteriors or "eight_schools_noncentered"
        args.guides = args.guides or quick_guides
    posteriors = select(args.posteriors, list(POSTERIORS), "posteriors")
    guides = select(args.guides, GUIDES, "guides")
    steps = args.steps or (30 if args.quick else default_steps)
    eval_draws, moment_draws = (200, 500) if args.quick else (10_000, 10_000)

    train = functools.partial(
        run_one, steps=steps, eval_draws=eval_draws, moment_draws=moment_draws
    )
    version, load = repo_version(), os.getloadavg()[0]  # before the long runs
    scores: list[Score] = []
    total = time.perf_counter()
    for posterior in posteriors:
        name = POSTERIORS[posterior]
        inputs = model_inputs(posterior, load_data(root, name))
        reference = load_reference(root, name)
        for guide_name in guides:
            for seed in seeds:
                settings = _settings(guide_name, posterior, args)
                s = _run_safely(
                    train, posterior, guide_name, inputs, reference, seed=seed, settings=settings
                )
                scores.append(s)
                print(
                    f"{posterior:26s} {guide_name:24s} seed {seed:3d} elbo {s.elbo:10.2f}  "
                    f"k-hat {s.khat:6.2f}  max err {s.max_mean_err:6.3f}  "
                    f"mean err {s.mean_mean_err:6.3f}  "
                    f"sd ratio [{s.min_sd_ratio:.2f}, {s.max_sd_ratio:.2f}]  {s.train_s:6.1f} s"
                    + (f"  FAILED {s.error}" if s.error else ""),
                    flush=True,
                )
    meta = {
        "command": command,
        "steps": steps,
        "importance draws (ELBO, k-hat)": eval_draws,
        "draws for moments": moment_draws,
        "seeds": ", ".join(map(str, seeds)),
        "pyroflows commit": version,
        "load average (1 min) at the start": f"{load:.1f} (other processes share the cores)",
        "total wall time [s]": round(time.perf_counter() - total, 1),
        "versions": versions,
        "machine": machine,
    }
    path = write_results(Path(args.out), backend, scores, meta)
    print(f"wrote {path}")
    return 0
