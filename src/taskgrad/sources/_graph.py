"""Checks and helpers on the autograd graph shared by the gradient sources."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor


def as_loss_vector(losses: Sequence[Tensor] | Tensor) -> Tensor:
    """Stack k scalar losses into a (k,) tensor that stays in the graph; clear errors otherwise."""
    return torch.stack(loss_list(losses))


def loss_list(losses: Sequence[Tensor] | Tensor) -> list[Tensor]:
    """Validate k scalar losses and return them as a list of 0-d tensors.

    Graph walks (which parameters a loss depends on) must start from these, not from the
    entries of a stacked vector, whose graphs all pass through the stack.
    """
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(
                f"losses given as one tensor must have shape (k,), got {tuple(losses.shape)}; "
                "reduce each task's loss to a scalar (e.g. loss.mean()) and stack them."
            )
        items = list(losses.unbind())
    elif isinstance(losses, dict):
        raise TypeError("pass the losses as a list (or tuple) of scalars, e.g. list(d.values()).")
    else:
        items = list(losses)
    if not items:
        raise ValueError("losses is empty: pass at least one scalar loss.")
    for i, loss in enumerate(items):
        if not isinstance(loss, Tensor):
            raise TypeError(f"loss {i} is a {type(loss).__name__}, not a torch.Tensor.")
        if loss.numel() != 1:
            raise ValueError(
                f"loss {i} has shape {tuple(loss.shape)}; every loss must be a scalar. Reduce it "
                "with .mean() or .sum() first."
            )
        if not loss.requires_grad:
            raise ValueError(
                f"loss {i} does not require grad: it is not connected to any parameter (was it "
                "computed under torch.no_grad() or from detached tensors?)."
            )
    return [loss if loss.dim() == 0 else loss.reshape(()) for loss in items]


def check_params(params: Iterable[Tensor]) -> list[Tensor]:
    """Return params as a list, raising on anything that is not a tensor requiring grad."""
    out = list(params)
    if not out:
        raise ValueError("params is empty: pass the shared parameters (e.g. encoder.parameters()).")
    seen: set[int] = set()
    for i, p in enumerate(out):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}] is a {type(p).__name__}, not a torch.Tensor.")
        if not p.requires_grad:
            raise ValueError(
                f"params[{i}] (shape {tuple(p.shape)}) does not require grad; pass only trainable "
                "parameters, e.g. [p for p in model.parameters() if p.requires_grad]."
            )
        if id(p) in seen:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) is listed twice.")
        seen.add(id(p))
    return out


REENTRANT = (
    "reentrant activation checkpointing (torch.utils.checkpoint(..., use_reentrant=True)) cannot "
    "give per-task gradients: it only supports a plain .backward() and hides its parameters from "
    "the graph. Use use_reentrant=False (the recommended form), which works with every gradient "
    "source."
)


def _leaves_from(node: Any) -> list[Tensor]:
    """Leaf tensors requiring grad below an autograd node, in first-seen order.

    Raises ValueError on a reentrant activation checkpoint (its parameters are invisible here).
    """
    out: list[Tensor] = []
    seen_nodes: set[Any] = set()
    seen_leaves: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None or n in seen_nodes:
            continue
        seen_nodes.add(n)
        if type(n).__name__.startswith("CheckpointFunctionBackward"):
            raise ValueError(REENTRANT)
        var = getattr(n, "variable", None)
        if var is not None and id(var) not in seen_leaves:
            seen_leaves.add(id(var))
            out.append(var)
        stack.extend(nxt for nxt, _ in n.next_functions)
    return out


def reachable_leaves(root: Tensor) -> list[Tensor]:
    """Leaf tensors requiring grad that ``root`` depends on, in first-seen order."""
    if root.grad_fn is None:
        return [root] if root.requires_grad else []
    return _leaves_from(root.grad_fn)


def task_leaves(losses: Sequence[Tensor] | Tensor) -> list[list[Tensor]]:
    """For each task, the leaves its own loss depends on.

    Accepts the list of losses or a (k,) tensor made by ``torch.stack``; in the second case each
    task is followed from its own input to the stack, since every element of the stacked tensor
    reaches every parameter through the stack.
    """
    return LossSet(losses).leaves()


def shared_parameters(losses: Sequence[Tensor] | Tensor) -> list[Tensor]:
    """Parameters reachable from at least two of the k losses (all of them when k = 1)."""
    return _shared_leaves(task_leaves(losses))


def _shared_leaves(per_task: list[list[Tensor]]) -> list[Tensor]:
    """Leaves in two or more of the per-task lists (first-seen order; the only list if k = 1)."""
    if len(per_task) == 1:
        return per_task[0]
    count: dict[int, int] = {}
    order: list[Tensor] = []
    for leaves in per_task:
        for p in leaves:
            if id(p) not in count:
                count[id(p)] = 0
                order.append(p)
            count[id(p)] += 1
    shared = [p for p in order if count[id(p)] >= 2]
    if not shared:
        raise ValueError(
            "no parameter is shared by two or more losses, so there is nothing to trade off; "
            "pass params= explicitly (e.g. the encoder's parameters)."
        )
    return shared


def depends_on(root: Tensor, targets: Sequence[Tensor]) -> bool:
    """Whether ``root``'s graph reaches any of ``targets`` (a graph walk, no backward)."""
    nodes = {t.grad_fn for t in targets if t.grad_fn is not None}
    leaves = {id(t) for t in targets if t.grad_fn is None}
    seen: set[Any] = set()
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if node in nodes:
            return True
        seen.add(node)
        var = getattr(node, "variable", None)
        if var is not None and id(var) in leaves:
            return True
        stack.extend(nxt for nxt, _ in node.next_functions)
    return False


def _stack_node(losses: Tensor) -> Any | None:
    """The StackBackward node of a (k,) tensor made by ``torch.stack`` of k scalars, else None."""
    fn = losses.grad_fn
    if (
        fn is not None
        and type(fn).__name__.startswith("StackBackward")
        and len(fn.next_functions) == losses.shape[0]
    ):
        return fn
    return None


def _views_of_one_stack(items: Sequence[Tensor]) -> Any | None:
    """The StackBackward node N when ``items[i]`` is entry i of one ``torch.stack``, else None.

    Entries taken by ``unbind``, iteration or ``[i]``: each loss's own subgraph is N's input i.
    """
    node: Any | None = None
    for i, loss in enumerate(items):
        fn: Any = loss.grad_fn
        name = type(fn).__name__ if fn is not None else ""
        if name.startswith("UnbindBackward"):
            if getattr(fn, "_saved_dim", None) != 0 or loss.output_nr != i:
                return None
        elif name.startswith("SelectBackward"):
            if getattr(fn, "_saved_dim", None) != 0 or getattr(fn, "_saved_index", None) != i:
                return None
        else:
            return None
        parent = fn.next_functions[0][0]
        if node is None:
            node = parent
        elif parent is not node:
            return None
    if (
        node is not None
        and type(node).__name__.startswith("StackBackward")
        and len(node.next_functions) == len(items)
    ):
        return node
    return None


class LossSet:
    """k scalar losses given as a list or as a stacked (k,) tensor, with per-task graph access.

    Both forms behave alike: ``vector`` is the (k,) tensor of the losses, ``leaves()[i]`` the
    leaves task i's own loss reaches (for a stacked tensor followed from its own input to the
    stack, not through the stack), and :meth:`task_grad` runs a backward in which only task i's
    subgraph receives a gradient, so k per-task backwards cost each task's subgraph once.
    :meth:`select` gives the same view of a subset of the tasks.
    """

    # the set a :meth:`select` view was taken from (its graph walks are shared); None otherwise
    _parent: LossSet | None = None

    def __init__(self, losses: Sequence[Tensor] | Tensor) -> None:
        items = loss_list(losses)
        self._peeled: Any | None = None
        if isinstance(losses, Tensor):
            self._root = losses
            self._stack = _stack_node(losses)
        else:
            self._root = torch.stack(items)
            # a list of the entries of one stacked tensor is that stacked tensor: each loss's own
            # subgraph starts at the original stack's input, not at the stack itself
            self._peeled = _views_of_one_stack(items)
            if self._peeled is not None:
                self._stack = self._peeled
            else:
                self._stack = self._root.grad_fn if _stack_node(self._root) is not None else None
        self._items_all = items
        self._which = list(range(len(items)))
        self._given_list = not isinstance(losses, Tensor)
        self._leaves_all: list[list[Tensor]] | None = None

    def select(self, idx: Sequence[int]) -> LossSet:
        """The same losses restricted to the tasks ``idx`` (a view: graph walks are shared)."""
        out = object.__new__(LossSet)
        out.__dict__.update(self.__dict__)
        out._which = [self._which[int(i)] for i in idx]
        out._parent = self
        return out

    @property
    def k(self) -> int:
        """Number of tasks in this view."""
        return len(self._which)

    @property
    def items(self) -> list[Tensor]:
        """The k scalar losses (entries of the stacked tensor when the losses came stacked)."""
        return [self._items_all[i] for i in self._which]

    @property
    def vector(self) -> Tensor:
        """The (k,) tensor of the losses, in the graph."""
        if len(self._which) == len(self._items_all):
            return self._root
        return self._root[torch.tensor(self._which, device=self._root.device)]

    @property
    def stacked(self) -> bool:
        """Whether the losses came as one tensor."""
        return not self._given_list

    def task_nodes(self) -> list[Any]:
        """The autograd node each task's own loss starts from (None for a leaf loss)."""
        if self._stack is not None:
            nodes = [nf for nf, _ in self._stack.next_functions]
        else:
            nodes = [loss.grad_fn for loss in self._items_all]
        return [nodes[i] for i in self._which]

    def _all_leaves(self) -> list[list[Tensor]]:
        parent = self._parent
        if parent is not None:
            return parent._all_leaves()
        if self._leaves_all is None:
            if self._stack is not None:
                self._leaves_all = [_leaves_from(nf) for nf, _ in self._stack.next_functions]
            else:
                self._leaves_all = [reachable_leaves(loss) for loss in self._items_all]
        return self._leaves_all

    def leaves(self) -> list[list[Tensor]]:
        """For each task, the leaves requiring grad its own loss reaches (first-seen order)."""
        every = self._all_leaves()
        return [every[i] for i in self._which]

    def shared_parameters(self) -> list[Tensor]:
        """Leaves reached by at least two losses (all of them when k = 1); see
        :func:`shared_parameters`.
        """
        return _shared_leaves(self.leaves())

    def mask(self) -> Tensor:
        """(k_all,) ones at this view's tasks, zeros elsewhere: the cotangent of Σ_{i in view}
        Lᵢ.
        """
        if len(self._which) == len(self._items_all):
            return torch.ones_like(self._root)
        m = torch.zeros_like(self._root)
        m[self._which] = 1
        return m

    def task_grad(
        self, i: int, inputs: Sequence[Tensor], *, retain_graph: bool = True
    ) -> tuple[Tensor | None, ...]:
        """∂Lᵢ/∂inputs through task i's own subgraph only (None for an input it does not reach)."""
        pos = self._which[i]
        if self._stack is None or (self._given_list and self._peeled is None):
            return torch.autograd.grad(
                self._items_all[pos], list(inputs), retain_graph=retain_graph, allow_unused=True
            )

        def only_i(
            grad_inputs: tuple[Tensor | None, ...], grad_outputs: Any
        ) -> tuple[Tensor | None, ...]:
            return tuple(g if j == pos else None for j, g in enumerate(grad_inputs))

        handle = self._stack.register_hook(only_i)
        try:
            cot = torch.zeros_like(self._root)
            cot[pos] = 1
            return torch.autograd.grad(
                self._root,
                list(inputs),
                grad_outputs=cot,
                retain_graph=retain_graph,
                allow_unused=True,
            )
        finally:
            handle.remove()

    def backward_cotangent(self, weights: Tensor) -> Tensor:
        """(k_all,) cotangent placing this view's weights at their tasks (zeros elsewhere)."""
        cot = torch.zeros_like(self._root)
        cot[self._which] = weights.to(cot.dtype)
        return cot

    @property
    def root(self) -> Tensor:
        """The (k_all,) loss tensor every backward starts from."""
        return self._root

    def total(self, weights: Tensor) -> Tensor:
        """Σᵢ wᵢLᵢ over this view as a graph tensor."""
        return (self.backward_cotangent(weights) * self._root).sum()


def check_reach(losses: LossSet, params: Sequence[Tensor]) -> None:
    """One rule for every source: each compared parameter must be reached by some loss and each
    loss must reach some compared parameter; ValueError naming them otherwise.

    (A parameter no loss reaches would give a silently all-zero block; a loss that reaches none
    would give a zero row, which most methods read as a converged task.)
    """
    per_task = losses.leaves()
    reach = [set(map(id, leaves)) for leaves in per_task]
    by_task = [[id(p) in r for p in params] for r in reach]
    nonleaf = [j for j, p in enumerate(params) if p.grad_fn is not None]
    for j in nonleaf:
        for i, node in enumerate(losses.task_nodes()):
            by_task[i][j] = node is not None and _node_depends_on(node, params[j])
    missing = [j for j in range(len(params)) if not any(row[j] for row in by_task)]
    if missing:
        shapes = ", ".join(f"params[{j}] (shape {tuple(params[j].shape)})" for j in missing[:5])
        raise ValueError(
            f"{shapes} {'is' if len(missing) == 1 else 'are'} not reached by any loss, so "
            f"{'its' if len(missing) == 1 else 'their'} gradient is zero for every task. Pass only "
            "parameters the losses were computed from (e.g. the encoder's parameters), or leave "
            "params unset to compare the parameters shared by two or more losses."
        )
    idle = [i for i, row in enumerate(by_task) if not any(row)]
    if idle:
        raise ValueError(
            f"loss(es) {idle} do not depend on any of the compared parameters, so their gradient "
            "there is zero and says nothing about the trade-off. Compare parameters every loss "
            "uses (the shared ones), or add a loss that uses only its own parameters separately."
        )


def _node_depends_on(node: Any, target: Tensor) -> bool:
    seen: set[Any] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None or n in seen:
            continue
        if n is target.grad_fn:
            return True
        seen.add(n)
        stack.extend(nxt for nxt, _ in n.next_functions)
    return False
