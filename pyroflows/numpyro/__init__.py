"""pyroflows' JAX + NumPyro backend: the same names, arguments and parameter layout as
`pyroflows.pyro`, with parameters in equinox modules and constructors taking ``key=``.

Examples:
    >>> import jax, jax.numpy as jnp
    >>> import pyroflows.numpyro as pfj
    >>> flow = pfj.MAF(features=2, transforms=3, hidden=(32, 32), key=jax.random.key(0))
    >>> flow().log_prob(jnp.zeros((5, 2))).shape
    (5,)
"""

from pyroflows.numpyro.amortized import AmortizedFlow, AmortizedIAF
from pyroflows.numpyro.autoregressive import MaskedAutoregressive
from pyroflows.numpyro.continuous import Continuous, ODESolveError, flow_matching_loss
from pyroflows.numpyro.core import Bijection, BijectionTransform, Chain, Invert
from pyroflows.numpyro.coupling import Coupling
from pyroflows.numpyro.diagnostics import importance_log_weights, psis_diagnostic, to_inference_data
from pyroflows.numpyro.distributions import Flow, FlowDistribution
from pyroflows.numpyro.flows import (
    FFJORD,
    IAF,
    MAF,
    NICE,
    NSF,
    Planar,
    Radial,
    RealNVP,
    ResidualFlow,
    Sylvester,
)
from pyroflows.numpyro.image import Logit, bits_per_dim, dequantize
from pyroflows.numpyro.infer import AutoFlow
from pyroflows.numpyro.linear import ActNorm, LULinear, Permute, Reverse, Scale
from pyroflows.numpyro.nn import MADE, MLP, refine_lipschitz
from pyroflows.numpyro.params import get_params, set_params
from pyroflows.numpyro.residual import (
    ConvergenceError,
    PlanarLayer,
    RadialLayer,
    ResidualBlock,
    SylvesterLayer,
    with_key,
)
from pyroflows.numpyro.train import fit, initialize_actnorm
from pyroflows.numpyro.transformers import (
    AdditiveTransformer,
    AffineTransformer,
    SplineTransformer,
    Transformer,
)

__all__ = [
    "ActNorm",
    "AmortizedIAF",
    "AmortizedFlow",
    "AutoFlow",
    "AdditiveTransformer",
    "AffineTransformer",
    "Bijection",
    "BijectionTransform",
    "Chain",
    "ConvergenceError",
    "Continuous",
    "Coupling",
    "Flow",
    "FlowDistribution",
    "FFJORD",
    "IAF",
    "Invert",
    "LULinear",
    "Logit",
    "MADE",
    "MAF",
    "MLP",
    "MaskedAutoregressive",
    "NICE",
    "NSF",
    "ODESolveError",
    "Permute",
    "RealNVP",
    "ResidualBlock",
    "ResidualFlow",
    "PlanarLayer",
    "RadialLayer",
    "SylvesterLayer",
    "Planar",
    "Radial",
    "Sylvester",
    "Reverse",
    "Scale",
    "SplineTransformer",
    "Transformer",
    "bits_per_dim",
    "dequantize",
    "fit",
    "flow_matching_loss",
    "get_params",
    "importance_log_weights",
    "initialize_actnorm",
    "psis_diagnostic",
    "refine_lipschitz",
    "set_params",
    "to_inference_data",
    "with_key",
]
