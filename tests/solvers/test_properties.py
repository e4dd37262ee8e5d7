"""Invariances of the solvers, checked with hypothesis on random Jacobians."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from taskgrad.solvers import (
    _compiled,
    min_norm_simplex,
    nnls,
    primary_aux,
    primary_aux_kkt_residual,
)
from tests.solvers.gram_cases import (
    FLOAT32_SAFE_LOG10,
    kkt_residual_reference,
    mixed_scale_grams,
)

finite = st.floats(min_value=-10, max_value=10, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def jacobians(draw, min_k: int = 2, max_k: int = 8):
    k = draw(st.integers(min_k, max_k))
    P = draw(st.integers(1, 12))
    J = draw(arrays(np.float64, (k, P), elements=finite))
    return torch.from_numpy(J)


def _tol(J: torch.Tensor, w: torch.Tensor) -> float:
    return 1e-9 * float(J.norm(dim=1).max() ** 2 * (1 + w.abs().sum())) + 1e-300


@settings(max_examples=150, deadline=None)
@given(jacobians())
@pytest.mark.slow
def test_primary_aux_never_conflicts_with_an_auxiliary(J: torch.Tensor) -> None:
    # A Gram matrix squares the conditioning of the gradients: auxiliaries that are dependent to
    # within ~1e-8 (nearly opposite or parallel, a singular value of the normalized gradients in
    # (1e-12, 1e-5)) make G singular at float64 rounding, where the projection is only determined
    # to about sqrt(eps). Exactly dependent ones (duplicated, opposite) are fine and kept.
    Ja = J[1:][J[1:].norm(dim=1) > 0]
    if Ja.shape[0] > 1:
        sv = torch.linalg.svdvals(Ja / Ja.norm(dim=1, keepdim=True))
        assume(not bool(((sv > 1e-12 * sv[0]) & (sv < 1e-5 * sv[0])).any()))
    w = primary_aux(J @ J.T)
    assert torch.isfinite(w).all()
    assert float(w[0]) == 1.0 and bool((w[1:] >= 0).all())
    u = J.T @ w
    assert bool((J[1:] @ u >= -_tol(J, w)).all())
    # it is also the closest such point: no feasible step towards g0 helps (⟨u − g0, u⟩ = 0)
    assert abs(float((u - J[0]) @ u)) <= _tol(J, w)


@settings(max_examples=100, deadline=None)
@given(jacobians(min_k=3), st.randoms(use_true_random=False))
@pytest.mark.slow
def test_permuting_auxiliaries_permutes_weights(J: torch.Tensor, rnd) -> None:
    k = J.shape[0]
    perm = list(range(1, k))
    rnd.shuffle(perm)
    order = torch.tensor([0, *perm])
    w = primary_aux(J @ J.T)
    wp = primary_aux(J[order] @ J[order].T)
    # the direction is unique; the weights too when the auxiliaries are independent
    torch.testing.assert_close(
        J[order].T @ wp, J.T @ w, rtol=1e-7, atol=1e-7 * float(1 + J.abs().max() ** 2)
    )
    Ja = J[1:]
    if torch.linalg.matrix_rank(Ja) == k - 1 and torch.linalg.cond(Ja @ Ja.T) < 1e6:
        torch.testing.assert_close(wp, w[order], rtol=1e-6, atol=1e-8)


@settings(max_examples=150, deadline=None)
@given(jacobians(min_k=2, max_k=2))
@pytest.mark.slow
def test_closed_form_matches_general_solver(J: torch.Tensor) -> None:
    G = J @ J.T
    w = primary_aux(G)  # k = 2: the closed form
    # with an extra zero auxiliary the general active-set path runs on the same problem
    J3 = torch.cat([J, torch.zeros_like(J[:1])])
    w3 = primary_aux(J3 @ J3.T)
    u = J.T @ w
    others = [w3[:2]]
    if (
        float(G[1, 1]) > 0
    ):  # (‖g1‖² can underflow to 0 while ⟨g0, g1⟩ does not: nnls calls that unbounded)
        others.append(torch.cat([w[:1], nnls(G[1:, 1:], G[1:, 0])]))  # the general pivoting solver
    for other in others:
        torch.testing.assert_close(
            J.T @ other, u, rtol=1e-8, atol=1e-8 * float(1 + J.abs().max() ** 2)
        )
    assert float(w3[2]) == 0.0


@settings(max_examples=150, deadline=None)
@given(jacobians(min_k=1))
@pytest.mark.slow
def test_mgda_direction_descends_every_task(J: torch.Tensor) -> None:
    a = min_norm_simplex(J @ J.T)
    assert bool((a >= 0).all()) and abs(float(a.sum()) - 1) <= 1e-12
    d = J.T @ a
    assert bool((J @ d >= (d @ d) - _tol(J, a)).all())


@settings(max_examples=60, deadline=None)
@given(jacobians(min_k=2, max_k=6), st.floats(min_value=1e-12, max_value=1e12))
def test_global_scale_invariance(J: torch.Tensor, s: float) -> None:
    G = J @ J.T
    # a squared norm near the smallest normal number is a zero gradient on one side of the
    # scaling and not on the other (by design): keep the nonzero ones away from it
    d = G.diagonal()
    assume(bool(((d == 0) | (d > 1e-290)).all()) and bool(((d * s == 0) | (d * s > 1e-290)).all()))
    for n in (1, J.shape[0]):
        w = primary_aux(G, n_primary=n)
        ws = primary_aux(G * s, n_primary=n)
        torch.testing.assert_close(
            J.T @ ws, J.T @ w, rtol=1e-6, atol=1e-6 * float(1 + J.abs().max() ** 2)
        )


# ---------------------------------------------------------------------------------------------
# Mixed task scales: the KKT conditions of the original problem are the oracle.

# a correct answer is O(k·eps) in these units; a wrong one O(1) (see kkt_residual_reference)
KKT64 = 1e-10


@settings(max_examples=150, deadline=None)
@given(mixed_scale_grams(min_k=1, max_k=6), st.data())
@pytest.mark.slow
def test_mixed_and_mgda_kkt_with_norms_over_1e40(JG, data) -> None:
    J, G = JG
    k = J.shape[0]
    n = data.draw(st.integers(2, k)) if k > 1 else 1
    w, info = primary_aux(G, n_primary=n, return_info=True)
    ref = kkt_residual_reference(w, G, n)
    assert ref <= KKT64, (ref, w)
    assert bool(info.converged)
    # the certificate is the original problem's residual, not the rescaled one's
    assert float(info.kkt_residual) <= KKT64
    torch.testing.assert_close(
        info.kkt_residual, primary_aux_kkt_residual(w, G, n), rtol=0, atol=1e-14
    )
    if n == k:
        assert torch.equal(min_norm_simplex(G), w)


@settings(max_examples=100, deadline=None)
@given(mixed_scale_grams(min_k=2, max_k=6))
@pytest.mark.slow
def test_projection_kkt_with_norms_over_1e40(JG) -> None:
    J, G = JG
    w, info = primary_aux(G, return_info=True)
    assert kkt_residual_reference(w, G, 1) <= KKT64
    assert bool(info.converged) and float(info.kkt_residual) <= KKT64


@settings(max_examples=100, deadline=None)
@given(mixed_scale_grams(min_k=2, max_k=6))
@pytest.mark.slow
def test_compiled_min_norm_matches_the_kkt_and_the_torch_path(JG) -> None:
    J, G = JG
    k = J.shape[0]
    W, status = _compiled.min_norm(G.unsqueeze(0).numpy().copy(), 10 * k + 50)
    assert int(status[0]) == 0
    wc = torch.from_numpy(W[0])
    assert kkt_residual_reference(wc, G, k) <= KKT64
    # both paths reach the same minimum ‖d‖² to the rounding of G (V² scale)
    wt = min_norm_simplex(G)
    sig = G.diagonal().clamp_min(0).sqrt()
    scale = float(((wt * sig).sum() + (wc * sig).sum()) ** 2)
    assert abs(float(wc @ G @ wc - wt @ G @ wt)) <= 1e-10 * scale


@settings(max_examples=60, deadline=None)
@given(mixed_scale_grams(min_k=2, max_k=6, max_log10=FLOAT32_SAFE_LOG10), st.data())
@pytest.mark.slow
def test_float32_grams_with_norms_over_1e16(JG, data) -> None:
    J, G = JG
    k = J.shape[0]
    n = data.draw(st.integers(1, k))
    G32 = G.float()
    assume(bool(torch.isfinite(G32).all()))
    for cd in (None, torch.float32):
        w, info = primary_aux(G32, n_primary=n, compute_dtype=cd, return_info=True)
        assert w.dtype == torch.float32
        # the float32 answer is judged on the float32 Gram the solver was given
        assert kkt_residual_reference(w, G32.double(), n) <= 1e-4
        assert bool(info.converged)


@settings(max_examples=60, deadline=None)
@given(mixed_scale_grams(min_k=3, max_k=6), st.randoms(use_true_random=False))
@pytest.mark.slow
def test_mgda_permutation_equivariant_with_mixed_scales(JG, rnd) -> None:
    J, G = JG
    k = J.shape[0]
    perm = list(range(k))
    rnd.shuffle(perm)
    p = torch.tensor(perm)
    w = min_norm_simplex(G)
    wp = min_norm_simplex(G[p][:, p])
    sig = G.diagonal().clamp_min(0).sqrt()
    scale = float(((w * sig).sum() + (wp[torch.argsort(p)] * sig).sum()) ** 2)
    # the minimum value ‖d‖² is unique (the weights need not be, with duplicated gradients)
    assert abs(float(w @ G @ w) - float(wp @ G[p][:, p] @ wp)) <= 1e-10 * scale


@settings(max_examples=60, deadline=None)
@given(
    mixed_scale_grams(min_k=2, max_k=6, max_log10=FLOAT32_SAFE_LOG10, structured=False),
    st.floats(0.01, 0.5),
)
def test_relative_margin_with_norms_over_1e16(JG, margin: float) -> None:
    # the root search on ρ = ‖v‖ once stopped at a tolerance of the largest auxiliary's norm
    J, G = JG
    assume(bool((G.diagonal() > 1e-290).all()))
    w, info = primary_aux(G, margin=margin, relative_margin=True, return_info=True)
    assert bool(info.converged) and float(info.kkt_residual) <= 1e-8
    u = J.T @ w
    if float(u.norm()) > 0:
        cos = (J[1:] @ u) / (J[1:].norm(dim=1) * u.norm())
        assert bool((cos >= margin - 1e-7).all())


@settings(max_examples=60, deadline=None)
@given(mixed_scale_grams(min_k=2, max_k=6), st.data())
def test_device_path_without_polish_is_certified(JG, data) -> None:
    # off the CPU only answers with a residual above 1e-9 go to the exact active set: what the
    # pivoting alone returns is then still KKT-valid to that level (a backward error)
    import importlib

    module = importlib.import_module("taskgrad.solvers.primary_aux")
    J, G = JG
    k = J.shape[0]
    n = data.draw(st.integers(2, k))
    original = module._polish_all
    module._polish_all = lambda Gb: False
    try:
        w, info = primary_aux(G, n_primary=n, return_info=True)
    finally:
        module._polish_all = original
    assert kkt_residual_reference(w, G, n) <= 1e-9
    assert bool(info.converged)
