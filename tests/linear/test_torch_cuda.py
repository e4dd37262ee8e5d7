"""The torch solver on CUDA (skipped without a GPU); its math is tested on the CPU elsewhere."""

import numpy as np
import pytest
import torch

from taskgrad.linear import MultiTaskLasso, MultiTaskLogisticRegression


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 300))
    Y = X[:, :5] @ rng.standard_normal((5, 4)) + rng.standard_normal((200, 4))
    a = MultiTaskLasso(alpha=0.1, tol=1e-10).fit(X, Y)
    b = MultiTaskLasso(alpha=0.1, tol=1e-10, device="cuda").fit(X, Y)
    np.testing.assert_allclose(a.coef_, b.coef_, atol=1e-6)
    yb = (Y > 0).astype(int)
    c = MultiTaskLogisticRegression(alpha=0.02, tol=1e-10).fit(X, yb)
    d = MultiTaskLogisticRegression(alpha=0.02, tol=1e-10, device="cuda").fit(X, yb)
    np.testing.assert_allclose(c.coef_, d.coef_, atol=1e-5)
