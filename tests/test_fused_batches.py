"""speed.fused_batches: several optimizer steps per Lightning step train exactly as one batch
per step (plain, under bf16-mixed, with LR schedules, under DDP), call the gradient hooks
only when someone listens, and are refused where they cannot apply."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch

from genmodels.config import build
from genmodels.engine import essential_callbacks
from genmodels.engine.fused_batches import fuse_batches
from genmodels.engine.runs import load_model
from genmodels.errors import GenmodelsError
from genmodels.jobs.train import train

from .conftest import FAST, TINY, run_train
from .test_training import read_metrics, step_values

STEP_LR = ["+model.scheduler._target_=torch.optim.lr_scheduler.StepLR",
           "+model.scheduler._partial_=true", "+model.scheduler.step_size=1",
           "+model.scheduler.gamma=0.7"]


@pytest.mark.parametrize("model, extra", [("vae", STEP_LR), ("denoising_ae", [])])
def test_fused_batches_train_exactly_as_one_batch_per_step(model, extra, make_config):
    # 22 batches of 64 per epoch: fused by 4, each epoch ends on a fused batch of 2, and
    # max_steps=27 stops inside a fused batch. Validation and the sanity pass draw from
    # the same random stream between epochs; the LR halves (0.7) each epoch.
    def run(fused: int):
        cfg = make_config(f"model={model}", *FAST, "trainer.max_steps=27", "test=false",
                          "dataset.batch_size=64", "logger=csv", "trainer.limit_val_batches=2",
                          "trainer.log_every_n_steps=4", f"speed.fused_batches={fused}",
                          *extra, run_name=f"fused{fused}")
        metrics, output_dir = train(cfg), Path(cfg.paths.output_dir)
        summary = json.loads((output_dir / "summary.json").read_text())
        assert summary["global_step"] == 27
        weights = load_model(output_dir / "checkpoints" / "last.ckpt").state_dict()
        return weights, metrics, step_values(read_metrics(output_dir), "train/loss_step")

    (one, one_metrics, _), (fused, fused_metrics, fused_logged) = run(1), run(4)
    for (name, a), b in zip(one.items(), fused.values(), strict=True):
        assert torch.equal(a, b), name
    for name in ("train/loss_epoch", "val/loss"):  # the mean of the same 22 steps
        assert fused_metrics[name] == one_metrics[name]
    # trainer.log_every_n_steps=4 counts fused batches: 6 in the first epoch (the last of
    # 2 batches), 2 in the second (of 4 batches, then 1), so 2 logging steps of 8.
    assert len(fused_logged) == 2


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fused_batches_call_the_gradient_hooks_only_when_implemented(precision, make_config,
                                                                     monkeypatch):
    # Calling Lightning's gradient hooks on every callback costs ~0.2 ms per optimizer
    # step: fused batches skip that when no callback implements one, and train as before;
    # a callback that does sees every optimizer step, as without fused batches.
    from lightning.pytorch.trainer import call

    dispatched, dispatch = [], call._call_callback_hooks

    def recording_dispatch(trainer, hook, *args, **kwargs):
        dispatched.append(hook)
        return dispatch(trainer, hook, *args, **kwargs)

    monkeypatch.setattr(call, "_call_callback_hooks", recording_dispatch)

    def fit(fused: int, callbacks: list) -> tuple[L.Trainer, dict]:
        cfg = make_config("model=vae", "dataset.batch_size=16", run_name=f"fused{fused}")
        L.seed_everything(0)
        model, datamodule = build(cfg.model), build(cfg.dataset)
        trainer = L.Trainer(max_steps=8, limit_val_batches=0, logger=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, accelerator="cpu",
                            precision=precision, callbacks=[*essential_callbacks(), *callbacks])
        fuse_batches(fused, trainer, model, datamodule)
        trainer.fit(model, datamodule)
        return trainer, model.state_dict()

    trainer, plain = fit(4, [])
    steps = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.total
    assert "on_train_batch_end" in dispatched and "on_before_backward" not in dispatched
    assert steps.ready == steps.completed == 8  # Lightning's count of optimizer steps
    one, fused = GradientNorms(), GradientNorms()
    _, unfused = fit(1, [one])
    fit(4, [fused])
    assert len(fused.norms) == 8 and fused.norms == one.norms
    for (name, a), b in zip(unfused.items(), plain.values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_fused_batches_under_ddp_sync_every_optimizer_step(tmp_path):
    # Each process sees its own half of every batch: a fused step whose later optimizer
    # steps skipped DDP's gradient all-reduce would end with other weights.
    def run(fused: int) -> dict:
        run_dir = tmp_path / f"fused{fused}"
        result = run_train("model=vae", "trainer=ddp_cpu", "trainer.max_steps=14",
                           "trainer.enable_progress_bar=false", "test=false", "logger=csv",
                           "dataset.batch_size=32", f"speed.fused_batches={fused}",
                           f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)

    one, fused = run(1), run(3)
    assert one["global_step"] == fused["global_step"] == 14
    for (name, a), b in zip(one["state_dict"].items(), fused["state_dict"].values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("overrides, message", [
    (["speed.fused_batches=0"], r"^speed.fused_batches must be an integer >= 1 \(1: off\), got 0"),
    (["model=dcgan", "speed.fused_batches=4"],
     r"^speed.fused_batches applies to .* GAN has its own training step"),
    (["speed.fused_batches=4", "trainer.gradient_clip_val=1.0"],
     r"trainer.gradient_clip_val=1.0 does not apply: set speed.fused_batches=1 or "),
    (["speed.fused_batches=4", "+trainer.accumulate_grad_batches=2"],
     r"trainer.accumulate_grad_batches=2 does not apply"),
])
def test_fused_batches_that_cannot_apply_are_refused(overrides, message, make_config):
    with pytest.raises(GenmodelsError, match=message):
        train(make_config(*TINY, *overrides))


class GradientNorms(L.Callback):
    """The gradient norm Lightning shows a callback before each optimizer step."""

    def __init__(self):
        self.norms = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        grads = [p.grad.flatten() for p in module.parameters() if p.grad is not None]
        self.norms.append(torch.cat(grads).norm().item())
