"""Reference options of existing methods: DWA's sliding window (the Nash-MTL/FAMO repositories),
FAMO's and FairGrad's ``max_norm`` and FairGrad's ×k, UPGrad/DualProj with TorchJD's
``norm_eps``/``reg_eps`` (TorchJD's default numbers reproduced), and the other options below."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskgrad import methods as M
from tests.methods.methods_helpers import gram, jacobian, rel

A = pytest.importorskip("torchjd.aggregation")


def reference_dwa_window(loss_seq: list[np.ndarray], window: int, temp: float) -> list[np.ndarray]:
    """The repositories' DynamicWeightAverage: a 2W FIFO of losses filled with ones at the start;
    weights K·softmax(ratio/T) once more than W calls have been made (before this one)."""
    k = loss_seq[0].shape[0]
    costs = np.ones((window * 2, k))
    weights = np.ones(k)
    out = []
    for running, cost in enumerate(loss_seq):
        costs[:-1, :] = costs[1:, :]
        costs[-1, :] = cost
        if running > window:
            ws = costs[window:, :].mean(0) / costs[:window, :].mean(0)
            weights = (k * np.exp(ws / temp)) / np.exp(ws / temp).sum()
        out.append(weights.copy())
    return out


@pytest.mark.parametrize("window,temp", [(1, 2.0), (3, 2.0), (5, 0.5)])
def test_dwa_iteration_window_is_the_reference_fifo(window, temp):
    rng = np.random.default_rng(window)
    seq = [rng.uniform(0.1, 3.0, size=4) for _ in range(4 * window + 5)]
    ref = reference_dwa_window(seq, window, temp)
    m = M.DWA(temperature=temp, iteration_window=window)
    for L, r in zip(seq, ref, strict=True):
        assert rel(m(losses=torch.tensor(L)), torch.tensor(r)) < 1e-12


def test_dwa_window_state_resumes_and_validates():
    m = M.DWA(iteration_window=2)
    seq = [torch.rand(3, dtype=torch.float64) + 0.5 for _ in range(9)]
    for L in seq[:4]:
        m(losses=L)
    m2 = M.DWA(iteration_window=2)
    m2.load_state_dict(m.state_dict())
    for L in seq[4:]:
        assert torch.equal(m(losses=L), m2(losses=L))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="iteration_window must be a positive int"):
            M.DWA(iteration_window=bad)


def test_max_norm_attributes_of_famo_and_fairgrad():
    assert M.FAMO().max_norm is None and M.FairGrad().max_norm is None
    assert M.FAMO(max_norm=1).max_norm == 1.0 and M.FairGrad(max_norm=0.5).max_norm == 0.5
    assert M.get("famo", max_norm=2.0).max_norm == 2.0
    for bad in (0.0, -1.0, float("inf"), float("nan"), "1"):
        with pytest.raises(ValueError, match="max_norm must be a positive finite number or None"):
            M.FAMO(max_norm=bad)
        with pytest.raises(ValueError, match="max_norm must be a positive finite number or None"):
            M.FairGrad(max_norm=bad)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.0])
def test_fairgrad_scale_by_k(alpha):
    G = gram(jacobian(4, 9, 0, correlated=1.5))
    w = M.FairGrad(alpha)(gram=G)
    assert rel(M.FairGrad(alpha, scale_by_k=True)(gram=G), 4 * w) < 1e-14
    with pytest.raises(TypeError, match="scale_by_k must be True or False"):
        M.FairGrad(scale_by_k=1)


@pytest.mark.parametrize("seed", range(4))
def test_upgrad_dualproj_reproduce_torchjd_defaults(seed):
    J = jacobian(5, 12, seed)
    J[1] = -0.6 * J[0] + 0.3 * J[1]
    J = J * torch.logspace(-2, 2, 5, dtype=torch.float64)[:, None]
    G = gram(J)
    pref = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=torch.float64)
    assert rel(M.UPGrad(norm_eps=1e-4, reg_eps=1e-4)(gram=G), A.UPGradWeighting()(G)) < 1e-6
    assert rel(M.DualProj(norm_eps=1e-4, reg_eps=1e-4)(gram=G), A.DualProjWeighting()(G)) < 1e-6
    assert (
        rel(M.UPGrad(pref, norm_eps=1e-4, reg_eps=1e-4)(gram=G), A.UPGradWeighting(pref)(G)) < 1e-6
    )
    # the defaults stay the exact projection, which TorchJD's regularized one is not
    assert rel(M.UPGrad()(gram=G), A.UPGradWeighting()(G)) > 1e-6


def test_upgrad_eps_on_a_tiny_gram_and_validation():
    G = 1e-6 * gram(jacobian(3, 5, 0))  # trace below norm_eps: TorchJD zeroes the normalized Gram
    assert rel(M.UPGrad(norm_eps=1e-4, reg_eps=1e-4)(gram=G), A.UPGradWeighting()(G)) < 1e-6
    with pytest.raises(ValueError, match="reg_eps must be a finite number ≥ 0"):
        M.UPGrad(reg_eps=-1.0)
    with pytest.raises(ValueError, match="norm_eps must be a finite number ≥ 0"):
        M.DualProj(norm_eps=float("nan"))


@pytest.mark.parametrize("beta,beta_sigma", [(0.9, 0.5), (0.5, 0.0), (1.0, 1.0)])
def test_db_mtl_gradient_moving_average_is_libmtl(beta, beta_sigma):
    """LibMTL's DB_MTL: buffer ← g + β/t^σ (buffer − g) with g the log-loss gradients (buffer 0 at
    the start), d = Σ (max‖buffer‖/(‖bufferᵢ‖ + 1e-8)) bufferᵢ."""
    m = M.DBMTL(beta=beta, beta_sigma=beta_sigma)
    assert m.needs == frozenset({"jacobian", "losses"})
    buf = torch.zeros(4, 10, dtype=torch.float64)
    for t in range(1, 7):
        J = jacobian(4, 10, t) * torch.tensor([[1.0], [10.0], [0.1], [2.0]], dtype=torch.float64)
        L = torch.rand(4, generator=torch.Generator().manual_seed(t), dtype=torch.float64) + 0.2
        g = J / (L + 1e-8)[:, None]
        buf = g + (beta / t**beta_sigma) * (buf - g)
        u = buf.norm(dim=-1)
        ref = sum((u.max() / (u[i] + 1e-8)) * buf[i] for i in range(4))
        assert rel(m.aggregate(J, losses=L), ref) < 1e-12
    state = m.state_dict()
    m2 = M.DBMTL(beta=beta, beta_sigma=beta_sigma)
    m2.load_state_dict(state)
    J, L = jacobian(4, 10, 99), torch.full((4,), 0.5, dtype=torch.float64)
    assert torch.equal(m.aggregate(J, losses=L), m2.aggregate(J, losses=L))
    with pytest.raises(TypeError, match="needs the Jacobian"):
        m(gram=gram(J), losses=L)


def test_db_mtl_beta_zero_is_the_gram_step():
    J, L = jacobian(3, 8, 0), torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    assert (
        rel(M.DBMTL(beta=0.0).aggregate(J, losses=L), M.DBMTL()(gram=gram(J), losses=L) @ J) < 1e-12
    )
    # the first moving-average step is (1 - beta) times the beta = 0 step (same rescaling)
    assert (
        rel(M.DBMTL(beta=0.5).aggregate(J, losses=L), 0.5 * M.DBMTL().aggregate(J, losses=L)) < 1e-7
    )
    with pytest.raises(ValueError, match="beta must be a finite number in"):
        M.DBMTL(beta=1.5)


def gradvac_k2(J: torch.Tensor, rho: torch.Tensor, beta: float, eps: float = 1e-8) -> torch.Tensor:
    """GradVac (Algorithm 1 of the paper, TorchJD's update) for two tasks on one block (the task
    order is then fixed): each task's gradient is steered towards the EMA target similarity of the
    other; rho is updated in place at every visit. LibMTL's code differs in one line: it updates
    the EMA only on the visits that steer."""
    pc = J.clone()
    for i, j in ((0, 1), (1, 0)):
        rho_ij = torch.dot(pc[i], J[j]) / (pc[i].norm() * J[j].norm() + eps)
        if rho_ij < rho[i, j]:
            w = (
                pc[i].norm()
                * (rho[i, j] * (1 - rho_ij**2).sqrt() - rho_ij * (1 - rho[i, j] ** 2).sqrt())
                / (J[j].norm() * (1 - rho[i, j] ** 2).sqrt() + eps)
            )
            pc[i] = pc[i] + J[j] * w
        rho[i, j] = (1 - beta) * rho[i, j] + beta * rho_ij
    return pc.sum(0)


def test_blockwise_gradvac_is_per_layer_gradvac():
    sizes = [6, 3, 5]
    m = M.Blockwise("gradvac", block_sizes=sizes, generator=torch.Generator().manual_seed(0))
    rhos = [torch.zeros(2, 2, dtype=torch.float64) for _ in sizes]
    for t in range(6):
        J = jacobian(2, sum(sizes), t)
        J[1] = -0.5 * J[0] + J[1]
        ref = torch.cat(
            [gradvac_k2(b, r, 0.5) for b, r in zip(torch.split(J, sizes, dim=1), rhos, strict=True)]
        )
        assert rel(m.aggregate(J, losses=torch.ones(2, dtype=torch.float64)), ref) < 1e-12


def test_blockwise_one_block_is_the_method_and_blocks_from_parameters():
    J, L = jacobian(3, 8, 1), torch.ones(3, dtype=torch.float64)
    assert rel(M.Blockwise(M.UPGrad()).aggregate(J, losses=L), M.UPGrad().aggregate(J)) < 1e-12
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    params = list(net.parameters())
    assert M.parameter_blocks(params, "matrix") == [12, 4, 8, 2]
    assert M.parameter_blocks(params, "layer", module=net) == [16, 10]
    assert M.parameter_blocks(params, "all") == [26]
    with pytest.raises(ValueError, match="add up to 5"):
        M.Blockwise(block_sizes=[2, 3]).aggregate(J, losses=L)
    with pytest.raises(ValueError, match="needs the module"):
        M.parameter_blocks(params, "layer")
    with pytest.raises(TypeError, match="not a Jacobian aggregator"):
        M.Blockwise(M.ConFIG())


def test_blockwise_trains_through_the_step_with_params_in_block_order():
    import taskgrad

    torch.manual_seed(0)
    trunk = torch.nn.Sequential(
        torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 5)
    ).double()
    heads = torch.nn.Linear(5, 2).double()
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    params = list(trunk.parameters())
    m = M.Blockwise(M.UPGrad(), block_sizes=M.parameter_blocks(params, "layer", module=trunk))
    L = ((heads(trunk(x)) - y) ** 2).mean(0)
    taskgrad.backward(L, params=params, method=m)
    L = ((heads(trunk(x)) - y) ** 2).mean(0)
    J = torch.stack(
        [
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(L[i], params, retain_graph=True)])
            for i in range(2)
        ]
    )
    d = torch.cat([M.UPGrad()(gram=b @ b.T) @ b for b in torch.split(J, [25, 30], dim=1)])
    assert rel(torch.cat([p.grad.reshape(-1) for p in params]), d) < 1e-10


def libmtl_stch_weights(loss_seq, mu, warmup_epoch, steps_per_epoch):
    """LibMTL's STCH as the gradient of its loss with respect to the losses, epoch by epoch."""
    out, total, count, nadir = [], 0.0, 0, None
    for t, L in enumerate(loss_seq):
        epoch = t // steps_per_epoch
        Lr = L.clone().requires_grad_(True)
        if epoch <= warmup_epoch:
            loss = torch.log(Lr + 1e-20).sum()
            if epoch == warmup_epoch:
                total, count = total + L, count + 1
        else:
            if nadir is None:
                nadir = total / count
            ll = torch.log(Lr / nadir + 1e-20)
            loss = mu * torch.log(torch.exp((ll - ll.max().detach()) / mu).sum()) * L.shape[0]
        loss.backward()
        out.append(Lr.grad)
    return out


@pytest.mark.parametrize("mu,warmup", [(1.0, 0), (0.3, 1)])
def test_stch_log_nadir_recipe_is_libmtl(mu, warmup):
    g = torch.Generator().manual_seed(0)
    seq = [torch.rand(3, generator=g, dtype=torch.float64) * 2 + 0.1 for _ in range(12)]
    ref = libmtl_stch_weights(seq, mu, warmup, steps_per_epoch=3)
    m = M.STCH(mu=mu, recipe="log-nadir", warmup_epoch=warmup, steps_per_epoch=3)
    for L, r in zip(seq, ref, strict=True):
        assert rel(m(losses=L), r) < 1e-12
    state = m.state_dict()
    m2 = M.STCH(mu=mu, recipe="log-nadir", warmup_epoch=warmup, steps_per_epoch=3)
    m2.load_state_dict(state)
    assert torch.equal(m2(losses=seq[0]), m(losses=seq[0]))


def test_stch_recipe_epochs_by_hand_and_validation():
    m = M.STCH(recipe="log-nadir", warmup_epoch=0, steps_per_epoch=None)
    L = torch.tensor([0.5, 2.0], dtype=torch.float64)
    assert rel(m(losses=L), 1 / (L + 1e-20)) < 1e-12
    m.end_epoch()
    w = m(losses=L)  # nadir = L: log(L/nadir) = 0, equal softmax
    assert rel(w, 2 * 0.5 / L) < 1e-12
    with pytest.raises(ValueError, match="recipe"):
        M.STCH(recipe="nadir")
    with pytest.raises(ValueError, match="pref_vector and reference"):
        M.STCH(recipe="log-nadir", pref_vector=torch.ones(2))


@pytest.mark.parametrize(
    "flag,convention", [(None, None), (True, "weighted"), (False, "unweighted")]
)
def test_aligned_mtl_scale_decoder_grad_sets_the_head_convention(flag, convention):
    m = M.AlignedMTL(scale_decoder_grad=flag)
    assert getattr(m, "head_convention", None) == convention
    step = __import__("taskgrad").training.GradStep(m)
    assert step.heads == (convention or "weighted")


def libmtl_gradnorm_run(Gs, Ls, alpha, lr, warmup):
    """LibMTL's GradNorm: ξ = 1 (k·softmax(ξ) = 1) during the first epoch (``warmup`` calls, a
    plain sum), whose mean losses are L(0); then w = k·softmax(ξ), Gᵢ = ‖wᵢgᵢ‖, target
    mean(G)·rᵢ^α held constant, ξ takes an SGD step on Σ|Gᵢ − target|; the weights returned are
    those before the step."""
    k = Ls[0].shape[0]
    xi = torch.ones(k, dtype=torch.float64, requires_grad=True)
    buf = torch.zeros(k, dtype=torch.float64)
    out = []
    for t, (G, L) in enumerate(zip(Gs, Ls, strict=True)):
        if t < warmup:
            buf += L / warmup
            out.append(torch.ones(k, dtype=torch.float64))
            continue
        w = k * torch.softmax(xi, -1)
        G_per = w * torch.diagonal(G).sqrt()
        Lr = L / buf
        r = Lr / Lr.mean()
        const = (G_per.mean() * r**alpha).detach()
        (G_per - const).abs().sum().backward()
        out.append(w.detach().clone())
        with torch.no_grad():
            xi -= lr * xi.grad
        xi.grad = None
    return out


@pytest.mark.parametrize("alpha", [0.5, 1.5])
def test_gradnorm_softmax_parametrization_is_libmtl(alpha):
    Gs = [
        gram(jacobian(3, 8, t) * torch.tensor([[1.0], [3.0], [0.3]], dtype=torch.float64))
        for t in range(8)
    ]
    Ls = [
        torch.rand(3, generator=torch.Generator().manual_seed(t), dtype=torch.float64) + 0.5
        for t in range(8)
    ]
    ref = libmtl_gradnorm_run(Gs, Ls, alpha, 0.1, warmup=3)
    m = M.GradNorm(alpha=alpha, lr=0.1, optimizer="sgd", parametrization="softmax", warmup_steps=3)
    for G, L, r in zip(Gs, Ls, ref, strict=True):
        assert rel(m(gram=G, losses=L), r) < 1e-12


def test_gradnorm_warmup_on_the_paper_parametrization_and_validation():
    G, L = gram(jacobian(3, 8, 0)), torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    m = M.GradNorm(warmup_steps=2)
    assert torch.equal(m(gram=G, losses=L), torch.ones(3, dtype=torch.float64))
    assert torch.equal(m(gram=G, losses=2 * L), torch.ones(3, dtype=torch.float64))
    assert m(gram=G, losses=L).shape == (3,)
    with pytest.raises(ValueError, match="parametrization"):
        M.GradNorm(parametrization="exp")
