"""Flows inside Pyro programs: likelihoods, priors and guides under SVI."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

import pyroflows.pyro as pf


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is as fast, and immune to CPU oversubscription
    (with other processes on the cores, OpenMP's spinning threads slow small ops 10-50x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 1) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def count_calls(monkeypatch, modules, method):
    """Wrap ``method`` on every MaskedAutoregressive inside ``modules``; return the counter."""
    counter = {"n": 0}
    for module in modules:
        for m in module.modules():
            if isinstance(m, pf.MaskedAutoregressive):
                original = getattr(m, method)

                def wrapper(*args, _original=original, **kwargs):
                    counter["n"] += 1
                    return _original(*args, **kwargs)

                monkeypatch.setattr(m, method, wrapper)
    return counter


def empty_guide(*args, **kwargs):
    pass


# --------------------------------------------------------------------------- flow as likelihood


def test_svi_with_a_flow_likelihood_fits_gaussian_data():
    n = 500
    mean, sd = torch.tensor([3.0, -1.0]), torch.tensor([2.0, 0.5])
    data = mean + sd * torch.randn(n, 2)
    flow = pf.MAF(2, transforms=2, hidden=(16,))

    def model(x):
        pyro.module("flow", flow)
        with pyro.plate("data", n):
            pyro.sample("x", flow(), obs=x)

    svi = SVI(model, empty_guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
    with torch.no_grad():
        ll_before = flow().log_prob(data).mean().item()
    losses = [svi.step(data) for _ in range(250)]
    with torch.no_grad():
        ll_after = flow().log_prob(data).mean().item()
    # the SVI loss of an empty guide is the negative log-likelihood of the data
    assert losses[-1] == pytest.approx(-ll_after * n, rel=0.01)
    gaussian = dist.Normal(data.mean(0), data.std(0)).log_prob(data).sum(-1).mean().item()
    assert ll_before < gaussian - 3  # the N(0, I) start is far off
    assert ll_after > ll_before + 4
    assert ll_after > gaussian - 0.1
    samples = flow().sample((4000,))
    assert torch.allclose(samples.mean(0), data.mean(0), atol=0.15)
    assert torch.allclose(samples.std(0), data.std(0), rtol=0.1)


def test_svi_with_a_conditional_flow_likelihood():
    n = 300
    x = 4 * torch.rand(n, 1) - 2
    y = torch.cat([2 * x, -x], dim=-1) + 0.3 * torch.randn(n, 2)
    flow = pf.MAF(2, context=1, transforms=2, hidden=(16,))

    def model(x_ctx, y_obs):
        pyro.module("flow", flow)
        with pyro.plate("data", n):
            pyro.sample("y", flow(x_ctx), obs=y_obs)

    trace = pyro.poutine.trace(model).get_trace(x, y)
    trace.compute_log_prob()
    assert trace.nodes["y"]["fn"].batch_shape == (n,)
    assert trace.nodes["y"]["log_prob"].shape == (n,)
    assert torch.allclose(trace.nodes["y"]["log_prob"], flow(x).log_prob(y))

    svi = SVI(model, empty_guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
    losses = [svi.step(x, y) for _ in range(200)]
    assert losses[-1] < losses[0] - 1.0 * n
    with torch.no_grad():
        for c in (-1.0, 1.0):
            samples = flow(torch.tensor([c])).sample((2000,))
            assert torch.allclose(samples.mean(0), torch.tensor([2 * c, -c]), atol=0.3)
            assert (samples.std(0) < 0.6).all()


def test_pyro_module_registers_every_parameter():
    flow = pf.NSF(3, context=2, transforms=2, hidden=(8,), mode="coupling")
    names = [name for name, _ in flow.named_parameters()]
    pyro.module("flow", flow)
    store = pyro.get_param_store()
    assert len(store.keys()) == len(names)
    assert sorted(store.keys()) == sorted(f"flow$$${name}" for name in names)
    for name, p in flow.named_parameters():
        assert torch.equal(store[f"flow$$${name}"], p)


# --------------------------------------------------------------------------- flow as prior


def test_flow_prior_with_autonormal_guide():
    prior = perturb(pf.MAF(2, transforms=2, hidden=(8,)))  # fixed: not registered
    x = torch.tensor([1.0, -0.5]) + torch.randn(20, 2)

    def model(x):
        z = pyro.sample("z", prior())
        with pyro.plate("obs", x.shape[0]):
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    guide = AutoNormal(model)
    elbo = Trace_ELBO(num_particles=50, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    svi.step(x)  # initialises the guide
    loss_before = elbo.loss(model, guide, x)
    prior_before = {k: v.detach().clone() for k, v in prior.named_parameters()}
    for _ in range(150):
        svi.step(x)
    loss_after = elbo.loss(model, guide, x)
    assert loss_after < loss_before - 5
    # the posterior mean sits near the data mean (20 points, unit noise)
    assert torch.allclose(guide.median()["z"], x.mean(0), atol=0.25)
    # the fixed prior was not trained
    for k, v in prior.named_parameters():
        assert torch.equal(v, prior_before[k]), k


def test_iaf_guide_recovers_the_conjugate_posterior():
    sigma, n = 0.5, 10
    prior = pf.MAF(2, transforms=1, hidden=(8,))  # all-zero init: exactly N(0, I)
    x = torch.tensor([1.0, -2.0]) + sigma * torch.randn(n, 2)
    precision = 1 + n / sigma**2
    post_mean = x.sum(0) / sigma**2 / precision
    post_sd = precision**-0.5
    z0 = torch.randn(7, 2)
    assert torch.allclose(prior().log_prob(z0), dist.Normal(0.0, 1.0).log_prob(z0).sum(-1))

    iaf = pf.IAF(2, transforms=2, hidden=(16,))

    def model(x):
        z = pyro.sample("z", prior())
        with pyro.plate("obs", x.shape[0]):
            pyro.sample("x", dist.Normal(z, sigma).to_event(1), obs=x)

    def guide(x):
        pyro.module("guide_flow", iaf)
        pyro.sample("z", iaf())

    train_elbo = Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1)
    eval_elbo = Trace_ELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), train_elbo)
    loss_before = eval_elbo.loss(model, guide, x)
    for _ in range(250):
        svi.step(x)
    loss_after = eval_elbo.loss(model, guide, x)
    assert loss_after < loss_before - 50
    with torch.no_grad():
        samples = iaf().sample((5000,))
    assert torch.allclose(samples.mean(0), post_mean, atol=0.1)
    assert torch.allclose(samples.std(0), torch.full((2,), post_sd), rtol=0.3)
    # the optimum of the ELBO is -log p(x): the ELBO is tight for the conjugate model
    evidence = dist.MultivariateNormal(
        torch.zeros(n * 2), torch.eye(n * 2) * sigma**2 + torch.kron(torch.ones(n, n), torch.eye(2))
    )
    neg_log_evidence = -evidence.log_prob(x.reshape(-1)).item()
    assert loss_after == pytest.approx(neg_log_evidence, abs=0.5)


@pytest.mark.parametrize("vectorize", [False, True])
def test_iaf_guide_never_runs_the_sequential_direction(monkeypatch, vectorize):
    prior = perturb(pf.MAF(3, transforms=2, hidden=(8,)))
    iaf = pf.IAF(3, transforms=2, hidden=(8,))
    x = torch.randn(5, 3)

    def model(x):
        z = pyro.sample("z", prior())
        with pyro.plate("obs", x.shape[0]):
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        pyro.module("guide_flow", iaf)
        pyro.sample("z", iaf())

    sequential = count_calls(monkeypatch, [iaf, prior], "_sequential")
    one_pass = count_calls(monkeypatch, [iaf, prior], "_one_pass")
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=vectorize, max_plate_nesting=1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), elbo)
    for _ in range(3):
        svi.step(x)
    assert sequential["n"] == 0
    # per particle: one pass through each IAF layer (sample) and each MAF layer (prior score)
    particles = 1 if vectorize else 3
    assert one_pass["n"] == 3 * particles * (2 + 2)
    # scoring fresh data with the IAF does run it (the counter works)
    iaf().log_prob(torch.randn(2, 3))
    assert sequential["n"] == 2
