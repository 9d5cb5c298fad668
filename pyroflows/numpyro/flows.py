"""Recipes: ready-made flows with the same names and arguments in both backends (JAX).

Every recipe takes ``features, context=0, transforms, hidden`` and family-specific keyword
arguments after them, and returns a `pyroflows.numpyro.distributions.Flow` whose
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

import jax
from jax import Array
from numpyro.distributions import Distribution

from pyroflows import _checks, _image, structure
from pyroflows._continuous import MAX_STEPS
from pyroflows.numpyro.autoregressive import MaskedAutoregressive
from pyroflows.numpyro.continuous import Continuous
from pyroflows.numpyro.coupling import Coupling, Elementwise
from pyroflows.numpyro.distributions import Flow
from pyroflows.numpyro.image import multi_scale
from pyroflows.numpyro.linear import ActNorm, Scale
from pyroflows.numpyro.nn import _check_key
from pyroflows.numpyro.residual import PlanarLayer, RadialLayer, ResidualBlock, SylvesterLayer
from pyroflows.numpyro.transformers import (
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
    key: Array | None,
) -> list[MaskedAutoregressive]:
    keys = jax.random.split(_check_key(key, "the recipe"), _check_transforms(transforms))
    orders = structure.recipe_orders(features, transforms, order)
    return [
        MaskedAutoregressive(
            features,
            context,
            transformer,
            hidden,
            invert=invert,
            order=layer_order,
            activation=activation,
            key=layer_key,
        )
        for layer_order, layer_key in zip(orders, keys, strict=True)
    ]


def _coupling(
    features: int,
    context: int,
    transforms: int,
    hidden: Sequence[int],
    transformer: Transformer,
    activation: str,
    order: str,
    key: Array | None,
) -> list[Coupling]:
    if features < 2:
        raise ValueError(f"coupling flows need features >= 2, got features={features}")
    keys = jax.random.split(_check_key(key, "the recipe"), _check_transforms(transforms))
    masks = structure.recipe_masks(features, transforms, order)
    return [
        Coupling(features, context, mask, transformer, hidden, activation, key=layer_key)
        for mask, layer_key in zip(masks, keys, strict=True)
    ]


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
    key: Array | None = None,
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
        key: Random key for the initial weights (keyword only, required).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.MAF(features=5, transforms=5, hidden=(64, 64), key=jax.random.key(0))
        >>> flow().log_prob(jnp.zeros((3, 5))).shape
        (3,)
    """
    transformer = AffineTransformer(bound)
    layers = _autoregressive(
        features, context, transforms, hidden, transformer, True, activation, order, key
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
    key: Array | None = None,
) -> Flow:
    """Inverse autoregressive flow (Kingma et al., 2016): one-pass sampling.

    Same layers as `MAF` used in the other direction: sampling is one pass, scoring new
    data takes ``features`` passes per layer. A sample drawn with
    ``sample_with_intermediates`` (as NumPyro's ELBOs draw guide samples) is scored
    without them. Arguments as in `MAF`, except that
    ``bound`` defaults to 3 (the range a guide needs; see the module docstring).

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> d = pfj.IAF(features=4, transforms=3, hidden=(32,), key=jax.random.key(0))()
        >>> x, intermediates = d.sample_with_intermediates(jax.random.key(1), (10,))
        >>> lp = d.log_prob(x, intermediates)  # no sequential pass
    """
    transformer = AffineTransformer(bound)
    layers = _autoregressive(
        features, context, transforms, hidden, transformer, False, activation, order, key
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
    key: Array | None = None,
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
        key: Random key for the initial weights (keyword only, required).

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.NSF(2, transforms=3, bins=8, mode="coupling", key=jax.random.key(0))
    """
    transformer = SplineTransformer(bins, bound)
    if mode == "autoregressive":
        layers = _autoregressive(
            features, context, transforms, hidden, transformer, True, activation, order, key
        )
    elif mode == "coupling":
        layers = _coupling(
            features, context, transforms, hidden, transformer, activation, order, key
        )
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
    key: Array,
    transformer: Transformer | None = None,
) -> Flow:
    """The multi-scale image recipes: ``plan`` as one bijection (affine couplings unless
    ``transformer`` is given)."""
    channels = _image.channels("hidden", hidden)
    transformer = AffineTransformer(bound) if transformer is None else transformer
    model = multi_scale(plan, context, channels, blocks, transformer, activation, key=key)
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
    key: Array | None = None,
) -> Flow:
    """RealNVP (Dinh et al., 2017): affine coupling layers, on vectors or on images.

    Arguments as in the torch recipe `pyroflows.pyro.RealNVP` (vectors: ``features``,
    ``order``, ``bound=1``; images: ``shape=(C, H, W)``, ``levels``, ``hidden`` channels,
    ``blocks``, ``bound=3``, the multi-scale architecture of the paper, ``transformer``),
    and ``key``.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.RealNVP(features=4, transforms=4, key=jax.random.key(0))
        >>> image_flow = pfj.RealNVP(
        ...     shape=(1, 8, 8), levels=2, hidden=16, blocks=1, key=jax.random.key(0)
        ... )
        >>> image_flow().sample(jax.random.key(1), (2,)).shape
        (2, 1, 8, 8)
    """
    if shape is not None:
        if features is not None:
            raise ValueError("give RealNVP either features (vectors) or shape (images), not both")
        bound = 3.0 if bound is None else bound
        plan = _image.realnvp_plan(shape, levels)
        key = _check_key(key, "RealNVP")
        return _image_flow(plan, context, hidden, blocks, bound, activation, base, key, transformer)
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
        key,
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
    key: Array | None = None,
) -> Flow:
    """Glow (Kingma & Dhariwal, 2018): a multi-scale flow on images ``(C, H, W)``.

    Arguments as in the torch recipe `pyroflows.pyro.Glow`, and ``key``: the same layers,
    names and parameter layout.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.Glow((1, 8, 8), levels=2, steps=2, hidden=16, key=jax.random.key(0))
        >>> flow().log_prob(jnp.full((3, 1, 8, 8), 0.5)).shape
        (3,)
    """
    plan = _image.glow_plan(shape, levels, steps)
    key = _check_key(key, "Glow")
    return _image_flow(plan, context, hidden, blocks, bound, activation, base, key, transformer)


def NICE(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 4,
    hidden: Sequence[int] = (64, 64),
    *,
    order: str = "random",
    activation: str = "relu",
    base: Distribution | None = None,
    key: Array | None = None,
) -> Flow:
    """NICE (Dinh et al., 2015): additive coupling layers and a final diagonal scaling.

    Arguments as in `RealNVP` (``order`` sets the masks); needs ``features >= 2``. The
    coupling layers are volume preserving; the diagonal scaling
    (`pyroflows.numpyro.linear.Scale`) carries the whole log-determinant. It is the last
    layer in the data -> base direction, as in the paper, so it comes first in the forward
    (base -> data) order.

    Examples:
        >>> import jax
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.NICE(features=4, transforms=4, key=jax.random.key(0))
    """
    layers = _coupling(
        features, context, transforms, hidden, AdditiveTransformer(), activation, order, key
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
    key: Array | None = None,
) -> Flow:
    """Residual flow: invertible residual blocks with `ActNorm` between them (as
    `pyroflows.pyro.ResidualFlow`; ``key`` keyword only).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.ResidualFlow(2, transforms=2, hidden=(16,), logdet="exact",
        ...                         key=jax.random.key(0))
        >>> flow().log_prob(jnp.zeros((3, 2))).shape
        (3,)
    """
    key = _check_key(key, "ResidualFlow")
    keys = jax.random.split(key, _check_transforms(transforms))
    layers: list = []
    for k in keys:
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
                key=k,
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
    key: Array | None = None,
) -> Flow:
    """FFJORD: ``transforms`` continuous normalizing flows in a row, solved with diffrax (as
    `pyroflows.pyro.FFJORD`; ``key`` keyword only).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.FFJORD(2, hidden=(16,), solver="rk4", steps=8, key=jax.random.key(0))
        >>> flow().log_prob(jnp.zeros((3, 2))).shape
        (3,)
    """
    key = _check_key(key, "FFJORD")
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
            key=k,
        )
        for k in jax.random.split(key, _check_transforms(transforms))
    ]
    return Flow(layers, base)


def Planar(  # noqa: N802
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    *,
    invert: bool = False,
    activation: str = "relu",
    base: Distribution | None = None,
    key: Array | None = None,
) -> Flow:
    """Planar flow: ``transforms`` `PlanarLayer` s (as `pyroflows.pyro.Planar`; ``key``
    keyword only).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.Planar(2, transforms=4, key=jax.random.key(0))
        >>> flow().log_prob(jnp.zeros((3, 2))).shape
        (3,)
    """
    key = _check_key(key, "Planar")
    layers = [
        PlanarLayer(features, context, hidden, activation=activation, invert=invert, key=k)
        for k in jax.random.split(key, _check_transforms(transforms))
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
    key: Array | None = None,
) -> Flow:
    """Radial flow: ``transforms`` `RadialLayer` s (as `pyroflows.pyro.Radial`; ``key``
    keyword only).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.Radial(2, transforms=4, key=jax.random.key(0))
        >>> flow().log_prob(jnp.zeros((3, 2))).shape
        (3,)
    """
    key = _check_key(key, "Radial")
    layers = [
        RadialLayer(features, context, hidden, activation=activation, invert=invert, key=k)
        for k in jax.random.split(key, _check_transforms(transforms))
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
    key: Array | None = None,
) -> Flow:
    """Sylvester flow: ``transforms`` `SylvesterLayer` s (as `pyroflows.pyro.Sylvester`;
    ``key`` keyword only).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import pyroflows.numpyro as pfj
        >>> flow = pfj.Sylvester(3, transforms=2, kind="householder", reflections=2,
        ...                      key=jax.random.key(0))
        >>> flow().log_prob(jnp.zeros((4, 3))).shape
        (4,)
    """
    key = _check_key(key, "Sylvester")
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
            key=k,
        )
        for i, k in enumerate(jax.random.split(key, _check_transforms(transforms)))
    ]
    return Flow(layers, base)


def MixtureCDF(  # noqa: N802
    features: int = 1,
    context: int = 0,
    components: int = 4,
    hidden: Sequence[int] = (64, 64),
    *,
    activation: str = "relu",
    linear: float = 0.0,
    base: Distribution | None = None,
    key: Array | None = None,
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
        key: Random key (keyword only; needed with context).

    Examples:
        >>> import jax.numpy as jnp
        >>> import numpyro.distributions as dist
        >>> import pyroflows.numpyro as pfj
        >>> logistic = dist.Logistic(jnp.zeros(1), jnp.ones(1)).to_event(1)
        >>> flow = pfj.MixtureCDF(1, components=5, base=logistic)
    """
    transformer = LogisticMixtureTransformer(components, linear=linear)
    layer = Elementwise(features, context, transformer, hidden, activation, key=key)
    return Flow([layer], base)
