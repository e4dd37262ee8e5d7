"""The harness's modules: each data set's problem module imports on its own (no import circle
through the registry), no module imports another's private names, and `taskgrad.bench.problems`
is the package of problem modules (no function of that name hides it)."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import pytest

import taskgrad.bench
from taskgrad.bench import registry

BENCH = Path(taskgrad.bench.__file__).parent


def test_problems_is_the_package_of_problem_modules() -> None:
    import taskgrad.bench.problems

    assert isinstance(taskgrad.bench.problems, types.ModuleType)
    assert {p.stem for p in (BENCH / "problems").glob("*.py")} >= {
        "synthetic",
        "multidigits",
        "census",
        "qm9",
    }


@pytest.mark.slow
@pytest.mark.parametrize("module", ["census", "qm9", "multidigits", "synthetic"])
def test_each_problem_module_imports_first_and_alone(module: str) -> None:
    code = (
        f"import taskgrad.bench.problems.{module} as m; import taskgrad.bench.registry as r; "
        "print(r.task_names('synthetic'))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_no_private_name_is_imported_across_modules() -> None:
    offenders = []
    for path in sorted(BENCH.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                offenders += [
                    f"{path.relative_to(BENCH)}: {a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert offenders == []


def test_every_built_in_problem_names_its_tasks_and_config_keys_without_data() -> None:
    for name in registry.available_problems():
        data_keys, model_keys = registry.problem_keys(name)
        assert registry.task_names(name) and data_keys and model_keys is not None


def test_progress_bar_fields_are_labelled() -> None:
    from taskgrad.bench.runner import _loss_info, _progress_bar

    assert _loss_info(["left", "right"], [0.12345, 2.0]) == "loss left 0.123 right 2.000"
    progress = _progress_bar(True)  # not started: nothing is drawn
    task = progress.add_task("exp/mean/seed0", total=10, completed=3, info=_loss_info(["a"], [1.0]))
    row = " ".join(
        str(c.render(progress.tasks[task])) for c in progress.columns if hasattr(c, "text_format")
    )
    assert "step 3/10" in row and "loss a 1.000" in row
