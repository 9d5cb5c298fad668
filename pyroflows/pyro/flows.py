"""Recipes: ready-made flows with the same names and arguments in both backends.

Every recipe takes ``features, context=0, transforms, hidden`` and family-specific keyword
arguments after them, and returns a `pyroflows.pyro.distributions.Flow` whose
bijections are near the identity at initialisation. Structure (masks, autoregressive
orders) comes from `pyroflows.structure`, so both backends build the same flow.

Choices made here:
    * No separate permutation layers: the feature order lives in the layers themselves (the
      autoregressive order of each MADE, the mask of each coupling layer), set by the
      recipes' ``order`` argument from `pyroflows.structure` with numpy seeds.
    * ``order="random"`` (the default): autoregressive layer ``i`` takes the seeded random
      order ``structure.permutation(features, seed=i)``, reversed where it would repeat the
      previous layer's order (`pyroflows.structure.random_orders`; on two features this is
      the natural / reversed alternation). Coupling layers ``2k`` and ``2k + 1`` take a
      seeded random half of the features and its complement as pass-through features
      (`pyroflows.structure.paired_random_mask`), so every pair of layers transforms every
      feature once and the pairs mix different features. On held-out tabular data this fits
      better than the alternation below (``benchmarks/README.md``, density section).
    * The density recipes MAF and RealNVP bound each layer's log-scale by ``bound=1.0``
      (pyroflows 0.1.0: 3.0). With 3, single layers learn scales so extreme that a held-out
      point outside the training data can get an NLL hundreds of times the typical one; on
      the tabular benchmarks 1.0 gave lower validation and test NLL on every data set
      (``benchmarks/README.md``). Five layers still scale by up to ``e ** 5``; standardise
      the data, or pass a larger ``bound`` for data with a wider dynamic range. `IAF`
      keeps ``bound=3.0``: as a variational guide it maps a standard normal onto a
      posterior whose scale can be far from 1 (a two-layer IAF guide for a posterior
      standard deviation of 0.16 needs more than ``e ** -2``).
    * ``order="alternate"``, the structure of pyroflows 0.1.0's recipes (and of
      ``AutoFlow``'s flows): autoregressive recipes alternate the natural and the reversed
      feature order, coupling recipes the masks ``index % 2 == 0`` and ``index % 2 == 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.distributions import Distribution

from pyroflows import _checks, _image, structure
from pyroflows._continuous import MAX_STEPS
from pyroflows.pyro.autoregressive import MaskedAutoregressive
from pyroflows.pyro.continuous import Continuous
from pyroflows.pyro.coupling import Coupling, Elementwise
from pyroflows.pyro.distributions import Flow
from pyroflows.pyro.image import multi_scale
from pyroflows.pyro.linear import ActNorm, Scale
from pyroflows.pyro.residual import PlanarLayer, RadialLayer, ResidualBlock, SylvesterLayer
from pyroflows.pyro.transformers import (
    AdditiveTransformer,
    AffineTransformer,
    LogisticMixtureTransformer,
    SplineTransformer,
    Transformer,
)

__all__ = [
    "NICE",
    "RealNVP",
    "Glow",
    "NSF",
    "MAF",
    "IAF",
    "ResidualFlow",
    "FFJORD",
    "Planar",
    "Radial",
    "Sylvester",
    "MixtureCDF",
]


def _check_transforms(transforms: int) -> int:
    return _checks.check_int("transforms", transforms, 1)


def _autoregressive(
    features: int,
    context: int,
    transforms: int,
    hidden: Sequence[int],
    transformer: Transformer,
    invert: bool,
    activation: str,
    order: str,
) -> list[MaskedAutoregressive]:
    orders = structure.recipe_orders(features, _check_transforms(transforms), order)
    return [
        MaskedAutoregressive(
            features,
            context,
            transformer,
            hidden,
            invert=invert,
            order=layer_order,
            activation=activation,
        )
        for layer_order in orders
    ]


def _coupling(
    features: int,
    context: int,
    transforms: int,
    hidden: Sequence[int],
    transformer: Transformer,
    activation: str,
    order: str,
) -> list[Coupling]:
    if features < 2:
        raise ValueError(f"coupling flows need features >= 2, got features={features}")
    masks = structure.recipe_masks(features, _check_transforms(transforms), order)
    return [Coupling(features, context, mask, transformer, hidden, activation) for mask in masks]


def MAF(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    bound: float = 1.0,
    order: str = "random",
    activation: str = "relu",
    base: Distribution | None = None,
) -> Flow:
    """Masked autoregressive flow (Papamakarios et al., 2017): one-pass density.

    Args:
        features: Event size.
        context: Context size (0 for an unconditional flow).
        transforms: Number of autoregressive layers.
        hidden: Hidden widths of each MADE.
        bound: Bound on each layer's absolute log-scale (default 1: one layer scales a
            feature by at most ``e``, five layers by ``e ** 5``; pyroflows 0.1.0 and
            ``AutoFlow`` use 3, see the module docstring).
        order: Feature orders of the layers: ``"random"`` (default; a seeded random order
            per layer, `pyroflows.structure.random_orders`) or ``"alternate"`` (natural and
            reversed order in turn, the structure of pyroflows 0.1.0 and of ``AutoFlow``'s
            flows).
        activation: Conditioner activation.
        base: Base distribution (default standard normal).

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> flow = pf.MAF(features=5, context=0, transforms=5, hidden=(64, 64))
        >>> flow().log_prob(torch.randn(3, 5)).shape
        torch.Size([3])
    """
    transformer = AffineTransformer(bound)
    layers = _autoregressive(
        features, context, transforms, hidden, transformer, True, activation, order
    )
    return Flow(layers, base)


def IAF(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    bound: float = 3.0,
    order: str = "random",
    activation: str = "relu",
    base: Distribution | None = None,
) -> Flow:
    """Inverse autoregressive flow (Kingma et al., 2016): one-pass sampling.

    Same layers as `MAF` used in the other direction: sampling (and scoring one's
    own samples, through the cache) is one pass, scoring new data takes ``features``
    passes per layer. Arguments as in `MAF`, except that
    ``bound`` defaults to 3 (the range a guide needs; see the module docstring).

    Examples:
        >>> import pyroflows.pyro as pf
        >>> d = pf.IAF(features=4, transforms=3, hidden=(32,))()
        >>> x = d.rsample((10,))
        >>> lp = d.log_prob(x)  # no sequential pass: scored from the cache
    """
    transformer = AffineTransformer(bound)
    layers = _autoregressive(
        features, context, transforms, hidden, transformer, False, activation, order
    )
    return Flow(layers, base)


def NSF(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    bins: int = 8,
    bound: float = 5.0,
    mode: str = "autoregressive",
    order: str = "random",
    activation: str = "relu",
    base: Distribution | None = None,
) -> Flow:
    """Neural spline flow (Durkan et al., 2019): rational-quadratic spline transformers.

    Args:
        features: Event size.
        context: Context size.
        transforms: Number of layers.
        hidden: Conditioner hidden widths.
        bins: Spline bins.
        bound: The splines act on ``[-bound, bound]``; identity outside.
        mode: ``"autoregressive"`` (MAF-style, one-pass density) or ``"coupling"``
            (one pass both ways).
        order: Layer structure: ``"random"`` (default) or ``"alternate"``. Autoregressive
            mode as in `MAF`; coupling mode as in `RealNVP`.
        activation: Conditioner activation.
        base: Base distribution (default standard normal).

    Examples:
        >>> import pyroflows.pyro as pf
        >>> flow = pf.NSF(features=2, transforms=3, hidden=(32, 32), bins=8, mode="coupling")
    """
    transformer = SplineTransformer(bins, bound)
    if mode == "autoregressive":
        layers = _autoregressive(
            features, context, transforms, hidden, transformer, True, activation, order
        )
    elif mode == "coupling":
        layers = _coupling(features, context, transforms, hidden, transformer, activation, order)
    else:
        raise ValueError(f"mode must be 'autoregressive' or 'coupling', got {mode!r}")
    return Flow(layers, base)


def _image_flow(
    plan: _image.Level,
    context: int,
    hidden: Sequence[int] | int,
    blocks: int,
    bound: float,
    activation: str,
    base: Distribution | None,
    transformer: Transformer | None = None,
) -> Flow:
    """The multi-scale image recipes: ``plan`` as one bijection (affine couplings unless
    ``transformer`` is given)."""
    channels = _image.channels("hidden", hidden)
    transformer = AffineTransformer(bound) if transformer is None else transformer
    model = multi_scale(plan, context, channels, blocks, transformer, activation)
    return Flow([model], base)


def RealNVP(  # noqa: N802
    features: int | None = None,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] | int = (64, 64),
    *,
    bound: float | None = None,
    order: str = "random",
    activation: str = "relu",
    base: Distribution | None = None,
    shape: Sequence[int] | None = None,
    levels: int = 2,
    blocks: int = 2,
    transformer: Transformer | None = None,
) -> Flow:
    """RealNVP (Dinh et al., 2017): affine coupling layers, on vectors or on images.

    On vectors (``features``), arguments as in `MAF`, except ``order``, which here sets the
    masks: ``"random"`` (default; pairs of layers take a seeded random half of the features
    and its complement as pass-through features, `pyroflows.structure.paired_random_mask`)
    or ``"alternate"`` (the even and the odd features pass through in turn, the structure of
    pyroflows 0.1.0 and of ``AutoFlow``'s flows). Needs ``features >= 2``.

    On images (``shape=(C, H, W)`` instead of ``features``), the multi-scale architecture
    of the paper (`pyroflows._image.realnvp_plan`): per level 3 checkerboard couplings, a
    squeeze, 3 channel couplings and half of the channels factored out; the last level has
    4 checkerboard couplings. The couplings' conditioners are conv ResNets
    (`pyroflows.pyro.nn.ConvResNet`) with ``hidden`` channels (an int) and ``blocks``
    residual blocks; their log-scales are bounded by ``bound`` (default 3 on images, 1 on
    vectors). ``transformer`` replaces the affine map of the couplings (vectors and images),
    e.g. by `LogisticMixtureTransformer` for Flow++-style couplings. The flow
    is one bijection over a standard normal of shape ``(C, H, W)``; ``transforms`` and
    ``order`` do not apply. H and W must be multiples of ``2 ** (levels - 1)``.

    Examples:
        >>> import pyroflows.pyro as pf
        >>> flow = pf.RealNVP(features=4, transforms=4, hidden=(64, 64))
        >>> image_flow = pf.RealNVP(shape=(1, 8, 8), levels=2, hidden=16, blocks=1)
        >>> image_flow().sample((2,)).shape
        torch.Size([2, 1, 8, 8])
    """
    if shape is not None:
        if features is not None:
            raise ValueError("give RealNVP either features (vectors) or shape (images), not both")
        bound = 3.0 if bound is None else bound
        plan = _image.realnvp_plan(shape, levels)
        return _image_flow(plan, context, hidden, blocks, bound, activation, base, transformer)
    if features is None:
        raise ValueError("RealNVP needs features (vectors) or shape=(C, H, W) (images)")
    bound = 1.0 if bound is None else bound
    layers = _coupling(
        features,
        context,
        transforms,
        hidden,
        transformer or AffineTransformer(bound),
        activation,
        order,
    )
    return Flow(layers, base)


def Glow(  # noqa: N802
    shape: Sequence[int],
    context: int = 0,
    levels: int = 2,
    steps: int = 4,
    hidden: int = 64,
    *,
    blocks: int = 1,
    bound: float = 3.0,
    activation: str = "relu",
    base: Distribution | None = None,
    transformer: Transformer | None = None,
) -> Flow:
    """Glow (Kingma & Dhariwal, 2018): a multi-scale flow on images ``(C, H, W)``.

    Per level (`pyroflows._image.glow_plan`): a squeeze, ``steps`` steps of `ActNorm`, an
    invertible 1x1 convolution (`Conv1x1`, LU-parameterised) and an affine channel
    coupling, then, on all but the last level, a split: half of the channels is factored
    out, with a learnt prior (an affine map of it conditioned on the other half, a channel
    coupling with a conv conditioner), so that the whole model is one bijection over a
    standard normal of shape ``(C, H, W)``. Conditioners: conv ResNets with ``hidden``
    channels and ``blocks`` residual blocks (the split priors have none); log-scales bounded
    by ``bound``. H and W must be multiples of ``2 ** levels``.

    Args:
        shape: Image shape ``(C, H, W)``.
        context: Context size (a class label as a one-hot vector, say), fed to every
            coupling's conditioner as constant channels.
        levels: Number of scales.
        steps: Steps per level.
        hidden: Hidden channels of the conditioners.
        blocks: Residual blocks of the couplings' conditioners.
        bound: Bound of the couplings' log-scales.
        activation: Activation of the conditioners.
        base: Base distribution of event shape ``shape`` (default standard normal).
        transformer: The couplings' elementwise map instead of the affine one, such as
            `LogisticMixtureTransformer` for Flow++-style couplings (the split priors
            stay affine).

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> flow = pf.Glow((1, 8, 8), levels=2, steps=2, hidden=16)
        >>> flow().log_prob(torch.rand(3, 1, 8, 8)).shape
        torch.Size([3])
    """
    plan = _image.glow_plan(shape, levels, steps)
    return _image_flow(plan, context, hidden, blocks, bound, activation, base, transformer)


def NICE(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 4,
    hidden: Sequence[int] = (64, 64),
    *,
    order: str = "random",
    activation: str = "relu",
    base: Distribution | None = None,
) -> Flow:
    """NICE (Dinh et al., 2015): additive coupling layers and a final diagonal scaling.

    Arguments as in `RealNVP` (``order`` sets the masks); needs ``features >= 2``. The
    coupling layers are volume preserving; the diagonal scaling
    (`pyroflows.pyro.linear.Scale`) carries the whole log-determinant. It is the last
    layer in the data -> base direction, as in the paper, so it comes first in the forward
    (base -> data) order.

    Examples:
        >>> import pyroflows.pyro as pf
        >>> flow = pf.NICE(features=4, transforms=4, hidden=(64, 64))
    """
    layers = _coupling(
        features, context, transforms, hidden, AdditiveTransformer(), activation, order
    )
    return Flow([Scale(features), *layers], base)


def ResidualFlow(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    lipschitz: float = 0.9,
    logdet: str = "unbiased",
    activation: str = "lipswish",
    invert: bool = False,
    base: Distribution | None = None,
) -> Flow:
    """Residual flow (Behrmann et al., 2019; Chen et al., 2019): invertible residual blocks
    with `ActNorm` between them.

    The blocks' explicit direction is data -> base, so ``log_prob`` is one pass (with a
    stochastic log-det for ``logdet="unbiased"`` or ``"series"``) and sampling inverts each
    block by fixed-point iteration. In the data -> base direction an ``ActNorm`` comes before
    every block (data-initialised by `fit` and on the first ``log_prob`` in training mode). For
    exact scores of a flow trained with a stochastic log-det, copy its parameters into an
    ``logdet="exact"`` flow of the same structure with `get_params` / `set_params` (small
    ``features``).

    Args:
        features: Event size.
        context: Context size (0 for an unconditional flow).
        transforms: Number of residual blocks.
        hidden: Hidden widths of each block's network.
        lipschitz: Bound on the spectral norm of each layer of a block, in ``(0, 1)``.
        logdet: ``"unbiased"`` (training default), ``"series"`` or ``"exact"``.
        activation: ``"lipswish"``, ``"elu"`` or ``"tanh"``.
        invert: ``True``: the blocks' explicit direction is base -> data (one-pass sampling
            and scoring of the flow's own samples, for guides; ``log_prob`` of other points
            then inverts each block by fixed-point iteration).
        base: Base distribution (default standard normal).

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> flow = pf.ResidualFlow(2, transforms=2, hidden=(16,), logdet="exact")
        >>> flow().log_prob(torch.randn(3, 2)).shape
        torch.Size([3])
    """
    layers: list = []
    for _ in range(_check_transforms(transforms)):
        # forward (base -> data) order block, ActNorm: data meets an ActNorm first
        layers.append(
            ResidualBlock(
                features,
                context,
                hidden,
                lipschitz=lipschitz,
                logdet=logdet,
                activation=activation,
                invert=invert,
            )
        )
        layers.append(ActNorm(features))
    return Flow(layers, base)


def FFJORD(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 1,
    hidden: Sequence[int] = (64, 64),
    *,
    trace: str = "exact",
    probe: str = "gaussian",
    solver: str = "dopri5",
    steps: int | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    adjoint: bool = False,
    t1: float = 1.0,
    activation: str = "tanh",
    max_steps: int = MAX_STEPS,
    base: Distribution | None = None,
) -> Flow:
    """FFJORD (Grathwohl et al., 2019): ``transforms`` continuous normalizing flows in a row.

    Each is a `Continuous` bijection (the ODE ``dz/dt = f(z, t[, context])`` solved with
    torchdiffeq, the log-det integrated alongside); its options are the recipe's. The
    default ``trace="exact"`` gives exact log-densities (``features`` vector-Jacobian products
    per evaluation); ``trace="hutchinson"`` is FFJORD's unbiased estimate, for larger
    ``features``. Train by maximum likelihood with `pyroflows.pyro.fit` (optionally with the
    RNODE ``kinetic`` / ``jacobian`` penalties) or by flow matching
    (``fit(..., objective="flow_matching")``, one block).

    Args:
        features: Event size.
        context: Context size (0 for an unconditional flow).
        transforms: Number of continuous blocks.
        hidden: Hidden widths of each vector field.
        trace: ``"exact"`` or ``"hutchinson"``.
        probe: Hutchinson probes, ``"gaussian"`` or ``"rademacher"``.
        solver: ``"dopri5"`` or ``"tsit5"`` (adaptive), ``"rk4"`` or ``"euler"`` (fixed-step).
        steps: Steps of a fixed-step solver.
        atol: Absolute tolerance of an adaptive solver.
        rtol: Relative tolerance of an adaptive solver.
        adjoint: Gradients by the adjoint method.
        t1: End time of each block.
        activation: Activation of the vector fields.
        max_steps: Most steps of an adaptive solve.
        base: Base distribution (default standard normal).

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> flow = pf.FFJORD(2, hidden=(16,), solver="rk4", steps=8)
        >>> flow().log_prob(torch.randn(3, 2)).shape
        torch.Size([3])
    """
    layers = [
        Continuous(
            features,
            context,
            hidden,
            trace=trace,
            probe=probe,
            solver=solver,
            steps=steps,
            atol=atol,
            rtol=rtol,
            adjoint=adjoint,
            t1=t1,
            activation=activation,
            max_steps=max_steps,
        )
        for _ in range(_check_transforms(transforms))
    ]
    return Flow(layers, base)


_PLANAR_NOTE = """
    ``invert=False`` (the default, as for every recipe) makes the layers' explicit map the
    data -> base direction: ``log_prob`` of data is one pass and sampling inverts each layer
    (a safe solve that raises `ConvergenceError` rather than return an unconverged point).
    ``invert=True`` is the direction of the papers, for variational guides: sampling and the
    score of the flow's own samples are one pass (`AutoFlow` and `AmortizedFlow` build it).
    With ``context > 0`` each layer's parameters are its own values plus the output of an
    MLP of the context (``hidden``, zero-initialised, so a fresh flow is the identity): the
    amortized flows of van den Berg et al. (2018)."""


def Planar(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    invert: bool = False,
    activation: str = "relu",
    base: Distribution | None = None,
) -> Flow:
    """Planar flow (Rezende & Mohamed, 2015): ``transforms`` `PlanarLayer` s.

    {note}

    Args:
        features: Event size.
        context: Context size (0 for an unconditional flow).
        transforms: Number of layers.
        hidden: Hidden widths of the context MLP of each layer (unused without context).
        invert: Explicit direction base -> data (guides) instead of data -> base.
        activation: Activation of the context MLPs.
        base: Base distribution (default standard normal).

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> flow = pf.Planar(2, transforms=4, invert=True)
        >>> x = flow().rsample((3,))
        >>> flow().log_prob(x).shape
        torch.Size([3])
    """
    layers = [
        PlanarLayer(features, context, hidden, activation=activation, invert=invert)
        for _ in range(_check_transforms(transforms))
    ]
    return Flow(layers, base)


def Radial(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    invert: bool = False,
    activation: str = "relu",
    base: Distribution | None = None,
) -> Flow:
    """Radial flow (Rezende & Mohamed, 2015): ``transforms`` `RadialLayer` s (their inverse
    is closed-form).

    {note}

    Args:
        features: Event size.
        context: Context size (0 for an unconditional flow).
        transforms: Number of layers.
        hidden: Hidden widths of the context MLP of each layer (unused without context).
        invert: Explicit direction base -> data (guides) instead of data -> base.
        activation: Activation of the context MLPs.
        base: Base distribution (default standard normal).

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> pf.Radial(2, transforms=4)().log_prob(torch.randn(3, 2)).shape
        torch.Size([3])
    """
    layers = [
        RadialLayer(features, context, hidden, activation=activation, invert=invert)
        for _ in range(_check_transforms(transforms))
    ]
    return Flow(layers, base)


def Sylvester(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    kind: str = "orthogonal",
    columns: int | None = None,
    reflections: int | None = None,
    invert: bool = False,
    activation: str = "relu",
    base: Distribution | None = None,
) -> Flow:
    """Sylvester flow (van den Berg et al., 2018): ``transforms`` `SylvesterLayer` s.

    ``kind="orthogonal"`` orthogonalises a ``(features, columns)`` matrix per layer,
    ``"householder"`` multiplies ``reflections`` Householder reflections, ``"triangular"``
    alternates the identity and the reversal permutation between layers (layer ``i``
    reverses when ``i`` is odd).

    {note}

    Args:
        features: Event size.
        context: Context size (0 for an unconditional flow).
        transforms: Number of layers.
        hidden: Hidden widths of the context MLP of each layer (unused without context).
        kind: ``"orthogonal"``, ``"householder"`` or ``"triangular"``.
        columns: Columns ``M`` of ``Q`` for ``"orthogonal"`` (default ``features``).
        reflections: Householder reflections per layer (default ``features``).
        invert: Explicit direction base -> data (guides) instead of data -> base.
        activation: Activation of the context MLPs.
        base: Base distribution (default standard normal).

    Examples:
        >>> import torch
        >>> import pyroflows.pyro as pf
        >>> flow = pf.Sylvester(3, transforms=2, kind="householder", reflections=2)
        >>> flow().log_prob(torch.randn(4, 3)).shape
        torch.Size([4])
    """
    layers = [
        SylvesterLayer(
            features,
            context,
            hidden,
            kind=kind,
            columns=columns,
            reflections=reflections,
            reverse=kind == "triangular" and i % 2 == 1,
            activation=activation,
            invert=invert,
        )
        for i in range(_check_transforms(transforms))
    ]
    return Flow(layers, base)


for _recipe in (Planar, Radial, Sylvester):  # one paragraph shared by three docstrings
    if _recipe.__doc__:
        _recipe.__doc__ = _recipe.__doc__.replace("    {note}", _PLANAR_NOTE.strip("\n"))


def MixtureCDF(  # noqa: N802
    features: int = 1,
    context: int = 0,
    components: int = 4,
    hidden: Sequence[int] = (64, 64),
    *,
    activation: str = "relu",
    linear: float = 0.0,
    base: Distribution | None = None,
) -> Flow:
    """The mixture-CDF flow: each feature through the CDF of a mixture of logistics.

    One `Elementwise` layer with a `LogisticMixtureTransformer`, whose explicit direction
    is data -> base: ``z = logit(F(x)) * exp(log_scale) + shift`` per feature, with ``F``
    the mixture's CDF (so ``F(x)`` itself is uniform on ``(0, 1)`` under the model: the 1-D
    flow that course material on flows starts from). ``log_prob`` is one pass; sampling
    solves for ``x`` (the transformer's bisection). With a standard
    logistic ``base`` and zero ``shift`` / ``log_scale`` the density of each feature is
    exactly the mixture of logistics; with the default standard normal base it is the
    normal pushed through the inverse map. The features are independent given the
    context: stack it under other flows, or use the transformer in a coupling
    (`Coupling`, `ImageCoupling`), for dependence.

    Args:
        features: Event size.
        context: Context size (the mixture's parameters then come from an MLP of it).
        components: Number of logistic components.
        hidden: Hidden widths of the MLP (with context only).
        activation: Activation of the MLP.
        linear: The transformer's share of the identity (`LogisticMixtureTransformer`):
            0, the default, keeps the density exactly the mixture; a small positive value
            bounds the slope from below, for a better conditioned sampling (inverse).
        base: Base distribution (default standard normal).

    Examples:
        >>> import torch
        >>> import pyro.distributions as dist
        >>> import pyroflows.pyro as pf
        >>> logistic = dist.Logistic(torch.zeros(1), torch.ones(1)).to_event(1)
        >>> flow = pf.MixtureCDF(1, components=5, base=logistic)
    """
    transformer = LogisticMixtureTransformer(components, linear=linear)
    layer = Elementwise(features, context, transformer, hidden, activation)
    return Flow([layer], base)
