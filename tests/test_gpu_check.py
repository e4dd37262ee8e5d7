"""benchmarks/gpu_check.py: the smoke run on the CPU writes every target, a stopped job is reported.

The GPU figures themselves are only decided on a GPU; these tests keep the script from rotting.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
NAMES = [
    "cuda-tests",
    "batched-solves",
    "step-representation",
    "step-full",
    "step-sketch32",
    "linear-speedup",
    "hvp-cost",
    "ddp",
]


def _module():
    if "gpu_check" in sys.modules:
        return sys.modules["gpu_check"]
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_smoke_run_writes_every_target(tmp_path):
    # a generous total budget: the smoke run takes about a minute alone, longer on a loaded machine
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--device",
            "cpu",
            "--smoke",
            "--budget",
            "400",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    entries = {e["name"]: e for e in report["entries"]}
    assert list(entries) == NAMES
    for e in entries.values():
        assert e["status"] == "ok", e
        assert e["passed"] in (True, False)
        assert e["target"] and e["measured"] and e["reproduce"]
        assert e["value"] is not None and e["value"] == e["value"]  # a number, not NaN
    # the CUDA tests are selected and skip without a GPU: pytest exits 0
    assert entries["cuda-tests"]["passed"] is True
    # two gloo ranks reproduce one process in float64
    assert entries["ddp"]["value"] <= 1e-6
    assert {r["source"] for r in entries["ddp"]["details"]["traffic"]} == {
        "sum",
        "representation",
        "sketch",
        "full",
    }
    assert report["meta"]["smoke"] is True
    assert len(report["full_length"]) >= 4
    md = (tmp_path / "gpu_check.md").read_text()
    for name in NAMES:
        assert f"| {name} |" in md
    assert "taskgrad bench benchmarks/configs/qm9.toml --device cuda" in md


@pytest.mark.slow
def test_a_job_past_its_budget_is_stopped_and_reported(tmp_path):
    gc = _module()
    job = next(j for j in gc.JOBS if j.name == "step-cost")
    args = Namespace(device="cpu", smoke=True)
    entries = gc._run_job(job, args, budget=2.0)
    assert [e.name for e in entries] == ["step-representation", "step-full", "step-sketch32"]
    assert all(e.status == "timeout" and e.passed is None for e in entries)
    assert "2 s budget" in entries[0].measured


def test_markdown_marks_failures_and_undecided():
    gc = _module()
    entries = [
        gc.Entry("a", "x < 1", "0.5", 0.5, True, "cmd a"),
        gc.Entry("b", "y < 1", "2.0", 2.0, False, "cmd b"),
        gc.Entry("c", "z", "stopped", None, None, "cmd c", status="timeout"),
    ]
    md = gc.markdown(
        entries, {"date": "d", "device_name": "GPU", "torch": "t", "smoke": False, "command": "c"}
    )
    lines = md.splitlines()
    assert "| a | x < 1 | 0.5 | yes |" in md
    assert any(ln.startswith("| b |") and "**no**" in ln for ln in lines)
    assert any(
        ln.startswith("| c |") and "timeout: stopped" in ln and "| - |" in ln for ln in lines
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
@pytest.mark.slow
def test_cuda_without_a_gpu_says_what_to_do(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cuda", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--device cpu --smoke" in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()
