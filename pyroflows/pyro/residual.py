"""The residual family: invertible residual blocks (Behrmann et al., 2019; Chen et al.,
2019), and planar, radial (Rezende & Mohamed, 2015) and Sylvester (van den Berg et al.,
2018) layers.

A block is the map ``F(z) = z + g(z[, context])`` with ``g`` a `LipschitzMLP` whose
Lipschitz constant stays below ``lipschitz < 1``, so ``F`` is invertible and its inverse is
the limit of the fixed-point iteration ``z <- w - g(z)``. By default ``F`` is the data ->
base direction (`inverse_and_log_det`): ``log_prob`` is one explicit pass and sampling
iterates; ``invert=True`` makes ``F`` the base -> data direction, for guides.

``log |det(I + J_g)|`` is computed as ``logdet`` says, in every mode (train or eval):

* ``"exact"``: from the autodiff Jacobian of ``g`` (``features`` backward passes a row;
  small ``features`` and tests);
* ``"series"``: the power series ``sum_k (-1)^(k+1) tr(J^k) / k`` truncated after ``terms``
  terms (default 5), each trace a Hutchinson estimate with one Gaussian probe per row
  (biased by the truncation; Behrmann et al.);
* ``"unbiased"``: the Russian-roulette estimator of Chen et al.: the first ``terms``
  (default 2) terms always, then each further term with probability ``1/2`` of going on,
  reweighted by the probability of reaching it. Its gradient is the Neumann series
  ``sum_k (-1)^k v^T J^k (dJ) v`` under the same roulette, computed without keeping the
  series in the autograd graph: one vector-Jacobian product is all that is kept (the
  memory-saving backward).

Probes and roulette draws come from torch's global generator. The fixed-point inverse stops
for each row when an iteration moves no element by more than ``atol * (1 + |z|)``; rows that
do not get there in ``max_iter`` iterations raise `ConvergenceError` (never a silent
unconverged answer). Gradients through the inverse are exact (implicit differentiation:
the incoming gradient is solved against ``(I + J_g)^T`` by the same kind of iteration).

Planar, radial and Sylvester layers (`PlanarLayer`, `RadialLayer`, `SylvesterLayer`) are
maps ``z + (rank-limited change)`` with a closed-form log-det and invertibility built into
their parameterisation. Their explicit map is data -> base by default and base -> data with
``invert=True`` (the papers' direction, for guides); the other direction is a safe solve:
closed-form for radial, scalar equations ``x + s tanh(q x + c) = t`` by Newton's method
safeguarded by bisection for planar and Sylvester (`solve_monotone`; Sylvester's system is
triangular and solved by back-substitution), raising `ConvergenceError` for rows that do not
reach ``atol`` in ``max_iter`` iterations. With ``context > 0`` every parameter is the
layer's own value plus the zero-initialised output of an MLP of the context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pyroflows import _checks
from pyroflows._residual import (
    ABOVE_MINUS_ONE_SHIFT,
    LOGDET_MODES,
    ROULETTE_STOP,
    ConvergenceError,
    check_block_options,
    check_solve_options,
    check_sylvester_options,
    convergence_message,
    default_atol,
    layout_size,
    planar_layout,
    radial_layout,
    sylvester_layout,
)
from pyroflows.pyro.core import (
    Bijection,
    broadcast_context,
    raise_unconverged,
    solve_bracketed,
)
from pyroflows.pyro.nn import MLP, LipschitzMLP
from pyroflows.pyro.transformers import softplus

__all__ = [
    "ResidualBlock",
    "PlanarLayer",
    "RadialLayer",
    "SylvesterLayer",
    "ConvergenceError",
    "LOGDET_MODES",
]


def _row_scale(*tensors: Tensor) -> Tensor:
    """The largest magnitude of each row over ``tensors`` (shape ``(..., 1)``)."""
    return torch.cat(tensors, dim=-1).abs().amax(-1, keepdim=True)


class ResidualBlock(Bijection):
    """Invertible residual block ``z + g(z[, context])`` with ``Lip(g) < lipschitz``.

    Args:
        features: Event size.
        context: Context size (the context enters ``g``'s first layer; it does not count
            towards the Lipschitz constraint, which is on the whole first-layer matrix).
        hidden: Hidden widths of ``g``.
        lipschitz: Bound on the spectral norm of each layer of ``g``, in ``(0, 1)``.
        logdet: ``"exact"``, ``"series"`` or ``"unbiased"`` (see the module docstring).
        activation: ``"lipswish"`` (default), ``"elu"`` or ``"tanh"`` (all 1-Lipschitz).
        invert: ``False``: the explicit map is data -> base (one-pass ``log_prob``);
            ``True``: base -> data (one-pass sampling, for guides).
        terms: ``"series"``: number of terms (default 5); ``"unbiased"``: terms always taken
            before the roulette starts (default 2).
        atol: Tolerance of the fixed-point inverse, relative to ``1 +`` the largest
            ``|z|``, ``|w|`` or ``|context|`` of the row (default ``64 * eps`` of the dtype).
        max_iter: Most iterations of the fixed-point inverse (and of the gradient solve).

    Examples:
        >>> import torch
        >>> from pyroflows.pyro.residual import ResidualBlock
        >>> block = ResidualBlock(2, hidden=(16,), logdet="exact")
        >>> z, log_det = block.inverse_and_log_det(torch.randn(5, 2))
        >>> x, _ = block.forward_and_log_det(z)
        >>> z.shape, log_det.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        *,
        lipschitz: float = 0.9,
        logdet: str = "unbiased",
        activation: str = "lipswish",
        invert: bool = False,
        terms: int | None = None,
        atol: float | None = None,
        max_iter: int = 200,
    ) -> None:
        super().__init__(features, context)
        options = check_block_options(lipschitz, logdet, terms, atol, max_iter)
        self.lipschitz, self.logdet, self.terms = options.lipschitz, options.logdet, options.terms
        self.atol, self.max_iter = options.atol, options.max_iter
        self.invert = bool(invert)
        self.net = LipschitzMLP(
            self.features + self.context_features,
            self.features,
            hidden,
            self.lipschitz,
            activation,
        )

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", lipschitz={self.lipschitz}, logdet={self.logdet!r}, invert={self.invert}"
        )

    # --- the residual map g ----------------------------------------------------------------

    def _g(self, weights, z: Tensor, context: Tensor | None) -> Tensor:
        inputs = z if context is None else torch.cat([z, context], dim=-1)
        return self.net.apply(weights, inputs)

    def _explicit(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``z + g(z)`` and ``log|det(I + J_g(z))|``."""
        z, context = broadcast_context(z, context)
        weights = self.net.weights()
        batch = z.shape[:-1]
        flat = z.reshape(-1, self.features)
        c = None if context is None else context.reshape(-1, self.context_features)
        out, log_det = self._g_and_log_det(weights, flat, c)
        return (flat + out).reshape(z.shape), log_det.reshape(batch)

    def _g_and_log_det(self, weights, z: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        if z.shape[0] == 0:
            return torch.zeros_like(z), z.new_zeros(0)
        grad_enabled = torch.is_grad_enabled()
        with torch.enable_grad():
            leaf = z if z.requires_grad else z.detach().requires_grad_(True)
            g = self._g(weights, leaf, c)
            if self.logdet == "exact":
                log_det = self._exact(g, leaf, grad_enabled)
            elif self.logdet == "series":
                log_det = self._series(g, leaf, grad_enabled)
            else:
                log_det = self._unbiased(g, leaf, grad_enabled)
        if not grad_enabled:
            g, log_det = g.detach(), log_det.detach()
        return g, log_det

    def _exact(self, g: Tensor, z: Tensor, keep: bool) -> Tensor:
        rows = [
            torch.autograd.grad(g[:, i].sum(), z, retain_graph=True, create_graph=keep)[0]
            for i in range(self.features)
        ]
        jacobian = torch.stack(rows, dim=1)  # (n, out, in)
        eye = torch.eye(self.features, dtype=z.dtype, device=z.device)
        return torch.linalg.slogdet(eye + jacobian)[1]

    def _series(self, g: Tensor, z: Tensor, keep: bool) -> Tensor:
        probe = torch.randn_like(z)
        w, total = probe, z.new_zeros(z.shape[0])
        for k in range(1, self.terms + 1):
            w = torch.autograd.grad(g, z, w, retain_graph=True, create_graph=keep)[0]
            total = total + (-1) ** (k + 1) / k * (w * probe).sum(-1)
        return total

    def _unbiased(self, g: Tensor, z: Tensor, keep: bool) -> Tensor:
        """The roulette estimate in value, with the Neumann-series gradient."""
        stop = ROULETTE_STOP
        extra = int(torch.empty(()).geometric_(stop).item()) - 1  # further terms, >= 0
        n = self.terms + extra

        def reach(k: int) -> float:  # P(the roulette reaches term k)
            return 1.0 if k <= self.terms else (1 - stop) ** (k - self.terms)

        probe = torch.randn_like(z)
        w = probe
        value = z.new_zeros(z.shape[0])
        neumann = probe.clone()  # sum_k (-1)^k v^T J^k / P(reach k + 1), k = 0 .. n - 1
        for k in range(1, n + 1):
            w = torch.autograd.grad(g, z, w, retain_graph=True)[0].detach()
            value = value + (-1) ** (k + 1) / k * (w * probe).sum(-1) / reach(k)
            if k < n:
                neumann = neumann + (-1) ** k * w / reach(k + 1)
        if not keep:
            return value
        # one vector-Jacobian product in the graph: d/dtheta (r^T J v) = r^T (dJ) v
        surrogate = (torch.autograd.grad(g, z, neumann, create_graph=True)[0] * probe).sum(-1)
        return value + surrogate - surrogate.detach()

    # --- the fixed-point inverse ------------------------------------------------------------

    def _solve(self, w: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``z`` with ``z + g(z) = w``, and ``-log|det(I + J_g(z))|``."""
        w, context = broadcast_context(w, context)
        weights = self.net.weights()
        batch = w.shape[:-1]
        flat = w.reshape(-1, self.features)
        c = None if context is None else context.reshape(-1, self.context_features)
        atol = default_atol(self.atol, torch.finfo(flat.dtype).eps)
        with torch.no_grad():
            z = flat.detach().clone()
            c0 = None if c is None else c.detach()
            w0 = flat.detach()
            done = torch.zeros(flat.shape[0], dtype=torch.bool, device=flat.device)
            step = torch.zeros_like(z)
            # judged at the row's scale: the rounding of g(z, c) scales with |z|, |w|, |c|
            floor = _row_scale(w0) if c0 is None else _row_scale(w0, c0)
            for _ in range(self.max_iter):
                new = w0 - self._g(weights, z, c0)
                step = (new - z).abs()
                z = new
                scale = 1 + torch.maximum(floor, _row_scale(z))
                done = (step <= atol * scale).all(-1)
                if bool(done.all()):
                    break
            if not bool(done.all()):
                raise ConvergenceError(
                    convergence_message(
                        self.max_iter, atol, int((~done).sum()), flat.shape[0], float(step.max())
                    )
                )
        if torch.is_grad_enabled() and (
            flat.requires_grad
            or (c is not None and c.requires_grad)
            or any(p.requires_grad for p in self.parameters())
        ):
            z = self._implicit(weights, z, flat, c, atol)
        _, log_det = self._g_and_log_det(weights, z, c)
        return z.reshape(w.shape), -log_det.reshape(batch)

    def _implicit(self, weights, z: Tensor, w: Tensor, c: Tensor | None, atol: float) -> Tensor:
        """``z`` with the gradient of the fixed point: one step ``w - g(z)`` in the graph,
        whose incoming gradient ``a`` is replaced by ``b = (I + J_g)^-T a``."""
        leaf = z.detach().requires_grad_(True)
        g_leaf = self._g(weights, leaf, None if c is None else c.detach())
        step = w - self._g(weights, z.detach(), c)

        def solve(a: Tensor) -> Tensor:
            b = a
            floor = _row_scale(a)  # judged at the row's scale, as the inverse
            for _ in range(self.max_iter):
                jtb = torch.autograd.grad(g_leaf, leaf, b, retain_graph=True)[0]
                new = a - jtb
                scale = 1 + torch.maximum(floor, _row_scale(new))
                if bool(((new - b).abs() <= atol * scale).all()):
                    return new
                b = new
            raise ConvergenceError(
                f"the gradient solve of ResidualBlock's inverse did not converge in "
                f"max_iter={self.max_iter} iterations"
            )

        if step.requires_grad:
            step.register_hook(solve)
        return step + (z - step).detach()  # the converged value, the step's gradient

    # --- the two directions -----------------------------------------------------------------

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if self.invert:
            return self._explicit(x, context)
        return self._solve(x, context)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if self.invert:
            return self._solve(y, context)
        return self._explicit(y, context)


# --- planar, radial and Sylvester layers ------------------------------------------------------


def above_minus_one(value: Tensor) -> Tensor:
    """``softplus(value + log(e - 1)) - 1``: onto ``(-1, inf)``, ``0`` at ``0``."""
    return softplus(value + ABOVE_MINUS_ONE_SHIFT) - 1


def solve_monotone(
    s: Tensor, q: Tensor, c: Tensor, t: Tensor, atol: float, max_iter: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` with ``x + s * tanh(q * x + c) = t`` elementwise, for ``s * q > -1`` (the left side
    then increases with ``x``, and the root lies in ``[t - |s|, t + |s|]``).

    Newton's method, safeguarded by bisection on that bracket: a Newton step that leaves the
    bracket is replaced by its midpoint. An element is done when its last step moved it by at
    most ``atol * (1 + |x|)``. No gradient; returns ``x``, the done flags and the last steps.
    """
    with torch.no_grad():
        s, q, c, t = torch.broadcast_tensors(s, q, c, t)
        lo, hi = t - s.abs(), t + s.abs()

    def newton_step(x: Tensor) -> tuple[Tensor, Tensor]:
        th = torch.tanh(q * x + c)
        f = x + s * th - t
        return f, f / (1 + s * q * (1 - th * th))

    return solve_bracketed(newton_step, t.detach().clone(), lo, hi, atol, max_iter)


def _upper(matrix: Tensor) -> Tensor:
    """The strict upper triangle of ``matrix`` with ``tanh`` of its diagonal on the diagonal."""
    diagonal = torch.tanh(torch.diagonal(matrix, dim1=-2, dim2=-1))
    return torch.triu(matrix, 1) + torch.diag_embed(diagonal)


def _orthogonalize(matrix: Tensor) -> Tensor:
    """The ``Q`` of the QR decomposition of ``matrix`` ``(..., D, M)``, with its columns'
    signs chosen so that ``R`` has a non-negative diagonal (unique, the same in both backends)."""
    q, r = torch.linalg.qr(matrix)
    sign = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    return q * torch.where(sign == 0, 1.0, sign).unsqueeze(-2)


def _householder(vectors: Tensor) -> Tensor:
    """``H_1 H_2 ... H_K`` for ``vectors`` ``(..., K, D)``, ``H_k = I - 2 v_k v_k^T / |v_k|^2``
    (a zero vector gives ``H_k = I``)."""
    features = vectors.shape[-1]
    norm = vectors.square().sum(-1, keepdim=True).clamp_min(torch.finfo(vectors.dtype).tiny)
    unit = vectors / norm.sqrt()
    eye = torch.eye(features, dtype=vectors.dtype, device=vectors.device)
    q = eye.expand(*vectors.shape[:-2], features, features)
    for k in range(vectors.shape[-2]):
        vk = unit[..., k, :]
        q = q - 2 * (q @ vk.unsqueeze(-1)) * vk.unsqueeze(-2)
    return q


class _ClosedFormLayer(Bijection):
    """Base of the planar, radial and Sylvester layers: an explicit map with a closed-form
    log-det, its inverse by a safe solve, and parameters that a network computes from the
    context (their own values plus the network's zero-initialised output)."""

    owner = "layer"

    def __init__(
        self,
        features: int,
        context: int,
        hidden: Sequence[int],
        activation: str,
        invert: bool,
        atol: float | None,
        max_iter: int,
        layout: dict[str, tuple[int, ...]],
        init: dict[str, Tensor],
    ) -> None:
        super().__init__(features, context)
        self.atol, self.max_iter = check_solve_options(atol, max_iter)
        self.invert = bool(invert)
        self.layout = layout
        self.params = nn.ParameterDict({name: nn.Parameter(init[name]) for name in layout})
        self.conditioner = (
            MLP(self.context_features, layout_size(layout), hidden, activation)
            if self.context_features
            else None
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", invert={self.invert}"

    def _values(self, c: Tensor | None) -> dict[str, Tensor]:
        """The parameters, ``(n, *shape)`` with a context and ``(1, *shape)`` without."""
        if self.conditioner is None:
            return {name: value.unsqueeze(0) for name, value in self.params.items()}
        flat = self.conditioner(c)
        values, start = {}, 0
        for name, shape in self.layout.items():
            size = math.prod(shape)
            values[name] = self.params[name] + flat[:, start : start + size].reshape(-1, *shape)
            start += size
        return values

    def _run(self, value: Tensor, context: Tensor | None, explicit: bool):
        value, context = broadcast_context(value, context)
        flat = value.reshape(-1, self.features)
        if flat.shape[0] == 0:
            return value.clone(), value.new_zeros(value.shape[:-1])
        c = None if context is None else context.reshape(-1, self.context_features)
        p = self._values(c)
        if explicit:
            out, log_det = self._explicit(flat, p)
        else:
            atol = default_atol(self.atol, torch.finfo(flat.dtype).eps)
            out, log_det = self._solve(flat, p, atol)
            log_det = -log_det
        return out.reshape(value.shape), log_det.reshape(value.shape[:-1])

    def _explicit(self, z: Tensor, p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _solve(self, y: Tensor, p: dict[str, Tensor], atol: float) -> tuple[Tensor, Tensor]:
        """``z`` with ``explicit(z) = y`` and the explicit map's log-det at ``z``."""
        raise NotImplementedError

    def forward_and_log_det(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self._run(x, context, explicit=self.invert)

    def inverse_and_log_det(
        self, y: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        return self._run(y, context, explicit=not self.invert)


class PlanarLayer(_ClosedFormLayer):
    """Planar layer (Rezende & Mohamed, 2015): ``z + u_hat * tanh(w^T z + b)``.

    ``u_hat = u + (m(w^T u) - w^T u) w / |w|^2`` with ``m(x) = softplus(x + log(e - 1)) - 1``,
    so ``w^T u_hat = m(w^T u) > -1`` and the layer is invertible; ``u = 0`` (the
    initialisation) is the identity. The inverse solves the scalar equation
    ``a + m(w^T u) tanh(a) = w^T y + b`` for ``a = w^T z + b`` (safeguarded Newton; see
    `solve_monotone`), then ``z = y - u_hat tanh(a)``; a row that does not converge in
    ``max_iter`` iterations raises `ConvergenceError`.

    Args:
        features: Event size.
        context: Context size: ``u``, ``w``, ``b`` are then the layer's own values plus the
            output of an MLP of the context (zero-initialised), the amortized form.
        hidden: Hidden widths of that MLP.
        activation: Its activation.
        invert: ``False``: the explicit map is data -> base (one-pass ``log_prob``);
            ``True``: base -> data (one-pass sampling and scoring of samples, for guides).
        atol: Tolerance of the inverse, relative to ``1 + |a|`` (default ``64 * eps``).
        max_iter: Most iterations of the inverse.

    Examples:
        >>> import torch
        >>> from pyroflows.pyro.residual import PlanarLayer
        >>> layer = PlanarLayer(3)
        >>> z, log_det = layer.inverse_and_log_det(torch.randn(5, 3))
        >>> log_det.shape
        torch.Size([5])
    """

    owner = "PlanarLayer"

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        *,
        activation: str = "relu",
        invert: bool = False,
        atol: float | None = None,
        max_iter: int = 100,
    ) -> None:
        features = _checks.check_int("features", features, 1)
        init = {
            "u": torch.zeros(features),
            "w": torch.randn(features) / math.sqrt(features),
            "b": torch.zeros(1),
        }
        super().__init__(features, context, hidden, activation, invert, atol, max_iter,
                         planar_layout(features), init)  # fmt: skip

    @staticmethod
    def _u_hat(u: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        wu = (w * u).sum(-1, keepdim=True)
        s = above_minus_one(wu)
        norm = w.square().sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
        return u + (s - wu) * w / norm, s

    def _explicit(self, z: Tensor, p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        u_hat, s = self._u_hat(p["u"], p["w"])
        th = torch.tanh((p["w"] * z).sum(-1, keepdim=True) + p["b"])
        return z + u_hat * th, torch.log1p(s * (1 - th * th)).squeeze(-1)

    def _solve(self, y: Tensor, p: dict[str, Tensor], atol: float) -> tuple[Tensor, Tensor]:
        u_hat, s = self._u_hat(p["u"], p["w"])
        t = (p["w"] * y).sum(-1, keepdim=True) + p["b"]
        one, zero = torch.ones_like(s), torch.zeros_like(s)
        a, done, step = solve_monotone(s, one, zero, t, atol, self.max_iter)
        raise_unconverged(done, step, self.max_iter, atol, owner=self.owner)
        # one Newton step in the graph: the exact (implicit) gradient of the root
        th = torch.tanh(a)
        a = a - (a + s * th - t) / (1 + s * (1 - th * th)).detach()
        th = torch.tanh(a)
        return y - u_hat * th, torch.log1p(s * (1 - th * th)).squeeze(-1)


class RadialLayer(_ClosedFormLayer):
    """Radial layer (Rezende & Mohamed, 2015): ``z + beta (z - z0) / (alpha + |z - z0|)``.

    ``alpha = softplus(alpha_raw) > 0`` and ``beta = alpha * m(beta_raw) > -alpha`` (``m`` as
    in `PlanarLayer`), so the layer is invertible; ``beta_raw = 0`` (the initialisation) is
    the identity. The inverse is closed-form: ``r = |z - z0|`` is the positive root of
    ``r^2 + (alpha + beta - rho) r - alpha rho = 0`` with ``rho = |y - z0|`` (taken in the
    form without cancellation).

    Args:
        features: Event size.
        context: Context size (the parameters then come from an MLP of it, as in
            `PlanarLayer`).
        hidden: Hidden widths of that MLP.
        activation: Its activation.
        invert: As in `PlanarLayer`.

    Examples:
        >>> import torch
        >>> from pyroflows.pyro.residual import RadialLayer
        >>> z, log_det = RadialLayer(3).inverse_and_log_det(torch.randn(5, 3))
        >>> log_det.shape
        torch.Size([5])
    """

    owner = "RadialLayer"

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        *,
        activation: str = "relu",
        invert: bool = False,
    ) -> None:
        features = _checks.check_int("features", features, 1)
        init = {"z0": torch.randn(features), "alpha": torch.zeros(1), "beta": torch.zeros(1)}
        super().__init__(features, context, hidden, activation, invert, None, 1,
                         radial_layout(features), init)  # fmt: skip

    def _alpha_beta(self, p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        alpha = softplus(p["alpha"])
        return alpha, alpha * above_minus_one(p["beta"])

    def _log_det(self, alpha: Tensor, beta: Tensor, r: Tensor) -> Tensor:
        h = 1 / (alpha + r)
        log_det = (self.features - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h * h)
        return log_det.squeeze(-1)

    @staticmethod
    def _norm(d: Tensor) -> Tensor:
        return d.square().sum(-1, keepdim=True).clamp_min(torch.finfo(d.dtype).tiny).sqrt()

    def _explicit(self, z: Tensor, p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        alpha, beta = self._alpha_beta(p)
        d = z - p["z0"]
        r = self._norm(d)
        return z + beta * d / (alpha + r), self._log_det(alpha, beta, r)

    def _solve(self, y: Tensor, p: dict[str, Tensor], atol: float) -> tuple[Tensor, Tensor]:
        alpha, beta = self._alpha_beta(p)
        d = y - p["z0"]
        rho = self._norm(d)
        half_b = (alpha + beta - rho) / 2
        root = torch.sqrt(half_b * half_b + alpha * rho)
        # r = -half_b + root, written without cancellation for either sign of half_b
        # (the other branch's denominator guarded: the unused side of a where must not be inf)
        positive = half_b > 0
        safe = torch.where(positive, half_b + root, 1.0)
        r = torch.where(positive, alpha * rho / safe, root - half_b)
        return p["z0"] + d / (1 + beta / (alpha + r)), self._log_det(alpha, beta, r)


class SylvesterLayer(_ClosedFormLayer):
    """Sylvester layer (van den Berg et al., 2018): ``z + Q R tanh(R~ Q^T z + b)``.

    ``Q`` ``(features, M)`` has orthonormal columns and ``R``, ``R~`` ``(M, M)`` are upper
    triangular with diagonals ``tanh`` of their parameters, so ``R_ii R~_ii > -1`` and the
    layer is invertible, with ``log|det| = sum_i log(1 + R_ii R~_ii tanh'(psi_i))``.

    ``kind`` chooses ``Q``:

    * ``"orthogonal"``: the QR orthogonalisation of a ``(features, columns)`` parameter
      ``q`` (signs fixed so that ``R`` of the QR has a non-negative diagonal);
    * ``"householder"``: the product of ``reflections`` Householder reflections (``M =
      features``);
    * ``"triangular"``: the identity, or the reversal permutation with ``reverse=True``
      (recipes alternate the two).

    ``R`` starts at zero, so a fresh layer is the identity. The inverse keeps the component
    of ``y`` orthogonal to ``Q``'s columns and solves ``v + R tanh(R~ v + b) = Q^T y`` for
    ``v = Q^T z`` by back-substitution (the system is upper triangular): ``M`` scalar
    equations, each by the safeguarded Newton solve of `PlanarLayer`, then one Newton step of
    the whole system in the graph for exact gradients. A row that does not converge in
    ``max_iter`` iterations raises `ConvergenceError`.

    Args:
        features: Event size.
        context: Context size (all parameters then come from an MLP of it, the amortized
            Sylvester flows of the paper).
        hidden: Hidden widths of that MLP.
        kind: ``"orthogonal"``, ``"householder"`` or ``"triangular"``.
        columns: ``M`` for ``"orthogonal"`` (default ``features``).
        reflections: Number of reflections for ``"householder"`` (default ``features``).
        reverse: ``"triangular"`` only: ``Q`` reverses the features.
        activation: Activation of the context MLP.
        invert: As in `PlanarLayer`.
        atol: Tolerance of the inverse (default ``64 * eps``).
        max_iter: Most iterations of each scalar solve.

    Examples:
        >>> import torch
        >>> from pyroflows.pyro.residual import SylvesterLayer
        >>> layer = SylvesterLayer(3, kind="householder", reflections=2)
        >>> z, log_det = layer.inverse_and_log_det(torch.randn(5, 3))
        >>> log_det.shape
        torch.Size([5])
    """

    owner = "SylvesterLayer"

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        *,
        kind: str = "orthogonal",
        columns: int | None = None,
        reflections: int | None = None,
        reverse: bool = False,
        activation: str = "relu",
        invert: bool = False,
        atol: float | None = None,
        max_iter: int = 100,
    ) -> None:
        features = _checks.check_int("features", features, 1)
        kind, m, k = check_sylvester_options(features, kind, columns, reflections)
        if reverse and kind != "triangular":
            raise ValueError(f"reverse is for kind='triangular' only, got kind={kind!r}")
        init = {
            "q": torch.randn(features, m),
            "v": torch.randn(k, features),
            "r": torch.zeros(m, m),
            "r_tilde": torch.randn(m, m) / math.sqrt(m),
            "b": torch.zeros(m),
        }
        super().__init__(features, context, hidden, activation, invert, atol, max_iter,
                         sylvester_layout(features, kind, m, k), init)  # fmt: skip
        self.kind, self.columns, self.reverse = kind, m, bool(reverse)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", kind={self.kind!r}, columns={self.columns}"

    def _q(self, p: dict[str, Tensor], like: Tensor) -> Tensor:
        if self.kind == "orthogonal":
            return _orthogonalize(p["q"])
        if self.kind == "householder":
            return _householder(p["v"])
        eye = torch.eye(self.features, dtype=like.dtype, device=like.device)
        return (eye.flip(-1) if self.reverse else eye).unsqueeze(0)

    def _parts(self, p: dict[str, Tensor], like: Tensor):
        return self._q(p, like), _upper(p["r"]), _upper(p["r_tilde"]), p["b"]

    @staticmethod
    def _log_det(r: Tensor, r_tilde: Tensor, th: Tensor) -> Tensor:
        diagonal = torch.diagonal(r, dim1=-2, dim2=-1) * torch.diagonal(r_tilde, dim1=-2, dim2=-1)
        return torch.log1p(diagonal * (1 - th * th)).sum(-1)

    def _explicit(self, z: Tensor, p: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        q, r, r_tilde, b = self._parts(p, z)
        v = (z.unsqueeze(-2) @ q).squeeze(-2)  # Q^T z
        th = torch.tanh((r_tilde @ v.unsqueeze(-1)).squeeze(-1) + b)
        y = z + (q @ (r @ th.unsqueeze(-1))).squeeze(-1)
        return y, self._log_det(r, r_tilde, th)

    def _solve(self, y: Tensor, p: dict[str, Tensor], atol: float) -> tuple[Tensor, Tensor]:
        q, r, r_tilde, b = self._parts(p, y)
        target = (y.unsqueeze(-2) @ q).squeeze(-2)  # Q^T y
        m = self.columns
        cols = torch.arange(m, device=y.device)
        with torch.no_grad():
            rd, rtd, bd, td = r.detach(), r_tilde.detach(), b.detach(), target.detach()
            v = torch.zeros_like(td)
            th = torch.zeros_like(td)
            done = torch.ones_like(td, dtype=torch.bool)
            step = torch.zeros_like(td)
            for i in reversed(range(m)):  # back-substitution: v_i once v_(i+1..) are known
                later = cols > i
                known = (rd[..., i, :] * th * later).sum(-1)
                c = bd[..., i] + (rtd[..., i, :] * v * later).sum(-1)
                s, k = rd[..., i, i], rtd[..., i, i]
                x, ok, last = solve_monotone(s, k, c, td[..., i] - known, atol, self.max_iter)
                here = cols == i
                v = torch.where(here, x.unsqueeze(-1), v)
                th = torch.where(here, torch.tanh(k * x + c).unsqueeze(-1), th)
                done = torch.where(here, ok.unsqueeze(-1), done)
                step = torch.where(here, last.unsqueeze(-1), step)
        raise_unconverged(done, step, self.max_iter, atol, owner=self.owner)
        # one Newton step of the whole (triangular) system in the graph: exact gradients
        th = torch.tanh((r_tilde @ v.unsqueeze(-1)).squeeze(-1) + b)
        residual = v + (r @ th.unsqueeze(-1)).squeeze(-1) - target
        jacobian = (
            torch.eye(m, dtype=y.dtype, device=y.device)
            + (r * (1 - th * th).unsqueeze(-2)) @ r_tilde
        ).detach()
        v = v - torch.linalg.solve_triangular(jacobian, residual.unsqueeze(-1), upper=True).squeeze(
            -1
        )
        th = torch.tanh((r_tilde @ v.unsqueeze(-1)).squeeze(-1) + b)
        z = y - (q @ (r @ th.unsqueeze(-1))).squeeze(-1)
        return z, self._log_det(r, r_tilde, th)
