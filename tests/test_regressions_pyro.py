"""Regression tests for the defects that fuzzing and the PPLs' contracts found (torch backend).

Each test names the defect it keeps fixed; the JAX twins are in test_regressions_numpyro.py.
"""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyroflows.pyro as pf

# the spline parameters: one feature, 2 bins, bound 5, a knot derivative ~10^4 times
# the last bin's slope
SHARP = [[3.4558, 8.2162, 3.3044, -13.0316, 9.0536]]


def _perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


# ------------------------------------------------------------- 1. AutoFlow.median with plates


def test_autoflow_median_and_quantiles_with_plated_sites(seeded):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("g", 4):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    pyro.clear_param_store()
    y = torch.tensor([0.5, -1.0, 2.0, 0.3])
    guide = pf.AutoFlow(model, num_samples=200)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
    svi.step(y)
    median = guide.median(y)
    assert median["mu"].shape == () and median["theta"].shape == (4,)
    assert (median["sigma"] > 0).all()  # constrained: the plated positive site
    q = guide.quantiles([0.1, 0.5, 0.9], y)
    assert q["theta"].shape == (3, 4) and q["sigma"].shape == (3, 4)
    assert (q["theta"][0] < q["theta"][2]).all() and (q["sigma"] > 0).all()


# ------------------------------------------------------------- 2. spline inverse in float32


def test_spline_inverse_keeps_float32_precision_at_a_sharp_knot():
    spline = pf.SplineTransformer(bins=2, bound=5.0)
    params = torch.tensor(SHARP)
    for y, tol_x, tol_ld in ((5.0, 1e-5, 2e-3), (4.9999, 1e-5, 2e-3)):
        x32, ld32 = spline.inverse(torch.tensor([y]), params)
        x64, ld64 = spline.inverse(torch.tensor([y], dtype=torch.float64), params.double())
        # before: x = 5.00023 and log_det = -0.562 at y = 5 (float64: 5 and 0)
        assert abs(x32.item() - x64.item()) < tol_x
        assert abs(ld32.item() - ld64.item()) < tol_ld


def test_spline_inverse_is_finite_at_the_knots_and_the_ends():
    spline = pf.SplineTransformer(bins=8, bound=5.0)
    generator = torch.Generator().manual_seed(0)
    params = 3 * torch.randn(500, 1, 23, generator=generator)
    knots = spline._bin_table(params, torch.zeros(500, 1), 1)[..., 1]  # a y-knot per row
    for y in (knots, torch.full((500, 1), 5.0), torch.full((500, 1), -5.0), knots + 1e-6):
        x, log_det = spline.inverse(y, params)
        assert torch.isfinite(x).all() and torch.isfinite(log_det).all()


def test_spline_inverse_discriminant_does_not_cancel_in_a_steep_end_bin():
    # the last bin is ~1e4 times steeper than the end derivative 1: b^2 - 4ac cancelled
    spline = pf.SplineTransformer(bins=2, bound=5.0)
    params = torch.tensor([[5.0, -5.0, -5.0, 5.0, 0.0]]).expand(3, 5)
    y = torch.tensor([5.0, 5.0 - 1e-3, 4.99])
    x32 = y.clone().requires_grad_(True)
    x, log_det = spline.inverse(x32, params)
    (grad,) = torch.autograd.grad(x.sum(), x32)
    assert abs(grad[0].item() - 1.0) < 1e-5  # before: 0.938 (the slope at the bound is 1)
    _, log_det64 = spline.inverse(y.double(), params.double())
    assert (log_det.double() - log_det64).abs().max() < 1e-4  # before: 3e-4


# ------------------------------------------------------------- 3. spline gradients


def test_spline_gradients_are_finite_in_the_tails_and_one_at_the_bound():
    spline = pf.SplineTransformer(bins=8, bound=5.0)
    generator = torch.Generator().manual_seed(0)
    params = (3e6 * torch.randn(50, 4, 23, generator=generator)).requires_grad_()
    x = torch.tensor([5e4, -5e4, 1e3, -7.0]).expand(50, 4).clone().requires_grad_()
    for step in (spline.forward, spline.inverse):
        out, log_det = step(x, params)
        gx, gp = torch.autograd.grad(out.sum() + log_det.sum(), (x, params))
        assert torch.equal(gx, torch.ones_like(gx)) and torch.equal(gp, torch.zeros_like(gp))
    params = 0.5 * torch.randn(2, 23, generator=generator)
    at_bound = torch.tensor([5.0, -5.0], requires_grad=True)
    for step in (spline.forward, spline.inverse):
        (g,) = torch.autograd.grad(step(at_bound, params)[0].sum(), at_bound)
        torch.testing.assert_close(g, torch.ones(2), atol=1e-4, rtol=0)  # the end slope, 1


# ------------------------------------------------------------- 4. empty batches


@pytest.mark.parametrize("recipe", ["MAF", "IAF", "NSF", "RealNVP", "NICE"])
def test_empty_batches(recipe):
    flow = getattr(pf, recipe)(3, transforms=2, hidden=(8,))
    empty = torch.zeros(0, 3)
    assert flow().log_prob(empty).shape == (0,)
    assert flow().sample((0,)).shape == (0, 3)
    y, log_det = flow.transforms[0].forward_and_log_det(empty)
    assert y.shape == (0, 3) and log_det.shape == (0,)


# ------------------------------------------------------------- 5. the score of sample()


def _mixture_base(features: int) -> dist.Distribution:
    mix = dist.Categorical(torch.ones(2))
    comp = dist.Normal(torch.tensor([[-2.0] * features, [2.0] * features]), 1.0).to_event(1)
    return dist.MixtureSameFamily(mix, comp)


def test_score_of_a_sample_without_rsample_has_its_gradient(seeded):
    flow = _perturb(pf.IAF(2, transforms=2, hidden=(8,), base=_mixture_base(2)))
    d = flow()
    x = d.sample((16,))
    score = d.log_prob(x)
    (grad_cached,) = torch.autograd.grad(
        score.sum(), flow.transforms[0].conditioner.layers[0].weight
    )
    fresh = flow().log_prob(x.clone())  # a new tensor: through the inverse
    (grad_fresh,) = torch.autograd.grad(
        fresh.sum(), flow.transforms[0].conditioner.layers[0].weight
    )
    assert grad_fresh.abs().sum() > 0
    torch.testing.assert_close(grad_cached, grad_fresh)
    with torch.no_grad():  # without gradients the cache still serves
        torch.testing.assert_close(d.log_prob(x), fresh.detach())


def test_trace_elbo_trains_a_flow_guide_whose_base_has_no_rsample(seeded):
    pyro.clear_param_store()
    flow = _perturb(pf.IAF(2, transforms=1, hidden=(8,), base=_mixture_base(2)))

    def model():
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def guide():
        pyro.module("flow", flow)
        pyro.sample("z", flow())

    loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide)
    loss.backward()
    grads = [p.grad for p in flow.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_a_sample_edited_in_place_is_scored_afresh(seeded):
    d = _perturb(pf.MAF(3, transforms=2, hidden=(8,)))()
    x = d.sample((5,))
    x.add_(1.0)
    torch.testing.assert_close(d.log_prob(x), d.log_prob(x.clone()))


# ------------------------------------------------------------- 7. support and shapes


def test_a_flow_ending_in_logit_has_its_interval_as_support(seeded):
    flow = _perturb(pf.Flow([pf.MaskedAutoregressive(2, hidden=(8,)), pf.Logit(2, alpha=0.0)]))
    d = flow()
    assert d.support.check(torch.tensor([[0.3, 0.9]])).item()
    assert not d.support.check(torch.tensor([[0.3, 1.5]])).item()
    outside = torch.tensor([[0.3, 1.5], [-0.2, 0.5], [0.3, 0.4]])
    with pytest.raises(ValueError, match="outside the flow's support"):
        d.log_prob(outside)
    quiet = pf.FlowDistribution(flow.base_distribution(), flow.transforms, validate_args=False)
    lp = quiet.log_prob(outside)
    assert lp[:2].eq(-torch.inf).all() and torch.isfinite(lp[2])
    torch.testing.assert_close(lp[2], d.log_prob(outside[2:]).squeeze(0))
    edge = quiet.log_prob(torch.tensor([[0.0, 0.5]]))  # the closed end: density 0, not NaN
    assert edge.item() == -torch.inf


def test_expand_follows_torch_rules():
    d = pf.MAF(2, transforms=1, hidden=(4,))()
    assert d.expand((2, 1)).expand((3, 2, 4)).batch_shape == (3, 2, 4)
    with pytest.raises(ValueError, match=r"cannot expand .* \(2, 1\) to batch shape \(4, 3\)"):
        d.expand((2, 1)).expand((4, 3))
    conditional = pf.MAF(2, context=1, transforms=1, hidden=(4,))(torch.zeros(3, 1))
    assert conditional.expand((5, 3)).sample().shape == (5, 3, 2)


# ------------------------------------------------------------- 8. Pyro's transform contract


def _counting_iaf() -> tuple[pf.MaskedAutoregressive, list]:
    iaf = _perturb(pf.MaskedAutoregressive(3, hidden=(8,)))
    calls: list = []
    iaf.conditioner.register_forward_hook(lambda *args: calls.append(1))
    return iaf, calls


def test_an_iaf_layer_in_pyros_transformed_distribution_scores_its_sample_in_one_pass():
    iaf, calls = _counting_iaf()
    assert iaf.with_cache(1) is iaf and iaf.with_cache(1)._cache_size == 1
    d = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), [iaf])
    y = d.rsample((4,))
    before = len(calls)
    lp = d.log_prob(y)
    assert len(calls) == before  # the sequential inverse (3 passes) did not run
    torch.testing.assert_close(lp, d.log_prob(y.clone()))
    uncached = iaf.with_cache(0)
    assert uncached._cache_size == 0
    z = torch.randn(4, 3)
    before = len(calls)
    uncached.inv(uncached(z))
    assert len(calls) == before + 1 + 3


def test_the_inverse_of_a_conditional_bijection_can_be_conditioned():
    layer = _perturb(pf.MaskedAutoregressive(3, context=2, hidden=(8,)))
    c = torch.randn(2)
    inverse = layer.inv.condition(c)
    y = torch.randn(5, 3)
    torch.testing.assert_close(inverse(y), layer.inverse_and_log_det(y, c)[0])
    assert layer.inv.inv is layer
    with pytest.raises(ValueError, match="needs a context"):
        layer.inv(y)


def test_a_used_flow_deepcopies_and_pickles():
    flow = pf.IAF(3, transforms=2, hidden=(8,))
    d = flow()
    x = d.rsample((4,))
    d.log_prob(x).sum().backward()  # caches now hold tensors with graphs
    for copied in (copy.deepcopy(flow), pickle.loads(pickle.dumps(flow))):
        z = torch.randn(6, 3)
        torch.testing.assert_close(copied().log_prob(z), flow().log_prob(z))


def test_repr_shows_the_arguments():
    text = repr(pf.MaskedAutoregressive(3, context=2, transformer=pf.SplineTransformer(4, 3.0)))
    assert "features=3" in text and "context=2" in text and "SplineTransformer(bins=4" in text


# ------------------------------------------------------------- 11. argument and input checks


def test_numpy_integers_are_sizes():
    layer = pf.MaskedAutoregressive(np.int64(3), np.int64(1), hidden=(np.int64(4),))
    assert layer.features == 3 and type(layer.features) is int
    assert pf.SplineTransformer(bins=np.int64(4)).bins == 4
    assert len(pf.MAF(np.int64(3), transforms=np.int64(2), hidden=(4,)).transforms) == 2


def test_big_draws_without_gradients_go_in_chunks(monkeypatch):
    import pyroflows.pyro.distributions as module

    flow = _perturb(pf.MAF(3, transforms=2, hidden=(8,)))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        whole = flow().sample((50, 2))
    monkeypatch.setattr(module, "SAMPLE_CHUNK", 8)  # 4 rows of (2, 3) per chunk
    calls = []
    flow.transforms[0].conditioner.register_forward_hook(lambda *args: calls.append(1))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        d = flow()
        chunked = d.sample((50, 2))
    assert len(calls) == 13 * 3  # ceil(50 / 4) chunks, features passes each (MAF sampling)
    torch.testing.assert_close(chunked, whole)
    with torch.no_grad():
        torch.testing.assert_close(d.log_prob(chunked), flow().log_prob(chunked.clone()))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: pf.SplineTransformer(bound=float("inf")), "bound must be a finite number > 0"),
        (lambda: pf.AffineTransformer(bound=float("nan")), "bound must be a finite number > 0"),
        (lambda: pf.MAF(3, hidden=64), r"hidden must be .* such as \(64,\) or \(64, 64\)"),
        (lambda: pf.MaskedAutoregressive(3, hidden="64"), "hidden must be a sequence"),
        (lambda: pf.Logit(2, alpha=0.5), r"alpha must be a number in \[0.0, 0.5\)"),
    ],
)
def test_bad_constructor_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_wrong_dtypes_say_what_was_expected():
    flow = pf.MAF(3, transforms=1, hidden=(4,))
    for dtype, convert in ((torch.float64, r"value\.float\(\)"), (torch.float16, "value.float")):
        with pytest.raises(ValueError, match=rf"dtype {dtype}.*{convert}"):
            flow().log_prob(torch.zeros(2, 3, dtype=dtype))
    with pytest.raises(ValueError, match=r"x has dtype torch.float64.*x\.float\(\)"):
        flow.transforms[0].forward_and_log_det(torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda b, c: b.forward_and_log_det(torch.zeros(2, 4)), r"x must have shape \(\.\.\., 3\)"),
        (lambda b, c: c.inverse_and_log_det(torch.zeros(2, 3)), "context is required"),
        (
            lambda b, c: b.forward_and_log_det(torch.zeros(3), torch.zeros(2)),
            "built without context",
        ),
        (lambda b, c: pf.Scale(3).forward_and_log_det(torch.zeros(3), torch.zeros(1)), "without"),
        (lambda b, c: pf.ActNorm(3).inverse_and_log_det(torch.zeros(3), torch.zeros(1)), "without"),
        (lambda b, c: c.forward_and_log_det(torch.zeros(3), torch.zeros(3)), r"\(\.\.\., 2\)"),
        (
            lambda b, c: c.forward_and_log_det(torch.zeros(3), torch.tensor([0.0, torch.nan])),
            "context holds 1 non-finite",
        ),
        (lambda b, c: pf.MAF(3, context=2)(torch.tensor([torch.inf, 0.0])), "non-finite"),
        (
            lambda b, c: c.forward_and_log_det(torch.zeros(4, 3), torch.zeros(3, 2)),
            "do not broadcast",
        ),
    ],
    ids=[
        "event-size",
        "missing-context",
        "unexpected-context",
        "scale-context",
        "actnorm-context",
        "context-size",
        "nan-context",
        "inf-context-flow",
        "batch-mismatch",
    ],
)
def test_direct_calls_check_their_arguments(call, message):
    plain = pf.MaskedAutoregressive(3, hidden=(4,))
    conditional = pf.MaskedAutoregressive(3, context=2, hidden=(4,))
    with pytest.raises(ValueError, match=message):
        call(plain, conditional)
