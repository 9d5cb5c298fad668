"""Package-level contract: import hygiene, public names, and the docstring examples run."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import subprocess
import sys

import pytest

import pyroflows.numpyro as pfj
import pyroflows.pyro as pf


def test_import_pyroflows_imports_neither_torch_nor_jax():
    code = "import sys, pyroflows; print('torch' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_importing_the_backend_patches_nothing():
    code = (
        "import torch, pyro.distributions as d;"
        "before = (torch.distributions.Distribution._validate_args, d.Normal.log_prob,"
        " torch.get_default_dtype());"
        "import pyroflows.pyro;"
        "after = (torch.distributions.Distribution._validate_args, d.Normal.log_prob,"
        " torch.get_default_dtype());"
        "print(before == after)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_importing_the_numpyro_backend_patches_nothing():
    code = (
        "import jax, numpyro.distributions as d;"
        "state = lambda: (jax.config.jax_enable_x64, d.Normal.log_prob,"
        " d.TransformedDistribution.log_prob, d.Distribution._validate_args);"
        "before = state();"
        "import pyroflows.numpyro;"
        "print(before == state())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_both_backends_export_the_same_names():
    torch_only = {"ConditionedBijection"}  # JAX: bijection.transform(context) instead
    # JAX: explicit keys for the residual blocks' estimators, stored power iterations
    jax_only = {"BijectionTransform", "initialize_actnorm", "with_key", "refine_lipschitz"}
    assert set(pf.__all__) - torch_only == set(pfj.__all__) - jax_only


def test_public_names_resolve():
    for name in pf.__all__:
        assert getattr(pf, name) is not None, name
    for recipe in ("NICE", "RealNVP", "NSF", "MAF", "IAF"):
        flow = getattr(pf, recipe)(features=3, transforms=2, hidden=(8,))
        assert isinstance(flow, pf.Flow)
        assert flow.features == 3
    import jax

    for name in pfj.__all__:
        assert getattr(pfj, name) is not None, name
    for recipe in ("NICE", "RealNVP", "NSF", "MAF", "IAF"):
        flow = getattr(pfj, recipe)(features=3, transforms=2, hidden=(8,), key=jax.random.key(0))
        assert isinstance(flow, pfj.Flow)
        assert flow.features == 3


MODULES = sorted(
    info.name
    for backend, prefix in ((pf, "pyroflows.pyro."), (pfj, "pyroflows.numpyro."))
    for info in pkgutil.walk_packages(backend.__path__, prefix=prefix)
    if not info.ispkg
) + ["pyroflows.structure", "pyroflows.pyro", "pyroflows.numpyro"]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring examples failed in {module_name}"
