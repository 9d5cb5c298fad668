"""Invertible residual blocks (Behrmann et al., 2019; Chen et al., 2019).

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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from pyroflows._residual import (
    LOGDET_MODES,
    ROULETTE_STOP,
    ConvergenceError,
    check_block_options,
    convergence_message,
    default_atol,
)
from pyroflows.pyro.core import Bijection, broadcast_context
from pyroflows.pyro.nn import LipschitzMLP

__all__ = ["ResidualBlock", "ConvergenceError", "LOGDET_MODES"]


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
        atol: Tolerance of the fixed-point inverse, relative to ``1 + |z|`` (default
            ``64 * eps`` of the dtype).
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
            for _ in range(self.max_iter):
                new = w0 - self._g(weights, z, c0)
                step = (new - z).abs()
                z = new
                done = (step <= atol * (1 + z.abs())).all(-1)
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
            for _ in range(self.max_iter):
                jtb = torch.autograd.grad(g_leaf, leaf, b, retain_graph=True)[0]
                new = a - jtb
                if bool(((new - b).abs() <= atol * (1 + new.abs())).all()):
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
