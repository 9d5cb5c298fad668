"""Planar, radial and Sylvester layers, their recipes and amortized posteriors (torch).

The invariant suite (round trips, log-dets against autodiff Jacobians, shapes, save / load)
and the parity suite cover the layers and recipes; this file checks what is particular to
them: exact gradients through the iterative inverses, the non-convergence error, the
invertibility constraints at extreme parameters, the argument checks, and their use as
guides (`AmortizedFlow`, `AutoFlow`).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

import pyroflows.pyro as pf

pytestmark = pytest.mark.usefixtures("float64", "seeded")

LAYERS = {
    "planar": lambda c, inv: pf.PlanarLayer(3, c, (8,), invert=inv),
    "radial": lambda c, inv: pf.RadialLayer(3, c, (8,), invert=inv),
    "sylvester-orthogonal": lambda c, inv: pf.SylvesterLayer(3, c, (8,), columns=2, invert=inv),
    "sylvester-householder": lambda c, inv: pf.SylvesterLayer(
        3, c, (8,), kind="householder", reflections=2, invert=inv
    ),
    "sylvester-triangular": lambda c, inv: pf.SylvesterLayer(
        3, c, (8,), kind="triangular", reverse=True, invert=inv
    ),
}


def _moved(layer, scale: float = 0.8):
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn_like(p))
    return layer


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_gradients_through_the_inverse_match_finite_differences(name):
    """The iterative inverse (a Newton step in the graph at the root) and the closed-form
    radial inverse differentiate exactly, in the data, the context and every parameter."""
    layer = _moved(LAYERS[name](2, False))  # forward_and_log_det is the solve
    y, c = torch.randn(4, 3), torch.randn(4, 2)
    assert torch.autograd.gradcheck(
        lambda y, c: layer.forward_and_log_det(y, c),
        (y.clone().requires_grad_(True), c.clone().requires_grad_(True)),
        eps=1e-6,
        atol=1e-5,
    )
    weights = torch.randn(4, 3)

    def loss() -> torch.Tensor:
        z, log_det = layer.forward_and_log_det(y, c)
        return (weights * z).sum() + log_det.sum()

    layer.zero_grad()
    loss().backward()
    params = list(layer.parameters())
    directions = [torch.randn_like(p) for p in params]
    slope = sum((p.grad * d).sum() for p, d in zip(params, directions, strict=True))
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, directions, strict=True):
            p.add_(eps * d)
        up = loss()
        for p, d in zip(params, directions, strict=True):
            p.sub_(2 * eps * d)
        down = loss()
    torch.testing.assert_close(slope, (up - down) / (2 * eps), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["planar", "sylvester-householder"])
def test_an_unreachable_tolerance_raises_with_the_count_of_rows(name):
    layer = _moved(LAYERS[name](0, False))
    layer.max_iter = 1
    with pytest.raises(pf.ConvergenceError, match=r"did not converge for \d+ of 20 rows"):
        layer.forward_and_log_det(3 * torch.randn(20, 3))
    layer.max_iter = 100
    x, _ = layer.forward_and_log_det(3 * torch.randn(20, 3))
    assert torch.isfinite(x).all()


def test_invertibility_constraints_hold_at_extreme_parameters():
    """``w^T u`` far below -1 (planar), ``beta`` far below ``-alpha`` (radial) and
    ``R_ii R~_ii`` near -1 (Sylvester) still give invertible maps with finite log-dets."""
    planar = pf.PlanarLayer(3)
    radial = pf.RadialLayer(3)
    sylvester = pf.SylvesterLayer(3, kind="triangular")
    with torch.no_grad():
        planar.params["w"].copy_(torch.tensor([1.0, -2.0, 0.5]))
        planar.params["u"].copy_(-30 * planar.params["w"])
        radial.params["beta"].fill_(-40.0)
        sylvester.params["r"].copy_(torch.triu(torch.full((3, 3), 2.0)) + 4 * torch.eye(3))
        sylvester.params["r_tilde"].copy_(torch.triu(torch.full((3, 3), -1.0)) - 4 * torch.eye(3))
    for layer in (planar, radial, sylvester):
        z = 2 * torch.randn(50, 3)
        y, log_det = layer.inverse_and_log_det(z)  # explicit
        back, inv_log_det = layer.forward_and_log_det(y)  # solve
        assert torch.isfinite(log_det).all() and torch.isfinite(inv_log_det).all()
        torch.testing.assert_close(back, z, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(inv_log_det, -log_det, atol=1e-6, rtol=1e-6)


def test_radial_at_its_centre_is_finite_with_gradients():
    layer = _moved(pf.RadialLayer(3))
    y = layer.params["z0"].detach().clone().unsqueeze(0).requires_grad_(True)
    z, log_det = layer.inverse_and_log_det(y)
    (z.sum() + log_det.sum()).backward()
    assert torch.isfinite(y.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "qr"}, "kind must be one of"),
        ({"columns": 4}, "columns must be at most features=3"),
        ({"kind": "householder", "columns": 2}, "columns is for kind='orthogonal' only"),
        ({"reflections": 2}, "reflections is for kind='householder' only"),
        ({"reverse": True}, "reverse is for kind='triangular' only"),
        ({"max_iter": 0}, "max_iter"),
        ({"atol": -1.0}, "atol"),
    ],
)
def test_sylvester_argument_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pf.SylvesterLayer(3, **kwargs)


@pytest.mark.parametrize("flow", ["planar", "radial", "sylvester"])
def test_amortized_posteriors_sample_and_score_in_one_pass(flow):
    posterior = pf.AmortizedFlow(3, 4, flow, transforms=2, hidden=(8,))
    _moved(posterior.flow, 0.3)
    loc, scale, h = torch.randn(5, 3), torch.rand(5, 3) + 0.5, torch.randn(5, 4)
    q = posterior(loc, scale, h)
    z = q.rsample()
    cached = q.log_prob(z)
    fresh = posterior(loc, scale, h).log_prob(z.detach().clone())  # through the solves
    torch.testing.assert_close(cached, fresh, atol=1e-8, rtol=1e-8)
    cached.sum().backward()
    assert all(p.grad is not None for p in posterior.parameters())


def test_amortized_flow_refuses_the_data_to_base_direction():
    with pytest.raises(ValueError, match="invert must be True"):
        pf.AmortizedFlow(3, 4, "sylvester", invert=False)
    with pytest.raises(ValueError, match="flow must be one of"):
        pf.AmortizedFlow(3, 4, "maf")


@pytest.mark.parametrize("flow", ["planar", "radial", "sylvester", "residual"])
def test_autoflow_trains_with_the_residual_family(flow):
    """A conjugate model: the guide's mean approaches the exact posterior mean."""
    pyro.clear_param_store()
    y = torch.tensor([1.0, 2.0, 1.5, 0.5])

    def model():
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 2.0).to_event(1))
        with pyro.plate("n", 4):
            pyro.sample("y", dist.Normal(mu.sum(), 1.0), obs=y)

    guide = pf.AutoFlow(model, flow=flow, transforms=2, hidden=(16,))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    losses = [svi.step() for _ in range(150)]
    assert all(torch.isfinite(torch.tensor(losses)))
    draws = guide.get_posterior().sample((2000,))
    # the posterior of mu1 + mu2 is Normal(8 * 5 / (4 * 8 + 1) ... ): mean 40 / 33
    assert abs(float(draws.sum(-1).mean()) - 40 / 33) < 0.15
