"""The compiled host path (``impl="numba"``) of the Gram-based methods against the torch path
(``impl="torch"``, the batched reference implementation) and against transcriptions on explicit
vectors: same generator seed → same weights, batched = one by one, float32/CUDA inputs."""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taskgrad import methods as M
from taskgrad.methods import _impl
from taskgrad.methods.kernels import common as _kernels
from tests.methods.methods_helpers import gram, jacobian, rel

pytestmark = pytest.mark.skipif(not _kernels.HAVE_NUMBA, reason="numba is not installed")

FAST = settings(max_examples=10, deadline=None)
# solver-based methods (deterministic); PCGrad and GradVac are compared with seeded generators
SOLVERS = {
    "cagrad": lambda impl: M.CAGrad(c=0.4, impl=impl),
    "cagrad-c1": lambda impl: M.CAGrad(c=1.0, rescale=1, impl=impl),
    "upgrad": lambda impl: M.UPGrad(impl=impl),
    "dualproj": lambda impl: M.DualProj(impl=impl),
    "nash-mtl": lambda impl: M.NashMTL(impl=impl),
    "fairgrad-0.5": lambda impl: M.FairGrad(alpha=0.5, impl=impl),
    "fairgrad-2": lambda impl: M.FairGrad(alpha=2.0, impl=impl),
    "mgda-ub": lambda impl: M.MGDAUB("none", impl=impl),
    "mgda-ub-l2": lambda impl: M.MGDAUB("l2", impl=impl),
}


def conflicting(k: int, P: int, seed: int, common: float) -> torch.Tensor:
    """k gradients in R^P with a shared component of weight ``common`` (0: many conflicts)."""
    return jacobian(k, P, seed, correlated=common)


def pair(name: str, G: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    out = []
    for impl in ("torch", "numba"):
        try:
            out.append(SOLVERS[name](impl)(gram=G))
        except M.UndefinedMethodError:
            out.append(None)
    return out[0], out[1]


@pytest.mark.parametrize("name", sorted(SOLVERS))
@pytest.mark.parametrize("k", [2, 3, 7, 40])
def test_numba_path_equals_torch_path(name, k):
    for seed in range(3):
        J = conflicting(k, 3 * k + 5, seed, common=[0.0, 0.7, 2.0][seed])
        ref, ours = pair(name, gram(J))
        assert (ref is None) == (ours is None), (name, seed)  # undefined on both paths or neither
        if ref is not None:
            # CAGrad's root search stops at |‖g_w(ρ)‖ − rρ| ≤ 1e-12·rρ (+ rounding): the two paths
            # may stop one step apart within that tolerance
            assert rel(ours, ref) < (1e-10 if name.startswith("cagrad") else 1e-12), (name, seed)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_numba_path_equals_torch_path_rank_deficient(name):
    # more tasks than dimensions and duplicated gradients: w may not be unique, d = Jᵀw is
    J = conflicting(8, 4, 11, common=1.0)
    J[5] = J[1]
    ref, ours = pair(name, gram(J))
    assert (ref is None) == (ours is None)
    if ref is not None:
        assert rel(ours @ J, ref @ J) < 1e-9, name


@st.composite
def scaled_jacobians(draw):
    k = draw(st.integers(2, 7))
    P = draw(st.integers(k, 12))
    J = jacobian(
        k, P, draw(st.integers(0, 10_000)), correlated=draw(st.sampled_from([0.0, 0.5, 2.0]))
    )
    scales = torch.tensor(
        draw(st.lists(st.floats(1e-3, 1e3), min_size=k, max_size=k)), dtype=torch.float64
    )
    return J * scales[:, None]


@FAST
@given(scaled_jacobians())
@pytest.mark.slow
def test_numba_path_equals_torch_path_on_scaled_gradients(J):
    # per-task scales from 1e-3 to 1e3 (conditioning up to 1e12 in G): compare the directions.
    # The solvers work in normalized variables, so MGDA-UB, UPGrad, DualProj, Nash-MTL and
    # FairGrad agree to ~1e-11 over 300 random draws; CAGrad's root search stops at
    # |‖g_w(ρ)‖ − rρ| ≤ 1e-12·rρ + 64ε·maxᵢ‖gᵢ‖ on both paths, an absolute term that lets the two
    # stop ~1e-9 apart in ρ (2.5e-9 seen). Bound: 1e-7.
    for name in SOLVERS:
        ref, ours = pair(name, gram(J))
        assert (ref is None) == (ours is None), name
        if ref is not None:
            assert rel(ours @ J, ref @ J) < 1e-7, name


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_numba_batched_equals_one_by_one(name):
    Gs = torch.stack([gram(conflicting(6, 9, s, common=1.5)) for s in range(6)]).reshape(2, 3, 6, 6)
    wb = SOLVERS[name]("numba")(gram=Gs)
    assert wb.shape == (2, 3, 6)
    for a in range(2):
        for b in range(3):
            assert torch.equal(wb[a, b], SOLVERS[name]("numba")(gram=Gs[a, b])), name


# --------------------------------------------------------------------------------------------
# PCGrad and GradVac: the same random orders on every path


@pytest.mark.parametrize("k", [2, 5, 40])
def test_pcgrad_same_seed_same_weights_on_both_paths(k):
    Gs = torch.stack([gram(conflicting(k, k + 3, s, common=0.3)) for s in range(3)])
    for G in (Gs[0], Gs):
        g_t, g_n = torch.Generator().manual_seed(k), torch.Generator().manual_seed(k)
        pt, pn = M.PCGrad(g_t, impl="torch"), M.PCGrad(g_n, impl="numba")
        for _ in range(3):  # successive calls continue the same stream on both paths
            assert rel(pn(gram=G), pt(gram=G)) < 1e-12
        assert torch.equal(g_t.get_state(), g_n.get_state())


def test_pcgrad_global_rng_is_used_identically():
    G = gram(conflicting(6, 8, 3, common=0.2))
    torch.manual_seed(4)
    ref = M.PCGrad(impl="torch")(gram=G)
    torch.manual_seed(4)
    assert rel(M.PCGrad(impl="numba")(gram=G), ref) < 1e-12


def pcgrad_on_vectors(J: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Yu et al. (2020), Algorithm 1, on explicit gradients with torch.randperm orders."""
    k = J.shape[0]
    d = torch.zeros_like(J[0])
    for i in range(k):
        gi = J[i].clone()
        for j in torch.randperm(k, generator=gen).tolist():
            dot = torch.dot(gi, J[j])
            if j != i and dot < 0:
                gi = gi - dot / J[j].dot(J[j]) * J[j]
        d += gi
    return d


@pytest.mark.parametrize("seed", range(3))
def test_pcgrad_numba_matches_transcription_on_vectors(seed):
    J = conflicting(12, 20, seed, common=0.1)
    ours = M.PCGrad(torch.Generator().manual_seed(seed), impl="numba")(gram=gram(J)) @ J
    assert rel(ours, pcgrad_on_vectors(J, torch.Generator().manual_seed(seed))) < 1e-12


def gradvac_on_vectors(
    J: torch.Tensor, phi_hat: torch.Tensor, gen: torch.Generator, beta: float, eps: float
):
    """Wang et al. (2021), Algorithm 1 (GradVac), on explicit gradients; phi_hat updated in
    place.
    """
    k = J.shape[0]
    d = torch.zeros_like(J[0])
    for i in range(k):
        gi = J[i].clone()
        others = [j for j in range(k) if j != i]
        for q in torch.randperm(k - 1, generator=gen).tolist():
            j = others[q]
            phi = float(gi.dot(J[j]) / (gi.norm() * J[j].norm() + eps))
            ph = float(phi_hat[i, j])
            if phi < ph:
                s_phi, s_hat = (1 - phi**2) ** 0.5, (1 - ph**2) ** 0.5
                coef = gi.norm() * (ph * s_phi - phi * s_hat) / (J[j].norm() * s_hat + eps)
                gi = gi + coef * J[j]
            phi_hat[i, j] = (1 - beta) * ph + beta * phi
        d += gi
    return d


def test_gradvac_numba_matches_torch_path_and_transcription_over_a_run():
    k, beta, eps = 7, 0.3, 1e-8
    Js = [conflicting(k, 10, s, common=0.2) for s in range(6)]
    ref_m = M.GradVac(beta=beta, generator=torch.Generator().manual_seed(7), impl="torch")
    ours_m = M.GradVac(beta=beta, generator=torch.Generator().manual_seed(7), impl="numba")
    gen = torch.Generator().manual_seed(7)
    phi_hat = torch.zeros(k, k, dtype=torch.float64)
    for J in Js:
        w = ours_m(gram=gram(J))
        assert rel(w, ref_m(gram=gram(J))) < 1e-12
        assert rel(w @ J, gradvac_on_vectors(J, phi_hat, gen, beta, eps)) < 1e-10
        assert rel(ours_m.state_dict()["phi_hat"], ref_m.state_dict()["phi_hat"]) < 1e-12
    assert ours_m.state_dict()["phi_hat"].dtype == torch.float64


def test_pcgrad_gradvac_batched_equal_one_by_one_with_a_shared_generator():
    # a batch draws its orders problem by problem: the same stream as calls in that order
    Gs = torch.stack([gram(conflicting(5, 7, s, common=0.2)) for s in range(4)])
    for cls in (M.PCGrad, M.GradVac):
        wb = cls(generator=torch.Generator().manual_seed(1), impl="numba")(gram=Gs)
        g = torch.Generator().manual_seed(1)
        for b in range(4):
            assert rel(wb[b], cls(generator=g, impl="numba")(gram=Gs[b])) < 1e-12, cls.__name__


def test_gradvac_switching_impl_mid_run_continues_the_state():
    Js = [conflicting(4, 6, s, common=0.3) for s in range(4)]
    ref = M.GradVac(generator=torch.Generator().manual_seed(2), impl="torch")
    mixed = M.GradVac(generator=torch.Generator().manual_seed(2), impl="numba")
    for t, J in enumerate(Js):
        mixed.impl = "torch" if t % 2 else "numba"
        assert rel(mixed(gram=gram(J)), ref(gram=gram(J))) < 1e-12


# --------------------------------------------------------------------------------------------
# dtypes, devices, errors


def test_float32_input_gives_float32_weights_computed_in_float64():
    J = conflicting(6, 9, 0, common=1.0)
    G32 = gram(J).float()
    for name in SOLVERS:
        w32 = SOLVERS[name]("numba")(gram=G32)
        assert w32.dtype == torch.float32, name
        assert rel(w32.double(), SOLVERS[name]("numba")(gram=G32.double())) < 1e-6, name
    w = M.PCGrad(torch.Generator().manual_seed(0), impl="numba")(gram=G32)
    assert w.dtype == torch.float32


def test_one_task():
    G = torch.tensor([[4.0]], dtype=torch.float64)
    for name in SOLVERS:
        ref, ours = pair(name, G)
        assert rel(ours, ref) <= 4 * torch.finfo(torch.float64).eps, name  # pow on either side
    for impl in ("torch", "numba"):
        assert M.PCGrad(impl=impl)(gram=G).tolist() == [1.0]
        assert M.GradVac(impl=impl)(gram=G).tolist() == [1.0]


def test_undefined_nash_raises_on_the_numba_path():
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)  # opposite gradients
    with pytest.raises(M.UndefinedMethodError):
        M.NashMTL(impl="numba")(gram=gram(J))
    w, ok = M.alpha_fair_weights(gram(J), 1.0, impl="numba")
    assert not bool(ok) and w.shape == (2,)


def test_bad_impl_is_a_clear_error():
    with pytest.raises(ValueError, match="impl must be"):
        M.PCGrad(impl="fast")
    with pytest.raises(ValueError, match="impl must be"):
        M.alpha_fair_weights(torch.eye(2, dtype=torch.float64), 1.0, impl="gpu")
    assert M.get("cagrad", impl="torch").impl == "torch"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_gram_auto_path_matches_cpu():
    J = conflicting(10, 15, 0, common=1.0)
    G = gram(J)
    for name in SOLVERS:
        cpu = SOLVERS[name]("numba")(gram=G)
        auto = SOLVERS[name]("auto")(gram=G.cuda())
        assert auto.device.type == "cuda"
        assert rel(auto.cpu(), cpu) < 1e-12, name
        torch_gpu = SOLVERS[name]("torch")(gram=G.cuda())
        assert rel(torch_gpu.cpu(), cpu) < 1e-9, name
    gc = torch.Generator(device="cuda").manual_seed(3)
    gt = torch.Generator(device="cuda").manual_seed(3)
    w_host = M.PCGrad(gc, impl="numba")(gram=G.cuda())
    w_dev = M.PCGrad(gt, impl="torch")(gram=G.cuda())
    assert w_host.device.type == "cuda" and rel(w_host.cpu(), w_dev.cpu()) < 1e-12


@pytest.mark.parametrize("name", ["pcgrad", "gradvac", *sorted(SOLVERS)])
def test_auto_runs_the_host_kernels_on_a_cpu_gram(name, monkeypatch):
    """impl="auto" on a CPU Gram goes through the compiled kernels (a spy on the kernel module
    counts the calls), and impl="torch" never does — the two paths agree, so only a spy can tell."""
    calls: list[str] = []
    real_kernel = _impl.kernel

    class Spy:
        def __init__(self, module):
            self.module = module

        def __getattr__(self, attr):
            value = getattr(self.module, attr)
            if callable(value):

                def wrapped(*args, **kwargs):
                    calls.append(attr)
                    return value(*args, **kwargs)

                return wrapped
            return value

    monkeypatch.setattr(_impl, "kernel", lambda name: Spy(real_kernel(name)))
    make = {
        "pcgrad": lambda impl: M.PCGrad(generator=torch.Generator().manual_seed(0), impl=impl),
        "gradvac": lambda impl: M.GradVac(generator=torch.Generator().manual_seed(0), impl=impl),
    }.get(name, SOLVERS.get(name))
    G = gram(jacobian(5, 30, 3, correlated=0.0))
    with contextlib.suppress(M.UndefinedMethodError):
        make("torch")(gram=G)
    assert calls == []
    with contextlib.suppress(M.UndefinedMethodError):
        make("auto")(gram=G)
    assert calls, f"{name}: impl='auto' did not call a compiled kernel on a CPU Gram"


def test_min_norm_kernel_on_all_zero_gradients_is_uniform():
    """Every point of the simplex is optimal when G = 0; the kernel returns the uniform weights."""
    import numpy as np

    W, status = _kernels.min_norm(np.zeros((1, 4, 4)), 100)
    assert int(status[0]) == _kernels.OK
    np.testing.assert_array_equal(W[0], np.full(4, 0.25))


@pytest.mark.parametrize("k", [2, 5, 40])
def test_min_norm_weights_compiled_equals_solver_and_meets_kkt(k):
    """min_norm_weights on the host equals the solvers' min_norm_simplex on a batch (2, 3, k, k),
    and satisfies MGDA's KKT conditions: α in the simplex, (Gα)ᵢ ≥ αᵀGα with equality where
    αᵢ > 0.
    """
    from taskgrad.methods._impl import min_norm_weights
    from taskgrad.solvers import min_norm_simplex

    G = torch.stack([gram(jacobian(k, 3 * k, seed, correlated=0.3)) for seed in range(6)]).reshape(
        2, 3, k, k
    )
    a = min_norm_weights(G, impl="numba")
    assert a.shape == (2, 3, k) and a.dtype == G.dtype
    torch.testing.assert_close(a, min_norm_simplex(G), rtol=0, atol=1e-10)
    torch.testing.assert_close(a, min_norm_weights(G, impl="torch"), rtol=0, atol=1e-10)
    assert bool((a >= 0).all()) and torch.allclose(a.sum(-1), torch.ones(2, 3, dtype=G.dtype))
    Ga = (G @ a.unsqueeze(-1)).squeeze(-1)
    q = (a * Ga).sum(-1, keepdim=True)
    scale = G.diagonal(dim1=-2, dim2=-1).amax(-1, keepdim=True)
    assert bool((Ga >= q - 1e-9 * scale).all())
    assert bool(((a > 1e-12) <= ((Ga - q).abs() <= 1e-9 * scale)).all())
