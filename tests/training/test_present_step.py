"""present= on the training entry points: the absent tasks are dropped (checked against a step
on the present tasks alone), NaN losses of absent tasks never reach .grad, and the rules for an
absent primary, stacked losses and bad masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import taskgrad
import taskgrad.methods as M
from taskgrad.training import GradStep, TaskOptimizer


class Net(nn.Module):
    def __init__(self, k: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(k))

    def losses(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Masked-mean MSE per task: a task with no labelled example in the batch gets 0/0 = NaN."""
        z = self.z = self.body(x)  # the shared representation, kept for features=
        out = []
        for i, h in enumerate(self.heads):
            err = (h(z).squeeze(-1) - y[:, i]) ** 2 * mask[:, i]
            out.append(err.sum() / mask[:, i].sum())
        return out


def _batch(k: int = 3, absent: tuple[int, ...] = (1,)):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 5, generator=g), torch.randn(16, k, generator=g)
    mask = torch.ones(16, k)
    for i in absent:
        mask[:, i] = 0.0
    present = torch.ones(k, dtype=torch.bool)
    present[list(absent)] = False
    return x, y, mask, present


def _grads(net: nn.Module) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize("name", ["mgda", "upgrad", "primary-aux", "mean"])
def test_backward_with_present_equals_the_step_on_the_present_tasks(name: str) -> None:
    x, y, mask, present = _batch(absent=(1,))
    net = Net()
    losses = net.losses(x, y, mask)
    assert torch.isnan(losses[1])
    res = taskgrad.backward(losses, method=M.get(name), present=present)
    got = _grads(net)
    assert all(bool(torch.isfinite(g).all()) for g in got)  # the NaN loss never reached .grad
    assert float(res.weights[1]) == 0.0 and not res.skipped
    assert torch.isnan(res.losses[1]) and res.subset.tolist() == [0, 2]

    ref = Net()
    L = ref.losses(x, y, mask)
    ref_res = taskgrad.backward([L[0], L[2]], method=M.get(name))
    for a, b in zip(got, _grads(ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(res.weights[[0, 2]], ref_res.weights)


def test_gradstep_and_task_optimizer_take_present() -> None:
    x, y, mask, present = _batch(absent=(2,))
    net = Net()
    step = GradStep(M.get("upgrad"))
    res = step.backward(net.losses(x, y, mask), present=present)
    assert float(res.weights[2]) == 0.0 and all(bool(torch.isfinite(g).all()) for g in _grads(net))
    assert net.heads[2].weight.grad is None  # the absent task's head gets nothing

    net2 = Net()
    opt = TaskOptimizer(torch.optim.SGD(net2.parameters(), lr=0.1), method=M.get("upgrad"))
    before = [p.detach().clone() for p in net2.parameters()]
    res2 = opt.step(net2.losses(x, y, mask), present=present)
    assert not res2.skipped
    after = list(net2.parameters())
    assert all(bool(torch.isfinite(p).all()) for p in after)
    assert torch.equal(after[-1].detach(), before[-1]) and torch.equal(
        after[-2].detach(), before[-2]
    )  # head 2
    assert not torch.equal(after[0].detach(), before[0])


def test_absent_primary_rule() -> None:
    x, y, mask, present = _batch(absent=(0,))
    net = Net()
    res = taskgrad.backward(net.losses(x, y, mask), method=M.get("primary-aux"), present=present)
    assert res.skipped and "primary" in res.reason
    assert all(p.grad is None for p in net.parameters())
    # with a fallback method: the Mean of the present auxiliaries
    net = Net()
    res = taskgrad.backward(
        net.losses(x, y, mask),
        method=M.get("primary-aux"),
        present=present,
        absent_primary=taskgrad.Mean(),
    )
    ref = Net()
    L = ref.losses(x, y, mask)
    taskgrad.backward([L[1], L[2]], method=taskgrad.Mean())
    for a, b in zip(_grads(net), _grads(ref), strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(res.weights, torch.tensor([0.0, 0.5, 0.5]))


def test_stacked_losses_and_bad_masks() -> None:
    x, y, mask, present = _batch(absent=(1,))
    net = Net()
    with pytest.raises(ValueError, match="as a list"):
        taskgrad.backward(
            torch.stack(net.losses(x, y, mask)), method=M.get("mgda"), present=present
        )
    # finite absent entries in a stacked tensor are fine and give the list's result
    full = torch.ones(16, 3)
    a, b = Net(), Net()
    taskgrad.backward(torch.stack(a.losses(x, y, full)), method=M.get("mgda"), present=present)
    taskgrad.backward(b.losses(x, y, full), method=M.get("mgda"), present=present)
    for ga, gb in zip(_grads(a), _grads(b), strict=True):
        torch.testing.assert_close(ga, gb)
    with pytest.raises(ValueError, match="every task absent"):
        taskgrad.backward(
            Net().losses(x, y, full), method=M.get("mgda"), present=torch.zeros(3, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        taskgrad.backward(
            Net().losses(x, y, full), method=M.get("mgda"), present=torch.ones(2, dtype=torch.bool)
        )
    with pytest.raises(ValueError, match="period=1"):
        GradStep(M.get("mgda"), period=2).backward(Net().losses(x, y, mask), present=present)


def test_stateful_method_keeps_absent_task_state_across_steps() -> None:
    net = Net()
    opt = TaskOptimizer(torch.optim.SGD(net.parameters(), lr=0.2), method=M.get("famo"))
    x, y, mask, _ = _batch(absent=())
    for _ in range(3):  # every task present: FAMO's state forms and moves (the losses decrease)
        opt.step(net.losses(x, y, mask))
    xi_before = opt.gradstep.method.state_dict()["xi"]["value"].clone()
    x, y, mask, present = _batch(absent=(1,))
    res = opt.step(net.losses(x, y, mask), present=present)
    xi_after = opt.gradstep.method.state_dict()["xi"]["value"]
    assert float(res.weights[1]) == 0.0
    assert float(xi_after[1]) == float(xi_before[1])  # the absent task's logit is untouched
    assert not torch.equal(xi_after[[0, 2]], xi_before[[0, 2]])


def _flat_task_grads(
    net: Net, losses: list[torch.Tensor], tasks: list[int]
) -> dict[int, list[torch.Tensor]]:
    out = {}
    for i in tasks:
        gs = torch.autograd.grad(
            losses[i], list(net.parameters()), retain_graph=True, allow_unused=True
        )
        ps = list(net.parameters())
        out[i] = [torch.zeros_like(p) if g is None else g for g, p in zip(gs, ps, strict=True)]
    return out


def test_accumulate_with_present_takes_each_task_mean_over_its_present_micro_batches() -> None:
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)) for _ in range(3)]
    masks = [
        torch.tensor([True, True, True]),
        torch.tensor([True, False, True]),
        torch.tensor([True, False, False]),
    ]
    net = Net()
    step = GradStep(M.get("mgda"))
    for (x, y), pm in zip(batches, masks, strict=True):
        lab = pm.float().expand(8, 3)
        step.accumulate(net.losses(x, y, lab), present=pm)
    res = step.backward_accumulated()
    got = _grads(net)
    assert all(bool(torch.isfinite(t).all()) for t in got) and not res.skipped

    # reference: each task's gradient averaged over the micro-batches where it is present
    ref = Net()
    sums = {i: None for i in range(3)}
    counts = [0, 0, 0]
    for (x, y), pm in zip(batches, masks, strict=True):
        L = ref.losses(x, y, pm.float().expand(8, 3))
        present = pm.nonzero().squeeze(-1).tolist()
        for i, gi in _flat_task_grads(ref, L, present).items():
            sums[i] = gi if sums[i] is None else [a + b for a, b in zip(sums[i], gi, strict=True)]
            counts[i] += 1
    mean = {i: [t / counts[i] for t in sums[i]] for i in range(3)}
    shared = [0, 1]  # the body's weight and bias are the parameters every task reaches
    J = torch.stack(
        [torch.cat([mean[i][j].reshape(-1) for j in shared]) for i in range(3)]
    ).double()
    w = M.get("mgda")(gram=J @ J.T)
    torch.testing.assert_close(res.weights, w.to(res.weights.dtype), rtol=1e-5, atol=1e-7)
    for j, t in enumerate(got):
        expect = sum(float(w[i]) * mean[i][j] for i in range(3))
        torch.testing.assert_close(t, expect.to(t.dtype), rtol=1e-5, atol=1e-6)


def test_accumulate_with_a_task_absent_from_the_whole_window() -> None:
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)
    pm = torch.tensor([True, False, True])
    net = Net()
    step = GradStep(M.get("upgrad"))
    for _ in range(2):
        step.accumulate(net.losses(x, y, pm.float().expand(8, 3)), present=pm)
    res = step.backward_accumulated()
    assert float(res.weights[1]) == 0.0 and torch.isnan(res.losses[1])
    assert net.heads[1].weight.grad is None
    ref = Net()
    L = ref.losses(x, y, pm.float().expand(8, 3))
    taskgrad.backward([L[0], L[2]], method=M.get("upgrad"))
    for a, b in zip(_grads(net), _grads(ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("source", ["full", "representation"])
def test_counts_give_the_masked_mean_over_the_window(source: str) -> None:
    """present= as counts (labelled examples per task and micro-batch): the accumulated loss of
    task i is Σ_m nᵢᵐ Lᵢᵐ / Σ_m nᵢᵐ, the masked mean over the window's whole batch; the Gram is
    that of its gradients (over the shared parameters, or at the representation z)."""
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(6, 5, generator=g) for _ in range(3)]
    ys = [torch.randn(6, 3, generator=g) for _ in range(3)]
    labs = [(torch.rand(6, 3, generator=g) < 0.5).float() for _ in range(3)]
    labs[1][:, 1] = 0.0  # task 1 unlabelled in micro-batch 1
    labs[0][:3, 0] = 1.0
    net = Net()
    step = GradStep(M.get("mgda"), source)
    for x, y, lab in zip(xs, ys, labs, strict=True):
        losses = net.losses(x, y, lab)
        step.accumulate(losses, present=lab.sum(0), features=net.z)
    res = step.backward_accumulated()
    assert not res.skipped

    ref = Net()
    L = ref.losses(torch.cat(xs), torch.cat(ys), torch.cat(labs))  # the masked means, by hand
    shared = [ref.body[0].weight, ref.body[0].bias] if source == "full" else [ref.z]
    J = torch.stack(
        [
            torch.cat([t.reshape(-1) for t in torch.autograd.grad(li, shared, retain_graph=True)])
            for li in L
        ]
    ).double()
    w = M.get("mgda")(gram=J @ J.T)
    torch.testing.assert_close(res.weights, w.to(res.weights.dtype), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(res.losses, torch.stack(L).detach(), rtol=1e-5, atol=1e-7)
    expect = torch.autograd.grad(sum(float(w[i]) * L[i] for i in range(3)), list(ref.parameters()))
    for a, b in zip(_grads(net), expect, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_counts_on_one_batch_act_as_the_mask_and_weight_takes_masks_only() -> None:
    x, y, mask, present = _batch(absent=(1,))
    a, b = Net(), Net()
    counts = torch.tensor([16, 0, 16])
    ra = taskgrad.backward(a.losses(x, y, mask), method=M.get("mgda"), present=counts)
    rb = taskgrad.backward(b.losses(x, y, mask), method=M.get("mgda"), present=present)
    torch.testing.assert_close(ra.weights, rb.weights, rtol=0, atol=0)
    for ga, gb in zip(_grads(a), _grads(b), strict=True):
        torch.testing.assert_close(ga, gb, rtol=0, atol=0)
    step = GradStep(M.get("mgda"))
    with pytest.raises(ValueError, match="bool present= mask"):
        step.accumulate(Net().losses(x, y, mask), present=counts, weight=0.5)


def test_accumulated_window_without_the_primary_follows_absent_primary() -> None:
    x, y, mask, present = _batch(absent=(0,))
    net = Net()
    step = GradStep(M.get("primary-aux"))
    for _ in range(2):
        step.accumulate(net.losses(x, y, mask), present=present)
    res = step.backward_accumulated()
    assert res.skipped and "primary" in res.reason
    assert all(p.grad is None for p in net.parameters())

    net = Net()
    opt = TaskOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), method=M.get("primary-aux"))
    for _ in range(2):
        opt.accumulate(net.losses(x, y, mask), present=present)
    net.zero_grad()
    res = opt.step(absent_primary=taskgrad.Mean())
    torch.testing.assert_close(res.weights, torch.tensor([0.0, 0.5, 0.5]))
