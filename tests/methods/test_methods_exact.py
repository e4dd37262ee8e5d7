"""Methods exact at the edges: CAGrad against an SOCP oracle where 0 is in the convex hull or a
gradient is tiny, Nash-MTL/FairGrad defined wherever a solution exists (fixed-point oracle) and
non-convergence reported as such, MGDA/MGDA-UB on mixed scales (KKT of the posed problem),
hyper-parameter validation, reduced precisions, IMTL-G's scale invariance and seedable,
resumable randomness."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taskgrad import methods as M
from taskgrad.methods import _impl
from tests.methods.methods_helpers import gram, jacobian

IMPLS = ["torch", "numba"] if _impl.HAVE_NUMBA else ["torch"]
FAST = settings(max_examples=10, deadline=None)


# --------------------------------------------------------------------------------------------
# CAGrad: the primal problem max_d minᵢ⟨gᵢ, d⟩ s.t. ‖d − g₀‖ ≤ c‖g₀‖


def cagrad_socp(J: torch.Tensor, c: float) -> float:
    """The optimal worst-task value t* of CAGrad's primal problem, by Clarabel."""
    Jn = J.numpy()
    g0 = Jn.mean(0)
    d, t = cp.Variable(Jn.shape[1]), cp.Variable()
    prob = cp.Problem(cp.Maximize(t), [Jn @ d >= t, cp.norm(d - g0) <= c * np.linalg.norm(g0)])
    prob.solve(cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    return float(t.value)


def check_cagrad_primal(J: torch.Tensor, c: float, impl: str) -> torch.Tensor:
    w = M.CAGrad(c=c, impl=impl)(gram=gram(J))
    d = w @ J
    g0 = J.mean(0)
    scale = float(J.norm(dim=1).max())
    r = c * float(g0.norm())
    assert float((d - g0).norm()) <= r * (1 + 1e-7) + 1e-12 * scale, "outside the trust ball"
    t_star = cagrad_socp(J, c)
    worst = float((J @ d).min())
    assert worst >= t_star - 1e-7 * scale * max(float(d.norm()), scale), (worst, t_star)
    return w


def opposite_plus_one(seed: int, ratio: float) -> torch.Tensor:
    g = jacobian(1, 6, seed)[0]
    h = jacobian(1, 6, seed + 1)[0]
    return torch.stack([g, -ratio * g, h])


@pytest.mark.parametrize("impl", IMPLS)
def test_cagrad_two_opposite_gradients_is_the_primal_solution(impl):
    g = jacobian(1, 5, 0)[0]
    J = torch.stack([g, -2.0 * g])  # 0 in the hull; g₀ = −g/2 ≠ 0
    w = check_cagrad_primal(J, 0.4, impl)
    assert bool((w != 0).any())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ratio", [1.0, 2.0, 0.3])
def test_cagrad_zero_in_hull_is_the_primal_solution(impl, seed, ratio):
    for c in (0.2, 0.4, 0.9):
        w = check_cagrad_primal(opposite_plus_one(seed, ratio), c, impl)
        assert bool((w != 0).any())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("tiny", [1e-4, 1e-5, 1e-6, 1e-8])
def test_cagrad_one_tiny_gradient_is_the_primal_solution(impl, tiny):
    for seed in range(3):
        J = jacobian(3, 6, seed, correlated=0.5)
        J[1] *= tiny
        w = check_cagrad_primal(J, 0.4, impl)
        assert bool((w != 0).any())


@FAST
@given(st.integers(2, 5), st.integers(0, 10_000), st.sampled_from([0.1, 0.5, 0.9]))
def test_cagrad_matches_the_socp_on_random_problems(k, seed, c):
    J = jacobian(k, 6, seed)
    for impl in IMPLS:
        check_cagrad_primal(J, c, impl)


def test_cagrad_norm_eps_keeps_torchjds_shortcut():
    J = opposite_plus_one(0, 2.0)[:2]  # 0 in the hull: TorchJD returns zero weights there
    w = M.CAGrad(norm_eps=1e-4)(gram=gram(J))
    assert torch.equal(w, torch.zeros(2, dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# IMTL-G: equal projections on the unit gradients, invariant to each task's scale


@FAST
@given(
    st.integers(2, 5),
    st.integers(0, 10_000),
    st.lists(st.sampled_from([1e-8, 1e-6, 1e-3, 1.0, 1e3, 1e8]), min_size=5, max_size=5),
)
def test_imtlg_direction_is_invariant_down_to_norm_ratios_of_1e_8(k, seed, scales):
    J = jacobian(k, k + 3, seed)
    C = torch.tensor(scales[:k], dtype=torch.float64)
    d = M.IMTLG()(gram=gram(J)) @ J
    Js = J * C[:, None]
    ds = M.IMTLG()(gram=gram(Js)) @ Js
    cosine = float(d @ ds / (d.norm() * ds.norm()))
    # the same line (the paper's normalization Σwᵢ = 1 fixes the sign by that of 1ᵀG⁺σ)
    assert abs(cosine) >= 1 - 1e-9, cosine
    proj = (J / J.norm(dim=1, keepdim=True)) @ ds  # equal projections on the unit gradients
    assert float(proj.max() - proj.min()) <= 1e-8 * float(proj.abs().max())


def test_imtlg_regression_norm_ratio_1e_8():
    J = torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.4, -0.2, 1.0]], dtype=torch.float64)
    d = M.IMTLG()(gram=gram(J)) @ J
    Js = J * torch.tensor([[1e-8], [1.0], [1.0]], dtype=torch.float64)
    ds = M.IMTLG()(gram=gram(Js)) @ Js
    assert float(d @ ds / (d.norm() * ds.norm())) >= 1 - 1e-12


# --------------------------------------------------------------------------------------------
# Nash-MTL and FairGrad: defined wherever a solution exists; non-convergence is not "undefined"


def fair_residual(G: torch.Tensor, w: torch.Tensor, alpha: float) -> float:
    """max |(Gw)ᵢ wᵢ^(1/α) − 1|: 0 at the α-fair fixed point."""
    return float(((G @ w) * w.pow(1.0 / alpha) - 1.0).abs().max())


@pytest.mark.parametrize("impl", IMPLS)
def test_nash_mtl_defined_with_a_1e_8_gradient(impl):
    J = torch.tensor([[1e-8, 0.0], [1.0, 1.0]], dtype=torch.float64)
    G = gram(J)
    a = M.NashMTL(max_norm=0.0, impl=impl)(gram=G)
    assert fair_residual(G, a, 1.0) <= 1e-10
    torch.testing.assert_close(
        a, torch.tensor([7.6537e7, 0.5412], dtype=torch.float64), rtol=1e-4, atol=0
    )
    w = M.FairGrad(alpha=1.0, impl=impl)(gram=G)
    torch.testing.assert_close(w, a, rtol=1e-10, atol=0)


@st.composite
def mixed_scale_jacobians(draw):
    k = draw(st.integers(2, 5))
    J = jacobian(
        k, k + 3, draw(st.integers(0, 10_000)), correlated=2.0
    )  # a common descent direction
    e = draw(st.lists(st.integers(-8, 8), min_size=k, max_size=k))
    return J * torch.tensor([10.0**x for x in e], dtype=torch.float64)[:, None]


@FAST
@given(mixed_scale_jacobians(), st.sampled_from([0.5, 1.0, 2.0]))
def test_alpha_fair_fixed_point_on_norms_spread_over_1e16(J, alpha):
    G = gram(J)
    for impl in IMPLS:
        try:
            w = M.FairGrad(alpha=alpha, impl=impl, max_iter=200)(gram=G)
        except M.UndefinedMethodError:
            # only where 0 is (numerically) in the hull of the unit gradients
            U = J / J.norm(dim=1, keepdim=True)
            m = M.MGDA()(gram=gram(U)) @ U
            assert float(m.norm()) <= 1e-6
            continue
        assert bool((w > 0).all()) and fair_residual(G, w, alpha) <= 1e-9, (
            impl,
            fair_residual(G, w, alpha),
        )


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ["zero", "opposite", "opposite-scaled"])
def test_nash_mtl_undefined_only_where_zero_is_in_the_hull(impl, case):
    g, h = jacobian(1, 5, 0)[0], jacobian(1, 5, 1)[0]
    J = {
        "zero": torch.stack([g, 0 * g, h]),
        "opposite": torch.stack([g, -g, h]),
        "opposite-scaled": torch.stack([1e-6 * g, -g, h]),
    }[case]
    for m in (M.NashMTL(impl=impl), M.FairGrad(alpha=2.0, impl=impl)):
        with pytest.raises(M.UndefinedMethodError, match="0 lies in the convex hull"):
            m(gram=gram(J))


@pytest.mark.parametrize("impl", IMPLS)
def test_non_convergence_is_a_distinct_error(impl):
    G = gram(jacobian(3, 6, 0, correlated=1.0))
    with pytest.raises(M.MethodConvergenceError, match="max_iter=0"):
        M.NashMTL(max_iter=0, impl=impl)(gram=G)
    with pytest.raises(M.MethodConvergenceError, match="did not converge"):
        M.FairGrad(alpha=1e8, impl=impl)(gram=G)
    assert not issubclass(M.MethodConvergenceError, M.UndefinedMethodError)


# --------------------------------------------------------------------------------------------
# MGDA and MGDA-UB on mixed scales: the KKT conditions of the problem as posed


def check_min_norm_kkt(J: torch.Tensor, a: torch.Tensor, rtol: float = 1e-8) -> None:
    """α in the simplex and ⟨gᵢ, d⟩ ≥ ‖d‖² (equality where αᵢ > 0), d = Jᵀα, each constraint to
    rtol·‖gᵢ‖·‖d‖ (its own scale)."""
    assert bool((a >= 0).all()) and abs(float(a.sum()) - 1) <= 1e-12
    d = a @ J
    q = float(d @ d)
    inner = J @ d
    tol = rtol * J.norm(dim=1) * d.norm() + 1e-300
    assert bool((inner - q >= -tol).all()), (inner - q, tol)
    act = a > 1e-12
    assert bool(((inner - q).abs()[act] <= tol[act]).all()), ((inner - q)[act], tol[act])


def test_mgda_mixed_scales_regression():
    J = torch.tensor([[1e-6, 0.0], [0.0, 1.0], [1e6, 1e6]], dtype=torch.float64)
    for a in [M.MGDA()(gram=gram(J)), _impl.min_norm_weights(gram(J), "torch")] + (
        [_impl.min_norm_weights(gram(J), "numba")] if _impl.HAVE_NUMBA else []
    ):
        assert float((a @ J).norm()) <= 1e-6
        check_min_norm_kkt(J, a)


@FAST
@given(st.integers(2, 6), st.integers(0, 10_000), st.data())
def test_mgda_and_mgda_ub_kkt_on_norms_spread_over_1e16(k, seed, data):
    e = data.draw(st.lists(st.integers(-8, 8), min_size=k, max_size=k))
    J = (
        jacobian(k, k + 2, seed, correlated=data.draw(st.sampled_from([0.0, 1.0])))
        * torch.tensor([10.0**x for x in e], dtype=torch.float64)[:, None]
    )
    G = gram(J)
    check_min_norm_kkt(J, M.MGDA()(gram=G))
    for impl in IMPLS:
        check_min_norm_kkt(J, _impl.min_norm_weights(G, impl))
        check_min_norm_kkt(J, M.MGDAUB("none", impl=impl)(gram=G))
        # "l2": α is MGDA on the unit gradients
        U = J / J.norm(dim=1, keepdim=True)
        check_min_norm_kkt(U, M.MGDAUB("l2", impl=impl)(gram=G))


# --------------------------------------------------------------------------------------------
# hyper-parameters checked at construction; reduced precisions; owned, resumable randomness

NAN, INF = float("nan"), float("inf")
BAD = [
    ("cagrad", {"c": INF}, "c"),
    ("cagrad", {"c": NAN}, "c"),
    ("cagrad", {"max_iter": 0}, "max_iter"),
    ("cagrad", {"norm_eps": NAN}, "norm_eps"),
    ("cagrad", {"max_iter": 2.5}, "max_iter"),
    ("gradvac", {"eps": NAN}, "eps"),
    ("gradvac", {"beta": 2.0}, "beta"),
    ("db-mtl", {"eps": NAN}, "eps"),
    ("nash-mtl", {"max_norm": NAN}, "max_norm"),
    ("nash-mtl", {"max_iter": -1}, "max_iter"),
    ("nash-mtl", {"update_weights_every": 0}, "update_weights_every"),
    ("fairgrad", {"max_iter": -1}, "max_iter"),
    ("fairgrad", {"alpha": INF}, "alpha"),
    ("primary-aux", {"eps": NAN}, "eps"),
    ("primary-aux", {"margin": NAN}, "margin"),
    ("primary-aux", {"n_primary": 1.0}, "n_primary"),
    ("dwa", {"temperature": NAN}, "temperature"),
    ("stch", {"mu": INF}, "mu"),
    ("uncertainty", {"lr": NAN}, "lr"),
    ("imtl-l", {"lr": INF}, "lr"),
    ("famo", {"eps": NAN}, "eps"),
    ("ol-aux", {"lr": INF}, "lr"),
    ("gradnorm", {"alpha": NAN}, "alpha"),
    ("mgda-ub", {"scale_weights": "yes"}, "scale_weights"),
    ("cosine-gated", {"eps": -1.0}, "eps"),
    ("pcgrad-aux", {"eps": NAN}, "eps"),
    ("gradient-normalization", {"eps": NAN}, "eps"),
    ("upgrad", {"pref_vector": [NAN, 1.0]}, "pref_vector"),
    ("aligned-mtl", {"pref_vector": [[1.0]]}, "pref_vector"),
    ("stch", {"reference": [INF, 0.0]}, "reference"),
]


@pytest.mark.parametrize("name,kwargs,param", BAD)
def test_bad_hyper_parameters_are_refused_at_construction(name, kwargs, param):
    with pytest.raises((ValueError, TypeError), match=rf"{param}.* must "):
        M.get(name, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precisions_are_computed_in_float32(dtype):
    J = jacobian(3, 6, 0, correlated=1.0)
    G, L = gram(J), torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    for name, info in M.infos().items():
        m32, mlow = info.example(3), info.example(3)
        if "jacobian" in m32.needs:
            continue
        if info.random:
            m32, mlow = (
                info.example(3, generator=torch.Generator().manual_seed(0)),
                info.example(3, generator=torch.Generator().manual_seed(0)),
            )
        # the same (rounded) inputs, computed in float32: equal up to the final rounding
        ref = m32(gram=G.to(dtype).float(), losses=L.to(dtype).float())
        w = mlow(gram=G.to(dtype), losses=L.to(dtype))
        assert w.dtype == dtype and bool(torch.isfinite(w).all()), name
        assert torch.equal(w, ref.to(dtype)), name


@pytest.mark.parametrize("name", ["pcgrad", "gradvac", "random", "rlw"])
def test_default_generator_is_owned_seeded_and_resumes_bit_identically(name):
    steps = [(gram(jacobian(3, 5, t)), torch.rand(3, dtype=torch.float64) + 0.5) for t in range(6)]
    torch.manual_seed(0)
    a = M.get(name)
    ref = [a(gram=G, losses=L) for G, L in steps]
    torch.manual_seed(0)
    b = M.get(name)
    for G, L in steps[:3]:
        torch.rand(5)  # other draws from the global RNG do not change the method's draws
        b(gram=G, losses=L)
    saved = b.state_dict()
    torch.manual_seed(123)
    c = M.get(name)
    c.load_state_dict(saved)
    for (G, L), r in zip(steps[3:], ref[3:], strict=True):
        assert torch.equal(c(gram=G, losses=L), r)


def test_float32_working_dtype_of_the_gpu_path():
    """On a GPU a float32 Gram matrix is solved in float32: the same code run here in float32
    (CAGrad's degenerate-case detection and the α-fair solve use √ε-scaled tolerances)."""
    from taskgrad.methods.gram._alpha_fair import _cosine_form, _newton, _zero_in_hull
    from taskgrad.methods.gram.cagrad import cagrad_weights

    for seed, ratio in [(0, 1.0), (1, 2.0), (2, 0.3)]:
        J = opposite_plus_one(seed, ratio)
        w = cagrad_weights(gram(J).float().unsqueeze(0), 0.4)[0].double()
        d, g0 = w @ J, J.mean(0)
        assert float((d - g0).norm()) <= 0.4 * float(g0.norm()) * (1 + 1e-4)
        assert float((J @ d).min()) >= cagrad_socp(J, 0.4) - 1e-4 * float(J.norm(dim=1).max()) ** 2
        Gs, c, _, _ = _cosine_form(gram(J).float().unsqueeze(0), 1.0)
        assert bool(_zero_in_hull(Gs).all())  # → UndefinedMethodError, not a convergence error
    J = jacobian(3, 6, 0, correlated=1.0) * torch.tensor(
        [[1e-4], [1.0], [1e3]], dtype=torch.float64
    )
    Gs, c, inv, _ = _cosine_form(gram(J).float().unsqueeze(0), 1.0)
    y, ok, _ = _newton(Gs, c, 1.0, 100)
    assert bool(ok.all()) and not bool(_zero_in_hull(Gs).any())
    a = (y * inv)[0].double()
    assert float(((gram(J) @ a) * a - 1).abs().max()) <= 1e-4


def test_alpha_fair_converges_where_its_residual_sits_at_rounding_level():
    """Cancellation in (Ĝy)ᵢ (here ~4e5) keeps the residual near 1e-11 at the solution: that is
    convergence, not a failure to converge (found among random problems with scales 1e±3)."""
    import random

    rng = random.Random(0)
    for t in range(40):
        k = rng.randint(2, 7)
        P = rng.randint(k, 12)
        J = jacobian(k, P, rng.randint(0, 10_000), correlated=rng.choice([0.0, 0.5, 2.0]))
        J = (
            J
            * torch.tensor([10 ** rng.uniform(-3, 3) for _ in range(k)], dtype=torch.float64)[
                :, None
            ]
        )
        for impl in IMPLS:
            w = M.FairGrad(alpha=0.5, impl=impl)(gram=gram(J))
            assert fair_residual(gram(J), w, 0.5) <= 1e-8, (t, impl)


@FAST
@given(
    st.integers(2, 4),
    st.integers(0, 10_000),
    st.sampled_from([0.2, 0.5, 0.9]),
    st.floats(0.1, 10.0),
)
def test_cagrad_primal_where_a_combination_of_gradients_cancels(k, seed, c, s):
    """0 in the hull by construction: the last gradient is −s·(a positive combination of the
    others); the answer is still the SOCP's worst-task optimum inside the ball."""
    J = jacobian(k, 6, seed)
    mix = torch.rand(k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    J = torch.cat([J, -s * (mix @ J).unsqueeze(0)])
    for impl in IMPLS:
        check_cagrad_primal(J, c, impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("gap", [1e-2, 1e-4, 1e-6])
@pytest.mark.slow
def test_nash_mtl_on_nearly_opposite_gradients(impl, gap):
    """At an angle of π − gap the solution α ≈ √2/gap exists; its residual can only reach the
    rounding level of ⟨gᵢ, d⟩ (cancellation ~2/gap²), which is convergence, not an error."""
    import math

    th = math.pi - gap
    J = torch.tensor([[1.0, 0.0], [math.cos(th), math.sin(th)]], dtype=torch.float64)
    a = M.NashMTL(max_norm=0.0, impl=impl)(gram=gram(J))
    # closed form for two unit gradients at angle θ: α₁ = α₂ = 1/√(1 + cos θ)
    exact = 1.0 / math.sqrt(1.0 + math.cos(th))
    assert float((a / exact - 1).abs().max()) <= 1e-15 * 8 / gap**2 + 1e-12
    with pytest.raises(M.UndefinedMethodError):
        M.NashMTL(impl=impl)(
            gram=gram(torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64))
        )
