"""The continuous family (torch): `Continuous` and `FFJORD` beyond the invariant suite.

Exact-trace log-det against the autograd Jacobian of an adaptive solve at tight tolerances;
the Hutchinson estimate's mean against the exact trace within its standard error; the round
trip at the solver's tolerance; the score of a sample from the cache against the inverse
solve; adjoint against backpropagation gradients; the NFE count; the RNODE integrals; the
option checks and the solver errors.
"""

from __future__ import annotations

import pytest
import torch

import pyroflows.pyro as pf
from pyroflows._continuous import STAGES

pytestmark = pytest.mark.usefixtures("float64", "seeded")


def moved(module: torch.nn.Module, scale: float = 0.4, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def points(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


TIGHT = {"solver": "dopri5", "atol": 1e-10, "rtol": 1e-10}


@pytest.mark.parametrize("context", [0, 2])
def test_exact_log_det_is_the_log_det_of_the_solution_jacobian(context):
    cnf = moved(pf.Continuous(3, context, (8,), **TIGHT))
    x = points(4, 3)
    c = points(4, context, seed=2) if context else None
    y, log_det = cnf.forward_and_log_det(x, c)
    for i in range(4):
        ci = None if c is None else c[i : i + 1]
        jac = torch.autograd.functional.jacobian(
            lambda v, ci=ci: cnf.forward_and_log_det(v.unsqueeze(0), ci)[0][0], x[i]
        )
        assert abs(torch.linalg.slogdet(jac)[1] - log_det[i]) < 1e-7
    x_back, inverse_log_det = cnf.inverse_and_log_det(y, c)
    assert (x_back - x).abs().max() < 1e-7
    assert (inverse_log_det + log_det).abs().max() < 1e-6
    assert log_det.abs().max() > 1e-2  # the moved field changes volume


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_mean_matches_the_exact_trace(probe):
    exact = moved(pf.Continuous(3, hidden=(8,), solver="rk4", steps=8))
    noisy = pf.Continuous(3, hidden=(8,), trace="hutchinson", probe=probe, solver="rk4", steps=8)
    noisy.load_state_dict(exact.state_dict())
    x = points(1, 3).expand(4000, 3)
    target = exact.forward_and_log_det(x[:1])[1]
    y, estimates = noisy.forward_and_log_det(x)
    assert (y - exact.forward_and_log_det(x[:1])[0]).abs().max() < 1e-12  # the same path
    error = estimates.std() / 4000**0.5
    assert estimates.std() > 1e-3  # a real estimate, not the exact trace
    assert abs(estimates.mean() - target) < 4 * error


def test_sample_scored_from_the_cache_equals_the_inverse_solve():
    flow = moved(pf.FFJORD(2, transforms=2, hidden=(8,), **TIGHT))
    d = flow()
    x = d.rsample((6,))
    cached = d.log_prob(x)
    fresh = d.log_prob(x.clone())  # an inverse solve
    assert (cached - fresh).abs().max() < 1e-6
    assert (cached - d.base_dist.log_prob(x)).abs().max() > 1e-2


@pytest.mark.parametrize("solver", [{"solver": "rk4", "steps": 32}, TIGHT])
def test_adjoint_and_backprop_gradients_agree(solver):
    plain = moved(pf.Continuous(3, 2, (8,), **solver))
    adjoint = pf.Continuous(3, 2, (8,), adjoint=True, **solver)
    adjoint.load_state_dict(plain.state_dict())
    x = points(5, 3)
    c = points(5, 2, seed=2).requires_grad_(True)
    grads = []
    for cnf in (plain, adjoint):
        cnf.zero_grad()
        c.grad = None
        y, log_det = cnf.inverse_and_log_det(x, c)
        ((y**2).sum() + log_det.sum()).backward()
        grads.append([p.grad.clone() for p in cnf.parameters()] + [c.grad.clone()])
    # the adjoint integrates its own ODE backwards: it agrees to the solver's error
    tol = 1e-6
    for a, b in zip(*grads, strict=True):
        assert (a - b).abs().max() <= tol * (1 + b.abs().max())
    assert max(g.abs().max() for g in grads[0]) > 1e-3


def test_nfe_is_counted():
    cnf = moved(pf.Continuous(2, hidden=(8,), solver="rk4", steps=5))
    cnf.forward_and_log_det(points(3, 2))
    assert cnf.nfe == STAGES["rk4"] * 5
    loose = moved(pf.Continuous(2, hidden=(8,), atol=1e-4, rtol=1e-4))
    tight = moved(pf.Continuous(2, hidden=(8,), **TIGHT))
    counts = []
    for cnf in (loose, tight):
        solution = cnf.solve(points(3, 2))
        assert solution.nfe == cnf.nfe > 0
        counts.append(cnf.nfe)
    assert counts[1] > counts[0]


def test_regularizers_are_the_path_integrals():
    cnf = moved(pf.Continuous(2, hidden=(8,), solver="rk4", steps=64))
    twin = pf.Continuous(2, hidden=(8,), **TIGHT)
    twin.load_state_dict(cnf.state_dict())
    x = points(4, 2)
    fixed = cnf.solve(x, regularize=True)
    adaptive = twin.solve(x, regularize=True)
    assert (fixed.kinetic - adaptive.kinetic).abs().max() < 1e-6
    assert (fixed.jacobian - adaptive.jacobian).abs().max() < 1e-6
    assert fixed.kinetic.min() > 1e-2 and fixed.jacobian.min() > 1e-2
    back = cnf.solve(fixed.value, reverse=True, regularize=True)  # positive both ways
    assert (back.kinetic - fixed.kinetic).abs().max() < 1e-5
    # a Rademacher Hutchinson estimate of the Frobenius term is unbiased
    noisy = pf.Continuous(2, hidden=(8,), trace="hutchinson", solver="rk4", steps=16)
    noisy.load_state_dict(cnf.state_dict())
    estimates = noisy.solve(x[:1].expand(4000, 2), regularize=True).jacobian
    exact = pf.Continuous(2, hidden=(8,), solver="rk4", steps=16)
    exact.load_state_dict(cnf.state_dict())
    target = exact.solve(x[:1], regularize=True).jacobian
    assert abs(estimates.mean() - target) < 4 * estimates.std() / 4000**0.5
    # a fresh field is zero: nothing to penalise
    fresh = pf.Continuous(2, hidden=(8,), solver="euler", steps=3)
    assert fresh.solve(x, regularize=True).kinetic.abs().max() == 0


def test_empty_batch_and_batch_shapes():
    cnf = moved(pf.Continuous(2, 1, (8,), solver="rk4", steps=4))
    y, log_det = cnf.forward_and_log_det(torch.zeros(0, 2), torch.zeros(0, 1))
    assert y.shape == (0, 2) and log_det.shape == (0,)
    y, log_det = cnf.forward_and_log_det(points(2, 3, 2), points(3, 1, seed=4))
    assert y.shape == (2, 3, 2) and log_det.shape == (2, 3)


def test_option_errors():
    with pytest.raises(ValueError, match="fixed-step solver: give steps"):
        pf.Continuous(2, solver="rk4")
    with pytest.raises(ValueError, match="steps is for the fixed-step solvers"):
        pf.Continuous(2, steps=10)
    with pytest.raises(ValueError, match="trace must be one of"):
        pf.Continuous(2, trace="stochastic")
    with pytest.raises(ValueError, match="solver must be one of"):
        pf.FFJORD(2, solver="rk45")
    with pytest.raises(ValueError, match="atol must be a finite number > 0"):
        pf.Continuous(2, atol=0.0)
    with pytest.raises(ValueError, match="tsit5.*not available in the torch backend"):
        pf.Continuous(2, solver="tsit5")


def test_too_many_steps_raise():
    cnf = moved(pf.Continuous(2, hidden=(8,), atol=1e-12, rtol=1e-12, max_steps=3))
    with pytest.raises(pf.ODESolveError, match="solver='dopri5' failed.*raise max_steps"):
        cnf.forward_and_log_det(points(3, 2))
