"""The zoo's new methods on CUDA tensors give the CPU float64 answer (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from taskgrad import methods as M
from tests.methods.methods_helpers import jacobian, rel

NEW = [
    "krum",
    "constant",
    "modo",
    "sdmgrad",
    "cr-mogm",
    "pcd",
    "config",
    "graddrop",
    "trimmed-mean",
    "excess-mtl",
    "moco",
    "blockwise",
    "log-mgda",
    "log-cagrad",
    "log-imtl-g",
    "imtl-hybrid",
]


def direction(m, J, L):
    if "jacobian" in m.needs:
        return m.aggregate(J, losses=L)
    return m(gram=J @ J.T, losses=L) @ J


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NEW)
def test_new_method_on_cuda_matches_cpu(name):
    info = M.infos()[name]
    k = 4
    J = jacobian(k, 3 * k + 2, 0, correlated=1.5)
    L = torch.rand(k, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 0.5
    kw = {"generator": torch.Generator().manual_seed(1)} if info.random else {}
    kw_gpu = {"generator": torch.Generator(device="cuda").manual_seed(1)} if info.random else {}
    cpu, gpu = info.example(k, **kw), info.example(k, **kw_gpu)
    for t in range(3):
        d_cpu = direction(cpu, J * (1 + t), L)
        d_gpu = direction(gpu, (J * (1 + t)).cuda(), L.cuda())
        assert d_gpu.device.type == "cuda" and bool(torch.isfinite(d_gpu).all())
        if not info.random:  # CUDA draws differ from CPU draws
            assert rel(d_gpu.cpu(), d_cpu) < 1e-8, name
