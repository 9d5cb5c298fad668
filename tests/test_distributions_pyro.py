"""FlowDistribution: Pyro integration, shapes, one-pass log_prob, caches, bases, dtypes."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

import pyroflows.pyro as pf


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is as fast, and immune to CPU oversubscription
    (with other processes on the cores, OpenMP's spinning threads slow small ops 10-50x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _seed():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 1) -> torch.nn.Module:
    """Move every parameter away from the near-identity initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


class CallCounter:
    """Counts calls of the two bijection methods (and ``_sequential``) on given instances."""

    def __init__(self, monkeypatch, bijections):
        self.inverse = [0] * len(bijections)
        self.forward = [0] * len(bijections)
        self.sequential = 0
        for i, b in enumerate(bijections):
            self._wrap(monkeypatch, b, "inverse_and_log_det", self.inverse, i)
            self._wrap(monkeypatch, b, "forward_and_log_det", self.forward, i)
            for m in b.modules():
                if isinstance(m, pf.MaskedAutoregressive):
                    self._wrap_sequential(monkeypatch, m)

    @staticmethod
    def _wrap(monkeypatch, obj, name, counts, i):
        original = getattr(obj, name)

        def wrapper(*args, **kwargs):
            counts[i] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(obj, name, wrapper)

    def _wrap_sequential(self, monkeypatch, module):
        original = module._sequential

        def wrapper(*args, **kwargs):
            self.sequential += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, "_sequential", wrapper)

    def reset(self):
        self.inverse[:] = [0] * len(self.inverse)
        self.forward[:] = [0] * len(self.forward)
        self.sequential = 0


def by_hand(flow: pf.Flow, base, x, context=None):
    """base.log_prob(z) + log_det, running the bijections' inverses one by one."""
    total = torch.zeros(x.shape[:-1], dtype=x.dtype)
    z = x
    for t in reversed(flow.transforms):
        z, log_det = t.inverse_and_log_det(z, context if t.context_features else None)
        total = total + log_det
    return base.log_prob(z) + total


def small_maf(features=3, context=0, transforms=2):
    return pf.MAF(features, context=context, transforms=transforms, hidden=(8,))


# --------------------------------------------------------------------------- types and shapes


def test_flow_distribution_is_a_pyro_transformed_distribution():
    d = small_maf()()
    assert isinstance(d, pf.FlowDistribution)
    assert isinstance(d, dist.TransformedDistribution)
    assert isinstance(d, dist.torch_distribution.TorchDistributionMixin)
    assert d.has_rsample


def test_shapes_without_context():
    d = small_maf(features=3)()
    assert d.batch_shape == torch.Size([])
    assert d.event_shape == torch.Size([3])
    assert d.sample().shape == (3,)
    x = d.sample((5,))
    assert x.shape == (5, 3)
    assert d.log_prob(x).shape == (5,)
    assert d.log_prob(torch.randn(2, 4, 3)).shape == (2, 4)


@pytest.mark.parametrize("batch", [(), (3,), (2, 3)])
def test_shapes_with_context(batch):
    flow = perturb(small_maf(features=2, context=3))
    context = torch.randn(*batch, 3)
    d = flow(context)
    assert d.batch_shape == torch.Size(batch)
    assert d.event_shape == torch.Size([2])
    x = d.sample((5,))
    assert x.shape == (5, *batch, 2)
    lp = d.log_prob(x)
    assert lp.shape == (5, *batch)
    # a fresh copy of the samples (no cache) broadcasts against the context's batch too
    assert torch.allclose(d.log_prob(x.clone()), lp, atol=1e-4)
    assert d.rsample().shape == (*batch, 2)


def test_context_batch_broadcasts_against_value_batch():
    flow = perturb(small_maf(features=2, context=3)).double()
    context = torch.randn(4, 3, dtype=torch.float64)
    x = torch.randn(6, 1, 2, dtype=torch.float64)
    lp = flow(context).log_prob(x)
    assert lp.shape == (6, 4)
    for i in range(6):
        for j in range(4):
            single = flow(context[j]).log_prob(x[i, 0])
            assert lp[i, j].item() == pytest.approx(single.item(), abs=1e-10)


def test_rsample_carries_gradients_to_flow_parameters_and_sample_does_not():
    flow = small_maf(features=3, transforms=2)
    d = flow()
    x = d.rsample((7,))
    assert x.requires_grad
    (x * torch.arange(1.0, 4.0)).sum().backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None, name
    # the zero-initialised output layers receive a non-zero gradient in every layer
    for t in flow.transforms:
        assert t.conditioner.layers[-1].bias.grad.abs().sum() > 0

    flow.zero_grad(set_to_none=True)
    y = flow().sample((7,))
    assert not y.requires_grad
    assert y.grad_fn is None


# --------------------------------------------------------------------------- one pass and cache


def test_log_prob_is_one_inverse_pass_per_bijection(monkeypatch):
    flow = perturb(pf.MAF(3, transforms=3, hidden=(8,))).double()
    counter = CallCounter(monkeypatch, list(flow.transforms))
    x = torch.randn(5, 3, dtype=torch.float64)
    lp = flow().log_prob(x)
    assert counter.inverse == [1, 1, 1]
    assert counter.forward == [0, 0, 0]
    assert counter.sequential == 0  # MAF density is the one-pass direction
    counter.reset()
    expected = by_hand(flow, dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1), x)
    assert torch.allclose(lp, expected, atol=1e-10)


def test_log_prob_of_own_rsample_is_cached(monkeypatch):
    flow = perturb(pf.MAF(3, transforms=3, hidden=(8,))).double()
    counter = CallCounter(monkeypatch, list(flow.transforms))
    d = flow()
    x = d.rsample((6,))
    assert counter.forward == [1, 1, 1]
    assert counter.inverse == [0, 0, 0]
    counter.reset()
    lp_cached = d.log_prob(x)
    assert counter.inverse == [0, 0, 0]
    assert counter.forward == [0, 0, 0]
    # an equal but distinct tensor is recomputed, with one inverse pass, to the same value
    lp_fresh = d.log_prob(x.clone())
    assert counter.inverse == [1, 1, 1]
    assert counter.forward == [0, 0, 0]
    assert torch.allclose(lp_cached, lp_fresh, atol=1e-8, rtol=0)


def test_iaf_scores_its_own_samples_without_the_sequential_direction(monkeypatch):
    flow = perturb(pf.IAF(4, transforms=3, hidden=(8,))).double()
    counter = CallCounter(monkeypatch, list(flow.transforms))
    d = flow()
    x = d.rsample((5,))
    lp_cached = d.log_prob(x)
    assert counter.sequential == 0
    assert counter.inverse == [0, 0, 0]
    assert counter.forward == [1, 1, 1]
    # sample_and_log_prob is also one forward pass
    counter.reset()
    _, lp = d.sample_and_log_prob((3,))
    assert counter.sequential == 0 and counter.inverse == [0, 0, 0]
    assert lp.shape == (3,)
    # recomputing from an equal tensor runs the sequential inverse, once per layer
    counter.reset()
    lp_fresh = d.log_prob(x.clone())
    assert counter.sequential == 3
    assert torch.allclose(lp_cached, lp_fresh, atol=1e-8, rtol=0)


def test_cache_is_per_distribution_and_per_sample(monkeypatch):
    flow = perturb(small_maf()).double()
    counter = CallCounter(monkeypatch, list(flow.transforms))
    d1, d2 = flow(), flow()
    x1 = d1.rsample((4,))
    x2 = d1.rsample((4,))  # replaces x1 in the one-slot cache
    counter.reset()
    d1.log_prob(x2)
    assert counter.inverse == [0, 0]
    d1.log_prob(x1)
    assert counter.inverse == [1, 1]
    d2.log_prob(x2)
    assert counter.inverse == [2, 2]


def test_pyro_transformed_distribution_makes_one_pass_per_bijection(monkeypatch):
    flow = perturb(pf.MAF(3, transforms=3, hidden=(8,))).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    expected = flow().log_prob(x)
    base = dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1)
    td = dist.TransformedDistribution(base, list(flow.transforms))
    counter = CallCounter(monkeypatch, list(flow.transforms))
    lp = td.log_prob(x)
    assert counter.inverse == [1, 1, 1]
    assert counter.forward == [0, 0, 0]
    assert torch.allclose(lp, expected, atol=1e-10, rtol=0)


def test_conditional_transformed_distribution_matches_flow():
    maf = perturb(pf.MaskedAutoregressive(3, context=2, hidden=(8,), invert=True)).double()
    flow = pf.Flow([maf, pf.Reverse(3)]).double()
    base = dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1)
    ctd = dist.ConditionalTransformedDistribution(base, [maf, pf.Reverse(3)])
    x = torch.randn(5, 3, dtype=torch.float64)
    for context in (torch.randn(5, 2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)):
        got = ctd.condition(context).log_prob(x)
        want = flow(context).log_prob(x)
        assert got.shape == (5,)
        assert torch.allclose(got, want, atol=1e-10, rtol=0)
    # the context matters
    c1, c2 = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    assert not torch.allclose(flow(c1).log_prob(x), flow(c2).log_prob(x))


# --------------------------------------------------------------------------- custom bases


def test_uniform_base_with_scale_and_permute():
    base = dist.Uniform(-torch.ones(2), torch.ones(2), validate_args=False).to_event(1)
    scale = pf.Scale(2)
    with torch.no_grad():
        scale.log_scale.copy_(torch.tensor([0.5, -0.3]))
    flow = pf.Flow([pf.Permute([1, 0]), scale], base=base)
    # inside the support of the pushed-forward uniform: |x_i| < exp(log_scale_i)
    x = (2 * torch.rand(10, 2) - 1) * torch.tensor([math.exp(0.5), math.exp(-0.3)]) * 0.99
    lp = flow().log_prob(x)
    expected = -2 * math.log(2.0) - (0.5 - 0.3)
    assert torch.allclose(lp, torch.full((10,), expected), atol=1e-6)
    # outside it the density is zero
    outside = torch.tensor([[0.0, 0.9]])  # 0.9 > exp(-0.3) = 0.74
    assert flow().log_prob(outside).item() == -math.inf
    samples = flow().sample((2000,))
    assert samples[:, 0].abs().max() < math.exp(0.5)
    assert samples[:, 1].abs().max() < math.exp(-0.3)
    assert samples[:, 0].abs().max() > 0.9 * math.exp(0.5)


def _laplace(dtype):
    return dist.Laplace(
        torch.tensor([0.5, -0.5], dtype=dtype), torch.tensor([1.0, 2.0], dtype=dtype)
    ).to_event(1)


def _student_t(dtype):
    ones = torch.ones(2, dtype=dtype)
    return dist.StudentT(3.0 * ones, torch.zeros(2, dtype=dtype), ones).to_event(1)


def _logistic(dtype):
    uniform = dist.Uniform(torch.zeros(2, dtype=dtype), torch.ones(2, dtype=dtype))
    return dist.TransformedDistribution(uniform, [dist.transforms.SigmoidTransform().inv]).to_event(
        1
    )


def _mixture(dtype):
    locs = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]], dtype=dtype)
    scales = torch.tensor([[0.5, 1.0], [1.0, 0.5], [0.7, 0.7]], dtype=dtype)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=dtype)
    return dist.MixtureSameFamily(
        dist.Categorical(probs=weights), dist.Normal(locs, scales).to_event(1)
    )


BASES = {"laplace": _laplace, "student_t": _student_t, "logistic": _logistic, "mixture": _mixture}


@pytest.mark.parametrize("name", sorted(BASES))
def test_custom_base_log_prob_by_hand(name):
    make = BASES[name]
    # the base is built in float64: float32 constants (0.7, log 0.2) differ from their
    # float64 values by far more than the 1e-10 checked here
    flow = perturb(pf.RealNVP(2, transforms=2, hidden=(8,), base=make(torch.float64))).double()
    base64 = make(torch.float64)
    x = 1.5 * torch.randn(20, 2, dtype=torch.float64)
    lp = flow().log_prob(x)
    assert lp.dtype == torch.float64
    assert torch.allclose(lp, by_hand(flow, base64, x), atol=1e-10, rtol=0)
    # and not the standard-normal value
    default = pf.set_params(pf.RealNVP(2, transforms=2, hidden=(8,)), pf.get_params(flow))
    assert not torch.allclose(default.double()().log_prob(x), lp, atol=1e-3)


def test_logistic_base_is_the_logistic_density():
    flow = pf.Flow([pf.Scale(2)], base=_logistic(torch.float32)).double()
    z = torch.linspace(-5, 5, 11, dtype=torch.float64).unsqueeze(-1).expand(11, 2)
    closed_form = (-z - 2 * F.softplus(-z)).sum(-1)
    assert torch.allclose(flow().log_prob(z), closed_form, atol=1e-10)


@pytest.mark.parametrize("name", ["laplace", "student_t", "logistic"])
def test_custom_base_samples_and_scores_itself(name):
    flow = perturb(pf.MAF(2, transforms=2, hidden=(8,), base=BASES[name](torch.float32)))
    flow = flow.double()
    d = flow()
    x = d.rsample((50,))
    assert x.shape == (50, 2) and x.dtype == torch.float64
    assert torch.allclose(d.log_prob(x), d.log_prob(x.clone()), atol=1e-8)


def test_mixture_base_flow_can_be_sampled():
    flow = perturb(pf.MAF(2, transforms=2, hidden=(8,), base=_mixture(torch.float32)))
    d = flow()
    assert not d.has_rsample
    x = d.sample((50,))
    assert x.shape == (50, 2)
    assert torch.isfinite(d.log_prob(x)).all()
    assert pyro.sample("x", flow()).shape == (2,)


# --------------------------------------------------------------------------- dtype and device


@pytest.mark.parametrize("how", ["double", "to"])
def test_double_moves_default_base(how):
    flow = small_maf()
    flow = flow.double() if how == "double" else flow.to(torch.float64)
    assert flow.base_like.dtype == torch.float64
    d = flow()
    x = d.sample((4,))
    assert x.dtype == torch.float64
    assert d.log_prob(x).dtype == torch.float64
    assert d.log_prob(x.clone()).dtype == torch.float64
    # the standard normal in float64: log N(0 | 0, I_3) to full double precision
    zero = torch.zeros(3, dtype=torch.float64)
    assert flow().log_prob(zero).item() == pytest.approx(-1.5 * math.log(2 * math.pi), abs=1e-14)


@pytest.mark.parametrize("how", ["double", "to"])
def test_double_moves_custom_base(how):
    flow = pf.MAF(2, transforms=2, hidden=(8,), base=_laplace(torch.float32))
    flow = flow.double() if how == "double" else flow.to(torch.float64)
    for name, buffer in flow.base.named_buffers():
        assert buffer.dtype == torch.float64, name
    base = flow.base_distribution()
    assert base.base_dist.loc.dtype == torch.float64
    assert base.base_dist.scale.dtype == torch.float64
    d = flow()
    x = d.sample((4,))
    assert x.dtype == torch.float64
    assert d.log_prob(x.clone()).dtype == torch.float64
    x = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    expected = _laplace(torch.float64).log_prob(x)  # identity flow at initialisation
    assert flow().log_prob(x).item() == pytest.approx(expected.item(), abs=1e-14)


def test_double_moves_the_transforms_of_a_transformed_distribution_base():
    def make(dtype):
        # constants rounded to float32 first, so both builds hold the same numbers
        normal = dist.Normal(torch.zeros(2, dtype=dtype), torch.ones(2, dtype=dtype))
        affine = dist.transforms.AffineTransform(
            torch.tensor([0.1, 0.2]).to(dtype),
            torch.tensor([0.7, 1.3]).to(dtype),
            event_dim=1,
        )
        return dist.TransformedDistribution(normal.to_event(1), [affine])

    flow = pf.Flow([pf.Scale(2)], base=make(torch.float32)).double()
    base = flow.base_distribution()
    assert base.base_dist.base_dist.loc.dtype == torch.float64
    x = torch.tensor([[0.3, -0.4]], dtype=torch.float64)
    # computed in float32 (transforms left in float32) the error would be ~1e-7
    assert flow().log_prob(x).item() == pytest.approx(
        make(torch.float64).log_prob(x).item(), abs=1e-12
    )
    assert base.transforms[0].loc.dtype == torch.float64


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_to_cuda_moves_base_and_parameters():
    flow = pf.MAF(2, transforms=2, hidden=(8,), base=_laplace(torch.float32)).to("cuda")
    assert all(p.is_cuda for p in flow.parameters())
    assert all(b.is_cuda for b in flow.buffers())
    d = flow()
    x = d.sample((4,))
    assert x.is_cuda
    assert d.log_prob(x.clone()).is_cuda
    default = pf.MAF(2, transforms=2, hidden=(8,)).to("cuda")
    assert default().sample((3,)).is_cuda


# --------------------------------------------------------------------------- expand and plates


def test_expand():
    flow = perturb(small_maf(features=2))
    d = flow().expand((4,))
    assert isinstance(d, pf.FlowDistribution)
    assert d.batch_shape == (4,)
    assert d.event_shape == (2,)
    x = torch.randn(4, 2)
    lp = d.log_prob(x)
    assert lp.shape == (4,)
    assert torch.allclose(lp, flow().log_prob(x), atol=1e-6)
    assert d.sample().shape == (4, 2)
    assert d.sample((3,)).shape == (3, 4, 2)


def test_expand_with_context():
    flow = perturb(small_maf(features=2, context=3))
    d = flow(torch.randn(3, 3)).expand((2, 3))
    assert d.batch_shape == (2, 3)
    assert d.sample().shape == (2, 3, 2)


def test_flow_inside_a_plate():
    flow = perturb(small_maf(features=2))
    data = torch.randn(4, 2)

    def model(x=None):
        with pyro.plate("data", 4):
            return pyro.sample("x", flow(), obs=x)

    trace = pyro.poutine.trace(model).get_trace(data)
    trace.compute_log_prob()
    site = trace.nodes["x"]
    assert site["fn"].batch_shape == (4,)
    assert site["log_prob"].shape == (4,)
    assert torch.allclose(site["log_prob"], flow().log_prob(data), atol=1e-6)

    trace = pyro.poutine.trace(model).get_trace()
    trace.compute_log_prob()
    assert trace.nodes["x"]["value"].shape == (4, 2)
    assert trace.nodes["x"]["log_prob"].shape == (4,)


# --------------------------------------------------------------------------- ActNorm


def test_actnorm_data_dependent_initialisation():
    torch.manual_seed(0)
    act = pf.ActNorm(2)
    flow = pf.Flow([perturb(pf.MaskedAutoregressive(2, hidden=(8,), invert=True)), act])
    outputs = []
    original = act.inverse_and_log_det

    def record(y, context=None):
        x, log_det = original(y, context)
        outputs.append(x.detach())
        return x, log_det

    act.inverse_and_log_det = record
    data = 5 + 3 * torch.randn(2000, 2)
    assert not act.initialized
    flow().log_prob(data)
    assert bool(act.initialized)
    z = outputs[-1]
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-4)
    assert torch.allclose(z.std(0), torch.ones(2), atol=1e-4)
    assert torch.allclose(act.loc, data.mean(0), atol=1e-4)
    assert abs(act.log_scale.exp().mean().item() - 3) < 0.2

    # a second call with other data does not re-initialise
    loc, log_scale = act.loc.detach().clone(), act.log_scale.detach().clone()
    flow().log_prob(-2 + 0.5 * torch.randn(100, 2))
    assert torch.equal(act.loc, loc) and torch.equal(act.log_scale, log_scale)
    z = outputs[-1]
    assert z.mean() < -1  # the new data is not standardised

    # state_dict round trip keeps `initialized` (and the learned statistics)
    state = flow.state_dict()
    assert "transforms.1.initialized" in state
    act2 = pf.ActNorm(2)
    flow2 = pf.Flow([pf.MaskedAutoregressive(2, hidden=(8,), invert=True), act2])
    flow2.load_state_dict(state)
    assert bool(act2.initialized)
    x = torch.randn(50, 2)
    assert torch.equal(flow2().log_prob(x), flow().log_prob(x))
    assert torch.equal(act2.loc, loc)


def test_actnorm_does_not_initialise_in_eval_mode():
    act = pf.ActNorm(2)
    flow = pf.Flow([act]).eval()
    data = 5 + 3 * torch.randn(100, 2)
    lp = flow().log_prob(data)
    assert not act.initialized
    assert torch.allclose(lp, dist.Normal(0.0, 1.0).log_prob(data).sum(-1), atol=1e-5)


# --------------------------------------------------------------------------- get/set params


def test_get_params_names_and_values():
    flow = perturb(pf.NICE(3, transforms=2, hidden=(8,)))
    params = pf.get_params(flow)
    assert list(params) == [name for name, _ in flow.named_parameters()]
    for name, p in flow.named_parameters():
        assert isinstance(params[name], np.ndarray)
        np.testing.assert_array_equal(params[name], p.detach().numpy())
    # copies: changing the flow does not change the dict
    first = next(iter(params))
    before = params[first].copy()
    with torch.no_grad():
        next(flow.parameters()).add_(1.0)
    np.testing.assert_array_equal(params[first], before)


@pytest.mark.parametrize("recipe", ["MAF", "IAF", "NSF", "RealNVP", "NICE"])
def test_set_params_reproduces_log_prob(recipe):
    make = getattr(pf, recipe)
    torch.manual_seed(1)
    source = perturb(make(3, transforms=2, hidden=(8,)), scale=0.1)
    torch.manual_seed(2)
    target = make(3, transforms=2, hidden=(8,))
    x = torch.randn(10, 3)
    assert not torch.allclose(target().log_prob(x), source().log_prob(x))
    assert pf.set_params(target, pf.get_params(source)) is target
    assert torch.equal(target().log_prob(x), source().log_prob(x))


def test_set_params_casts_and_marks_actnorm_initialized():
    # eval mode: the source's ActNorm must not initialise itself on the first log_prob
    source = perturb(pf.Flow([pf.ActNorm(2), pf.LULinear(2)])).eval()
    target = pf.Flow([pf.ActNorm(2), pf.LULinear(2)]).double()
    pf.set_params(target, pf.get_params(source))
    assert bool(target.transforms[0].initialized)
    assert target.transforms[0].loc.dtype == torch.float64
    x = 3 + torch.randn(10, 2, dtype=torch.float64)
    assert torch.allclose(target().log_prob(x), source().log_prob(x.float()).double(), atol=1e-4)


def test_set_params_wrong_shape_names_the_key_and_shapes():
    flow = small_maf()
    params = pf.get_params(flow)
    key = "transforms.1.conditioner.layers.0.weight"
    shape = params[key].shape
    params[key] = np.zeros((shape[0] + 1, shape[1]), dtype=np.float32)
    message = rf"{key}.*\({shape[0]}, {shape[1]}\).*\({shape[0] + 1}, {shape[1]}\)"
    with pytest.raises(ValueError, match=message):
        pf.set_params(flow, params)


def test_set_params_missing_key_names_the_key():
    flow = small_maf()
    params = pf.get_params(flow)
    del params["transforms.0.conditioner.layers.1.bias"]
    with pytest.raises(ValueError, match=r"missing.*transforms\.0\.conditioner\.layers\.1\.bias"):
        pf.set_params(flow, params)


def test_set_params_unexpected_key_names_the_key():
    flow = small_maf()
    params = pf.get_params(flow)
    params["transforms.7.bogus"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected.*transforms\.7\.bogus"):
        pf.set_params(flow, params)


def test_set_params_failure_leaves_the_flow_unchanged():
    flow = small_maf()
    before = {k: v.copy() for k, v in pf.get_params(flow).items()}
    params = {k: v + 1 for k, v in before.items()}
    last = list(params)[-1]
    params[last] = np.zeros((1,))
    with pytest.raises(ValueError, match="must have shape"):
        pf.set_params(flow, params)
    for k, v in pf.get_params(flow).items():
        np.testing.assert_array_equal(v, before[k])
