"""Newton-CG and Gauss-Newton-CG on the weighted multi-task objective, as torch.optim optimizers.

Each ``step(closure)``:

1. evaluates the task losses L (k,) from the closure and the weights w = method(gram=G, losses=L)
   (G from :func:`~taskgrad.sources.parameter_gram` over the shared parameters, or from
   :func:`~taskgrad.sources.representation_gram` when the closure returns ``features``);
2. solves (B + λI) d = −∇f by truncated conjugate gradients for f = Σ wᵢLᵢ, B the Hessian
   (:class:`NewtonCG`) or the Gauss-Newton matrix (:class:`GaussNewtonCG`), with the forcing
   tolerance ‖r‖ ≤ min(½, √‖∇f‖)·‖∇f‖ (Nocedal & Wright, Alg. 7.1);
3. backtracks θ + αd until f(θ + αd) ≤ f(θ) + c·α·∇fᵀd (Armijo), the weights held fixed;
4. adapts the Levenberg-Marquardt damping λ from ρ = actual / predicted decrease, the prediction
   being the undamped model αgᵀd + ½α²dᵀBd: λ ← λ·increase when ρ < ¼, λ ← λ·decrease when ρ > ¾.

Negative curvature (pᵀ(B + λI)p ≤ 0 in CG), a non-finite product or a CG iterate that is not a
descent direction make the step fall back along −∇f (initial length capped by the last accepted
step; with ``negative_curvature="truncate"`` the last CG iterate is kept instead when there is
one, as in Nocedal & Wright Alg. 7.1), and negative curvature c raises the damping to at least
(λ − c)·increase so that the direction is positively curved at the next step; a stall or the
iteration cap keeps the last CG iterate. Everything is reported in the
per-step dict :attr:`info`; the parameters never receive a NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..methods.base import Weighting
from ..methods.loss.mean import Mean
from ._closure import Closure, evaluate, loss_vector, method_weights, split_output
from ._flat import flatten, unflatten
from .cg import conjugate_gradient
from .hutchinson import HutchinsonDiagonal, hutchinson_diagonal
from .products import CurvatureOperator, GaussNewtonOperator, HessianOperator, weighted_objective

__all__ = ["GaussNewtonCG", "NewtonCG"]


class _ClosureModule(nn.Module):
    """Runs a closure as the forward of a module holding ``module``, so that
    ``torch.func.functional_call`` can substitute the parameters the closure's model reads.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.closure: Closure | None = None

    def forward(self) -> Any:
        assert self.closure is not None
        return self.closure()


class _CurvatureCG(torch.optim.Optimizer):
    """Shared machinery of :class:`NewtonCG` and :class:`GaussNewtonCG`.

    Main arguments: ``method`` (the Weighting; default Mean), ``lr`` (the first step length tried
    by the line search), ``damping`` (initial λ) and its adaptation (``damping_increase``,
    ``damping_decrease``, ``rho_low``, ``rho_high``, ``min_damping``, ``max_damping``), CG
    (``max_cg_iters``, ``cg_rtol``: None for min(½, √‖∇f‖), ``stall_iters``), the Armijo line
    search (``armijo``, ``backtrack``, ``max_backtracks``), ``products`` ("auto", "forward",
    "reverse") with ``module``, ``preconditioner="hutchinson"`` (PCG with the averaged
    Hutchinson diagonal |D| + λ), ``nonfinite`` ("raise" or "skip" on a NaN/Inf loss, weight or
    gradient), ``negative_curvature`` ("gradient" or "truncate"), and where the Gram comes from:
    ``gram_fn`` (losses ↦ G, e.g. a cheaper exact source), ``gram_params``, the closure's
    ``features``, or by default the parameters shared by ≥ 2 losses (return the losses as a list
    of separately computed scalars for these to be told apart; a stacked tensor reaches all).
    """

    kind = ""

    def __init__(
        self,
        params: Iterable[Tensor],
        method: Weighting | None = None,
        *,
        lr: float = 1.0,
        damping: float = 1e-3,
        min_damping: float = 1e-8,
        max_damping: float = 1e8,
        damping_increase: float = 1.5,
        damping_decrease: float = 2.0 / 3.0,
        rho_low: float = 0.25,
        rho_high: float = 0.75,
        max_cg_iters: int = 50,
        cg_rtol: float | None = None,
        stall_iters: int = 10,
        armijo: float = 1e-4,
        backtrack: float = 0.5,
        max_backtracks: int = 20,
        module: nn.Module | None = None,
        products: Literal["auto", "forward", "reverse"] = "auto",
        preconditioner: Literal["hutchinson"] | None = None,
        hutchinson_samples: int = 1,
        hutchinson_beta: float = 0.9,
        nonfinite: Literal["raise", "skip"] = "raise",
        negative_curvature: Literal["gradient", "truncate"] = "gradient",
        gram_params: Iterable[Tensor] | None = None,
        gram_fn: Callable[[Tensor], Tensor] | None = None,
        seed: int = 0,
    ) -> None:
        checks = {
            "lr": lr > 0,
            "damping": damping >= 0 and min_damping <= max(damping, min_damping) <= max_damping,
            "damping_increase": damping_increase > 1,
            "damping_decrease": 0 < damping_decrease < 1,
            "rho_low/rho_high": 0 <= rho_low < rho_high,
            "max_cg_iters": max_cg_iters >= 1,
            "armijo": 0 <= armijo < 1,
            "backtrack": 0 < backtrack < 1,
            "max_backtracks": max_backtracks >= 0,
            "hutchinson_samples": hutchinson_samples >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"invalid value for {', '.join(bad)} (see the docstring for the ranges)."
            )
        if products not in ("auto", "forward", "reverse"):
            raise ValueError(f"products must be 'auto', 'forward' or 'reverse', got {products!r}.")
        if products == "forward" and module is None:
            raise ValueError(
                "products='forward' needs module=: the model the closure runs (for torch.func)."
            )
        if preconditioner not in (None, "hutchinson"):
            raise ValueError(
                f"preconditioner must be None or 'hutchinson', got {preconditioner!r}."
            )
        if nonfinite not in ("raise", "skip"):
            raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}.")
        if negative_curvature not in ("gradient", "truncate"):
            raise ValueError(
                f"negative_curvature must be 'gradient' or 'truncate', got {negative_curvature!r}."
            )
        defaults = dict(
            lr=lr, damping=damping, min_damping=min_damping, max_damping=max_damping,
            damping_increase=damping_increase, damping_decrease=damping_decrease, rho_low=rho_low,
            rho_high=rho_high, max_cg_iters=max_cg_iters, cg_rtol=cg_rtol, stall_iters=stall_iters,
            armijo=armijo, backtrack=backtrack, max_backtracks=max_backtracks,
        )  # fmt: skip
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(
                f"{type(self).__name__} takes one parameter group: the Newton system couples all "
                "parameters (pass model.parameters())."
            )
        self.method = Mean() if method is None else method
        if not isinstance(self.method, Weighting):
            raise TypeError(
                f"method must be a taskgrad Weighting, got {type(self.method).__name__}."
            )
        self._params: list[Tensor] = list(self.param_groups[0]["params"])
        self.products = products
        self.preconditioner = preconditioner
        self.hutchinson_samples = hutchinson_samples
        self.nonfinite = nonfinite
        self.negative_curvature = negative_curvature
        self.gram_params = None if gram_params is None else list(gram_params)
        self.gram_fn = gram_fn
        self._hutch = HutchinsonDiagonal(beta=hutchinson_beta) if preconditioner else None
        self._gen = torch.Generator().manual_seed(seed)
        self._wrapper: _ClosureModule | None = None
        self._names: list[str] = []
        self._resolved: bool | None = None  # the product mode that worked (True: forward)
        if module is not None and products != "reverse":
            by_id = {id(p): n for n, p in module.named_parameters(remove_duplicate=False)}
            missing = [i for i, p in enumerate(self._params) if id(p) not in by_id]
            if missing:
                raise ValueError(
                    f"params {missing} are not parameters of module; forward-mode products "
                    "substitute "
                    "the module's parameters, so optimize module parameters (or "
                    "products='reverse')."
                )
            self._names = [by_id[id(p)] for p in self._params]
            self._wrapper = _ClosureModule(module)
        self.info: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------------
    def _functional(self, closure: Closure) -> Callable[[tuple[Tensor, ...]], Any]:
        assert self._wrapper is not None
        self._wrapper.closure = closure
        names = ["module." + n for n in self._names]
        wrapper = self._wrapper

        def call(p: tuple[Tensor, ...]) -> Any:
            return torch.func.functional_call(wrapper, dict(zip(names, p, strict=True)), ())

        return call

    def _build(
        self, L: Tensor, w: Tensor, extra: dict[str, Any], closure: Closure, forward: bool
    ) -> CurvatureOperator:
        raise NotImplementedError

    def _first_step_check(
        self, op: CurvatureOperator, L: Tensor, w: Tensor, closure: Closure
    ) -> None:
        """Once: the functional gradient must match the graph's (the closure reads its parameters
        through the module), else forward-mode products would be of another function.
        """
        call = self._functional(closure)

        def f(p: tuple[Tensor, ...]) -> Tensor:
            return weighted_objective(loss_vector(split_output(call(p))[0]), w)

        g_func = flatten(torch.func.grad(f)(tuple(p.detach() for p in self._params)))
        tol = 1e-4 if op.grad.dtype == torch.float32 else 1e-8
        err = float(torch.linalg.vector_norm(g_func - op.grad))
        if not err <= tol * (float(torch.linalg.vector_norm(op.grad)) + 1e-12):
            raise RuntimeError(
                f"the functional gradient differs from the autograd one (|Δ| = {err:.3g}): the "
                "closure "
                "reads parameters outside the module's forward"
            )

    def _candidates(self) -> list[bool]:
        """Product modes to try, as ``forward`` flags: "auto" tries double backward first (the
        gradient graph is reused by every CG product: cheapest per product in our benchmark), then
        forward-over-reverse when a module is given (for ops without a double-backward formula).
        """
        if self.products == "forward":
            return [True]
        if self.products == "reverse" or self._wrapper is None:
            return [False]
        if self._resolved is not None:
            return [self._resolved]
        return [False, True]

    def _operator(
        self, L: Tensor, w: Tensor, extra: dict[str, Any], closure: Closure, info: dict[str, Any]
    ) -> CurvatureOperator:
        candidates = self._candidates()
        for i, forward in enumerate(candidates):
            try:
                op = self._build(L, w, extra, closure, forward)
                if self._resolved is None:
                    if forward:
                        self._first_step_check(op, L, w, closure)
                    probe = torch.zeros(op.numel, dtype=op.grad.dtype, device=op.grad.device)
                    op.mv(
                        probe
                    )  # an op without a (double-)backward or forward-mode rule fails here
                    self._resolved = forward
                info["products"] = op.mode
                return op
            except RuntimeError as err:
                if i + 1 == len(candidates):
                    raise
                info["products_fallback"] = str(err).strip().splitlines()[0][:200]
        raise AssertionError("unreachable")

    def _set_flat(self, flat: Tensor) -> None:
        with torch.no_grad():
            for p, v in zip(self._params, unflatten(flat, self._params), strict=True):
                p.copy_(v)

    def _objective(self, closure: Closure, w: Tensor) -> float:
        with torch.no_grad():
            L, _ = evaluate(closure)
            return float(weighted_objective(L.detach(), w))

    # ----------------------------------------------------------------------------------------
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        """One damped Newton-CG step; returns the task losses (detached) at the starting point.

        The closure re-evaluates the model on the current batch and returns the task losses
        ((k,) tensor or list of scalars, with their graph; no backward), or a mapping with
        ``losses`` and optionally ``outputs`` (Gauss-Newton) and ``features`` (representation
        Gram). It is called once with gradients and a few times under ``torch.no_grad`` (line
        search). What happened is in :attr:`info`.
        """
        if closure is None:
            raise ValueError(f"{type(self).__name__} needs a closure that returns the task losses.")
        group = self.param_groups[0]
        params = self._params
        st = self.state[params[0]]
        lam = float(st.get("damping", group["damping"]))
        info: dict[str, Any] = {
            "step": int(st.get("step", 0)), "kind": self.kind, "damping": lam, "skipped": False,
            "negative_curvature": False, "nonfinite_product": False, "cg_stalled": False,
            "fallback": None, "fallback_reason": None, "line_search_failed": False,
        }  # fmt: skip
        self.info = info

        with torch.enable_grad():
            L, extra = evaluate(closure)
            info["losses"] = L.detach()
            if not bool(torch.isfinite(L.detach()).all()):
                return self._skip(info, "a task loss", L)
            w = method_weights(self.method, L, extra, params, self.gram_params, self.gram_fn)
            info["weights"] = w
            if not bool(torch.isfinite(w).all()):
                return self._skip(info, f"the weights of {type(self.method).__name__}", L)
            op = self._operator(L, w, extra, closure, info)
        g = op.grad
        f0 = float(weighted_objective(L.detach(), w))
        info["objective"] = f0
        gnorm = float(torch.linalg.vector_norm(g))
        info["grad_norm"] = gnorm
        if not math.isfinite(gnorm):
            return self._skip(info, "the gradient of the weighted objective", L)
        if gnorm == 0.0:
            info.update(status="stationary", step_size=0.0, objective_after=f0, cg_iterations=0)
            st["step"] = info["step"] + 1
            return L.detach()

        precond = self._precondition(op, lam, info)
        rtol = group["cg_rtol"] if group["cg_rtol"] is not None else min(0.5, math.sqrt(gnorm))
        res = conjugate_gradient(
            op.mv, -g, damping=lam, max_iter=group["max_cg_iters"], rtol=rtol,
            preconditioner=precond, stall_iters=group["stall_iters"],
        )  # fmt: skip
        info.update(
            cg_iterations=res.iterations, cg_status=res.status,
            cg_relative_residual=res.residual_norm / max(res.rhs_norm, 1e-300),
            cg_curvature=res.curvature,
            negative_curvature=res.status == "negative_curvature",
            nonfinite_product=res.status == "nonfinite", cg_stalled=res.status == "stalled",
        )  # fmt: skip
        d = res.x
        slope = float(torch.dot(g, d))
        dBd: float | None = None
        truncate = (
            res.status == "negative_curvature"
            and self.negative_curvature == "truncate"
            and slope < 0
        )
        if (res.status in ("negative_curvature", "nonfinite") and not truncate) or not slope < 0:
            reason = (
                res.status
                if res.status in ("negative_curvature", "nonfinite")
                else "not a descent direction"
            )
            d = -g
            slope = -(gnorm**2)
            info.update(fallback="gradient", fallback_reason=reason)
            try:
                c = float(torch.dot(g, op.mv(g)))
                dBd = c if math.isfinite(c) else None
            except RuntimeError:
                dBd = None
            last = st.get("last_step_norm")
            alpha0 = min(group["lr"], (last if last else 1.0) / gnorm)
        else:
            # q = ½dᵀ(B+λI)d + gᵀd  ⇒  dᵀBd = 2(q − gᵀd) − λ‖d‖²
            dBd = 2.0 * (res.model_value - slope) - lam * float(torch.dot(d, d))
            alpha0 = group["lr"]
        info["direction_norm"] = float(torch.linalg.vector_norm(d))

        x0 = flatten([p.detach() for p in params]).clone()
        alpha, evals, accepted, f_new = alpha0, 0, False, f0
        for _ in range(group["max_backtracks"] + 1):
            self._set_flat(x0 + alpha * d)
            f_try = self._objective(closure, w)
            evals += 1
            if math.isfinite(f_try) and f_try <= f0 + group["armijo"] * alpha * slope:
                accepted, f_new = True, f_try
                break
            alpha *= group["backtrack"]
        info["line_search_evals"] = evals
        if not accepted:
            self._set_flat(x0)
            info.update(
                line_search_failed=True, step_size=0.0, objective_after=f0, rho=float("nan")
            )
            lam_next = min(lam * group["damping_increase"] ** 2, group["max_damping"])
        else:
            pred = alpha * slope + (0.5 * alpha**2 * dBd if dBd is not None else 0.0)
            rho = (f_new - f0) / pred if pred < 0 else float("nan")
            info.update(step_size=alpha, objective_after=f_new, predicted_decrease=-pred,
                        actual_decrease=f0 - f_new, rho=rho)  # fmt: skip
            st["last_step_norm"] = alpha * info["direction_norm"]
            if not rho >= group["rho_low"]:  # also when rho is nan
                lam_next = lam * group["damping_increase"]
            elif rho > group["rho_high"]:
                lam_next = lam * group["damping_decrease"]
            else:
                lam_next = lam
            lam_next = min(max(lam_next, group["min_damping"]), group["max_damping"])
        if res.status == "negative_curvature" and math.isfinite(res.curvature):
            # a direction with pᵀ(B + λI)p / ‖p‖² = c ≤ 0 needs λ' > λ − c to be positively curved
            raised = (lam - res.curvature) * group["damping_increase"]
            lam_next = min(max(lam_next, raised, group["min_damping"]), group["max_damping"])
        info["next_damping"] = lam_next
        st["damping"] = lam_next
        st["step"] = info["step"] + 1
        return L.detach()

    def _precondition(
        self, op: CurvatureOperator, lam: float, info: dict[str, Any]
    ) -> Tensor | None:
        if self._hutch is None:
            return None
        est = hutchinson_diagonal(
            op.mm, op.numel, n_samples=self.hutchinson_samples, dtype=op.grad.dtype,
            device=op.grad.device, generator=self._gen,
        )  # fmt: skip
        if not bool(torch.isfinite(est).all()):
            info["preconditioner"] = "skipped (non-finite Hutchinson estimate)"
            return None
        diag = self._hutch.update(est).abs()
        floor = max(
            lam, 1e-12 * float(diag.max()) if diag.numel() else 0.0, torch.finfo(diag.dtype).tiny
        )
        info["preconditioner"] = "hutchinson"
        return diag + floor

    def _skip(self, info: dict[str, Any], what: str, L: Tensor) -> Tensor:
        if self.nonfinite == "raise":
            raise FloatingPointError(
                f"{what} is not finite (NaN or Inf); {type(self).__name__} took no step. Check the "
                "inputs or pass nonfinite='skip' to skip such steps."
            )
        info.update(skipped=True, skip_reason=f"{what} is not finite", step_size=0.0)
        return L.detach()

    # ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["taskgrad"] = {
            "method": self.method.state_dict(),
            "generator": self._gen.get_state(),
            "hutchinson": None if self._hutch is None else self._hutch.state_dict(),
            "resolved": self._resolved,
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        extra = sd.pop("taskgrad", None)
        super().load_state_dict(sd)
        self._params = list(self.param_groups[0]["params"])
        if extra is not None:
            self.method.load_state_dict(extra["method"])
            self._gen.set_state(extra["generator"])
            if self._hutch is not None and extra["hutchinson"] is not None:
                self._hutch.load_state_dict(extra["hutchinson"])
            self._resolved = extra.get("resolved")


class NewtonCG(_CurvatureCG):
    """Damped truncated Newton (Hessian-free) on f = Σ wᵢLᵢ, w from ``method`` (default Mean).

    B = ∇²f by Hessian-vector products. ``products="reverse"``: double backward, the gradient
    graph built once per step and reused by every CG product. ``"forward"``: forward-over-reverse
    with ``torch.func`` (needs ``module``, the model the closure runs; the closure must read the
    parameters only through it — checked once against the graph gradient — and must not mutate
    buffers, e.g. BatchNorm running statistics). ``"auto"`` (default): reverse, then forward when
    a double-backward formula is missing (reported in ``info["products_fallback"]``). See the
    module docstring for the step and its safeguards.
    """

    kind = "hessian"

    def _build(
        self, L: Tensor, w: Tensor, extra: dict[str, Any], closure: Closure, forward: bool
    ) -> CurvatureOperator:
        if not forward:
            return HessianOperator.from_graph(L, self._params, w)
        g = flatten(
            torch.autograd.grad(
                weighted_objective(L, w), self._params, retain_graph=True, allow_unused=True
            ),
            like=self._params,
        )
        call = self._functional(closure)

        def fn(p: tuple[Tensor, ...]) -> Tensor:
            return loss_vector(split_output(call(p))[0])

        return HessianOperator.from_function(fn, self._params, w, grad=g)


class GaussNewtonCG(_CurvatureCG):
    """Damped truncated Gauss-Newton on f = Σ wᵢLᵢ: B = Jᵀ(∇²_z f)J, z the model outputs.

    The closure returns ``{"losses": L, "outputs": [z₁, …]}`` with each Lᵢ convex in z (squared
    error, cross-entropy) and depending on θ only through z. With ``module``, J v is a
    forward-mode ``torch.func.jvp``; otherwise the double-vjp trick on the graph.
    """

    kind = "gauss-newton"

    def _build(
        self, L: Tensor, w: Tensor, extra: dict[str, Any], closure: Closure, forward: bool
    ) -> CurvatureOperator:
        outs = extra.get("outputs")
        if outs is None:
            raise ValueError(
                "GaussNewtonCG needs the model outputs: return "
                "{'losses': L, 'outputs': [z_1, ...]} "
                "from the closure (the predictions the losses are computed from)."
            )
        outs = [outs] if isinstance(outs, Tensor) else list(outs)
        if not forward:
            return GaussNewtonOperator.from_graph(L, outs, self._params, w)
        call = self._functional(closure)
        params0 = tuple(p.detach() for p in self._params)

        def model_fn(p: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            z = split_output(call(p))[1]["outputs"]
            return (z,) if isinstance(z, Tensor) else tuple(z)

        def jvp(v: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            return torch.func.jvp(model_fn, (params0,), (v,))[1]

        return GaussNewtonOperator.from_graph(L, outs, self._params, w, jvp=jvp)
