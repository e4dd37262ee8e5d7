"""taskgrad.compile_kernels: every numba kernel of the package is found and compiled ahead of
time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import taskgrad
from taskgrad import _warmup
from taskgrad._numba import HAVE_NUMBA

needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="needs numba")
SRC = Path(taskgrad.__file__).resolve().parent


@needs_numba
def test_every_module_with_kernels_is_found():
    modules = set(_warmup._kernel_modules())
    for path in SRC.rglob("*.py"):
        if path.name != "_numba.py" and "@njit" in path.read_text(encoding="utf-8"):
            rel = path.relative_to(SRC).with_suffix("").parts
            assert ".".join(["taskgrad", *[p for p in rel if p != "__init__"]]) in modules, path
    found = _warmup.kernel_dispatchers()
    for area in (
        "taskgrad.solvers._compiled.",
        "taskgrad.methods.kernels.",
        "taskgrad.linear._kernels.",
    ):
        assert any(name.startswith(area) for name in found), area
    # a kernel re-exported by another module is listed once, under the module defining it
    assert not any(name.startswith("taskgrad.methods.kernels.common.nnls_rows") for name in found)


@needs_numba
def test_reached_follows_calls_between_kernels():
    found = _warmup.kernel_dispatchers()
    root = "taskgrad.solvers._compiled.nnls_rows"
    reached = _warmup._reached({root}, found)
    assert {
        root,
        "taskgrad.solvers._compiled._rescale",
        "taskgrad.solvers._compiled._pivot",
    } <= reached
    assert "taskgrad.linear._kernels.epoch_shared" not in reached


def test_a_failing_warm_up_call_is_reported_not_raised(monkeypatch):
    def boom():
        raise RuntimeError("cannot run here")

    monkeypatch.setattr(_warmup, "_solver_calls", lambda: iter([("solver broken", boom)]))
    monkeypatch.setattr(_warmup, "_method_calls", lambda: iter(()))
    monkeypatch.setattr(_warmup, "_linear_calls", lambda: iter(()))
    report = _warmup.compile_kernels(progress=False)
    if HAVE_NUMBA:
        assert report.failed == {"solver broken": "RuntimeError: cannot run here"}
    else:
        assert report.have_numba is False and not report.compiled


@pytest.mark.slow
@needs_numba
def test_compile_kernels_compiles_every_kernel():
    report = taskgrad.compile_kernels(progress=False)
    assert report.failed == {}
    assert report.not_compiled == []
    assert sorted(report.compiled) == sorted(_warmup.kernel_dispatchers())
    # a second call compiles nothing: it only runs the small problems again
    again = taskgrad.compile_kernels(progress=False)
    assert again.seconds < max(5.0, report.seconds)


@pytest.mark.slow
@needs_numba
def test_compile_command_reports_and_exits_zero(capsys):
    from taskgrad import cli

    assert cli.main(["compile", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "compiled kernels ready in" in out


def test_compile_command_fails_when_a_warm_up_call_fails(monkeypatch, capsys):
    from taskgrad import cli

    report = _warmup.CompileReport(
        seconds=0.1, compiled=["a"], failed={"method x": "ValueError: no"}
    )
    monkeypatch.setattr(_warmup, "compile_kernels", lambda progress=True: report)
    assert cli.main(["compile", "--quiet"]) == cli.EXIT_FAILED
    assert "warm-up call failed: method x: ValueError: no" in capsys.readouterr().err


def test_demo_compiles_the_kernels_before_it_times_the_methods(monkeypatch, tmp_path):
    from taskgrad import cli, demo
    from taskgrad.bench import demo_extra

    calls: list[str] = []
    monkeypatch.setattr(demo, "main", lambda **kw: calls.append("quadratics"))
    monkeypatch.setattr(_warmup, "compile_kernels", lambda progress=True: calls.append("compile"))
    monkeypatch.setattr(
        demo_extra, "run_extra", lambda *a, **kw: calls.append("timed toy and MultiMNIST")
    )
    assert cli.main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    assert calls == ["quadratics", "compile", "timed toy and MultiMNIST"]
