"""MultiTaskLogisticRegression against cvxpy (a direct transcription of the objective)."""

import cvxpy as cp
import numpy as np
import pytest

from taskgrad.linear import MultiTaskLogisticRegression

TIGHT = dict(tol=1e-10, max_iter=200000)


def _data(seed=0, n=40, p=8, T=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, p))
    W = np.zeros((p, T))
    W[:3] = rng.standard_normal((3, T)) * 2
    Y = (X @ W + 0.5 + rng.standard_normal((n, T)) > 0).astype(int)
    return X, Y


def _cvx_binary(X, Y, alpha, penalty):
    n, p = X.shape
    T = Y.shape[1]
    S = 2.0 * Y - 1
    W, b = cp.Variable((p, T)), cp.Variable(T)
    Z = X @ W + np.ones((n, 1)) @ cp.reshape(b, (1, T), order="C")
    loss = cp.sum(cp.logistic(-cp.multiply(S, Z))) / n
    pen = {"l21": cp.sum(cp.norm(W, 2, axis=1)), "l1": cp.sum(cp.abs(W)),
           "l2": 0.5 * cp.sum_squares(W)}[penalty]
    prob = cp.Problem(cp.Minimize(loss + alpha * pen))
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return W.value, b.value, prob.value


@pytest.mark.parametrize("penalty", ["l21", "l1", "l2"])
def test_binary_tasks_match_cvxpy(penalty):
    X, Y = _data()
    alpha = 0.05
    m = MultiTaskLogisticRegression(alpha=alpha, penalty=penalty, **TIGHT).fit(X, Y)
    W, b, val = _cvx_binary(X, Y, alpha, penalty)
    np.testing.assert_allclose(m.coef_, W.T, atol=2e-4)
    np.testing.assert_allclose(m.intercept_, b, atol=2e-4)
    assert m.dual_gap_ <= m.dual_gap_tol_


def test_multinomial_matches_cvxpy():
    rng = np.random.default_rng(1)
    n, p, K = 60, 6, 3
    X = rng.standard_normal((n, p))
    y = np.argmax(X[:, :K] + 0.8 * rng.standard_normal((n, K)), axis=1)
    alpha = 0.03
    m = MultiTaskLogisticRegression(alpha=alpha, **TIGHT).fit(X, y)
    Yh = np.eye(K)[y]
    W, b = cp.Variable((p, K)), cp.Variable(K)
    Z = X @ W + np.ones((n, 1)) @ cp.reshape(b, (1, K), order="C")
    obj = (cp.sum(cp.log_sum_exp(Z, axis=1)) - cp.sum(cp.multiply(Yh, Z))) / n \
        + alpha * cp.sum(cp.norm(W, 2, axis=1))
    cp.Problem(cp.Minimize(obj)).solve(solver=cp.CLARABEL)
    # softmax is invariant to a common shift of the intercepts: compare centered intercepts
    np.testing.assert_allclose(m.coef_, W.value.T, atol=5e-4)
    np.testing.assert_allclose(m.intercept_ - m.intercept_.mean(), b.value - b.value.mean(),
                               atol=5e-4)
    P = m.predict_proba(X)
    assert P.shape == (n, K) and np.allclose(P.sum(1), 1)
    assert np.array_equal(m.predict(X), np.argmax(P, 1))


def test_apg_matches_cd():
    X, Y = _data(2)
    a = MultiTaskLogisticRegression(alpha=0.03, **TIGHT).fit(X, Y)
    b = MultiTaskLogisticRegression(alpha=0.03, solver="apg", **TIGHT).fit(X, Y)
    np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-6)


def test_per_task_designs_and_outputs():
    rng = np.random.default_rng(3)
    tasks = []
    for m in (30, 50, 40):
        x = rng.standard_normal((m, 10))
        tasks.append((x, np.where(x[:, 0] + 0.3 * rng.standard_normal(m) > 0, "yes", "no")))
    est = MultiTaskLogisticRegression(alpha=0.02, **TIGHT).fit(tasks)
    assert est.coef_.shape == (3, 10)
    pred = est.predict([x for x, _ in tasks])
    assert [p.shape[0] for p in pred] == [30, 50, 40] and set(np.concatenate(pred)) <= {"yes", "no"}
    assert est.score(tasks) > 0.8
    # a shared design given as T identical per-task designs gives the multi-task-Y solution
    X, Y = _data(4)
    shared = MultiTaskLogisticRegression(alpha=0.02, **TIGHT).fit(X, Y)
    per = MultiTaskLogisticRegression(alpha=0.02, **TIGHT).fit([(X, Y[:, t]) for t in range(3)])
    np.testing.assert_allclose(per.coef_, shared.coef_, atol=1e-7)
    proba = shared.predict_proba(X)
    assert proba.shape == Y.shape and np.all((proba > 0.5) == (shared.predict(X) == 1))


def test_large_alpha_gives_zero_and_ovr():
    X, Y = _data(5)
    m = MultiTaskLogisticRegression(alpha=10.0).fit(X, Y)
    assert np.all(m.coef_ == 0)
    y = np.argmax(X[:, :3], 1)
    ovr = MultiTaskLogisticRegression(alpha=0.01, multi_class="ovr").fit(X, y)
    assert ovr.coef_.shape == (3, X.shape[1]) and ovr.score(X, y) > 0.8


def test_badly_scaled_features_reach_gap_and_match_cvxpy():
    """Columns scaled by 10^U(−2, 2): the proximal Newton solver still reaches the duality-gap
    tolerance, and agrees with cvxpy on the same (scaled) problem — compared through x_j·w_j,
    i.e. coefficients times column scales, and through the objective value."""
    rng = np.random.default_rng(7)
    X, Y = _data(seed=7, n=60, p=8, T=3)
    scale = 10.0 ** rng.uniform(-2, 2, X.shape[1])
    Xs = X * scale
    alpha = 0.02
    m = MultiTaskLogisticRegression(alpha=alpha, **TIGHT).fit(Xs, Y)
    assert m.converged_ and m.dual_gap_ <= m.dual_gap_tol_
    W, b, val = _cvx_binary(Xs, Y, alpha, "l21")
    np.testing.assert_allclose(m.coef_ * scale, W.T * scale, atol=5e-4)
    np.testing.assert_allclose(m.intercept_, b, atol=5e-4)
    S = 2.0 * Y - 1
    Z = Xs @ m.coef_.T + m.intercept_
    ours = np.logaddexp(0, -S * Z).sum() / X.shape[0] + alpha * np.linalg.norm(m.coef_, axis=0).sum()
    assert ours <= val + 1e-7
