"""taskgrad.backward fills .grad exactly as the weighted summed loss would."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import taskgrad
from taskgrad import MGDA, Mean, PrimaryAux
from taskgrad.sources import parameter_gram


class Net(nn.Module):
    def __init__(self, k: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(k))

    def forward(self, x: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        z = self.encoder(x)
        return z, [
            ((h(z).squeeze(-1) - y) ** 2).mean() for h, y in zip(self.heads, ys, strict=True)
        ]


def data(k: int = 3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(32, 5, generator=g, dtype=torch.float64), torch.randn(
        k, 32, generator=g, dtype=torch.float64
    )


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_mean_reproduces_plain_mean_loss() -> None:
    x, ys = data()
    net = Net().double()
    _, L = net(x, ys)
    (sum(L) / 3).backward()
    ref = grads(net)
    net.zero_grad()
    _, L = net(x, ys)
    res = taskgrad.backward(L, method=Mean())
    for a, b in zip(grads(net), ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert res.gram is None  # Mean needs no Gram


def explicit_jacobian(net: Net, x, ys, wrt: list[torch.Tensor]) -> torch.Tensor:
    _, L = net(x, ys)
    rows = []
    for loss in L:
        gs = torch.autograd.grad(loss, wrt, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (torch.zeros_like(p) if g is None else g).flatten()
                    for g, p in zip(gs, wrt, strict=True)
                ]
            )
        )
    return torch.stack(rows)


@pytest.mark.parametrize("method", [PrimaryAux(), MGDA(), PrimaryAux(n_primary=2)])
def test_parameter_source_matches_explicit_jacobian(method) -> None:
    x, ys = data()
    net = Net().double()
    shared = list(net.encoder.parameters())
    J = explicit_jacobian(net, x, ys, shared)
    w_ref = method(gram=J @ J.T)
    d_ref = method.aggregate(J)
    torch.testing.assert_close(d_ref, J.T @ w_ref)
    # expected .grad of every parameter: the gradient of Σ w_ref_i L_i
    _, L = net(x, ys)
    (w_ref * torch.stack(L)).sum().backward()
    ref = grads(net)
    net.zero_grad()
    _, L = net(x, ys)
    res = taskgrad.backward(L, method=method)  # params=None finds the shared encoder
    torch.testing.assert_close(res.gram, J @ J.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.weights, w_ref, rtol=1e-8, atol=1e-10)
    got = torch.cat([p.grad.flatten() for p in shared])
    torch.testing.assert_close(got, d_ref, rtol=1e-8, atol=1e-10)
    for a, b in zip(grads(net), ref, strict=True):  # heads too
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_representation_source_matches_explicit_jacobian_at_features() -> None:
    x, ys = data()
    net = Net().double()
    z, L = net(x, ys)
    Jz = torch.stack([torch.autograd.grad(loss, z, retain_graph=True)[0].flatten() for loss in L])
    method = PrimaryAux()
    w_ref = method(gram=Jz @ Jz.T)
    (w_ref * torch.stack(L)).sum().backward()
    ref = grads(net)
    net.zero_grad()
    z, L = net(x, ys)
    res = taskgrad.backward(L, method=method, features=z)
    torch.testing.assert_close(res.gram, Jz @ Jz.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.weights, w_ref)
    for a, b in zip(grads(net), ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_chunked_and_looped_gram_equal_batched() -> None:
    x, ys = data()
    net = Net().double()
    _, L = net(x, ys)
    params = list(net.encoder.parameters())
    G = parameter_gram(L, params)
    G_chunk = parameter_gram(L, params, max_jacobian_numel=3 * 20)
    G_loop = parameter_gram(L, params, batched=False)
    torch.testing.assert_close(G_chunk, G)
    torch.testing.assert_close(G_loop, G)


def test_accumulates_and_works_with_optimizer_state() -> None:
    x, ys = data()
    net = Net().double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    ref = Net().double()
    ref.load_state_dict(net.state_dict())
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        _, L = net(x, ys)
        res = taskgrad.backward(L, method=PrimaryAux())
        opt.step()
        opt_ref.zero_grad()
        _, Lr = ref(x, ys)
        (res.weights * torch.stack(Lr)).sum().backward()
        opt_ref.step()
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    # existing .grad is accumulated into, as a plain backward does
    net.zero_grad()
    _, L = net(x, ys)
    taskgrad.backward(L, method=Mean())
    first = grads(net)
    _, L = net(x, ys)
    taskgrad.backward(L, method=Mean())
    for a, b in zip(grads(net), first, strict=True):
        torch.testing.assert_close(a, 2 * b)


def test_primary_aux_step_never_raises_an_auxiliary_loss_to_first_order() -> None:
    x, ys = data()
    net = Net().double()
    shared = list(net.encoder.parameters())
    _, L = net(x, ys)
    taskgrad.backward(L, params=shared, method=PrimaryAux())
    u = torch.cat([p.grad.flatten() for p in shared])
    J = explicit_jacobian(net, x, ys, shared)
    assert bool((J[1:] @ u >= -1e-10).all())


def test_errors_are_clear() -> None:
    x, ys = data()
    net = Net().double()
    z, L = net(x, ys)
    with pytest.raises(ValueError, match="scalar"):
        taskgrad.backward([L[0], torch.stack(L)])
    frozen = nn.Parameter(torch.zeros(3, dtype=torch.float64), requires_grad=False)
    with pytest.raises(ValueError, match="does not require grad"):
        taskgrad.backward(L, params=[frozen], method=MGDA())
    with pytest.raises(ValueError, match="not in the autograd graph"):
        taskgrad.backward(L, method=MGDA(), features=z.detach())
    other = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="not in the graph"):
        taskgrad.backward(L, method=MGDA(), features=other)
    side = (net.heads[0].weight ** 2).sum()  # a loss that skips the features
    with pytest.raises(ValueError, match=r"\[3\] do not depend on the features"):
        taskgrad.backward([*L, side], method=MGDA(), features=z)
    with pytest.raises(ValueError, match="does not require grad"):
        taskgrad.backward([torch.tensor(1.0)])
    with pytest.raises(TypeError, match="Weighting"):
        taskgrad.backward(L, method="mgda")
    with pytest.raises(ValueError, match="nothing to trade off"):
        a = nn.Parameter(torch.ones(2))
        b = nn.Parameter(torch.ones(2))
        taskgrad.backward([(a**2).sum(), (b**2).sum()], method=MGDA())


def test_nonfinite_raise_or_skip() -> None:
    x, ys = data()
    net = Net().double()
    _, L = net(x, ys)
    bad = [L[0] * float("nan"), *L[1:]]
    with pytest.raises(FloatingPointError, match="not finite"):
        taskgrad.backward(bad, method=MGDA(), nonfinite="raise")
    with pytest.raises(
        FloatingPointError, match="task 0 \\('a'\\)"
    ):  # the default raises, naming the task
        taskgrad.backward(bad, method=MGDA(), names=["a", "b", "c"])
    res = taskgrad.backward(bad, method=MGDA(), names=["a", "b", "c"], nonfinite="skip")
    assert res.skipped and "task 0 ('a')" in res.reason
    _, L = net(x, ys)
    res = taskgrad.backward([L[0] * float("inf"), *L[1:]], method=PrimaryAux(), nonfinite="skip")
    assert res.skipped
    assert all(p.grad is None for p in net.parameters())
    # a finite loss whose gradient overflows: the Gram is not finite
    _, L = net(x, ys)
    huge = [L[0] * 1e200, L[1] * 1e200, L[2]]
    res = taskgrad.backward(huge, method=MGDA(), nonfinite="skip")
    assert res.skipped and all(p.grad is None for p in net.parameters())
