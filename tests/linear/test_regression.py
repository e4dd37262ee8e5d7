"""MultiTaskLasso / MultiTaskElasticNet: agreement with scikit-learn, KKT, α_max, weights,
per-task.
"""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import linear_model as sk

from taskgrad.linear import MultiTaskElasticNet, MultiTaskLasso

from .conftest import alpha_max_l21

TIGHT = {"tol": 1e-12, "max_iter": 100000}


def rel(a, b):
    return np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(b).max(), 1e-12)


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("frac", [0.05, 0.3])
@pytest.mark.parametrize("solver", ["cd", "apg"])
def test_lasso_matches_sklearn(reg_data, fit_intercept, frac, solver):
    X, Y = reg_data
    alpha = frac * alpha_max_l21(X, Y)
    ours = MultiTaskLasso(alpha=alpha, fit_intercept=fit_intercept, solver=solver, **TIGHT)
    ours.fit(X, Y)
    ref = sk.MultiTaskLasso(
        alpha=alpha, fit_intercept=fit_intercept, tol=1e-14, max_iter=100000
    ).fit(X, Y)
    assert rel(ours.coef_, ref.coef_) < 1e-5
    assert np.abs(ours.intercept_ - ref.intercept_).max() < 1e-5 * np.abs(Y).max()
    assert ours.dual_gap_ <= ours.dual_gap_tol_ and ours.n_iter_ > 0


@pytest.mark.parametrize("l1_ratio", [0.2, 0.7])
def test_enet_matches_sklearn(reg_data, l1_ratio):
    X, Y = reg_data
    alpha = 0.1 * alpha_max_l21(X, Y)
    ours = MultiTaskElasticNet(alpha=alpha, l1_ratio=l1_ratio, **TIGHT).fit(X, Y)
    ref = sk.MultiTaskElasticNet(alpha=alpha, l1_ratio=l1_ratio, tol=1e-14, max_iter=100000).fit(
        X, Y
    )
    assert rel(ours.coef_, ref.coef_) < 1e-5


@pytest.mark.parametrize("solver", ["cd", "apg"])
def test_sparse_X_matches_dense_sklearn(solver):
    rng = np.random.default_rng(1)
    X = sp.random(80, 150, density=0.1, random_state=2, format="csr")
    W = np.zeros((150, 3))
    W[:6] = 3 * rng.standard_normal((6, 3))
    Y = X @ W + 0.3 * rng.standard_normal((80, 3)) + 1.0
    alpha = 0.1 * alpha_max_l21(X.toarray(), Y)
    ours = MultiTaskLasso(alpha=alpha, solver=solver, **TIGHT).fit(X, Y)
    ref = sk.MultiTaskLasso(alpha=alpha, tol=1e-14, max_iter=100000).fit(X.toarray(), Y)
    assert rel(ours.coef_, ref.coef_) < 1e-5
    assert np.abs(ours.intercept_ - ref.intercept_).max() < 1e-6


def test_kkt_conditions(reg_data):
    """X_jᵀR/n = α W_j/‖W_j‖ on the support, ‖X_jᵀR/n‖ ≤ α off it (R the centered residual)."""
    X, Y = reg_data
    alpha = 0.1 * alpha_max_l21(X, Y)
    m = MultiTaskLasso(alpha=alpha, **TIGHT).fit(X, Y)
    W = m.coef_.T
    R = Y - X @ W - m.intercept_
    assert np.abs(R.mean(0)).max() < 1e-10  # intercept optimal
    G = X.T @ R / X.shape[0]
    norms = np.linalg.norm(W, axis=1)
    on = norms > 0
    assert on.any() and (~on).any()
    np.testing.assert_allclose(G[on], alpha * W[on] / norms[on, None], atol=1e-7)
    assert np.linalg.norm(G[~on], axis=1).max() <= alpha * (1 + 1e-7)


def test_alpha_max_gives_zero(reg_data):
    X, Y = reg_data
    amax = alpha_max_l21(X, Y)
    assert np.all(MultiTaskLasso(alpha=amax * 1.0001).fit(X, Y).coef_ == 0)
    assert np.any(MultiTaskLasso(alpha=amax * 0.99).fit(X, Y).coef_ != 0)


def test_sample_weight_equals_repetition(reg_data):
    X, Y = reg_data
    w = np.random.default_rng(3).integers(0, 4, X.shape[0])
    alpha = 0.1 * alpha_max_l21(X, Y)
    a = MultiTaskElasticNet(alpha=alpha, l1_ratio=0.8, **TIGHT).fit(X, Y, sample_weight=w)
    rep = np.repeat(np.arange(X.shape[0]), w)
    b = MultiTaskElasticNet(alpha=alpha, l1_ratio=0.8, **TIGHT).fit(X[rep], Y[rep])
    assert rel(a.coef_, b.coef_) < 1e-6
    np.testing.assert_allclose(a.intercept_, b.intercept_, atol=1e-7)


def test_warm_start_reuses_solution(reg_data):
    X, Y = reg_data
    alpha = 0.1 * alpha_max_l21(X, Y)
    m = MultiTaskLasso(alpha=alpha, warm_start=True, tol=1e-10).fit(X, Y)
    first, coef = m.n_iter_, m.coef_.copy()
    m.fit(X, Y)
    assert m.n_iter_ <= first // 2 and rel(m.coef_, coef) < 1e-4


def test_one_dimensional_y_is_one_task(reg_data):
    X, Y = reg_data
    m = MultiTaskLasso(alpha=0.1, **TIGHT).fit(X, Y[:, 0])
    ref = sk.Lasso(alpha=0.1, tol=1e-14, max_iter=100000).fit(X, Y[:, 0])
    assert m.coef_.shape == (X.shape[1],) and np.isscalar(m.intercept_)
    assert rel(m.coef_, ref.coef_) < 1e-5


def test_per_task_same_design_equals_shared(reg_data):
    X, Y = reg_data
    alpha = 0.1 * alpha_max_l21(X, Y)
    shared = MultiTaskLasso(alpha=alpha, **TIGHT).fit(X, Y)
    tasks = [(X, Y[:, t]) for t in range(Y.shape[1])]
    per = MultiTaskLasso(alpha=alpha, **TIGHT).fit(tasks)
    assert rel(per.coef_, shared.coef_) < 1e-6
    np.testing.assert_allclose(per.intercept_, shared.intercept_, atol=1e-7)
    pred = per.predict([X] * Y.shape[1])
    np.testing.assert_allclose(np.stack(pred, 1), shared.predict(X), atol=1e-6)


@pytest.mark.parametrize("sparse", [False, True])
def test_per_task_l1_is_independent_lassos(sparse):
    """Ω = ‖W‖₁ decouples: task t solves (1/2n_t)‖y_t − X_t w‖² + α(n̄/n_t)‖w‖₁."""
    rng = np.random.default_rng(4)
    sizes = [30, 45, 60]
    Xs = [rng.standard_normal((m, 40)) for m in sizes]
    if sparse:
        Xs = [sp.csr_matrix(x * (rng.random(x.shape) < 0.3)) for x in Xs]
    ys = [
        x @ np.r_[rng.standard_normal(5), np.zeros(35)] + rng.standard_normal(x.shape[0])
        for x in Xs
    ]
    alpha, nbar = 0.05, np.mean(sizes)
    m = MultiTaskLasso(alpha=alpha, penalty="l1", **TIGHT).fit(Xs, ys)
    for t, (x, y) in enumerate(zip(Xs, ys, strict=True)):
        ref = sk.Lasso(alpha=alpha * nbar / sizes[t], tol=1e-14, max_iter=100000)
        ref.fit(x.toarray() if sparse else x, y)
        assert rel(m.coef_[t], ref.coef_) < 1e-5
        assert abs(m.intercept_[t] - ref.intercept_) < 1e-6


def test_per_task_kkt_with_different_designs():
    """L21 with per-task designs: g_jt = Σ_{i∈t} x_ij r_i / n̄ satisfies the group KKT conditions."""
    rng = np.random.default_rng(5)
    sizes = [25, 40, 33, 50]
    tasks = []
    for m in sizes:
        x = rng.standard_normal((m, 30))
        tasks.append((x, x[:, :4] @ rng.standard_normal(4) + rng.standard_normal(m) + 2))
    alpha = 0.3
    est = MultiTaskLasso(alpha=alpha, **TIGHT).fit(tasks)
    nbar = np.mean(sizes)
    G = np.stack(
        [x.T @ (y - x @ est.coef_[t] - est.intercept_[t]) / nbar for t, (x, y) in enumerate(tasks)],
        axis=1,
    )
    W = est.coef_.T
    norms = np.linalg.norm(W, axis=1)
    on = norms > 0
    assert on.any() and (~on).any()
    np.testing.assert_allclose(G[on], alpha * W[on] / norms[on, None], atol=1e-7)
    assert np.linalg.norm(G[~on], axis=1).max() <= alpha * (1 + 1e-7)


@settings(max_examples=8, deadline=None)
@given(perm_seed=st.integers(0, 1000))
def test_permutation_equivariance(perm_seed):
    """Permuting features and tasks permutes the coefficients the same way."""
    rng = np.random.default_rng(perm_seed)
    X = rng.standard_normal((30, 20))
    Y = X[:, :3] @ rng.standard_normal((3, 3)) + 0.1 * rng.standard_normal((30, 3))
    pf, pt = rng.permutation(20), rng.permutation(3)
    a = MultiTaskLasso(alpha=0.1, **TIGHT).fit(X, Y).coef_
    b = MultiTaskLasso(alpha=0.1, **TIGHT).fit(X[:, pf], Y[:, pt]).coef_
    np.testing.assert_allclose(b, a[pt][:, pf], atol=1e-8)


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("order", ["C", "F"])
def test_all_columns_are_built_once_and_equal_the_centered_design(
    fit_intercept: bool, order: str
) -> None:
    """The working set of every feature reuses one design (no copy per outer iteration) that
    equals the explicitly centered design; a subset is still a fresh centered copy."""
    from taskgrad.linear._problem import make_problem

    rng = np.random.default_rng(0)
    X = np.asarray(rng.normal(size=(30, 6)) + 3.0, order=order)
    Y = rng.normal(size=(30, 2))
    P = make_problem(
        X, Y, np.ones(30), loss="quadratic", fit_intercept=fit_intercept, task=None, n_tasks=2
    )
    every = np.arange(6)
    A1 = P.columns(every)
    assert P.columns(every) is A1 and A1.flags.f_contiguous
    np.testing.assert_allclose(A1, P.dense_design(), atol=1e-12)
    sub = P.columns(np.array([1, 4]))
    np.testing.assert_allclose(sub, P.dense_design()[:, [1, 4]], atol=1e-12)
    assert sub is not P.columns(np.array([1, 4]))
    est = MultiTaskLasso(alpha=1e-4, fit_intercept=fit_intercept).fit(X, Y)  # every feature active
    ref = sk.MultiTaskLasso(
        alpha=1e-4, fit_intercept=fit_intercept, tol=1e-10, max_iter=100_000
    ).fit(X, Y)
    np.testing.assert_allclose(est.coef_, ref.coef_, atol=1e-4)


@pytest.mark.parametrize("solver", ["cd", "apg"])
@pytest.mark.parametrize("tol", [1e-4, 1e-2, 0.25])
def test_below_alpha_max_is_never_all_zero_at_the_gap_boundary(reg_data, solver, tol):
    """At α = (1 − √tol)·α_max the duality gap of W = 0 equals tol·f(0) exactly, so rounding alone
    decided whether the all-zero solution passed the stopping test; any α < α_max must move W."""
    X, Y = reg_data
    alpha = (1 - np.sqrt(tol)) * alpha_max_l21(X, Y)
    m = MultiTaskLasso(alpha=alpha, tol=tol, solver=solver).fit(X, Y)
    assert np.any(m.coef_ != 0) and m.n_iter_ > 0
    enet = MultiTaskElasticNet(alpha=alpha / 0.5, l1_ratio=0.5, tol=tol, solver=solver).fit(X, Y)
    assert np.any(enet.coef_ != 0)
