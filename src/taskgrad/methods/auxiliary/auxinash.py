"""AuxiNash (Shamsian et al., ICML 2023): auxiliary learning as an asymmetric bargaining game."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._common import clip_combination, clone_state, flat_gram
from .._validate import check_choice, check_int, check_real
from ..base import Weighting
from ..errors import UndefinedMethodError
from ..registry import register_method
from ._hyper import MetaParameter, implicit_products

__all__ = ["AuxiNash", "preference_nash_weights"]


def _objective(G: Tensor, a: Tensor, p: Tensor) -> Tensor:
    return 0.5 * torch.einsum("bi,bij,bj->b", a, G, a) - (p * a.log()).sum(-1)


def preference_nash_weights(G: Tensor, p: Tensor, max_iter: int = 100) -> tuple[Tensor, Tensor]:
    """α > 0 with (Gα)ᵢ = pᵢ/αᵢ for preferences p > 0, batched over G (..., k, k); returns (α, ok).

    α is the unique minimizer of the strictly convex ½αᵀGα − Σᵢ pᵢ log αᵢ, found by Newton's
    method (Hessian G + diag(p/α²)) with a fraction-to-boundary rule and Armijo backtracking,
    in float64 on the unit-diagonal D^(-1/2)GD^(-1/2) (D = diag G), until
    max |αᵢ(Gα)ᵢ/pᵢ − 1| ≤ 1e-12 or the Newton decrement vanishes. It exists iff some d has
    ⟨gᵢ, d⟩ > 0 for all i; otherwise the objective is unbounded below and ``ok`` is False.
    """
    Gb, batch = flat_gram(G.double())
    B, k = Gb.shape[0], Gb.shape[-1]
    pb = p.to(Gb).expand(B, k) if p.dim() == 1 else p.to(Gb).reshape(B, k)
    diag = torch.diagonal(Gb, dim1=-2, dim2=-1)
    alive = (diag > 0).all(-1)
    # solve for β = α·√diag G on the unit-diagonal Gn = D^(-1/2) G D^(-1/2): (Gn β)ᵢ = pᵢ/βᵢ is
    # the same equation, and the iteration no longer depends on the scale of each gradient
    r = torch.where(alive.unsqueeze(-1), diag, torch.ones_like(diag)).sqrt()
    Gb = Gb / (r.unsqueeze(-1) * r.unsqueeze(-2))
    a = pb.sqrt()
    ok = torch.zeros(B, dtype=torch.bool, device=Gb.device)
    for _ in range(max_iter):
        Ga = (Gb @ a.unsqueeze(-1)).squeeze(-1)
        grad = Ga - pb / a
        H = Gb + torch.diag_embed(pb / a**2)
        L, info = torch.linalg.cholesky_ex(H)
        step = -torch.cholesky_solve(grad.unsqueeze(-1), L).squeeze(-1)
        slope = (grad * step).sum(-1)  # −(Newton decrement)²
        resid = (a * Ga / pb - 1.0).abs().amax(-1)
        fin = torch.isfinite(a).all(-1) & (info == 0)
        ok = ok | (alive & fin & ((resid <= 1e-12) | (-slope <= 1e-22 * pb.sum(-1))))
        if bool((ok | ~alive).all()):
            break
        step = torch.where(fin.unsqueeze(-1) & ~ok.unsqueeze(-1), step, torch.zeros_like(step))
        slope = torch.where(fin & ~ok, slope, torch.zeros_like(slope))
        neg = step < 0
        ratio = torch.where(
            neg,
            -a / torch.where(neg, step, -torch.ones_like(step)),
            torch.full_like(a, float("inf")),
        )
        t = (0.99 * ratio.amin(-1)).clamp_max(1.0)
        f0 = _objective(Gb, a, pb)
        for _ in range(60):
            f1 = _objective(Gb, a + t.unsqueeze(-1) * step, pb)
            bad = ~(f1 <= f0 + 1e-4 * t * slope + 1e-14 * f0.abs()) & (
                slope < 0
            )  # rounding-level slack
            if not bool(bad.any()):
                break
            t = torch.where(bad, 0.5 * t, t)
        a = a + t.unsqueeze(-1) * step
        if not bool(torch.isfinite(a).all()) or float(a.abs().amax()) > 1e150:
            break
    a = a / r
    return a.reshape(*batch, k), ok.reshape(batch)


@register_method(
    "auxinash",
    description=(
        "AuxiNash: asymmetric Nash bargaining (Gα = p/α) with preferences p learned on the "
        "primary validation loss."
    ),
    paper=(
        "Shamsian, Navon, Glazer, Kawaguchi, Chechik & Fetaya, Auxiliary Learning as an "
        "Asymmetric Bargaining Game, ICML 2023"
    ),
    aliases=("AuxiNash", "auxi-nash", "asymnash"),
    defined="zero-not-in-hull",
    non_conflicting=True,
    permutation_equivariant=True,
    scale_invariant=True,
    stateful=True,
    random=False,
)
class AuxiNash(Weighting):
    """AuxiNash: the asymmetric Nash bargaining solution, with meta-learned bargaining powers.

    Weights: with Ĝ = G/‖G‖_F and preferences p > 0 (Σp = k), α > 0 solves Ĝα = p/α, the
    maximizer of Σᵢ pᵢ log⟨gᵢ, d⟩ on a ball (see :func:`preference_nash_weights`); p = 1 is
    Nash-MTL. As in Nash-MTL, the weights are scaled so that ‖Jᵀα‖ ≤ ``max_norm`` (> 0), and
    recomputed every ``update_weights_every`` calls. With no d having ⟨gᵢ, d⟩ > 0 for all i
    the problem has no solution: ``on_undefined="raise"`` raises :class:`UndefinedMethodError`,
    ``"previous"`` reuses the last α (the authors' code keeps its previous α when the solver
    fails), or uniform weights before any.

    Preference step (:meth:`update`, the authors call it every 25 training steps): the
    implicit-differentiation hypergradient of the primary validation loss V in α (see
    :class:`AuxiLearn`, here with the training objective Σ αᵢLᵢ) is r = −J v; by the implicit
    function theorem on Ĝα − p/α = 0, ∂α/∂p = (Ĝ + diag(p/α²))⁻¹ diag(1/α), so
    ∂V/∂p = rᵀ ∂α/∂p. One SGD step (momentum 0.9, learning rate ``meta_lr``) on it, clipped to
    norm ``max_grad_norm``; then p ← max(p, ``min_preference``) and p ← k·p/Σp (the authors'
    ``set_p``). The authors build ∂α/∂p from the unnormalized G and α of Ĝ; here both use Ĝ.
    State: p and its optimizer, the last α and Ĝ, and the call count.
    """

    def __init__(
        self,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        max_iter: int = 100,
        meta_lr: float = 5e-3,
        momentum: float = 0.9,
        hpo_lr: float = 1e-4,
        terms: int = 3,
        max_grad_norm: float | None = 1.0,
        min_preference: float = 1e-4,
        on_undefined: str = "raise",
    ) -> None:
        self.max_norm = check_real(
            "AuxiNash", "max_norm (0 disables the scaling)", max_norm, low=0.0
        )
        self.update_weights_every = check_int(
            "AuxiNash", "update_weights_every", update_weights_every, low=1
        )
        self.max_iter = check_int("AuxiNash", "max_iter", max_iter, low=1)
        self.meta_lr = check_real("AuxiNash", "meta_lr", meta_lr, low=0.0)
        self.momentum = check_real(
            "AuxiNash", "momentum", momentum, low=0.0, high=1.0, high_open=True
        )
        self.hpo_lr = check_real("AuxiNash", "hpo_lr", hpo_lr, low=0.0)
        self.terms = check_int("AuxiNash", "terms", terms, low=0)
        self.max_grad_norm = (
            None
            if max_grad_norm is None
            else check_real("AuxiNash", "max_grad_norm", max_grad_norm, low=0.0, low_open=True)
        )
        self.min_preference = check_real(
            "AuxiNash", "min_preference", min_preference, low=0.0, low_open=True
        )
        self.on_undefined = check_choice(
            "AuxiNash", "on_undefined", on_undefined, ("raise", "previous")
        )
        self._p = MetaParameter(
            lambda k: torch.ones(k), lambda ps: torch.optim.SGD(ps, lr=meta_lr, momentum=momentum)
        )
        self._alpha: Tensor | None = None
        self._gram: Tensor | None = None
        self._step = 0

    @property
    def preferences(self) -> Tensor | None:
        """The current preferences p (k,), Σp = k, or None before the first call."""
        return self._p.current()

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        k = gram.shape[-1]
        p = self._p.ensure(k).detach()
        if self._step % self.update_weights_every == 0 or self._alpha is None:
            G = gram.double()
            fro = torch.linalg.matrix_norm(G).clamp_min(torch.finfo(G.dtype).tiny)
            Gs = G / fro[..., None, None]
            alpha, ok = preference_nash_weights(Gs, p, self.max_iter)
            if not bool(ok.all()):
                if self.on_undefined == "raise":
                    raise UndefinedMethodError(
                        "AuxiNash is undefined for this Gram matrix: it needs a direction d with "
                        "⟨gᵢ, d⟩ > 0 for every task (no zero gradient, 0 not in the convex hull of "
                        "the gradients). Pass on_undefined='previous' to reuse the last weights, "
                        "or use PrimaryAux / UPGrad."
                    )
                prev = (
                    self._alpha
                    if self._alpha is not None and self._alpha.shape == alpha.shape
                    else torch.ones_like(alpha)
                )
                alpha = torch.where(ok.unsqueeze(-1), alpha, prev.to(alpha))
            self._alpha = alpha
            self._gram = Gs
        self._step += 1
        alpha = self._alpha.to(gram.dtype).to(gram.device)
        if self.max_norm > 0:
            alpha = clip_combination(alpha, gram, self.max_norm)
        return alpha

    def alpha_jacobian(self) -> Tensor:
        """∂α/∂p = (Ĝ + diag(p/α²))⁻¹ diag(1/α) at the last solve, shape (k, k)."""
        if self._alpha is None or self._gram is None or self._alpha.dim() != 1:
            raise RuntimeError(
                "AuxiNash.update needs one unbatched call (w = method(gram=G)) first, for α and Ĝ."
            )
        a, Gs = self._alpha, self._gram
        p = self._p.value.detach().to(a)  # type: ignore[union-attr]
        return torch.linalg.solve(Gs + torch.diag(p / a**2), torch.diag(1.0 / a))

    def hypergradient(
        self,
        params: Sequence[Tensor] | torch.nn.Module,
        train_losses: Callable[[], Tensor],
        val_loss: Callable[[], Tensor],
    ) -> Tensor:
        """∂V/∂p ≈ (−J v)ᵀ ∂α/∂p with v = Σ_{j≤T}(I − ηH)ʲ∇V, H the Hessian of Σ αᵢLᵢ (k,)."""
        dadp = self.alpha_jacobian()
        alpha = self._alpha
        assert alpha is not None
        k = dadp.shape[0]
        r = implicit_products(
            params, train_losses, val_loss, lambda L: alpha.to(L), self.hpo_lr, self.terms, k
        )
        return r @ dadp.to(r)

    def update(
        self,
        params: Sequence[Tensor] | torch.nn.Module,
        train_losses: Callable[[], Tensor],
        val_loss: Callable[[], Tensor],
    ) -> Tensor:
        """One preference step; returns the hypergradient ∂V/∂p (the next solve uses the new p)."""
        hyper = self.hypergradient(params, train_losses, val_loss)
        self._p.step(hyper, self.max_grad_norm)
        with torch.no_grad():
            p = self._p.value
            assert p is not None
            p.clamp_(min=self.min_preference)
            p.mul_(p.shape[0] / p.sum())
        self._alpha = None  # re-solve with the new preferences at the next call
        return hyper

    def reset(self) -> None:
        self._p.reset()
        self._alpha = None
        self._gram = None
        self._step = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "p": self._p.state_dict(),
            "alpha": clone_state(self._alpha),
            "gram": clone_state(self._gram),
            "step": self._step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._p.load_state_dict(state_dict["p"])
        self._alpha = clone_state(state_dict.get("alpha"))
        self._gram = clone_state(state_dict.get("gram"))
        self._step = int(state_dict["step"])
