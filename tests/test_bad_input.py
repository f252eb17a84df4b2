"""Bad input gets one sentence naming the bad value, never a traceback (issue 10)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from genmodels.config import check_override_types
from genmodels.data import IdxDataModule, write_idx
from genmodels.errors import GenmodelsError
from genmodels.jobs.train import train

from .conftest import CONF, FAST, run_main

TINY = [*FAST, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "test=false"]


@pytest.mark.parametrize("model, override", [
    ("ae", "model.optimizer.lr=nan"),
    ("ae", "model.optimizer.lr=-1"),
    ("dcgan", "model.g_optimizer.lr=inf"),
])
def test_a_learning_rate_that_is_not_a_finite_number_is_refused(model, override, make_config):
    key, value = override.split("=")
    with pytest.raises(GenmodelsError, match=rf"^{key}={value} is not a learning rate"):
        train(make_config(f"model={model}", *TINY, override))


def test_truncated_or_swapped_idx_files_are_named(tmp_path):
    images, labels = tmp_path / "images-idx3-ubyte", tmp_path / "labels-idx1-ubyte"
    write_idx(images, np.zeros((20, 28, 28)))
    write_idx(labels, np.arange(20) % 10)

    def load(images, labels):
        IdxDataModule(images=images, labels=labels, val_fraction=0, test_fraction=0).setup()

    load(images, labels)  # the files themselves are fine
    with pytest.raises(GenmodelsError, match=r"dataset.images=.*labels-idx1-ubyte holds data "
                                             r"of shape \(20,\), .*labels file"):
        load(labels, images)  # swapped: the labels' check is never reached
    with pytest.raises(GenmodelsError, match=r"dataset.labels=.*images-idx3-ubyte holds data "
                                             r"of shape \(20, 28, 28\), .*images file"):
        load(images, images)
    cut = tmp_path / "cut-idx3-ubyte"
    cut.write_bytes(images.read_bytes()[:5000])  # a download cut short
    with pytest.raises(GenmodelsError, match=r"cut-idx3-ubyte is truncated or damaged: its "
                                             r"header announces 15,680 values .* 4,984 bytes"):
        load(cut, labels)
    cut.write_bytes(images.read_bytes()[:6])  # not even a whole header
    with pytest.raises(GenmodelsError, match="cut-idx3-ubyte is truncated or damaged"):
        load(cut, labels)
    zipped = tmp_path / "cut-idx3-ubyte.gz"
    write_idx(zipped, np.zeros((20, 28, 28)))  # gzipped
    zipped.write_bytes(zipped.read_bytes()[:40])
    with pytest.raises(GenmodelsError, match="Cannot read IDX file .*cut-idx3-ubyte.gz"):
        load(zipped, labels)


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_a_gpu_trainer_without_a_gpu_names_the_cpu_trainers(trainer, make_config, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(GenmodelsError, match="trainer.accelerator=gpu needs a CUDA GPU and "
                                             "this machine has none: use trainer=cpu, or "
                                             "trainer=ddp_cpu"):
        train(make_config("model=ae", f"trainer={trainer}", "trainer.max_epochs=1"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(GenmodelsError, match="trainer.devices=2 asks for more GPUs than the 1"):
        train(make_config("model=ae", "trainer=ddp", "trainer.max_epochs=1"))


def test_a_dense_model_on_huge_images_is_refused_before_allocating(make_config, monkeypatch):
    def no_allocation(*args, **kwargs):
        raise AssertionError("a dense layer was allocated")

    monkeypatch.setattr(torch.nn.Linear, "__init__", no_allocation)
    with pytest.raises(GenmodelsError, match=r"Dense layers 1000000 -> 150 -> 100 would have "
                                             r"150,015,250 parameters \(0.6 GB"):
        train(make_config("model=vae", *TINY, "dataset.image_size=1000"))


@pytest.mark.parametrize("override, message", [
    ("trainer.max_epochs=ten", "trainer.max_epochs takes an integer (default 30), got 'ten'"),
    ("dataset.batch_size=1.5", "dataset.batch_size takes an integer (default 32), got 1.5"),
    ("model.kl_weight=heavy", "model.kl_weight takes a number (default 1.0), got 'heavy'"),
    ("test=maybe", "test takes true or false (default True), got 'maybe'"),
    ("model.encoder.hidden_sizes=7", "takes a list such as [1, 2] (default [150, 100]), got 7"),
])
def test_overrides_of_the_wrong_type_name_the_key_and_what_it_takes(override, message):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=vae", override], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with pytest.raises(GenmodelsError, match=f"^{override} has the wrong type: "):
            check_override_types()
        with pytest.raises(GenmodelsError) as error:
            check_override_types()
        assert message in str(error.value)


def test_a_missing_optimized_metric_lists_the_logged_ones_before_training(make_config):
    cfg = make_config("model=ae", *TINY, "trainer.max_epochs=1", "optimized_metric=val/los")
    with pytest.raises(GenmodelsError, match="optimized_metric='val/los' is not logged by this "
                                             "model; valid choices: .*val/loss"):
        train(cfg)
    # Refused on the first validation pass: no training step, no checkpoint.
    assert not list(Path(cfg.paths.output_dir).glob("checkpoints/*.ckpt"))
    cfg = make_config("model=ae", *TINY, "optimized_metric=test/loss", run_name="test_loss")
    with pytest.raises(GenmodelsError, match="test/ metrics need test=true"):
        train(cfg)


def test_an_optimized_metric_measured_after_the_run_ends_is_refused_before_training(
        tmp_path, capsys):
    # `callbacks=quality optimized_metric=val/fd_classifier trainer.max_epochs=1`: the
    # callback measures every 5 epochs. Refused on the first validation pass, in a single
    # run and in each job of a sweep, instead of training and then finding no metric.
    quality = ["callbacks=quality", "optimized_metric=val/fd_classifier",
               "trainer.max_epochs=1", *TINY, "callbacks.image_grids=null"]
    sentence = ("optimized_metric='val/fd_classifier' is logged by callbacks.sample_quality "
                "every 5 epochs, first at epoch 5, but this run ends at epoch 1 "
                "(trainer.max_epochs=1): set trainer.max_epochs=5 or more, or "
                "callbacks.sample_quality.every_n_epochs=1.")
    with pytest.raises(SystemExit) as refusal:
        run_main(*quality, f"paths.root_dir={tmp_path}")
    assert refusal.value.code == f"Error: {sentence}"
    assert not (tmp_path / "logs" / "runs").exists() or not any(
        (tmp_path / "logs" / "runs").iterdir())  # no step taken: no run directory left
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit, match="^Error: 1 of 1 jobs failed"):
        run_main("-m", *quality, f"hydra.sweep.dir={sweep}")
    assert "Traceback" not in capsys.readouterr().err
    summary = json.loads((sweep / "0_vae_digits" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == sentence
    assert not list(sweep.glob("*/checkpoints/*.ckpt"))


@pytest.mark.parametrize("every, validate, start, last, message", [
    (2, 3, 0, 5, "every 2 epochs on the epochs it validates (trainer.check_val_every_n_epoch"
                 "=3), first at epoch 6, but this run ends at epoch 5 (trainer.max_epochs=5):"
                 " set trainer.max_epochs=6 or more, or callbacks.sample_quality.every_n_"
                 "epochs=1."),
    (5, 8, 0, 7, "first at epoch 40, but this run ends at epoch 7 (trainer.max_epochs=7): set"
                 " trainer.max_epochs=40 or more, or trainer.check_val_every_n_epoch=1."),
    (5, 8, 0, 3, "or callbacks.sample_quality.every_n_epochs=1 and trainer.check_val_every_n_"
                 "epoch=1."),
    (5, 1, 5, 9, "every 5 epochs, first at epoch 10, but this run trains epochs 6 to 9 (it "
                 "resumes after epoch 5; trainer.max_epochs=9): set trainer.max_epochs=10 or "
                 "more, or callbacks.sample_quality.every_n_epochs=1."),
    (5, 1, 0, 5, None), (2, 3, 0, 6, None), (5, None, 0, 1, None), (5, 1, 0, -1, None),
])
def test_the_measured_epochs_of_a_sample_quality_metric_against_the_run(
        every, validate, start, last, message):
    from types import SimpleNamespace

    from genmodels.callbacks import SampleQuality
    from genmodels.callbacks.optimized_metric import OptimizedMetricCheck

    trainer = SimpleNamespace(callback_metrics={"val/loss": 1.0}, current_epoch=start,
                              callbacks=[SampleQuality(every_n_epochs=every)],
                              check_val_every_n_epoch=validate, max_epochs=last)
    check = OptimizedMetricCheck("val/precision", test=False)
    check.on_sanity_check_end(trainer, None)  # not the model's: the callback's
    if message is None:
        check.on_train_start(trainer, None)
        return
    with pytest.raises(GenmodelsError) as refusal:
        check.on_train_start(trainer, None)
    assert str(refusal.value).startswith("optimized_metric='val/precision' is logged by "
                                         "callbacks.sample_quality every ")
    assert str(refusal.value).endswith(message)
