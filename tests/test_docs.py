"""The documentation's examples run, and its generated parts cover what they claim to.

Every ```python block of a page in docs/ runs, in order, in one namespace per page (a block may
use what an earlier block of the same page defined). Blocks that must not run are written with
another language tag (```bash, ```text). The site itself is built by scripts/docs.sh (CI).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(
    p for p in DOCS.rglob("*.md") if "_build" not in p.parts and "_generated" not in p.parts
)
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SLOW = {"distributed.md", "linear.md", "second-order.md", "compile.md"}  # > 3 s on 2 loaded cores


def _blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def _pages_with_code() -> list:
    out = []
    for page in PAGES:
        if not _blocks(page):
            continue
        rel = page.relative_to(DOCS).as_posix()
        marks = [pytest.mark.slow] if page.name in SLOW else []
        out.append(pytest.param(page, id=rel, marks=marks))
    return out


@pytest.mark.parametrize("page", _pages_with_code())
def test_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    namespace = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for i, code in enumerate(_blocks(page)):
        exec(compile(code, f"{page.relative_to(DOCS)} [block {i + 1}]", "exec"), namespace)  # noqa: S102


def test_pages_have_examples():
    """The pages that teach an API show it running (the examples above are then tested)."""
    need = [
        "getting-started.md",
        "gram.md",
        "methods.md",
        "sources.md",
        "training.md",
        "distributed.md",
        "linear.md",
        "second-order.md",
        "howto/switching.md",
        "howto/primary-aux-loop.md",
        "howto/noisy-labels.md",
    ]
    for rel in need:
        assert _blocks(DOCS / rel), f"docs/{rel} has no python example"


def _conf():
    spec = importlib.util.spec_from_file_location("taskgrad_docs_conf", DOCS / "conf.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["taskgrad_docs_conf"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_methods_table_lists_every_registered_method():
    from taskgrad import methods

    table = _conf()._methods_table()
    rows = [ln for ln in table.splitlines() if ln.startswith("| `")]
    assert [ln.split("`")[1] for ln in rows] == sorted(methods.available())
    cagrad = next(ln for ln in rows if ln.startswith("| `cagrad`"))
    assert "Conflict-Averse" in cagrad and "`c=0.4`" in cagrad


def test_every_page_is_in_a_toctree():
    index = (DOCS / "index.md").read_text(encoding="utf-8") + (DOCS / "api" / "index.md").read_text(
        encoding="utf-8"
    )
    for page in PAGES:
        rel = page.relative_to(DOCS).with_suffix("").as_posix()
        if rel in ("index", "README") or rel.startswith("api/") and rel != "api/index":
            continue
        assert rel in index, f"docs/{rel}.md is not listed in docs/index.md"
