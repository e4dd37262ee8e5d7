"""Batched non-negative quadratic programs: x ≥ 0 minimizing ½ xᵀQx + cᵀx for PSD Q.

The method is block principal pivoting (Júdice & Pires 1994; Kim & Park 2011) run on all
problems of a batch at once: every iteration exchanges the infeasible variables between the
free and the active set and solves the free block exactly (one batched Cholesky). When the
number of infeasible variables stops decreasing for three iterations, a problem falls back to
Murty's single exchange, which terminates. The loop ends on a certificate: no infeasible
variable, i.e. the KKT conditions x ≥ 0, Qx + c ≥ 0, x ⊙ (Qx + c) = 0 hold within tolerance.

Numerics: variables are rescaled so that diag(Q) = 1 and ‖c‖∞ = 1, which makes the problem
invariant to the scale of each task's gradient (1e-20 to 1e20 is fine in float64); a ridge of
a few machine epsilons keeps the free block positive definite when Q is rank deficient
(duplicated or opposite gradients), and one step of iterative refinement recovers accuracy.
Working on G = J Jᵀ squares the conditioning of the gradients: gradients that are parallel or
opposite to within ~1e-8 in angle make G singular to float64 rounding, and there the answer is
only as accurate as G itself (the KKT conditions still hold to the stated tolerance).

Certificates (``return_info=True``) are computed on the problem as given, from the answer as
returned, with each constraint measured in its own units (see :class:`SolverInfo`); they are
backward errors: a residual r means the answer is exact for data perturbed by about r relative
to each entry's scale. A problem that is unbounded below raises ValueError with a certified
direction (v ≥ 0, Qv = 0 to rounding, cᵀv < 0) instead of returning x ≈ 1/ridge.
On the CPU in float64 the pivoting runs per problem in compiled code (numba), so a batch costs
the sum of its problems, not a masked k³ factorization per iteration for every problem.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, overload

import numpy as np
import torch
from torch import Tensor

from . import _single
from ._checks import check_finite, check_float, check_max_iter, check_nonneg, compute_dtype_for

__all__ = ["SolverInfo", "certificate_tolerance", "nnls"]


class SolverInfo(NamedTuple):
    """Certificate returned with ``return_info=True``, computed on the problem the user posed.

    iterations: (...,) pivoting iterations each problem took.
    kkt_residual: (...,) scale-free KKT residual of the returned answer on the original input
        (not on the solver's internal rescaled problem): zero exactly at the optimum, invariant
        to the scale of each variable (each task's gradient). For :func:`nnls` it is
        ‖min(x̄, ȳ)‖∞ / (1 + ‖x̄‖∞) with x̄ᵢ = √Qᵢᵢ·xᵢ/γ, ȳᵢ = (Qx + c)ᵢ/(√Qᵢᵢ·γ) and
        γ = maxᵢ |cᵢ|/√Qᵢᵢ: each constraint measured in its own units. For the Gram solvers
        see :func:`~taskgrad.solvers.primary_aux_kkt_residual`.
    converged: (...,) the solver finished (no infeasible variable left) *and* kkt_residual is
        at most :func:`certificate_tolerance` of the output dtype, so a wrong answer is never
        reported as converged.
    """

    iterations: Tensor
    kkt_residual: Tensor
    converged: Tensor


def certificate_tolerance(dtype: torch.dtype, k: int) -> float:
    """Largest ``kkt_residual`` reported as converged for answers of ``dtype`` with k variables:
    max(√eps, 1000·k·eps) of the dtype (1.5e-8 in float64, 3.5e-4 in float32 at small k).
    Rounding of a correct answer stays orders of magnitude below; a wrong one is O(1).
    """
    eps = float(torch.finfo(dtype).eps)
    return max(float(eps**0.5), 1e3 * k * eps)


def _default_compute_dtype(x: Tensor) -> torch.dtype:
    # On the CPU float64 costs about what float32 does at these sizes; on a GPU keep the
    # input's precision, with float16/bfloat16 computed in float32.
    return compute_dtype_for(x, None)


def _tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """(feasibility tolerance, ridge) in the rescaled problem for a compute dtype."""
    if dtype == torch.float64:
        return 1e-11, 1e-13
    return 1e-5, 1e-6


def _scaled_residual(Qs: Tensor, cs: Tensor, xs: Tensor) -> Tensor:
    """‖min(x, Qx + c)‖∞ / (1 + ‖x‖∞) for batches of rescaled problems (B, k)."""
    y = (Qs @ xs.unsqueeze(-1)).squeeze(-1) + cs
    nat = torch.minimum(xs, y).abs().amax(-1)
    return nat / (1.0 + xs.abs().amax(-1))


def _solve_free_block(Qs: Tensor, cs: Tensor, free: Tensor, ridge: float) -> Tensor:
    """X with x_F = −(Q_FF + ridge·I)⁻¹ c_F and x_A = 0, for every problem of the batch.

    Solved with masks over the whole batch: no gather and no host synchronization.
    """
    f = free.to(Qs.dtype)
    ff = f.unsqueeze(-1) * f.unsqueeze(-2)
    M = Qs * ff + torch.diag_embed((1.0 - f) + ridge * f)
    rhs = (-cs * f).unsqueeze(-1)
    L, info = torch.linalg.cholesky_ex(M)
    bump = ridge
    while bool((info > 0).any()):  # rounding made a block indefinite: raise its ridge only
        bump *= 100.0
        if bump > 1e-2:
            raise torch.linalg.LinAlgError(
                "nnls: a free block is not positive definite even with a ridge of 1e-2."
            )
        M = M + torch.diag_embed((info > 0).to(Qs.dtype).unsqueeze(-1) * bump * f)
        L, info = torch.linalg.cholesky_ex(M)
    x = torch.cholesky_solve(rhs, L)
    x = x + torch.cholesky_solve(rhs - M @ x, L)  # one step of iterative refinement
    return x.squeeze(-1) * f


def _block_pivoting(
    Qs: Tensor,
    cs: Tensor,
    fixed_zero: Tensor,
    tol: float,
    ridge: float,
    max_iter: int,
    free: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Block principal pivoting on (B, k) problems; returns (x, free, iterations, converged).

    The host learns whether every problem is done once per iteration on the CPU and once every
    four on a GPU (iterations after a problem is done leave it unchanged), so a GPU solve costs
    a handful of scalar synchronizations, never a copy of the data.
    """
    check_every = 1 if cs.device.type == "cpu" else 4
    B, k = cs.shape
    dev = cs.device
    if free is None:  # start from the variables that would decrease the objective alone
        free = cs < 0
    free = free & ~fixed_zero
    x = _solve_free_block(Qs, cs, free, ridge)
    y = torch.where(free, torch.zeros_like(cs), (Qs @ x.unsqueeze(-1)).squeeze(-1) + cs)
    n_best = torch.full((B,), k + 1, dtype=torch.long, device=dev)
    budget = torch.full((B,), 3, dtype=torch.long, device=dev)
    iterations = torch.zeros(B, dtype=torch.long, device=dev)
    position = torch.arange(1, k + 1, device=dev)
    infeasible = torch.zeros(B, k, dtype=torch.bool, device=dev)
    for it in range(max_iter + 1):
        scale = 1.0 + x.abs().amax(-1, keepdim=True)
        infeasible = ((free & (x < -tol * scale)) | (~free & (y < -tol * scale))) & ~fixed_zero
        n_inf = infeasible.sum(-1)
        pending = n_inf > 0
        if it == max_iter or (it % check_every == 0 and not bool(pending.any())):
            break
        better = n_inf < n_best
        full_exchange = better | (budget >= 1)
        budget = torch.where(better, torch.full_like(budget, 3), budget - (~better).long())
        n_best = torch.where(better, n_inf, n_best)
        last = (infeasible.long() * position).argmax(-1, keepdim=True)
        single = torch.zeros_like(infeasible).scatter_(-1, last, True) & infeasible
        flip = torch.where(full_exchange.unsqueeze(-1), infeasible, single)
        free = free ^ flip
        iterations = iterations + pending.long()
        x = _solve_free_block(Qs, cs, free, ridge)
        y = torch.where(free, torch.zeros_like(cs), (Qs @ x.unsqueeze(-1)).squeeze(-1) + cs)
    converged = ~infeasible.any(-1)
    return x.clamp_min(0.0), free, iterations, converged


def _lawson_hanson(
    Qs: Tensor, cs: Tensor, fixed_zero: Tensor, tol: float, ridge: float, max_iter: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Lawson–Hanson active set on (B, k) problems; returns (x, free, iterations, converged).

    Adds the most negative multiplier's variable to the free set, solves the free block, and
    steps back to the boundary (dropping variables that reach 0) until the block solution is
    positive. The objective decreases at every step, so it cannot cycle; the free columns stay
    independent, which makes it the robust fallback for rank-deficient Q.
    """
    B, k = cs.shape
    dev = cs.device
    x = torch.zeros_like(cs)
    free = torch.zeros(B, k, dtype=torch.bool, device=dev)
    blocked = torch.zeros_like(free)
    inner = torch.zeros(B, dtype=torch.bool, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    iterations = torch.zeros(B, dtype=torch.long, device=dev)
    inf = torch.tensor(float("inf"), dtype=cs.dtype, device=dev)
    for _ in range(max_iter):
        y = (Qs @ x.unsqueeze(-1)).squeeze(-1) + cs
        scale = 1.0 + x.abs().amax(-1, keepdim=True)
        cand = ~free & ~fixed_zero & ~blocked & (y < -tol * scale)
        done = done | (~inner & ~cand.any(-1))
        if bool(done.all()):
            break
        adding = ~inner & ~done
        j = torch.where(cand, y, inf).argmin(-1, keepdim=True)
        added = torch.zeros_like(free).scatter_(-1, j, True) & adding.unsqueeze(-1)
        free = free | added
        z = _solve_free_block(Qs, cs, free, ridge)
        bad = free & (z <= 0)
        backtrack = bad.any(-1) & ~done
        ratio = torch.where(bad, x / (x - z).clamp_min(torch.finfo(cs.dtype).tiny), inf)
        alpha = ratio.amin(-1, keepdim=True).clamp(0.0, 1.0)
        step = torch.where(backtrack.unsqueeze(-1), x + alpha * (z - x), z)
        # a variable that cannot enter (its block solution is not positive) is skipped until
        # the point moves; it would otherwise be added and dropped forever
        stuck = added & bad & (alpha == 0)
        blocked = torch.where(backtrack.unsqueeze(-1), blocked | stuck, torch.zeros_like(blocked))
        drop = backtrack.unsqueeze(-1) & free & (step <= 0) | stuck
        new_free = free & ~drop
        step = torch.where(new_free, step, torch.zeros_like(step))
        live = ~done
        x = torch.where(live.unsqueeze(-1), step, x)
        free = torch.where(live.unsqueeze(-1), new_free, free)
        inner = backtrack & ~stuck.any(-1)
        iterations = iterations + live.long()
    return x.clamp_min(0.0), free, iterations, done


# from this many variables the CPU float64 path factorizes with LAPACK (NumPy) per problem
_LAPACK_FROM_K = 112


def _use_compiled() -> bool:
    """Whether the compiled (numba) kernels are available for the CPU float64 path."""
    from .._numba import HAVE_NUMBA

    return HAVE_NUMBA


def _pivot(
    Qs: Tensor,
    cs: Tensor,
    fixed_zero: Tensor,
    tol: float,
    ridge: float,
    max_iter: int,
    free: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Block principal pivoting, then Lawson–Hanson for the problems it did not finish.

    Pivoting exchanges many variables per iteration and usually ends in a few iterations; on
    nearly singular Q (rank-deficient Gram matrices) it can wander, so after a budget of
    2·log2(k) + 12 iterations the unfinished problems restart with Lawson–Hanson, which
    terminates. Returns (x, free, iterations, converged). On the CPU in float64 (with numba)
    the problems run one after the other in compiled code (:func:`._compiled.pivot_batch`), the
    same algorithm and decisions, so a batch costs the sum of its problems' own work; from
    k = 112 on, each problem runs the NumPy/LAPACK port (:mod:`._single`) instead.
    """
    k = cs.shape[-1]
    if cs.device.type == "cpu" and cs.dtype == torch.float64 and k >= _LAPACK_FROM_K:
        # large blocks: one problem after the other in NumPy/LAPACK on the gathered free block
        # (faster than the compiled loops' own Cholesky from k ≈ 110)
        out = [
            _single.pivot(
                Qs[b].detach().numpy(),
                cs[b].detach().numpy(),
                fixed_zero[b].numpy(),
                tol,
                ridge,
                max_iter,
                None if free is None else free[b].numpy(),
            )
            for b in range(cs.shape[0])
        ]
        return (
            torch.from_numpy(np.stack([o[0] for o in out])),
            torch.from_numpy(np.stack([o[1] for o in out])),
            torch.tensor([o[2] for o in out], dtype=torch.long),
            torch.tensor([o[3] for o in out], dtype=torch.bool),
        )
    if cs.device.type == "cpu" and cs.dtype == torch.float64 and _use_compiled():
        # one problem after the other in compiled code: each pays for its own free blocks
        from . import _compiled

        f0 = free if free is not None else torch.zeros_like(fixed_zero)
        X, F, it, ok, st = _compiled.pivot_batch(
            Qs.detach().contiguous().numpy(),
            cs.detach().contiguous().numpy(),
            fixed_zero.contiguous().numpy(),
            tol,
            ridge,
            max_iter,
            f0.contiguous().numpy(),
            free is not None,
        )
        if bool((st != _compiled.OK).any()):
            raise torch.linalg.LinAlgError(
                "nnls: a free block is not positive definite even with a ridge of 1e-2."
            )
        return torch.from_numpy(X), torch.from_numpy(F), torch.from_numpy(it), torch.from_numpy(ok)
    if cs.shape[0] == 1 and cs.device.type == "cpu":  # one problem: NumPy on the gathered block
        xn, fn, it, ok = _single.pivot(
            Qs[0].detach().numpy(),
            cs[0].detach().numpy(),
            fixed_zero[0].numpy(),
            tol,
            ridge,
            max_iter,
            None if free is None else free[0].numpy(),
        )
        return (
            torch.from_numpy(xn).unsqueeze(0),
            torch.from_numpy(fn).unsqueeze(0),
            torch.tensor([it]),
            torch.tensor([ok]),
        )
    budget = min(max_iter, 2 * int(k).bit_length() + 12)
    x, free_out, iters, conv = _block_pivoting(Qs, cs, fixed_zero, tol, ridge, budget, free)
    if budget >= max_iter or bool(conv.all()):
        return x, free_out, iters, conv
    idx = (~conv).nonzero().squeeze(1)
    xl, fl, il, cl = _lawson_hanson(
        Qs[idx], cs[idx], fixed_zero[idx], tol, ridge, max_iter - budget
    )
    x = x.index_copy(0, idx, xl)
    free_out = free_out.index_copy(0, idx, fl)
    iters = iters.index_copy(0, idx, iters[idx] + il)
    conv = conv.index_copy(0, idx, cl)
    return x, free_out, iters, conv


def _unbounded(Qs: Tensor, cs: Tensor, xs: Tensor, ridge: float) -> Tensor:
    """(B,) mask of rescaled problems (diag Qs = 1, ‖cs‖∞ = 1) certified unbounded below.

    On an unbounded problem the ridge-regularized pivoting returns x ≈ v/ridge for a direction
    v ≥ 0 with Qv = 0 and cᵀv < 0 (the objective decreases without bound along v). The
    certificate is checked on v = x/‖x‖∞: ‖x‖∞ ≥ 1e-2/ridge, ‖Qs v‖∞ ≤ 1e3·ridge and cs·v < 0.
    A bounded problem gives ‖x‖∞ ≈ 1e-2/ridge only when Q is singular to within the ridge.
    """
    nrm = xs.abs().amax(-1)
    big = nrm * ridge >= 1e-2
    if not bool(big.any()):
        return big
    v = xs / nrm.clamp_min(torch.finfo(xs.dtype).tiny).unsqueeze(-1)
    Qv = (Qs @ v.unsqueeze(-1)).squeeze(-1).abs().amax(-1)
    return big & (v.min(-1).values >= 0) & (Qv <= 1e3 * ridge) & ((cs * v).sum(-1) < 0)


def _nnls_residual(Q: Tensor, c: Tensor, x: Tensor, held: Tensor) -> Tensor:
    """KKT residual of x for x ≥ 0 minimizing ½xᵀQx + cᵀx on the original (B, k) problems,
    each variable in its own units (see :class:`SolverInfo`); ``held`` variables are exempt.
    """
    diag = torch.diagonal(Q, dim1=-2, dim2=-1).clamp_min(0)
    sq = diag.sqrt()
    live = ~held & (diag >= torch.finfo(Q.dtype).tiny)
    sq_safe = torch.where(live, sq, torch.ones_like(sq))
    gamma = torch.where(live, c.abs() / sq_safe, torch.zeros_like(c)).amax(-1, keepdim=True)
    gamma = torch.where(gamma > 0, gamma, torch.ones_like(gamma))
    y = (Q @ x.unsqueeze(-1)).squeeze(-1) + c
    xb = x * sq / gamma
    yb = y / (sq_safe * gamma)
    r = torch.where(live, torch.minimum(xb, yb).abs(), torch.zeros_like(xb)).amax(-1)
    return r / (1.0 + torch.where(live, xb.abs(), torch.zeros_like(xb)).amax(-1))


def _rescale(
    Q: Tensor, c: Tensor, zero_tol: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Rescale so that diag(Q) = 1 and ‖c‖∞ = 1; returns (Qs, cs, d, gamma, zero) with
    x = d ⊙ x̄ · gamma; ``zero`` marks variables with no curvature (held at 0).
    """
    diag = torch.diagonal(Q, dim1=-2, dim2=-1)
    dmax = diag.amax(-1, keepdim=True)
    zero = diag <= zero_tol * dmax.clamp_min(torch.finfo(Q.dtype).tiny)
    zero = zero | (diag < torch.finfo(Q.dtype).tiny)  # zero or subnormal: no usable curvature
    d = torch.where(zero, torch.zeros_like(diag), diag.clamp_min(torch.finfo(Q.dtype).tiny).rsqrt())
    Qs = Q * d.unsqueeze(-1) * d.unsqueeze(-2)
    Qs = Qs + torch.diag_embed(zero.to(Q.dtype))  # unit curvature on held variables keeps M PD
    cs = c * d
    gamma = cs.abs().amax(-1, keepdim=True)
    gamma = torch.where(gamma > 0, gamma, torch.ones_like(gamma))
    return Qs, cs / gamma, d, gamma, zero


@overload
def nnls(
    Q: Tensor,
    c: Tensor,
    *,
    zero_tol: float = ...,
    fixed_zero: Tensor | None = ...,
    max_iter: int | None = ...,
    compute_dtype: torch.dtype | None = ...,
    check_input: bool = ...,
    return_info: Literal[False] = ...,
) -> Tensor: ...


@overload
def nnls(
    Q: Tensor,
    c: Tensor,
    *,
    zero_tol: float = ...,
    fixed_zero: Tensor | None = ...,
    max_iter: int | None = ...,
    compute_dtype: torch.dtype | None = ...,
    check_input: bool = ...,
    return_info: Literal[True],
) -> tuple[Tensor, SolverInfo]: ...


@overload
def nnls(
    Q: Tensor,
    c: Tensor,
    *,
    zero_tol: float = ...,
    fixed_zero: Tensor | None = ...,
    max_iter: int | None = ...,
    compute_dtype: torch.dtype | None = ...,
    check_input: bool = ...,
    return_info: bool = ...,
) -> Tensor | tuple[Tensor, SolverInfo]: ...


def nnls(
    Q: Tensor,
    c: Tensor,
    *,
    zero_tol: float = 0.0,
    fixed_zero: Tensor | None = None,
    max_iter: int | None = None,
    compute_dtype: torch.dtype | None = None,
    check_input: bool = True,
    return_info: bool = False,
) -> Tensor | tuple[Tensor, SolverInfo]:
    """X ≥ 0 minimizing ½ xᵀQx + cᵀx, for positive semi-definite Q, batched over leading dims.

    KKT: x ≥ 0, Qx + c ≥ 0 and xᵢ (Qx + c)ᵢ = 0. Solved exactly by block principal pivoting
    (see the module docstring); the loop ends when the KKT conditions hold.

    Args:
        Q: (..., k, k) symmetric positive semi-definite matrix.
        c: (..., k) linear term.
        zero_tol: variables with Q_ii ≤ zero_tol·max_j Q_jj are treated as having no curvature
            and held at 0 (for a Gram matrix: zero gradients).
        fixed_zero: optional (..., k) boolean mask of variables held at 0.
        max_iter: pivoting iterations at most (default 10·k + 50); problems that do not finish
            are reported with ``converged = False``.
        compute_dtype: dtype of the arithmetic; default float64 on the CPU, the input's on a GPU
            (float16 and bfloat16 are computed in float32; x is returned in the input dtype).
        check_input: validate shapes and finiteness (one host synchronization).
        return_info: also return a :class:`SolverInfo` certificate.

    Returns:
        x of shape (..., k) in the dtype of Q, and optionally the info.

    Raises:
        ValueError: shapes do not match, or the problem is unbounded below: a variable with no
            curvature and cᵢ < 0, or (when ``check_input``) a certified direction v ≥ 0 with
            Qv = 0 and cᵀv < 0 to rounding.
        TypeError: a non-float Q or c, a non-boolean ``fixed_zero``, a non-numeric
            ``zero_tol`` or a non-int ``max_iter`` (also ValueError when negative or NaN).
    """
    check_float("Q", Q)
    check_float("c", c)
    zero_tol = check_nonneg("zero_tol", zero_tol)
    max_iter = check_max_iter(max_iter)
    if Q.dim() < 2 or Q.shape[-1] != Q.shape[-2]:
        raise ValueError(f"Q must have shape (..., k, k), got {tuple(Q.shape)}.")
    k = Q.shape[-1]
    if c.shape[-1:] != (k,):
        raise ValueError(
            f"c must have shape (..., {k}) to match Q {tuple(Q.shape)}, got {tuple(c.shape)}."
        )
    if fixed_zero is not None:
        if not isinstance(fixed_zero, Tensor) or fixed_zero.dtype != torch.bool:
            raise TypeError(
                "fixed_zero must be a boolean tensor of shape (..., k) marking the variables held "
                f"at 0, got {getattr(fixed_zero, 'dtype', type(fixed_zero).__name__)}; "
                "build it with a comparison (e.g. mask = weights == 0) or .bool()."
            )
        if fixed_zero.shape[-1:] != (k,):
            raise ValueError(
                f"fixed_zero must have shape (..., {k}), got {tuple(fixed_zero.shape)}."
            )
    batch = torch.broadcast_shapes(Q.shape[:-2], c.shape[:-1])  # type: ignore[no-untyped-call]
    if check_input:
        check_finite("Q", Q)
        check_finite("c", c)
    out_dtype = torch.promote_types(Q.dtype, c.dtype)
    work = compute_dtype_for(Q, compute_dtype)
    Qb = Q.to(work).expand(*batch, k, k).reshape(-1, k, k)
    cb = c.to(work).expand(*batch, k).reshape(-1, k)
    if k == 0 or Qb.shape[0] == 0:
        x = torch.zeros(*batch, k, dtype=out_dtype, device=Q.device)
        if return_info:
            z = torch.zeros(batch, dtype=torch.long, device=Q.device)
            return x, SolverInfo(
                z, z.to(out_dtype), torch.ones(batch, dtype=torch.bool, device=Q.device)
            )
        return x
    Qb = 0.5 * (Qb + Qb.transpose(-1, -2))
    Qs, cs, d, gamma, zero = _rescale(Qb, cb, zero_tol)
    if fixed_zero is not None:
        zero = zero | fixed_zero.to(Q.device).expand(*batch, k).reshape(-1, k)
    if check_input:
        unbounded = (torch.diagonal(Qb, dim1=-2, dim2=-1) <= 0) & (cb < 0)
        if fixed_zero is not None:
            unbounded = unbounded & ~zero
        if bool(unbounded.any()):
            raise ValueError(
                "nnls: the problem is unbounded below: a variable has zero curvature "
                "(Q_ii = 0) and a negative linear term c_i, so x_i → ∞ decreases the objective."
            )
    tol, ridge = _tolerances(work)
    xs, _, iters, converged = _pivot(
        Qs, cs, zero, tol, ridge, max_iter if max_iter is not None else 10 * k + 50
    )
    if check_input:
        bad = _unbounded(Qs, cs, xs, ridge)
        if bool(bad.any()):
            raise ValueError(
                f"nnls: the problem is unbounded below ({int(bad.sum())} of {bad.numel()} "
                "in the batch): "
                "there is a direction v ≥ 0 with Qv = 0 and cᵀv < 0 (to rounding), so x = t·v "
                "decreases the objective without bound as t → ∞. Make Q positive definite on the "
                "feasible directions (e.g. add a ridge) or bound the variables."
            )
    x = (xs * d * gamma).to(out_dtype)
    if not return_info:
        return x.reshape(*batch, k)
    res = _nnls_residual(Qb, cb, x.to(work), zero)
    converged = converged & (res <= certificate_tolerance(out_dtype, k))
    info = SolverInfo(
        iters.reshape(batch), res.to(out_dtype).reshape(batch), converged.reshape(batch)
    )
    return x.reshape(*batch, k), info
