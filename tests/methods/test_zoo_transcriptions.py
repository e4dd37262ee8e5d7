"""The LibMTL / FAMO-repository methods of the zoo against the authors' update rules, written out
here independently (from the papers and reference code) on a small least-squares problem whose
task gradients come from autograd: MoCo, hybrid IMTL, LOG-MGDA, LOG-CAGrad and LOG-IMTLG."""

from __future__ import annotations

import pytest
import torch

from taskgrad.methods.gram.imtl_hybrid import HybridIMTL
from taskgrad.methods.gram.log_cagrad import LogCAGrad
from taskgrad.methods.gram.log_imtlg import LogIMTLG
from taskgrad.methods.gram.log_mgda import LogMGDA
from taskgrad.methods.jacobian.moco import MoCo
from tests.methods.methods_helpers import rel

cp = pytest.importorskip("cvxpy")


class Problem:
    """k least-squares tasks on a shared θ ∈ R^P: Lᵢ(θ) = ½‖Aᵢθ − bᵢ‖²/n + offsetᵢ."""

    def __init__(
        self, k: int = 4, P: int = 7, seed: int = 0, scales: list[float] | None = None
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(k, 5, P, generator=g, dtype=torch.float64)
        self.b = torch.randn(k, 5, generator=g, dtype=torch.float64)
        self.scale = torch.tensor(scales or [1.0] * k, dtype=torch.float64)
        self.theta = torch.randn(P, generator=g, dtype=torch.float64).requires_grad_(True)
        self.k = k

    def losses(self) -> torch.Tensor:
        r = torch.einsum("knp,p->kn", self.A, self.theta) - self.b
        return self.scale * (0.5 * (r**2).mean(1) + 0.05)

    def jacobian(self, f=lambda L: L) -> tuple[torch.Tensor, torch.Tensor]:
        L = self.losses()
        rows = [
            torch.autograd.grad(f(L[i]), self.theta, retain_graph=True)[0] for i in range(self.k)
        ]
        return torch.stack(rows), L.detach()

    def grad_of(self, scalar_fn) -> torch.Tensor:
        return torch.autograd.grad(scalar_fn(self.losses()), self.theta)[0]

    def step(self, d: torch.Tensor, lr: float = 0.05) -> None:
        with torch.no_grad():
            self.theta -= lr * d


def ours_direction(method, prob: Problem) -> torch.Tensor:
    J, L = prob.jacobian()
    return method(gram=J @ J.T, losses=L) @ J


def simplex_min_norm(G: torch.Tensor) -> torch.Tensor:
    k = G.shape[0]
    w = cp.Variable(k)
    R = torch.linalg.cholesky(G + 1e-14 * torch.eye(k, dtype=G.dtype)).numpy()
    cp.Problem(cp.Minimize(cp.sum_squares(R.T @ w)), [w >= 0, cp.sum(w) == 1]).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-14, tol_gap_rel=1e-14, tol_feas=1e-14
    )
    return torch.tensor(w.value, dtype=torch.float64).clamp_min(0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_mgda_is_the_reference_log_loss(seed):
    prob = Problem(seed=seed, scales=[1.0, 10.0, 0.1, 3.0])
    eps = 1e-8
    for _ in range(3):
        Jlog, L = prob.jacobian(lambda x: (x + eps).log())
        sol = simplex_min_norm(Jlog @ Jlog.T)
        c = (sol / (L + eps)).sum()
        ref = prob.grad_of(lambda Lt, sol=sol, c=c: ((Lt + eps).log() * sol / c).sum())
        ours = ours_direction(LogMGDA(), prob)
        assert rel(ours, ref) < 1e-6
        prob.step(ours)


def famo_cagrad(grads: torch.Tensor, alpha: float) -> torch.Tensor:
    """The FAMO repository's CAGrad step on rows ``grads`` (k, P): inner problem by cvxpy."""
    k = grads.shape[0]
    GG = grads @ grads.T
    g0_norm = float((GG.mean() + 1e-8).sqrt())
    c = alpha * g0_norm + 1e-8
    b = torch.full((k,), 1.0 / k, dtype=torch.float64)
    x = cp.Variable(k)
    R = torch.linalg.cholesky(GG + 1e-14 * torch.eye(k, dtype=GG.dtype)).numpy()
    objective = (GG @ b).numpy() @ x + c * cp.norm(R.T @ x)
    cp.Problem(cp.Minimize(objective), [x >= 0, cp.sum(x) == 1]).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10
    )
    w = torch.tensor(x.value, dtype=torch.float64)
    gw = w @ grads
    lmbda = c / (gw.norm() + 1e-8)
    g = grads.mean(0) + lmbda * gw
    return g / (1 + alpha**2) * k  # rescale=1, then overwrite_grad multiplies by n_tasks


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("c", [0.4, 1.0])
def test_log_cagrad_is_the_reference_step(seed, c):
    prob = Problem(seed=seed, scales=[1.0, 10.0, 0.1, 3.0])
    for _ in range(3):
        Jlog, _ = prob.jacobian(lambda x: x.log())
        ref = famo_cagrad(Jlog, c)
        ours = ours_direction(LogCAGrad(c=c), prob)
        assert rel(ours, ref) < 1e-5
        prob.step(ours)


def imtlg_closed_form(grads: torch.Tensor) -> torch.Tensor:
    """IMTL-G's closed form (Liu et al. 2021): α₂.. = g₁Uᵀ(DUᵀ)⁻¹, α₁ = 1 − Σα₂.."""
    units = grads / grads.norm(dim=1, keepdim=True)
    D = grads[0:1] - grads[1:]
    U = units[0:1] - units[1:]
    a = grads[0] @ U.T @ torch.linalg.inv(D @ U.T)
    return torch.cat([1 - a.sum().unsqueeze(0), a])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_imtlg_is_the_reference_log_loss(seed):
    prob = Problem(seed=seed, scales=[1.0, 10.0, 0.1, 3.0])
    eps = 1e-8
    for _ in range(3):
        Jlog, _ = prob.jacobian(lambda x: (x + eps).log())
        alpha = imtlg_closed_form(Jlog)
        ref = prob.grad_of(lambda Lt, alpha=alpha: ((Lt + eps).log() * alpha).sum())
        ours = ours_direction(LogIMTLG(), prob)
        assert rel(ours, ref) < 1e-8
        prob.step(ours, lr=0.01)


@pytest.mark.parametrize("seed", [0, 1])
def test_hybrid_imtl_is_libmtl_imtl_with_sgd_on_the_scales(seed):
    prob = Problem(seed=seed, scales=[1.0, 10.0, 0.1, 3.0])
    lr = 0.1
    s = torch.zeros(prob.k, dtype=torch.float64)
    ours_m = HybridIMTL(lr=lr, optimizer="sgd")
    for _ in range(5):
        # LibMTL: L̃ = e^s L − s, gradients of L̃, closed-form IMTL-G on them, d = Σ α ∇L̃
        J, L = prob.jacobian()
        scaled = torch.exp(s)[:, None] * J
        alpha = imtlg_closed_form(scaled)
        ref = alpha @ scaled
        ours = ours_m(gram=J @ J.T, losses=L) @ J
        assert rel(ours, ref) < 1e-8
        s = s - lr * (torch.exp(s) * L - 1.0)  # ∂L̃ᵢ/∂sᵢ, one SGD step
        assert rel(ours_m.log_scale, s) < 1e-12
        prob.step(ours, lr=0.01)


@pytest.mark.parametrize("seed", [0, 1])
def test_moco_is_libmtl_moco(seed):
    prob = Problem(seed=seed, scales=[1.0, 10.0, 0.1, 3.0])
    beta, beta_sigma, gamma, gamma_sigma, rho = 0.5, 0.5, 0.1, 0.5, 0.01
    k = prob.k
    y = torch.zeros(k, prob.theta.numel(), dtype=torch.float64)
    lam = torch.full((k,), 1.0 / k, dtype=torch.float64)
    ours_m = MoCo(beta, beta_sigma, gamma, gamma_sigma, rho)
    for step in range(1, 6):
        J, L = prob.jacobian()
        g = torch.stack([J[i] / (J[i].norm() + 1e-8) * L[i] for i in range(k)])
        y = y - (beta / step**beta_sigma) * (y - g)
        lam = torch.softmax(
            lam
            - (gamma / step**gamma_sigma)
            * (y @ y.T + rho * torch.eye(k, dtype=torch.float64))
            @ lam,
            -1,
        )
        ref = y.T @ lam
        ours = ours_m.aggregate(J, losses=L)
        assert rel(ours, ref) < 1e-12
        prob.step(ours)
