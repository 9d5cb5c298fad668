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
    # fit's first batch: the first rows of its seeded permutation (no validation split)
    first = data[np.random.default_rng(3).permutation(300)[:batch]]
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
