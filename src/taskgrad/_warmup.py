"""Compile the numba kernels ahead of time: :func:`compile_kernels` (``taskgrad compile``).

The compiled kernels (methods, solvers, linear models) are ``njit(cache=True)``: the first call
after an install compiles them (up to ~20 s for the largest), and later processes load the
machine code from ``__pycache__`` in milliseconds. :func:`compile_kernels` pays that cost once,
up front, with a progress bar: it runs every registered method on a small float64 Gram matrix,
the solvers, and every linear estimator on small dense and sparse data, so each kernel compiles
for the argument types the library passes it. Then it checks, over every numba dispatcher found
in taskgrad's modules (any module whose source uses ``njit``, so a new kernel is covered without a
list to update), that each one was compiled, and reports any that were not.
"""

from __future__ import annotations

import contextlib
import importlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

__all__ = ["CompileReport", "compile_kernels", "kernel_dispatchers"]


@dataclass
class CompileReport:
    """What :func:`compile_kernels` did.

    Attributes:
        seconds: wall time of the whole call.
        compiled: names (``module.function``) of the dispatchers that hold compiled code.
        not_compiled: dispatchers that no warm-up call reached (they compile on first use).
        failed: warm-up calls that raised, {what: error message}; the kernels they would have
            reached are in ``not_compiled``.
        have_numba: False when numba cannot be imported (nothing is compiled; the kernels run
            as Python and ``impl="auto"`` picks the torch paths).
    """

    seconds: float = 0.0
    compiled: list[str] = field(default_factory=list)
    not_compiled: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    have_numba: bool = True


def _kernel_modules() -> list[str]:
    """Names of taskgrad's modules whose source defines numba kernels (uses ``@njit``)."""
    root = Path(__file__).resolve().parent
    names = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "_numba.py" or "@njit" not in path.read_text(encoding="utf-8"):
            continue
        rel = path.relative_to(root).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        names.append(".".join(["taskgrad", *parts]))
    return names


def kernel_dispatchers() -> dict[str, Any]:
    """{``module.function``: numba dispatcher} for every kernel defined in taskgrad.

    Imports each module whose source uses ``@njit`` and collects the numba dispatchers it
    defines (re-exports from another module are counted once, under their own module).
    Empty when numba cannot be imported.
    """
    try:
        from numba.core.dispatcher import Dispatcher
    except ImportError:
        return {}
    found: dict[str, Any] = {}
    for name in _kernel_modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if isinstance(obj, Dispatcher) and obj.py_func.__module__ == name:
                found[f"{name}.{attr}"] = obj
    return dict(sorted(found.items()))


def _reached(roots: set[str], dispatchers: dict[str, Any]) -> set[str]:
    """The kernels in ``roots`` and every kernel they call, transitively (found from the global
    names their code uses). A kernel called only from compiled code is compiled into its callers,
    and shows no signatures of its own when they are loaded from numba's disk cache.
    """
    by_id = {id(d): n for n, d in dispatchers.items()}
    done: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        fn = dispatchers[name].py_func
        codes = [fn.__code__]
        while codes:
            code = codes.pop()
            codes += [c for c in code.co_consts if hasattr(c, "co_names")]
            for ref in code.co_names:
                callee = by_id.get(id(fn.__globals__.get(ref)))
                if callee is not None and callee not in done:
                    todo.append(callee)
    return done


def _method_calls(k: int = 4) -> Iterator[tuple[str, Callable[[], Any]]]:
    """One call per registered method on a well-posed k-task problem (float64, CPU)."""
    import torch

    from . import methods

    g = torch.Generator().manual_seed(0)
    J = torch.randn(k, 3 * k, generator=g, dtype=torch.float64)
    J[1] -= 1.5 * J[0]  # a conflict, so projections and active sets really run
    G = J @ J.T
    L = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    Gb = torch.stack([G, G + torch.eye(k, dtype=torch.float64)])  # a batch of two
    for name, info in methods.infos().items():

        def call(info: Any = info) -> None:
            m = info.example(k)
            if "jacobian" in m.needs:  # methods of the Jacobian itself
                for _ in range(2):
                    m.aggregate(J, losses=L)
                return
            gram = G if "gram" in m.needs else None
            losses = L if "losses" in m.needs else None
            for _ in range(2):  # stateful methods take another path after their first step
                m(gram=gram, losses=losses)
            if gram is not None:
                # batched kernels, where the method takes a batch of Gram matrices
                with contextlib.suppress(ValueError, TypeError, RuntimeError):
                    info.example(k)(gram=Gb, losses=None if losses is None else L.expand(2, k))

        yield f"method {name}", call


def _solver_calls() -> Iterator[tuple[str, Callable[[], Any]]]:
    import torch

    from . import solvers

    g = torch.Generator().manual_seed(1)
    J = torch.randn(2, 4, 9, generator=g, dtype=torch.float64)
    G = J @ J.mT
    yield "solver primary_aux", lambda: solvers.primary_aux(G, n_primary=1)
    yield "solver min_norm_simplex", lambda: solvers.min_norm_simplex(G)
    yield "solver nnls", lambda: solvers.nnls(G, -G[..., 0])


def _linear_calls() -> Iterator[tuple[str, Callable[[], Any]]]:
    import numpy as np
    import scipy.sparse as sp

    from . import linear

    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 12))
    Xs = sp.random(40, 12, density=0.3, format="csc", random_state=0)
    Y = X[:, :3] @ rng.standard_normal((3, 3)) + 0.1 * rng.standard_normal((40, 3))
    Ys = np.asarray(Xs[:, :3] @ rng.standard_normal((3, 3))) + 0.1 * rng.standard_normal((40, 3))
    labels = (Y > 0).astype(float)
    classes = np.argmax(Y, axis=1)
    for data, (XX, YY, lab) in {
        "dense": (X, Y, labels),
        "sparse": (Xs, Ys, (Ys > 0).astype(float)),
    }.items():
        for penalty in ("l21", "l1"):
            lasso = partial(linear.MultiTaskLasso, alpha=0.01, penalty=penalty)
            enet = partial(linear.MultiTaskElasticNet, alpha=0.01, penalty=penalty)
            yield f"linear MultiTaskLasso {penalty} {data}", _fit(lasso, XX, YY)
            yield f"linear MultiTaskElasticNet {penalty} {data}", _fit(enet, XX, YY)
        for penalty in ("l21", "l1", "l2"):
            logistic = partial(linear.MultiTaskLogisticRegression, alpha=0.01, penalty=penalty)
            yield f"linear MultiTaskLogisticRegression {penalty} {data}", _fit(logistic, XX, lab)
        multinomial = partial(linear.MultiTaskLogisticRegression, alpha=0.01)
        yield (
            f"linear MultiTaskLogisticRegression multinomial {data}",
            _fit(multinomial, XX, classes),
        )
        yield (
            f"linear multitask_lasso_path {data}",
            partial(linear.multitask_lasso_path, XX, YY, alphas=3),
        )
        # per-task designs (a list of (X_t, y_t)): the per-task kernels
        pairs = [(XX[:20], YY[:20, 0]), (XX[20:], YY[20:, 1])]
        lab_pairs = [(XX[:20], lab[:20, 0]), (XX[20:], lab[20:, 1])]
        for penalty in ("l21", "l1"):
            lasso = partial(linear.MultiTaskLasso, alpha=0.01, penalty=penalty)
            logistic = partial(linear.MultiTaskLogisticRegression, alpha=0.01, penalty=penalty)
            yield f"linear MultiTaskLasso per-task {penalty} {data}", _fit(lasso, pairs)
            yield (
                f"linear MultiTaskLogisticRegression per-task {penalty} {data}",
                _fit(logistic, lab_pairs),
            )


def _fit(make: Callable[[], Any], *data: Any) -> Callable[[], Any]:
    """A call that builds an estimator with ``make()`` and fits it to ``data``, both when called."""
    return lambda: make().fit(*data)


def compile_kernels(progress: bool = True) -> CompileReport:
    """Compile every numba kernel of taskgrad now rather than on first use; see the module doc.

    Args:
        progress: show a progress bar (rich) with the call being compiled.

    Returns:
        A :class:`~taskgrad._warmup.CompileReport`: time taken, compiled and not-compiled kernels,
        failed calls.
        Nothing raises for a failed warm-up call: its kernels simply compile on first use.
    """
    from ._numba import HAVE_NUMBA

    t0 = time.perf_counter()
    report = CompileReport(have_numba=HAVE_NUMBA)
    if not HAVE_NUMBA:
        report.seconds = time.perf_counter() - t0
        return report
    dispatchers = kernel_dispatchers()
    calls = [*_solver_calls(), *_method_calls(), *_linear_calls()]
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("compiling kernels"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("", total=len(calls))
        for what, call in calls:
            bar.update(task, description=what)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    call()
            except Exception as err:  # a call that cannot run here leaves its kernels for first use
                report.failed[what] = f"{type(err).__name__}: {err}"[:300]
            bar.advance(task)
        bar.update(task, description="done")
    reached = _reached({n for n, d in dispatchers.items() if d.signatures}, dispatchers)
    for name in dispatchers:
        (report.compiled if name in reached else report.not_compiled).append(name)
    report.seconds = time.perf_counter() - t0
    return report
