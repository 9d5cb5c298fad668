"""The backend-free warm start of AutoFlow (`pyroflows._autoflow`), on numpy potentials."""

from __future__ import annotations

import numpy as np
import pytest

from pyroflows import _autoflow as af


def _gaussian(mean: np.ndarray, cov: np.ndarray):
    precision = np.linalg.inv(cov)

    def potential(z):
        d = z - mean
        return float(0.5 * d @ precision @ d)

    def derivatives(z):
        return precision @ (z - mean), precision.copy()

    def gaussian_elbo(loc, scale_tril, draws=4000):
        eps = np.random.default_rng(0).standard_normal((draws, len(loc)))
        points = loc + eps @ scale_tril.T
        values = np.array([potential(p) for p in points])
        return float(-values.mean() + np.log(np.abs(np.diagonal(scale_tril))).sum())

    return potential, derivatives, gaussian_elbo


def _badly_scaled():
    scales = np.array([1e3, 1.0, 1e-1])  # posterior sds 1e4 apart, correlation -0.96
    corr = np.array([[1.0, -0.96, 0.3], [-0.96, 1.0, -0.2], [0.3, -0.2, 1.0]])
    return np.array([5e3, -3.0, 0.2]), corr * np.outer(scales, scales)


def test_newton_reaches_a_badly_scaled_mode_and_returns_its_derivatives():
    mean, cov = _badly_scaled()
    potential, derivatives, _ = _gaussian(mean, cov)
    z, grad, hessian = af.newton_map(np.zeros(3), potential, derivatives, max_steps=50)
    np.testing.assert_allclose((z - mean) / np.sqrt(np.diag(cov)), 0.0, atol=1e-3)
    np.testing.assert_allclose(grad, derivatives(z)[0])
    np.testing.assert_allclose(hessian, np.linalg.inv(cov), rtol=1e-9)
    assert af.is_mode(grad, hessian)


def test_newton_escapes_a_saddle_and_is_mode_rejects_one():
    def potential(z):  # a saddle at 0, minima at (0, +-1)
        return float(z[0] ** 2 + (z[1] ** 2 - 1.0) ** 2)

    def derivatives(z):
        grad = np.array([2 * z[0], 4 * z[1] * (z[1] ** 2 - 1.0)])
        hessian = np.diag([2.0, 12 * z[1] ** 2 - 4.0])
        return grad, hessian

    start = np.array([0.5, 1e-3])
    assert not af.is_mode(*derivatives(np.zeros(2)))  # zero gradient, indefinite Hessian
    z, grad, hessian = af.newton_map(start, potential, derivatives, max_steps=100)
    np.testing.assert_allclose(z, [0.0, 1.0], atol=1e-6)
    assert af.is_mode(grad, hessian)


def test_is_mode_needs_a_small_newton_decrement():
    hessian = np.diag([1e6, 1e-6])
    assert af.is_mode(np.array([1e2, 1e-4]), hessian)  # decrement 0.01 + 0.01
    assert not af.is_mode(np.array([0.0, 1e-3]), hessian)  # decrement 1.0
    assert not af.is_mode(None, None)


def test_laplace_scale_tril_is_the_cholesky_factor_of_the_covariance():
    _, cov = _badly_scaled()
    tril = af.laplace_scale_tril(np.linalg.inv(cov), init_scale=0.1)
    np.testing.assert_allclose(np.triu(tril, 1), 0.0)
    np.testing.assert_allclose(tril @ tril.T, cov, rtol=1e-8, atol=1e-12 * cov.max())
    # an indefinite Hessian falls back to a diagonal (init_scale where the curvature is <= 0)
    np.testing.assert_allclose(
        af.laplace_scale_tril(np.diag([4.0, -1.0]), init_scale=0.1), np.diag([0.5, 0.1])
    )


def test_warm_start_picks_the_laplace_approximation_of_a_gaussian():
    mean, cov = _badly_scaled()
    potential, derivatives, elbo = _gaussian(mean, cov)
    loc, tril, name, _ = af.warm_start(
        np.zeros(3), warmup="laplace", init_scale=0.1, max_steps=50,
        potential=potential, derivatives=derivatives, gaussian_elbo=elbo,
    )  # fmt: skip
    assert name == "laplace"
    np.testing.assert_allclose((loc - mean) / np.sqrt(np.diag(cov)), 0.0, atol=1e-3)
    np.testing.assert_allclose(tril @ tril.T, cov, rtol=1e-8, atol=1e-12 * cov.max())
    loc, tril, name, _ = af.warm_start(
        np.zeros(3), warmup="map", init_scale=0.1, max_steps=50,
        potential=potential, derivatives=derivatives, gaussian_elbo=elbo,
    )  # fmt: skip
    assert name == "map" and np.allclose(tril, tril[0, 0] * np.eye(3))
    loc, tril, name, _ = af.warm_start(
        np.ones(3), warmup=None, init_scale=0.1, max_steps=50,
        potential=potential, derivatives=derivatives, gaussian_elbo=elbo,
    )  # fmt: skip
    assert name == "init" and np.allclose(loc, 1.0)


def test_warm_start_without_a_mode_warns_and_keeps_the_start():
    def potential(z):  # log tau -> -inf has an unbounded density (a funnel's neck)
        return float(z[0] + 0.5 * np.exp(-2 * z[0]) * z[1] ** 2)

    def derivatives(z):
        e = np.exp(-2 * z[0])
        grad = np.array([1.0 - e * z[1] ** 2, e * z[1]])
        hessian = np.array([[2 * e * z[1] ** 2, -2 * e * z[1]], [-2 * e * z[1], e]])
        return grad, hessian

    with pytest.warns(UserWarning, match="did not reach a mode"):
        loc, tril, name, _ = af.warm_start(
            np.array([0.0, 0.5]), warmup="laplace", init_scale=0.1, max_steps=200,
            potential=potential, derivatives=derivatives, gaussian_elbo=lambda m, s: 0.0,
        )  # fmt: skip
    assert name == "init"
    np.testing.assert_allclose(loc, [0.0, 0.5])


def test_recipe_kwargs_defaults():
    assert af.recipe_kwargs("iaf", 3, {}) == {
        "transforms": 3, "hidden": (32, 32), "order": "alternate", "bound": 3.0,
    }  # fmt: skip
    assert af.recipe_kwargs("NSF", 20, {"transforms": 5}) == {
        "transforms": 5, "hidden": (80, 80), "order": "alternate", "mode": "coupling",
    }  # fmt: skip
    assert af.recipe_kwargs("nsf", 2, {"mode": "autoregressive"})["mode"] == "autoregressive"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(flow="glow"), ValueError, r"flow must be one of .*'glow'"),
        (dict(flow=3), TypeError, r"callable latent_dim -> Flow, got 3"),
        (dict(warmup="newton"), ValueError, r"warmup must be .*'newton'"),
        (dict(init_scale=0.0), ValueError, r"init_scale must be a number > 0, got 0.0"),
        (dict(init_scale="1"), ValueError, r"init_scale must be a number > 0, got '1'"),
        (dict(base_df=-1.0), ValueError, r"base_df must be None .*, got -1.0"),
        (dict(base_df=float("inf")), ValueError, r"base_df must be .* finite .*, got inf"),
        (dict(base_df=True), ValueError, r"base_df must be .*, got True"),
        (
            dict(base="t"),
            ValueError,
            r"base must be one of \['normal', 'laplace', 'student_t'\], got 't'",
        ),
        (
            dict(base="laplace"),
            ValueError,
            r"base_df .* cannot go with base='laplace', got base_df=5.0",
        ),
        (dict(base="student_t", base_df=None), ValueError, r"base='student_t' needs base_df"),
    ],
)
def test_check_arguments_names_the_argument(kwargs, error, match):
    arguments = dict(flow="iaf", warmup="laplace", init_scale=0.1, base_df=5.0) | kwargs
    with pytest.raises(error, match=match):
        af.check_arguments(**arguments, flow_signature="latent_dim -> Flow")


def test_base_kind_reads_base_and_base_df_together():
    assert af.base_kind("normal", None) == "normal"
    assert af.base_kind("laplace", None) == "laplace"
    assert af.base_kind("normal", 6.0) == "student_t"  # base_df alone: a Student-t base
    assert af.base_kind("student_t", 3) == "student_t"


def test_isotropic_candidates_take_the_scale_with_the_best_elbo():
    potential, derivatives, elbo = _gaussian(np.ones(4), np.eye(4))  # unit scales
    loc, tril, name, _ = af.warm_start(
        np.zeros(4), warmup="map", init_scale=0.1, max_steps=50,
        potential=potential, derivatives=derivatives, gaussian_elbo=elbo,
    )  # fmt: skip
    assert name == "map"
    np.testing.assert_allclose(loc, 1.0, atol=1e-6)
    np.testing.assert_allclose(tril, np.eye(4))  # 0.1 x 10, not 0.1
    # warmup=None keeps init_scale as it is
    _, tril, _, _ = af.warm_start(
        np.zeros(4), warmup=None, init_scale=0.1, max_steps=50,
        potential=potential, derivatives=derivatives, gaussian_elbo=elbo,
    )  # fmt: skip
    np.testing.assert_allclose(tril, 0.1 * np.eye(4))


def test_newton_stops_early_where_the_potential_falls_without_end():
    # a funnel with a flat prior on the log-scale v: x_i ~ Normal(0, exp(v / 2)) and
    # y_i ~ Normal(x_i, 1). As v -> -inf the potential falls like n v / 2: no mode.
    y = np.array([1.0, -0.5, 2.0])
    n, calls = len(y), []

    def potential(z):
        v, x = z[0], z[1:]
        return float(0.5 * np.exp(-v) * x @ x + 0.5 * n * v + 0.5 * (x - y) @ (x - y))

    def derivatives(z):
        calls.append(z)
        v, x = z[0], z[1:]
        a = np.exp(-v)
        grad = np.concatenate([[-0.5 * a * x @ x + 0.5 * n], a * x + (x - y)])
        hessian = np.diag(np.concatenate([[0.5 * a * x @ x], np.full(n, a + 1.0)]))
        hessian[0, 1:] = hessian[1:, 0] = -a * x
        return grad, hessian

    start = np.zeros(n + 1)
    with np.errstate(over="ignore"):  # line-search trials far down the funnel overflow exp
        z, grad, hessian = af.newton_map(start, potential, derivatives, max_steps=500)
    assert potential(z) < potential(start) - 10.0  # it did run down the funnel
    assert z[0] < -20.0
    assert len(calls) < 100  # instead of the whole budget of 500 steps
    assert not af.is_mode(grad, hessian)


def _two_modes(offset: float = 3.0, scale: float = 0.5, left: float = 0.5):
    """An equal-width two-Gaussian mixture at ``(+-offset, 0)`` (weight ``left`` on the left)."""

    def log_density(x):
        x = np.atleast_2d(x)
        parts = [
            np.log(w) - 0.5 * (((x - [c, 0.0]) / scale) ** 2).sum(-1)
            for w, c in ((left, -offset), (1 - left, offset))
        ]
        return np.logaddexp(*parts) - np.log(2 * np.pi * scale**2)

    def potential(z):
        return float(-log_density(z)[0])

    def derivatives(z, h=1e-4):  # central differences: enough for the search
        eye = np.eye(2) * h
        grad = np.array([(potential(z + e) - potential(z - e)) / (2 * h) for e in eye])
        hessian = np.array(
            [[(potential(z + a + b) - potential(z + a - b) - potential(z - a + b)
               + potential(z - a - b)) / (4 * h * h) for b in eye] for a in eye]
        )  # fmt: skip
        return grad, hessian

    def gaussian_elbo(loc, scale_tril, draws=2000):
        eps = np.random.default_rng(0).standard_normal((draws, 2))
        values = log_density(loc + eps @ scale_tril.T)
        return float(values.mean() + np.log(np.abs(np.diagonal(scale_tril))).sum())

    return log_density, potential, derivatives, gaussian_elbo


@pytest.mark.parametrize("left", [0.5, 0.8])
def test_warm_start_finds_both_modes_and_their_masses(left):
    log_density, potential, derivatives, elbo = _two_modes(left=left)
    start = af.warm_start(
        np.zeros(2), warmup="laplace", init_scale=0.1, max_steps=100, potential=potential,
        derivatives=derivatives, gaussian_elbo=elbo, restarts=8,
    )  # fmt: skip
    assert start.name == "modes"
    order = np.argsort(start.mixture.locs[:, 0])
    np.testing.assert_allclose(start.mixture.locs[order], [[-3, 0], [3, 0]], atol=1e-3)
    np.testing.assert_allclose(start.mixture.weights[order], [left, 1 - left], atol=0.03)
    # the moments cover both modes: mean between them, spread across them
    mean = left * -3 + (1 - left) * 3
    np.testing.assert_allclose(start.loc, [mean, 0.0], atol=0.2)
    sd = np.sqrt(0.25 + 9 - mean**2)
    np.testing.assert_allclose(start.scale_tril[0, 0], sd, rtol=0.05)
    # without restarts the search from 0 reaches one mode: the single-mode warm start
    single = af.warm_start(
        np.array([1.0, 0.0]), warmup="laplace", init_scale=0.1, max_steps=100,
        potential=potential, derivatives=derivatives, gaussian_elbo=elbo,
    )  # fmt: skip
    assert single.name == "laplace" and single.mixture is None
    np.testing.assert_allclose(single.loc, [3.0, 0.0], atol=1e-3)


def test_one_basin_is_one_mode_and_a_light_mode_is_left_out():
    _, potential, derivatives, elbo = _two_modes(offset=0.4, scale=0.5)  # one merged hump
    start = af.warm_start(
        np.zeros(2), warmup="laplace", init_scale=0.1, max_steps=100, potential=potential,
        derivatives=derivatives, gaussian_elbo=elbo, restarts=8,
    )  # fmt: skip
    assert start.name in ("laplace", "map") and start.mixture is None
    _, potential, derivatives, elbo = _two_modes(left=0.002)  # under MIN_MODE_WEIGHT
    start = af.warm_start(
        np.zeros(2), warmup="laplace", init_scale=0.1, max_steps=100, potential=potential,
        derivatives=derivatives, gaussian_elbo=elbo, restarts=8,
    )  # fmt: skip
    assert start.mixture is None
    np.testing.assert_allclose(start.loc, [3.0, 0.0], atol=1e-3)


def test_mixture_density_draws_and_moments():
    from scipy.stats import multivariate_normal

    mixture = af.Mixture(
        np.array([0.3, 0.7]),
        np.array([[-2.0, 1.0], [1.0, 0.0]]),
        np.array([[[1.0, 0.0], [0.5, 0.5]], [[0.3, 0.0], [0.0, 2.0]]]),
    )
    x = np.random.default_rng(1).standard_normal((5, 2))
    expected = np.log(
        sum(
            w * multivariate_normal(m, t @ t.T).pdf(x)
            for w, m, t in zip(mixture.weights, mixture.locs, mixture.scale_trils, strict=True)
        )
    )
    np.testing.assert_allclose(mixture.log_prob(x), expected, rtol=1e-10)
    draws = mixture.sample(200_000)
    mean, tril = mixture.moments()
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(np.cov(draws, rowvar=False), tril @ tril.T, atol=0.03)


def test_resample_keeps_the_weighted_mean_and_reports_the_ess():
    draws = np.random.default_rng(2).standard_normal((20_000, 1))
    log_weights = draws[:, 0]  # N(0, 1) reweighted by exp(x): N(1, 1)
    found, ess = af.resample(draws, log_weights)
    np.testing.assert_allclose(found.mean(), 1.0, atol=0.03)
    np.testing.assert_allclose(ess, np.exp(-1.0), atol=0.02)  # 1 / E[w^2] for this shift
    assert af.resample(draws, np.zeros(len(draws)))[1] == pytest.approx(1.0)
    assert af.resample(draws, np.full(len(draws), -np.inf))[1] == 0.0


def test_mode_fit_data_draws_the_posterior_and_its_within_mode_scale():
    log_density, *_ = _two_modes(scale=0.5)
    mixture = af.Mixture(
        np.array([0.5, 0.5]), np.array([[-3.0, 0.0], [3.0, 0.0]]), np.stack([0.3 * np.eye(2)] * 2)
    )
    loc, tril, within, standard, ess = af.mode_fit_data(mixture, log_density)
    assert ess > 0.3
    np.testing.assert_allclose(within @ within.T, 0.25 * np.eye(2), atol=0.03)
    np.testing.assert_allclose(standard.mean(0), 0.0, atol=1e-8)
    np.testing.assert_allclose(np.cov(standard, rowvar=False), np.eye(2), atol=1e-8)
    # the posterior's moments (modes at (+-3, 0), sd 0.5; tolerances about 2.5 standard
    # errors of about 1600 effective draws)
    np.testing.assert_allclose(loc, 0.0, atol=0.15)
    np.testing.assert_allclose(tril @ tril.T, np.diag([9.25, 0.25]), rtol=0.05, atol=0.1)
    assert abs((standard[:, 0] < 0).mean() - 0.5) < 0.03


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8"])
def test_check_restarts_rejects_what_is_not_a_count(bad):
    with pytest.raises(ValueError, match="restarts must be an integer >= 0"):
        af.check_restarts(bad)
