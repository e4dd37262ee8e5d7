"""Checks and helpers on the autograd graph shared by the gradient sources."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

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
    return [loss.reshape(()) for loss in items]


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


def _leaves_from(node: object) -> list[Tensor]:
    """Leaf tensors requiring grad below an autograd node, in first-seen order."""
    out: list[Tensor] = []
    seen_nodes: set = set()
    seen_leaves: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None or n in seen_nodes:
            continue
        seen_nodes.add(n)
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
    if isinstance(losses, Tensor):
        fn = losses.grad_fn
        if fn is not None and type(fn).__name__.startswith("StackBackward") and len(fn.next_functions) == losses.shape[0]:
            return [_leaves_from(nf) for nf, _ in fn.next_functions]
    return [reachable_leaves(loss) for loss in loss_list(losses)]


def shared_parameters(losses: Sequence[Tensor] | Tensor) -> list[Tensor]:
    """Parameters reachable from at least two of the k losses (all of them when k = 1)."""
    per_task = task_leaves(losses)
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
    seen: set = set()
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
