"""Cross-check every method that TorchJD 0.18 also has, on the same Jacobians, to 1e-5 relative.

TorchJD is a test-only peer. Where TorchJD's own solver is approximate (Clarabel for CAGrad,
the cvxpy CCP loop for Nash-MTL), the comparison is on instances where it converges, and the
exactness of ours is checked separately (objective value, KKT residual).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from taskgrad import methods as M
from tests.methods.methods_helpers import gram, jacobian, rel

A = pytest.importorskip("torchjd.aggregation")
S = pytest.importorskip("torchjd.scalarization")

SEEDS = [0, 1, 2, 3]


def conflicting(seed: int, k: int = 5, P: int = 12) -> torch.Tensor:
    J = jacobian(k, P, seed)
    J[1] = -0.6 * J[0] + 0.3 * J[1]  # a strong conflict
    return J


def exact_projector():
    from torchjd._linalg import QuadprogProjector

    # TorchJD's default adds 1e-4·I to the normalized Gram; without it quadprog solves the exact QP
    return QuadprogProjector(reg_eps=0.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_pcgrad_matches_torchjd_with_same_seed(seed):
    G = gram(conflicting(seed))
    torch.manual_seed(100 + seed)
    ref = A.PCGradWeighting()(G)
    ours = M.PCGrad(generator=torch.Generator().manual_seed(100 + seed))(gram=G)
    assert rel(ours, ref) < 1e-12


def test_gradvac_matches_torchjd_over_a_run():
    Js = [conflicting(s) for s in range(6)]
    ref_m = A.GradVacWeighting(beta=0.3)
    ours_m = M.GradVac(beta=0.3, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(7)
    refs = [ref_m(gram(J)) for J in Js]
    for J, ref in zip(Js, refs, strict=True):
        assert rel(ours_m(gram=gram(J)), ref) < 1e-10


@pytest.fixture
def tight_clarabel(monkeypatch):
    """Run TorchJD's CAGrad with Clarabel at tight tolerances (its defaults stop near 1e-5)."""
    import cvxpy as cp

    solve = cp.Problem.solve

    def tight(self, *args, **kwargs):
        if args and args[0] == cp.CLARABEL:
            kwargs.update(tol_gap_abs=1e-13, tol_gap_rel=1e-13, tol_feas=1e-13, tol_ktratio=1e-13)
        return solve(self, *args, **kwargs)

    monkeypatch.setattr(cp.Problem, "solve", tight)


def _cagrad_objective(G, weights, c):
    k = G.shape[0]
    w = weights - 1.0 / k
    w = w / w.sum()
    b = G.sum(1) / k
    r = c * float(b.sum() / k) ** 0.5
    return float(b @ w + r * (w @ G @ w).clamp_min(0).sqrt())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("c", [0.1, 0.4, 0.9, 2.0])
def test_cagrad_matches_torchjd(seed, c, tight_clarabel):
    G = gram(conflicting(seed))
    assert rel(M.CAGrad(c=c)(gram=G), A.CAGradWeighting(c=c)(G)) < 1e-5


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("c", [0.4, 2.0])
def test_cagrad_is_at_least_as_optimal_as_torchjd_default(seed, c):
    # with its default tolerances TorchJD's Clarabel solve is ~1e-5 accurate; ours is exact, so
    # its inner objective F(w) = <g_w, g0> + c||g0|| ||g_w|| is never worse.
    G = gram(conflicting(seed))
    ours, ref = M.CAGrad(c=c)(gram=G), A.CAGradWeighting(c=c)(G)
    assert _cagrad_objective(G, ours, c) <= _cagrad_objective(G, ref, c) + 1e-12


@pytest.mark.parametrize("seed", SEEDS)
def test_imtlg_matches_torchjd(seed):
    G = gram(conflicting(seed))
    assert rel(M.IMTLG()(gram=G), A.IMTLGWeighting()(G)) < 1e-10


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["min", "median", "rmse"])
def test_aligned_mtl_matches_torchjd(seed, mode):
    G = gram(conflicting(seed))
    assert (
        rel(M.AlignedMTL(scale_mode=mode)(gram=G), A.AlignedMTLWeighting(scale_mode=mode)(G))
        < 1e-10
    )


def test_aligned_mtl_rank_deficient_matches_torchjd():
    J = jacobian(5, 3, 4)  # rank 3 < k
    G = gram(J)
    for mode in ["min", "median", "rmse"]:
        assert (
            rel(M.AlignedMTL(scale_mode=mode)(gram=G), A.AlignedMTLWeighting(scale_mode=mode)(G))
            < 1e-8
        )


@pytest.mark.parametrize("seed", SEEDS)
def test_upgrad_and_dualproj_match_torchjd(seed):
    G = gram(conflicting(seed))
    pref = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=torch.float64)
    assert rel(M.UPGrad()(gram=G), A.UPGradWeighting(projector=exact_projector())(G)) < 1e-8
    assert rel(M.DualProj()(gram=G), A.DualProjWeighting(projector=exact_projector())(G)) < 1e-8
    assert (
        rel(M.UPGrad(pref)(gram=G), A.UPGradWeighting(pref, projector=exact_projector())(G)) < 1e-8
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_matches_torchjd(seed, alpha):
    G = gram(jacobian(4, 10, seed, correlated=1.0))
    assert rel(M.FairGrad(alpha)(gram=G), A.FairGradWeighting(alpha)(G)) < 1e-5


def test_fairgrad_alpha_zero_is_uniform_like_torchjd():
    G = gram(jacobian(4, 10, 0))
    assert rel(M.FairGrad(0.0)(gram=G), A.FairGradWeighting(0.0)(G)) < 1e-12


@pytest.mark.parametrize("seed", SEEDS)
def test_nash_mtl_matches_torchjd_where_its_loop_converges(seed):
    J = jacobian(5, 12, seed, correlated=1.5)  # aligned tasks: the CCP loop converges
    ref = A.NashMTL(n_tasks=5, max_norm=0.0, optim_niter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alpha_ref = ref.weighting(J)
    G = gram(J)
    kkt_ref = alpha_ref * (G @ alpha_ref)
    if float((kkt_ref - 1).abs().max()) > 1e-4:
        pytest.skip("TorchJD's CCP loop did not converge on this instance")
    assert rel(M.NashMTL(max_norm=0.0)(gram=G), alpha_ref) < 1e-5


def test_nash_mtl_clipping_matches_torchjd():
    J = 3.0 * jacobian(4, 12, 9, correlated=1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = A.NashMTL(n_tasks=4, max_norm=0.5, optim_niter=50).weighting(J)
    ours = M.NashMTL(max_norm=0.5)(gram=gram(J))
    assert rel(ours, ref) < 1e-5
    assert float((ours @ J).norm()) == pytest.approx(0.5, rel=1e-10)


def test_random_gradient_and_rlw_match_torchjd_with_same_seed():
    J = jacobian(6, 4, 0)
    torch.manual_seed(11)
    ref = A.RandomWeighting()(J)
    assert rel(M.RandomGradient(torch.Generator().manual_seed(11))(gram=gram(J)), ref) < 1e-15
    L = torch.rand(6, dtype=torch.float64) + 0.1
    torch.manual_seed(12)
    Lr = L.clone().requires_grad_(True)
    S.Random()(Lr).backward()
    assert rel(M.RLW(torch.Generator().manual_seed(12))(losses=L), Lr.grad) < 1e-15


def scalarizer_weights(scalarizer, L):
    """∂S/∂L by autograd: the weights that TorchJD's scalarizer puts on each loss."""
    Lr = L.clone().requires_grad_(True)
    scalarizer(Lr).backward()
    return Lr.grad


@pytest.mark.parametrize("seed", SEEDS)
def test_geometric_mean_and_stch_match_torchjd(seed):
    L = torch.rand(5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3 + 0.05
    assert rel(M.GeometricMean()(losses=L), scalarizer_weights(S.GeometricMean(), L)) < 1e-12
    pref = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25], dtype=torch.float64)
    z = torch.full((5,), 0.01, dtype=torch.float64)
    for mu in [0.05, 1.0]:
        assert rel(M.STCH(mu)(losses=L), scalarizer_weights(S.STCH(mu), L)) < 1e-12
        ours = M.STCH(mu, pref_vector=pref, reference=z)(losses=L)
        assert rel(ours, scalarizer_weights(S.STCH(mu, weights=pref, reference=z), L)) < 1e-12


def test_dwa_matches_torchjd_over_epochs():
    g = torch.Generator().manual_seed(0)
    ref, ours = S.DWA(temperature=2.0), M.DWA(temperature=2.0, steps_per_epoch=None)
    for _epoch in range(4):
        for _ in range(3):
            L = torch.rand(4, generator=g, dtype=torch.float64) + 0.1
            assert rel(ours(losses=L), scalarizer_weights(ref, L)) < 1e-12
        ref.step()
        ours.end_epoch()


@pytest.mark.parametrize(
    "name,ref_cls,attr", [("uncertainty", "UW", "log_var"), ("imtl-l", "IMTLL", "log_scale")]
)
def test_learned_scales_match_torchjd_trained_with_sgd(name, ref_cls, attr):
    # TorchJD's scalarizer with its parameters in an SGD optimizer; ours steps them internally.
    ref = getattr(S, ref_cls)(3).double()
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ours = M.get(name, lr=0.1, optimizer="sgd")
    g = torch.Generator().manual_seed(1)
    for _ in range(8):
        L = torch.rand(3, generator=g, dtype=torch.float64) * 2 + 0.1
        opt.zero_grad()
        Lr = L.clone().requires_grad_(True)
        ref(Lr).backward()
        w = ours(losses=L)
        assert rel(w, Lr.grad) < 1e-12
        opt.step()
        assert rel(ours.log_scale, getattr(ref, attr).detach()) < 1e-12


@pytest.mark.parametrize("protocol", ["explicit_update", "next_call"])
def test_famo_matches_torchjd(protocol):
    ref = S.FAMO(3, lr=0.025, weight_decay=1e-3).double()
    ours = M.FAMO(update_on_next_call=(protocol == "next_call"))
    g = torch.Generator().manual_seed(3)
    L = torch.rand(3, generator=g, dtype=torch.float64) + 0.5
    for _ in range(10):
        w = ours(losses=L)
        assert rel(w, scalarizer_weights(ref, L)) < 1e-10
        L = L * (0.7 + 0.3 * torch.rand(3, generator=g, dtype=torch.float64))
        ref.update(L)
        if protocol == "explicit_update":
            ours.update(L)
