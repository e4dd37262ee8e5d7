"""MultiTaskLogisticRegression against cvxpy (a direct transcription of the objective)."""

import cvxpy as cp
import numpy as np
import pytest

from taskgrad.linear import MultiTaskLogisticRegression

TIGHT = {"tol": 1e-10, "max_iter": 200000}


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
    pen = {
        "l21": cp.sum(cp.norm(W, 2, axis=1)),
        "l1": cp.sum(cp.abs(W)),
        "l2": 0.5 * cp.sum_squares(W),
    }[penalty]
    prob = cp.Problem(cp.Minimize(loss + alpha * pen))
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    return W.value, b.value, prob.value


@pytest.mark.parametrize("penalty", ["l21", "l1", "l2"])
def test_binary_tasks_match_cvxpy(penalty):
    X, Y = _data()
    alpha = 0.05
    m = MultiTaskLogisticRegression(alpha=alpha, penalty=penalty, **TIGHT).fit(X, Y)
    W, b, _ = _cvx_binary(X, Y, alpha, penalty)
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
    obj = (cp.sum(cp.log_sum_exp(Z, axis=1)) - cp.sum(cp.multiply(Yh, Z))) / n + alpha * cp.sum(
        cp.norm(W, 2, axis=1)
    )
    cp.Problem(cp.Minimize(obj)).solve(solver=cp.CLARABEL)
    # softmax is invariant to a common shift of the intercepts: compare centered intercepts
    np.testing.assert_allclose(m.coef_, W.value.T, atol=5e-4)
    np.testing.assert_allclose(
        m.intercept_ - m.intercept_.mean(), b.value - b.value.mean(), atol=5e-4
    )
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
    ours = (
        np.logaddexp(0, -S * Z).sum() / X.shape[0] + alpha * np.linalg.norm(m.coef_, axis=0).sum()
    )
    assert ours <= val + 1e-7


def _sw_data():
    """The data of scikit-learn's sample-weight-equivalence check: 15 rows of 30 uniform [0, 1)
    features (uncentered), 3 classes, integer weights."""
    rng = np.random.RandomState(42)
    X = rng.rand(15, 30)
    y = rng.randint(0, 3, size=15)
    sw = rng.randint(0, 5, size=15)
    return X, y, sw


def test_multinomial_on_uncentered_features_converges_at_the_defaults():
    """Uncentered columns used to make coordinate descent crawl against the intercept (1000 epochs,
    gap 18× the tolerance, a ConvergenceWarning); the columns are now centered implicitly."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    X, y, sw = _sw_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        m = MultiTaskLogisticRegression().fit(X.repeat(sw, axis=0), y.repeat(sw))
    assert m.converged_ and m.n_iter_ < 600


@pytest.mark.slow
def test_weights_equal_repeated_rows_at_a_tight_tolerance():
    """What check_estimator's expected sample-weight failures stand for: at tol=1e-8 the weighted
    and repeated fits agree in predict_proba to 1e-7 (the check's rtol)."""
    X, y, sw = _sw_data()
    kw = {"tol": 1e-8, "max_iter": 5000}
    a = MultiTaskLogisticRegression(**kw).fit(X.repeat(sw, axis=0), y.repeat(sw))
    b = MultiTaskLogisticRegression(**kw).fit(X, y, sample_weight=sw)
    np.testing.assert_allclose(a.predict_proba(X), b.predict_proba(X), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("target", ["tasks", "multinomial"])
def test_centered_design_gives_the_same_model_in_original_coordinates(target):
    """Centering is a change of variables b' = b + μᵀW: the coefficients, probabilities and a warm
    start in the user's coordinates are unchanged (the APG solver, which materializes the
    centered design, agrees)."""
    rng = np.random.RandomState(0)
    X = rng.rand(80, 12) + 3.0
    if target == "tasks":
        y = (X[:, :3] @ rng.randn(3, 2) + 0.3 * rng.randn(80, 2) > 0).astype(int)
        y[:40, 0] = 1 - y[:40, 0]
        y[::3, 1] = 1 - y[::3, 1]
    else:
        y = rng.randint(0, 3, 80)
    kw = {"alpha": 1e-3, "tol": 1e-10, "max_iter": 100000}
    cd = MultiTaskLogisticRegression(**kw).fit(X, y)
    apg = MultiTaskLogisticRegression(solver="apg", **kw).fit(X, y)
    np.testing.assert_allclose(cd.coef_, apg.coef_, atol=1e-8)
    np.testing.assert_allclose(cd.predict_proba(X), apg.predict_proba(X), atol=1e-8)
    Z = X @ cd.coef_.T + cd.intercept_
    np.testing.assert_allclose(
        np.atleast_2d(cd.decision_function(X)).reshape(Z.shape), Z, atol=1e-12
    )
    warm = MultiTaskLogisticRegression(warm_start=True, **kw).fit(X, y)
    warm.fit(X, y)  # the saved solution, fed back as a warm start, is already optimal
    assert warm.n_iter_ == 0
    np.testing.assert_allclose(warm.intercept_, cd.intercept_, atol=1e-12)
