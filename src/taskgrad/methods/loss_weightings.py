"""Loss-based weightings: task losses L (..., k) -> weights w (..., k), no Gram matrix needed
(except the gradient-norm based ones, which read only the Gram diagonal σᵢ² = ‖gᵢ‖²).

A scalarization S(L) is applied through its gradient: the weights are wᵢ = ∂S/∂Lᵢ at the current
losses, so ``taskgrad.backward`` (Σ wᵢLᵢ) gives exactly the gradient of S. Stateful methods
advance their state once per call and resume bit-identically from ``state_dict()``.

Methods with learnable parameters (Uncertainty Weighting, IMTL-L, GradNorm, FAMO) update them
inside the call with their own optimizer (SGD or Adam, learning rate ``lr``): the weights of a
call come from the parameters *before* that call's update, as when the parameters and the model
take their optimizer step from the same backward.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ._common import (
    LearnedTaskParameter,
    check_generator,
    check_positive_losses,
    clone_state,
    diag_norms,
    generator_state,
    set_generator_state,
)
from .aggregators import random_softmax_weights
from .base import Weighting

__all__ = [
    "DWA",
    "FAMO",
    "RLW",
    "STCH",
    "GeneralizedMean",
    "GeometricMean",
    "GradNorm",
    "GradientNormalization",
    "IMTLL",
    "InitialLossNormalization",
    "LogSum",
    "PriorLossNormalization",
    "UncertaintyWeighting",
]


class LogSum(Weighting):
    """Σ log Lᵢ: w = 1/Lᵢ (each loss relative to its current value; needs L > 0)."""

    needs = frozenset({"losses"})

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        check_positive_losses("LogSum", losses)
        return 1.0 / losses


class GeometricMean(Weighting):
    """Geometric mean (Πᵢ Lᵢ)^(1/k) (GLS, Chennupati et al. 2019): w = GM/(k Lᵢ); needs L > 0."""

    needs = frozenset({"losses"})

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        check_positive_losses("GeometricMean", losses)
        k = losses.shape[-1]
        gm = torch.exp(torch.log(losses).mean(-1, keepdim=True))
        return gm / (k * losses)


class GeneralizedMean(Weighting):
    """Generalized (power) mean M_γ = ((1/k) Σ Lᵢ^γ)^(1/γ): w = (1/k) Lᵢ^(γ−1) M_γ^(1−γ).

    γ = 1 is the mean, γ = 0 the geometric mean, γ → ∞ the max; needs L > 0.
    """

    needs = frozenset({"losses"})

    def __init__(self, gamma: float = 2.0) -> None:
        if gamma != gamma or abs(gamma) == float("inf"):
            raise ValueError(f"gamma must be a finite number, got {gamma!r}.")
        self.gamma = gamma

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        check_positive_losses("GeneralizedMean", losses)
        k = losses.shape[-1]
        g = self.gamma
        logL = torch.log(losses)
        if g == 0:
            return torch.exp(logL.mean(-1, keepdim=True)) / (k * losses)
        # log M = (1/γ) log mean L^γ, computed with logsumexp for range safety
        logM = (torch.logsumexp(g * logL, -1, keepdim=True) - torch.log(torch.tensor(float(k), dtype=losses.dtype))) / g
        return torch.exp((g - 1.0) * logL + (1.0 - g) * logM) / k


class InitialLossNormalization(Weighting):
    """Normalization by the initial loss: w = 1/Lᵢ(0), the losses of the first call.

    State: L(0). Needs L(0) > 0.
    """

    needs = frozenset({"losses"})

    def __init__(self) -> None:
        self._initial: Tensor | None = None

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        if self._initial is None:
            check_positive_losses("InitialLossNormalization (first call)", losses)
            self._initial = losses.detach().clone()
        elif self._initial.shape != losses.shape:
            raise ValueError(
                f"the losses changed shape from {tuple(self._initial.shape)} to {tuple(losses.shape)}; call reset()."
            )
        return (1.0 / self._initial).to(losses.dtype)

    def reset(self) -> None:
        self._initial = None

    def state_dict(self) -> dict[str, Any]:
        return {"initial": clone_state(self._initial)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._initial = clone_state(state_dict.get("initial"))


class PriorLossNormalization(Weighting):
    """Normalization by a prior loss: w = 1/Lᵢ^prior for a given positive vector, e.g. the
    loss of a trivial predictor (the class prior, the mean target) for each task."""

    needs = frozenset({"losses"})

    def __init__(self, prior: Tensor | list[float]) -> None:
        prior = torch.as_tensor(prior, dtype=torch.float64)
        if prior.dim() != 1 or prior.numel() == 0:
            raise ValueError(f"prior must be a non-empty vector (one loss per task), got shape {tuple(prior.shape)}.")
        if bool((prior <= 0).any()) or not bool(torch.isfinite(prior).all()):
            raise ValueError("prior must hold finite losses > 0 (the weights are their inverses).")
        self.prior = prior

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        if losses.shape[-1] != self.prior.shape[0]:
            raise ValueError(f"prior has {self.prior.shape[0]} tasks but the losses have {losses.shape[-1]}.")
        w = (1.0 / self.prior).to(dtype=losses.dtype, device=losses.device)
        return w.expand(losses.shape).clone()


class GradientNormalization(Weighting):
    """Gradient-norm normalization: w = s/‖gᵢ‖, so d = s Σ gᵢ/‖gᵢ‖ (uses only diag G).

    ``scale="unit"``: s = 1 (a sum of unit vectors); ``scale="mean"``: s = mean_j ‖gⱼ‖, every
    task contributing with the mean gradient norm. Zero gradients get weight 0.
    """

    def __init__(self, scale: Literal["unit", "mean"] = "unit", eps: float = 1e-12) -> None:
        if scale not in ("unit", "mean"):
            raise ValueError(f"scale must be 'unit' or 'mean', got {scale!r}.")
        self.scale = scale
        self.eps = eps

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None
        n = diag_norms(gram)
        dead = n <= self.eps * n.amax(-1, keepdim=True).clamp_min(torch.finfo(n.dtype).tiny)
        inv = torch.where(dead, torch.zeros_like(n), 1.0 / torch.where(dead, torch.ones_like(n), n))
        if self.scale == "mean":
            inv = inv * n.mean(-1, keepdim=True)
        return inv


class _LearnedScale(Weighting):
    """Base of Uncertainty Weighting and IMTL-L: S(L, s) = Σ a(sᵢ)Lᵢ + b(sᵢ); the weights are
    a(s) and s takes one optimizer step on ∂S/∂s = a'(s)L + b'(s) per call."""

    needs = frozenset({"losses"})

    def __init__(self, lr: float, optimizer: Literal["sgd", "adam"], init: float) -> None:
        self.lr = lr
        self.optimizer = optimizer
        self._s = LearnedTaskParameter(init, lr, optimizer)

    def _weights_and_grad(self, s: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    @property
    def log_scale(self) -> Tensor | None:
        """The learned per-task parameter s (None before the first call)."""
        return None if self._s.value is None else self._s.value.detach()

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        s = self._s.get(losses)
        with torch.no_grad():
            w, grad = self._weights_and_grad(s.detach(), losses.to(s.dtype))
        self._s.step(grad)
        return w.to(losses.dtype)

    def reset(self) -> None:
        self._s.reset()

    def state_dict(self) -> dict[str, Any]:
        return {"s": self._s.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._s.load_state_dict(state_dict["s"])


class UncertaintyWeighting(_LearnedScale):
    """Uncertainty Weighting (Kendall et al., 2018): S = Σ ½e^(−sᵢ)Lᵢ + ½sᵢ, s = log σ².

    w = ½e^(−s); s is learned: each call takes one step of its own optimizer on
    ∂S/∂sᵢ = ½ − ½e^(−sᵢ)Lᵢ (init s = 0, uniform weights ½).
    """

    def __init__(self, lr: float = 1e-3, optimizer: Literal["sgd", "adam"] = "adam", init: float = 0.0) -> None:
        super().__init__(lr, optimizer, init)

    def _weights_and_grad(self, s: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        w = 0.5 * torch.exp(-s)
        return w, 0.5 - w * losses


class IMTLL(_LearnedScale):
    """IMTL-L (Liu et al., 2021): S = Σ e^(sᵢ)Lᵢ − sᵢ, so w = e^s; s is learned with its own
    optimizer on ∂S/∂sᵢ = e^(sᵢ)Lᵢ − 1 (init s = 0: the plain sum)."""

    def __init__(self, lr: float = 1e-3, optimizer: Literal["sgd", "adam"] = "adam", init: float = 0.0) -> None:
        super().__init__(lr, optimizer, init)

    def _weights_and_grad(self, s: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        w = torch.exp(s)
        return w, w * losses - 1.0


class DWA(Weighting):
    """Dynamic Weight Average (Liu et al., 2019): w = K softmax(r/T), rᵢ = L̄ᵢ(e−1)/L̄ᵢ(e−2).

    L̄(e) is the mean loss over epoch e. Each call uses the two last completed epochs (uniform
    weights 1 until two exist), then adds its losses to the current epoch. An epoch closes
    every ``steps_per_epoch`` calls (default 1: per-step DWA), or, with
    ``steps_per_epoch=None``, when :meth:`end_epoch` is called. State: the sums and history.
    """

    needs = frozenset({"losses"})

    def __init__(self, temperature: float = 2.0, steps_per_epoch: int | None = 1) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be a positive int or None, got {steps_per_epoch!r}.")
        self.temperature = temperature
        self.steps_per_epoch = steps_per_epoch
        self.reset()

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        k = losses.shape[-1]
        if len(self._history) < 2:
            w = torch.ones_like(losses)
        else:
            older, newer = self._history
            if older.shape != losses.shape:
                raise ValueError(f"the losses changed shape from {tuple(older.shape)} to {tuple(losses.shape)}; call reset().")
            w = k * torch.softmax((newer / older).to(losses.dtype) / self.temperature, dim=-1)
        Ld = losses.detach()
        self._sum = Ld.clone() if self._sum is None else self._sum + Ld
        self._n += 1
        if self.steps_per_epoch is not None and self._n >= self.steps_per_epoch:
            self.end_epoch()
        return w

    def end_epoch(self) -> None:
        """Close the current epoch: its mean loss enters the history (keeps the last two)."""
        if self._sum is None:
            return
        self._history = [*self._history, self._sum / self._n][-2:]
        self._sum = None
        self._n = 0

    def reset(self) -> None:
        self._sum: Tensor | None = None
        self._n = 0
        self._history: list[Tensor] = []

    def state_dict(self) -> dict[str, Any]:
        return {"sum": clone_state(self._sum), "n": self._n, "history": clone_state(self._history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._sum = clone_state(state_dict["sum"])
        self._n = int(state_dict["n"])
        self._history = clone_state(list(state_dict["history"]))


class RLW(Weighting):
    """Random Loss Weighting (Lin et al., 2022, Algorithm 1): w = softmax(z), z ~ N(0, I),
    drawn afresh each call from ``generator`` (torch's global RNG when None)."""

    needs = frozenset({"losses"})

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = check_generator(generator)

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        return random_softmax_weights(tuple(losses.shape), losses, self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": generator_state(self.generator)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_generator_state(self.generator, state_dict.get("generator"))


class STCH(Weighting):
    """Smooth Tchebycheff scalarization (Lin et al., 2024): S = μ log Σ exp(λᵢ(Lᵢ − zᵢ)/μ).

    w = λ ⊙ softmax(λ ⊙ (L − z)/μ): a smooth max of the weighted losses (→ max as μ → 0).
    λ defaults to 1/k, the ideal point z to 0.
    """

    needs = frozenset({"losses"})

    def __init__(self, mu: float = 1.0, pref_vector: Tensor | None = None, reference: Tensor | None = None) -> None:
        if not mu > 0:
            raise ValueError(f"mu must be > 0, got {mu!r}.")
        self.mu = mu
        self.pref_vector = pref_vector
        self.reference = reference

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        k = losses.shape[-1]
        lam = torch.full((k,), 1.0 / k, dtype=losses.dtype, device=losses.device)
        if self.pref_vector is not None:
            lam = self.pref_vector.to(dtype=losses.dtype, device=losses.device)
        z = 0.0 if self.reference is None else self.reference.to(dtype=losses.dtype, device=losses.device)
        for name, v in (("pref_vector", self.pref_vector), ("reference", self.reference)):
            if v is not None and v.shape[-1] != k:
                raise ValueError(f"{name} has {v.shape[-1]} entries but there are {k} tasks.")
        return lam * torch.softmax(lam * (losses - z) / self.mu, dim=-1)


class GradNorm(Weighting):
    """GradNorm (Chen et al., 2018, Algorithm 1), with the gradient norms from the Gram diagonal.

    Weights wᵢ (init 1) are learned: with Gᵢ = wᵢ‖gᵢ‖, Ḡ = mean Gᵢ, L̃ᵢ = Lᵢ/Lᵢ(0),
    rᵢ = L̃ᵢ/mean L̃ and the target Ḡ rᵢ^α held constant, each call takes one step of its own
    optimizer on ∂/∂wᵢ Σ|Gᵢ − Ḡ rᵢ^α| = sign(Gᵢ − Ḡrᵢ^α)‖gᵢ‖, clamps w ≥ 0 and renormalizes
    Σw = k. The call returns the weights before its update. ‖gᵢ‖ is taken on whatever the Gram
    matrix is built from (the paper uses the last shared layer: pass those parameters, or the
    shared features, to ``taskgrad.backward``). State: w, the optimizer state and L(0).
    """

    needs = frozenset({"gram", "losses"})

    def __init__(self, alpha: float = 1.5, lr: float = 0.025, optimizer: Literal["sgd", "adam"] = "adam") -> None:
        self.alpha = alpha
        self.lr = lr
        self.optimizer = optimizer
        self._w = LearnedTaskParameter(1.0, lr, optimizer)
        self._initial: Tensor | None = None

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert gram is not None and losses is not None
        L = losses.detach()
        if self._initial is None:
            check_positive_losses("GradNorm (first call)", L)
            self._initial = L.clone()
        w_param = self._w.get(L)
        with torch.no_grad():
            w = w_param.detach().clone()
            sig = diag_norms(gram).to(w.dtype)
            Gi = w * sig
            Lt = (L / self._initial).to(w.dtype)
            r = Lt / Lt.mean(-1, keepdim=True)
            target = Gi.mean(-1, keepdim=True) * r.pow(self.alpha)
            grad = torch.sign(Gi - target) * sig
        self._w.step(grad)
        with torch.no_grad():
            v = w_param.clamp_min(0.0)
            total = v.sum(-1, keepdim=True)
            k = v.shape[-1]
            v = torch.where(total > 0, k * v / total.clamp_min(torch.finfo(v.dtype).tiny), torch.ones_like(v))
            w_param.copy_(v)
        return w.to(losses.dtype)

    @property
    def weights(self) -> Tensor | None:
        """The weights the next call will return (None before the first call)."""
        return None if self._w.value is None else self._w.value.detach()

    def reset(self) -> None:
        self._w.reset()
        self._initial = None

    def state_dict(self) -> dict[str, Any]:
        return {"w": self._w.state_dict(), "initial": clone_state(self._initial)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._w.load_state_dict(state_dict["w"])
        self._initial = clone_state(state_dict.get("initial"))


class FAMO(Weighting):
    """FAMO (Liu et al., 2023): fast adaptive multitask optimization from the losses alone.

    Logits ξ (init 0), z = softmax(ξ): the update is the gradient of c Σ zᵢ log(Lᵢ − bᵢ + ε)
    with c = (Σ zⱼ/(Lⱼ − bⱼ + ε))⁻¹ held constant, i.e. w = c z/(L − b + ε) (Σ-convex combination
    of the gradients of log-losses). ξ is learned by its own Adam (lr, weight_decay): with
    δ = log(L_before − b + ε) − log(L_after − b + ε), one step on the gradient (∂z/∂ξ)ᵀδ.

    "After" losses: the paper recomputes the losses on the same batch after the model step and
    calls :meth:`update` with them. Without that extra forward, the next call's losses stand
    in (``update_on_next_call=True``, the single-forward variant): the update then happens at
    the start of the next call, unless :meth:`update` was called in between.
    """

    needs = frozenset({"losses"})

    def __init__(
        self,
        lr: float = 0.025,
        weight_decay: float = 1e-3,
        min_losses: Tensor | None = None,
        eps: float = 1e-8,
        update_on_next_call: bool = True,
    ) -> None:
        self.lr = lr
        self.weight_decay = weight_decay
        self.min_losses = min_losses
        self.eps = eps
        self.update_on_next_call = update_on_next_call
        self._xi = LearnedTaskParameter(0.0, lr, "adam", weight_decay)
        self._prev: Tensor | None = None

    def _shift(self, L: Tensor) -> Tensor:
        b = 0.0 if self.min_losses is None else self.min_losses.to(dtype=L.dtype, device=L.device)
        shifted = L - b + self.eps
        if bool((shifted <= 0).any()):
            raise ValueError("FAMO needs every loss above its lower bound min_losses (it takes log(L − b)).")
        return shifted

    def update(self, new_losses: Tensor) -> None:
        """One Adam step on the logits from the losses recomputed after the model step."""
        if self._prev is None:
            raise ValueError("FAMO.update must follow a call that computed weights (there is no 'before' loss).")
        xi = self._xi.get(self._prev)
        with torch.no_grad():
            delta = torch.log(self._shift(self._prev.to(xi.dtype))) - torch.log(self._shift(new_losses.detach().to(xi.dtype)))
            z = torch.softmax(xi, dim=-1)
            grad = z * (delta - (z * delta).sum(-1, keepdim=True))
        self._xi.step(grad)
        self._prev = None

    def compute(self, *, gram: Tensor | None, losses: Tensor | None) -> Tensor:
        assert losses is not None
        L = losses.detach()
        if self.update_on_next_call and self._prev is not None:
            self.update(L)
        xi = self._xi.get(L)
        with torch.no_grad():
            z = torch.softmax(xi.detach(), dim=-1).to(L.dtype)
            inv = 1.0 / self._shift(L)
            w = z * inv / (z * inv).sum(-1, keepdim=True)
        self._prev = L.clone()
        return w

    def reset(self) -> None:
        self._xi.reset()
        self._prev = None

    def state_dict(self) -> dict[str, Any]:
        return {"xi": self._xi.state_dict(), "prev": clone_state(self._prev)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._xi.load_state_dict(state_dict["xi"])
        self._prev = clone_state(state_dict.get("prev"))
