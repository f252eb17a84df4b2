"""The best checkpoint and early stopping (callbacks=best, callbacks=early_stopping): kept
by the model's validation metric, surviving a resume that never goes back to best.ckpt,
and a misspelt metric named in one sentence before training."""

import csv
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from genmodels.callbacks import EarlyStopping, SampleQuality
from genmodels.engine.runs import find_checkpoint, latest_checkpoint
from genmodels.errors import GenmodelsError
from genmodels.jobs.train import train

from .conftest import SMALL_DCGAN, TINY, compose_config, run_main

# Stops when val/loss has not fallen by more than 100 for one validation: a VAE's first
# epochs gain more than that, the next ones less.
EARLY = ["callbacks=early_stopping", "callbacks.early_stopping.patience=1",
         "callbacks.early_stopping.min_delta=100", "trainer.max_epochs=10", "logger=csv"]


def checkpoint(run_dir: Path, name: str) -> dict:
    return torch.load(run_dir / "checkpoints" / name, weights_only=False)


def state(ckpt: dict, kind: str) -> dict:
    return next(v for k, v in ckpt["callbacks"].items() if k.startswith(kind))


def logged(run_dir: Path, name: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv") as file:
        return [float(row[name]) for row in csv.DictReader(file) if row.get(name)]


def test_default_callbacks_keep_no_best_checkpoint_and_never_stop_early(tmp_path):
    cfg = compose_config([], tmp_path)
    assert not {"best_checkpoint", "early_stopping"} & set(cfg.callbacks)
    cfg = compose_config(["callbacks=early_stopping"], tmp_path)
    assert {"last_checkpoint", "best_checkpoint", "early_stopping"} <= set(cfg.callbacks)


def test_early_stopping_keeps_the_best_epoch_and_continues_its_count_on_resume(tmp_path):
    run_dir = tmp_path / "run"
    train(compose_config(["model=vae", *TINY, *EARLY], run_dir))
    losses = logged(run_dir, "val/loss")
    # Epoch 1 gains over 100, epoch 2 not: stopped after 3 of 10 epochs.
    assert len(losses) == 3 and losses[1] < losses[0] - 100 > losses[2] - 100
    last, best = checkpoint(run_dir, "last.ckpt"), checkpoint(run_dir, "best.ckpt")
    assert last["epoch"] == 2 and state(last, "EarlyStopping")["wait_count"] == 1
    # best.ckpt: the lowest val/loss, and last.ckpt knows it (saved after best.ckpt).
    assert state(best, "BestCheckpoint")["best_model_score"] == pytest.approx(min(losses))
    assert state(last, "BestCheckpoint")["best_model_score"] == pytest.approx(min(losses))

    # best.ckpt written after last.ckpt (as a mid-epoch validation would) is still not the
    # run's newest: resume and generate/evaluate take last.ckpt.
    later = time.time() + 60
    os.utime(run_dir / "checkpoints" / "best.ckpt", (later, later))
    assert latest_checkpoint(run_dir).name == find_checkpoint(run_dir).name == "last.ckpt"
    assert find_checkpoint(run_dir / "checkpoints" / "best.ckpt").name == "best.ckpt"

    # The count goes on from last.ckpt's (one validation without gain), up to the larger
    # patience given when resuming (Lightning would restore patience=1 and stop at once).
    train(compose_config([f"resume={run_dir}", "callbacks=early_stopping",
                          "callbacks.early_stopping.patience=3", "trainer.max_epochs=10"],
                         run_dir))
    last = checkpoint(run_dir, "last.ckpt")
    assert last["epoch"] == 4 and len(logged(run_dir, "val/loss")) == 5
    assert state(last, "EarlyStopping")["wait_count"] == 3
    assert state(last, "EarlyStopping")["patience"] == 3


def test_a_gans_best_checkpoint_follows_its_discriminators_validation_loss_up(tmp_path):
    run_dir = tmp_path / "run"
    train(compose_config(["model=dcgan", *SMALL_DCGAN, *TINY, "callbacks=best",
                          "trainer.max_epochs=3", "logger=csv"], run_dir))
    best = state(checkpoint(run_dir, "best.ckpt"), "BestCheckpoint")
    assert best["monitor"] == "val/d_loss"
    assert best["best_model_score"] == pytest.approx(max(logged(run_dir, "val/d_loss")))


def test_a_misspelt_monitor_is_named_with_the_valid_choices_before_training(tmp_path,
                                                                           capsys):
    with pytest.raises(SystemExit) as stop:
        run_main("model=ae", *TINY, "callbacks=early_stopping",
                 "callbacks.best_checkpoint.monitor=val/los",
                 f"hydra.run.dir={tmp_path / 'run'}")
    assert str(stop.value) == (
        "Error: callbacks.best_checkpoint.monitor='val/los' is not a validation metric this "
        "model logs; valid choices: val/loss (or a sample-quality metric, with "
        "callbacks=[quality,...]).")
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused on the sanity pass: nothing kept
    cfg = compose_config(["model=ae", *TINY, "callbacks=best",
                          "callbacks.best_checkpoint.mode=lowest"], tmp_path / "mode")
    with pytest.raises(GenmodelsError, match=r"^callbacks.best_checkpoint.mode='lowest': "
                                             "choose min"):
        train(cfg)


def test_a_sample_quality_metric_counts_on_the_epochs_it_is_measured_only(tmp_path):
    quality = SampleQuality(every_n_epochs=5, num_samples=10, cache_dir=str(tmp_path),
                            classifier_epochs=1, seed=0)
    stopping = EarlyStopping(monitor="val/fd_classifier", mode="min", patience=1)
    stopping.resolve_monitor(None)
    trainer = SimpleNamespace(callbacks=[quality, stopping], current_epoch=0,
                              callback_metrics={"val/loss": torch.tensor(1.0)})
    stopping.on_sanity_check_end(trainer, None)  # not logged yet: the callback's
    assert not stopping.measured(trainer)
    trainer.current_epoch = 4
    trainer.callback_metrics["val/fd_classifier"] = torch.tensor(3.0)
    assert stopping.measured(trainer)
    trainer.current_epoch = 5  # Lightning still holds epoch 5's value: not counted again
    assert not stopping.measured(trainer)
    misspelt = EarlyStopping(monitor="val/fd_clasifier", mode="min")
    misspelt.resolve_monitor(None)
    misspelt.on_sanity_check_end(trainer, None)
    trainer.current_epoch = 9
    with pytest.raises(GenmodelsError, match="'val/fd_clasifier' is not a validation metric "
                                             "this model logs; valid choices: "
                                             "val/fd_classifier, val/loss.$"):
        misspelt.measured(trainer)
