"""The invariant suite of the image bijections and recipes (torch backend), event shape
``(C, H, W)``.

Every case is small (images of ``(1, 4, 4)`` or ``(2, 4, 4)``, 4 to 8 hidden channels), in
float64, with its parameters moved by N(0, 0.1) noise and in eval mode (so that ActNorm's
data-dependent initialisation does not move it during a check). Invariants: both round
trips; log_det against the autograd Jacobian of the flattened map; inverse log_det equal to
minus forward; batch shapes (), (0,), (1,), (2, 3) with context broadcasting; gradients reach
every parameter; one-pass log_prob equal to Pyro's TransformedDistribution; a sample scored
from the cache equals its fresh score; save and load; near-identity initialisation. Then the
pieces' own properties (the squeeze's layout, ActNorm on a constant channel, the shapes and
errors of the multi-scale recipes) and a short ``fit``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import pytest
import torch

import pyroflows.pyro as pf

pytestmark = pytest.mark.usefixtures("float64", "seeded")


@dataclass(frozen=True)
class Case:
    """An image bijection to check: ``make()`` builds it fresh."""

    id: str
    make: Callable[[], pf.Bijection]
    context: int = 0
    identity_at_init: bool = True  # a fresh one is the identity map
    volume_preserving: bool = False

    def __repr__(self) -> str:
        return self.id


def _glow(context: int = 0) -> pf.Bijection:
    return pf.Glow((2, 4, 4), context, levels=2, steps=1, hidden=4).transforms[0]


CASES = [
    Case("Squeeze", lambda: pf.Squeeze((2, 4, 4)), identity_at_init=False, volume_preserving=True),
    Case(
        "Invert-Squeeze",
        lambda: pf.Invert(pf.Squeeze((1, 4, 4))),
        identity_at_init=False,
        volume_preserving=True,
    ),
    Case("ActNorm", lambda: pf.ActNorm((2, 4, 4))),
    Case("Conv1x1", lambda: pf.Conv1x1((3, 2, 2)), identity_at_init=False),
    Case("Conv1x1-no-permutation", lambda: pf.Conv1x1((3, 2, 2), seed=None)),
    Case("Coupling-checkerboard", lambda: pf.ImageCoupling((2, 4, 4), hidden=4, blocks=1)),
    Case(
        "Coupling-checkerboard-parity1-ctx2",
        lambda: pf.ImageCoupling((1, 4, 4), 2, "checkerboard", 1, hidden=4, blocks=1),
        context=2,
    ),
    Case(
        "Coupling-channel-spline-ctx2",
        lambda: pf.ImageCoupling(
            (3, 2, 2), 2, "channel", 1, pf.SplineTransformer(bins=4, bound=2.5), 4, 0
        ),
        context=2,
    ),
    Case(
        "Coupling-checkerboard-mixture",
        lambda: pf.ImageCoupling(
            (1, 4, 4), 0, "checkerboard", 0, pf.LogisticMixtureTransformer(2), 4, 0
        ),
    ),
    Case(
        "Coupling-channel-additive",
        lambda: pf.ImageCoupling((2, 2, 2), 0, "channel", 0, pf.AdditiveTransformer(), 4, 1),
        volume_preserving=True,
    ),
    Case(
        "Glow-mixture",
        lambda: pf.Glow(
            (1, 4, 4), levels=2, steps=1, hidden=4, transformer=pf.LogisticMixtureTransformer(2)
        ).transforms[0],
        identity_at_init=False,
    ),
    Case("FactorOut", lambda: pf.FactorOut((4, 2, 2), pf.ActNorm((1, 2, 2)))),
    Case(
        "RealNVP",
        lambda: pf.RealNVP(shape=(1, 4, 4), levels=2, hidden=4, blocks=1).transforms[0],
    ),
    Case(
        "RealNVP-ctx2",
        lambda: pf.RealNVP(shape=(2, 2, 2), context=2, levels=1, hidden=4, blocks=0).transforms[0],
        context=2,
    ),
    Case("Glow", _glow, identity_at_init=False),
    Case("Glow-ctx2", lambda: _glow(2), context=2, identity_at_init=False),
]

BATCH = (2, 3)


def build(case: Case, perturb: bool = True) -> pf.Bijection:
    bijection = case.make()
    bijection.eval()
    if perturb:
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in bijection.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return bijection


def inputs(case: Case, bijection: pf.Bijection, batch=BATCH, context_batch=None):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(*batch, *bijection.base_shape, generator=g)
    y = 1.5 * torch.randn(*batch, *bijection.event_shape, generator=g)
    shape = batch if context_batch is None else context_batch
    c = torch.randn(*shape, case.context, generator=g) if case.context else None
    return x, y, c


def assert_close(actual, expected, atol, msg=""):
    actual, expected = actual.detach(), expected.detach()
    err = float((actual - expected).abs().max()) if actual.numel() else 0.0
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != {expected.shape}"
    assert err <= atol, f"{msg}: max abs error {err:.3g} > {atol:.3g}"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_round_trips_and_log_dets(case):
    b = build(case)
    x, y, c = inputs(case, b)
    fy, fld = b.forward_and_log_det(x, c)
    back, ild_at_fy = b.inverse_and_log_det(fy, c)
    assert fy.shape == (*BATCH, *b.event_shape) and fld.shape == BATCH
    assert_close(back, x, 1e-10, "inverse(forward(x))")
    assert_close(ild_at_fy, -fld, 1e-10, "inverse log_det at forward(x)")
    ix, _ = b.inverse_and_log_det(y, c)
    assert_close(b.forward_and_log_det(ix, c)[0], y, 1e-10, "forward(inverse(y))")
    if case.volume_preserving:
        assert float(fld.detach().abs().max()) == 0.0
    else:
        assert float(fld.detach().abs().max()) > 1e-3  # the perturbed map changes volume


@pytest.mark.parametrize("case", CASES, ids=str)
def test_log_det_matches_the_autograd_jacobian(case):
    b = build(case)
    x, _, c = inputs(case, b, batch=(2,))
    _, log_det = b.forward_and_log_det(x, c)
    for i in range(2):
        ci = None if c is None else c[i]

        def flat(v, ci=ci):
            return b.forward_and_log_det(v.reshape(b.base_shape), ci)[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(flat, x[i].reshape(-1))
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0
        assert_close(log_det[i], logabsdet, 1e-9, f"log_det of event {i}")


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("batch", [(), (0,), (1,), (2, 3)], ids=str)
def test_batch_shapes_and_context_broadcasting(case, batch):
    b = build(case)
    x, y, c = inputs(case, b, batch=batch)
    out, log_det = b.forward_and_log_det(x, c)
    assert out.shape == (*batch, *b.event_shape) and log_det.shape == batch
    back, inv_log_det = b.inverse_and_log_det(y, c)
    assert back.shape == (*batch, *b.base_shape) and inv_log_det.shape == batch
    if case.context and batch == (2, 3):
        # a context of batch (2, 1) against data of batch (3,): every pair, as in a loop
        x3 = x[0]
        c21 = c[:, :1]
        out, log_det = b.forward_and_log_det(x3, c21)
        assert out.shape == (2, 3, *b.event_shape)
        for i in range(2):
            for j in range(3):
                yij, ldij = b.forward_and_log_det(x3[j], c21[i, 0])
                assert_close(out[i, j], yij, 1e-12, "broadcast forward")
                assert_close(log_det[i, j], ldij, 1e-12, "broadcast log_det")


@pytest.mark.parametrize("case", [c for c in CASES if "Squeeze" not in c.id], ids=str)
def test_gradients_reach_every_parameter(case):
    b = build(case)
    b.train()  # (ActNorm initialises on its first inverse call in training mode)
    x, y, c = inputs(case, b)
    _, log_det = b.inverse_and_log_det(y, c)
    out, fwd_log_det = b.forward_and_log_det(x, c)
    (log_det.sum() + fwd_log_det.sum() + out.square().sum()).backward()
    for name, p in b.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


@pytest.mark.parametrize("case", CASES, ids=str)
def test_flow_log_prob_is_pyros_and_scores_its_samples(case):
    b = build(case)
    flow = pf.Flow([b])
    _, y, c = inputs(case, b, batch=(4,))
    context = None if c is None else c[0]
    d = flow(context)
    assert tuple(d.event_shape) == b.event_shape
    base = dist.Normal(torch.zeros(b.base_shape), 1.0).to_event(len(b.base_shape))
    transform = b.condition(context) if case.context else b
    reference = dist.TransformedDistribution(base, [transform])
    assert_close(d.log_prob(y), reference.log_prob(y), 1e-10, "log_prob against Pyro")
    sample = d.rsample((3,))
    assert sample.shape == (3, *b.event_shape)
    cached = d.log_prob(sample)
    fresh = flow(context).log_prob(sample.detach().clone())
    assert_close(cached, fresh, 1e-9, "the cached score of a sample")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_save_and_load(case, tmp_path):
    b = build(case)
    torch.save(b.state_dict(), tmp_path / "state.pt")
    fresh = build(case, perturb=False)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt"))
    fresh.eval()
    x, _, c = inputs(case, b)
    assert_close(fresh.forward_and_log_det(x, c)[0], b.forward_and_log_det(x, c)[0], 0.0, "load")
    params = pf.get_params(pf.Flow([b]))
    again = pf.Flow([build(case, perturb=False)])
    pf.set_params(again, params)
    again.eval()
    out = again.transforms[0].forward_and_log_det(x, c)[0]
    assert_close(out, b.forward_and_log_det(x, c)[0], 0.0, "set_params")


@pytest.mark.parametrize("case", [c for c in CASES if c.identity_at_init], ids=str)
def test_near_identity_at_initialisation(case):
    b = build(case, perturb=False)
    x, _, c = inputs(case, b)
    y, log_det = b.forward_and_log_det(x, c)
    assert_close(y, x, 1e-12, "a fresh bijection")
    assert_close(log_det, torch.zeros(BATCH), 1e-12, "its log_det")


def test_squeeze_moves_each_2x2_patch_into_four_channels():
    image = torch.arange(32.0).reshape(2, 4, 4)
    z, log_det = pf.Squeeze((2, 4, 4)).inverse_and_log_det(image)
    assert z.shape == (8, 2, 2) and float(log_det) == 0.0
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(z[4 * c + 2 * i + j], image[c, i::2, j::2])


def test_actnorm_on_a_constant_channel_stays_finite_and_centres_it():
    layer = pf.ActNorm((2, 3, 3))
    images = torch.randn(16, 2, 3, 3)
    images[:, 1] = 0.5  # a constant channel (an always-black border, say)
    z, log_det = layer.inverse_and_log_det(images)
    assert bool(layer.initialized)
    assert torch.isfinite(z).all() and torch.isfinite(log_det).all()
    assert_close(z[:, 1], torch.zeros(16, 3, 3), 1e-12, "the constant channel, centred")
    assert float(layer.log_scale[1]) == 0.0
    assert abs(float(z[:, 0].std()) - 1) < 1e-9 and abs(float(z[:, 0].mean())) < 1e-9


def test_multi_scale_recipes_keep_the_event_shape_and_invert_exactly():
    torch.manual_seed(0)
    for flow in (
        pf.RealNVP(shape=(1, 8, 8), levels=3, hidden=4, blocks=1),
        pf.Glow((1, 8, 8), levels=3, steps=2, hidden=4),
    ):
        flow.eval()
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(0.05 * torch.randn_like(p))
        d = flow()
        assert tuple(d.event_shape) == (1, 8, 8) and flow.features == 64
        x = d.sample((5,))
        z, log_det = flow.transforms[0].inverse_and_log_det(x)
        back, _ = flow.transforms[0].forward_and_log_det(z)
        assert_close(back, x, 1e-10, f"{type(flow.transforms[0]).__name__} round trip")
        assert log_det.shape == (5,)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: pf.Squeeze((1, 3, 4)), "even height and width"),
        (lambda: pf.Glow((1, 4, 6), levels=2), "multiples of 4"),
        (lambda: pf.RealNVP(shape=(1, 4)), r"\(C, H, W\) tuple"),
        (lambda: pf.RealNVP(3, shape=(1, 4, 4)), "not both"),
        (lambda: pf.ImageCoupling((1, 4, 4), mask="channel"), "C >= 2"),
        (lambda: pf.ImageCoupling((2, 4, 4), mask="stripes"), "mask must be one of"),
        (lambda: pf.Glow((1, 4, 4), levels=1, hidden=(8, 16)), "one number of channels"),
        (lambda: pf.FactorOut((2, 2, 2), pf.ActNorm((2, 2, 2))), "c < 2"),
    ],
)
def test_bad_image_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_wrong_image_shapes_are_named():
    flow = pf.Glow((1, 4, 4), levels=1, steps=1, hidden=4)
    with pytest.raises(ValueError, match=r"value must have shape \(\.\.\., 1, 4, 4\)"):
        flow().log_prob(torch.zeros(3, 16))
    with pytest.raises(ValueError, match=r"must have shape \(n, 1, 4, 4\)"):
        pf.fit(flow, torch.zeros(10, 16), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"takes events of shape"):
        pf.Chain([pf.ActNorm((1, 4, 4)), pf.ActNorm((4, 2, 2))])


def test_fit_trains_a_glow_on_images():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)
    # correlated pixels: a smooth random intensity per image plus a little noise
    level = torch.randn(256, 1, 1, 1, generator=generator)
    images = level + 0.3 * torch.randn(256, 1, 4, 4, generator=generator)
    flow = pf.Glow((1, 4, 4), levels=1, steps=2, hidden=8)
    history = pf.fit(flow, images, epochs=15, batch_size=64, lr=3e-3, progress=False)
    flow.eval()
    test = level[:64] + 0.3 * torch.randn(64, 1, 4, 4, generator=generator)
    independent = dist.Normal(images.mean(0), images.std(0)).to_event(3)
    nll_flow = -float(flow().log_prob(test).mean())
    nll_independent = -float(independent.log_prob(test).mean())
    assert history["train"][-1] < history["train"][0]
    assert nll_flow < nll_independent - 5.0  # the flow has learnt the pixels' correlation


def test_encode_decode_and_temperature_sampling():
    torch.manual_seed(0)
    flow = pf.Glow((1, 4, 4), context=2, levels=2, steps=1, hidden=4)
    flow.eval()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    c = torch.randn(2)
    x = flow(c).sample((5,))
    z = flow.encode(x, c)
    assert z.shape == (5, 1, 4, 4)
    assert_close(flow.decode(z, c), x, 1e-5, "decode(encode(x))")
    # temperature 0 is the image of the base's mode; the base draws scale with temperature
    mode = flow.sample_at_temperature((3,), 0.0, c)
    assert_close(mode, flow.decode(torch.zeros(3, 1, 4, 4), c), 1e-6, "temperature 0")
    cold = flow.sample_at_temperature((4000,), 0.5, c)
    spread = float(flow.encode(cold, c).std())
    assert abs(spread - 0.5) < 0.02, spread
    laplace = dist.Laplace(torch.zeros(1, 4, 4), 1.0).to_event(3)
    with pytest.raises(ValueError, match="custom base"):
        pf.Flow(list(flow.transforms), base=laplace).sample_at_temperature((2,), 0.5, c)
    with pytest.raises(ValueError, match="temperature"):
        flow.sample_at_temperature((2,), -1.0, c)
