"""Sphinx configuration of the taskgrad documentation (built offline by scripts/docs.sh)."""

from __future__ import annotations

import builtins
import importlib
import inspect
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT / "src"))

import taskgrad  # noqa: E402

project = "taskgrad"
author = "the taskgrad developers"
copyright = "the taskgrad developers"  # noqa: A001
release = version = taskgrad.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "README.md", "_generated"]
html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"taskgrad {release}"

autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields, not a second description of each attribute

# Cross-references are checked (nitpicky) except for names that Sphinx cannot resolve without the
# network (torch, numpy, scikit-learn: no intersphinx inventories offline) and for typing aliases.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"taskgrad(\.\w+)*\._\w+(\..*)?"),  # private modules and classes are not documented
    (r"py:.*", r"(os|sys|io|types|re|math|logging|contextlib|functools|builtins)\..*"),
    (
        r"py:.*",
        r"(torch|numpy|np|scipy|sklearn|nn|optim|lightning|pytorch_lightning|numba|rich)(\..*)?",
    ),
    (
        r"py:.*",
        r"(Tensor|Module|Optimizer|ndarray|ArrayLike|Any|Callable|Sequence|Mapping|Iterable|Iterator)",
    ),
    (r"py:.*", r"(typing|collections\.abc|abc|dataclasses|pathlib|argparse|enum)\..*"),
    (r"py:.*", r".*\.(T|Impl|Norm|Scope|Where|XInput|PerExampleLoss|Literal\[.*\])"),
    (
        r"py:.*",
        r"(T|Impl|Norm|Scope|Where|XInput|PerExampleLoss|Path|Literal|ClassVar|Self|Tensors)",
    ),
]
# Objects whose docstrings are not yet valid reStructuredText (with nitpicky cross-references):
# they are shown verbatim, as preformatted text, so that scripts/docs.sh can build with warnings
# as errors. Keep this list short; fix the docstring and remove its entry.
LENIENT: list[str] = [
    "taskgrad.solvers.nnls.SolverInfo",
    "taskgrad.solvers.SolverInfo",
]


def _lenient_docstring(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Show the docstring of an object listed in LENIENT (or inside one) as a literal block."""
    if lines and any(name == n or name.startswith(n + ".") for n in LENIENT):
        lines[:] = ["::", ""] + ["    " + ln for ln in lines] + [""]


_LITERAL = re.compile(r"(``.+?``|`[^`]+`)")
_PLAIN = re.compile(r"(?<!\\)(\|)|(?<![\\*])(\*\*kwargs|\*args)")
# *emphasis* and **strong** as reStructuredText reads them; any other * is a star in math or code
_EMPHASIS = re.compile(r"(?<![\w*\\])\*\*?[^\s*](?:[^*]*?[^\s*])?\*\*?(?![\w*])")
_LONE_STAR = re.compile(r"(?<!\\)(?<!^)\*|^\*(?! )")  # not a bullet ("* " at the line start)


def _escape_plain_text(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Docstrings write math in plain text: |x| is an absolute value, not a substitution, and
    *args/**kwargs are names, not emphasis. Escape them outside literals and roles."""
    if any(name == n or name.startswith(n + ".") for n in LENIENT):  # shown verbatim
        return
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("| ", "+-", "+=")):  # a table or line block
            continue
        parts = _LITERAL.split(line)
        for j in range(0, len(parts), 2):  # even parts are outside ``literals`` and `roles`
            text = _PLAIN.sub(
                lambda m: m.group(0).replace("*", "\\*").replace("|", "\\|"), parts[j]
            )
            spans = _EMPHASIS.split(text)  # escape the stars outside real emphasis
            marks = _EMPHASIS.findall(text)
            indent = len(text) - len(text.lstrip()) if j == 0 else 0
            spans[0] = spans[0][indent:]  # the line's indentation is not part of the text
            text = " " * indent + "".join(
                _LONE_STAR.sub(r"\\*", sp) + (marks[n] if n < len(marks) else "")
                for n, sp in enumerate(spans)
            )
            parts[j] = text
        lines[i] = "".join(parts)


def _prose_not_type(
    app: object, what: str, name: str, obj: object, options: object, lines: list[str]
) -> None:
    """Napoleon reads "Text before a colon: more text" in a property's docstring as "type:
    description"; taskgrad gives types as annotations, so put the sentence back together."""
    if what not in ("property", "attribute"):
        return
    for i, line in enumerate(lines):
        if line.startswith(":type: "):  # taskgrad states types in annotations, never inline
            head = line[7:].strip()
            del lines[i]
            while lines and not lines[-1].strip():
                lines.pop()
            lines[:1] = [f"{head}: {lines[0]}" if lines else head]
            return


def _documented(env: object) -> dict[int, str]:
    """{id(python object): documented name} for every documented Python object (cached)."""
    cache = getattr(env, "_taskgrad_documented", None)
    if cache is not None:
        return cache
    cache = {}
    for name in env.get_domain("py").objects:  # type: ignore[attr-defined]
        obj = _import_dotted(name)
        if obj is not None:
            cache.setdefault(id(obj), name)
    env._taskgrad_documented = cache  # type: ignore[attr-defined]
    return cache


def _import_dotted(name: str) -> object | None:
    """The object at a dotted path, or None. An attribute wins over a submodule of the same name
    (``taskgrad.training.backward`` is the function, not its module)."""
    parts = name.split(".")
    try:
        obj: object = importlib.import_module(parts[0])
    except Exception:
        return None
    for i, part in enumerate(parts[1:], start=1):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(".".join(parts[: i + 1]))
        except Exception:
            return None
    return obj


def _resolve_alias(app: object, env: object, node: object, contnode: object) -> object | None:
    """Resolve a Python reference that Sphinx could not: to the documented object it names
    through another path (a re-export such as taskgrad.PrimaryAux, the defining module, or a name
    relative to the module of the docstring it appears in); to plain text when it names a real
    object that the reference does not document (a private helper). A name that does not exist
    stays unresolved, so nitpicky mode still catches typos."""
    if node.get("refdomain") != "py":  # type: ignore[attr-defined]
        return None
    target = node.get("reftarget", "")  # type: ignore[attr-defined]
    candidates = [target]
    scopes = []
    source = str(getattr(node, "source", "") or "")
    if "docstring of " in source:  # the object whose docstring holds the reference
        owner = source.split("docstring of ", 1)[1].split(":")[0].split(".")
        scopes += [".".join(owner[:i]) for i in range(len(owner), 0, -1)]
    if node.get("py:module"):  # type: ignore[attr-defined]
        scopes.append(node["py:module"])  # type: ignore[index]
        if node.get("py:class"):  # type: ignore[attr-defined]
            scopes.append(f"{node['py:module']}.{node['py:class']}")  # type: ignore[index]
    candidates += [f"{scope}.{target}" for scope in scopes]
    documented = _documented(env)
    exists = False
    for cand in candidates:
        obj = _import_dotted(cand)
        if obj is None:
            continue
        exists = True
        name = documented.get(id(obj))
        if name is None or name == target or isinstance(obj, (int, float, str, bool)):
            continue
        domain = env.get_domain("py")  # type: ignore[attr-defined]
        ref = domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], name, node, contnode
        )  # type: ignore[attr-defined, index]
        if ref is not None:
            return ref
    if not exists and "." not in target:  # a bare name: the one documented object of that name
        same = {n for n in env.get_domain("py").objects if n.rsplit(".", 1)[-1] == target}  # type: ignore[attr-defined]
        if len({id(_import_dotted(n)) for n in same}) == 1:  # one object, maybe under several names
            domain = env.get_domain("py")  # type: ignore[attr-defined]
            ref = domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], min(same), node, contnode
            )  # type: ignore[attr-defined, index]
            if ref is not None:
                return ref
    if (
        not exists and "." not in target
    ):  # a helper type of some taskgrad module (a Protocol, an alias)
        exists = any(
            name.startswith("taskgrad") and target in vars(mod)
            for name, mod in list(sys.modules.items())
            if mod is not None
        )
    if not exists and node.get("reftype") == "exc":  # type: ignore[attr-defined]
        # "ValueError / TypeError" in a Raises section: every name a real exception
        names = [n for n in re.split(r"\s*(?:/|,|\bor\b)\s*", target) if n]
        exists = len(names) > 1 and all(isinstance(getattr(builtins, n, None), type) for n in names)
    if not exists and node.get("reftype") == "attr" and "." not in target:  # type: ignore[attr-defined]
        # an instance attribute (set in __init__, not importable) of the class being documented
        exists = any(isinstance(_import_dotted(scope), type) for scope in scopes)
    return contnode if exists else None


def _skip_foreign_members(
    app: object, what: str, name: str, obj: object, skip: bool, options: object
) -> bool | None:
    """Leave out members that come from scikit-learn's base classes (documented there)."""
    module = getattr(obj, "__module__", None) or ""
    if module.startswith("sklearn"):
        return True
    return None


def _methods_table() -> str:
    """The table of every registered method, generated from the registry at build time."""
    from taskgrad import methods

    lines = [
        "| name | family | what it does | paper | parameters (defaults) |",
        "|---|---|---|---|---|",
    ]
    for name, info in methods.infos().items():
        try:
            params = inspect.signature(info.factory).parameters.values()
        except (TypeError, ValueError):
            params = []
        shown = ", ".join(
            f"`{p.name}={p.default!r}`"
            for p in params
            if p.default is not inspect.Parameter.empty and p.name not in ("generator",)
        )
        desc = info.description.replace("|", "\\|")
        paper = (info.paper or "").replace("|", "\\|")
        lines.append(f"| `{name}` | {info.family} | {desc} | {paper} | {shown or '-'} |")
    return "\n".join(lines) + "\n"


def _write_generated(app: object) -> None:
    out = DOCS / "_generated"
    out.mkdir(exist_ok=True)
    text = _methods_table()
    path = out / "methods_table.md"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def setup(app: object) -> None:
    app.connect("autodoc-process-docstring", _prose_not_type)  # type: ignore[attr-defined]
    app.connect("autodoc-process-docstring", _escape_plain_text)  # type: ignore[attr-defined]
    app.connect("autodoc-process-docstring", _lenient_docstring)  # type: ignore[attr-defined]
    app.connect("autodoc-skip-member", _skip_foreign_members)  # type: ignore[attr-defined]
    app.connect("missing-reference", _resolve_alias)  # type: ignore[attr-defined]
    app.connect("builder-inited", _write_generated)  # type: ignore[attr-defined]
