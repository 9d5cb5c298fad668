"""Error messages: each names the offending argument and the shapes or values involved."""

from __future__ import annotations

import numpy as np
import pyro.distributions as dist
import pytest
import torch

import pyroflows.pyro as pf


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is as fast, and immune to CPU oversubscription
    (with other processes on the cores, OpenMP's spinning threads slow small ops 10-50x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def conditional_flow():
    return pf.MAF(3, context=2, transforms=1, hidden=(8,))


def plain_flow():
    return pf.MAF(3, transforms=1, hidden=(8,))


# --------------------------------------------------------------------------- log_prob / context


@pytest.mark.parametrize("shape", [(5, 2), (5, 4), (2,), (2, 3, 1)])
def test_log_prob_wrong_event_size(shape):
    flow = plain_flow()
    shown = ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "")
    pattern = rf"value must have shape \(\.\.\., 3\).*got shape \({shown}\)"
    with pytest.raises(ValueError, match=pattern):
        flow().log_prob(torch.randn(*shape))


def test_log_prob_scalar_value():
    with pytest.raises(ValueError, match=r"value must have shape \(\.\.\., 3\).*got shape \(\)"):
        plain_flow()().log_prob(torch.tensor(1.0))


def test_log_prob_integer_value():
    with pytest.raises(ValueError, match=r"value must be a floating point tensor.*int64"):
        plain_flow()().log_prob(torch.zeros(4, 3, dtype=torch.int64))


def test_wrong_context_size():
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 2\).*\(5, 3\)"):
        conditional_flow()(torch.randn(5, 3))


def test_wrong_context_size_through_condition():
    maf = pf.MaskedAutoregressive(3, context=2, hidden=(8,))
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 2\).*\(4, 1\)"):
        maf.condition(torch.randn(4, 1))


def test_missing_context_for_a_conditional_flow():
    with pytest.raises(ValueError, match=r"context is required.*context=2.*\(\.\.\., 2\)"):
        conditional_flow()()


def test_conditional_bijection_in_pyro_transformed_distribution_without_condition():
    maf = pf.MaskedAutoregressive(3, context=2, hidden=(8,))
    d = dist.TransformedDistribution(dist.Normal(torch.zeros(3), 1.0).to_event(1), [maf])
    with pytest.raises(ValueError, match=r"context of size 2.*condition\(context\)"):
        d.log_prob(torch.randn(4, 3))


def test_context_given_to_an_unconditional_flow():
    with pytest.raises(ValueError, match=r"context was given.*context=0.*\(5, 2\)"):
        plain_flow()(torch.randn(5, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_value_to_log_prob(bad):
    x = torch.randn(5, 3)
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"value holds non-finite.*\(5, 3\)"):
        plain_flow()().log_prob(x)


def test_context_batch_that_does_not_broadcast_against_value():
    flow = conditional_flow()
    # names value and context, and both shapes, in any order
    message = r"(?s)(?=.*value)(?=.*context)(?=.*\(5, 3\))(?=.*\(4, 2\))"
    with pytest.raises(ValueError, match=message):
        flow(torch.randn(4, 2)).log_prob(torch.randn(5, 3))


# --------------------------------------------------------------------------- fit


def test_fit_nan_in_data():
    data = np.random.default_rng(0).standard_normal((20, 3))
    data[[3, 7], 0] = np.nan
    with pytest.raises(ValueError, match=r"data holds non-finite values.*in 2 rows"):
        pf.fit(plain_flow(), data, epochs=1, progress=False)


def test_fit_nan_in_context():
    context = torch.randn(20, 2)
    context[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"context holds non-finite values.*in 1 rows"):
        pf.fit(conditional_flow(), torch.randn(20, 3), context, epochs=1, progress=False)


@pytest.mark.parametrize(
    ("shape", "shown"), [((10,), r"\(10,\)"), ((4, 5, 3), r"\(4, 5, 3\)"), ((10, 2), r"\(10, 2\)")]
)
def test_fit_data_of_wrong_shape(shape, shown):
    with pytest.raises(ValueError, match=rf"data must have shape \(n, 3\), got shape {shown}"):
        pf.fit(plain_flow(), torch.randn(*shape), epochs=1, progress=False)


def test_fit_context_of_wrong_shape():
    with pytest.raises(ValueError, match=r"context must have shape \(n, 2\), got shape \(20, 3\)"):
        pf.fit(conditional_flow(), torch.randn(20, 3), torch.randn(20, 3), progress=False)


def test_fit_context_rows_differ_from_data_rows():
    with pytest.raises(ValueError, match=r"context must have one row per data row.*20.*19"):
        pf.fit(conditional_flow(), torch.randn(20, 3), torch.randn(19, 2), progress=False)


def test_fit_missing_context():
    with pytest.raises(ValueError, match=r"context is required.*context=2"):
        pf.fit(conditional_flow(), torch.randn(20, 3), epochs=1, progress=False)


def test_fit_context_given_to_an_unconditional_flow():
    with pytest.raises(ValueError, match=r"context was given.*context=0"):
        pf.fit(plain_flow(), torch.randn(20, 3), torch.randn(20, 2), epochs=1, progress=False)


def test_fit_validation_data_of_wrong_shape():
    with pytest.raises(ValueError, match=r"validation data must have shape \(n, 3\).*\(5, 2\)"):
        pf.fit(plain_flow(), torch.randn(20, 3), validation=torch.randn(5, 2), progress=False)


@pytest.mark.parametrize("fraction", [1.0, 1.5, -0.1])
def test_fit_bad_validation_fraction(fraction):
    with pytest.raises(ValueError, match=rf"validation must be a fraction in \[0, 1\).*{fraction}"):
        pf.fit(plain_flow(), torch.randn(20, 3), validation=fraction, progress=False)


@pytest.mark.parametrize(("epochs", "batch_size"), [(0, 10), (1, 0)])
def test_fit_bad_epochs_or_batch_size(epochs, batch_size):
    name = "epochs" if epochs < 1 else "batch_size"
    with pytest.raises(ValueError, match=rf"{name} must be a positive int, got 0"):
        pf.fit(plain_flow(), torch.randn(20, 3), epochs=epochs, batch_size=batch_size)


@pytest.mark.parametrize("val_context", [None, torch.randn(4, 2)], ids=["missing", "rows_differ"])
def test_fit_validation_context_is_checked(val_context):
    flow = conditional_flow()
    with pytest.raises(ValueError, match=r"validation context"):
        pf.fit(
            flow,
            torch.randn(20, 3),
            torch.randn(20, 2),
            epochs=1,
            validation=(torch.randn(5, 3), val_context),
            progress=False,
        )


# --------------------------------------------------------------------------- construction


def test_flow_of_bijections_with_different_features():
    with pytest.raises(ValueError, match=r"transforms must share one event size.*\[2, 3\]"):
        pf.Flow([pf.Scale(2), pf.Scale(3)])


def test_chain_of_bijections_with_different_features():
    with pytest.raises(ValueError, match=r"transforms must share one event size.*\[4, 4, 3\]"):
        pf.Chain([pf.Scale(4), pf.Reverse(4), pf.ActNorm(3)])


def test_empty_flow():
    with pytest.raises(ValueError, match=r"transforms must hold at least one bijection"):
        pf.Flow([])


def test_flow_of_non_bijections():
    with pytest.raises(TypeError, match=r"transforms\[1\] must be a pyroflows Bijection.*Linear"):
        pf.Flow([pf.Scale(2), torch.nn.Linear(2, 2)])


def test_base_with_wrong_event_shape():
    base = dist.Normal(torch.zeros(3), 1.0).to_event(1)
    with pytest.raises(
        ValueError, match=r"base must have event_shape \(2,\).*got event_shape \(3,\)"
    ):
        pf.Flow([pf.Scale(2)], base=base)


def test_nsf_bogus_mode():
    with pytest.raises(ValueError, match=r"mode must be 'autoregressive' or 'coupling'.*'bogus'"):
        pf.NSF(3, mode="bogus")


@pytest.mark.parametrize(
    "make",
    [
        lambda: pf.RealNVP(1),
        lambda: pf.NICE(1),
        lambda: pf.NSF(1, mode="coupling"),
    ],
    ids=["RealNVP", "NICE", "NSF-coupling"],
)
def test_coupling_recipe_with_one_feature(make):
    with pytest.raises(ValueError, match=r"features >= 2.*features=1"):
        make()


@pytest.mark.parametrize("bins", [1, 0, -3])
def test_spline_transformer_bad_bins(bins):
    with pytest.raises(ValueError, match=rf"bins must be an int >= 2, got {bins}"):
        pf.SplineTransformer(bins=bins)
    with pytest.raises(ValueError, match=rf"bins must be an int >= 2, got {bins}"):
        pf.NSF(3, bins=bins)


@pytest.mark.parametrize("hidden", [(0,), (8, 0), (-1,), (2.5,)])
@pytest.mark.parametrize("recipe", ["MAF", "RealNVP"])
def test_bad_hidden(recipe, hidden):
    shown = "\\(" + ", ".join(map(str, hidden)) + ",?\\)"
    with pytest.raises(ValueError, match=rf"hidden must be a sequence of positive ints.*{shown}"):
        getattr(pf, recipe)(3, transforms=1, hidden=hidden)


@pytest.mark.parametrize("recipe", ["MAF", "RealNVP", "NSF"])
def test_unknown_activation(recipe):
    with pytest.raises(ValueError, match=r"activation must be one of \[.*'relu'.*\], got 'bogus'"):
        getattr(pf, recipe)(3, transforms=1, hidden=(8,), activation="bogus")


@pytest.mark.parametrize("transforms", [0, -1])
def test_bad_number_of_transforms(transforms):
    with pytest.raises(ValueError, match=rf"transforms must be a positive int, got {transforms}"):
        pf.MAF(3, transforms=transforms)


@pytest.mark.parametrize(("features", "context"), [(0, 0), (3, -1)])
def test_bad_features_or_context(features, context):
    name = "features" if features < 1 else "context"
    with pytest.raises(ValueError, match=rf"{name} must be a .*int, got {min(features, context)}"):
        pf.MaskedAutoregressive(features, context=context)
