"""taskgrad.lightning with pytorch-lightning (optional extra; skipped when absent).

A LightningModule returning a dict of task losses, trained by ``Trainer(max_epochs=2)``, ends
with exactly the parameters of a plain loop of ``taskgrad.backward`` + SGD over the same batches,
and the weights it logs are the ones that loop computed.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import taskgrad
from taskgrad.lightning import TaskGradMixin, lightning_available
from taskgrad.tracking import MemoryLogger
from tests.lightning.lightning_cases import D, H, K
from tests.lightning.lightning_cases import data as _data
from tests.lightning.lightning_cases import losses as _losses
from tests.lightning.lightning_cases import pl as _pl

pytestmark = pytest.mark.skipif(
    not lightning_available(), reason="pytorch-lightning not installed (optional extra)"
)


def _make_module(method, logger=None, nan_batch=None):
    pl = _pl()

    class Net(TaskGradMixin, pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.encoder = nn.Sequential(nn.Linear(D, H), nn.Tanh()).double()
            self.heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(K)).double()
            self.configure_taskgrad(
                method,
                source="representation",
                logger=logger,
                nonfinite="skip" if nan_batch is not None else "auto",
            )

        def task_losses(self, batch, batch_idx):
            x, y = batch
            if nan_batch is not None and batch_idx == nan_batch and self.current_epoch == 0:
                x = x.clone()
                x[0, 0] = float("nan")
            z = self.encoder(x)
            pred = torch.cat([h(z) for h in self.heads], dim=1)
            return _losses(pred, y), z

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return Net()


def _fit(module, epochs=2):
    pl = _pl()
    x, y = _data()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    return trainer


def _reference(method, epochs=2, skip=None):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(D, H), nn.Tanh()).double()
    heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(K)).double()
    params = [*encoder.parameters(), *heads.parameters()]
    opt = torch.optim.SGD(params, lr=0.05)
    x, y = _data()
    weights = []
    for e in range(epochs):
        for b in range(4):
            if skip == (e, b):
                continue
            xb, yb = x[8 * b : 8 * b + 8], y[8 * b : 8 * b + 8]
            opt.zero_grad()
            z = encoder(xb)
            pred = torch.cat([h(z) for h in heads], dim=1)
            res = taskgrad.backward(list(_losses(pred, yb).values()), method=method, features=z)
            weights.append(res.weights)
            opt.step()
    return params, weights


@pytest.mark.parametrize("name", ["mgda", "dwa"])
def test_trainer_matches_plain_loop(name):
    make = {"mgda": taskgrad.MGDA, "dwa": lambda: taskgrad.methods.DWA()}[name]
    log = MemoryLogger()
    module = _make_module(make(), logger=log)
    trainer = _fit(module)
    params, weights = _reference(make())
    for p, q in zip(
        [*module.encoder.parameters(), *module.heads.parameters()], params, strict=True
    ):
        assert torch.allclose(p.detach(), q.detach(), atol=1e-10, rtol=0)
    logged = log.series()
    assert logged["weight/t0"][0] == list(range(1, 9))  # global_step after each optimizer step
    for i in range(K):
        assert logged[f"weight/t{i}"][1] == pytest.approx([float(w[i]) for w in weights], abs=1e-12)
    metrics = trainer.callback_metrics
    assert float(metrics["taskgrad/weight/t1"]) == pytest.approx(float(weights[-1][1]), abs=1e-6)
    if name == "mgda":
        assert "taskgrad/cos/t0|t1" in metrics and "taskgrad/gram_cond" in metrics


def test_nonfinite_batch_is_skipped_not_applied():
    module = _make_module(taskgrad.MGDA(), nan_batch=1)
    _fit(module)
    assert module.taskgrad_skipped == 1
    params, _ = _reference(taskgrad.MGDA(), skip=(0, 1))
    for p, q in zip(
        [*module.encoder.parameters(), *module.heads.parameters()], params, strict=True
    ):
        assert torch.allclose(p.detach(), q.detach(), atol=1e-10, rtol=0)


def test_missing_task_losses_is_a_clear_error():
    pl = _pl()

    class Bad(TaskGradMixin, pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.configure_taskgrad(taskgrad.MGDA())

    with pytest.raises(NotImplementedError, match="task_losses"):
        Bad().task_losses(None, 0)
    with pytest.raises(TypeError, match="non-empty dict"):
        Bad()._taskgrad_split([torch.zeros(())])
