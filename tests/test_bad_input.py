"""Bad input gets one sentence naming the bad value, never a traceback (issue 10)."""

import gzip

import numpy as np
import pytest
import torch

from genmodels.data import IdxDataModule
from genmodels.errors import GenmodelsError
from genmodels.jobs.train import train

from .conftest import FAST
from .test_data import idx_bytes, write_idx

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
    zipped.write_bytes(gzip.compress(idx_bytes(np.zeros((20, 28, 28))))[:40])
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
