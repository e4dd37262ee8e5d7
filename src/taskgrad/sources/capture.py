"""Per-task gradients, each taken through its own task's subgraph only (O(k) head backwards).

* :func:`feature_rows`: the k gradients ∂Lᵢ/∂z at feature tensors z. When every op that
  consumes z belongs to one task only (the usual encoder + k heads), ONE backward of Σ Lᵢ
  yields all k: a hook on each consumer node keeps the gradient that node sends to z, and
  the consumers of task i only ever carry task i's gradient. A consumer that is a matrix product
  reading z on the left (a Linear head) is kept as the factors (gradient at its output, its
  weight), so no dense k × numel(z) rows are built for it (see :class:`FeatureCapture`).
  Otherwise (a consumer shared by tasks) a loop of per-task backwards, each through its own
  subgraph.
* :func:`task_gradients`: every task's gradient with respect to every parameter it reaches, as
  a :class:`TaskGrads` (per parameter, one row per task that reaches it). Strategies: "loop"
  (one backward per task, each through its own subgraph; the fastest exact choice on CPUs) and
  "batched" (one vmapped backward over the k one-hot cotangents, with a loop fallback when an
  op has no batching rule; nothing of a failed attempt is kept).

Reentrant activation checkpointing (``torch.utils.checkpoint(..., use_reentrant=True)``) cannot
give a gradient with respect to chosen inputs: it is refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ._graph import REENTRANT, LossSet, _leaves_from

__all__ = [
    "FeatureCapture",
    "TaskGrads",
    "capture_features",
    "feature_rows",
    "task_gradients",
    "gram_dtype",
]


def gram_dtype(t: Tensor) -> torch.dtype:
    """float64 for float64 tensors, float32 otherwise (the Gram is never computed in half
    precision).
    """
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _is_reentrant_error(err: BaseException) -> bool:
    text = str(err)
    return "Checkpointing is not compatible" in text or "use_reentrant" in text


def guarded_grad(fn: Callable[[], Any]) -> Any:
    """Run an autograd call, turning reentrant checkpointing's error into a clear ValueError."""
    try:
        return fn()
    except RuntimeError as err:
        if _is_reentrant_error(err):
            raise ValueError(REENTRANT) from err
        raise


def _is_vmap_error(err: BaseException) -> bool:
    text = str(err).lower()
    return any(
        w in text for w in ("batching rule", "vmap", "batched", "functorch", "batchedtensor")
    )


# ----------------------------------------------------------------------------- features
def _target_match(feats: Sequence[Tensor]) -> Callable[[Any, int], int]:
    """A function (node, output_nr) -> index of the feature tensor that edge is, or -1."""
    nodes = {}
    leaves = {}
    for f, z in enumerate(feats):
        if z.grad_fn is not None:
            nodes[(z.grad_fn, z.output_nr)] = f
        else:
            leaves[id(z)] = f

    def match(node: Any, nr: int) -> int:
        if node is None:
            return -1
        f = nodes.get((node, nr), -1)
        if f >= 0:
            return f
        var = getattr(node, "variable", None)
        return leaves.get(id(var), -1) if var is not None else -1

    return match


def _consumers(
    root: Any, match: Callable[[Any, int], int], stops: set[Any], leaves: list[Tensor] | None = None
) -> list[tuple[Any, int, int]]:
    """(node, edge index, feature index) for every edge from task-reachable nodes into a feature;
    ``leaves`` collects the leaves reached on the way (not below the features).
    """
    out: list[tuple[Any, int, int]] = []
    seen: set[Any] = set()
    stack = [root]
    while stack:
        n = stack.pop()
        if n is None or n in seen or n in stops:
            continue
        seen.add(n)
        var = getattr(n, "variable", None)
        if var is not None and leaves is not None:
            leaves.append(var)
        for j, (nxt, nr) in enumerate(n.next_functions):
            f = match(nxt, nr)
            if f >= 0:
                out.append((n, j, f))
            else:
                stack.append(nxt)
    return out


def _linear_factor(node: Any, j: int, z: Tensor) -> Tensor | None:
    """M (d, o) such that the gradient ``node`` sends through its edge j is ``grad_out @ Mᵀ``
    (grad_out: the gradient at the node's (n, o) output), when the node is a matrix product
    reading an (n, d) operand, d = z.shape[-1], on the left (a Linear: addmm or mm); None otherwise.
    """
    if z.dim() < 2 or z.is_complex() or not z.is_floating_point():
        return None
    name = type(node).__name__
    try:
        if name == "AddmmBackward0" and j == 1:
            M, alpha = node._saved_mat2, node._saved_alpha
        elif name == "MmBackward0" and j == 0:
            M, alpha = node._saved_mat2, 1
        else:
            return None
    except (AttributeError, RuntimeError):  # saved tensors not exposed or already freed: dense rows
        return None
    if not isinstance(M, Tensor) or M.dim() != 2 or M.shape[0] != z.shape[-1] or M.dtype != z.dtype:
        return None
    if not isinstance(alpha, (int, float)):
        return None
    return M if alpha == 1 else M * alpha


class FeatureCapture:
    """Per-task gradients at the features from ONE backward, and what the update needs.

    Row i at feature f is ∂Lᵢ/∂feats[f] = dense[f][i] + Σ_c D_c M_cᵀ over the factored parts
    (i, D_c, M_c) of ``factors[f]``: an op of task i that reads z (n × d) as the left operand of a
    matrix product (a Linear head) contributes D_c M_cᵀ with D_c (n × o) the gradient at its
    output and M_c (d × o) its right operand, so the Gram and the update never build the dense
    k × n × d rows for it. :attr:`rows` gives the dense rows (built on first use).

    unreached: tasks whose loss depends on no feature. When ``heads`` is not None the graph
    splits cleanly at the features (every op reading them and every leaf above them belongs
    to one task, and no leaf above them is also below them): ``heads`` holds (leaf, task,
    ∂L_task/∂leaf) for the leaves above the features, ``below`` the leaves below them, and
    :meth:`update` gives the step's gradient with one backward through the encoder only.
    """

    def __init__(
        self,
        feats: list[Tensor],
        dense: list[Tensor | None],
        unreached: list[int],
        k: int,
        factors: list[list[tuple[int, Tensor, Tensor]]] | None = None,
        dense_tasks: list[list[int]] | None = None,
        heads: list[tuple[Tensor, int, Tensor]] | None = None,
        below: list[Tensor] | None = None,
    ) -> None:
        self.feats = feats
        self.dense = dense
        self.unreached = unreached
        self.k = k
        self.factors = factors if factors is not None else [[] for _ in feats]
        self.dense_tasks = (
            dense_tasks if dense_tasks is not None else [list(range(k)) for _ in feats]
        )
        self.heads = heads
        self.below = below
        self._rows: list[Tensor | None] | None = None

    def reached(self, f: int) -> bool:
        """Whether some loss reaches feats[f]."""
        return self.dense[f] is not None or bool(self.factors[f])

    @property
    def rows(self) -> list[Tensor | None]:
        """rows[f]: (k, *feats[f].shape), row i = ∂Lᵢ/∂feats[f] (None: no loss reaches feats[f])."""
        if self._rows is None:
            out: list[Tensor | None] = []
            for f, z in enumerate(self.feats):
                r = self.dense[f]
                if self.factors[f]:
                    r = (
                        torch.zeros((self.k, *z.shape), dtype=z.dtype, device=z.device)
                        if r is None
                        else r.clone()
                    )
                    for i, D, M in self.factors[f]:
                        r[i] += (D @ M.T).to(z.dtype).reshape(z.shape)
                out.append(r)
            self._rows = out
        return self._rows

    def gram(self, dtype: torch.dtype) -> Tensor:
        """G = Σ_f Σ_b ⟨∂Lᵢ/∂z_fb, ∂Lⱼ/∂z_fb⟩ (k×k, in ``dtype``), from the factored parts where
        there are some: ⟨D_a M_aᵀ, D_c M_cᵀ⟩ = Σ (D_aᵀ D_c) ⊙ (M_aᵀ M_c).
        """
        device = self.feats[0].device
        G = torch.zeros(self.k, self.k, dtype=dtype, device=device)
        for f in range(len(self.feats)):
            R = self.dense[f]
            parts = self.factors[f]
            Rf = None
            if R is not None:
                live = self.dense_tasks[f]
                Rf = (
                    R[live].reshape(len(live), -1).to(dtype)
                    if len(live) < self.k
                    else R.reshape(self.k, -1).to(dtype)
                )
                idx = torch.tensor(live, device=device)
                G[idx.unsqueeze(1), idx.unsqueeze(0)] += Rf @ Rf.T
            if not parts:
                continue
            Dall = torch.cat([D for _, D, _ in parts], dim=1).to(dtype)  # (n, O)
            Mall = torch.cat([M for _, _, M in parts], dim=1).to(dtype)  # (d, O)
            seg = [i for i, D, _ in parts for _ in range(D.shape[1])]  # the task of each column
            H = (Dall.T @ Dall) * (Mall.T @ Mall)
            S: Tensor | None = None
            if seg == list(range(self.k)):  # one column per task, in order: H is the Gram
                G += H
            else:  # G_ij sums the block of H between task i's columns and task j's
                S = torch.zeros(len(seg), self.k, dtype=dtype, device=device)
                S[torch.arange(len(seg), device=device), torch.tensor(seg, device=device)] = 1
                G += S.T @ H @ S
            if Rf is not None:
                n, d = Dall.shape[0], Mall.shape[0]
                X = ((Rf.reshape(-1, n, d) @ Mall) * Dall).sum(
                    1
                )  # (live, O): ⟨R_i, D_c M_cᵀ⟩ per column
                X = X if S is None else X @ S  # (live, k)
                C = torch.zeros(self.k, self.k, dtype=dtype, device=device)
                C[idx] = X
                G += C + C.T
        return 0.5 * (G + G.T)

    def update(self, v: Tensor, own: Tensor | None = None) -> list[tuple[Tensor, Tensor, bool]]:
        """(leaf, gradient, shared) of Σᵢ vᵢLᵢ (heads: ownᵢ instead of vᵢ when ``own`` is given),
        by one backward of Σᵢ vᵢ ∂Lᵢ/∂z from the features down; frees the graph below them.
        """
        assert self.heads is not None and self.below is not None
        out: list[tuple[Tensor, Tensor, bool]] = []
        coeff = (v if own is None else own).tolist()
        for p, i, g in self.heads:
            out.append((p, g * coeff[i], False))
        zs, gz = [], []
        for f, z in enumerate(self.feats):
            if not self.reached(f):
                continue
            gf: Tensor | None = None
            R = self.dense[f]
            if R is not None:
                gf = torch.tensordot(v.to(R.dtype), R, dims=1)
            parts = self.factors[f]
            if parts:
                vs = v.tolist()
                seg = [vs[i] for i, D, _ in parts for _ in range(D.shape[1])]
                Dv = torch.cat([D for _, D, _ in parts], dim=1) * torch.tensor(
                    seg, dtype=v.dtype
                ).to(parts[0][1])
                Mall = torch.cat([M for _, _, M in parts], dim=1)
                h = (Dv @ Mall.T).to(z.dtype).reshape(z.shape)
                gf = h if gf is None else gf + h
            zs.append(z)
            gz.append(gf)
        below = self.below
        if below:
            gs = guarded_grad(
                lambda: torch.autograd.grad(zs, below, grad_outputs=gz, allow_unused=True)
            )
            out.extend(
                (p, torch.zeros_like(p) if g is None else g, True)
                for p, g in zip(below, gs, strict=True)
            )
        return out


def _flattening_product(view: Any, z: Tensor, root: Any) -> tuple[Any, int] | None:
    """(matrix product node, edge) when ``view`` flattens z to (n, d) (d = z.shape[-1]) and, within
    the subgraph of ``root``, its only reader is that product's left operand; None otherwise.
    """
    if not type(view).__name__.startswith(
        ("ViewBackward", "UnsafeViewBackward", "ReshapeAliasBackward")
    ):
        return None
    readers: list[tuple[Any, int]] = []
    seen: set[Any] = set()
    stack = [root]
    while stack:
        n = stack.pop()
        if n is None or n in seen or n is view:
            continue
        seen.add(n)
        for j, (nxt, _) in enumerate(n.next_functions):
            if nxt is view:
                readers.append((n, j))
            elif nxt is not None:
                stack.append(nxt)
    if len(readers) != 1:
        return None
    node, j = readers[0]
    name = type(node).__name__
    if not ((name == "AddmmBackward0" and j == 1) or (name == "MmBackward0" and j == 0)):
        return None
    try:
        sizes = (
            node._saved_mat1_sym_sizes if name == "AddmmBackward0" else node._saved_self_sym_sizes
        )
    except (AttributeError, RuntimeError):
        return None
    d = z.shape[-1]
    if len(sizes) != 2 or int(sizes[1]) != d or int(sizes[0]) * d != z.numel():
        return None
    return node, j


def _factoring_pays(k_f: int, dense_tasks: int, widths: list[int], n: int, d: int) -> bool:
    """Whether the factored Gram of one feature costs less than the dense one (multiply-adds)."""
    width = sum(widths)
    factored = (
        width * width * (n + d) + dense_tasks * dense_tasks * n * d + dense_tasks * n * d * width
    )
    return factored < k_f * k_f * n * d


def capture_features(
    losses: LossSet, feats: Sequence[Tensor], *, with_heads: bool = False
) -> FeatureCapture:
    """Per-task gradients at the features (see :class:`FeatureCapture`); ``with_heads``: also the
    heads' gradients in the same backward when the graph splits cleanly at the features.
    """
    k = losses.k
    match = _target_match(feats)
    stops = {z.grad_fn for z in feats if z.grad_fn is not None}
    above: list[list[Tensor]] = [[] for _ in range(k)]
    per_task = [
        _consumers(node, match, stops, above[i]) for i, node in enumerate(losses.task_nodes())
    ]
    unreached = [i for i, c in enumerate(per_task) if not c]
    owner: dict[Any, int] = {}
    disjoint = True
    for i, cons in enumerate(per_task):
        for node, _, _ in cons:
            if owner.setdefault(node, i) != i:
                disjoint = False
    reached = [i for i in range(k) if i not in unreached]
    heads: list[tuple[Tensor, int]] | None = None
    below: list[Tensor] | None = None
    if with_heads and disjoint and all(z.grad_fn is not None for z in feats):
        below = []
        seen_below: set[int] = set()
        for z in feats:
            for p in _leaves_from(z.grad_fn):
                if id(p) not in seen_below:
                    seen_below.add(id(p))
                    below.append(p)
        lead: dict[int, int] = {}
        heads = []
        for i, leaves in enumerate(above):
            for p in leaves:
                if id(p) in seen_below or lead.setdefault(id(p), i) != i:
                    heads = None
                    break
                heads.append((p, i))
            if heads is None:
                break
        if heads is None:
            below = None
    nf = len(feats)
    dense: list[Tensor | None] = [None] * nf
    factors: list[list[tuple[int, Tensor, Tensor]]] = [[] for _ in range(nf)]
    dense_sets: list[set[int]] = [set() for _ in range(nf)]
    head_grads: list[Tensor] = []
    done = False
    if disjoint and reached:
        # Which consumers give their gradient in factored form (a matrix product reading z, or
        # reading z flattened to (n, d) by a view):
        # (node, edge, feature, task, M, product, its edge).
        plan: list[tuple[Any, int, int, int, Tensor | None, Any, int]] = []
        for i, cons in enumerate(per_task):
            for node, j, f in cons:
                z = feats[f]
                if z.dim() == 2:
                    plan.append((node, j, f, i, _linear_factor(node, j, z), node, j))
                    continue
                prod = _flattening_product(node, z, losses.task_nodes()[i]) if z.dim() > 2 else None
                M = _linear_factor(prod[0], prod[1], z) if prod is not None else None
                plan.append((node, j, f, i, M, *(prod if prod is not None else (node, j))))
        for f, z in enumerate(feats):
            mine = [p for p in plan if p[2] == f]
            if not mine:
                continue
            d = z.shape[-1] if z.dim() >= 2 else z.numel()
            n = z.numel() // max(d, 1)
            widths = [0 if p[4] is None else p[4].shape[1] for p in mine]
            fact = [
                p for p, o in zip(mine, widths, strict=True) if o > 0 and o * o * (n + d) < n * d
            ]
            k_f = len({p[3] for p in mine})
            dense_t = {p[3] for p in mine if not any(p is q for q in fact)}
            fact_widths = [
                o for p, o in zip(mine, widths, strict=True) if any(p is q for q in fact)
            ]
            if not fact or not _factoring_pays(k_f, len(dense_t), fact_widths, n, d):
                fact = []
            keep = {id(p) for p in fact}
            plan = [p if id(p) in keep or p[2] != f else (*p[:4], None, p[0], p[1]) for p in plan]
        need_input = sorted({f for _, _, f, _, M, _, _ in plan if M is None})
        for _, _, f, i, M, hnode, hj in plan:
            if M is None:
                dense_sets[f].add(i)
            elif heads is None or not any(
                nx is not None for e, (nx, _) in enumerate(hnode.next_functions) if e != hj
            ):
                need_input.append(f)  # nothing else drives this node: ask for z so that it runs
        need_input = sorted(set(need_input))
        for f in need_input:
            if dense_sets[f]:
                z = feats[f]
                dense[f] = torch.zeros((k, *z.shape), dtype=z.dtype, device=z.device)
        fired: list[int] = []
        failed: list[bool] = []
        handles = []
        for node, j, f, i, M, hnode, _ in plan:
            if M is None:

                def dense_hook(
                    grad_inputs: tuple[Tensor | None, ...],
                    grad_outputs: Any,
                    i: int = i,
                    j: int = j,
                    f: int = f,
                ) -> None:
                    g = grad_inputs[j]
                    if g is None:
                        failed.append(True)
                        return
                    dense[f][i].add_(g)  # type: ignore[index]
                    fired.append(1)

                handles.append(node.register_hook(dense_hook))
            else:

                def factor_hook(
                    grad_inputs: tuple[Tensor | None, ...],
                    grad_outputs: Any,
                    i: int = i,
                    f: int = f,
                    M: Tensor = M,
                ) -> None:
                    g = grad_outputs[0]
                    if g is None:
                        failed.append(True)
                        return
                    factors[f].append((i, g, M))
                    fired.append(1)

                handles.append(hnode.register_hook(factor_hook))
        inputs = [feats[f] for f in need_input] + ([p for p, _ in heads] if heads else [])
        try:
            got = guarded_grad(
                lambda: torch.autograd.grad(
                    losses.root,
                    inputs,
                    grad_outputs=losses.mask(),
                    retain_graph=True,
                    allow_unused=True,
                )
            )
        finally:
            for h in handles:
                h.remove()
        done = not failed and len(fired) == len(plan)
        for parts in factors:
            parts.sort(key=lambda part: part[0])  # by task (the hooks fire in the engine's order)
        if done and heads:
            head_grads = [
                torch.zeros_like(p) if g is None else g
                for (p, _), g in zip(heads, got[len(need_input) :], strict=True)
            ]
    if not done:
        heads = below = None
        dense = [None] * nf
        factors = [[] for _ in range(nf)]
        dense_sets = [set(range(k)) for _ in range(nf)]
        grads: list[list[Tensor | None]] = [[None] * nf for _ in range(k)]
        for i in reached:
            grads[i] = list(guarded_grad(partial(losses.task_grad, i, feats)))
        for f, z in enumerate(feats):
            col = [grads[i][f] for i in range(k)]
            if any(g is not None for g in col):
                dense[f] = torch.stack([torch.zeros_like(z) if g is None else g for g in col])
    cap = FeatureCapture(list(feats), dense, unreached, k, factors, [sorted(t) for t in dense_sets])
    if heads is not None and below is not None:
        cap.heads = [(p, i, g) for (p, i), g in zip(heads, head_grads, strict=True)]
        cap.below = below
    return cap


def feature_rows(losses: LossSet, feats: Sequence[Tensor]) -> tuple[list[Tensor | None], list[int]]:
    """Per-task gradients at the features: (rows, unreached).

    rows[f]: (k, *feats[f].shape) with row i = ∂Lᵢ/∂feats[f] (zeros where task i does not reach
    it), or None when no loss reaches feats[f]. unreached: the tasks whose loss depends on none
    of the features.
    """
    cap = capture_features(losses, feats)
    return cap.rows, cap.unreached


# ----------------------------------------------------------------------------- parameters
@dataclass
class TaskGrads:
    """Every task's gradient with respect to every parameter it reaches.

    params[j] is reached by the tasks ``tasks[j]`` (sorted); ``rows[j]`` is their gradients,
    shape (len(tasks[j]), *params[j].shape). A parameter reached by two or more tasks is
    *shared*; one reached by a single task is that task's own (a head).
    """

    k: int
    params: list[Tensor]
    tasks: list[tuple[int, ...]]
    rows: list[Tensor]
    _index: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {id(p): j for j, p in enumerate(self.params)}

    def index(self, p: Tensor) -> int:
        """Position of ``p`` in :attr:`params`, -1 when no task reaches it."""
        return self._index.get(id(p), -1)

    def shared(self) -> list[Tensor]:
        """Parameters reached by at least two tasks (all reached ones when k = 1)."""
        return [
            p for p, t in zip(self.params, self.tasks, strict=True) if len(t) >= 2 or self.k == 1
        ]

    def scaled(self, c: float) -> TaskGrads:
        """The gradients times c (a new object)."""
        return TaskGrads(self.k, list(self.params), list(self.tasks), [r * c for r in self.rows])

    def add_(self, other: TaskGrads) -> None:
        """Add the gradients of another micro-batch with the same k (parameters may differ)."""
        if other.k != self.k:
            raise ValueError(
                f"micro-batch has {other.k} losses but the accumulation started with {self.k}."
            )
        for p, t, r in zip(other.params, other.tasks, other.rows, strict=True):
            j = self.index(p)
            if j < 0:
                self.params.append(p)
                self.tasks.append(t)
                self.rows.append(r.clone())
                self._index[id(p)] = len(self.params) - 1
                continue
            if self.tasks[j] == t:
                self.rows[j] = self.rows[j] + r
                continue
            union = tuple(sorted(set(self.tasks[j]) | set(t)))
            dense = torch.zeros(
                (len(union), *p.shape), dtype=self.rows[j].dtype, device=self.rows[j].device
            )
            pos = {i: a for a, i in enumerate(union)}
            dense[[pos[i] for i in self.tasks[j]]] += self.rows[j]
            dense[[pos[i] for i in t]] += r
            self.tasks[j], self.rows[j] = union, dense

    def finite(self) -> bool:
        """Whether every stored gradient is finite."""
        return all(bool(torch.isfinite(r).all()) for r in self.rows)

    def dense_rows(self, j: int, dtype: torch.dtype | None = None) -> Tensor:
        """(k, numel) rows of parameter j with zeros for the tasks that do not reach it."""
        r = self.rows[j].reshape(len(self.tasks[j]), -1)
        dtype = dtype or r.dtype
        if len(self.tasks[j]) == self.k:
            return r.to(dtype)
        out = torch.zeros(self.k, r.shape[1], dtype=dtype, device=r.device)
        out[list(self.tasks[j])] = r.to(dtype)
        return out

    def gram(self, compared: Sequence[Tensor]) -> Tensor:
        """G = Σ_p J_p J_pᵀ (k×k) over the ``compared`` parameters."""
        dtype = gram_dtype(self.rows[0]) if self.rows else torch.float32
        device = self.rows[0].device if self.rows else None
        G = torch.zeros(self.k, self.k, dtype=dtype, device=device)
        for p in compared:
            j = self.index(p)
            if j < 0:
                continue
            t = list(self.tasks[j])
            r = self.rows[j].reshape(len(t), -1).to(dtype)
            block = r @ r.T
            if len(t) == self.k:
                G = G + block
            else:
                G[torch.tensor(t).unsqueeze(1), torch.tensor(t).unsqueeze(0)] += block
        return 0.5 * (G + G.T)

    def direction(self, v: Tensor, own: Tensor | None = None) -> list[Tensor]:
        """Per-parameter gradient Σᵢ vᵢ ∂Lᵢ/∂p; with ``own`` (k,), a parameter reached by one task i
        gets ownᵢ ∂Lᵢ/∂p instead (the unweighted-head convention).
        """
        out = []
        for p, t, r in zip(self.params, self.tasks, self.rows, strict=True):
            coeff = own if own is not None and len(t) == 1 and self.k > 1 else v
            c = coeff[list(t)].to(r.dtype)
            out.append(torch.tensordot(c, r, dims=1).to(p.dtype))
        return out


def _reached(losses: LossSet) -> tuple[list[Tensor], list[tuple[int, ...]]]:
    order: list[Tensor] = []
    tasks: dict[int, list[int]] = {}
    for i, leaves in enumerate(losses.leaves()):
        for p in leaves:
            if id(p) not in tasks:
                tasks[id(p)] = []
                order.append(p)
            tasks[id(p)].append(i)
    return order, [tuple(tasks[id(p)]) for p in order]


def _loop(
    losses: LossSet, params: list[Tensor], tasks: list[tuple[int, ...]], scale: float
) -> list[Tensor]:
    rows = [
        torch.empty((len(t), *p.shape), dtype=p.dtype, device=p.device)
        for p, t in zip(params, tasks, strict=True)
    ]
    pos = [{i: a for a, i in enumerate(t)} for t in tasks]
    per_task: list[list[int]] = [[] for _ in range(losses.k)]
    for j, t in enumerate(tasks):
        for i in t:
            per_task[i].append(j)
    for i in range(losses.k):
        mine = per_task[i]
        if not mine:
            continue
        inputs = [params[j] for j in mine]
        gs = guarded_grad(partial(losses.task_grad, i, inputs))
        for j, g in zip(mine, gs, strict=True):
            rows[j][pos[j][i]] = 0 if g is None else g
    if scale != 1.0:
        rows = [r * scale for r in rows]
    return rows


def _batched(
    losses: LossSet, params: list[Tensor], tasks: list[tuple[int, ...]], scale: float
) -> list[Tensor]:
    """One vmapped backward over the k one-hot cotangents; raises on any failure (nothing kept)."""
    from .blockwise import for_each_block_batched

    k = losses.k
    got: dict[int, Tensor] = {}

    def consume(j: int, rows: Tensor) -> None:
        got[j] = rows.reshape(k, *params[j].shape)[list(tasks[j])].clone()

    L = losses.vector * scale if scale != 1.0 else losses.vector
    for_each_block_batched(L, params, consume)
    return [
        got[j] if j in got else torch.zeros((len(t), *p.shape), dtype=p.dtype, device=p.device)
        for j, (p, t) in enumerate(zip(params, tasks, strict=True))
    ]


def task_gradients(losses: LossSet, *, strategy: str = "auto", scale: float = 1.0) -> TaskGrads:
    """Every task's gradient with respect to every leaf it reaches (see the module docstring).

    ``strategy``: "loop", "batched" (vmap, with the loop as fallback when an op has no batching
    rule) or "auto" (batched on CUDA, the loop elsewhere). ``scale``: the losses are multiplied
    by it before the backward (a GradScaler's scale), the gradients are not divided back.
    """
    if strategy not in ("auto", "loop", "batched"):
        raise ValueError(f"strategy must be 'auto', 'loop' or 'batched', got {strategy!r}.")
    params, tasks = _reached(losses)
    if not params:
        raise ValueError(
            "no loss reaches a parameter that requires grad: nothing to differentiate."
        )
    if strategy == "auto":
        strategy = "batched" if losses.vector.is_cuda else "loop"
    rows = None
    if strategy == "batched":
        try:
            rows = _batched(losses, params, tasks, scale)
        except RuntimeError as err:
            if _is_reentrant_error(err):
                raise ValueError(REENTRANT) from err
            if not _is_vmap_error(err):
                raise
            rows = None  # an op without a batching rule: the loop below
    if rows is None:
        rows = _loop(losses, params, tasks, scale)
    return TaskGrads(losses.k, params, tasks, rows)
