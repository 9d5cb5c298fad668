"""`pyroflows.pyro.AutoFlow`: exact posteriors recovered, every autoguide feature exercised.

The reference posterior is a conjugate Bayesian linear regression on unstandardised covariates
with known noise: its posterior is Gaussian in closed form, with standard deviations that differ
by four orders of magnitude and a strong correlation between intercept and slope (the case
where a flow on the raw unconstrained space stalls).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide.initialization import init_to_value

import pyroflows.pyro as pf
from pyroflows.pyro.autoregressive import MaskedAutoregressive
from pyroflows.pyro.infer import AutoFlow, FixedAffine

PRIOR_SD = np.array([10.0, 100.0, 100.0])
NOISE = 0.5


@pytest.fixture(autouse=True)
def _clean_param_store():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def regression_data(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.stack([rng.normal(1000.0, 300.0, n), rng.normal(0.0, 0.01, n)], 1)
    y = 3.0 + 0.002 * x[:, 0] + 50.0 * x[:, 1] + rng.normal(0.0, NOISE, n)
    design = np.c_[np.ones(n), x]
    precision = design.T @ design / NOISE**2 + np.diag(PRIOR_SD**-2.0)
    cov = np.linalg.inv(precision)
    mean = cov @ (design.T @ y / NOISE**2)
    data = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    return data, mean, cov


def regression(x, y=None, subsample_size=None):
    a = pyro.sample("a", dist.Normal(0.0, float(PRIOR_SD[0])))
    b = pyro.sample("b", dist.Normal(torch.zeros(2), float(PRIOR_SD[1])).to_event(1))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        obs = None if y is None else y[idx]
        mu = a + (x[idx] * b).sum(-1)  # broadcasts over vectorized particles
        pyro.sample("y", dist.Normal(mu, NOISE), obs=obs)


def train(model, guide, *args, steps=300, lr=1e-2, decay=1.0, elbo=None, **kwargs):
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": decay})
    svi = SVI(model, guide, optim, elbo or Trace_ELBO())
    return [svi.step(*args, **kwargs) for _ in range(steps)]


def draws(guide, num_samples=20000):
    """Posterior draws of (a, b1, b2): the packed latent is (a, b) on the real line."""
    with torch.no_grad():
        return guide.get_posterior().sample((num_samples,)).double()


def assert_matches_gaussian(samples, mean, cov, mean_tol=0.1, sd_tol=0.1, corr_tol=0.08):
    samples = samples.numpy()
    sd = np.sqrt(np.diag(cov))
    mean_error = (samples.mean(0) - mean) / sd
    sd_ratio = samples.std(0) / sd
    assert np.abs(mean_error).max() < mean_tol, mean_error
    assert np.abs(sd_ratio - 1).max() < sd_tol, sd_ratio
    corr = np.corrcoef(samples.T)
    assert np.abs(corr - cov / np.outer(sd, sd)).max() < corr_tol, corr


@pytest.mark.parametrize("flow", ["iaf", "nsf"])
def test_badly_scaled_conjugate_regression_is_recovered_from_defaults(flow):
    (x, y), mean, cov = regression_data()
    sd = np.sqrt(np.diag(cov))
    assert sd.max() / sd.min() > 1e4  # the test is about a badly scaled posterior
    guide = AutoFlow(regression, flow=flow)
    # the warm start is close: a small, decaying learning rate and a few particles keep the
    # gradient noise from moving it (Adam random-walks the flow's many weights otherwise)
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True)
    losses = train(regression, guide, x, y, steps=300, lr=1e-3, decay=0.99, elbo=elbo)
    assert all(math.isfinite(v) for v in losses)
    assert_matches_gaussian(draws(guide), mean, cov)


def test_flow_parameters_are_trained_and_the_warm_start_is_frozen():
    (x, y), _, _ = regression_data()
    guide = AutoFlow(regression, transforms=1)
    train(regression, guide, x, y, steps=1)
    fixed = guide.flow.transforms[-1]
    assert isinstance(fixed, FixedAffine)
    before = {k: v.detach().clone() for k, v in guide.named_parameters()}
    frozen = fixed.loc.clone(), fixed.scale_tril.clone()
    train(regression, guide, x, y, steps=20)
    moved = [k for k, v in guide.named_parameters() if not torch.equal(v, before[k])]
    assert moved and all(not name.endswith(("loc", "scale_tril")) for name in moved)
    assert torch.equal(fixed.loc, frozen[0]) and torch.equal(fixed.scale_tril, frozen[1])
    assert {name for name, _ in guide.named_buffers()} >= {
        "flow.transforms.2.loc",
        "flow.transforms.2.scale_tril",
    }


def test_fixed_affine_round_trip_and_log_det():
    torch.manual_seed(0)
    tril = torch.tril(torch.randn(3, 3, dtype=torch.float64)) + 3 * torch.eye(3)
    layer = FixedAffine(torch.randn(3, dtype=torch.float64), tril)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    y, log_det = layer.forward_and_log_det(x)
    back, inv_log_det = layer.inverse_and_log_det(y)
    torch.testing.assert_close(back, x)
    expected = torch.linalg.slogdet(tril)[1].expand(4, 2)
    torch.testing.assert_close(log_det, expected)
    torch.testing.assert_close(inv_log_det, -log_det)


@pytest.mark.parametrize(
    "elbo",
    [
        Trace_ELBO(),
        TraceMeanField_ELBO(),
        Trace_ELBO(num_particles=8, vectorize_particles=True),
    ],
    ids=["Trace_ELBO", "TraceMeanField_ELBO", "vectorized_particles"],
)
def test_elbos_train_the_guide(elbo):
    (x, y), mean, cov = regression_data()
    guide = AutoFlow(regression, transforms=2, warmup="map")  # not Laplace: training matters
    losses = train(regression, guide, x, y, steps=300, lr=2e-2, elbo=elbo)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-50:]) < np.mean(losses[:10]) - 50


def test_own_samples_are_scored_without_the_sequential_inverse(monkeypatch):
    (x, y), _, _ = regression_data()
    guide = AutoFlow(regression, flow="iaf", transforms=2)
    train(regression, guide, x, y, steps=1)

    def refuse(self, *args, **kwargs):
        raise AssertionError("the sequential inverse ran")

    monkeypatch.setattr(MaskedAutoregressive, "_sequential", refuse)
    losses = train(regression, guide, x, y, steps=3)
    assert all(math.isfinite(v) for v in losses)


def test_median_and_quantiles_match_the_exact_posterior():
    (x, y), mean, cov = regression_data()
    # the posterior is Gaussian: the Laplace warm start alone is exact, so the Monte Carlo
    # median and quantiles of the untrained guide must match the closed form
    guide = AutoFlow(regression, num_samples=4000)
    sd = np.sqrt(np.diag(cov))
    median = guide.median(x, y)
    assert set(median) == {"a", "b"}
    assert median["b"].shape == (2,)
    got = np.r_[median["a"].reshape(1).numpy(), median["b"].numpy()]
    assert np.abs((got - mean) / sd).max() < 0.1
    quantiles = guide.quantiles([0.05, 0.95], x, y)
    assert quantiles["b"].shape == (2, 2)
    low = np.r_[quantiles["a"][0].numpy(), quantiles["b"][0].numpy()]
    high = np.r_[quantiles["a"][1].numpy(), quantiles["b"][1].numpy()]
    np.testing.assert_allclose((low - mean) / sd, -1.645, atol=0.1)
    np.testing.assert_allclose((high - mean) / sd, 1.645, atol=0.1)
    with pytest.raises(ValueError, match="quantiles"):
        guide.quantiles([0.5, 1.5], x, y)


def test_predictive_draws_every_site_from_the_guide():
    (x, y), mean, cov = regression_data()
    guide = AutoFlow(regression, transforms=1)
    guide(x, y)
    predictive = Predictive(regression, guide=guide, num_samples=30)
    with torch.no_grad():
        samples = predictive(x)
    # Pyro's Predictive keeps a singleton for the model's plate on sites outside it
    assert samples["a"].shape == (30, 1)
    assert samples["b"].shape == (30, 1, 2)
    assert samples["y"].shape == (30, 200)
    assert torch.isfinite(samples["y"]).all()
    # predictions follow the posterior: their mean is the fitted line, up to noise
    fitted = mean[0] + x.double().numpy() @ mean[1:]
    assert np.abs(samples["y"].double().mean(0).numpy() - fitted).max() < 4 * NOISE / np.sqrt(30)


def test_subsampled_plate():
    (x, y), mean, cov = regression_data()
    guide = AutoFlow(regression, transforms=2)
    losses = train(regression, guide, x, y, steps=300, lr=5e-3, subsample_size=50)
    assert all(math.isfinite(v) for v in losses)
    samples = draws(guide).numpy()
    # minibatch gradients are noisy: only the location is checked, loosely
    assert np.abs((samples.mean(0) - mean) / np.sqrt(np.diag(cov))).max() < 1.0


def test_init_loc_fn_sets_the_start_without_warm_up():
    def model():
        pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("s", dist.LogNormal(0.0, 1.0))

    start = {"x": torch.tensor([1.0, -2.0]), "s": torch.tensor(3.0)}
    guide = AutoFlow(model, warmup=None, init_loc_fn=init_to_value(values=start), init_scale=0.01)
    median = guide.median()
    torch.testing.assert_close(median["x"], start["x"], atol=0.05, rtol=0)
    torch.testing.assert_close(median["s"], start["s"], atol=0.1, rtol=0)


def test_the_warm_start_leaves_the_global_rng_alone():
    # The MAP search and the candidates' ELBOs evaluate the potential hundreds of times; it
    # conditions every latent site, so none of it may draw from the global RNG (it did,
    # through init_to_median, which made runs depend on the number of Newton steps).
    (x, y), _, _ = regression_data()
    states = []
    for warmup in (None, "laplace"):
        pyro.set_rng_seed(0)
        guide = AutoFlow(regression, warmup=warmup)
        guide(x, y)  # set-up: the prototype trace (init_to_median) and the warm start
        states.append(torch.random.get_rng_state())
    assert guide.warm_start_ == "laplace"
    assert torch.equal(states[0], states[1])


def test_a_callable_flow_and_its_checks():
    def model():
        pyro.sample("x", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    guide = AutoFlow(model, flow=lambda d: pf.RealNVP(d, transforms=2, hidden=(8,)))
    guide()
    assert guide.latent_dim == 3
    bad = AutoFlow(model, flow=lambda d: pf.MAF(d + 1, transforms=1, hidden=(4,)))
    with pytest.raises(ValueError, match="features=3"):
        bad()
    with pytest.raises(ValueError, match="flow must be one of"):
        AutoFlow(model, flow="glow2")
    with pytest.raises(ValueError, match="warmup"):
        AutoFlow(model, warmup="newton")
    with pytest.raises(ValueError, match="init_scale"):
        AutoFlow(model, init_scale=0.0)


def test_a_student_t_base_covers_a_heavy_tailed_posterior():
    """A Student-t(2) posterior puts 0.98% of each coordinate beyond |x| = 10. A guide on a
    normal base cannot reach that tail (its importance weights grow without bound there);
    on a Student-t(2) base it does."""

    def model():
        pyro.sample("x", dist.StudentT(2.0, torch.zeros(2), 1.0).to_event(1))

    tail = 1 - 10 / math.sqrt(102)  # P(|x| > 10) under Student-t(2)
    for base_df in (None, 2.0):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoFlow(model, transforms=2, hidden=(16,), base_df=base_df)
        train(model, guide, steps=300)
        mass = (draws(guide, 20000).abs() > 10).double().mean().item()
        if base_df is None:
            assert mass < 0.1 * tail, mass
        else:
            assert abs(mass / tail - 1) < 0.25, mass
    base = guide.get_base_dist()
    assert isinstance(base.base_dist, dist.StudentT) and base.event_shape == (2,)
    assert torch.equal(base.base_dist.df, torch.full((2,), 2.0))  # held fixed by training
    x = torch.tensor([[0.3, -4.0]])
    expected = torch.distributions.StudentT(2.0).log_prob(x).sum(-1)
    torch.testing.assert_close(base.log_prob(x), expected)
    with pytest.raises(ValueError, match=r"base_df must be None .* got 0"):
        AutoFlow(model, base_df=0)


def test_a_laplace_base_covers_an_exponential_tail():
    """A Laplace(0, 1) posterior puts exp(-5) = 0.67% of each coordinate beyond |x| = 5. The
    best normal-base guide has a Gaussian tail there, about a hundredth of it; a guide on
    the unit-variance Laplace base reaches it."""

    def model():
        pyro.sample("x", dist.Laplace(torch.zeros(2), 1.0).to_event(1))

    tail = math.exp(-5.0)  # P(|x| > 5) under Laplace(0, 1)
    for base in ("normal", "laplace"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoFlow(model, transforms=2, hidden=(16,), base=base)
        train(model, guide, steps=300, elbo=Trace_ELBO(num_particles=8, vectorize_particles=True))
        mass = (draws(guide, 20000).abs() > 5).double().mean().item()
        if base == "normal":
            assert mass < 0.1 * tail, mass
        else:
            assert abs(mass / tail - 1) < 0.25, mass
    base = guide.get_base_dist()
    assert isinstance(base.base_dist, dist.Laplace) and base.event_shape == (2,)
    x = torch.tensor([[0.3, -4.0]])
    expected = torch.distributions.Laplace(0.0, math.sqrt(0.5)).log_prob(x).sum(-1)
    torch.testing.assert_close(base.log_prob(x), expected)
    u = base.sample((50000,))
    torch.testing.assert_close(u.var(0), torch.ones(2), atol=0.05, rtol=0)  # unit variance
    with pytest.raises(ValueError, match=r"base must be one of .*, got 'cauchy'"):
        AutoFlow(model, base="cauchy")
    with pytest.raises(ValueError, match=r"base_df .* cannot go with base='laplace'"):
        AutoFlow(model, base="laplace", base_df=4.0)


def _gaussian_model():
    """A Gaussian posterior in float64: N(0, 4 I) prior on x (3 dims), one unit-noise
    observation of x. The Laplace warm start is then the exact posterior."""
    x = pyro.sample("x", dist.Normal(torch.zeros(3, dtype=torch.float64), 2.0).to_event(1))
    y = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    pyro.sample("y", dist.Normal(x, 1.0).to_event(1), obs=y)


@pytest.mark.parametrize("base", ["normal", "laplace"])
@pytest.mark.parametrize("flow", ["iaf", "nsf"])
def test_stl_gives_the_value_and_the_path_gradient(flow, base, float64):
    """``stl=True``: the same log q of the guide's draws, and as gradient exactly that of
    log q under frozen weights at x(weights), computed here by the flow's inverse."""
    guide = AutoFlow(_gaussian_model, flow=flow, base=base, stl=True, transforms=2, hidden=(16,))
    guide()
    with torch.no_grad():
        for p in guide.flow.parameters():
            p.add_(0.1 * torch.randn_like(p))  # away from the identity
    params = list(guide.flow.parameters())
    posterior = guide.get_posterior().expand((6,))
    x = posterior.rsample()
    log_q = posterior.log_prob(x)
    grads = torch.autograd.grad(log_q.sum(), params, retain_graph=True, allow_unused=True)
    frozen = copy.deepcopy(guide.flow).requires_grad_(False)
    reference = frozen().log_prob(x)  # the inverse, with gradients through x only
    expected = torch.autograd.grad(reference.sum(), params, allow_unused=True)
    torch.testing.assert_close(log_q, reference, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, expected, strict=True):
        if want is None:
            assert got is None or not got.any()
        else:
            torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)


def test_stl_gradient_vanishes_at_the_exact_posterior(float64):
    """At the exact posterior (Laplace warm start of a Gaussian model, flow at the identity)
    every draw's path gradient is zero, while the usual estimator's is noise."""
    norms = {}
    for stl in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoFlow(_gaussian_model, stl=stl, transforms=2, hidden=(16,))
        guide()
        assert guide.warm_start_ == "laplace"
        loss = Trace_ELBO(num_particles=4, vectorize_particles=True).differentiable_loss(
            _gaussian_model, guide
        )
        grads = torch.autograd.grad(loss, list(guide.flow.parameters()), allow_unused=True)
        norms[stl] = max(g.abs().max().item() for g in grads if g is not None)
    assert norms[True] < 1e-8, norms
    assert norms[False] > 1e-2, norms


def test_stl_trains_without_the_sequential_inverse(monkeypatch):
    (x, y), _, _ = regression_data()
    guide = AutoFlow(regression, flow="iaf", transforms=2, warmup="map", stl=True)
    train(regression, guide, x, y, steps=1)

    def refuse(self, *args, **kwargs):
        raise AssertionError("the sequential inverse ran")

    monkeypatch.setattr(MaskedAutoregressive, "_sequential", refuse)
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True)
    losses = train(regression, guide, x, y, steps=300, lr=2e-2, elbo=elbo)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-50:]) < np.mean(losses[:10]) - 50
    with pytest.raises(TypeError, match=r"stl must be True or False, got 'yes'"):
        AutoFlow(regression, stl="yes")


def test_neutra_reparam_runs_nuts_on_the_warped_space():
    from pyro.infer import MCMC, NUTS
    from pyro.infer.reparam import NeuTraReparam

    def funnel():
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        pyro.sample("x", dist.Normal(torch.zeros(2), torch.exp(v / 2)).to_event(1))

    guide = AutoFlow(funnel, transforms=2)
    train(funnel, guide, steps=200)
    neutra = NeuTraReparam(guide.requires_grad_(False))
    model = pyro.poutine.reparam(funnel, config=lambda _: neutra)
    mcmc = MCMC(NUTS(model), warmup_steps=30, num_samples=30, disable_progbar=True)
    mcmc.run()
    (latent,) = mcmc.get_samples().values()  # NeuTra's one site: the packed latent
    assert latent.shape == (30, 3)
    samples = neutra.transform_sample(latent)
    assert samples["v"].shape == (30,)
    assert samples["x"].shape == (30, 2)
    assert torch.isfinite(samples["v"]).all() and torch.isfinite(samples["x"]).all()


# ---------------------------------------------------------------- multimodal (issue 20)
class _DualMoon(dist.TorchDistribution):
    """NumPyro's NeuTra example potential; ``sample`` is a placeholder (zeros), as there."""

    arg_constraints = {}
    support = dist.constraints.real_vector

    def __init__(self):
        super().__init__(event_shape=(2,))

    def sample(self, sample_shape=()):
        return torch.zeros(torch.Size(sample_shape) + self.event_shape)

    def log_prob(self, x):
        ring = 0.5 * ((torch.linalg.norm(x, dim=-1) - 2.0) / 0.4) ** 2
        bumps = -0.5 * ((x[..., :1] + torch.tensor([-2.0, 2.0])) / 0.6) ** 2
        return torch.logsumexp(bumps, dim=-1) - ring


def _dual_moon():
    pyro.sample("x", _DualMoon())


def test_dual_moon_finds_both_moons_and_keeps_them(monkeypatch):
    # a shorter transport fit than AutoFlow's (MODE_FIT), to keep the suite fast
    from pyroflows import _autoflow

    monkeypatch.setitem(_autoflow.MODE_FIT, "draws", 2048)
    monkeypatch.setitem(_autoflow.MODE_FIT, "epochs", 20)
    # --quick form of examples/neutra_dual_moon.py (NumPyro's example, here in Pyro)
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    guide = AutoFlow(_dual_moon, "nsf", transforms=2, hidden=(16, 16))
    svi = SVI(_dual_moon, guide, pyro.optim.Adam({"lr": 0.003}), Trace_ELBO())
    for _ in range(300):
        svi.step()
    assert guide.warm_start_ == "modes" and len(guide.modes_.weights) == 2
    np.testing.assert_allclose(np.sort(np.abs(guide.modes_.locs[:, 0])), [2.0, 2.0], atol=0.05)
    np.testing.assert_allclose(guide.modes_.weights, 0.5, atol=0.05)
    # the transport is frozen: buffers, not parameters, and carried by get_params
    frozen = guide.flow.transforms[0]
    assert isinstance(frozen, pf.infer.Frozen) and not list(frozen.parameters())
    assert any(name.startswith("transforms.0.") for name in pf.get_params(guide.flow))
    # the trainable layers on top of it are damped (MODE_STEP_SCALE), and trained
    damped = guide.flow.transforms[2]
    assert isinstance(damped, pf.infer.Damped) and damped.scale == _autoflow.MODE_STEP_SCALE
    assert set(dict(guide.flow.named_parameters())) == {
        f"transforms.2.{name}" for name, _ in damped.named_parameters()
    }
    with torch.no_grad():
        q = guide.get_posterior()
        x = q.sample((4000,))
        loss = float((q.log_prob(x) - _DualMoon().log_prob(x)).mean())
    assert abs(float((x[:, 0] < 0).float().mean()) - 0.5) < 0.05  # one moon: 0 or 1
    assert loss < -1.6  # -log Z = -1.878; a guide on one moon stays above -1.19
