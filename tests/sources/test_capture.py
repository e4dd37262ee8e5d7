"""Per-task gradients through each task's own subgraph: the one-backward capture at the features,
its fallbacks (an op read by several tasks, a path around the features, a leaf shared by heads),
and the update it gives, against plain per-task autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import taskgrad
from taskgrad.sources import LossSet, capture_features, task_gradients


def setup(kind: str, k: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    enc1, enc2 = nn.Linear(4, 6).double(), nn.Linear(6, 5).double()
    heads = nn.ModuleList(nn.Linear(5, 1) for _ in range(k)).double()
    joint = nn.Linear(5, k).double()
    skip = nn.Linear(6, 1).double()
    x = torch.randn(9, 4, dtype=torch.float64)
    h = torch.tanh(enc1(x))
    z = torch.tanh(enc2(h))
    if kind == "heads":  # every op reading z belongs to one task
        L = [(hd(z) ** 2).mean() for hd in heads]
    elif kind == "joint":  # one op reads z for all tasks
        out = joint(z)
        L = [(out[:, i] ** 2).mean() for i in range(k)]
    elif kind == "around":  # task 0 also reads h, below z: its path goes around the features
        L = [(heads[0](z) + skip(h)).pow(2).mean(), *[(hd(z) ** 2).mean() for hd in heads[1:]]]
    else:  # "tied": two heads share a parameter above z
        L = [
            (heads[0](z) ** 2).mean(),
            ((z @ heads[0].weight.T) ** 3).mean(),
            (heads[2](z) ** 2).mean(),
        ]
    params = [
        *enc1.parameters(),
        *enc2.parameters(),
        *heads.parameters(),
        *joint.parameters(),
        *skip.parameters(),
    ]
    return z, L, params, [*enc1.parameters(), *enc2.parameters()]


@pytest.mark.parametrize("kind", ["heads", "joint", "around", "tied"])
@pytest.mark.parametrize("stacked", [False, True])
def test_capture_rows_and_update_equal_per_task_autograd(kind, stacked):
    z, L, params, enc = setup(kind)
    ls = LossSet(torch.stack(L) if stacked else L)
    cap = capture_features(ls, [z], with_heads=True)
    for i, loss in enumerate(L):
        ref = torch.autograd.grad(loss, z, retain_graph=True)[0]
        torch.testing.assert_close(cap.rows[0][i], ref, rtol=1e-12, atol=1e-14)
    # the update shortcut only where the graph splits at z
    assert (cap.heads is not None) == (kind == "heads")
    if cap.heads is None:
        return
    v = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    total = sum(w * loss for w, loss in zip(v, L, strict=True))
    refs = torch.autograd.grad(total, params, allow_unused=True, retain_graph=True)
    got = {id(p): g for p, g, _ in cap.update(v)}  # frees the graph below z
    for p, r in zip(params, refs, strict=True):
        if r is not None and r.abs().sum() > 0:
            torch.testing.assert_close(got[id(p)], r, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", ["heads", "joint", "around", "tied"])
@pytest.mark.parametrize("source", ["representation", "full"])
def test_the_step_equals_the_weighted_summed_loss_on_every_graph_shape(kind, source):
    z, L, params, enc = setup(kind)
    res = taskgrad.backward(
        L,
        method=taskgrad.MGDA(),
        features=z if source == "representation" else None,
        params=enc if source == "full" else None,
    )
    got = [None if p.grad is None else p.grad.clone() for p in params]
    z, L, params, enc = setup(kind)
    rows = [
        torch.autograd.grad(loss, z if source == "representation" else enc, retain_graph=True)
        for loss in L
    ]
    J = torch.stack([torch.cat([g.reshape(-1) for g in r]) for r in rows])
    torch.testing.assert_close(res.gram, J @ J.T, rtol=1e-10, atol=1e-12)
    (res.weights * torch.stack(L)).sum().backward()
    for a, p in zip(got, params, strict=True):
        if p.grad is None:
            assert a is None or a.abs().sum() == 0
        else:
            torch.testing.assert_close(a, p.grad, rtol=1e-10, atol=1e-12)


def test_task_gradients_loop_and_batched_agree_and_know_who_reaches_what():
    z, L, params, enc = setup("heads")
    a = task_gradients(LossSet(L), strategy="loop")
    b = task_gradients(LossSet(torch.stack(L)), strategy="batched")
    assert [tuple(t) for t in a.tasks] == [tuple(t) for t in b.tasks]
    for ra, rb in zip(a.rows, b.rows, strict=True):
        torch.testing.assert_close(ra, rb, rtol=1e-12, atol=1e-14)
    assert {len(t) for t in a.tasks} == {1, 3}  # heads reached by one task, the encoder by all
    torch.testing.assert_close(a.gram(enc), b.gram(enc))
