import numpy as np
import pytest


@pytest.fixture
def reg_data():
    """Y = XW* + noise, 8 active rows of W* shared by 4 tasks, a large intercept."""
    rng = np.random.default_rng(0)
    n, p, T = 60, 120, 4
    X = rng.standard_normal((n, p))
    W = np.zeros((p, T))
    W[:8] = rng.standard_normal((8, T))
    Y = X @ W + 0.5 * rng.standard_normal((n, T)) + 3.0
    return X, Y


def alpha_max_l21(X, Y):
    """max_j ‖x_jᵀ(Y − Ȳ)‖₂ / n with X centered: the smallest α with W = 0 (intercept fitted)."""
    Xc = X - X.mean(0)
    Yc = Y - Y.mean(0)
    return np.sqrt(((Xc.T @ Yc) ** 2).sum(1)).max() / X.shape[0]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The torch solver does many tiny ops: one thread avoids contention on the 2-core machine."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
