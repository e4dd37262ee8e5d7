"""The TorchJD 0.18 aggregators of the zoo against TorchJD itself, in float64, to 1e-6 relative.

Random, scaled (task gradients from 1e-3 to 1e3) and conflicting Jacobians; stateful methods over
a sequence of calls (weights compared at every call); random ones with the same draws.
"""

from __future__ import annotations

import pytest
import torch

from taskgrad.methods.auxiliary.pcd import PCD
from taskgrad.methods.gram.constant import Constant
from taskgrad.methods.gram.cr_mogm import CRMOGM
from taskgrad.methods.gram.krum import Krum
from taskgrad.methods.gram.modo import MoDo
from taskgrad.methods.gram.sdmgrad import SDMGrad
from taskgrad.methods.gram.upgrad import UPGrad
from taskgrad.methods.jacobian.config import ConFIG
from taskgrad.methods.jacobian.excess_mtl import ExcessMTL
from taskgrad.methods.jacobian.graddrop import GradDrop
from taskgrad.methods.jacobian.trimmed_mean import TrimmedMean
from tests.methods.methods_helpers import gram, jacobian, rel

A = pytest.importorskip("torchjd.aggregation")

TOL = 1e-6
KINDS = ["random", "scaled", "conflicting"]


def make(kind: str, seed: int, k: int = 5, P: int = 12) -> torch.Tensor:
    J = jacobian(k, P, seed)
    if kind == "scaled":
        J = J * torch.logspace(-3, 3, k, dtype=J.dtype)[:, None]
    elif kind == "conflicting":
        J[1] = -0.6 * J[0] + 0.3 * J[1]
        J[3] = -J[2] + 0.05 * J[3]
    return J


def sequence(kind: str, n: int = 6, k: int = 5, P: int = 12) -> list[torch.Tensor]:
    return [make(kind, 10 * s + k, k, P) for s in range(n)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_byzantine,n_selected", [(0, 1), (2, 1), (2, 3), (4, 2)])
def test_krum(kind, n_byzantine, n_selected):
    for seed in range(3):
        J = make(kind, seed, k=7)
        ours = Krum(n_byzantine, n_selected)(gram=gram(J))
        assert rel(ours, A.KrumWeighting(n_byzantine, n_selected)(gram(J))) < TOL


def test_krum_batched_equals_one_by_one():
    Gs = torch.stack([gram(make("random", s, k=6)) for s in range(4)])
    m = Krum(1, 2)
    assert torch.equal(m(gram=Gs), torch.stack([m(gram=G) for G in Gs]))


@pytest.mark.parametrize("kind", KINDS)
def test_constant(kind):
    J = make(kind, 0)
    w = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.25], dtype=torch.float64)
    assert (
        rel(Constant(w).aggregate(J, losses=torch.ones(5, dtype=torch.float64)), A.Constant(w)(J))
        < 1e-15
    )
    assert rel(Constant(w).aggregate(J), A.Constant(w)(J)) < 1e-15


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gamma,rho", [(0.1, 0.1), (0.01, 0.0), (0.5, 1.0)])
def test_modo_over_a_run(kind, gamma, rho):
    ours, ref = MoDo(gamma, rho), A.MoDoWeighting(gamma, rho)
    for J in sequence(kind):
        assert rel(ours(gram=gram(J)), ref(gram(J))) < TOL


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "kw", [{}, {"lr": 1.0, "momentum": 0.0, "n_iter": 5, "lambda_": 0.0}, {"lambda_": 1.5}]
)
def test_sdmgrad_over_a_run(kind, kw):
    pref = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25], dtype=torch.float64)
    for pref_vector in (None, pref):
        ours, ref = (
            SDMGrad(pref_vector=pref_vector, **kw),
            A.SDMGradWeighting(pref_vector=pref_vector, **kw),
        )
        for J in sequence(kind):
            assert rel(ours(gram=gram(J)), ref(gram(J))) < TOL


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
def test_cr_mogm_around_upgrad_over_a_run(kind, alpha):
    from torchjd._linalg import QuadprogProjector

    inner = A.UPGradWeighting(projector=QuadprogProjector(reg_eps=0.0))
    ours, ref = CRMOGM(UPGrad(), alpha=alpha), A.CRMOGMWeighting(inner, alpha=alpha)
    for J in sequence(kind):
        assert rel(ours(gram=gram(J)), ref(gram(J))) < TOL


def test_cr_mogm_initial_weights_and_a_stateful_inner_method():
    init = torch.tensor([0.4, 0.1, 0.1, 0.2, 0.2], dtype=torch.float64)
    ours = CRMOGM(MoDo(0.1, 0.0), alpha=0.6, initial_weights=init)
    ref = A.CRMOGMWeighting(A.MoDoWeighting(0.1, 0.0), alpha=0.6, initial_weights=init)
    for J in sequence("conflicting"):
        assert rel(ours(gram=gram(J)), ref(gram(J))) < TOL


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tau", [0.0, 0.02, 0.3, 1.0])
@pytest.mark.parametrize("beta", [0.0, 0.9, 0.999])
def test_pcd_over_a_run(kind, tau, beta):
    ours, ref = PCD(tau=tau, beta=beta), A.PCDWeighting(tau=tau, beta=beta)
    for J in sequence(kind):
        G = gram(J)
        assert rel(ours(gram=G), ref(G)) < TOL


def test_pcd_vector_tau_and_eps():
    tau = torch.tensor([0.0, 0.5, 0.1, 0.9], dtype=torch.float64)
    ours, ref = PCD(tau=tau, beta=0.5, eps=1e-3), A.PCDWeighting(tau=tau, beta=0.5, eps=1e-3)
    for J in sequence("scaled"):
        assert rel(ours(gram=gram(J)), ref(gram(J))) < TOL


def test_pcd_special_cases_match_torchjd():
    base = jacobian(4, 6, 0)
    cases = []
    J = base.clone()
    J[0] = 0.0  # zero primary gradient: zero update
    cases.append(J)
    J = base.clone()
    J[2] = -J[1]  # two opposite secondary gradients: the constraints are infeasible, d = g0
    cases.append(J)
    J = base.clone()
    J[3] = 0.0  # a zero secondary gradient: its constraint is 0 ≥ 0
    cases.append(J)
    for J in cases:
        ours, ref = PCD(tau=0.2), A.PCDWeighting(tau=0.2)
        for _ in range(2):
            assert rel(ours(gram=gram(J)), ref(gram(J))) < TOL
    assert torch.equal(PCD(tau=0.2)(gram=gram(cases[0])), torch.zeros(4, dtype=torch.float64))
    infeasible = PCD(tau=0.2)(gram=gram(cases[1]))
    assert rel(infeasible, torch.tensor([1.0, 0, 0, 0], dtype=torch.float64)) < 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_config(kind):
    pref = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0], dtype=torch.float64)
    for seed in range(3):
        J = make(kind, seed)
        assert rel(ConFIG().aggregate(J), A.ConFIG()(J)) < TOL
        assert rel(ConFIG(pref).aggregate(J), A.ConFIG(pref)(J)) < TOL
        J[2] = 0.0
        assert rel(ConFIG().aggregate(J), A.ConFIG()(J)) < TOL


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("trim_number", [0, 1, 2])
def test_trimmed_mean(kind, trim_number):
    for seed in range(3):
        J = make(kind, seed)
        assert rel(TrimmedMean(trim_number).aggregate(J), A.TrimmedMean(trim_number)(J)) < TOL


@pytest.mark.parametrize("kind", KINDS)
def test_graddrop_with_the_same_draws(kind):
    leak = torch.tensor([0.0, 0.5, 0.1, 1.0, 0.3], dtype=torch.float64)
    for seed in range(3):
        J = make(kind, seed)
        J[:, 0] = 0.0  # a coordinate where every gradient is zero (0/0 purity)
        for lk, f in [(None, None), (leak, torch.sqrt)]:
            ref_kw = {} if f is None else {"f": f}
            torch.manual_seed(seed)
            ref = A.GradDrop(leak=lk, **ref_kw)(J)
            ours = GradDrop(
                leak=lk, generator=torch.Generator().manual_seed(seed), **ref_kw
            ).aggregate(J)
            assert rel(ours, ref) < TOL
            assert bool(torch.isfinite(ours).all())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("step,warmup", [(1.0, 0), (0.3, 2)])
def test_excess_mtl_over_a_run(kind, step, warmup):
    ours, ref = ExcessMTL(step, warmup), A.ExcessMTL(step, warmup)
    for J in sequence(kind):
        assert rel(ours.aggregate(J), ref(J)) < TOL


def test_modo_and_sdmgrad_on_cross_batch_matrices():
    """The papers' input J₁J₂ᵀ of two independent batches (not symmetric), as TorchJD takes it."""
    modo, modo_ref = MoDo(0.1, 0.05), A.MoDoWeighting(0.1, 0.05)
    sdm, sdm_ref = SDMGrad(), A.SDMGradWeighting()
    for t in range(5):
        A12 = make("conflicting", t) @ make("random", 100 + t).T
        assert rel(modo.cross_batch(A12), modo_ref(A12)) < TOL
        assert rel(sdm.cross_batch(A12), sdm_ref(A12)) < TOL
    with pytest.raises(ValueError, match=r"shape \(\.\.\., k, k\)"):
        MoDo().cross_batch(torch.ones(3, 4))
