"""Noisy labels with a clean set: the constraint step by step, GLMask from its formula, the
noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import taskgrad
from taskgrad.noisy import CleanSetTrainer, glmask_alignment, pair_flip_noise, symmetric_noise


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g, dtype=torch.float64)
    w_true = torch.randn(5, 3, generator=g, dtype=torch.float64)
    y = (x @ w_true).argmax(-1)
    y_noisy = (y + 1) % 3  # adversarial noise: the noisy gradient fights the clean one
    clean = [(x[:16], y[:16]), (x[16:32], y[16:32])]
    return (x[32:], y_noisy[32:]), clean


def _grad(model, batch) -> torch.Tensor:
    loss = F.cross_entropy(model(batch[0]), batch[1])
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def _clean_losses(model, clean) -> list[float]:
    with torch.no_grad():
        return [float(F.cross_entropy(model(x), y)) for x, y in clean]


def _run(strategy: str, steps: int = 15, lr: float = 0.5):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    trainer = CleanSetTrainer(model, torch.optim.SGD(model.parameters(), lr=lr), strategy)
    noisy, clean = _problem()
    # smoothness of softmax cross-entropy of a linear model: ‖∇²‖ ≤ ½ max‖(x, 1)‖²
    beta = 0.5 * float(max((b[0].pow(2).sum(-1) + 1).max() for b in clean))
    records = []
    for _ in range(steps):
        gcs = [_grad(model, b) for b in clean]
        before = _clean_losses(model, clean)
        trainer.step(noisy, clean)
        u = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        after = _clean_losses(model, clean)
        records.append((u, gcs, before, after, beta))
    return records


def test_clean_constraint_holds_step_by_step() -> None:
    lr = 0.5
    for u, gcs, before, after, beta in _run("primary_aux", lr=lr):
        for gc, b, a in zip(gcs, before, after, strict=True):
            assert float(u @ gc) >= -1e-10 * (1 + u.norm() * gc.norm())  # first order: no increase
            # descent lemma: L(θ − ηu) ≤ L(θ) − η⟨g, u⟩ + ½βη²‖u‖² ≤ L(θ) + ½βη²‖u‖²
            assert a <= b + 0.5 * beta * lr**2 * float(u @ u) + 1e-12


def test_noisy_only_violates_the_constraint() -> None:
    # the same problem without the constraint: the noisy step raises a clean loss to first order
    assert any(float(u @ gc) < 0 for u, gcs, *_ in _run("noisy") for gc in gcs)


def test_primary_aux_step_equals_taskgrad_backward() -> None:
    torch.manual_seed(1)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()
    twin = torch.nn.Sequential(
        torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()
    twin.load_state_dict(model.state_dict())
    noisy, clean = _problem(3)
    CleanSetTrainer(model, torch.optim.SGD(model.parameters(), lr=0.0)).step(noisy, clean)
    losses = [F.cross_entropy(twin(noisy[0]), noisy[1])] + [
        F.cross_entropy(twin(x), y) for x, y in clean
    ]
    taskgrad.backward(losses, params=list(twin.parameters()), method=taskgrad.PrimaryAux())
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-12)


@pytest.mark.parametrize("strategy", ["noisy", "clean", "sum"])
def test_baseline_gradients(strategy: str) -> None:
    torch.manual_seed(2)
    model = torch.nn.Linear(5, 3).double()
    noisy, clean = _problem(4)
    gn = _grad(model, noisy)
    gc = torch.stack([_grad(model, b) for b in clean]).mean(0)
    CleanSetTrainer(model, torch.optim.SGD(model.parameters(), lr=0.0), strategy).step(noisy, clean)
    u = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    expected = {"noisy": gn, "clean": gc, "sum": gn + gc}[strategy]
    assert torch.allclose(u, expected, atol=1e-12)


def test_glmask_from_the_paper_formula() -> None:
    """GLMask (arXiv 2102.13549): mᵢ = 1[⟨∇ℓᵢ, g_clean⟩ > 0], step on (1/n) Σ mᵢℓᵢ."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)
    ).double()
    noisy, clean = _problem(5)
    params = list(model.parameters())
    g_clean = torch.stack([_grad(model, b) for b in clean]).mean(0)
    x, y = noisy
    per_example = []  # independent: one backward per example
    for i in range(x.shape[0]):
        li = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        per_example.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(li, params)]))
    P = torch.stack(per_example)
    s_ref = P @ g_clean
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in params]
    direction = {
        n: t.view_as(p) for n, t, p in zip(names, torch.split(g_clean, sizes), params, strict=True)
    }
    s = glmask_alignment(
        model, lambda o, t: F.cross_entropy(o, t, reduction="none"), noisy, direction
    )
    assert torch.allclose(s, s_ref, atol=1e-12)
    mask = (s_ref > 0).double()
    assert 0 < mask.sum() < mask.numel()  # the adversarial noise makes the mask non-trivial
    expected = (mask[:, None] * P).sum(0) / x.shape[0]
    res = CleanSetTrainer(model, torch.optim.SGD(params, lr=0.0), "glmask").step(noisy, clean)
    u = torch.cat([p.grad.reshape(-1) for p in params])
    assert torch.allclose(u, expected, atol=1e-12)
    assert res.kept_fraction == pytest.approx(float(mask.mean()))


def test_trainer_errors() -> None:
    model = torch.nn.Linear(5, 3)
    with pytest.raises(ValueError, match="strategy"):
        CleanSetTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "coteaching")
    tr = CleanSetTrainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "sum")
    with pytest.raises(ValueError, match="clean batch"):
        tr.step((torch.randn(4, 5), torch.zeros(4, dtype=torch.long)), None)
    bad = CleanSetTrainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), "noisy", loss_fn=F.cross_entropy
    )
    with pytest.raises(ValueError, match="one loss per example"):
        bad.step((torch.randn(4, 5), torch.zeros(4, dtype=torch.long)))


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.6, 1.0])
def test_label_noise(rate: float) -> None:
    rng = np.random.default_rng(0)
    y = np.arange(1000) % 10
    ys, flipped = symmetric_noise(y, rate, 10, rng)
    assert flipped.sum() == round(rate * 1000)
    assert np.array_equal(ys != y, flipped)  # a flipped label never lands on the true class
    yp, fp = pair_flip_noise(y, rate, 10, rng)
    assert fp.sum() == round(rate * 1000)
    assert np.array_equal(yp[fp], (y[fp] + 1) % 10) and np.array_equal(yp[~fp], y[~fp])
    if rate == 0.6:  # symmetric targets spread over all other classes
        assert len(np.unique((ys[flipped] - y[flipped]) % 10)) == 9


def test_label_noise_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="rate"):
        symmetric_noise(np.zeros(3, dtype=int), 1.5, 10, rng)
    with pytest.raises(ValueError, match="integer"):
        pair_flip_noise(np.zeros(3), 0.5, 10, rng)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        symmetric_noise(np.array([11]), 0.5, 10, rng)
