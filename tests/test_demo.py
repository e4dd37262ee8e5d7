"""The demo runs, writes its plot and numbers, and shows what it claims."""

from __future__ import annotations

import json

import pytest

from taskgrad.cli import main as cli_main
from taskgrad.demo import main as demo_main


@pytest.mark.slow
def test_demo_claims_hold(tmp_path) -> None:
    summary = demo_main(out_dir=tmp_path, steps=40, show=False)
    assert (tmp_path / "toy2d.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "toy2d.json").read_text())
    assert saved["summary"].keys() == summary.keys()
    # PrimaryAux never raises the auxiliary loss to first order; Mean and primary-only do
    assert summary["PrimaryAux"]["largest_first_order_L1_rise"] <= 1e-12
    assert summary["Mean"]["largest_first_order_L1_rise"] > 1e-3
    assert summary["primary only"]["L1_change"] > summary["Mean"]["L1_change"] > 0.1
    # the robust margin also absorbs the second-order drift: L1 goes down, step by step
    assert summary["PrimaryAux, margin 0.1"]["largest_L1_rise_in_a_step"] <= 0
    assert summary["PrimaryAux"]["L1_change"] < 0.1 * summary["Mean"]["L1_change"]


@pytest.mark.slow
def test_cli_demo_and_methods(tmp_path, capsys) -> None:
    assert cli_main(["demo", "--out", str(tmp_path), "--steps", "5", "--quadratics-only"]) == 0
    assert "toy2d.png" in capsys.readouterr().out
    assert cli_main(["methods"]) == 0
    listing = capsys.readouterr().out
    assert "primary-aux" in listing and "mgda" in listing
