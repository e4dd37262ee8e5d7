"""TaskGradMixin: automatic optimization (clipping, accumulation, schedulers, precision plugins),
the loss in the progress bar, and checkpoints that resume the method's state exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import taskgrad
from taskgrad.lightning import TaskGradMixin, lightning_available
from taskgrad.training import GradStep
from tests.lightning.lightning_cases import D, H, K
from tests.lightning.lightning_cases import data as _data
from tests.lightning.lightning_cases import losses as _losses
from tests.lightning.lightning_cases import pl as _pl

pytestmark = pytest.mark.skipif(
    not lightning_available(), reason="pytorch-lightning not installed (optional extra)"
)


def _loader(dtype=torch.float64):
    x, y = _data()
    ds = torch.utils.data.TensorDataset(x.to(dtype), y.to(dtype))
    return torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False)


def _nets(dtype=torch.float64):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(D, H), nn.Tanh()).to(dtype)
    heads = nn.ModuleList(nn.Linear(H, 1) for _ in range(K)).to(dtype)
    return encoder, heads


def _module(
    method,
    *,
    automatic,
    momentum=0.0,
    scheduler=False,
    dtype=torch.float64,
    source="representation",
):
    pl = _pl()

    class Net(TaskGradMixin, pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder, self.heads = _nets(dtype)
            self.configure_taskgrad(method, source=source, automatic=automatic)

        def task_losses(self, batch, batch_idx):
            x, y = batch
            z = self.encoder(x)
            return _losses(torch.cat([h(z) for h in self.heads], dim=1), y), z

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=momentum)
            if not scheduler:
                return opt
            return {
                "optimizer": opt,
                "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5),
            }

    return Net()


def _trainer(epochs, **kw):
    pl = _pl()
    kw = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **kw,
    }
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, **kw)


def _params(m):
    return [p.detach().clone() for p in [*m.encoder.parameters(), *m.heads.parameters()]]


def test_automatic_keeps_clipping_accumulation_and_schedulers():
    """Lightning does the backward, clipping, accumulation and LR schedule: the parameters equal
    a plain loop doing the same with the weights of each micro-batch."""
    module = _module(taskgrad.MGDA(), automatic=True, scheduler=True)
    trainer = _trainer(2, gradient_clip_val=0.05, accumulate_grad_batches=2)
    trainer.fit(module, _loader())
    assert trainer.global_step == 4  # 2 epochs × 4 batches / 2 micro-batches per step

    encoder, heads = _nets()
    params = [*encoder.parameters(), *heads.parameters()]
    opt = torch.optim.SGD(params, lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    step = GradStep(taskgrad.MGDA(), "representation")
    x, y = _data()
    clipped = 0
    for _ in range(2):
        for b in range(4):
            if b % 2 == 0:
                opt.zero_grad()
            xb, yb = x[8 * b : 8 * b + 8], y[8 * b : 8 * b + 8]
            z = encoder(xb)
            losses = list(_losses(torch.cat([h(z) for h in heads], dim=1), yb).values())
            step.backward(losses, features=z, backward_fn=lambda t: (t / 2).backward())
            if b % 2 == 1:
                norm = torch.nn.utils.clip_grad_norm_(params, 0.05)
                clipped += int(norm > 0.05)
                opt.step()
        sched.step()
    assert clipped > 0  # the clipping mattered
    for p, q in zip(_params(module), params, strict=True):
        assert torch.allclose(p, q.detach(), atol=1e-12, rtol=0)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.05 * 0.25)


def test_loss_is_in_the_progress_bar_and_the_loggers():
    module = _module(taskgrad.MGDA(), automatic=True)
    trainer = _trainer(1)
    trainer.fit(module, _loader())
    assert "loss" in trainer.progress_bar_metrics
    metrics = trainer.callback_metrics
    assert {"taskgrad/weight/t0", "taskgrad/loss/t2", "taskgrad/cos/t0|t1"} <= set(metrics)
    w = module.taskgrad_last.weights
    assert float(metrics["loss"]) == pytest.approx(
        float((w * module.taskgrad_last.local_losses).sum()), rel=1e-6
    )


def test_bf16_precision_plugin_trains_under_automatic_optimization():
    module = _module(taskgrad.MGDA(), automatic=True, dtype=torch.float32)
    before = _params(module)
    trainer = _trainer(1, precision="bf16-mixed")
    trainer.fit(module, _loader(torch.float32))
    after = _params(module)
    assert module.taskgrad_skipped == 0
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(p, q) for p, q in zip(before, after, strict=True))


@pytest.mark.parametrize("automatic", [False, True])
def test_resume_from_a_lightning_checkpoint_continues_famo_exactly(tmp_path, automatic):
    """One epoch, a checkpoint, a fresh module resumed with fit(ckpt_path=...) for the second
    epoch: bit-identical to two uninterrupted epochs (parameters and FAMO's state)."""

    def famo_module():
        return _module(taskgrad.methods.FAMO(lr=0.5), automatic=automatic, momentum=0.9)

    whole = famo_module()
    _trainer(2).fit(whole, _loader())

    first = famo_module()
    t1 = _trainer(1)
    t1.fit(first, _loader())
    ckpt = tmp_path / "epoch1.ckpt"
    t1.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=False)
    assert "taskgrad" in saved and saved["taskgrad"]["step"]["method"]["type"] == "FAMO"

    resumed = famo_module()
    _trainer(2).fit(resumed, _loader(), ckpt_path=ckpt)
    for p, q in zip(_params(resumed), _params(whole), strict=True):
        assert torch.equal(p, q)
    a, b = resumed.taskgrad_step.state_dict(), whole.taskgrad_step.state_dict()
    assert repr(a) == repr(b)


def test_a_checkpoint_without_taskgrad_state_is_refused(tmp_path):
    module = _module(taskgrad.methods.FAMO(), automatic=True)
    t = _trainer(1)
    t.fit(module, _loader())
    ckpt = torch.load(_save(t, tmp_path), weights_only=False)
    del ckpt["taskgrad"]
    with pytest.raises(KeyError, match="no taskgrad state"):
        _module(taskgrad.methods.FAMO(), automatic=True).on_load_checkpoint(ckpt)


def _save(trainer, tmp_path):
    path = tmp_path / "c.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_training_logger_gets_one_row_per_optimizer_step_under_accumulation():
    from taskgrad.tracking import MemoryLogger

    pl = _pl()
    log = MemoryLogger()

    class Net(TaskGradMixin, pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.encoder, self.heads = _nets()
            self.configure_taskgrad(
                taskgrad.MGDA(), source="representation", automatic=True, logger=log
            )

        def task_losses(self, batch, batch_idx):
            x, y = batch
            z = self.encoder(x)
            return _losses(torch.cat([h(z) for h in self.heads], dim=1), y), z

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    _trainer(2, accumulate_grad_batches=2).fit(Net(), _loader())
    steps, _ = log.series()["weight/t0"]
    assert steps == [1, 2, 3, 4]  # 8 micro-batches, 4 optimizer steps, named by task
