"""pyroflows' PyTorch + Pyro backend.

Examples:
    >>> import torch
    >>> import pyroflows.pyro as pf
    >>> flow = pf.MAF(features=2, transforms=3, hidden=(32, 32))
    >>> flow().log_prob(torch.randn(5, 2)).shape
    torch.Size([5])
"""

from pyroflows.pyro.amortized import AmortizedFlow, AmortizedIAF
from pyroflows.pyro.autoregressive import MaskedAutoregressive
from pyroflows.pyro.continuous import Continuous, ODESolveError, flow_matching_loss
from pyroflows.pyro.core import Bijection, Chain, ConditionedBijection, Invert
from pyroflows.pyro.coupling import Coupling, Elementwise, ImageCoupling
from pyroflows.pyro.diagnostics import importance_log_weights, psis_diagnostic, to_inference_data
from pyroflows.pyro.distributions import Flow, FlowDistribution
from pyroflows.pyro.flows import (
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
from pyroflows.pyro.image import (
    FactorOut,
    Logit,
    Reshape,
    Squeeze,
    VariationalDequantizer,
    bits_per_dim,
    dequantize,
    multi_scale,
)
from pyroflows.pyro.infer import AutoFlow
from pyroflows.pyro.linear import ActNorm, Conv1x1, LULinear, Permute, Reverse, Scale
from pyroflows.pyro.nn import MADE, MLP
from pyroflows.pyro.params import get_params, set_params
from pyroflows.pyro.residual import (
    ConvergenceError,
    PlanarLayer,
    RadialLayer,
    ResidualBlock,
    SylvesterLayer,
)
from pyroflows.pyro.train import fit
from pyroflows.pyro.transformers import (
    AdditiveTransformer,
    AffineTransformer,
    LogisticMixtureTransformer,
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
    "LogisticMixtureTransformer",
    "Bijection",
    "Chain",
    "ConditionedBijection",
    "ConvergenceError",
    "Continuous",
    "Conv1x1",
    "Coupling",
    "Elementwise",
    "FactorOut",
    "Flow",
    "FlowDistribution",
    "FFJORD",
    "Glow",
    "IAF",
    "ImageCoupling",
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
    "MixtureCDF",
    "Sylvester",
    "Reshape",
    "Reverse",
    "Scale",
    "Squeeze",
    "SplineTransformer",
    "Transformer",
    "VariationalDequantizer",
    "bits_per_dim",
    "dequantize",
    "fit",
    "flow_matching_loss",
    "get_params",
    "importance_log_weights",
    "multi_scale",
    "psis_diagnostic",
    "set_params",
    "to_inference_data",
]
