"""Divergence: every family stops on a NaN or infinite loss, gradient or weight, names its
last good checkpoint and never writes a NaN checkpoint over it; without reading a device
value back on ordinary steps; and 16-mixed precision's skipped steps are not divergence."""

import json
import logging
import math
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision

from genmodels.callbacks import InterruptedCheckpoint
from genmodels.config import build
from genmodels.engine import essential_callbacks
from genmodels.engine.divergence import last_checkpoint
from genmodels.engine.fused_batches import fuse_batches
from genmodels.errors import TrainingDiverged
from genmodels.jobs.pretrain import pretrain_classifier
from genmodels.jobs.sweeps import collect_jobs
from genmodels.jobs.train import train

from .conftest import FAST, SMALL_DCGAN, compose_config


class PoisonBatch(L.Callback):
    """Turns the real images of the batches from `epoch` on into NaNs, as a diverging run
    would produce."""

    def __init__(self, epoch: int = 0):
        self.epoch = epoch

    def on_train_batch_start(self, trainer, model, batch, batch_idx):
        if trainer.current_epoch >= self.epoch:
            batch[0].fill_(float("nan"))


def fit(overrides, tmp_path, callbacks=(), precision="32-true", plugins=(), fused=1,
        **trainer_args):
    cfg = compose_config(["dataset.batch_size=16", *overrides], tmp_path)
    model, datamodule = build(cfg.model), build(cfg.dataset)
    trainer = L.Trainer(**{"max_epochs": 3, "limit_train_batches": 2, "limit_val_batches": 0,
                           "logger": False, "enable_progress_bar": False,
                           "enable_model_summary": False, "accelerator": "cpu",
                           "precision": None if plugins else precision, **trainer_args},
                        callbacks=[*essential_callbacks(), *callbacks], plugins=list(plugins))
    if fused > 1:  # two Lightning steps of `fused` batches each per epoch
        fuse_batches(fused, trainer, model, datamodule)
    trainer.fit(model, datamodule)
    return model, trainer


@pytest.mark.parametrize("overrides,fused", [(["model=ae"], 1), (["model=vae"], 1),
                                             (["model=gan"], 1), (["model=vae"], 3)],
                         ids=["ae", "vae", "gan", "vae-fused"])
def test_every_family_stops_on_nan_and_keeps_its_last_good_checkpoint(overrides, fused,
                                                                      tmp_path):
    folder = tmp_path / "checkpoints"
    callbacks = [ModelCheckpoint(dirpath=folder, filename="last", enable_version_counter=False),
                 InterruptedCheckpoint(dirpath=folder, filename="interrupted"),
                 PoisonBatch(epoch=1)]
    with pytest.raises(TrainingDiverged) as error:
        fit(overrides, tmp_path, callbacks, fused=fused, log_every_n_steps=50)
    message = str(error.value)
    gan = overrides == ["model=gan"]
    step = "generator step" if gan else "step"
    what = "the discriminator loss or gradient" if gan else "the loss"
    assert message.startswith(f"Training diverged: {what}"), message
    steps = 2 * fused  # optimizer steps per epoch
    assert f"became NaN or infinite between {step} {steps} and {step} {2 * steps}" in message, \
        message
    assert f"the last good checkpoint is {folder / 'last.ckpt'}" in message, message
    # Lightning's interrupt handling ran cleanly (InterruptedCheckpoint did not try to save
    # the NaN weights, which the model would have refused with a second error).
    assert error.value.__context__ is None
    # The epoch-0 checkpoint is still there, finite; no NaN weights were saved anywhere.
    assert [p.name for p in folder.iterdir()] == ["last.ckpt"]
    saved = torch.load(folder / "last.ckpt", weights_only=False)
    assert saved["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def test_a_gan_diverging_before_any_checkpoint_says_so_and_saves_none(tmp_path):
    folder = tmp_path / "checkpoints"
    callbacks = [InterruptedCheckpoint(dirpath=folder, filename="interrupted"), PoisonBatch()]
    with pytest.raises(TrainingDiverged, match="discriminator loss or gradient and the gener"
                       ".* between generator step 0 and generator step 1; nothing from these "
                       "steps was saved and no checkpoint was saved before"):
        fit(["model=gan"], tmp_path, callbacks, log_every_n_steps=1)
    assert not folder.exists() or not any(folder.iterdir())
    # With neither logging steps nor checkpoints, the end of training checks.
    with pytest.raises(TrainingDiverged, match="between generator step 0 and generator step 6"):
        fit(["model=gan"], tmp_path, [PoisonBatch()], log_every_n_steps=0,
            enable_checkpointing=False)


def test_a_checkpoint_of_non_finite_weights_is_refused_though_losses_and_gradients_were_finite(
        tmp_path):
    """The weights are checked themselves: a NaN or infinite weight (here set after a
    finite run, no loss or gradient ever flagged) stops the checkpoint before it is
    written."""
    folder = tmp_path / "checkpoints"
    model, trainer = fit(["model=ae"], tmp_path, max_epochs=1, limit_train_batches=2,
                         log_every_n_steps=1, enable_checkpointing=False)
    trainer.save_checkpoint(folder / "good.ckpt")  # finite: saved
    weight = next(model.parameters())
    for bad in (float("nan"), float("inf")):
        with torch.no_grad():
            weight.view(-1)[0] = bad
        with pytest.raises(TrainingDiverged, match="Training diverged: the weights became "
                           "NaN or infinite between step 2 and step 2; nothing from these "
                           "steps was saved"):
            trainer.save_checkpoint(folder / "bad.ckpt")
        assert not (folder / "bad.ckpt").exists()
    assert [p.name for p in folder.iterdir()] == ["good.ckpt"]


def test_the_last_good_checkpoint_is_the_newest_saved_or_the_one_training_started_from(
        tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "epoch_009.ckpt").write_text("")
    started_from = tmp_path / "elsewhere.ckpt"
    started_from.write_text("")
    os.utime(tmp_path / "run" / "epoch_009.ckpt", (1e9, 1e9))
    trainer = SimpleNamespace(callbacks=[SimpleNamespace(dirpath=str(tmp_path / "run")),
                                         SimpleNamespace(dirpath=None)], ckpt_path=None)
    assert last_checkpoint(trainer) == tmp_path / "run" / "epoch_009.ckpt"
    trainer.ckpt_path = str(started_from)  # the newest file
    assert last_checkpoint(trainer) == started_from
    trainer.callbacks, trainer.ckpt_path = [], None
    assert last_checkpoint(trainer) is None


def test_a_diverging_run_exits_as_diverged_and_a_resume_keeps_the_good_checkpoint(tmp_path):
    """train() with lr=1e9 stops as `diverged` (train.py then prints the message and exits
    1); continuing a good run with kl_weight=1e38 leaves its last.ckpt byte for byte."""
    common = ["model=vae", *FAST, "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
              "test=false", "callbacks.image_grids=null", "logger=csv"]
    bad = compose_config([*common, "model.optimizer.lr=1e9", "trainer.max_epochs=2"],
                         tmp_path / "bad")
    with pytest.raises(TrainingDiverged, match="the last good checkpoint is|no checkpoint"):
        train(bad)
    assert json.loads((tmp_path / "bad" / "summary.json").read_text())["status"] == "diverged"
    assert not any((tmp_path / "bad" / "checkpoints").glob("*.ckpt"))

    good = compose_config([*common, "trainer.max_epochs=1"], tmp_path / "good")
    train(good)
    last = tmp_path / "good" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    resumed = compose_config([*common, "trainer.max_epochs=3", "model.kl_weight=1e38",
                              f"ckpt_path={last}"], tmp_path / "good")
    with pytest.raises(TrainingDiverged, match=f"the last good checkpoint is {last}"):
        train(resumed)
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
    assert json.loads((tmp_path / "good" / "summary.json").read_text())["status"] == "diverged"


def test_the_pretraining_classifier_stops_on_nan_and_reports_no_accuracy(make_config, caplog):
    """experiment=pretrain_classifier: a classifier whose lr (1e36) overflows its weights
    stops with the guard's message, naming which classifier and the lr to lower, instead
    of training on NaNs and reporting their accuracy (a chance-level 0.1) as a result.
    Found at the end of training: 2 epochs of 2 batches, no logging step among them."""
    cfg = make_config("experiment=pretrain_classifier", *FAST, "trainer.max_epochs=1",
                      "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                      "test=false", "logger=csv", "callbacks.image_grids=null",
                      "pretrain.num_labelled=64", "pretrain.classifier_epochs=2",
                      "pretrain.classifier.optimizer.lr=1e36")
    with caplog.at_level(logging.INFO, logger="genmodels.jobs.pretrain"), \
            pytest.raises(TrainingDiverged) as error:
        pretrain_classifier(cfg)
    message = str(error.value)
    assert re.fullmatch(r"Training diverged: the loss of the classifier with the pretrained "
                        r"encoder( and the weights)? became NaN or infinite between step 0 and "
                        r"step 4; nothing from these steps was saved and no checkpoint was "
                        r"saved before; try a lower pretrain\.classifier\.optimizer\.lr\.",
                        message), message
    # Neither accuracy was reported, on the console or in TensorBoard's comparison.
    assert "Test accuracy" not in caplog.text
    assert not (Path(cfg.paths.output_dir) / "comparison").exists()


def test_the_sweep_table_reads_the_status_a_run_wrote(tmp_path):
    for number, status in enumerate(["ok", "diverged"]):
        job = tmp_path / f"{number}_vae_digits"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(f"- seed={number}\n")
        # A run that stopped on a NaN can have finite final metrics (from earlier epochs).
        (job / "summary.json").write_text(json.dumps({"status": status,
                                                      "metrics": {"val/loss": 1.0}}))
    assert [row["status"] for row in collect_jobs(tmp_path)] == ["ok", "diverged"]


# ----- 16-mixed precision ------------------------------------------------------------------

def fp16_on_cpu(scale: float) -> MixedPrecision:
    """Lightning's 16-mixed precision (float16 autocast and a GradScaler), on the CPU."""
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=scale))


@pytest.mark.parametrize("penalty", ["gradient_penalty", "r1"])
def test_gradient_penalties_stay_finite_under_float16_at_every_loss_scale(penalty, tmp_path):
    cfg = compose_config(["model=wgan_gp", f"model.penalty={penalty}", *SMALL_DCGAN], tmp_path)
    gan = build(cfg.model)
    real = torch.rand(8, 1, 28, 28) * 2 - 1
    fake = torch.rand(8, 1, 28, 28) * 2 - 1

    def penalty_value():
        torch.manual_seed(0)  # the same interpolation points for every scale
        return gan.discriminator_losses(real, None, fake, None)["penalty"]

    expected = penalty_value()  # float32, no Trainer
    for exponent in range(0, 25, 4):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**exponent)
        gan._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler))
        with torch.autocast("cpu", dtype=torch.float16):
            value = penalty_value()
        assert torch.isfinite(value), (exponent, value)
        assert value.item() == pytest.approx(expected.item(), rel=0.02), exponent


class CountTakenSteps(L.Callback):
    """Per optimizer (D, G): the steps the GradScaler let through (optimizer.step ran) and
    whether the network's weights changed in the last of them; and the weights at the start."""

    def on_train_start(self, trainer, gan):
        self.taken = {"D": 0, "G": 0}
        self.start = {name: [p.detach().clone() for p in network.parameters()]
                      for name, network in (("D", gan.discriminator), ("G", gan.generator))}
        for name, optimizer in zip(("D", "G"), trainer.optimizers, strict=True):
            optimizer.register_step_post_hook(lambda *args, name=name: self.count(name))

    def count(self, name):
        self.taken[name] += 1


def test_16_mixed_skips_overflowing_steps_then_trains_on(tmp_path):
    """A GradScaler starting at 2^24 overflows float16 gradients: it skips steps, halving
    its scale, until they fit; then training goes on. WGAN-GP, the penalty included."""
    plugin = fp16_on_cpu(2.0**24)
    counter = CountTakenSteps()
    gan, trainer = fit(["model=wgan_gp", *SMALL_DCGAN], tmp_path, [counter], plugins=[plugin],
                       max_epochs=-1, max_steps=6, limit_train_batches=None,
                       log_every_n_steps=1, enable_checkpointing=False)
    scale = plugin.scaler.get_scale()
    assert scale < 2.0**24, "no step was skipped"
    assert gan.generator_steps == 6
    # 36 optimizer steps (6 x (5 D + 1 G)) were asked for; the scaler skipped some, each
    # halving its scale (its growth interval, 2000 steps, is far off): the steps it let
    # through and the halvings add up to the steps asked for.
    taken = counter.taken["D"] + counter.taken["G"]
    skipped = round(math.log2(2.0**24 / scale))
    assert trainer.global_step == 36 and 0 < skipped and taken + skipped == 36, counter.taken
    assert counter.taken["D"] > 0 and counter.taken["G"] > 0
    # Then both networks trained: their weights moved from the start.
    for name, network in (("D", gan.discriminator), ("G", gan.generator)):
        assert any(not torch.equal(p, p0) for p, p0 in zip(network.parameters(),
                                                           counter.start[name], strict=True)), name
    # The last steps were taken: their (unscaled) gradients were finite, which is when the
    # GradScaler steps; and the penalty is finite.
    metrics = trainer.callback_metrics
    assert all(math.isfinite(metrics[f"train/{name}_step"])
               for name in ("d_loss", "penalty", "g_loss", "d_grad_norm", "g_grad_norm"))
    # The epoch's means leave the skipped steps' infinite gradient norms out.
    assert all(math.isfinite(metrics[f"train/{name}_grad_norm_epoch"]) for name in "dg")


class RecordGradientNorms(L.Callback):
    """For each batch: the norm of D's and G's gradients as their optimizers step on them
    (Lightning's 16-mixed unscales them before the step), and the step's logged norms."""

    def on_train_start(self, trainer, gan):
        self.measured, self.logged = [], []
        for name, optimizer in zip(("d", "g"), trainer.optimizers, strict=True):
            optimizer.register_step_pre_hook(
                lambda optimizer, *args, name=name: self.measure(name, optimizer))

    def on_train_batch_start(self, *args):
        self.measured.append({})

    def measure(self, name, optimizer):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        self.measured[-1][f"{name}_grad_norm"] = torch.nn.utils.get_total_norm(grads).item()

    def on_train_batch_end(self, trainer, gan, outputs, batch, batch_idx):
        self.logged.append({name: outputs["log"][name].item()
                            for name in ("d_grad_norm", "g_grad_norm")})


def test_16_mixed_logs_the_unscaled_gradient_norms(tmp_path):
    """Under a GradScaler of scale 2^8 the backward pass makes gradients 256 times too
    large; the logged norms are those of the unscaled gradients the optimizers step on."""
    plugin = fp16_on_cpu(2.0**8)
    recorder = RecordGradientNorms()
    fit(["model=dcgan", *SMALL_DCGAN], tmp_path, [recorder], plugins=[plugin], max_epochs=1,
        limit_train_batches=3, log_every_n_steps=1, enable_checkpointing=False)
    assert plugin.scaler.get_scale() == 2.0**8  # no step skipped: every step measured
    assert len(recorder.measured) == len(recorder.logged) == 3
    for measured, logged in zip(recorder.measured, recorder.logged, strict=True):
        assert set(measured) == set(logged)
        for name, value in logged.items():
            assert value == pytest.approx(measured[name], rel=1e-4), (name, logged, measured)


def test_16_mixed_stops_only_when_the_loss_scale_collapses(tmp_path):
    """NaN real images make every D step non-finite: the GradScaler skips each (no error at
    the first), and training stops once its scale falls below the floor, 2^-14."""
    with pytest.raises(TrainingDiverged, match=r"the 16-mixed loss scale fell to 3.05e-05"):
        fit(["model=dcgan", *SMALL_DCGAN], tmp_path, [PoisonBatch()], plugins=[fp16_on_cpu(2**-10)],
            max_epochs=-1, max_steps=20, limit_train_batches=None, log_every_n_steps=1,
            enable_checkpointing=False)


# ----- no host-device sync on ordinary steps -----------------------------------------------

HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__")
WATCHED = (str(Path(__file__).parents[1] / "genmodels"), str(Path(L.__file__).parent))


class CountHostReads(L.Callback):
    """Counts, within training batches, the calls made by genmodels or Lightning that read a
    tensor back to the host (on a GPU, each waits for all queued work) or make a tensor of
    host data (to copy to a GPU, which waits too). Not torch's own: its optimizers keep their
    step counts on the host, and the GradScaler reads whether it found inf gradients."""

    def __init__(self, monkeypatch):
        self.calls, self.counting = [], False
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self.wrap(getattr(torch.Tensor, name), name))
        monkeypatch.setattr(torch, "tensor", self.wrap(torch.tensor, "torch.tensor"))
        get_scale = torch.amp.GradScaler.get_scale  # reads the scale back from the device
        monkeypatch.setattr(torch.amp.GradScaler, "get_scale", self.wrap(get_scale, "get_scale"))

    def wrap(self, function, name):
        def counted(*args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if self.counting and caller.startswith(WATCHED):
                self.calls.append((name, caller))
            return function(*args, **kwargs)
        return counted

    def on_train_batch_start(self, *args):
        self.counting = True

    def on_train_batch_end(self, *args):
        self.counting = False


@pytest.mark.parametrize("overrides", [
    ["model=vae"],
    ["model=dcgan", *SMALL_DCGAN, "model.penalty=r1", "model.ema_decay=0.9",
     "model.replay_capacity=32", "model.spectral_norm=true"],
    ["model=progan", "model.generator.max_width=16", "model.generator.min_width=8",
     "model.latent_dim=16", "model.growth.fade_images=64", "model.growth.stable_images=16"],
    ["model=wgan_gp", *SMALL_DCGAN, "16-mixed"],
], ids=["vae", "dcgan_r1_ema_replay", "progan_fading", "wgan_gp_16_mixed"])
def test_training_steps_read_nothing_back_from_the_device(overrides, tmp_path, monkeypatch):
    """Steps that are not logging steps (log_every_n_steps=1000 here) never wait for the
    GPU: divergence is recorded on the device and read on logging steps only."""
    counter = CountHostReads(monkeypatch)
    plugins = [fp16_on_cpu(2.0**16)] if "16-mixed" in overrides else []
    overrides = [o for o in overrides if o != "16-mixed"]
    fit(overrides, tmp_path, [counter], plugins=plugins, max_epochs=1, limit_train_batches=4,
        log_every_n_steps=1000, enable_checkpointing=False)
    assert sorted(set(counter.calls)) == []


def test_16_mixed_logs_the_loss_scale_on_logging_steps(tmp_path):
    """fp16 autocast with a GradScaler on the CPU: an autoencoder-family model trains
    through skipped steps (the scale halves) and logs the scale, so skips can be read."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    cfg = compose_config(["model=vae", "dataset.image_size=8"], tmp_path / "run")
    model, datamodule = build(cfg.model), build(cfg.dataset)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=CSVLogger(tmp_path),
                        log_every_n_steps=1, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=essential_callbacks(),
                        plugins=[MixedPrecision("16-mixed", "cpu",
                                                scaler=torch.amp.GradScaler("cpu"))])
    trainer.fit(model, datamodule=datamodule)
    rows = list(csv.DictReader(open(next(tmp_path.glob("**/metrics.csv")))))
    scales = [float(r["train/loss_scale"]) for r in rows if r.get("train/loss_scale")]
    assert len(scales) == 4 and scales[0] == 2.0**16
    assert all(math.log2(s).is_integer() and s <= 2.0**16 for s in scales), scales
