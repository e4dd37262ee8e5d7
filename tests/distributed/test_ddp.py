"""2 CPU ranks (gloo) against one process on the same global batch, in float64.

One spawn runs every scenario (process start-up dominates the cost); each test then checks one
scenario's records: weights and parameters after the SGD steps equal the single-process run to
1e-6, both ranks agree bitwise, and a NaN on one rank makes both skip.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from taskgrad.distributed import run_on_ranks

from . import _scenarios as sc

pytestmark = [
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(),
        reason="needs torch.distributed with gloo",
    ),
    pytest.mark.slow,  # starts two processes
]

NAMES = [*sc.SCENARIOS, "debug-catch", "bf16"]
TOL = 1e-6


@pytest.fixture(scope="module")
def refs() -> dict[str, dict]:
    """Single-process references, computed first: the forked ranks then inherit warm imports."""
    return {name: sc.reference(spec) for name, spec in sc.SCENARIOS.items()}


@pytest.fixture(scope="module")
def ranks(refs, tmp_path_factory) -> list[dict]:
    prefix = str(tmp_path_factory.mktemp("ddp") / "rank")
    run_on_ranks(sc.worker, 2, args=(NAMES, prefix), timeout=90.0)
    return [torch.load(f"{prefix}{r}.pt", weights_only=False) for r in range(2)]


def _close(a, b, tol=TOL) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= tol


@pytest.mark.parametrize("name", list(sc.SCENARIOS))
def test_matches_single_process(ranks, refs, name):
    for r in range(2):
        assert "error" not in ranks[r][name], ranks[r][name].get("error")
    ref = refs[name]
    r0, r1 = ranks[0][name], ranks[1][name]
    assert r0["skipped"] == r1["skipped"] == ref["skipped"]
    for t in range(sc.STEPS):
        if ref["skipped"][t]:
            assert torch.isnan(r0["weights"][t]).all() and torch.isnan(r1["weights"][t]).all()
            continue
        assert torch.equal(r0["weights"][t], r1["weights"][t]), f"step {t}: ranks disagree"
        assert _close(r0["weights"][t], ref["weights"][t]), (t, r0["weights"][t], ref["weights"][t])
        if r0["gram"] and r0["gram"][t] is not None and ref["gram"][t] is not None:
            scale = float(ref["gram"][t].abs().max())
            assert _close(r0["gram"][t] / scale, ref["gram"][t] / scale), t
    for p0, p1, pr in zip(r0["params"], r1["params"], ref["params"], strict=True):
        assert torch.equal(p0, p1)
        assert _close(p0, pr)


def test_weights_not_trivial(ranks):
    """The scenarios exercise real trade-offs: MGDA's weights differ from the mean's."""
    w = ranks[0]["rep-mgda"]["weights"][0]
    assert not torch.allclose(w, torch.full_like(w, 1 / sc.K), atol=1e-3)
    # DWA is stateful: after two steps its weights leave the uniform start
    dwa = ranks[0]["rep-dwa"]["weights"]
    assert torch.allclose(dwa[0], torch.ones(sc.K, dtype=dwa[0].dtype))
    assert not torch.allclose(dwa[2], dwa[0])


def test_nan_on_one_rank_skips_everywhere(ranks):
    for name in ("nan-rep-mgda", "nan-full-dwa"):
        t_bad = sc.SCENARIOS[name]["nan"][0]
        for r in range(2):
            assert ranks[r][name]["skipped"][t_bad] is True
            assert all(not s for i, s in enumerate(ranks[r][name]["skipped"]) if i != t_bad)


def test_debug_mode_catches_rank_dependent_weights(ranks):
    for r in range(2):
        msg = ranks[r]["debug-catch"].get("raised")
        assert msg is not None and "differs across ranks" in msg


def test_bf16_autocast_ranks_agree(ranks):
    a, b = ranks[0]["bf16"], ranks[1]["bf16"]
    assert "error" not in a, a.get("error")
    assert a["gram_dtype"] == "torch.float32"
    for wa, wb in zip(a["weights"], b["weights"], strict=True):
        assert torch.equal(wa, wb) and torch.isfinite(wa).all()
    for pa, pb in zip(a["params"], b["params"], strict=True):
        assert torch.equal(pa, pb)
