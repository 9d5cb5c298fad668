"""``pyroflows.numpyro.fit``: maximum likelihood on toy data, validation, early stopping,
non-finite losses and ActNorm initialisation (the twin of ``test_train_pyro.py``)."""

from __future__ import annotations

import math

import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")
eqx = pytest.importorskip("equinox")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import pyroflows.numpyro as pfj  # noqa: E402


@pytest.fixture(scope="module")
def moons():
    x, _ = sklearn_datasets.make_moons(1200, noise=0.05, random_state=0)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    return x[:1000], x[1000:]


def gaussian_log_likelihood(train: np.ndarray, test: np.ndarray) -> float:
    """Mean held-out log-likelihood of the maximum-likelihood Gaussian of ``train``."""
    mean = train.mean(0)
    cov = np.cov(train.T, bias=True)
    diff = test - mean
    maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    _, logdet = np.linalg.slogdet(cov)
    return float(np.mean(-0.5 * (maha + logdet + train.shape[1] * math.log(2 * math.pi))))


@eqx.filter_jit
def _nll(flow, x, context=None):
    return -flow(context).log_prob(x).mean()


def validation_nll(flow, x, context=None) -> float:
    return float(_nll(flow, jnp.asarray(x), None if context is None else jnp.asarray(context)))


RECIPES = {
    "MAF": lambda k: pfj.MAF(2, transforms=3, hidden=(32, 32), key=k),
    "NSF": lambda k: pfj.NSF(2, transforms=2, hidden=(32, 32), bins=8, mode="coupling", key=k),
    "RealNVP": lambda k: pfj.RealNVP(2, transforms=3, hidden=(32, 32), key=k),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_fit_two_moons_beats_a_gaussian(moons, recipe):
    train, test = moons
    flow = RECIPES[recipe](jax.random.key(0))
    epochs = 30
    trained, history = pfj.fit(flow, train, epochs=epochs, batch_size=100, lr=5e-3, progress=False)
    assert set(history) == {"train", "validation", "best_epoch"}
    assert len(history["validation"]) == len(history["train"]) <= epochs
    assert all(math.isfinite(v) for v in history["train"] + history["validation"])
    assert min(history["train"]) < history["train"][0] - 0.5
    assert min(history["validation"]) < history["validation"][0] - 0.5
    assert 0 <= history["best_epoch"] < len(history["train"])
    assert history["validation"][history["best_epoch"]] == min(history["validation"])
    held_out = -validation_nll(trained, test)
    gaussian = gaussian_log_likelihood(train, test)
    assert held_out > gaussian + 0.4, (held_out, gaussian)
    # the flow passed in is left as it was (JAX modules are immutable)
    assert validation_nll(flow, test) > -held_out + 0.5
    # samples of the fitted flow lie on the moons: standardised like the data
    samples = np.asarray(
        eqx.filter_jit(lambda fl: fl().sample(jax.random.key(1), (2000,)))(trained)
    )
    assert abs(samples.mean(0)).max() < 0.2
    assert np.allclose(samples.std(0), 1.0, atol=0.2)


def test_fit_validation_fraction_splits_the_data_and_progress_is_silent(moons, capsys):
    train, _ = moons
    flow = pfj.RealNVP(2, transforms=1, hidden=(8,), key=jax.random.key(0))
    _, history = pfj.fit(flow, train[:200], epochs=2, validation=0.25, progress=False)
    assert len(history["train"]) == len(history["validation"]) == 2
    _, no_val = pfj.fit(flow, train[:200], epochs=2, validation=0.0, progress=False)
    assert no_val["validation"] == []
    assert len(no_val["train"]) == 2
    assert no_val["best_epoch"] == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_early_stopping_restores_the_best_parameters():
    flow = pfj.MAF(2, transforms=3, hidden=(64, 64), key=jax.random.key(0))
    rng = np.random.default_rng(0)
    x = 1 + rng.standard_normal((40, 2)).astype(np.float32)  # few points: the flow overfits
    x_val = 1 + rng.standard_normal((300, 2)).astype(np.float32)
    epochs = 300
    trained, history = pfj.fit(
        flow,
        x,
        epochs=epochs,
        batch_size=10,
        lr=1e-3,
        validation=(x_val, None),
        patience=1,
        progress=False,
    )
    n = len(history["train"])
    assert n < epochs
    assert len(history["validation"]) == n
    best = history["best_epoch"]
    assert history["validation"][best] == min(history["validation"])
    # patience=1: training stopped right after the first epoch without improvement
    assert best == n - 2
    assert history["validation"][-1] > history["validation"][best]
    # the parameters of the best epoch were restored, not those of the last one
    assert validation_nll(trained, x_val) == pytest.approx(min(history["validation"]), abs=1e-5)
    assert validation_nll(trained, x_val) < history["validation"][-1] - 1e-4


def test_patience_none_runs_every_epoch_and_approaches_the_entropy():
    rng = np.random.default_rng(0)
    loc, scale = np.array([3.0, -1.0]), np.array([2.0, 0.5])
    x = (loc + scale * rng.standard_normal((400, 2))).astype(np.float32)
    x_val = (loc + scale * rng.standard_normal((200, 2))).astype(np.float32)
    flow = pfj.MAF(2, transforms=2, hidden=(16,), key=jax.random.key(0))
    trained, history = pfj.fit(
        flow,
        x,
        epochs=20,
        batch_size=100,
        lr=2e-2,
        validation=x_val,  # an array alone: no context
        patience=None,
        progress=False,
    )
    assert len(history["train"]) == len(history["validation"]) == 20
    best = history["best_epoch"]
    assert validation_nll(trained, x_val) == pytest.approx(history["validation"][best], abs=1e-5)
    # the held-out NLL approaches the entropy of the true Gaussian
    entropy = float(np.sum(0.5 * np.log(2 * math.pi * math.e * scale**2)))
    assert validation_nll(trained, x_val) == pytest.approx(entropy, abs=0.15)


def test_fit_conditional_flow_with_a_validation_tuple():
    rng = np.random.default_rng(0)

    def make(n):
        c = rng.uniform(-2, 2, (n, 1))
        y = np.concatenate([2 * np.sin(2 * c), c**2 - 1], 1) + 0.3 * rng.standard_normal((n, 2))
        return y.astype(np.float32), c.astype(np.float32)

    y, c = make(1000)
    y_val, c_val = make(200)
    y_test, c_test = make(300)
    flow = pfj.MAF(2, context=1, transforms=2, hidden=(32, 32), key=jax.random.key(0))
    trained, history = pfj.fit(
        flow,
        y,
        c,
        epochs=30,
        batch_size=100,
        lr=5e-3,
        validation=(y_val, c_val),
        progress=False,
    )
    assert history["train"][-1] < history["train"][0] - 1.0
    held_out = -validation_nll(trained, y_test, c_test)
    true_ll = 2 * (-0.5 * math.log(2 * math.pi * 0.09) - 0.5)  # the true conditional density
    assert held_out > gaussian_log_likelihood(y, y_test) + 2.0
    assert held_out == pytest.approx(true_ll, abs=0.25)
    best = history["best_epoch"]
    assert validation_nll(trained, y_val, c_val) == pytest.approx(
        history["validation"][best], abs=1e-5
    )


def test_non_finite_training_loss_raises_floating_point_error():
    flow = pfj.Flow([pfj.Scale(2)])
    data = 0.5 * np.random.default_rng(0).standard_normal((100, 2)).astype(np.float32)
    data[::7, 0] = 1e30  # finite, but its square overflows float32: log_prob = -inf
    assert float(_nll(flow, jnp.asarray(data[:1]))) == math.inf
    # no validation split: the training loss itself must be checked
    message = r"the loss became non-finite \(inf\) at epoch 0, batch 0.*lower lr.*support"
    with pytest.raises(FloatingPointError, match=message):
        pfj.fit(flow, data, epochs=2, batch_size=20, validation=0.0, progress=False)


def test_non_finite_validation_loss_raises_floating_point_error():
    flow = pfj.Flow([pfj.Scale(2)])
    data = 0.5 * np.random.default_rng(0).standard_normal((100, 2)).astype(np.float32)
    val = data[:10].copy()
    val[0, 1] = -1e30
    with pytest.raises(FloatingPointError, match=r"validation loss became non-finite \(inf\)"):
        pfj.fit(flow, data, epochs=2, validation=(val, None), progress=False)


def test_fit_initialises_actnorm_from_the_first_batch():
    rng = np.random.default_rng(1)
    data = (5 + 3 * rng.standard_normal((300, 2))).astype(np.float32)
    maf = pfj.MaskedAutoregressive(2, hidden=(8,), invert=True, key=jax.random.key(0))
    flow = pfj.Flow([maf, pfj.ActNorm(2)])  # ActNorm sees the data first (data -> base)
    assert not flow.transforms[1].initialized
    batch = 64
    trained, _ = pfj.fit(
        flow, data, epochs=1, batch_size=batch, lr=1e-9, validation=0.0, seed=3, progress=False
    )
    act = trained.transforms[1]
    assert act.initialized
    # fit's first batch, the one torch's ActNorm initialises itself on: the generator seeded
    # with `seed` draws the split (no validation rows here), then epoch 0's order
    rng = np.random.default_rng(3)
    first = data[rng.permutation(300)][rng.permutation(300)[:batch]]
    np.testing.assert_allclose(act.loc, first.mean(0), atol=1e-4)
    np.testing.assert_allclose(act.log_scale, np.log(first.std(0, ddof=1)), atol=1e-4)
    # not the whole data set's statistics: the first batch is what it saw
    assert float(np.abs(np.asarray(act.loc) - data.mean(0)).max()) > 1e-3
    # the data comes out standardised
    z, _ = act.inverse_and_log_det(jnp.asarray(first))
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0, ddof=1), 1.0, atol=1e-4)
    # an initialised layer is not initialised again (fit runs initialize_actnorm each call)
    again = pfj.initialize_actnorm(trained, jnp.asarray(data - 10))
    np.testing.assert_array_equal(again.transforms[1].loc, act.loc)
    fresh = pfj.initialize_actnorm(flow, jnp.asarray(data - 10))
    np.testing.assert_allclose(fresh.transforms[1].loc, data.mean(0) - 10, atol=1e-3)


# --------------------------------------------------------------------------- regressions

BAD_ARGUMENTS = [
    ({"clip_grad": -1.0}, r"clip_grad must be None \(no clipping\) or a finite number > 0, got -1"),
    ({"clip_grad": 0.0}, r"clip_grad must be None.*> 0, got 0.0"),
    ({"lr": -1e-3}, r"lr must be a finite number > 0, got -0.001"),
    ({"lr": 0}, r"lr must be a finite number > 0, got 0"),
    ({"lr": float("nan")}, r"lr must be a finite number > 0, got nan"),
    ({"weight_decay": -0.1}, r"weight_decay must be a finite number >= 0, got -0.1"),
    ({"epochs": 0}, r"epochs must be a positive int, got 0"),
    ({"epochs": 2.0}, r"epochs must be a positive int, got 2.0"),
    ({"batch_size": 0}, r"batch_size must be a positive int, got 0"),
    ({"batch_size": True}, r"batch_size must be a positive int, got True"),
    ({"patience": 0}, r"patience must be None \(never stop early\) or a positive int, got 0"),
    ({"patience": 2.5}, r"patience must be None.*got 2.5"),
    ({"validation": 1.0}, r"validation must be a fraction in \[0, 1\).*got 1.0"),
    ({"validation": "0.1"}, r"validation must be a fraction in \[0, 1\).*got '0.1'"),
    ({"seed": -1}, r"seed must be a non-negative int, got -1"),
    ({"seed": None}, r"seed must be a non-negative int, got None"),
    ({"progress": "no"}, r"progress must be a bool, got 'no'"),
    ({"every": 2}, r"every .*needs checkpoint=path, got every=2 without a checkpoint"),
    ({"checkpoint": 3}, r"checkpoint must be None or a file path.*got 3"),
]


@pytest.mark.parametrize(("kwargs", "message"), BAD_ARGUMENTS, ids=lambda v: str(v)[:30])
def test_fit_rejects_bad_arguments(kwargs, message):
    flow = pfj.Flow([pfj.Scale(2)])
    data = np.random.default_rng(0).standard_normal((40, 2))
    with pytest.raises(ValueError, match=message):
        pfj.fit(flow, data, **{"epochs": 2, "progress": False, **kwargs})


def test_fit_negative_lr_and_clip_grad_no_longer_train_uphill():
    # before the fix, lr=-0.1 (or clip_grad=-1) ran Adam uphill: the NLL grew every epoch
    data = 3 + np.random.default_rng(0).standard_normal((100, 2))
    flow = pfj.Flow([pfj.ActNorm(2, initialized=True)])
    for bad in ({"lr": -0.1}, {"clip_grad": -1.0, "lr": 0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            pfj.fit(flow, data, epochs=3, validation=0.0, progress=False, **bad)
    _, history = pfj.fit(flow, data, epochs=3, lr=0.1, validation=0.0, progress=False)
    assert history["train"][-1] < history["train"][0] - 0.5  # downhill


def test_fit_accepts_numpy_ints_as_python_ints():
    # 16 held out, 64 trained in batches of 16: one batch shape, one compilation
    data = np.random.default_rng(0).standard_normal((80, 2)).astype(np.float32)
    flow = pfj.Flow([pfj.Scale(2)])
    ints = {"epochs": 3, "batch_size": 16, "patience": 1, "seed": 5}
    runs = [
        pfj.fit(
            flow, data, validation=0.2, progress=False, **{k: cast(v) for k, v in ints.items()}
        )[1]
        for cast in (int, np.int64)
    ]
    assert runs[0] == runs[1]
    assert len(runs[0]["train"]) >= 2


def test_fit_empty_data_says_the_data_has_no_rows():
    flow = pfj.Flow([pfj.Scale(2)])
    with pytest.raises(ValueError, match=r"^data has no rows \(shape \(0, 2\)\)"):
        pfj.fit(flow, np.zeros((0, 2)), progress=False)
    with pytest.raises(ValueError, match=r"^data has no rows"):
        pfj.fit(flow, np.zeros((0, 2)), validation=0.0, progress=False)
    with pytest.raises(ValueError, match=r"^validation data has no rows \(shape \(0, 2\)\)"):
        pfj.fit(flow, np.ones((9, 2)), validation=np.zeros((0, 2)), progress=False)
    # the validation-split message is kept for a split that really leaves nothing
    with pytest.raises(ValueError, match=r"no training data left after the validation split.*1 "):
        pfj.fit(flow, np.ones((1, 2)), validation=0.9, progress=False)


def _nested_flows(small: bool = False, features: int = 3, context: int = 2):
    """The same nested flow in both backends (torch weights perturbed, then copied to JAX
    with every ActNorm left uninitialised), as ``(torch_flow, jax_flow)``; ``small`` keeps
    the first two chains and the last ActNorm."""
    import torch

    import pyroflows.pyro as pf
    from pyroflows.numpyro.params import _rescan

    def build(m, **key):
        def made(i):
            k = {"key": jax.random.key(i)} if key else {}
            return m.MaskedAutoregressive(features, context, hidden=(8,), invert=True, **k)

        layers = [
            m.Chain([m.ActNorm(features), made(0)]),  # a Chain inside the Flow
            m.Chain([m.ActNorm(features), made(1)]),  # same structure: JAX stacks them
            m.Invert(m.ActNorm(features)),  # met in its forward direction: left alone
            m.Invert(m.Invert(m.Chain([m.ActNorm(features), made(3)]))),
            m.Chain([m.Chain([m.ActNorm(features), made(2)]) for _ in range(2)]),
            m.ActNorm(features),
        ]
        return m.Flow([*layers[:2], layers[-1]] if small else layers)

    torch.manual_seed(0)
    tflow = build(pf)
    with torch.no_grad():
        for name, p in tflow.named_parameters():
            if not name.endswith(("loc", "log_scale")):
                p.normal_(0, 0.3)
    jflow = pfj.set_params(build(pfj, key=True), pf.get_params(tflow))
    jflow = _rescan(
        jax.tree_util.tree_map(
            lambda m: pfj.ActNorm(m.features) if isinstance(m, pfj.ActNorm) else m,
            _rescan(jflow, scan=False),
            is_leaf=lambda m: isinstance(m, pfj.ActNorm),
        ),
        scan=True,
    )
    return tflow, jflow


def _actnorm_params(params):
    return {k: v for k, v in params.items() if k.endswith(("loc", "log_scale"))}


def test_initialize_actnorm_reaches_nested_layers_as_torch_does(float64, jax_x64):
    import torch

    import pyroflows.pyro as pf
    from pyroflows.numpyro.core import Stack

    tflow, jflow = _nested_flows()
    # the JAX flow holds stacks: of two Chains at the top, of two Chains inside a Chain
    assert isinstance(jflow.transforms[0], Stack)
    assert isinstance(jflow.transforms[3].transforms[0], Stack)
    rng = np.random.default_rng(0)
    x = 4 + 3 * rng.standard_normal((50, 3))
    c = rng.standard_normal((50, 2))
    tflow.train()
    lp_torch = tflow(torch.as_tensor(c)).log_prob(torch.as_tensor(x)).detach().numpy()
    # jitted (initialize_actnorm branches on static structure only): compiles faster than
    # the eager scans run
    jinit = eqx.filter_jit(pfj.initialize_actnorm)(jflow, jnp.asarray(x), jnp.asarray(c))
    lp_jax = np.asarray(eqx.filter_jit(lambda f, x, c: f(c).log_prob(x))(jinit, x, c))
    torch_act = _actnorm_params(pf.get_params(tflow))
    jax_act = _actnorm_params(pfj.get_params(jinit))
    assert sorted(torch_act) == sorted(jax_act) and len(torch_act) == 14
    for name, value in torch_act.items():
        np.testing.assert_allclose(jax_act[name], value, rtol=0, atol=1e-12, err_msg=name)
    # every ActNorm met in its inverse direction was initialised, the inverted one was not
    left_alone = {"transforms.2.bijection.loc", "transforms.2.bijection.log_scale"}
    assert all(np.all(torch_act[k] == 0) for k in left_alone)
    assert all(np.abs(v).max() > 0.05 for k, v in torch_act.items() if k not in left_alone)
    np.testing.assert_allclose(lp_jax, lp_torch, rtol=0, atol=1e-10)
    # the structure (stacks) is kept, and a second call changes nothing
    assert isinstance(jinit.transforms[0], Stack)
    again = pfj.initialize_actnorm(jinit, jnp.asarray(x - 7), jnp.asarray(c))
    np.testing.assert_array_equal(
        pfj.get_params(again)["transforms.5.loc"], jax_act["transforms.5.loc"]
    )


def test_fit_matches_torch_fit_step_for_step(float64, jax_x64):
    """Same seed, same split and batches (numpy), same ActNorm initialisation (first batch),
    same Adam: the two backends' fit give the same history and parameters."""
    import torch

    import pyroflows.pyro as pf

    tflow, jflow = _nested_flows(small=True)
    rng = np.random.default_rng(1)
    x = 4 + 3 * rng.standard_normal((80, 3))
    c = rng.standard_normal((80, 2))
    # 60 training rows in batches of 30: one batch shape, one compilation
    kwargs = {"epochs": 2, "batch_size": 30, "lr": 1e-2, "validation": 0.25, "seed": 3}
    kwargs.update(clip_grad=None, weight_decay=1e-3, progress=False)
    torch_history = pf.fit(tflow, torch.as_tensor(x), torch.as_tensor(c), **kwargs)
    jtrained, jax_history = pfj.fit(jflow, x, c, **kwargs)
    np.testing.assert_allclose(jax_history["train"], torch_history["train"], rtol=1e-10)
    np.testing.assert_allclose(jax_history["validation"], torch_history["validation"], rtol=1e-10)
    assert jax_history["best_epoch"] == torch_history["best_epoch"]
    torch_params, jax_params = pf.get_params(tflow), pfj.get_params(jtrained)
    assert sorted(torch_params) == sorted(jax_params)
    for name, value in torch_params.items():
        np.testing.assert_allclose(jax_params[name], value, rtol=0, atol=1e-9, err_msg=name)


def test_initialize_actnorm_warns_about_a_composite_it_cannot_enter():
    class Wrapper(pfj.Bijection):
        inner: pfj.ActNorm

        def __init__(self, inner):
            self.features, self.context_features, self.inner = inner.features, 0, inner

        def forward_and_log_det(self, x, context=None):
            return self.inner.forward_and_log_det(x)

        def inverse_and_log_det(self, y, context=None):
            return self.inner.inverse_and_log_det(y)

    flow = pfj.Flow([Wrapper(pfj.ActNorm(2)), pfj.ActNorm(2)])
    data = 3 + jax.random.normal(jax.random.key(0), (20, 2))
    with pytest.warns(UserWarning, match=r"cannot look inside a Wrapper.*left uninitialised"):
        flow = pfj.initialize_actnorm(flow, data)
    assert flow.transforms[1].initialized and not flow.transforms[0].inner.initialized
    np.testing.assert_allclose(flow.transforms[1].loc, data.mean(0), atol=1e-5)
