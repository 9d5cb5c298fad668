"""Error messages of the JAX backend: each names the offending argument and the shapes or
values involved (the twin of ``test_errors_pyro.py``)."""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")
eqx = pytest.importorskip("equinox")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402

import pyroflows.numpyro as pfj  # noqa: E402

KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def conditional_flow():
    return pfj.MAF(3, context=2, transforms=1, hidden=(8,), key=KEY)


@pytest.fixture(scope="module")
def plain_flow():
    return pfj.MAF(3, transforms=1, hidden=(8,), key=KEY)


def normal(*shape):
    return jnp.asarray(np.random.default_rng(0).standard_normal(shape), dtype=jnp.float32)


# --------------------------------------------------------------------------- log_prob / context


@pytest.mark.parametrize("shape", [(5, 2), (5, 4), (2,), (2, 3, 1)])
def test_log_prob_wrong_event_size(plain_flow, shape):
    shown = ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "")
    pattern = rf"value must have shape \(\.\.\., 3\).*got shape \({shown}\)"
    with pytest.raises(ValueError, match=pattern):
        plain_flow().log_prob(normal(*shape))


def test_log_prob_scalar_value(plain_flow):
    with pytest.raises(ValueError, match=r"value must have shape \(\.\.\., 3\).*got shape \(\)"):
        plain_flow().log_prob(jnp.array(1.0))


def test_log_prob_integer_value(plain_flow):
    with pytest.raises(ValueError, match=r"value must be a floating point array.*int32"):
        plain_flow().log_prob(jnp.zeros((4, 3), dtype=jnp.int32))


def test_wrong_event_size_is_caught_under_jit(plain_flow):
    # shapes are static under jit: the same message comes while tracing
    with pytest.raises(ValueError, match=r"value must have shape \(\.\.\., 3\).*\(5, 2\)"):
        jax.jit(lambda fl, x: fl().log_prob(x))(plain_flow, normal(5, 2))


def test_wrong_context_size(conditional_flow):
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 2\).*\(5, 3\)"):
        conditional_flow(normal(5, 3))


def test_wrong_context_size_through_transform():
    maf = pfj.MaskedAutoregressive(3, context=2, hidden=(8,), key=KEY)
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 2\).*\(4, 1\)"):
        maf.transform(normal(4, 1))


def test_missing_context_for_a_conditional_flow(conditional_flow):
    with pytest.raises(ValueError, match=r"context is required.*context=2.*\(\.\.\., 2\)"):
        conditional_flow()


def test_conditional_bijection_as_a_numpyro_transform_without_context():
    maf = pfj.MaskedAutoregressive(3, context=2, hidden=(8,), key=KEY)
    with pytest.raises(ValueError, match=r"context is required.*context=2"):
        dist.TransformedDistribution(dist.Normal(jnp.zeros(3), 1.0).to_event(1), maf.transform())


def test_context_given_to_an_unconditional_flow(plain_flow):
    with pytest.raises(ValueError, match=r"context was given.*context=0.*\(5, 2\)"):
        plain_flow(normal(5, 2))


def test_context_given_to_an_unconditional_bijection():
    with pytest.raises(ValueError, match=r"context was given.*context=0.*\(2,\)"):
        pfj.Scale(3).transform(jnp.zeros(2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_value_to_log_prob(plain_flow, bad):
    x = normal(5, 3).at[2, 1].set(bad)
    with pytest.raises(ValueError, match=r"value holds non-finite.*\(5, 3\)"):
        plain_flow().log_prob(x)


def test_context_batch_that_does_not_broadcast_against_value(conditional_flow):
    # names value and context, and both shapes, in any order
    message = r"(?s)(?=.*value)(?=.*context)(?=.*\(5, 3\))(?=.*\(4, 2\))"
    with pytest.raises(ValueError, match=message):
        conditional_flow(normal(4, 2)).log_prob(normal(5, 3))


def test_context_batch_that_does_not_broadcast_against_the_base():
    base = dist.Normal(jnp.zeros((3, 2)), 1.0).to_event(1)  # batch (3,)
    flow = pfj.Flow([pfj.MaskedAutoregressive(2, context=2, hidden=(8,), key=KEY)], base=base)
    message = r"context of shape \(4, 2\).*does not broadcast.*base's batch shape \(3,\)"
    with pytest.raises(ValueError, match=message):
        flow(normal(4, 2))


def test_bijection_input_and_context_that_do_not_broadcast():
    maf = pfj.MaskedAutoregressive(3, context=2, hidden=(8,), key=KEY)
    message = r"x of shape \(5, 3\) and context of shape \(4, 2\).*do not broadcast"
    with pytest.raises(ValueError, match=message):
        maf.forward_and_log_det(normal(5, 3), normal(4, 2))


# --------------------------------------------------------------------------- fit


def test_fit_nan_in_data(plain_flow):
    data = np.random.default_rng(0).standard_normal((20, 3))
    data[[3, 7], 0] = np.nan
    with pytest.raises(ValueError, match=r"data holds non-finite values.*in 2 rows.*\(20, 3\)"):
        pfj.fit(plain_flow, data, epochs=1, progress=False)


def test_fit_inf_in_context(conditional_flow):
    context = np.zeros((20, 2))
    context[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"context holds non-finite values.*in 1 rows"):
        pfj.fit(conditional_flow, normal(20, 3), context, epochs=1, progress=False)


@pytest.mark.parametrize(
    ("shape", "shown"), [((10,), r"\(10,\)"), ((4, 5, 3), r"\(4, 5, 3\)"), ((10, 2), r"\(10, 2\)")]
)
def test_fit_data_of_wrong_shape(plain_flow, shape, shown):
    with pytest.raises(ValueError, match=rf"data must have shape \(n, 3\), got shape {shown}"):
        pfj.fit(plain_flow, normal(*shape), epochs=1, progress=False)


def test_fit_non_numeric_data(plain_flow):
    with pytest.raises(ValueError, match=r"data must hold numbers, got dtype <U1"):
        pfj.fit(plain_flow, np.full((4, 3), "a"), epochs=1, progress=False)


def test_fit_context_of_wrong_shape(conditional_flow):
    with pytest.raises(ValueError, match=r"context must have shape \(n, 2\), got shape \(20, 3\)"):
        pfj.fit(conditional_flow, normal(20, 3), normal(20, 3), progress=False)


def test_fit_context_rows_differ_from_data_rows(conditional_flow):
    with pytest.raises(ValueError, match=r"context must have one row per data row.*20.*19"):
        pfj.fit(conditional_flow, normal(20, 3), normal(19, 2), progress=False)


def test_fit_missing_context(conditional_flow):
    with pytest.raises(ValueError, match=r"context is required.*context=2.*\(n, 2\)"):
        pfj.fit(conditional_flow, normal(20, 3), epochs=1, progress=False)


def test_fit_context_given_to_an_unconditional_flow(plain_flow):
    with pytest.raises(ValueError, match=r"context was given.*context=0.*\(20, 2\)"):
        pfj.fit(plain_flow, normal(20, 3), normal(20, 2), epochs=1, progress=False)


def test_fit_validation_data_of_wrong_shape(plain_flow):
    with pytest.raises(ValueError, match=r"validation data must have shape \(n, 3\).*\(5, 2\)"):
        pfj.fit(plain_flow, normal(20, 3), validation=normal(5, 2), progress=False)


@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1])
def test_fit_bad_validation_fraction(plain_flow, fraction):
    with pytest.raises(ValueError, match=rf"validation must be a fraction in \[0, 1\).*{fraction}"):
        pfj.fit(plain_flow, normal(20, 3), validation=fraction, progress=False)


def test_fit_validation_tuple_of_the_wrong_length(plain_flow):
    with pytest.raises(ValueError, match=r"\(val_data, val_context\).*length 3"):
        pfj.fit(plain_flow, normal(20, 3), validation=(normal(5, 3), None, None), progress=False)


@pytest.mark.parametrize(("epochs", "batch_size"), [(0, 10), (1, 0)])
def test_fit_bad_epochs_or_batch_size(plain_flow, epochs, batch_size):
    name = "epochs" if epochs < 1 else "batch_size"
    with pytest.raises(ValueError, match=rf"{name} must be a positive int, got 0"):
        pfj.fit(plain_flow, normal(20, 3), epochs=epochs, batch_size=batch_size)


@pytest.mark.parametrize(
    ("val_context", "message"),
    [
        (None, r"validation context is required.*context=2"),
        (np.zeros((4, 2)), r"validation context must have one row per.*\(5, 3\).*\(4, 2\)"),
        (np.zeros((5, 1)), r"validation context must have shape \(n, 2\).*\(5, 1\)"),
    ],
    ids=["missing", "rows_differ", "wrong_size"],
)
def test_fit_validation_context_is_checked(conditional_flow, val_context, message):
    with pytest.raises(ValueError, match=message):
        pfj.fit(
            conditional_flow,
            normal(20, 3),
            normal(20, 2),
            epochs=1,
            validation=(normal(5, 3), val_context),
            progress=False,
        )


def test_fit_validation_context_for_an_unconditional_flow(plain_flow):
    with pytest.raises(ValueError, match=r"validation context was given.*context=0.*\(5, 2\)"):
        pfj.fit(plain_flow, normal(20, 3), validation=(normal(5, 3), normal(5, 2)))


def test_fit_needs_a_flow():
    maf = pfj.MaskedAutoregressive(3, hidden=(8,), key=KEY)
    with pytest.raises(TypeError, match=r"flow must be a pyroflows.numpyro.Flow.*MaskedAutoreg"):
        pfj.fit(maf, normal(20, 3), epochs=1, progress=False)


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("recipe", ["MAF", "IAF", "NSF", "RealNVP", "NICE"])
def test_recipe_without_a_key(recipe):
    with pytest.raises(ValueError, match=r"needs a random key: pass key=jax.random.key"):
        getattr(pfj, recipe)(3, transforms=1, hidden=(8,))


def test_bijection_without_a_key():
    with pytest.raises(ValueError, match=r"MaskedAutoregressive needs a random key"):
        pfj.MaskedAutoregressive(3, hidden=(8,))


def test_key_is_keyword_only():
    with pytest.raises(TypeError):
        pfj.MAF(3, 0, 1, (8,), 3.0, "relu", None, KEY)  # key given positionally


def test_flow_of_bijections_with_different_features():
    with pytest.raises(ValueError, match=r"transforms must share one event size.*\[2, 3\]"):
        pfj.Flow([pfj.Scale(2), pfj.Scale(3)])


def test_chain_of_bijections_with_different_features():
    with pytest.raises(ValueError, match=r"transforms must share one event size.*\[4, 4, 3\]"):
        pfj.Chain([pfj.Scale(4), pfj.Reverse(4), pfj.ActNorm(3)])


def test_chain_of_conditional_bijections_with_different_context_sizes():
    a = pfj.MaskedAutoregressive(2, context=1, hidden=(4,), key=KEY)
    b = pfj.MaskedAutoregressive(2, context=3, hidden=(4,), key=KEY)
    with pytest.raises(ValueError, match=r"must share one context size, got \[1, 3\]"):
        pfj.Flow([a, b])


def test_empty_flow():
    with pytest.raises(ValueError, match=r"transforms must hold at least one bijection"):
        pfj.Flow([])


def test_flow_of_non_bijections():
    with pytest.raises(TypeError, match=r"transforms\[1\] must be a pyroflows Bijection.*Linear"):
        pfj.Flow([pfj.Scale(2), eqx.nn.Linear(2, 2, key=KEY)])


def test_invert_of_a_non_bijection():
    with pytest.raises(TypeError, match=r"bijection must be a pyroflows Bijection.*Linear"):
        pfj.Invert(eqx.nn.Linear(2, 2, key=KEY))


def test_base_with_wrong_event_shape():
    base = dist.Normal(jnp.zeros(3), 1.0).to_event(1)
    with pytest.raises(
        ValueError, match=r"base must have event_shape \(2,\).*got event_shape \(3,\)"
    ):
        pfj.Flow([pfj.Scale(2)], base=base)


def test_base_that_is_not_a_numpyro_distribution():
    with pytest.raises(TypeError, match=r"base must be a NumPyro Distribution, got ndarray"):
        pfj.Flow([pfj.Scale(2)], base=np.zeros(2))


def test_nsf_bogus_mode():
    with pytest.raises(ValueError, match=r"mode must be 'autoregressive' or 'coupling'.*'bogus'"):
        pfj.NSF(3, mode="bogus", key=KEY)


@pytest.mark.parametrize(
    "make",
    [
        lambda: pfj.RealNVP(1, key=KEY),
        lambda: pfj.NICE(1, key=KEY),
        lambda: pfj.NSF(1, mode="coupling", key=KEY),
    ],
    ids=["RealNVP", "NICE", "NSF-coupling"],
)
def test_coupling_recipe_with_one_feature(make):
    with pytest.raises(ValueError, match=r"features >= 2.*features=1"):
        make()


@pytest.mark.parametrize("bins", [1, 0, -3])
def test_spline_transformer_bad_bins(bins):
    with pytest.raises(ValueError, match=rf"bins must be an int >= 2, got {bins}"):
        pfj.SplineTransformer(bins=bins)
    with pytest.raises(ValueError, match=rf"bins must be an int >= 2, got {bins}"):
        pfj.NSF(3, bins=bins, key=KEY)


@pytest.mark.parametrize("bound", [0.0, -1.0])
def test_bad_bound(bound):
    with pytest.raises(ValueError, match=rf"bound must be a finite number > 0, got {bound}"):
        pfj.SplineTransformer(bound=bound)
    with pytest.raises(ValueError, match=rf"bound must be a finite number > 0, got {bound}"):
        pfj.MAF(3, transforms=1, bound=bound, key=KEY)


@pytest.mark.parametrize("hidden", [(0,), (8, 0), (-1,), (2.5,)])
@pytest.mark.parametrize("recipe", ["MAF", "RealNVP"])
def test_bad_hidden(recipe, hidden):
    shown = "\\(" + ", ".join(map(str, hidden)) + ",?\\)"
    with pytest.raises(ValueError, match=rf"hidden must be a sequence of positive ints.*{shown}"):
        getattr(pfj, recipe)(3, transforms=1, hidden=hidden, key=KEY)


@pytest.mark.parametrize("recipe", ["MAF", "RealNVP", "NSF"])
def test_unknown_activation(recipe):
    with pytest.raises(ValueError, match=r"activation must be one of \[.*'relu'.*\], got 'bogus'"):
        getattr(pfj, recipe)(3, transforms=1, hidden=(8,), activation="bogus", key=KEY)


@pytest.mark.parametrize("transforms", [0, -1, 2.0, True])
def test_bad_number_of_transforms(transforms):
    with pytest.raises(ValueError, match=rf"transforms must be a positive int, got {transforms}"):
        pfj.MAF(3, transforms=transforms, key=KEY)


@pytest.mark.parametrize(("features", "context"), [(0, 0), (3, -1), (2.0, 0)])
def test_bad_features_or_context(features, context):
    name, value = ("context", context) if context < 0 else ("features", features)
    with pytest.raises(ValueError, match=rf"{name} must be a .*int, got {value}"):
        pfj.MaskedAutoregressive(features, context=context, key=KEY)


def test_logit_bad_alpha():
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0.0, 0.5\), got 0.5"):
        pfj.Logit(3, alpha=0.5)


def test_dequantize_out_of_range():
    with pytest.raises(ValueError, match=r"x must hold values in 0..16 \(levels=17\).*max 17"):
        pfj.dequantize(KEY, jnp.array([0.0, 17.0]), levels=17)


# --------------------------------------------------------------------------- set_params


def test_set_params_wrong_shape_names_the_key_and_shapes(plain_flow):
    params = pfj.get_params(plain_flow)
    key = "transforms.0.conditioner.layers.0.weight"
    shape = params[key].shape
    params[key] = np.zeros((shape[0] + 1, shape[1]), dtype=np.float32)
    message = rf"{key}.*\({shape[0]}, {shape[1]}\).*\({shape[0] + 1}, {shape[1]}\)"
    with pytest.raises(ValueError, match=message):
        pfj.set_params(plain_flow, params)


def test_set_params_missing_key_names_the_key(plain_flow):
    params = pfj.get_params(plain_flow)
    del params["transforms.0.conditioner.layers.1.bias"]
    with pytest.raises(ValueError, match=r"missing.*transforms\.0\.conditioner\.layers\.1\.bias"):
        pfj.set_params(plain_flow, params)


def test_set_params_unexpected_key_names_the_key(plain_flow):
    params = pfj.get_params(plain_flow)
    params["transforms.7.bogus"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"missing \[\].*unexpected.*transforms\.7\.bogus"):
        pfj.set_params(plain_flow, params)


def test_set_params_lists_at_most_five_names():
    flow = pfj.MAF(3, transforms=3, hidden=(8,), key=KEY)
    with pytest.raises(
        ValueError, match=r"missing \[('[^']+', ){4}'[^']+'\]\.\.\., unexpected \[\]"
    ):
        pfj.set_params(flow, {})


def test_set_params_failure_leaves_the_flow_unchanged(plain_flow):
    before = pfj.get_params(plain_flow)
    params = {k: v + 1 for k, v in before.items()}
    last = list(params)[-1]
    params[last] = np.zeros((1,))
    with pytest.raises(ValueError, match="must have shape"):
        pfj.set_params(plain_flow, params)
    for k, v in pfj.get_params(plain_flow).items():
        np.testing.assert_array_equal(v, before[k])
