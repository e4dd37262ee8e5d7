"""Regularization paths (warm-started, one duality-gap target for the whole path) and CV
estimators.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Integral, Real
from typing import Any, NamedTuple, Self

import numpy as np
from joblib import Parallel, delayed
from numpy.typing import ArrayLike
from sklearn.model_selection import KFold, check_cv

from . import _inputs as I
from ._estimators import (
    Data,
    MultiTaskElasticNet,
    MultiTaskLogisticRegression,
    check_common,
    intercept_from,
    solve,
)
from ._inputs import XInput
from ._problem import Problem
from ._solver import alpha_max_of, datafit_at_zero
from ._warn import warn_at_user

__all__ = [
    "MultiTaskElasticNetCV",
    "MultiTaskLassoCV",
    "MultiTaskLogisticRegressionCV",
    "Path",
    "multitask_enet_path",
    "multitask_lasso_path",
    "multitask_logistic_path",
]


class Path(NamedTuple):
    """A regularization path: ``coefs[k]`` (T, p) and ``intercepts[k]`` (T,) solve at
    ``alphas[k]``.
    """

    alphas: np.ndarray
    coefs: np.ndarray
    intercepts: np.ndarray
    dual_gaps: np.ndarray
    n_iters: np.ndarray


def alpha_grid(P: Problem, pen: int, rho: float, n_alphas: int, eps: float) -> np.ndarray:
    """n_alphas values from α_max = max_j Ω*_j(x_jᵀθ₀)/ρ down to eps·α_max, log-spaced."""
    amax = alpha_max_of(P, pen) / max(rho, 1e-3)
    if amax <= 0:
        amax = 1.0
    return np.geomspace(amax, amax * eps, n_alphas)


def _penalty_split(alpha: float, rho: float, pen: int) -> tuple[float, float, int]:
    """(a1, a2, code): ρ = 1 pure Ω, ρ = 0 ridge (code 2)."""
    if pen == 2 or rho == 0:
        return 0.0, alpha, 2
    return alpha * rho, alpha * (1 - rho), pen


def path_on_problem(
    P: Problem,
    alphas: np.ndarray | Sequence[float],
    rho: float,
    pen: int,
    *,
    tol: float,
    max_iter: int,
    solver: str,
    device: str,
    fit_intercept: bool,
) -> Path:
    """Solve at each α in order, each fit warm-started from the previous one."""
    tol_abs = tol * datafit_at_zero(P)
    W = b = None
    coefs, ints, gaps, iters = [], [], [], []
    for alpha in alphas:
        a1, a2, code = _penalty_split(float(alpha), rho, pen)
        res = solve(
            P,
            a1,
            a2,
            code,
            solver=solver,
            device=device,
            tol=tol,
            max_iter=max_iter,
            W0=W,
            b0=b,
            tol_abs=tol_abs,
        )
        W, b = res.W, res.b
        coefs.append(res.W.T.copy())
        ints.append(intercept_from(P, res) if fit_intercept else np.zeros(P.n_tasks))
        gaps.append(res.gap)
        iters.append(res.n_iter)
    return Path(
        np.asarray(alphas, dtype=float),
        np.array(coefs),
        np.array(ints),
        np.array(gaps),
        np.array(iters),
    )


def check_alphas(alphas: Any, eps: float, name: str = "alphas") -> int | np.ndarray:
    """scikit-learn's convention: an int is that many α on a log grid from α_max down to eps·α_max
    (returned as the int), an array-like the α values themselves (returned sorted, decreasing).
    """
    if isinstance(alphas, (Integral, np.integer)) and not isinstance(alphas, (bool, np.bool_)):
        I.check_int(name, int(alphas))
        I.check_positive("eps", eps)
        return int(alphas)
    if alphas is None or isinstance(alphas, (str, bool, np.bool_, Real, np.floating)):
        raise ValueError(
            f"{name} must be an int (that many α on a grid from α_max down to eps·α_max) or an "
            f"array-like of positive α values, got {alphas!r}."
        )
    a = np.sort(np.asarray(alphas, dtype=float).ravel())[::-1]
    if a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"{name} must be positive finite numbers, got {alphas!r}.")
    return a


def path_alphas(alphas: Any, n_alphas: Any, default: int, eps: float) -> int | np.ndarray:
    """The α argument of a path function, with scikit-learn 1.9's deprecation of ``n_alphas``:
    ``alphas="warn"`` (the default) means ``default`` α on a grid; ``n_alphas`` and
    ``alphas=None`` still work with a FutureWarning, as in :func:`sklearn.linear_model.enet_path`.
    """
    count: Any = default
    if not (isinstance(n_alphas, str) and n_alphas == "deprecated"):
        warn_at_user(
            "'n_alphas' is deprecated (as in scikit-learn 1.9) and will be removed: 'alphas' "
            "accepts "
            "an int, that many α on a grid. Pass alphas=<int> and leave n_alphas unset to silence "
            "this warning.",
            FutureWarning,
        )
        count = n_alphas
    if isinstance(alphas, str) and alphas == "warn":
        pass
    elif alphas is None:
        warn_at_user(
            f"'alphas=None' is deprecated (as in scikit-learn 1.9) and will be removed: pass "
            f"alphas={default} (the default) or another int, or the α values.",
            FutureWarning,
        )
    else:
        count = alphas
    return check_alphas(count, eps)


def multitask_enet_path(
    X: XInput,
    y: ArrayLike | None = None,
    *,
    l1_ratio: float = 0.5,
    penalty: str = "l21",
    alphas: int | ArrayLike | str | None = "warn",
    n_alphas: int | str = "deprecated",
    eps: float = 1e-3,
    fit_intercept: bool = True,
    sample_weight: ArrayLike | None = None,
    tol: float = 1e-4,
    max_iter: int = 1000,
    solver: str = "auto",
    device: str = "cpu",
) -> Path:
    """Multi-task elastic-net path: the :class:`MultiTaskElasticNet` solution for each α.

    ``alphas``: an int is that many α, log-spaced from α_max (the smallest α with W = 0) down to
    eps·α_max (default 100), an array-like the α values (scikit-learn 1.9's convention;
    ``n_alphas`` is deprecated as there). Every fit is warm-started from the previous one and
    stops at duality gap ≤ tol·f(0).
    """
    est = MultiTaskElasticNet(
        l1_ratio=l1_ratio,
        penalty=penalty,
        fit_intercept=fit_intercept,
        tol=tol,
        max_iter=max_iter,
        solver=solver,
        device=device,
    )
    check_common(est)
    _, _, pen = est._penalty()
    a = path_alphas(alphas, n_alphas, 100, eps)
    P = est._data(X, y, sample_weight).problem(fit_intercept)
    if isinstance(a, int):
        a = alpha_grid(P, pen, l1_ratio, a, eps)
    return path_on_problem(
        P,
        a,
        l1_ratio,
        pen,
        tol=tol,
        max_iter=max_iter,
        solver=solver,
        device=device,
        fit_intercept=fit_intercept,
    )


def multitask_lasso_path(X: XInput, y: ArrayLike | None = None, **kwargs: Any) -> Path:
    """Multi-task Lasso path (:func:`multitask_enet_path` with l1_ratio = 1)."""
    return multitask_enet_path(X, y, l1_ratio=1.0, **kwargs)


def multitask_logistic_path(
    X: XInput,
    y: ArrayLike | None = None,
    *,
    penalty: str = "l21",
    multi_class: str = "auto",
    alphas: int | ArrayLike | str | None = "warn",
    n_alphas: int | str = "deprecated",
    eps: float = 1e-2,
    fit_intercept: bool = True,
    sample_weight: ArrayLike | None = None,
    tol: float = 1e-4,
    max_iter: int = 1000,
    solver: str = "auto",
    device: str = "cpu",
) -> Path:
    """Path of :class:`MultiTaskLogisticRegression` solutions, warm-started, from α_max down.

    ``alphas``: an int is that many α from α_max down to eps·α_max (default 20), an array-like
    the α values (``n_alphas`` is deprecated, as in :func:`multitask_enet_path`).
    """
    est = MultiTaskLogisticRegression(
        penalty=penalty,
        multi_class=multi_class,
        fit_intercept=fit_intercept,
        tol=tol,
        max_iter=max_iter,
        solver=solver,
        device=device,
    )
    check_common(est)
    _, _, pen = est._penalty()
    a = path_alphas(alphas, n_alphas, 20, eps)
    P = est._data(X, y, sample_weight).problem(fit_intercept)
    if isinstance(a, int):
        a = alpha_grid(P, 0 if pen == 2 else pen, 1.0, a, eps)
    return path_on_problem(
        P,
        a,
        0.0 if pen == 2 else 1.0,
        pen,
        tol=tol,
        max_iter=max_iter,
        solver=solver,
        device=device,
        fit_intercept=fit_intercept,
    )


# --------------------------------------------------------------------------- cross-validation
def _folds(
    D: Data, cv: Any, classify: bool, y_raw: np.ndarray | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) row indices: per-task designs are split within every task (a task with
    fewer samples than folds is kept in every training set).
    """
    if D.task is not None:
        k = I.check_int("cv", cv, low=2) if not hasattr(cv, "split") else None
        if k is None:
            raise ValueError("With per-task designs, cv must be an integer number of folds.")
        fold = np.full(D.task.shape[0], -1)  # −1: a task with < k samples is always trained on
        for t in range(D.n_tasks):
            rows = np.flatnonzero(D.task == t)
            if rows.size >= k:
                for f, (_, te) in enumerate(KFold(k).split(rows)):
                    fold[rows[te]] = f
        return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]
    strat = classify and y_raw is not None and np.ndim(y_raw) == 1
    splitter = check_cv(cv, y_raw if strat else None, classifier=strat)
    n = D.Y.shape[0]
    return list(splitter.split(np.zeros((n, 1)), y_raw if strat else None))


def _held_out_loss(D: Data, coef: np.ndarray, intercept: np.ndarray) -> float:
    """Mean loss of (coef, intercept) on the rows of D (MSE for regression, log-loss else)."""
    P = D.problem(False)
    val = P.value(P.predict(coef.T, intercept))  # (1/n̄) Σ s_i ℓ_i: T × the mean over entries
    if D.loss == "multinomial":
        return val
    val /= P.n_tasks
    return 2.0 * val if D.loss == "quadratic" else val


class _CVMixin:
    """Fit a path per fold, pick the α (and ρ) with the least mean held-out loss, refit."""

    # the estimator parameters the CV fit reads (set by the estimators' __init__)
    alphas: int | ArrayLike
    eps: float
    cv: Any
    fit_intercept: bool
    tol: float
    max_iter: int
    solver: str
    device: str
    n_jobs: int | None
    verbose: bool | int
    # the parameters passed on unchanged to the estimators fitted inside
    _inner_names: tuple[str, ...] = (
        "penalty",
        "fit_intercept",
        "tol",
        "max_iter",
        "solver",
        "device",
    )

    def _inner_params(self) -> dict[str, Any]:
        """The settings of the estimators fitted inside (all but the CV ones and α/ρ)."""
        return {name: getattr(self, name) for name in self._inner_names}

    def _cv_fit(
        self,
        base: Any,
        X: XInput,
        y: ArrayLike | None,
        sample_weight: Any,
        rhos: list[float],
        pen_of: Callable[[float], int],
    ) -> tuple[Data, float]:
        D = base._data(X, y, sample_weight)
        self.n_features_in_ = base.n_features_in_
        if hasattr(base, "feature_names_in_"):
            self.feature_names_in_ = base.feature_names_in_
        a_given = check_alphas(self.alphas, self.eps)
        P_full = D.problem(self.fit_intercept)
        grids = []
        for rho in rhos:
            pen = pen_of(rho)
            grids.append(
                a_given
                if not isinstance(a_given, int)
                else alpha_grid(
                    P_full, 0 if pen == 2 else pen, rho if pen != 2 else 1.0, a_given, self.eps
                )
            )
        y_raw = None if I.is_per_task(X, y) else np.asarray(y)
        folds = _folds(D, self.cv, isinstance(base, MultiTaskLogisticRegression), y_raw)

        def fold_losses(r: int, tr: np.ndarray, te: np.ndarray) -> list[float]:
            Dtr, Dte = D.rows(tr), D.rows(te)
            path = path_on_problem(
                Dtr.problem(self.fit_intercept),
                grids[r],
                rhos[r],
                pen_of(rhos[r]),
                tol=self.tol,
                max_iter=self.max_iter,
                solver=self.solver,
                device=self.device,
                fit_intercept=self.fit_intercept,
            )
            return [
                _held_out_loss(Dte, path.coefs[k], path.intercepts[k]) for k in range(len(grids[r]))
            ]

        # one path per (ρ, fold), in threads as scikit-learn's CV estimators do (n_jobs, verbose)
        jobs = [(r, f, tr, te) for r in range(len(rhos)) for f, (tr, te) in enumerate(folds)]
        out = Parallel(n_jobs=self.n_jobs, verbose=self.verbose, prefer="threads")(
            delayed(fold_losses)(r, tr, te) for r, _, tr, te in jobs
        )
        losses = np.zeros((len(rhos), len(grids[0]), len(folds)))
        for (r, f, _, _), vals in zip(jobs, out, strict=True):
            losses[r, :, f] = vals
        mean = losses.mean(axis=2)
        best = np.unravel_index(np.argmin(mean), mean.shape)
        r, k = int(best[0]), int(best[1])
        self.alphas_ = np.array(grids) if len(rhos) > 1 else grids[0]
        self.alpha_ = float(grids[r][k])
        self.cv_loss_path_ = losses if len(rhos) > 1 else losses[0]
        return D, rhos[r]

    def _finish(self, est: Any) -> None:
        for name in (
            "coef_",
            "intercept_",
            "n_iter_",
            "dual_gap_",
            "dual_gap_tol_",
            "converged_",
            "n_screened_",
        ):
            setattr(self, name, getattr(est, name))
        self.estimator_ = est


class MultiTaskElasticNetCV(_CVMixin, MultiTaskElasticNet):
    """:class:`MultiTaskElasticNet` with α (and ``l1_ratio`` if a list) chosen by K-fold CV.

    For each ρ, a warm-started path over ``alphas`` (scikit-learn's convention: an int is that
    many α log-spaced from α_max to eps·α_max, default 100; an array-like, the α values) is
    fitted on every training fold; the pair with the least mean held-out MSE is
    refitted on all data. Per-task designs are split within every task. ``n_jobs`` fits the
    (ρ, fold) paths in parallel threads and ``verbose`` reports their progress (joblib), as in
    scikit-learn's CV estimators.
    Attributes: ``alpha_``, ``l1_ratio_``, ``alphas_``, ``mse_path_`` (ρ, α, fold).
    """

    def __init__(
        self,
        *,
        l1_ratio: float | ArrayLike = 0.5,
        alphas: int | ArrayLike = 100,
        eps: float = 1e-3,
        cv: Any = 5,
        penalty: str = "l21",
        fit_intercept: bool = True,
        tol: float = 1e-4,
        max_iter: int = 1000,
        solver: str = "auto",
        device: str = "cpu",
        verbose: bool | int = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.l1_ratio = l1_ratio
        self.alphas = alphas
        self.eps = eps
        self.cv = cv
        self.verbose = verbose
        self.n_jobs = n_jobs
        self.penalty = penalty
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter
        self.solver = solver
        self.device = device

    def _rhos(self) -> list[float]:
        return [float(r) for r in np.atleast_1d(self.l1_ratio)]

    def fit(self, X: XInput, y: Any = None, sample_weight: Any = None) -> Self:
        rhos = self._rhos()
        base = MultiTaskElasticNet(l1_ratio=rhos[0], **self._inner_params())
        check_common(base)
        pens = {}
        for rho in rhos:
            base.l1_ratio = rho
            pens[rho] = base._penalty()[2]
        _, rho = self._cv_fit(base, X, y, sample_weight, rhos, pens.__getitem__)
        self.l1_ratio_ = rho
        self.mse_path_ = self.cv_loss_path_
        est = MultiTaskElasticNet(alpha=self.alpha_, l1_ratio=rho, **self._inner_params())
        est.fit(X, y, sample_weight)
        self._finish(est)
        self.per_task_ = est.per_task_
        return self


class MultiTaskLassoCV(MultiTaskElasticNetCV):
    """:class:`MultiTaskLasso` with α chosen by K-fold CV (see :class:`MultiTaskElasticNetCV`)."""

    def __init__(
        self,
        *,
        alphas: int | ArrayLike = 100,
        eps: float = 1e-3,
        cv: Any = 5,
        penalty: str = "l21",
        fit_intercept: bool = True,
        tol: float = 1e-4,
        max_iter: int = 1000,
        solver: str = "auto",
        device: str = "cpu",
        verbose: bool | int = False,
        n_jobs: int | None = None,
    ) -> None:
        self.alphas = alphas
        self.eps = eps
        self.cv = cv
        self.verbose = verbose
        self.n_jobs = n_jobs
        self.penalty = penalty
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter
        self.solver = solver
        self.device = device

    def _rhos(self) -> list[float]:
        return [1.0]

    def _rho(self) -> float:
        return 1.0


class MultiTaskLogisticRegressionCV(_CVMixin, MultiTaskLogisticRegression):
    """:class:`MultiTaskLogisticRegression` with α chosen by K-fold CV (mean held-out log-loss).

    ``alphas``: an int is that many α from α_max down to eps·α_max (default 20), an array-like
    the α values. Attributes: ``alpha_``, ``alphas_``, ``cv_loss_path_`` (α, fold); stratified
    folds for a 1-D y.
    """

    _inner_names = ("multi_class", *_CVMixin._inner_names)

    def __init__(
        self,
        *,
        alphas: int | ArrayLike = 20,
        eps: float = 1e-2,
        cv: Any = 5,
        penalty: str = "l21",
        multi_class: str = "auto",
        fit_intercept: bool = True,
        tol: float = 1e-4,
        max_iter: int = 1000,
        solver: str = "auto",
        device: str = "cpu",
        verbose: bool | int = 0,
        n_jobs: int | None = None,
    ) -> None:
        self.alphas = alphas
        self.eps = eps
        self.cv = cv
        self.verbose = verbose
        self.n_jobs = n_jobs
        self.penalty = penalty
        self.multi_class = multi_class
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter
        self.solver = solver
        self.device = device

    def fit(self, X: XInput, y: Any = None, sample_weight: Any = None) -> Self:
        base = MultiTaskLogisticRegression(**self._inner_params())
        check_common(base)
        pen = base._penalty()[2]
        self._cv_fit(base, X, y, sample_weight, [1.0], lambda rho: pen)
        est = MultiTaskLogisticRegression(alpha=self.alpha_, **self._inner_params())
        est.fit(X, y, sample_weight)
        self._finish(est)
        self.classes_ = est.classes_
        self._mode = est._mode
        if hasattr(est, "task_classes_"):
            self.task_classes_ = est.task_classes_
        return self
