"""Method names and the method-info table: ``get("cagrad", c=0.4)``, ``available()``, ``infos()``.

A method registers itself in its own file with :func:`register_method` (a class decorator) and
declares its properties in a :class:`MethodInfo`: where it is defined, whether it never
conflicts with a task, permutation equivariance, invariance to each task's scale, state and
randomness. ``tests/methods/test_methods_registry.py`` checks every declared property of every
registered method, and fails for a method that declares none.

Names are looked up case-, space-, '-' and '_'-insensitively (``"Nash_MTL"``, ``"nash mtl"``,
``"NashMTL"`` are the same), through each method's aliases (class names, LibMTL and TorchJD
names); an unknown name raises ``KeyError`` with the closest names.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "DEFINED",
    "MethodInfo",
    "available",
    "describe",
    "get",
    "infos",
    "register",
    "register_method",
]

#: the values of :attr:`MethodInfo.defined` (the generic tests know how to check each one)
DEFINED: dict[str, str] = {
    "everywhere": "finite weights for every Gram matrix and every finite loss vector",
    "positive-losses": "finite weights for every Gram matrix when every loss is > 0",
    "zero-not-in-hull": "defined iff some d has <g_i, d> > 0 for all i (0 not in the convex hull "
    "of the gradients); raises UndefinedMethodError otherwise",
    "enough-tasks": "finite weights for every Gram matrix of at least the instance's min_tasks "
    "tasks; raises UndefinedMethodError for fewer (Krum)",
}

FAMILIES = ("gram", "loss", "auxiliary", "jacobian")


@dataclass(frozen=True)
class MethodInfo:
    """A registered method and its declared properties (``None``: not declared).

    Properties hold for the method built with its default arguments (plus ``example_kwargs``):

    * ``defined``: a key of :data:`DEFINED`;
    * ``non_conflicting``: ⟨gᵢ, d⟩ ≥ 0 for every task i wherever the method is defined;
    * ``permutation_equivariant``: permuting the tasks permutes the weights;
    * ``scale_invariant``: the direction of d is unchanged when each gᵢ becomes cᵢgᵢ (cᵢ > 0);
    * ``stateful``: it keeps state advanced per call (``state_dict()`` non-empty);
    * ``random``: it draws random numbers, from a generator it owns (``generator=`` argument,
      saved in ``state_dict()``);
    * ``batched`` (default True): it accepts a batch of Gram matrices (..., k, k) and solves each
      problem independently (False for methods whose state holds one problem).
    """

    name: str
    factory: Callable[..., Any]
    description: str
    paper: str = ""
    aliases: tuple[str, ...] = ()
    family: str = ""
    defined: str | None = None
    non_conflicting: bool | None = None
    permutation_equivariant: bool | None = None
    scale_invariant: bool | None = None
    stateful: bool | None = None
    random: bool | None = None
    batched: bool = True
    example_kwargs: Callable[[int], Mapping[str, Any]] | None = field(default=None, repr=False)

    PROPERTIES = (
        "defined",
        "non_conflicting",
        "permutation_equivariant",
        "scale_invariant",
        "stateful",
        "random",
    )

    def undeclared(self) -> list[str]:
        """The property names this method has not declared."""
        return [p for p in self.PROPERTIES if getattr(self, p) is None]

    def example(self, k: int, **kwargs: Any) -> Any:
        """An instance for k tasks: the defaults, plus ``example_kwargs(k)``, plus ``kwargs``."""
        base = dict(self.example_kwargs(k)) if self.example_kwargs is not None else {}
        return self.factory(**{**base, **kwargs})


_REGISTRY: dict[str, MethodInfo] = {}
_LOOKUP: dict[str, str] = {}  # compact key -> canonical name

T = TypeVar("T")


def _canonical(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


def _compact(name: str) -> str:
    return re.sub(r"[^0-9a-z+]", "", name.lower())


def _family_of(factory: Callable[..., Any]) -> str:
    parts = getattr(factory, "__module__", "").split(".")
    for fam in FAMILIES:
        if fam in parts:
            return fam
    return ""


def _add(info: MethodInfo, overwrite: bool) -> None:
    if info.defined is not None and info.defined not in DEFINED:
        raise ValueError(
            f"defined must be one of {sorted(DEFINED)}, got {info.defined!r} for {info.name!r}."
        )
    keys = {_compact(info.name), *(_compact(a) for a in info.aliases)}
    if not overwrite:
        if info.name in _REGISTRY:
            raise ValueError(
                f"a method named {info.name!r} is already registered; pass overwrite=True to "
                "replace it."
            )
        for key in keys:
            if key in _LOOKUP and _LOOKUP[key] != info.name:
                raise ValueError(
                    f"the name or alias {key!r} of {info.name!r} is already taken by "
                    f"{_LOOKUP[key]!r}; "
                    "choose another alias."
                )
    else:
        old = _REGISTRY.pop(info.name, None)
        if old is not None:
            for key in [k for k, v in _LOOKUP.items() if v == old.name]:
                del _LOOKUP[key]
    _REGISTRY[info.name] = info
    for key in keys:
        _LOOKUP[key] = info.name


def register(
    name: str,
    factory: Callable[..., Any],
    description: str,
    *,
    overwrite: bool = False,
    **properties: Any,
) -> None:
    """Register ``factory`` (a Weighting class or a function returning one) under ``name``.

    ``properties`` are the other fields of :class:`MethodInfo` (``paper``, ``aliases``,
    ``defined``, ``non_conflicting``, ...); a method registered without them fails the registry's
    generic tests until they are declared.
    """
    if "aliases" in properties:
        properties["aliases"] = tuple(properties["aliases"])
    properties.setdefault("family", _family_of(factory))
    _add(
        MethodInfo(name=_canonical(name), factory=factory, description=description, **properties),
        overwrite,
    )


def register_method(
    name: str, *, description: str, overwrite: bool = False, **properties: Any
) -> Callable[[T], T]:
    """Class decorator: register the decorated Weighting class as ``name`` (see
    :func:`register`).
    """

    def deco(cls: T) -> T:
        register(name, cls, description, overwrite=overwrite, **properties)  # type: ignore[arg-type]
        cls.method_name = _canonical(name)  # type: ignore[attr-defined]
        return cls

    return deco


def lookup(name: str) -> MethodInfo:
    """The :class:`MethodInfo` registered as ``name`` or one of its aliases (KeyError with the
    closest names otherwise).
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a str, got {type(name).__name__}.")
    key = _compact(name)
    if key in _LOOKUP:
        return _REGISTRY[_LOOKUP[key]]
    close = difflib.get_close_matches(key, list(_LOOKUP), n=3, cutoff=0.6)
    names = list(dict.fromkeys(_LOOKUP[c] for c in close))
    hint = f" did you mean {' or '.join(repr(n) for n in names)}?" if names else ""
    raise KeyError(
        f"unknown method {name!r};{hint} taskgrad.methods.available() lists them: "
        f"{', '.join(sorted(_REGISTRY))}."
    )


def get(name: str, **kwargs: Any) -> Any:
    """A new instance of the method registered as ``name`` (or an alias), built with ``kwargs``."""
    info = lookup(name)
    try:
        sig = inspect.signature(info.factory)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        sig = None
    if sig is not None:
        params = sig.parameters
        var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        named = [
            n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        unknown = [k for k in kwargs if k not in params] if not var_kw else []
        if unknown:
            raise TypeError(
                f"method {info.name!r} does not accept the argument(s) {unknown}; it accepts "
                f"{named or 'no arguments'} (taskgrad.methods.describe({info.name!r}) lists them)."
            )
        missing = [
            n
            for n, p in params.items()
            if p.default is p.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and n not in kwargs
        ]
        if missing:
            raise TypeError(
                f"method {info.name!r} needs the argument(s) {missing}: e.g. "
                f"get({info.name!r}, {', '.join(f'{m}=...' for m in missing)}) "
                f"(taskgrad.methods.describe({info.name!r}) says what they are)."
            )
    return info.factory(**kwargs)


def available() -> dict[str, str]:
    """{name: one-line description} of every registered method, sorted by name."""
    return {k: _REGISTRY[k].description for k in sorted(_REGISTRY)}


def infos() -> dict[str, MethodInfo]:
    """{name: MethodInfo} of every registered method, sorted by name."""
    return {k: _REGISTRY[k] for k in sorted(_REGISTRY)}


def describe(name: str) -> str:
    """A few lines about a method: its name, description, paper, aliases, parameters with their
    defaults (from the signature) and declared properties.
    """
    info = lookup(name)
    lines = [f"{info.name}: {info.description}"]
    if info.paper:
        lines.append(f"  paper: {info.paper}")
    if info.aliases:
        lines.append(f"  aliases: {', '.join(info.aliases)}")
    params: Mapping[str, inspect.Parameter]
    try:
        params = inspect.signature(info.factory).parameters
    except (TypeError, ValueError):  # pragma: no cover
        params = {}
    shown = [p for p in params.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if shown:
        lines.append("  parameters:")
        for p in shown:
            default = "required" if p.default is p.empty else f"default {p.default!r}"
            ann = (
                ""
                if p.annotation is p.empty
                else (
                    p.annotation
                    if isinstance(p.annotation, str)
                    else getattr(p.annotation, "__name__", "")
                )
            )
            lines.append(f"    {p.name}{f': {ann}' if ann else ''} ({default})")
    else:
        lines.append("  parameters: none")
    props = [
        f"{p}={getattr(info, p)}" for p in MethodInfo.PROPERTIES if getattr(info, p) is not None
    ]
    if props:
        lines.append(f"  properties: {', '.join(props)}")
    return "\n".join(lines)
