"""``fit``: maximum likelihood on toy data, validation, early stopping, errors."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from sklearn.datasets import make_moons

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
    pyro.set_rng_seed(0)


@pytest.fixture(scope="module")
def moons():
    x, _ = make_moons(1200, noise=0.05, random_state=0)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    return x[:1000], x[1000:]


def gaussian_log_likelihood(train: np.ndarray, test: np.ndarray) -> float:
    """Mean held-out log-likelihood of the maximum-likelihood Gaussian of ``train``."""
    mean = torch.as_tensor(train.mean(0), dtype=torch.float64)
    cov = torch.as_tensor(np.cov(train.T, bias=True), dtype=torch.float64)
    gaussian = dist.MultivariateNormal(mean, cov)
    return gaussian.log_prob(torch.as_tensor(test, dtype=torch.float64)).mean().item()


def validation_nll(flow, x, context=None) -> float:
    with torch.no_grad():
        return -flow(context).log_prob(x).mean().item()


RECIPES = {
    "MAF": lambda: pf.MAF(2, transforms=3, hidden=(32, 32)),
    "NSF": lambda: pf.NSF(2, transforms=2, hidden=(32, 32), bins=8, mode="coupling"),
    "RealNVP": lambda: pf.RealNVP(2, transforms=3, hidden=(32, 32)),
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_fit_two_moons_beats_a_gaussian(moons, recipe):
    train, test = moons
    torch.manual_seed(0)
    flow = RECIPES[recipe]()
    epochs = 30
    history = pf.fit(flow, train, epochs=epochs, batch_size=100, lr=5e-3, progress=False)
    assert set(history) == {"train", "validation", "best_epoch"}
    assert len(history["validation"]) == len(history["train"]) <= epochs
    assert all(math.isfinite(v) for v in history["train"] + history["validation"])
    assert min(history["train"]) < history["train"][0] - 0.5
    assert min(history["validation"]) < history["validation"][0] - 0.5
    assert 0 <= history["best_epoch"] < len(history["train"])
    assert history["validation"][history["best_epoch"]] == min(history["validation"])
    held_out = -validation_nll(flow, torch.as_tensor(test))
    gaussian = gaussian_log_likelihood(train, test)
    assert held_out > gaussian + 0.4, (held_out, gaussian)
    # samples of the fitted flow lie on the moons: their Gaussian log-likelihood is near
    # the data's (a collapsed or exploded flow would be far off)
    samples = flow().sample((2000,)).numpy()
    assert abs(samples.mean(0)).max() < 0.2
    assert np.allclose(samples.std(0), 1.0, atol=0.2)


def test_fit_validation_fraction_splits_the_data(moons):
    train, _ = moons
    flow = pf.RealNVP(2, transforms=1, hidden=(8,))
    history = pf.fit(flow, train[:200], epochs=2, validation=0.25, progress=False)
    assert len(history["train"]) == len(history["validation"]) == 2
    no_val = pf.fit(
        pf.RealNVP(2, transforms=1, hidden=(8,)),
        train[:200],
        epochs=2,
        validation=0.0,
        progress=False,
    )
    assert no_val["validation"] == []
    assert len(no_val["train"]) == 2


def test_early_stopping_restores_the_best_parameters():
    torch.manual_seed(0)
    flow = pf.MAF(2, transforms=3, hidden=(64, 64))
    x = 1 + torch.randn(40, 2)  # few points: the big flow overfits them
    x_val = 1 + torch.randn(300, 2)
    epochs = 300
    history = pf.fit(
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
    assert validation_nll(flow, x_val) == pytest.approx(min(history["validation"]), abs=1e-6)
    assert validation_nll(flow, x_val) < history["validation"][-1] - 1e-4


def test_no_early_stopping_with_patience_none():
    torch.manual_seed(0)
    flow = pf.MAF(2, transforms=1, hidden=(8,))
    x, x_val = torch.randn(40, 2), torch.randn(100, 2)
    history = pf.fit(
        flow,
        x,
        epochs=12,
        batch_size=40,
        lr=0.05,
        validation=x_val,
        patience=None,
        progress=False,
    )
    assert len(history["train"]) == 12
    assert len(history["validation"]) == 12


def test_fit_with_explicit_validation_tuple():
    torch.manual_seed(0)
    x = torch.tensor([3.0, -1.0]) + torch.tensor([2.0, 0.5]) * torch.randn(400, 2)
    x_val = torch.tensor([3.0, -1.0]) + torch.tensor([2.0, 0.5]) * torch.randn(200, 2)
    flow = pf.MAF(2, transforms=2, hidden=(16,))
    history = pf.fit(
        flow,
        x.numpy(),
        epochs=20,
        batch_size=100,
        lr=2e-2,
        validation=(x_val.numpy(), None),
        patience=None,
        progress=False,
    )
    assert len(history["validation"]) == 20
    best = history["best_epoch"]
    assert validation_nll(flow, x_val) == pytest.approx(history["validation"][best], abs=1e-6)
    # the held-out NLL approaches the entropy of the true Gaussian
    entropy = dist.Normal(torch.tensor([3.0, -1.0]), torch.tensor([2.0, 0.5])).entropy().sum()
    assert validation_nll(flow, x_val) == pytest.approx(entropy.item(), abs=0.15)


def test_fit_conditional_flow_with_context():
    rng = np.random.default_rng(0)

    def make(n):
        c = rng.uniform(-2, 2, (n, 1))
        y = np.concatenate([2 * np.sin(2 * c), c**2 - 1], 1) + 0.3 * rng.standard_normal((n, 2))
        return y.astype(np.float32), c.astype(np.float32)

    y, c = make(1000)
    y_val, c_val = make(200)
    y_test, c_test = make(300)
    torch.manual_seed(0)
    flow = pf.MAF(2, context=1, transforms=2, hidden=(32, 32))
    history = pf.fit(
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
    held_out = -validation_nll(flow, torch.as_tensor(y_test), torch.as_tensor(c_test))
    true_ll = 2 * (-0.5 * math.log(2 * math.pi * 0.09) - 0.5)  # the true conditional density
    assert held_out > gaussian_log_likelihood(y, y_test) + 2.0
    assert held_out == pytest.approx(true_ll, abs=0.25)
    best = history["best_epoch"]
    y_val_t, c_val_t = torch.as_tensor(y_val), torch.as_tensor(c_val)
    assert validation_nll(flow, y_val_t, c_val_t) == pytest.approx(
        history["validation"][best], abs=1e-6
    )


def test_fit_leaves_the_training_mode_as_it_was():
    flow = pf.RealNVP(2, transforms=1, hidden=(8,)).eval()
    pf.fit(flow, torch.randn(50, 2), epochs=1, progress=False)
    assert not flow.training
    flow.train()
    pf.fit(flow, torch.randn(50, 2), epochs=1, progress=False)
    assert flow.training


def test_progress_false_prints_nothing(capsys):
    flow = pf.RealNVP(2, transforms=1, hidden=(8,))
    pf.fit(flow, torch.randn(100, 2), epochs=3, progress=False)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""
    # and the progress bar does show when asked for
    pf.fit(flow, torch.randn(100, 2), epochs=3, progress=True)
    captured = capsys.readouterr()
    assert "fit" in captured.out + captured.err


def _uniform_flow():
    base = dist.Uniform(-torch.ones(2), torch.ones(2), validate_args=False).to_event(1)
    return pf.Flow([pf.Scale(2)], base=base)


def test_non_finite_training_loss_raises_floating_point_error():
    flow = _uniform_flow()
    data = 0.5 * (2 * torch.rand(100, 2) - 1)
    data[::7, 0] = 3.0  # outside the support: log_prob = -inf
    assert flow().log_prob(data[:1]).item() == -math.inf
    # no validation split: the training loss itself must be checked
    message = r"the loss became non-finite \(inf\) at epoch 0, batch \d+.*support"
    with pytest.raises(FloatingPointError, match=message):
        pf.fit(flow, data, epochs=2, batch_size=20, validation=0.0, progress=False)


def test_non_finite_validation_loss_raises_floating_point_error():
    flow = _uniform_flow()
    data = 0.5 * (2 * torch.rand(100, 2) - 1)
    val = data[:10].clone()
    val[0, 1] = -5.0
    with pytest.raises(FloatingPointError, match=r"validation loss became non-finite"):
        pf.fit(flow, data, epochs=2, validation=(val, None), progress=False)


# --------------------------------------------------------------------------- regressions


def test_fit_detaches_data_context_and_validation_that_require_grad():
    torch.manual_seed(0)
    source = pf.MAF(3, transforms=1, hidden=(8,))
    data = source().rsample((96,))  # part of source's graph: requires grad
    assert data.requires_grad
    history = pf.fit(pf.MAF(3, transforms=1, hidden=(8,)), data, epochs=2, progress=False)
    assert len(history["train"]) == 2 and all(math.isfinite(v) for v in history["train"])
    # fit did not backpropagate into the flow that made the data
    assert all(p.grad is None for p in source.parameters())
    # a conditional flow with context and held-out validation data that require grad
    context = torch.randn(96, 2, requires_grad=True)
    val = (data[:20], context[:20])
    flow = pf.MAF(3, context=2, transforms=1, hidden=(8,))
    history = pf.fit(flow, data, context * 2, epochs=2, validation=val, progress=False)
    assert len(history["validation"]) == 2
    assert context.grad is None


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
    flow = pf.MAF(2, transforms=1, hidden=(8,))
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        pf.fit(flow, torch.randn(40, 2), **{"epochs": 2, "progress": False, **kwargs})
    # rejected before any training step
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())


def test_fit_accepts_numpy_ints_as_python_ints():
    x = torch.randn(80, 2)  # 16 held out, 64 trained in batches of 16
    runs = []
    for cast in (int, np.int64):
        torch.manual_seed(0)
        flow = pf.MAF(2, transforms=1, hidden=(8,))
        ints = {"epochs": 3, "batch_size": 16, "patience": 1, "seed": 5}
        kwargs = {k: cast(v) for k, v in ints.items()}
        runs.append(pf.fit(flow, x, validation=0.2, progress=False, **kwargs))
    assert runs[0] == runs[1]
    assert len(runs[0]["train"]) >= 2


def test_fit_empty_data_says_the_data_has_no_rows():
    with pytest.raises(ValueError, match=r"^data has no rows \(shape \(0, 2\)\)"):
        pf.fit(pf.MAF(2, transforms=1, hidden=(8,)), torch.zeros(0, 2), progress=False)
    with pytest.raises(ValueError, match=r"^data has no rows"):
        pf.fit(pf.MAF(2, transforms=1), np.zeros((0, 2)), validation=0.0, progress=False)
    with pytest.raises(ValueError, match=r"^validation data has no rows \(shape \(0, 2\)\)"):
        pf.fit(pf.MAF(2, transforms=1), torch.randn(9, 2), validation=torch.zeros(0, 2))
    # the validation-split message is kept for a split that really leaves nothing
    with pytest.raises(ValueError, match=r"no training data left after the validation split.*1 "):
        pf.fit(pf.MAF(2, transforms=1), torch.randn(1, 2), validation=0.9, progress=False)
