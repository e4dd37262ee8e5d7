"""scikit-learn estimators: MultiTaskLasso, MultiTaskElasticNet, MultiTaskLogisticRegression."""

from __future__ import annotations

from typing import Any, NamedTuple, Self

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _inputs as I
from ._inputs import XInput
from ._problem import PENALTIES, Problem, make_problem
from ._solver import SolverResult, solve_cd

__all__ = ["MultiTaskElasticNet", "MultiTaskLasso", "MultiTaskLogisticRegression"]


# --------------------------------------------------------------------------- shared machinery
def solve(
    P: Problem,
    a1: float,
    a2: float,
    pen: int,
    *,
    solver: str,
    device: str,
    tol: float,
    max_iter: int,
    W0: np.ndarray | None = None,
    b0: np.ndarray | None = None,
    tol_abs: float | None = None,
    screening: bool = True,
) -> SolverResult:
    """Dispatch to block coordinate descent (CPU) or the accelerated proximal gradient (torch)."""
    if solver == "auto":
        solver = "cd" if str(device) == "cpu" else "apg"
    if solver == "cd":
        if str(device) != "cpu":
            raise ValueError(
                f"solver='cd' runs on the CPU only, got device={device!r}; use solver='apg' (or "
                "'auto') for a torch device."
            )
        return solve_cd(
            P,
            a1,
            a2,
            pen,
            W0=W0,
            b0=b0,
            tol=tol,
            max_iter=max_iter,
            tol_abs=tol_abs,
            screening=screening,
        )
    if solver == "apg":
        from ._torch_solver import solve_apg

        return solve_apg(
            P, a1, a2, pen, device=device, W0=W0, b0=b0, tol=tol, max_iter=max_iter, tol_abs=tol_abs
        )
    raise ValueError(f"solver must be 'auto', 'cd' or 'apg', got {solver!r}.")


def intercept_from(P: Problem, res: SolverResult) -> np.ndarray:
    """b in the original coordinates (undo centering): ȳ − μᵀW for the centered quadratic loss,
    b − μᵀW when only the design was centered (logistic losses), b otherwise.
    """
    if P.y_offset is not None and P.x_offset is not None:  # both set when Y was centered
        if P.x_offset.ndim == 1:
            return P.y_offset - P.x_offset @ res.W
        return P.y_offset - np.einsum("pt,pt->t", P.x_offset, res.W)
    if P.center is not None:
        return res.b - P.center @ res.W
    return res.b.copy()


def centered_intercept(
    P: Problem, W0: np.ndarray | None, b0: np.ndarray | None
) -> np.ndarray | None:
    """A warm start's intercept (original coordinates) in the solver's coordinates: b + μᵀW."""
    if b0 is None or W0 is None or P.center is None or P.y_offset is not None:
        return b0
    return b0 + P.center @ W0


def check_common(est: Any) -> None:
    I.check_int("max_iter", est.max_iter)
    I.check_positive("tol", est.tol, allow_zero=True)
    if est.solver not in ("auto", "cd", "apg"):
        raise ValueError(f"solver must be 'auto', 'cd' or 'apg', got {est.solver!r}.")
    if not isinstance(est.fit_intercept, (bool, np.bool_)):
        raise ValueError(f"fit_intercept must be a bool, got {est.fit_intercept!r}.")  # noqa: TRY004 (as sklearn)


def _shared_X(
    est: BaseEstimator,
    X: Any,
    y: Any,
    *,
    reset: bool,
    y_numeric: bool = True,
    multi_output: bool = True,
) -> Any:
    return validate_data(
        est,
        X,
        y,
        reset=reset,
        accept_sparse=["csr", "csc", "coo"],
        dtype=np.float64,
        multi_output=multi_output,
        y_numeric=y_numeric,
    )


class Data(NamedTuple):
    """Validated arrays of one fit: X (rows, p), Y (n, T) or (N,), weights, task index or None."""

    X: Any
    Y: np.ndarray
    S: np.ndarray
    task: np.ndarray | None
    n_tasks: int
    loss: str
    one_d: bool

    def problem(self, fit_intercept: bool) -> Problem:
        """The problem of these rows (zero-weight rows dropped: their dual is undefined)."""
        X, Y, S, task = I.drop_zero_weights(self.X, self.Y, self.S, self.task)
        return make_problem(
            X, Y, S, loss=self.loss, fit_intercept=fit_intercept, task=task, n_tasks=self.n_tasks
        )

    def rows(self, idx: np.ndarray) -> Data:
        """The samples ``idx`` (sorted), for cross-validation folds."""
        X = self.X[idx] if not sp.issparse(self.X) else sp.csr_matrix(self.X)[idx]
        task = None if self.task is None else self.task[idx]
        return self._replace(X=X, Y=self.Y[idx], S=self.S[idx], task=task)


class _LinearBase(BaseEstimator):
    """Common fit plumbing: input forms, warm start, solver dispatch, attributes."""

    def _warm(self, p: int, T: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if self.warm_start and hasattr(self, "coef_"):
            W0 = np.atleast_2d(self.coef_)
            if W0.shape == (T, p):
                return W0.T.copy(), np.atleast_1d(self.intercept_).astype(float)
        return None, None

    def _solve(
        self,
        P: Problem,
        penalty: tuple[float, float, int],
        W0: np.ndarray | None,
        b0: np.ndarray | None,
    ) -> SolverResult:
        """Solve P with the penalty (a1, a2, pen) from W0, b0 (None: zeros) by this estimator's
        ``solver`` on ``device``, to ``tol`` within ``max_iter``.
        """
        a1, a2, pen = penalty
        return solve(
            P,
            a1,
            a2,
            pen,
            solver=self.solver,
            device=self.device,
            tol=self.tol,
            max_iter=self.max_iter,
            W0=W0,
            b0=b0,
        )

    def _set_result(self, P: Problem, res: SolverResult) -> None:
        self.n_iter_ = res.n_iter
        self.dual_gap_ = res.gap
        self.dual_gap_tol_ = res.tol_abs
        self.converged_ = res.converged
        self.n_screened_ = res.n_screened


# --------------------------------------------------------------------------- regression
class _RegressionBase(RegressorMixin, _LinearBase):
    """Multi-task elastic net: (1/2n)‖Y − XW − 1bᵀ‖²_F + αρ‖W‖_{2,1} + (α(1−ρ)/2)‖W‖²_F.

    The objective of :class:`sklearn.linear_model.MultiTaskElasticNet` (ρ = ``l1_ratio``), solved
    by block coordinate descent with working sets and gap-safe screening (``solver="cd"``) or an
    accelerated proximal gradient in torch (``solver="apg"``, any ``device``). Both stop when the
    duality gap is ≤ ``tol``·f(0), f(0) = ‖Y − Ȳ‖²_F/(2n). ``fit`` also takes per-task designs,
    ``fit([(X_1, y_1), ..., (X_T, y_T)])`` (or ``fit([X_t], [y_t])``), whose datafit is
    (1/2n̄) Σ_t ‖y_t − X_t w_t − b_t‖² with n̄ the mean task size. ``penalty="l1"`` replaces the
    row norms by absolute values (independent Lasso problems sharing one solver).

    Attributes: ``coef_`` (T, p) (or (p,) for 1-D y), ``intercept_``, ``n_iter_`` (epochs or
    gradient steps), ``dual_gap_`` (final duality gap of the objective above), ``n_screened_``.
    """

    l1_ratio: Any  # ρ; MultiTaskElasticNetCV: one ρ or a grid of them

    def _penalty(self) -> tuple[float, float, int]:
        alpha = I.check_positive("alpha", self.alpha)
        rho = self._rho()
        if (
            isinstance(rho, bool)
            or not isinstance(rho, (int, float, np.floating))
            or not 0 <= rho <= 1
        ):
            raise ValueError(f"l1_ratio must be in [0, 1], got {rho!r}.")
        if self.penalty not in ("l21", "l1"):
            raise ValueError(f"penalty must be 'l21' or 'l1', got {self.penalty!r}.")
        pen = PENALTIES[self.penalty] if rho > 0 else PENALTIES["l2"]
        return float(alpha * rho), float(alpha * (1 - rho)), pen

    def _data(self, X: Any, y: Any, sample_weight: Any) -> Data:
        """Validate the inputs (either form) into arrays for :func:`make_problem`."""
        if I.is_per_task(X, y):
            Xs, ys = I.split_pairs(X, y)
            D = I.check_per_task(Xs, ys, sample_weight)
            self.n_features_in_ = D.X.shape[1]
            return Data(D.X, D.y, D.sample_weight, D.task, D.n_tasks, "quadratic", False)
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None: pass "
                "fit(X, Y) with Y of shape (n_samples, n_tasks), or per-task designs as "
                "fit([(X_1, y_1), ..., (X_T, y_T)])."
            )
        X, y = _shared_X(self, X, y, reset=True)
        one_d = y.ndim == 1
        Y = y[:, None] if one_d else y
        sw = I.shared_weights(sample_weight, X)
        return Data(X, Y, sw, None, Y.shape[1], "quadratic", one_d)

    def fit(self, X: XInput, y: Any = None, sample_weight: Any = None) -> Self:
        """Fit on (X, Y) with a shared design, or on per-task designs (see the class docstring)."""
        check_common(self)
        penalty = self._penalty()
        D = self._data(X, y, sample_weight)
        P, T, one_d = D.problem(self.fit_intercept), D.n_tasks, D.one_d
        W0, b0 = self._warm(P.n_features, T)
        res = self._solve(P, penalty, W0, b0)
        b = intercept_from(P, res) if self.fit_intercept else np.zeros(T)
        self.coef_ = res.W.T[0].copy() if one_d else res.W.T.copy()
        self.intercept_ = float(b[0]) if one_d else b
        self.per_task_ = D.task is not None
        self._set_result(P, res)
        return self

    def predict(self, X: XInput) -> Any:
        """XWᵀ + b for a shared X (n, p); a list of per-task predictions for a list of X_t."""
        check_is_fitted(self)
        if isinstance(X, (list, tuple)) and len(X) and all(I.is_2d_matrix(x) for x in X):
            D = I.check_per_task(X, None, n_features=self.n_features_in_, need_y=False)
            coef = np.atleast_2d(self.coef_)
            if len(X) != coef.shape[0]:
                raise ValueError(
                    f"Got {len(X)} task designs but the model has {coef.shape[0]} tasks."
                )
            b = np.atleast_1d(self.intercept_)
            z = np.asarray(D.X @ coef.T)[np.arange(D.X.shape[0]), D.task] + b[D.task]
            return D.split(z)
        X = validate_data(
            self, X, accept_sparse=["csr", "csc", "coo"], dtype=np.float64, reset=False
        )
        return np.asarray(X @ self.coef_.T) + self.intercept_

    def score(self, X: XInput, y: Any = None, sample_weight: Any = None) -> float:
        """R² (uniform average over tasks); per-task input: R² of all tasks' samples stacked."""
        if I.is_per_task(X, y):
            Xs, ys = I.split_pairs(X, y)
            pred = np.concatenate(self.predict(Xs))
            return r2_score(np.concatenate([np.ravel(v) for v in ys]), pred)
        return super().score(X, y, sample_weight=sample_weight)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.multi_output = True
        return tags


class MultiTaskElasticNet(_RegressionBase):
    __doc__ = _RegressionBase.__doc__

    def __init__(
        self,
        alpha: float = 1.0,
        l1_ratio: float = 0.5,
        *,
        penalty: str = "l21",
        fit_intercept: bool = True,
        tol: float = 1e-4,
        max_iter: int = 1000,
        warm_start: bool = False,
        solver: str = "auto",
        device: str = "cpu",
    ) -> None:
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.penalty = penalty
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.solver = solver
        self.device = device

    def _rho(self) -> float:
        return self.l1_ratio


class MultiTaskLasso(_RegressionBase):
    """Multi-task Lasso: (1/2n)‖Y − XW − 1bᵀ‖²_F + α‖W‖_{2,1} (scikit-learn's objective).

    See :class:`MultiTaskElasticNet` for the solvers, per-task designs and attributes.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        penalty: str = "l21",
        fit_intercept: bool = True,
        tol: float = 1e-4,
        max_iter: int = 1000,
        warm_start: bool = False,
        solver: str = "auto",
        device: str = "cpu",
    ) -> None:
        self.alpha = alpha
        self.penalty = penalty
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.solver = solver
        self.device = device

    def _rho(self) -> float:
        return 1.0


# --------------------------------------------------------------------------- classification
def encode_binary(y_col: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (classes (2,), y in {−1, 1}); a clear error when the task has one class."""
    classes, inv = np.unique(y_col, return_inverse=True)
    if classes.size < 2:
        raise ValueError(
            f"{where} has only one class ({classes[0]!r}); every binary task needs samples of "
            "both classes."
        )
    if classes.size > 2:
        raise ValueError(
            f"{where} has {classes.size} classes; a multi-task column must be binary (use a 1-D y "
            "with multi_class='multinomial' for a multiclass problem)."
        )
    return classes, np.where(inv == 1, 1.0, -1.0)


class MultiTaskLogisticRegression(ClassifierMixin, _LinearBase):
    """Sparse multi-task logistic regression.

    Minimizes (1/n̄) Σ_t Σ_i s_i log(1 + exp(−y_it(x_iᵀw_t + b_t))) + α·Ω(W) with Ω = ‖W‖_{2,1}
    (``penalty="l21"``, features shared by all tasks), ‖W‖₁ (``"l1"``) or ½‖W‖²_F (``"l2"``).
    Targets: Y of shape (n, T), each column binary (T tasks on one design); per-task designs
    ``fit([(X_t, y_t), ...])``; or a 1-D y: binary → one task, more classes → the multinomial
    loss logsumexp(z) − z_y over K classes (``multi_class="auto"`` or ``"multinomial"``, the l21
    penalty then selects features shared by the classes) or K one-vs-rest tasks (``"ovr"``).
    Same solvers and stopping rule as :class:`MultiTaskElasticNet` (f(0) = datafit at W = 0).
    """

    classes_: np.ndarray | list[np.ndarray]  # one array, or one per task when they differ

    def __init__(
        self,
        alpha: float = 0.01,
        *,
        penalty: str = "l21",
        multi_class: str = "auto",
        fit_intercept: bool = True,
        tol: float = 1e-4,
        max_iter: int = 1000,
        warm_start: bool = False,
        solver: str = "auto",
        device: str = "cpu",
    ) -> None:
        self.alpha = alpha
        self.penalty = penalty
        self.multi_class = multi_class
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start
        self.solver = solver
        self.device = device

    def _penalty(self) -> tuple[float, float, int]:
        alpha = I.check_positive("alpha", self.alpha)
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty must be 'l21', 'l1' or 'l2', got {self.penalty!r}.")
        if self.penalty == "l2":
            return 0.0, alpha, PENALTIES["l2"]
        return alpha, 0.0, PENALTIES[self.penalty]

    def _data(self, X: Any, y: Any, sample_weight: Any) -> Data:
        """Validate and encode the inputs (labels → ±1 or one-hot) for :func:`make_problem`."""
        if self.multi_class not in ("auto", "multinomial", "ovr"):
            raise ValueError(
                f"multi_class must be 'auto', 'multinomial' or 'ovr', got {self.multi_class!r}."
            )
        if I.is_per_task(X, y):
            Xs, ys = I.split_pairs(X, y)
            D = I.check_per_task(Xs, ys, sample_weight, y_numeric=False)
            self.n_features_in_ = D.X.shape[1]
            labels = D.split(D.y)
            tc, enc = [], []
            for t, yt in enumerate(labels):
                c, e = encode_binary(yt, f"Task {t}")
                tc.append(c)
                enc.append(e)
            self._set_task_classes(tc)
            self._mode = "per_task"
            return Data(
                D.X, np.concatenate(enc), D.sample_weight, D.task, D.n_tasks, "logistic", False
            )
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None: use "
                "fit(X, y) or fit([(X_1, y_1), ...])."
            )
        X, y = _shared_X(self, X, y, reset=True, y_numeric=False)
        sw = I.shared_weights(sample_weight, X)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.ravel()  # a column vector is one task (binary) or one multiclass target
        if y.ndim == 1:
            kind = type_of_target(y, input_name="y")
            if kind not in ("binary", "multiclass"):
                raise ValueError(
                    f"Unknown label type {kind!r}: y must hold class labels (binary or multiclass)."
                )
            classes, inv = np.unique(y, return_inverse=True)
            if classes.size < 2:
                raise ValueError(
                    f"y has only one class ({classes[0]!r}); a classifier needs at least 2 classes."
                )
            self.classes_ = classes
            K = classes.size
            if self.multi_class == "multinomial" or (K > 2 and self.multi_class == "auto"):
                self._mode = "multinomial"
                Y = np.eye(K)[inv]
                loss = "multinomial"
            elif K == 2:
                self._mode = "binary"
                Y = np.where(inv == 1, 1.0, -1.0)[:, None]
                loss = "logistic"
            else:
                self._mode = "ovr"
                Y = 2.0 * np.eye(K)[inv] - 1.0
                loss = "logistic"
        else:
            self._mode = "tasks"
            tc, cols = [], []
            for t in range(y.shape[1]):
                c, e = encode_binary(y[:, t], f"Task {t} (column {t} of y)")
                tc.append(c)
                cols.append(e)
            self._set_task_classes(tc)
            Y = np.stack(cols, axis=1)
            loss = "logistic"
        return Data(X, Y, sw, None, Y.shape[1], loss, False)

    def _set_task_classes(self, tc: list[np.ndarray]) -> None:
        """``task_classes_[t]``: the two labels of task t; ``classes_`` is one array when all
        tasks share their labels (as scikit-learn's multilabel classifiers), else the list.
        """
        self.task_classes_ = tc
        same = all(c.shape == tc[0].shape and np.all(c == tc[0]) for c in tc)
        self.classes_ = tc[0] if same else tc

    def fit(self, X: XInput, y: Any = None, sample_weight: Any = None) -> Self:
        """Fit (see the class docstring for the accepted targets)."""
        check_common(self)
        penalty = self._penalty()
        P = self._data(X, y, sample_weight).problem(self.fit_intercept)
        W0, b0 = self._warm(P.n_features, P.n_tasks)
        res = self._solve(P, penalty, W0, centered_intercept(P, W0, b0))
        self.coef_ = res.W.T.copy()
        self.intercept_ = intercept_from(P, res) if self.fit_intercept else np.zeros(P.n_tasks)
        self._set_result(P, res)
        return self

    def decision_function(self, X: XInput) -> Any:
        """Linear scores x·w_t + b_t: (n,) for a binary y, (n, K) or (n, T) otherwise."""
        check_is_fitted(self)
        if self._mode == "per_task" or (
            isinstance(X, (list, tuple)) and len(X) and all(I.is_2d_matrix(x) for x in X)
        ):
            if not isinstance(X, (list, tuple)):
                raise ValueError("This model was fitted on per-task designs: pass a list of X_t.")
            D = I.check_per_task(X, None, n_features=self.n_features_in_, need_y=False)
            if D.n_tasks != self.coef_.shape[0]:
                raise ValueError(
                    f"Got {D.n_tasks} task designs but the model has {self.coef_.shape[0]} tasks."
                )
            z = np.asarray(D.X @ self.coef_.T)[np.arange(D.X.shape[0]), D.task]
            return D.split(z + self.intercept_[D.task])
        X = validate_data(
            self, X, accept_sparse=["csr", "csc", "coo"], dtype=np.float64, reset=False
        )
        Z = np.asarray(X @ self.coef_.T) + self.intercept_
        return Z[:, 0] if self._mode == "binary" else Z

    def predict_proba(self, X: XInput) -> Any:
        """Probabilities: (n, K) for a 1-D y; for T binary tasks the (n, T) probabilities of each
        task's second class ``task_classes_[t][1]`` (a list of (n_t,) arrays for per-task input).
        """
        Z = self.decision_function(X)
        if self._mode == "binary":
            p = 1.0 / (1.0 + np.exp(-Z))
            return np.stack([1 - p, p], axis=1)
        if self._mode == "multinomial":
            Z = Z - Z.max(axis=1, keepdims=True)
            E = np.exp(Z)
            return E / E.sum(axis=1, keepdims=True)
        if self._mode == "ovr":
            p = 1.0 / (1.0 + np.exp(-Z))
            return p / p.sum(axis=1, keepdims=True)
        if isinstance(Z, list):
            return [1.0 / (1.0 + np.exp(-z)) for z in Z]
        return 1.0 / (1.0 + np.exp(-Z))

    def predict_log_proba(self, X: XInput) -> Any:
        P = self.predict_proba(X)
        with np.errstate(divide="ignore"):
            return [np.log(p) for p in P] if isinstance(P, list) else np.log(P)

    def predict(self, X: XInput) -> Any:
        """Labels: (n,) for a 1-D y, (n, T) for multi-task y, a list per task for per-task input."""
        Z = self.decision_function(X)
        if self._mode == "binary":
            return self.classes_[(Z > 0).astype(int)]
        if self._mode in ("multinomial", "ovr"):
            return self.classes_[np.argmax(Z, axis=1)]
        if isinstance(Z, list):
            return [self.task_classes_[t][(z > 0).astype(int)] for t, z in enumerate(Z)]
        return np.stack(
            [self.task_classes_[t][(Z[:, t] > 0).astype(int)] for t in range(Z.shape[1])], axis=1
        )

    def score(self, X: XInput, y: Any = None, sample_weight: Any = None) -> float:
        """Mean accuracy (over all tasks' samples for multi-task or per-task input)."""
        if I.is_per_task(X, y):
            Xs, ys = I.split_pairs(X, y)
            pred = np.concatenate(self.predict(Xs))
            return float(np.mean(pred == np.concatenate([np.ravel(v) for v in ys])))
        pred = self.predict(X)
        y = np.asarray(y)
        if pred.ndim == 2:
            return float(np.mean(pred == y))
        return super().score(X, y, sample_weight=sample_weight)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.multi_output = True
        return tags
