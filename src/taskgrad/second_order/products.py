"""Curvature-vector products of the weighted multi-task objective f(θ) = Σᵢ wᵢ Lᵢ(θ).

Two products, each in two ways:

* Hessian: H v = ∇²f(θ) v.
  - forward-over-reverse (``torch.func``): H v = ∂/∂ε ∇f(θ + εv) at ε = 0, one ``jvp`` of
    ``grad``; batched over vectors with ``vmap``. Needs f as a function of θ.
  - reverse-over-reverse (double backward): g = ∇f with ``create_graph=True`` once, then
    H v = ∇_θ ⟨g, v⟩, one backward per product (batched with ``is_grads_batched``). Works on
    any existing autograd graph.
* Gauss-Newton: G v = Jᵀ (∇²_z ℓ) J v with z = model outputs, J = ∂z/∂θ and ℓ(z) = Σᵢ wᵢ Lᵢ(z),
  positive semi-definite when each Lᵢ is convex in z (squared error, cross-entropy).
  - functional: J v by ``torch.func.jvp``, ∇²_z ℓ u by jvp-of-grad, Jᵀ by a reusable ``vjp``.
  - graph: J v by the double-vjp trick (J v = ∂/∂u ⟨Jᵀu, v⟩), then two backwards.

The weights w are constants of the product (detach them): use the weights a
:class:`~taskgrad.methods.Weighting` returned for this step.

Operators (:class:`CurvatureOperator`) work on flat vectors of the P parameter entries and keep
what can be reused between products (the gradient graph, the vjp), as conjugate gradients needs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from ._flat import check_vectors, flatten, flatten_batched, unflatten

__all__ = [
    "CurvatureOperator",
    "GaussNewtonOperator",
    "HessianOperator",
    "gnvp",
    "gnvp_from_graph",
    "hvp",
    "hvp_from_graph",
    "weighted_objective",
]

Mode = Literal["auto", "forward", "reverse"]
Tensors = tuple[Tensor, ...]


def weighted_objective(losses: Tensor, weights: Tensor | None = None) -> Tensor:
    """f = Σᵢ wᵢ Lᵢ for losses (k,) and weights (k,) (w = 1 when None); a scalar loss passes
    through.
    """
    if not isinstance(losses, Tensor):
        raise TypeError(f"losses must be a tensor (a scalar or (k,)), got {type(losses).__name__}.")
    if losses.dim() == 0:
        if weights is not None and weights.numel() != 1:
            raise ValueError(f"a scalar loss takes one weight, got {weights.numel()}.")
        return losses if weights is None else losses * weights.reshape(()).to(losses.dtype)
    if losses.dim() != 1:
        raise ValueError(f"losses must be a scalar or have shape (k,), got {tuple(losses.shape)}.")
    if weights is None:
        return losses.sum()
    if weights.shape != losses.shape:
        raise ValueError(
            f"weights has shape {tuple(weights.shape)} but losses has {tuple(losses.shape)}."
        )
    return (weights.detach().to(losses.dtype) * losses).sum()


def _as_params(params: Sequence[Tensor]) -> Tensors:
    out = tuple(params)
    if not out:
        raise ValueError("params is empty: pass the parameters the products are taken over.")
    for i, p in enumerate(out):
        if not isinstance(p, Tensor) or not p.is_floating_point():
            raise TypeError(f"params[{i}] must be a floating-point tensor.")
    return out


def _is_vmap_error(err: RuntimeError) -> bool:
    msg = str(err).lower()
    return "vmap" in msg or "batched" in msg or "batching rule" in msg


def _batched_grad(
    outputs: Sequence[Tensor],
    inputs: Sequence[Tensor],
    grad_outputs: Sequence[Tensor],
    batched: bool,
) -> list[Tensor | None]:
    """autograd.grad with a batch of grad_outputs (leading dim m) when ``batched``; an op without a
    vmap rule falls back to a loop over the m rows.
    """
    if not batched:
        return list(
            torch.autograd.grad(outputs, inputs, grad_outputs, retain_graph=True, allow_unused=True)
        )
    try:
        return list(
            torch.autograd.grad(
                outputs,
                inputs,
                grad_outputs,
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=True,
            )
        )
    except RuntimeError as err:
        if not _is_vmap_error(err):
            raise
    m = grad_outputs[0].shape[0]
    rows = [
        torch.autograd.grad(
            outputs, inputs, [g[j] for g in grad_outputs], retain_graph=True, allow_unused=True
        )
        for j in range(m)
    ]
    out: list[Tensor | None] = []
    for i, x in enumerate(inputs):
        col = [r[i] for r in rows]
        out.append(
            None
            if all(c is None for c in col)
            else torch.stack([torch.zeros_like(x) if c is None else c for c in col])
        )
    return out


class CurvatureOperator:
    """A symmetric linear operator A on flat parameter vectors (P entries), with the gradient.

    ``mv(v)`` gives A v for v of shape (P,), ``mm(V)`` gives the rows A vⱼ for V of shape (m, P)
    in one batched call. ``grad`` is ∇f (P,), detached. ``kind`` is "hessian" or "gauss-newton";
    ``mode`` says how the products are computed ("forward" or "reverse").
    """

    kind: str = ""
    mode: str = ""

    def __init__(self, params: Tensors, grad: Tensor) -> None:
        self.params = params
        self.numel = sum(p.numel() for p in params)
        self.grad = grad.detach()

    def _apply(self, vs: Tensors, batched: bool) -> Tensors:
        raise NotImplementedError

    def _check(self, v: Tensor, ndim: int) -> None:
        if not isinstance(v, Tensor) or v.dim() != ndim or v.shape[-1] != self.numel:
            shape = "(P,)" if ndim == 1 else "(m, P)"
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(
                f"expected a tensor of shape {shape} with P = {self.numel}, got {got}."
            )

    def mv(self, v: Tensor) -> Tensor:
        """A v for one flat vector v (P,)."""
        self._check(v, 1)
        v = v.to(self.grad.dtype)
        return flatten(self._apply(unflatten(v, self.params), False), like=self.params)

    def mm(self, V: Tensor) -> Tensor:
        """A vⱼ for each row of V (m, P), batched; returns (m, P)."""
        self._check(V, 2)
        V = V.to(self.grad.dtype)
        m = V.shape[0]
        return flatten_batched(self._apply(unflatten(V, self.params), True), m, self.params)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, mode={self.mode!r}, P={self.numel})"


class HessianOperator(CurvatureOperator):
    """H = ∇²f(θ) of f = Σᵢ wᵢ Lᵢ. Build with :meth:`from_graph` or :meth:`from_function`."""

    kind = "hessian"
    # reverse mode (from_graph): the gradient entries still in the graph and their indices
    _idx: list[int]
    _g: list[Tensor]
    # forward mode (from_function): θ ↦ ∇f(θ), shaped like params
    _gradf: Callable[[Tensors], Tensors]

    @classmethod
    def from_graph(
        cls, losses: Tensor, params: Sequence[Tensor], weights: Tensor | None = None
    ) -> HessianOperator:
        """Double backward on an existing graph: g = ∇f once (create_graph), H v = ∇⟨g, v⟩.
        The losses' graph stays alive (as with ``create_graph=True``).
        """
        op = cls.__new__(cls)
        plist = _as_params(params)
        f = weighted_objective(losses, weights)
        g = torch.autograd.grad(f, plist, create_graph=True, allow_unused=True)
        CurvatureOperator.__init__(
            op, plist, flatten([None if x is None else x.detach() for x in g], like=plist)
        )
        op._idx = [i for i, x in enumerate(g) if x is not None and x.requires_grad]
        op._g = [g[i] for i in op._idx]
        op.mode = "reverse"
        return op

    @classmethod
    def from_function(
        cls,
        fn: Callable[[Tensors], Tensor],
        params: Sequence[Tensor],
        weights: Tensor | None = None,
        grad: Tensor | None = None,
    ) -> HessianOperator:
        """Forward-over-reverse: H v = jvp(grad f, θ; v) with f(θ) = Σ wᵢ fn(θ)ᵢ (torch.func).

        ``fn`` takes the tuple of parameters and returns the losses (k,) or a scalar; ``grad``
        (flat, optional) is ∇f if already known, else it is computed with ``torch.func.grad``.
        """
        op = cls.__new__(cls)
        plist = tuple(p.detach() for p in _as_params(params))
        w = None if weights is None else weights.detach()

        def f(p: Tensors) -> Tensor:
            return weighted_objective(fn(p), w)

        op._gradf = torch.func.grad(f)
        if grad is None:
            grad = flatten(op._gradf(plist))
        CurvatureOperator.__init__(op, plist, grad)
        op.mode = "forward"
        return op

    def _apply(self, vs: Tensors, batched: bool) -> Tensors:
        if self.mode == "reverse":
            if not self._g:
                return tuple(torch.zeros_like(v) for v in vs)
            out = _batched_grad(self._g, self.params, [vs[i] for i in self._idx], batched)
            return tuple(
                torch.zeros_like(v) if o is None else o for o, v in zip(out, vs, strict=True)
            )

        def one(v: Tensors) -> Tensors:
            return torch.func.jvp(self._gradf, (self.params,), (v,))[1]

        return torch.func.vmap(one)(vs) if batched else one(vs)


class GaussNewtonOperator(CurvatureOperator):
    """G = Jᵀ (∇²_z ℓ) J for z = model outputs and ℓ(z) = Σᵢ wᵢ Lᵢ(z).

    Build with :meth:`from_graph` (autograd graph of losses ← outputs ← params) or
    :meth:`from_functions` (``torch.func``). The losses must depend on θ only through z for G
    to be the Gauss-Newton matrix of f; ``grad`` is always the full gradient ∇f.
    """

    kind = "gauss-newton"
    # from_graph: the outputs z, ∇_z ℓ still in the graph (with indices), the optional jvp, and
    # Jᵀu for a dummy u (the double-vjp trick) when there is no jvp
    _outs: list[Tensor]
    _hz_idx: list[int]
    _gz: list[Tensor]
    _jvp: Callable[[Tensors], Tensor | Tensors] | None
    _u: list[Tensor]
    _jtu_idx: list[int]
    _jtu: list[Tensor]
    # from_functions: z = model_fn(θ), the vjp of model_fn at θ, z itself and z ↦ ∇_z ℓ
    _model_fn: Callable[[Tensors], Tensor | Tensors]
    _vjp_fn: Callable[[Tensor | Tensors], tuple[Tensors]]
    _z: Tensor | Tensors
    _gradell: Callable[[Tensor | Tensors], Tensor | Tensors]

    @classmethod
    def from_graph(
        cls,
        losses: Tensor,
        outputs: Sequence[Tensor] | Tensor,
        params: Sequence[Tensor],
        weights: Tensor | None = None,
        jvp: Callable[[Tensors], Tensors] | None = None,
    ) -> GaussNewtonOperator:
        """Products from the graph; ``jvp`` (optional) maps a tuple v shaped like params to the
        tuple J v shaped like outputs (e.g. by ``torch.func.jvp``), replacing the double-vjp trick.
        """
        op = cls.__new__(cls)
        plist = _as_params(params)
        outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
        if not outs:
            raise ValueError(
                "outputs is empty: pass the model outputs the losses are computed from."
            )
        for i, z in enumerate(outs):
            if not isinstance(z, Tensor) or not z.requires_grad:
                raise ValueError(
                    f"outputs[{i}] is not in the autograd graph; pass the model outputs "
                    "(predictions) themselves, not detached copies."
                )
        f = weighted_objective(losses, weights)
        gz = torch.autograd.grad(f, outs, create_graph=True, allow_unused=True)
        if all(g is None for g in gz):
            raise ValueError(
                "the losses do not depend on outputs; pass the tensors the losses were computed "
                "from."
            )
        g = torch.autograd.grad(f, plist, retain_graph=True, allow_unused=True)
        CurvatureOperator.__init__(
            op, plist, flatten([None if x is None else x.detach() for x in g], like=plist)
        )
        op._outs = outs
        op._hz_idx = [i for i, x in enumerate(gz) if x is not None and x.requires_grad]
        op._gz = [gz[i] for i in op._hz_idx]
        op._jvp = jvp
        if jvp is None:
            op._u = [torch.zeros_like(z, requires_grad=True) for z in outs]
            jtu = torch.autograd.grad(outs, plist, op._u, create_graph=True, allow_unused=True)
            op._jtu_idx = [i for i, x in enumerate(jtu) if x is not None and x.requires_grad]
            op._jtu = [jtu[i] for i in op._jtu_idx]
        op.mode = "reverse" if jvp is None else "forward"
        return op

    @classmethod
    def from_functions(
        cls,
        model_fn: Callable[[Tensors], Tensor | Tensors],
        loss_fn: Callable[[Tensor | Tensors], Tensor],
        params: Sequence[Tensor],
        weights: Tensor | None = None,
    ) -> GaussNewtonOperator:
        """``torch.func`` products: z = model_fn(θ), losses = loss_fn(z) ((k,) or scalar)."""
        op = cls.__new__(cls)
        plist = tuple(p.detach() for p in _as_params(params))
        w = None if weights is None else weights.detach()

        def ell(z: Tensor | Tensors) -> Tensor:
            return weighted_objective(loss_fn(z), w)

        vjp = torch.func.vjp(model_fn, plist)
        z, vjp_fn = vjp[0], vjp[1]
        gz = torch.func.grad(ell)(z)
        CurvatureOperator.__init__(op, plist, flatten(vjp_fn(gz)[0]))
        op._model_fn, op._vjp_fn, op._z, op._gradell = model_fn, vjp_fn, z, torch.func.grad(ell)
        op.mode = "functional"
        return op

    def _jv(self, vs: Tensors, batched: bool) -> list[Tensor]:
        if self._jvp is not None:
            one = self._jvp
            out = torch.func.vmap(one)(vs) if batched else one(vs)
            return [out] if isinstance(out, Tensor) else list(out)
        if not self._jtu:
            return [
                torch.zeros(
                    (vs[0].shape[0], *z.shape) if batched else z.shape,
                    dtype=z.dtype,
                    device=z.device,
                )
                for z in self._outs
            ]
        grads = _batched_grad(self._jtu, self._u, [vs[i] for i in self._jtu_idx], batched)
        return [
            torch.zeros(
                (vs[0].shape[0], *z.shape) if batched else z.shape, dtype=z.dtype, device=z.device
            )
            if o is None
            else o
            for o, z in zip(grads, self._outs, strict=True)
        ]

    def _apply(self, vs: Tensors, batched: bool) -> Tensors:
        if self.mode == "functional":

            def one(v: Tensors) -> Tensors:
                u = torch.func.jvp(self._model_fn, (self.params,), (v,))[1]
                hu = torch.func.jvp(self._gradell, (self._z,), (u,))[1]
                return self._vjp_fn(hu)[0]

            return torch.func.vmap(one)(vs) if batched else one(vs)
        jv = self._jv(vs, batched)
        if not self._gz:
            return tuple(torch.zeros_like(v) for v in vs)
        hz = _batched_grad(self._gz, self._outs, [jv[i] for i in self._hz_idx], batched)
        go = [torch.zeros_like(j) if h is None else h for h, j in zip(hz, jv, strict=True)]
        out = _batched_grad(self._outs, self.params, go, batched)
        return tuple(torch.zeros_like(v) if o is None else o for o, v in zip(out, vs, strict=True))


def _vectors(vectors: Sequence[Tensor] | Tensor) -> Tensors:
    return (vectors,) if isinstance(vectors, Tensor) else tuple(vectors)


def _apply_op(op: CurvatureOperator, vectors: Tensors, batched: bool) -> Tensors:
    check_vectors(vectors, op.params, batched)
    out = op._apply(tuple(v.to(op.grad.dtype) for v in vectors), batched)
    return tuple(out)


def hvp_from_graph(
    losses: Tensor,
    params: Sequence[Tensor],
    vectors: Sequence[Tensor],
    weights: Tensor | None = None,
    *,
    batched: bool = False,
) -> Tensors:
    """H v with H = ∇²(Σ wᵢLᵢ) by double backward on the losses' graph (kept alive).

    ``vectors`` is a tuple shaped like ``params`` (with a leading dim m when ``batched``: m
    products in one batched backward). Returns a tuple shaped like ``vectors``.
    """
    op = HessianOperator.from_graph(losses, params, weights)
    return _apply_op(op, _vectors(vectors), batched)


def hvp(
    fn: Callable[[Tensors], Tensor],
    params: Sequence[Tensor],
    vectors: Sequence[Tensor],
    weights: Tensor | None = None,
    *,
    batched: bool = False,
    mode: Mode = "auto",
) -> Tensors:
    """H v with H = ∇²f(θ), f(θ) = Σᵢ wᵢ fn(θ)ᵢ, by forward-over-reverse (``torch.func``).

    ``fn`` maps the tuple of parameters to the losses (k,) (or a scalar). ``vectors``: tuple shaped
    like ``params`` (leading dim m when ``batched``, then vmapped). ``mode="reverse"`` uses double
    backward instead; ``"auto"`` tries forward and falls back to reverse when an operation has no
    forward-mode or vmap rule (RuntimeError).
    """
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}.")
    plist = _as_params(params)
    vs = _vectors(vectors)
    check_vectors(vs, plist, batched)
    if mode != "reverse":
        try:
            return _apply_op(HessianOperator.from_function(fn, plist, weights), vs, batched)
        except RuntimeError:
            if mode == "forward":
                raise
    leaves = tuple(p.detach().requires_grad_(True) for p in plist)
    with torch.enable_grad():
        return _apply_op(HessianOperator.from_graph(fn(leaves), leaves, weights), vs, batched)


def gnvp_from_graph(
    losses: Tensor,
    outputs: Sequence[Tensor] | Tensor,
    params: Sequence[Tensor],
    vectors: Sequence[Tensor],
    weights: Tensor | None = None,
    *,
    batched: bool = False,
) -> Tensors:
    """G v = Jᵀ(∇²_z Σ wᵢLᵢ)J v, J = ∂outputs/∂params, from the graph (double-vjp for J v)."""
    op = GaussNewtonOperator.from_graph(losses, outputs, params, weights)
    return _apply_op(op, _vectors(vectors), batched)


def gnvp(
    model_fn: Callable[[Tensors], Tensor | Tensors],
    loss_fn: Callable[[Tensor | Tensors], Tensor],
    params: Sequence[Tensor],
    vectors: Sequence[Tensor],
    weights: Tensor | None = None,
    *,
    batched: bool = False,
    mode: Mode = "auto",
) -> Tensors:
    """G v = Jᵀ(∇²_z ℓ)J v for z = model_fn(θ), ℓ(z) = Σᵢ wᵢ loss_fn(z)ᵢ.

    Forward ("auto"/"forward"): J v by ``torch.func.jvp``, ∇²_z ℓ by jvp-of-grad, Jᵀ by one reusable
    ``vjp``; "reverse" (or "auto" after a RuntimeError): the graph version (double-vjp trick).
    """
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse', got {mode!r}.")
    plist = _as_params(params)
    vs = _vectors(vectors)
    check_vectors(vs, plist, batched)
    if mode != "reverse":
        try:
            return _apply_op(
                GaussNewtonOperator.from_functions(model_fn, loss_fn, plist, weights), vs, batched
            )
        except RuntimeError:
            if mode == "forward":
                raise
    leaves = tuple(p.detach().requires_grad_(True) for p in plist)
    with torch.enable_grad():
        z = model_fn(leaves)
        outs = [z] if isinstance(z, Tensor) else list(z)
        op = GaussNewtonOperator.from_graph(loss_fn(z), outs, leaves, weights)
        return _apply_op(op, vs, batched)
