"""scikit-learn 1.9's conventions: an int ``alphas`` is a grid size (``n_alphas`` gone from the
CV estimators, deprecated in the path functions), ``verbose``/``n_jobs`` on the CV estimators,
and ConvergenceWarnings that point at the user's call."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import linear_model as sk
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold

from taskgrad.linear import (
    MultiTaskElasticNet,
    MultiTaskElasticNetCV,
    MultiTaskLasso,
    MultiTaskLassoCV,
    MultiTaskLogisticRegression,
    MultiTaskLogisticRegressionCV,
    multitask_enet_path,
    multitask_lasso_path,
    multitask_logistic_path,
)


@pytest.fixture
def data():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((60, 25))
    W = np.zeros((25, 3))
    W[:4] = rng.standard_normal((4, 3))
    Y = X @ W + 0.5 * rng.standard_normal((60, 3)) + 1.0
    return X, Y


def test_lasso_cv_int_alphas_is_scikit_learns_grid(data):
    """MultiTaskLassoCV(alphas=30) fits 30 α: the grid, the CV errors and the choice of
    sklearn's.
    """
    X, Y = data
    cv = KFold(3)
    ours = MultiTaskLassoCV(alphas=30, cv=cv, tol=1e-10, max_iter=100000).fit(X, Y)
    ref = sk.MultiTaskLassoCV(alphas=30, cv=cv, tol=1e-10, max_iter=100000).fit(X, Y)
    assert ours.alphas_.shape == (30,)
    np.testing.assert_allclose(ours.alphas_, ref.alphas_, rtol=1e-10)
    np.testing.assert_allclose(ours.mse_path_, ref.mse_path_, rtol=1e-6)
    assert ours.alpha_ == pytest.approx(ref.alpha_, rel=1e-12)
    np.testing.assert_allclose(ours.coef_, ref.coef_, atol=1e-6)


def test_enet_cv_int_alphas_is_scikit_learns_grid(data):
    X, Y = data
    ours = MultiTaskElasticNetCV(l1_ratio=0.5, alphas=7, cv=KFold(3)).fit(X, Y)
    ref = sk.MultiTaskElasticNetCV(l1_ratio=0.5, alphas=7, cv=KFold(3)).fit(X, Y)
    np.testing.assert_allclose(ours.alphas_, ref.alphas_, rtol=1e-10)
    assert ours.alpha_ == pytest.approx(ref.alpha_, rel=1e-12)


def test_path_int_alphas_is_scikit_learns_grid(data):
    X, Y = data
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)  # sklearn's path functions fit no intercept
    ours = multitask_lasso_path(Xc, Yc, alphas=7, fit_intercept=False, tol=1e-12, max_iter=100000)
    alphas, coefs, _ = sk.lasso_path(Xc, Yc, alphas=7, tol=1e-12, max_iter=100000)
    np.testing.assert_allclose(ours.alphas, alphas, rtol=1e-10)
    np.testing.assert_allclose(ours.coefs, np.moveaxis(coefs, -1, 0), atol=1e-7)


def test_array_alphas_are_the_values(data):
    X, Y = data
    cv = MultiTaskLassoCV(alphas=[0.05, 0.5, 0.2], cv=3).fit(X, Y)
    np.testing.assert_array_equal(cv.alphas_, [0.5, 0.2, 0.05])
    one = MultiTaskLassoCV(alphas=[0.1], cv=3).fit(X, Y)
    assert one.alpha_ == 0.1


def test_n_alphas_is_gone_from_the_cv_estimators():
    for cls in (MultiTaskLassoCV, MultiTaskElasticNetCV, MultiTaskLogisticRegressionCV):
        assert "n_alphas" not in cls().get_params()
        with pytest.raises(TypeError):
            cls(n_alphas=5)


@pytest.mark.parametrize("bad", [30.0, None, "100", True, [], [0.1, -1.0]])
def test_cv_alphas_that_are_neither_a_count_nor_values_are_refused(data, bad):
    X, Y = data
    with pytest.raises(ValueError, match="alphas"):
        MultiTaskLassoCV(alphas=bad, cv=3).fit(X, Y)


def test_path_n_alphas_and_alphas_none_are_deprecated_as_in_scikit_learn(data):
    X, Y = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert multitask_lasso_path(X, Y).alphas.shape == (100,)  # the default: 100, silently
        assert multitask_logistic_path(X, Y > 1, alphas=3).alphas.shape == (3,)
    with pytest.warns(FutureWarning, match="'n_alphas' is deprecated") as rec:
        path = multitask_enet_path(X, Y, n_alphas=6)
    assert path.alphas.shape == (6,)
    assert rec[0].filename == __file__  # the warning names this line
    with pytest.warns(FutureWarning, match="'alphas=None' is deprecated"):
        assert multitask_lasso_path(X, Y, alphas=None).alphas.shape == (100,)
    with pytest.warns(FutureWarning):  # an explicit alphas wins over n_alphas, as in sklearn
        assert multitask_lasso_path(X, Y, alphas=4, n_alphas=9).alphas.shape == (4,)


def _convergence_warnings(fn):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        fn()
    return [w for w in rec if issubclass(w.category, ConvergenceWarning)]


@pytest.mark.parametrize("call", ["lasso", "enet", "logistic", "lasso_cv", "path", "apg"])
def test_convergence_warning_points_at_the_users_call(data, call):
    X, Y = data
    fns = {
        "lasso": lambda: MultiTaskLasso(alpha=0.01, tol=1e-14, max_iter=2).fit(X, Y),
        "enet": lambda: MultiTaskElasticNet(alpha=0.01, tol=1e-14, max_iter=2).fit(X, Y),
        "logistic": lambda: MultiTaskLogisticRegression(alpha=1e-3, tol=1e-14, max_iter=1).fit(
            X, Y > 1
        ),
        "lasso_cv": lambda: MultiTaskLassoCV(alphas=3, cv=2, tol=1e-14, max_iter=2).fit(X, Y),
        "path": lambda: multitask_lasso_path(X, Y, alphas=3, tol=1e-14, max_iter=2),
        "apg": lambda: MultiTaskLasso(alpha=0.01, tol=1e-14, max_iter=2, solver="apg").fit(X, Y),
    }
    rec = _convergence_warnings(fns[call])
    assert rec, "expected a ConvergenceWarning"
    assert {w.filename for w in rec} == {__file__}


def test_cv_estimators_take_verbose_and_n_jobs_as_scikit_learn(data, capsys):
    X, Y = data
    serial = MultiTaskLassoCV(alphas=6, cv=3).fit(X, Y)
    parallel = MultiTaskLassoCV(alphas=6, cv=3, n_jobs=2, verbose=1).fit(X, Y)
    np.testing.assert_array_equal(serial.mse_path_, parallel.mse_path_)
    assert serial.alpha_ == parallel.alpha_
    assert {"verbose", "n_jobs"} <= set(MultiTaskElasticNetCV().get_params())
    assert {"verbose", "n_jobs"} <= set(MultiTaskLogisticRegressionCV().get_params())
    enet = MultiTaskElasticNetCV(l1_ratio=[0.3, 0.9], alphas=4, cv=2, n_jobs=2).fit(X, Y)
    ref = MultiTaskElasticNetCV(l1_ratio=[0.3, 0.9], alphas=4, cv=2).fit(X, Y)
    np.testing.assert_array_equal(enet.mse_path_, ref.mse_path_)


@pytest.mark.slow
def test_weighted_and_repeated_rows_agree_at_a_tight_tolerance():
    """What the expected sample-weight-equivalence failures of check_estimator stand for: with a
    tight tolerance, weights equal repeated rows (CV errors, α and predictions)."""
    from sklearn.model_selection import LeaveOneGroupOut

    rng = np.random.RandomState(42)
    X = rng.rand(15, 30)
    y = rng.randint(0, 3, size=15).astype(float)
    sw = rng.randint(0, 5, size=15)
    Xr, yr = np.vstack([X.repeat(sw, axis=0), X]), np.hstack([y.repeat(sw), y])
    Xw, yw, sww = np.vstack([X, X]), np.hstack([y, y]), np.hstack([sw, np.ones(15)])
    gw, gr = np.repeat([0, 1], 15), np.repeat([0, 1], [sw.sum(), 15])
    a = MultiTaskLassoCV(
        alphas=4, cv=list(LeaveOneGroupOut().split(Xw, groups=gw)), tol=1e-12, max_iter=100000
    ).fit(Xw, yw, sample_weight=sww)
    b = MultiTaskLassoCV(
        alphas=4, cv=list(LeaveOneGroupOut().split(Xr, groups=gr)), tol=1e-12, max_iter=100000
    ).fit(Xr, yr)
    np.testing.assert_allclose(a.mse_path_, b.mse_path_, rtol=1e-7)
    assert a.alpha_ == pytest.approx(b.alpha_, rel=1e-12)
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-7, atol=1e-9)
