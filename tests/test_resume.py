"""Resuming: a resumed run ends with the uninterrupted run's weights (after its last epoch,
SIGTERM or Ctrl-C); overrides at resume; damaged or mismatched checkpoints named."""

import json
import os
import re
import signal
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from genmodels.errors import GenmodelsError
from genmodels.jobs.train import train

from .conftest import FAST, SMALL_DCGAN, SMALL_DDPM, TINY, compose_config, run_main, run_train


def weights(run_dir: Path, name: str = "last.ckpt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / name, weights_only=False)["state_dict"]


def weights_step(run_dir: Path) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]


@pytest.mark.parametrize("model, extra", [("vae", []), ("dcgan", SMALL_DCGAN),
                                          ("ddpm", SMALL_DDPM)])
def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(model, extra, tmp_path):
    # Image grids stay on: their fixed noise must not disturb the training noise.
    args = [f"model={model}", *extra, *TINY, "logger=csv", "trainer.limit_train_batches=3"]
    train(compose_config([*args, "trainer.max_epochs=2"], tmp_path / "straight"))
    train(compose_config([*args, "trainer.max_epochs=1"], tmp_path / "resumed"))
    train(compose_config([f"resume={tmp_path / 'resumed'}", "trainer.max_epochs=2"],
                         tmp_path / "resumed"))
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # The same directory and logs were continued.
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["global_step"] == weights_step(tmp_path / "straight")
    # Lightning's CSV logger starts its metrics.csv over; the rows of epoch 0 are kept.
    rows = {name: (tmp_path / name / "csv" / "metrics.csv").read_text().splitlines()
            for name in ("straight", "resumed")}
    assert rows["resumed"] == rows["straight"]


class InterruptAt(L.Callback):
    """Sends SIGTERM to this process after the `after_batches`-th training batch (counted
    over all epochs): Lightning stops at that batch boundary and saves interrupted.ckpt."""

    def __init__(self, after_batches: int):
        self.after_batches = after_batches

    def on_train_batch_end(self, trainer, *args, **kwargs):
        # Lightning's batch count, restored on resume: the resumed run is not stopped again.
        if trainer.fit_loop.epoch_loop.batch_progress.total.processed == self.after_batches:
            os.kill(os.getpid(), signal.SIGTERM)


# Two epochs of three batches; interrupted after batches 1, 2 (inside epoch 0) and 5
# (inside epoch 1), the run resumed from interrupted.ckpt must end with the weights of the
# uninterrupted run, bit for bit: data order, position in the epoch and all random draws
# (reparameterization noise, GAN latents, dropout, binarization) continue exactly, and so
# does the GAN's experience replay (its buffer of past fakes is saved in checkpoints).
@pytest.mark.parametrize("model, extra", [
    ("vae", ["dataset.binarize=dynamic"]),
    ("dcgan", [*SMALL_DCGAN, "model.replay_capacity=24"]),
    ("ddpm", SMALL_DDPM),  # t, noise, dropout, and the EMA with its warm-up
])
def test_a_run_resumed_after_sigterm_mid_epoch_ends_with_the_uninterrupted_weights(
        model, extra, tmp_path):
    args = [f"model={model}", *extra, *TINY, "logger=csv", "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1", "dataset.batch_size=16", "trainer.max_epochs=2"]
    train(compose_config(args, tmp_path / "straight"))
    straight = weights(tmp_path / "straight")
    for after_batches in (1, 2, 5):
        run_dir = tmp_path / f"interrupted_after_{after_batches}"
        cfg = compose_config(args, run_dir)
        with open_dict(cfg):
            cfg.callbacks.killer = {"_target_": f"{__name__}.InterruptAt",
                                    "after_batches": after_batches}
        with pytest.raises(BaseException):  # noqa: B017  SIGTERM stops the run (exit code: runs.py)
            train(cfg)
        assert not (run_dir / "checkpoints" / "last.ckpt").exists() or after_batches > 3
        train(compose_config([f"resume={run_dir}"], run_dir))
        resumed = weights(run_dir)
        assert straight.keys() == resumed.keys()
        differing = [k for k in straight if not torch.equal(straight[k], resumed[k])]
        assert not differing, f"resumed after batch {after_batches}: {differing[:3]} differ"


class SendSignal(L.Callback):
    """Sends a signal to this process after `after_batches` training batches."""

    def __init__(self, signal_number: int, after_batches: int):
        self.signal_number, self.after_batches = signal_number, after_batches

    def on_train_batch_end(self, trainer, *args, **kwargs):
        if trainer.global_step == self.after_batches:
            os.kill(os.getpid(), self.signal_number)


def test_ctrl_c_leaves_a_checkpoint_to_resume_from_and_exits_130(tmp_path):
    # SIGTERM, in a real process: test_run_records.py
    run_dir = tmp_path / "run"
    killer = {"_target_": f"{__name__}.SendSignal", "signal_number": int(signal.SIGINT),
              "after_batches": 3}
    cfg = compose_config(["model=ae", *TINY, "trainer.max_epochs=2"], run_dir)
    with open_dict(cfg):
        cfg.callbacks.killer = killer
    try:
        with pytest.raises(SystemExit) as stop:
            train(cfg)
    finally:  # Lightning ignores further Ctrl-C while shutting down; give it back
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert stop.value.code == 130  # 128 + SIGINT, as a shell reports Ctrl-C
    checkpoint = torch.load(run_dir / "checkpoints" / "interrupted.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()  # killed inside epoch 0
    metrics = train(compose_config([f"resume={run_dir}"], run_dir))
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2
    assert metrics["val/loss"] > 0


def test_corrupt_or_mismatched_checkpoints_are_named_and_the_run_is_kept(tmp_path):
    run_dir = tmp_path / "run"
    train(compose_config(["model=vae", *TINY, "trainer.max_epochs=1"], run_dir))
    files_before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    last = run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(GenmodelsError, match="does not match the configured model"):
        train(compose_config(["model=ae", *TINY, f"ckpt_path={last}"], tmp_path / "other"))
    last.write_bytes(last.read_bytes()[:1000])  # a checkpoint cut short
    with pytest.raises(GenmodelsError, match=f"Checkpoint {last} is damaged"):
        train(compose_config([f"resume={run_dir}", "trainer.max_epochs=2"], run_dir))
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == files_before
    assert len(last.read_bytes()) == 1000
    with pytest.raises(GenmodelsError, match="is not a run directory"):
        train(compose_config([f"resume={tmp_path / 'nowhere'}"], tmp_path / "x"))
    with pytest.raises(GenmodelsError, match="model=dcgan cannot change it"):
        train(compose_config([f"resume={run_dir}", "model=dcgan"], run_dir))


def test_sigterm_exits_143_after_saving_and_says_how_to_resume(tmp_path):
    killer = "tests.test_resume.SendSignal"
    result = run_train("model=ae", *FAST, "trainer.max_epochs=50", "trainer.limit_val_batches=1",
                       "test=false", "callbacks.image_grids=null", "logger=csv",
                       f"+callbacks.killer._target_={killer}",
                       f"+callbacks.killer.signal_number={int(signal.SIGTERM)}",
                       "+callbacks.killer.after_batches=3", cwd=tmp_path)
    assert result.returncode == 143, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "runs").iterdir()
    assert (run_dir / "checkpoints" / "interrupted.ckpt").is_file()
    output = result.stdout + result.stderr
    assert f"python train.py resume={run_dir.absolute()}" in output
    assert "Traceback" not in output


def test_resume_applies_learning_rates_and_the_runs_own_keys_and_refuses_the_rest(tmp_path):
    from genmodels.engine.rundirs import with_run_choices
    from genmodels.jobs.train import train

    run_dir = tmp_path / "dcgan_run"
    tiny = ["model=dcgan", *FAST, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "test=false", "callbacks.image_grids=null", "logger=csv"]
    train(compose_config([*tiny, "trainer.max_epochs=1"], run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    first_step = torch.load(last, weights_only=False)["global_step"]

    def resume(*overrides: str):
        # As train.py composes it: the run's groups (model=dcgan, ...) added.
        return train(compose_config(with_run_choices([f"resume={run_dir}", *overrides]),
                                    run_dir))

    for refused, reason in [("seed=3", "seed=3 cannot apply when resuming: the run continues"),
                            ("model=gan", "model=gan cannot change it (the run has "
                                            "model=dcgan)"),
                            ("model.d_optimizer._target_=torch.optim.SGD", "start a new run "
                                                                           "to change optimizer")]:
        with pytest.raises(GenmodelsError, match=re.escape(reason)):
            resume(refused)
    # The GAN's own key, without `+`, and one network's learning rate, through train.py.
    run_main(f"resume={run_dir}", "model.label_smoothing=0.1", "model.d_optimizer.lr=1e-4",
             "trainer.max_epochs=2")
    checkpoint = torch.load(last, weights_only=False)
    d_state, g_state = checkpoint["optimizer_states"]  # the GAN's optimizer_nodes order
    assert d_state["param_groups"][0]["lr"] == 1e-4
    assert g_state["param_groups"][0]["lr"] == 1e-3  # the configured rate, kept
    assert checkpoint["global_step"] == 2 * first_step  # it went on: a second epoch
    assert checkpoint["genmodels_config"]["model"]["label_smoothing"] == 0.1


def test_resume_keeps_fused_and_unfused_training_apart(tmp_path):
    from genmodels.engine.rundirs import with_run_choices
    from genmodels.jobs.train import train

    run_dir = tmp_path / "run"
    tiny = ["model=vae", *FAST, "test=false", "logger=csv", "trainer.limit_val_batches=1",
            "dataset.batch_size=64"]
    train(compose_config([*tiny, "trainer.max_steps=10", "speed.fused_batches=4"], run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"

    def resume(*overrides: str):
        return train(compose_config(with_run_choices([f"resume={run_dir}", *overrides]),
                                    run_dir))

    # Lightning would restart the step count at 0 (and train 20 more steps).
    with pytest.raises(GenmodelsError, match=r"was trained with speed.fused_batches=4, .* "
                                             r"continue it with any speed.fused_batches above 1"):
        resume("speed.fused_batches=1", "trainer.max_steps=20")
    resume("speed.fused_batches=3", "trainer.max_steps=20")
    assert torch.load(last, weights_only=False)["global_step"] == 20


def test_generate_and_evaluate_take_the_newest_checkpoint_interrupted_included(tmp_path):
    from genmodels.engine.runs import find_checkpoint

    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for age, name in [(30, "epoch_010.ckpt"), (20, "last.ckpt"), (10, "interrupted.ckpt")]:
        torch.save({}, checkpoints / name)
        os.utime(checkpoints / name, (time.time() - age, time.time() - age))
    assert find_checkpoint(tmp_path / "run") == checkpoints / "interrupted.ckpt"
    os.utime(checkpoints / "last.ckpt")  # the resumed run saved again since
    assert find_checkpoint(tmp_path / "run") == checkpoints / "last.ckpt"


def test_a_resume_reads_its_checkpoint_once_for_its_checksum_and_once_to_load(tmp_path,
                                                                               monkeypatch):
    import genmodels.files

    args = ["model=vae", *TINY, "logger=csv", "callbacks.image_grids=null"]
    train(compose_config([*args, "trainer.max_epochs=1"], tmp_path))
    last = (tmp_path / "checkpoints" / "last.ckpt").resolve()
    checksums, loads = [], []
    sha256_of, load = genmodels.files.sha256_of, torch.load
    monkeypatch.setattr(genmodels.files, "sha256_of",
                        lambda path: checksums.append(Path(path).resolve()) or sha256_of(path))

    def counted_load(f, *a, **kw):
        # a path, or the open file Lightning passes
        name = f if isinstance(f, str | os.PathLike) else getattr(f, "path", None)
        if not kw.get("mmap") and name and Path(name).resolve() == last:  # mmap: no weights
            loads.append(f)
        return load(f, *a, **kw)

    monkeypatch.setattr(torch, "load", counted_load)
    train(compose_config([f"resume={tmp_path}", "trainer.max_epochs=2"], tmp_path))
    monkeypatch.undo()
    # Picked, checked before training and loaded by Lightning: one full read each way.
    assert checksums.count(last) == 1 and len(loads) == 1
    assert weights_step(tmp_path) > 0 and json.loads(
        (tmp_path / "summary.json").read_text())["epochs"] == 2


def test_a_run_with_a_list_of_callback_groups_resumes_with_overrides_of_their_keys(tmp_path):
    run_dir = tmp_path / "run"
    run_main("model=ae", *TINY, "trainer.max_epochs=1", "logger=csv",
             "callbacks=[default,early_stopping]", f"hydra.run.dir={run_dir}")
    # Hydra records a list as no choice: the resume must still compose early_stopping.
    run_main(f"resume={run_dir}", "callbacks.early_stopping.patience=7", "trainer.max_epochs=2")
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["genmodels_config"]["callbacks"]["early_stopping"]["patience"] == 7
    assert checkpoint["epoch"] == 1  # the second epoch, counted from 0
    with pytest.raises(SystemExit, match=re.escape(
            "(the run has callbacks=[default,early_stopping])")):
        run_main(f"resume={run_dir}", "callbacks=default", "trainer.max_epochs=3")
