"""Every row of the error table in docs/errors.md, triggered in every backend it names.

The table is parsed from the page: each row's id must have a trigger here (and every trigger
a row), and the message the library raises must match the row's message, where ``…`` stands
for any text. A row that names ``both`` is triggered in torch and in JAX.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as ndist
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyroflows.numpyro as pfj
import pyroflows.pyro as pf

PAGE = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
KEY = jax.random.key(0)


def _rows() -> dict[str, tuple[str, str]]:
    """``{id: (backends, message)}`` from the page's tables."""
    rows = {}
    for line in PAGE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("id", "---") or not line.startswith("|"):
            continue
        message = re.match(r"`(.*?)`", cells[3])
        assert message, f"row {cells[0]}: the message must start with a `code` span"
        rows[cells[0]] = (cells[1], message.group(1))
    return rows


ROWS = _rows()


def _pattern(message: str) -> str:
    return ".*".join(re.escape(part) for part in message.split("…"))


DATA = np.random.default_rng(0).normal(size=(20, 3))


def _fit_torch(**kwargs):
    flow = pf.MAF(3, transforms=1, hidden=(4,))
    return pf.fit(flow, torch.as_tensor(DATA, dtype=torch.float32), progress=False, **kwargs)


def _fit_jax(**kwargs):
    flow = pfj.MAF(3, transforms=1, hidden=(4,), key=KEY)
    return pfj.fit(flow, DATA, progress=False, **kwargs)


def _resume(backend, tmp_path, first: dict, second: dict):
    fit = _fit_torch if backend == "torch" else _fit_jax
    path = tmp_path / ("fit.pt" if backend == "torch" else "fit.npz")
    fit(epochs=2, checkpoint=path, **first)
    fit(checkpoint=path, **second)


def _model():
    numpyro.sample("x", ndist.Normal(0.0, 1.0))


def _pyro_model():
    pyro.sample("x", dist.Normal(0.0, 1.0))


def _maf(m, **kw):
    return m.MAF(3, transforms=1, hidden=(4,), **kw)


def _stiff(m, **kw):
    """An FFJORD with a moved field whose adaptive solve may take only two steps."""
    flow = m.FFJORD(2, hidden=(8,), atol=1e-12, rtol=1e-12, max_steps=2, **kw)
    if m is pf:
        with torch.no_grad():
            for p in flow.parameters():
                p.fill_(0.5)
        return flow
    import equinox as eqx

    return jax.tree_util.tree_map(
        lambda leaf: jnp.full_like(leaf, 0.5) if eqx.is_inexact_array(leaf) else leaf, flow
    )


def _unconverged(m):
    """A planar layer moved off the identity whose solve gets one iteration."""
    if m is pf:
        layer = pf.PlanarLayer(3, max_iter=1)
        with torch.no_grad():
            layer.params["u"].fill_(3.0)
        return lambda: layer.forward_and_log_det(torch.full((4, 3), 5.0))
    import equinox as eqx

    layer = pfj.PlanarLayer(3, max_iter=1, key=KEY)
    layer = eqx.tree_at(lambda t: t.params["u"], layer, jnp.full(3, 3.0))
    return lambda: layer.forward_and_log_det(jnp.full((4, 3), 5.0))


# each trigger: backend -> (callable taking tmp_path, exception type)
TORCH, JAX = "torch", "jax"
T = {
    "features": {
        TORCH: lambda _: pf.MaskedAutoregressive(0),
        JAX: lambda _: pfj.MaskedAutoregressive(0, key=KEY),
    },
    "context": {
        TORCH: lambda _: pf.MaskedAutoregressive(3, -1),
        JAX: lambda _: pfj.MaskedAutoregressive(3, -1, key=KEY),
    },
    "hidden-int": {
        TORCH: lambda _: pf.MAF(3, hidden=64),
        JAX: lambda _: pfj.MAF(3, hidden=64, key=KEY),
    },
    "hidden": {
        TORCH: lambda _: pf.MAF(3, hidden=(0,)),
        JAX: lambda _: pfj.MAF(3, hidden=(0,), key=KEY),
    },
    "bound": {
        TORCH: lambda _: pf.SplineTransformer(bound=np.inf),
        JAX: lambda _: pfj.AffineTransformer(-1.0),
    },
    "bins": {
        TORCH: lambda _: pf.SplineTransformer(bins=1),
        JAX: lambda _: pfj.SplineTransformer(bins=1),
    },
    "alpha": {TORCH: lambda _: pf.Logit(2, alpha=0.5), JAX: lambda _: pfj.Logit(2, alpha=-0.1)},
    "activation": {
        TORCH: lambda _: pf.MAF(3, activation="sigmoid"),
        JAX: lambda _: pfj.MAF(3, activation="sigmoid", key=KEY),
    },
    "mode": {
        TORCH: lambda _: pf.NSF(3, mode="spline"),
        JAX: lambda _: pfj.NSF(3, mode="x", key=KEY),
    },
    "coupling-features": {TORCH: lambda _: pf.RealNVP(1), JAX: lambda _: pfj.RealNVP(1, key=KEY)},
    "mask": {
        TORCH: lambda _: pf.Coupling(3, mask=[True, True, True]),
        JAX: lambda _: pfj.Coupling(3, mask=[False, False, False], key=KEY),
    },
    "chain-features": {
        TORCH: lambda _: pf.Flow([pf.Scale(2), pf.Scale(3)]),
        JAX: lambda _: pfj.Flow([pfj.Scale(2), pfj.Scale(3)]),
    },
    "chain-empty": {TORCH: lambda _: pf.Chain([]), JAX: lambda _: pfj.Flow([])},
    "chain-type": {
        TORCH: (lambda _: pf.Flow([pf.Scale(2), torch.nn.Linear(2, 2)]), TypeError),
        JAX: (lambda _: pfj.Chain([pfj.Scale(2), "layer"]), TypeError),
    },
    "base-event": {
        TORCH: lambda _: pf.Flow([pf.Scale(2)], base=dist.Normal(torch.zeros(3), 1.0).to_event(1)),
        JAX: lambda _: pfj.Flow([pfj.Scale(2)], base=ndist.Normal(jnp.zeros(3), 1.0).to_event(1)),
    },
    "key": {JAX: lambda _: pfj.MAF(3)},
    "lipschitz": {
        TORCH: lambda _: pf.ResidualBlock(3, lipschitz=1.0),
        JAX: lambda _: pfj.ResidualFlow(3, lipschitz=0, key=KEY),
    },
    "logdet": {
        TORCH: lambda _: pf.ResidualFlow(3, logdet="exactly"),
        JAX: lambda _: pfj.ResidualBlock(3, logdet="hutchinson", key=KEY),
    },
    "lipschitz-activation": {
        TORCH: lambda _: pf.ResidualBlock(3, activation="relu"),
        JAX: lambda _: pfj.ResidualFlow(3, activation="gelu", key=KEY),
    },
    "sylvester-kind": {
        TORCH: lambda _: pf.Sylvester(3, kind="qr"),
        JAX: lambda _: pfj.SylvesterLayer(3, kind="lu", key=KEY),
    },
    "sylvester-columns": {
        TORCH: lambda _: pf.SylvesterLayer(3, columns=4),
        JAX: lambda _: pfj.Sylvester(2, columns=3, key=KEY),
    },
    "ode-steps": {
        TORCH: lambda _: pf.FFJORD(2, solver="rk4"),
        JAX: lambda _: pfj.Continuous(2, solver="euler", key=KEY),
    },
    "ode-steps-adaptive": {
        TORCH: lambda _: pf.Continuous(2, steps=4),
        JAX: lambda _: pfj.FFJORD(2, solver="tsit5", steps=4, key=KEY),
    },
    "ode-trace": {
        TORCH: lambda _: pf.FFJORD(2, trace="skilling"),
        JAX: lambda _: pfj.Continuous(2, trace="stochastic", key=KEY),
    },
    "ode-solver": {
        TORCH: lambda _: pf.Continuous(2, solver="rk45"),
        JAX: lambda _: pfj.FFJORD(2, solver="heun", key=KEY),
    },
    "image-shape": {
        TORCH: lambda _: pf.Glow((1, 4)),
        JAX: lambda _: pfj.Squeeze((0, 4, 4)),
    },
    "image-squeeze": {
        TORCH: lambda _: pf.Squeeze((1, 3, 4)),
        JAX: lambda _: pfj.Squeeze((1, 4, 5)),
    },
    "image-levels": {
        TORCH: lambda _: pf.Glow((1, 4, 6), levels=2),
        JAX: lambda _: pfj.RealNVP(shape=(1, 4, 4), levels=4, key=KEY),
    },
    "image-mask": {
        TORCH: lambda _: pf.ImageCoupling((2, 4, 4), mask="stripes"),
        JAX: lambda _: pfj.ImageCoupling((2, 4, 4), mask="stripes", key=KEY),
    },
    "image-channels": {
        TORCH: lambda _: pf.ImageCoupling((1, 4, 4), mask="channel"),
        JAX: lambda _: pfj.ImageCoupling((1, 4, 4), mask="channel", key=KEY),
    },
    "image-hidden": {
        TORCH: lambda _: pf.Glow((1, 4, 4), levels=1, hidden=(8, 16)),
        JAX: lambda _: pfj.RealNVP(shape=(1, 4, 4), hidden=(8, 16), key=KEY),
    },
    "chain-shapes": {
        TORCH: lambda _: pf.Chain([pf.ActNorm((1, 4, 4)), pf.ActNorm((4, 2, 2))]),
        JAX: lambda _: pfj.Flow([pfj.Squeeze((1, 4, 4)), pfj.Squeeze((1, 4, 4))]),
    },
    "ode-tsit5": {TORCH: lambda _: pf.FFJORD(2, solver="tsit5", adjoint=True)},
    "ode-solve": {
        TORCH: (lambda _: _stiff(pf)().log_prob(torch.zeros(3, 2)), pf.ODESolveError),
        JAX: (lambda _: _stiff(pfj, key=KEY)().log_prob(jnp.zeros((3, 2))), pfj.ODESolveError),
    },
    "fit-objective": {
        TORCH: lambda _: pf.fit(pf.FFJORD(2), torch.zeros(8, 2), objective="mle"),
        JAX: lambda _: pfj.fit(pfj.FFJORD(2, key=KEY), jnp.zeros((8, 2)), objective="fm"),
    },
    "fit-coupling": {
        TORCH: lambda _: pf.fit(pf.FFJORD(2), torch.zeros(8, 2), coupling="ot"),
        JAX: lambda _: pfj.fit(pfj.FFJORD(2, key=KEY), jnp.zeros((8, 2)), coupling="ot"),
    },
    "fit-regularizer": {
        TORCH: lambda _: pf.fit(_maf(pf), torch.zeros(8, 3), kinetic=0.1),
        JAX: lambda _: pfj.fit(_maf(pfj, key=KEY), jnp.zeros((8, 3)), jacobian=0.1),
    },
    "fit-regularizer-matching": {
        TORCH: lambda _: pf.fit(
            pf.FFJORD(2), torch.zeros(8, 2), objective="flow_matching", kinetic=1.0
        ),
        JAX: lambda _: pfj.fit(
            pfj.FFJORD(2, key=KEY), jnp.zeros((8, 2)), objective="flow_matching", jacobian=1.0
        ),
    },
    "flow-matching-flow": {
        TORCH: lambda _: pf.flow_matching_loss(pf.FFJORD(2, transforms=2), torch.zeros(8, 2)),
        JAX: lambda _: pfj.fit(_maf(pfj, key=KEY), jnp.zeros((8, 3)), objective="flow_matching"),
    },
    "flow-matching-ot-context": {
        TORCH: lambda _: pf.flow_matching_loss(
            pf.FFJORD(2, 1), torch.zeros(8, 2), torch.zeros(8, 1), coupling="ot"
        ),
        JAX: lambda _: pfj.flow_matching_loss(
            pfj.FFJORD(2, 1, key=KEY),
            jnp.zeros((8, 2)),
            jnp.zeros((8, 1)),
            key=KEY,
            coupling="ot",
        ),
    },
    "amortized-flow": {
        TORCH: lambda _: pf.AmortizedFlow(3, 2, "maf"),
        JAX: lambda _: pfj.AmortizedFlow(3, 2, "nsf", key=KEY),
    },
    "amortized-invert": {
        TORCH: lambda _: pf.AmortizedFlow(3, 2, "planar", invert=False),
        JAX: lambda _: pfj.AmortizedFlow(3, 2, "sylvester", invert=False, key=KEY),
    },
    "convergence": {
        TORCH: (lambda _: _unconverged(pf)(), pf.ConvergenceError),
        JAX: (lambda _: _unconverged(pfj)(), pfj.ConvergenceError),
    },
    "event-size": {
        TORCH: lambda _: _maf(pf)().log_prob(torch.zeros(2, 4)),
        JAX: lambda _: _maf(pfj, key=KEY).layers[0].forward_and_log_det(jnp.zeros((2, 4))),
    },
    "not-floating": {
        TORCH: lambda _: _maf(pf)().log_prob(torch.zeros(2, 3, dtype=torch.int64)),
        JAX: lambda _: _maf(pfj, key=KEY)().log_prob(jnp.zeros((2, 3), jnp.int32)),
    },
    "dtype": {TORCH: lambda _: _maf(pf)().log_prob(torch.zeros(2, 3, dtype=torch.float64))},
    "context-missing": {
        TORCH: lambda _: _maf(pf, context=2)(),
        JAX: lambda _: _maf(pfj, context=2, key=KEY)(),
    },
    "context-unexpected": {
        TORCH: lambda _: pf.ActNorm(3).inverse_and_log_det(torch.zeros(3), torch.zeros(2)),
        JAX: lambda _: pfj.Scale(3).forward_and_log_det(jnp.zeros(3), jnp.zeros(2)),
    },
    "context-size": {
        TORCH: lambda _: _maf(pf, context=2)(torch.zeros(3)),
        JAX: lambda _: _maf(pfj, context=2, key=KEY)(jnp.zeros(3)),
    },
    "context-nan": {
        TORCH: lambda _: _maf(pf, context=2)(torch.tensor([0.0, torch.nan])),
        JAX: lambda _: _maf(pfj, context=2, key=KEY)(jnp.array([0.0, jnp.inf])),
    },
    "context-broadcast": {
        TORCH: lambda _: (
            _maf(pf, context=2)
            .transforms[0]
            .forward_and_log_det(torch.zeros(4, 3), torch.zeros(3, 2))
        ),
        JAX: lambda _: _maf(pfj, context=2, key=KEY)(jnp.zeros((3, 2))).log_prob(jnp.zeros((4, 3))),
    },
    "value-nan": {
        TORCH: lambda _: _maf(pf)().log_prob(torch.tensor([0.0, torch.nan, 0.0])),
        JAX: lambda _: _maf(pfj, key=KEY)().log_prob(jnp.array([0.0, jnp.nan, 0.0])),
    },
    "support": {
        TORCH: lambda _: pf.Flow([pf.Scale(2), pf.Logit(2)])().log_prob(torch.tensor([0.5, 2.0]))
    },
    "expand": {
        TORCH: lambda _: _maf(pf)().expand((2, 1)).expand((4, 3)),
        JAX: lambda _: _maf(pfj, key=KEY)().expand((2, 1)).expand((4, 3)),
    },
    "sample-key": {JAX: (lambda _: _maf(pfj, key=KEY)().sample((100,)), TypeError)},
    "needs-condition": {TORCH: lambda _: _maf(pf, context=2).transforms[0](torch.zeros(3))},
    "cache-size": {TORCH: lambda _: pf.Scale(2).with_cache(2)},
    "params-names": {
        TORCH: lambda _: pf.set_params(_maf(pf), {"x": np.zeros(1)}),
        JAX: lambda _: pfj.set_params(_maf(pfj, key=KEY), {"x": np.zeros(1)}),
    },
    "params-shape": {
        TORCH: lambda _: pf.set_params(_maf(pf), {k: np.zeros(1) for k in pf.get_params(_maf(pf))}),
        JAX: lambda _: pfj.set_params(
            _maf(pfj, key=KEY), {k: np.zeros(1) for k in pfj.get_params(_maf(pfj, key=KEY))}
        ),
    },
    "fit-shape": {
        TORCH: lambda _: pf.fit(_maf(pf), torch.zeros(10, 4)),
        JAX: lambda _: pfj.fit(_maf(pfj, key=KEY), np.zeros((10, 4))),
    },
    "fit-nan": {
        TORCH: lambda _: pf.fit(_maf(pf), torch.full((10, 3), torch.nan)),
        JAX: lambda _: pfj.fit(_maf(pfj, key=KEY), np.full((10, 3), np.nan)),
    },
    "fit-empty": {
        TORCH: lambda _: pf.fit(_maf(pf), torch.zeros(0, 3)),
        JAX: lambda _: pfj.fit(_maf(pfj, key=KEY), np.zeros((0, 3))),
    },
    "fit-context": {
        TORCH: lambda _: pf.fit(_maf(pf, context=2), torch.zeros(10, 3)),
        JAX: lambda _: pfj.fit(_maf(pfj, context=2, key=KEY), np.zeros((10, 3))),
    },
    "fit-rows": {
        TORCH: lambda _: pf.fit(_maf(pf, context=2), torch.zeros(10, 3), torch.zeros(9, 2)),
        JAX: lambda _: pfj.fit(_maf(pfj, context=2, key=KEY), np.zeros((10, 3)), np.zeros((9, 2))),
    },
    "fit-epochs": {TORCH: lambda _: _fit_torch(epochs=0), JAX: lambda _: _fit_jax(batch_size=0)},
    "fit-lr": {TORCH: lambda _: _fit_torch(lr=-1e-3), JAX: lambda _: _fit_jax(lr=np.nan)},
    "fit-weight-decay": {
        TORCH: lambda _: _fit_torch(weight_decay=-0.1),
        JAX: lambda _: _fit_jax(weight_decay=-0.1),
    },
    "fit-clip": {
        TORCH: lambda _: _fit_torch(clip_grad=-1.0),
        JAX: lambda _: _fit_jax(clip_grad=0.0),
    },
    "fit-patience": {TORCH: lambda _: _fit_torch(patience=0), JAX: lambda _: _fit_jax(patience=0)},
    "fit-validation": {
        TORCH: lambda _: _fit_torch(validation=1.5),
        JAX: lambda _: _fit_jax(validation=-0.1),
    },
    "fit-split": {
        TORCH: lambda _: pf.fit(_maf(pf), torch.zeros(1, 3), validation=0.9),
        JAX: lambda _: pfj.fit(_maf(pfj, key=KEY), np.zeros((1, 3)), validation=0.9),
    },
    "fit-every": {TORCH: lambda _: _fit_torch(every=2), JAX: lambda _: _fit_jax(every=2)},
    "fit-checkpoint-epochs": {
        TORCH: lambda p: _resume("torch", p, {}, {"epochs": 1}),
        JAX: lambda p: _resume("jax", p, {}, {"epochs": 1}),
    },
    "fit-checkpoint-args": {
        TORCH: lambda p: _resume("torch", p, {"lr": 1e-3}, {"epochs": 3, "lr": 1e-2}),
        JAX: lambda p: _resume("jax", p, {"lr": 1e-3}, {"epochs": 3, "lr": 1e-2}),
    },
    "fit-nonfinite": {
        TORCH: (lambda _: _fit_torch(lr=1e30, clip_grad=None, validation=0), FloatingPointError),
        JAX: (lambda _: _fit_jax(lr=1e30, clip_grad=None, validation=0), FloatingPointError),
    },
    "fit-validation-nonfinite": {
        TORCH: (lambda _: _fit_torch(lr=1e30, clip_grad=None), FloatingPointError),
        JAX: (lambda _: _fit_jax(lr=1e30, clip_grad=None), FloatingPointError),
    },
    "autoflow-flow": {
        TORCH: lambda _: pf.AutoFlow(_pyro_model, flow="glow"),
        JAX: lambda _: pfj.AutoFlow(_model, flow="glow"),
    },
    "autoflow-warmup": {
        TORCH: lambda _: pf.AutoFlow(_pyro_model, warmup="newton"),
        JAX: lambda _: pfj.AutoFlow(_model, warmup="newton"),
    },
    "autoflow-restarts": {
        TORCH: lambda _: pf.AutoFlow(_pyro_model, restarts=-1),
        JAX: lambda _: pfj.AutoFlow(_model, restarts=2.5),
    },
    "autoflow-scale": {
        TORCH: lambda _: pf.AutoFlow(_pyro_model, init_scale=0),
        JAX: lambda _: pfj.AutoFlow(_model, init_scale=-1.0),
    },
    "autoflow-base": {
        TORCH: lambda _: pf.AutoFlow(_pyro_model, base="cauchy"),
        JAX: lambda _: pfj.AutoFlow(_model, base="cauchy"),
    },
    "autoflow-stl": {
        TORCH: (lambda _: pf.AutoFlow(_pyro_model, stl="yes"), TypeError),
        JAX: (lambda _: pfj.AutoFlow(_model, stl=1), TypeError),
    },
    "quantiles": {
        TORCH: lambda _: pf.AutoFlow(_pyro_model).quantiles([0.5, 1.5]),
        JAX: lambda _: pfj.AutoFlow(_model).quantiles({}, [0.0, 0.5]),
    },
    "levels": {
        TORCH: lambda _: pf.dequantize(torch.tensor([0, 1]), levels=1),
        JAX: lambda _: pfj.dequantize(KEY, jnp.array([0, 1]), levels=1),
    },
    "dequantize-range": {
        TORCH: lambda _: pf.dequantize(torch.tensor([0, 17]), levels=17),
        JAX: lambda _: pfj.dequantize(KEY, jnp.array([0.0, 17.0]), levels=17),
    },
    "dequantizer-flow": {
        TORCH: lambda _: pf.VariationalDequantizer((1, 2, 2), 17, flow=pf.MAF(4, 4)),
        JAX: lambda _: pfj.VariationalDequantizer(4, 17, flow=pfj.MAF(4, key=KEY)),
    },
}


def test_every_row_has_a_trigger_and_every_trigger_a_row():
    assert set(ROWS) == set(T)
    for row, (backends, _) in ROWS.items():
        expected = {"both": {TORCH, JAX}, "torch": {TORCH}, "jax": {JAX}}[backends]
        assert set(T[row]) == expected, f"row {row}: backends {backends}, triggers {set(T[row])}"


CASES = [(row, backend) for row in ROWS for backend in T.get(row, {})]


@pytest.mark.parametrize(("row", "backend"), CASES, ids=[f"{r}-{b}" for r, b in CASES])
def test_error_table_row(row, backend, tmp_path):
    trigger = T[row][backend]
    call, kind = trigger if isinstance(trigger, tuple) else (trigger, ValueError)
    message = ROWS[row][1]
    if row == "expand" and backend == JAX:
        # NumPyro's own message (its ExpandedDistribution checks the shapes)
        with pytest.raises(ValueError, match=r"Cannot broadcast distribution of shape \(2, 1\)"):
            call(tmp_path)
        return
    with pytest.raises(kind, match=_pattern(message)):
        call(tmp_path)
