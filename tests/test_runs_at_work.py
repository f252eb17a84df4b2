"""Sweeps, resuming, interruptions and bad input: the framework at work (issue 7)."""

import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from genmodels.config import check_override_types
from genmodels.errors import GenmodelsError
from genmodels.jobs.train import train

from .conftest import CONF, FAST, SMALL_DCGAN, compose_config, import_benchmark, run_train

TINY = [*FAST, "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "test=false"]


def weights(run_dir: Path, name: str = "last.ckpt") -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / name, weights_only=False)["state_dict"]


def weights_step(run_dir: Path) -> int:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]


@pytest.mark.parametrize("model, extra", [("vae", []), ("dcgan", SMALL_DCGAN)])
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
    with pytest.raises(GenmodelsError, match=f"Cannot read checkpoint {last}"):
        train(compose_config([f"resume={run_dir}", "trainer.max_epochs=2"], run_dir))
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == files_before
    assert len(last.read_bytes()) == 1000
    with pytest.raises(GenmodelsError, match="is not a run directory"):
        train(compose_config([f"resume={tmp_path / 'nowhere'}"], tmp_path / "x"))
    with pytest.raises(GenmodelsError, match="model=dcgan cannot change it"):
        train(compose_config([f"resume={run_dir}", "model=dcgan"], run_dir))


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


def test_slurm_launcher_and_every_search_and_preset_compose(tmp_path):
    cfg = compose_config(["hydra/launcher=slurm", "hparams_search=dcgan_optuna"], tmp_path)
    launcher = HydraConfig.get().launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == launcher.tasks_per_node == cfg.trainer.devices
    assert launcher.nodes == cfg.trainer.num_nodes
    assert HydraConfig.get().sweeper._target_.endswith("OptunaSweeper")
    for search in (CONF / "hparams_search").glob("*.yaml"):
        cfg = compose_config([f"hparams_search={search.stem}"], tmp_path)
        assert cfg.optimized_metric
    for preset in ("vae_fashion", "dcgan_fashion"):
        cfg = compose_config([f"experiment={preset}"], tmp_path)
        assert cfg.dataset._target_.endswith("FashionMNISTDataModule")


def test_optuna_sweep_with_joblib_records_a_diverged_trial_and_goes_on(tmp_path):
    # Two trials in parallel (joblib); the sampler's seed makes one draw lr=1e6 (diverges).
    result = run_train("hparams_search=vae_optuna", "hydra/launcher=joblib",
                       "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
                       "hydra.sweeper.n_trials=2", "model.optimizer.lr=choice(1e-3, 1e6)",
                       "trainer.max_epochs=1", *TINY[1:], "callbacks.image_grids=null",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "multiruns").iterdir()
    table = (sweep / "sweep_summary.md").read_text().splitlines()
    assert table[0].startswith("| job | status | best |") and "| model.optimizer.lr |" in table[0]
    statuses = sorted(line.split(" | ")[1] for line in table[2:4])
    assert statuses == ["diverged", "ok"], table
    assert (sweep / "sweep_summary.csv").exists()
    results = (sweep / "optimization_results.yaml").read_text()
    assert "model.optimizer.lr: 0.001" in results
    for job in sweep.glob("[01]_vae_digits"):
        assert (job / ".hydra" / "config.yaml").exists() and (job / "summary.json").exists()


@pytest.mark.parametrize("model", ["vae", "dcgan"])
def test_benchmark_prints_framework_and_bare_loop_speeds(model, capsys):
    bench = import_benchmark("bench")

    result = bench.main([f"model={model}", "trainer=cpu", "trainer.enable_progress_bar=false",
                         "dataset.batch_size=64", "--steps", "6", "--warmup", "2",
                         "--rounds", "1"])
    assert result["framework"] > 0 and result["bare"] > 0
    assert result["ratio"] == pytest.approx(result["framework"] / result["bare"])  # 1 round
    output = capsys.readouterr().out
    assert "framework" in output and "bare PyTorch loop" in output and "ratio" in output
