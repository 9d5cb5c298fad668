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
from pyroflows.numpyro.coupling import Coupling, Elementwise, ImageCoupling
from pyroflows.numpyro.diagnostics import importance_log_weights, psis_diagnostic, to_inference_data
from pyroflows.numpyro.distributions import Flow, FlowDistribution
from pyroflows.numpyro.flows import (
    FFJORD,
    IAF,
    MAF,
    NICE,
    NSF,
    Glow,
    MixtureCDF,
    Planar,
    Radial,
    RealNVP,
    ResidualFlow,
    Sylvester,
)
from pyroflows.numpyro.image import (
    FactorOut,
    Logit,
    Reshape,
    Squeeze,
    VariationalDequantizer,
    bits_per_dim,
    dequantize,
    multi_scale,
)
from pyroflows.numpyro.infer import AutoFlow
from pyroflows.numpyro.linear import ActNorm, Conv1x1, LULinear, Permute, Reverse, Scale
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
    LogisticMixtureTransformer,
    SplineTransformer,
    Transformer,
)

__all__ = [
    "ActNorm",
    "AdditiveTransformer",
    "AffineTransformer",
    "LogisticMixtureTransformer",
    "AmortizedFlow",
    "AmortizedIAF",
    "AutoFlow",
    "Bijection",
    "BijectionTransform",
    "bits_per_dim",
    "Chain",
    "Continuous",
    "Conv1x1",
    "ConvergenceError",
    "Coupling",
    "Elementwise",
    "dequantize",
    "FactorOut",
    "FFJORD",
    "fit",
    "Flow",
    "flow_matching_loss",
    "FlowDistribution",
    "get_params",
    "Glow",
    "IAF",
    "ImageCoupling",
    "importance_log_weights",
    "initialize_actnorm",
    "Invert",
    "Logit",
    "LULinear",
    "MADE",
    "MAF",
    "MaskedAutoregressive",
    "MLP",
    "multi_scale",
    "NICE",
    "NSF",
    "ODESolveError",
    "Permute",
    "Planar",
    "PlanarLayer",
    "psis_diagnostic",
    "Radial",
    "RadialLayer",
    "RealNVP",
    "refine_lipschitz",
    "Reshape",
    "ResidualBlock",
    "ResidualFlow",
    "Reverse",
    "Scale",
    "set_params",
    "SplineTransformer",
    "Squeeze",
    "MixtureCDF",
    "Sylvester",
    "SylvesterLayer",
    "to_inference_data",
    "Transformer",
    "VariationalDequantizer",
    "with_key",
]
