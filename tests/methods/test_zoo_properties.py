"""Properties of the zoo methods beyond the TorchJD cross-checks: hyper-parameter validation,
PCD against PrimaryAux, the Jacobian-aggregator contract, ConFIG's equal cosines, CR-MOGM by name,
Krum's minimum number of tasks and the log-loss wrappers' Gram scaling."""

from __future__ import annotations

import pytest
import torch

from taskgrad import methods as M
from taskgrad.methods.auxiliary.pcd import PCD
from taskgrad.methods.gram.constant import Constant
from taskgrad.methods.gram.cr_mogm import CRMOGM
from taskgrad.methods.gram.krum import Krum
from taskgrad.methods.gram.log_mgda import LogMGDA
from taskgrad.methods.gram.modo import MoDo
from taskgrad.methods.gram.sdmgrad import SDMGrad
from taskgrad.methods.jacobian.config import ConFIG
from taskgrad.methods.jacobian.excess_mtl import ExcessMTL
from taskgrad.methods.jacobian.graddrop import GradDrop
from taskgrad.methods.jacobian.moco import MoCo
from taskgrad.methods.jacobian.trimmed_mean import TrimmedMean
from tests.methods.methods_helpers import gram, jacobian, rel


@pytest.mark.parametrize(
    "factory,match",
    [
        (lambda: Krum(-1), "n_byzantine must be an int ≥ 0"),
        (lambda: Krum(1, 0), "n_selected must be an int ≥ 1"),
        (lambda: Krum(1.5), "n_byzantine must be an int"),
        (lambda: TrimmedMean(-1), "trim_number must be an int ≥ 0"),
        (lambda: MoDo(gamma=0.0), r"gamma must be in \(0, inf\)"),
        (lambda: MoDo(rho=-1.0), r"rho must be in \[0, inf\)"),
        (lambda: SDMGrad(momentum=1.0), r"momentum must be in \[0, 1\)"),
        (lambda: SDMGrad(n_iter=0), "n_iter must be an int ≥ 1"),
        (lambda: SDMGrad(lambda_=-0.1), "lambda_ must be in"),
        (lambda: SDMGrad(lr=float("nan")), "lr must be in"),
        (lambda: PCD(tau=1.5), r"tau must be in \[0, 1\]"),
        (lambda: PCD(tau=torch.tensor([0.1, -0.2])), r"tau must be in \[0, 1\] entrywise"),
        (lambda: PCD(beta=1.0), r"beta must be in \[0, 1\)"),
        (lambda: PCD(eps=-1e-3), r"eps must be in \[0, inf\)"),
        (lambda: CRMOGM(alpha=1.2), r"alpha must be in \[0, 1\]"),
        (lambda: CRMOGM("config"), "not a Jacobian aggregator"),
        (lambda: ExcessMTL(robust_step_size=0.0), "robust_step_size must be in"),
        (lambda: ExcessMTL(n_warmup_steps=-1), "n_warmup_steps must be an int ≥ 0"),
        (lambda: MoCo(beta=0.0), r"beta must be in \(0, 1\]"),
        (lambda: GradDrop(leak=torch.tensor([0.5, 2.0])), r"leak must be in \[0, 1\] entrywise"),
        (lambda: ConFIG(pref_vector=torch.ones(2, 2)), "pref_vector must be a 1-D"),
        (lambda: Constant(torch.tensor([1.0, float("inf")])), "weights must be finite"),
    ],
)
def test_bad_hyper_parameters_are_named(factory, match):
    with pytest.raises((ValueError, TypeError), match=match):
        factory()


def test_per_task_vectors_must_match_the_number_of_tasks():
    J = jacobian(4, 6, 0)
    with pytest.raises(ValueError, match="pref_vector has 3 entries but there are 4 tasks"):
        ConFIG(torch.ones(3, dtype=torch.float64)).aggregate(J)
    with pytest.raises(ValueError, match="tau has 2 values but there are 3 secondary tasks"):
        PCD(tau=torch.tensor([0.1, 0.2], dtype=torch.float64))(gram=gram(J))
    with pytest.raises(ValueError, match="weights has 3 entries"):
        Constant(torch.ones(3))(losses=torch.ones(4))
    with pytest.raises(ValueError, match="needs at least 2·trim_number"):
        TrimmedMean(2).aggregate(J)


def test_krum_needs_n_byzantine_plus_three_tasks():
    with pytest.raises(M.UndefinedMethodError, match="at least n_byzantine \\+ 3 = 4 tasks, got 3"):
        Krum(1)(gram=gram(jacobian(3, 5, 0)))


def test_krum_drops_an_outlier():
    J = jacobian(6, 8, 1) * 0.1 + torch.ones(8, dtype=torch.float64)
    J[4] = -50.0  # a Byzantine gradient
    w = Krum(1, 3)(gram=gram(J))
    assert w[4] == 0 and float(w.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_pcd_with_tau_zero_is_primary_aux_rescaled_to_the_primary_norm(seed):
    J = jacobian(5, 9, seed)
    J[1] = -0.7 * J[0] + 0.2 * J[1]
    J = J * torch.logspace(-1, 1, 5, dtype=torch.float64)[:, None]
    G = gram(J)
    u = M.PrimaryAux()(gram=G) @ J
    d = PCD(tau=0.0)(gram=G) @ J
    assert rel(d, u * J[0].norm() / u.norm()) < 1e-8


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tau", [0.1, 0.3])
def test_pcd_with_current_norms_is_primary_aux_progress_margin_rescaled(seed, tau):
    J = jacobian(5, 9, seed)
    J[1] = -0.7 * J[0] + 0.2 * J[1]
    J = J * torch.logspace(-1, 1, 5, dtype=torch.float64)[:, None]
    G = gram(J)
    u = M.PrimaryAux(progress=tau)(gram=G) @ J
    d = PCD(tau=tau, beta=0.0, eps=0.0)(gram=G) @ J
    assert rel(d, u * J[0].norm() / u.norm()) < 1e-10


@pytest.mark.parametrize("seed", range(5))
def test_pcd_kkt_conditions(seed):
    """d̃ = s₀g₀ + Σμⱼsⱼgⱼ with μ ≥ 0, every constraint ⟨g̃ⱼ, d̃⟩ ≥ τ‖g̃ⱼ‖², complementary slackness."""
    tau = 0.4
    J = jacobian(5, 9, seed)
    J[2] = -J[0] + 0.3 * J[2]
    m = PCD(tau=tau, beta=0.0, eps=0.0)  # beta = 0: sᵢ = 1/‖gᵢ‖ at the first call
    w = m(gram=gram(J))
    s = 1.0 / J.norm(dim=1)
    Jn = J * s[:, None]
    d = w @ J
    mu = (w * J.norm(dim=1))[1:] / (w[0] * J[0].norm())
    assert bool((mu >= -1e-12).all())
    d_tilde = d * (1.0 / (w[0] * J[0].norm()))  # the unscaled d̃ = g̃₀ + Σμⱼg̃ⱼ
    slack = Jn[1:] @ d_tilde - tau * (Jn[1:] ** 2).sum(1)
    assert bool((slack >= -1e-10).all())
    assert float((mu * slack).abs().max()) < 1e-10
    assert float(d.norm()) == pytest.approx(float(J[0].norm()), rel=1e-12)


def test_jacobian_aggregators_refuse_a_gram_matrix_and_check_j():
    G = gram(jacobian(3, 4, 0))
    with pytest.raises(TypeError, match="needs the Jacobian itself"):
        ConFIG()(gram=G)
    with pytest.raises(ValueError, match=r"jacobian must have shape \(k, P\)"):
        ConFIG().aggregate(torch.ones(2, 3, 4, dtype=torch.float64))
    with pytest.raises(FloatingPointError, match="non-finite"):
        TrimmedMean(0).aggregate(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="needs the task losses"):
        MoCo().aggregate(jacobian(3, 4, 0))
    assert M.get("ConFIG").needs == frozenset({"jacobian"})
    assert M.get("moco").needs == frozenset({"jacobian", "losses"})


@pytest.mark.parametrize("seed", range(4))
def test_config_has_equal_cosines_with_independent_gradients(seed):
    J = jacobian(4, 10, seed) * torch.tensor([[0.01], [1.0], [100.0], [3.0]], dtype=torch.float64)
    d = ConFIG().aggregate(J)
    cosines = (J @ d) / (J.norm(dim=1) * d.norm())
    assert float(cosines.max() - cosines.min()) < 1e-10 and float(cosines.min()) > 0


def test_excess_mtl_and_moco_refuse_a_changed_jacobian_shape():
    for m in (ExcessMTL(), MoCo()):
        m.aggregate(jacobian(3, 4, 0), losses=torch.ones(3, dtype=torch.float64))
        with pytest.raises(ValueError, match="call reset"):
            m.aggregate(jacobian(3, 5, 0), losses=torch.ones(3, dtype=torch.float64))
        m.reset()
        m.aggregate(jacobian(3, 5, 0), losses=torch.ones(3, dtype=torch.float64))


def test_cr_mogm_by_name_and_its_state_holds_the_inner_state():
    m = CRMOGM("modo", alpha=0.5)
    assert isinstance(m.method, MoDo) and m.needs == MoDo.needs
    G = gram(jacobian(3, 5, 0))
    m(gram=G)
    state = m.state_dict()
    assert state["method"]["lambda"] is not None
    m2 = CRMOGM("modo", alpha=0.5)
    m2.load_state_dict(state)
    assert torch.equal(m2(gram=G), m(gram=G))


def test_log_loss_methods_need_positive_losses_and_scale_the_gram():
    J = jacobian(3, 5, 0)
    L = torch.tensor([0.5, 2.0, 4.0], dtype=torch.float64)
    w = LogMGDA(eps=0.0)(gram=gram(J), losses=L)
    w_log = M.MGDA()(gram=gram(J / L[:, None]))
    assert rel(w, (w_log / L) / (w_log / L).sum()) < 1e-12
    with pytest.raises(ValueError, match="needs every task loss"):
        LogMGDA()(gram=gram(J), losses=torch.tensor([0.5, -1.0, 1.0], dtype=torch.float64))


def test_batched_grams_give_the_weights_one_by_one():
    Gs = torch.stack([gram(jacobian(4, 6, s)) for s in range(3)])
    Ls = torch.rand(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    for make in (
        lambda: MoDo(),
        lambda: SDMGrad(),
        lambda: LogMGDA(),
        lambda: M.get("imtl-hybrid"),
    ):
        batched = make()(gram=Gs, losses=Ls)
        single = torch.stack([make()(gram=G, losses=L) for G, L in zip(Gs, Ls, strict=True)])
        assert rel(batched, single) < 1e-10


def test_backward_jacobian_writes_the_aggregate_and_unweighted_head_gradients():
    from taskgrad.methods.jacobian import backward_jacobian, shared_jacobian

    torch.manual_seed(0)
    trunk = torch.nn.Linear(5, 4).double()
    heads = torch.nn.Linear(4, 3).double()
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)

    def losses():
        return ((heads(torch.tanh(trunk(x))) - y) ** 2).mean(0)

    shared, own = list(trunk.parameters()), list(heads.parameters())
    J = shared_jacobian(losses(), shared)
    expected = ConFIG().aggregate(J)
    head_grads = torch.autograd.grad(losses().sum(), own)
    d = backward_jacobian(losses(), ConFIG(), shared, task_params=own)
    assert rel(d, expected) < 1e-12
    assert rel(torch.cat([p.grad.reshape(-1) for p in shared]), expected) < 1e-12
    for p, g in zip(own, head_grads, strict=True):
        assert rel(p.grad, g) < 1e-12
    # a Gram method through the same path: d = Jᵀw(JJᵀ)
    for p in shared + own:
        p.grad = None
    d = backward_jacobian(losses(), M.UPGrad(), shared)
    assert rel(d, M.UPGrad()(gram=J @ J.T) @ J) < 1e-10
    assert all(p.grad is None for p in own)
