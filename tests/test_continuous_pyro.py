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


@pytest.mark.parametrize(("context", "solver"), [(0, "dopri5"), (2, "tsit5")])
def test_exact_log_det_is_the_log_det_of_the_solution_jacobian(context, solver):
    cnf = moved(pf.Continuous(3, context, (8,), solver=solver, atol=1e-10, rtol=1e-10))
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
    with pytest.raises(ValueError, match="tsit5.*with adjoint=True is not available"):
        pf.Continuous(2, solver="tsit5", adjoint=True)


def test_too_many_steps_raise():
    cnf = moved(pf.Continuous(2, hidden=(8,), atol=1e-12, rtol=1e-12, max_steps=3))
    with pytest.raises(pf.ODESolveError, match="solver='dopri5' failed.*raise max_steps"):
        cnf.forward_and_log_det(points(3, 2))


# --------------------------------------------------------------------------- flow matching


class GaussianPathField(pf.Continuous):
    """The exact marginal velocity of the straight paths from N(0, I) to N(m, s^2 I)."""

    def __init__(self, m: float, s: float) -> None:
        super().__init__(2, hidden=(4,))
        self.m, self.s = m, s

    def velocity(self, z, t, context=None):
        t = torch.as_tensor(t, dtype=z.dtype).expand(z.shape[:-1]).unsqueeze(-1)
        variance = (1 - t) ** 2 + t**2 * self.s**2
        return self.m + (t * self.s**2 - (1 - t)) / variance * (z - t * self.m)


def _gaussian_path_minimum(s: float) -> float:
    """E|u - E[u | x_t]|^2 per dimension, averaged over t ~ U(0, 1) (midpoint rule)."""
    t = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    variance = (1 - t) ** 2 + t**2 * s**2
    return float((1 + s**2 - (t * s**2 - (1 - t)) ** 2 / variance).mean())


def test_flow_matching_loss_is_minimised_by_the_true_field():
    m, s, n = 1.5, 0.5, 200_000
    field = GaussianPathField(m, s)
    flow = pf.Flow([field])
    data = m + s * points(n, 2, seed=5)
    losses = {}
    for shift in (0.0, 0.1, -0.1):
        field.m = m + shift  # a perturbed field, the same draws
        torch.manual_seed(0)
        losses[shift] = pf.flow_matching_loss(flow, data).item()
    field.m = m
    expected = 2 * _gaussian_path_minimum(s)  # two dimensions
    assert abs(losses[0.0] - expected) < 0.02 * expected
    assert losses[0.0] < losses[0.1] and losses[0.0] < losses[-0.1]


def test_ot_coupling_pairs_by_an_optimal_assignment():
    from pyroflows._continuous import ot_pairing

    rng = torch.Generator().manual_seed(0)
    noise, data = torch.randn(6, 2, generator=rng), torch.randn(6, 2, generator=rng)
    order = ot_pairing(noise.numpy(), data.numpy())
    best = min(
        float(((noise[list(p)] - data) ** 2).sum())
        for p in __import__("itertools").permutations(range(6))
    )
    assert abs(float(((noise[order] - data) ** 2).sum()) - best) < 1e-12
    # the coupled loss is lower: straighter paths
    flow = pf.FFJORD(2, hidden=(8,))
    torch.manual_seed(1)
    independent = pf.flow_matching_loss(flow, 2 + points(512, 2, seed=8)).item()
    torch.manual_seed(1)
    coupled = pf.flow_matching_loss(flow, 2 + points(512, 2, seed=8), coupling="ot").item()
    assert coupled < independent


def test_fit_by_flow_matching_and_by_likelihood():
    data = torch.tensor([1.0, -0.5]) + 0.5 * points(600, 2, seed=6)
    held_out = torch.tensor([1.0, -0.5]) + 0.5 * points(200, 2, seed=7)
    results = {}
    for objective, extra in (
        ("flow_matching", {"coupling": "ot"}),
        ("likelihood", {"kinetic": 0.1, "jacobian": 0.1}),
    ):
        flow = pf.FFJORD(2, hidden=(16,), solver="rk4", steps=6)
        before = flow().log_prob(held_out).mean().item()
        history = pf.fit(
            flow,
            data,
            epochs=15,
            batch_size=100,
            lr=1e-2,
            objective=objective,
            patience=None,
            progress=False,
            **extra,
        )
        assert len(history["train"]) == len(history["validation"]) == 15
        assert history["train"][-1] < history["train"][0]
        assert ("nfe" in history) == (objective == "likelihood")
        if objective == "likelihood":
            assert history["nfe"] == [4 * 6] * 15
        with torch.no_grad():
            results[objective] = float(flow().log_prob(held_out).mean())
        assert results[objective] > before + 0.3
    # the exact density of N(m, 0.25 I) scores -log(2 pi 0.25) - 1 = -1.16
    assert min(results.values()) > -1.7


def test_fit_argument_errors():
    with pytest.raises(ValueError, match="flow matching trains the vector field of one Continuous"):
        pf.fit(pf.MAF(2), points(50, 2), objective="flow_matching", progress=False)
    with pytest.raises(ValueError, match="this flow has none"):
        pf.fit(pf.MAF(2), points(50, 2), kinetic=0.1, progress=False)
    with pytest.raises(ValueError, match="solves no ODE"):
        pf.fit(pf.FFJORD(2), points(50, 2), objective="flow_matching", jacobian=1.0, progress=False)
    with pytest.raises(ValueError, match="maximum likelihood has no pairing"):
        pf.fit(pf.FFJORD(2), points(50, 2), coupling="ot", progress=False)
    with pytest.raises(ValueError, match="objective must be one of"):
        pf.fit(pf.FFJORD(2), points(50, 2), objective="score_matching", progress=False)
    with pytest.raises(ValueError, match="coupling='ot' pairs draws with rows regardless"):
        pf.flow_matching_loss(pf.FFJORD(2, 1), points(5, 2), points(5, 1), coupling="ot")
    with pytest.raises(ValueError, match=r"context must have shape \(5, 1\)"):
        pf.flow_matching_loss(pf.FFJORD(2, 1), points(5, 2))


# --------------------------------------------------------------------------- AutoFlow


def test_autoflow_ffjord_samples_and_scores_in_one_solve():
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO

    pyro.clear_param_store()
    y = torch.tensor([1.0, 2.0, 1.5, 0.5])

    def model():
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 2.0).to_event(1))
        with pyro.plate("n", 4):
            pyro.sample("y", dist.Normal(mu.sum(), 1.0), obs=y)

    guide = pf.AutoFlow(model, flow="ffjord", hidden=(16,), solver="rk4", steps=4)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    svi.step()
    (cnf,) = [m for m in guide.modules() if isinstance(m, pf.Continuous)]
    solves = []
    original = cnf.solve
    cnf.solve = lambda *a, **k: solves.append(k.get("reverse", False)) or original(*a, **k)
    losses = [svi.step() for _ in range(150)]
    assert solves[:3] == [False, False, False]  # a forward solve per step, no inverse
    assert len(solves) == 150
    assert all(torch.isfinite(torch.tensor(losses)))
    draws = guide.get_posterior().sample((2000,))
    assert abs(float(draws.sum(-1).mean()) - 40 / 33) < 0.15


def test_ffjord_is_a_likelihood_and_a_prior_in_a_pyro_model():
    import pyro
    import pyro.poutine as poutine

    flow = moved(pf.FFJORD(2, 1, hidden=(8,), solver="rk4", steps=4))
    data, context = points(6, 2), points(6, 1, seed=3)

    def model():
        z = pyro.sample("z", flow(torch.zeros(1)))  # a prior
        with pyro.plate("rows", 6):
            pyro.sample("x", flow(context + z[:1]), obs=data)  # a likelihood

    trace = poutine.trace(model).get_trace()
    trace.compute_log_prob()
    z = trace.nodes["z"]["value"]
    assert z.shape == (2,)
    expected_x = flow(context + z[:1]).log_prob(data)
    assert (trace.nodes["x"]["log_prob"] - expected_x).abs().max() < 1e-10
    # the prior's draw is scored from the cache; a fresh score solves back (rk4's error)
    assert abs(trace.nodes["z"]["log_prob"] - flow(torch.zeros(1)).log_prob(z.clone())) < 1e-6
    # conditional flow matching: the context is an input of the field
    loss = pf.flow_matching_loss(flow, data, context)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in flow.parameters())
