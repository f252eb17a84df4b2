"""Nothing a user makes is lost or mixed up: run directories, refused starts, interrupted
runs, resumed runs' overrides and sweep tables (issue 10)."""

import copy
import csv
import importlib.util
import json
import os
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict, read_write

from genmodels.engine.rundirs import RunDirectory, claim_directory
from genmodels.errors import GenmodelsError
from genmodels.jobs.sweeps import write_tables

from .conftest import CONF, FAST, ROOT, compose_config, run_train


def run_main(*args: str) -> None:
    """train.py's main in this process, as `python train.py args...` would run it."""
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    # Hydra finds conf/ next to the script of a `__main__` task, as when run by path.
    script.main.__wrapped__.__module__ = "__main__"
    GlobalHydra.instance().clear()
    argv = sys.argv
    sys.argv = ["train.py", *args]
    try:
        script.run()
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    # Eight starts claiming the same name at once (threads: the claim is one mkdir).
    name = tmp_path / "runs" / "2026-01-01_00-00-00_vae_digits"
    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(lambda _: claim_directory(name), range(8)))
    assert len(set(claimed)) == 8 and all(path.is_dir() for path in claimed)
    assert name in claimed and name.with_name(name.name + "_2") in claimed

    # Through Hydra's callback: runs and sweeps whose names fall in the same second.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
        with read_write(cfg.hydra), open_dict(cfg.hydra):
            cfg.hydra.run.dir = str(tmp_path / "runs" / "same_second")
            cfg.hydra.sweep.dir = str(tmp_path / "multiruns" / "same_second")
        run_dirs, sweep_dirs = [], []
        for _ in range(3):
            run, sweep = copy.deepcopy(cfg), copy.deepcopy(cfg)
            RunDirectory().on_run_start(config=run)
            RunDirectory().on_multirun_start(config=sweep)
            run_dirs.append(run.hydra.run.dir)
            sweep_dirs.append(sweep.hydra.sweep.dir)
            # Each job of a sweep is composed again from the overrides: it gets the dir.
            loader = GlobalHydra.instance().config_loader()
            job = loader.load_sweep_config(sweep, ["seed=1"])
            assert job.hydra.sweep.dir == sweep.hydra.sweep.dir
    assert len(set(run_dirs)) == len(set(sweep_dirs)) == 3
    assert all(Path(d).is_dir() for d in run_dirs + sweep_dirs)


def fake_run(run_dir: Path) -> dict[Path, bytes]:
    """A finished run's files (enough for train.py to recognise a run), and their bytes."""
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text("model:\n  _target_: genmodels.models.VAE\n")
    (run_dir / ".hydra" / "overrides.yaml").write_text("- model=vae\n")
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (run_dir / "train.log").write_text("trained\n")
    return files(run_dir)


def files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_refused_start_changes_nothing_and_leaves_no_directory(tmp_path, capsys):
    run_dir = tmp_path / "logs" / "runs" / "vae_run"
    before = fake_run(run_dir)
    with pytest.raises(SystemExit, match="already holds checkpoints; refusing to overwrite"):
        run_main(f"hydra.run.dir={run_dir}", "model=dcgan", f"paths.root_dir={tmp_path}")
    assert files(run_dir) == before  # Hydra's .hydra/ record included
    typo = tmp_path / "logs" / "runs" / "vae_rnu"
    with pytest.raises(SystemExit, match="is not a run directory"):
        run_main(f"resume={typo}")
    with pytest.raises(SystemExit, match="dataset.batch_size must be positive"):
        run_main("dataset.batch_size=-5", f"paths.root_dir={tmp_path}")
    assert sorted(p.name for p in (tmp_path / "logs" / "runs").iterdir()) == ["vae_run"]
    assert "Traceback" not in capsys.readouterr().err


def test_sigterm_exits_143_after_saving_and_says_how_to_resume(tmp_path):
    killer = "tests.test_runs_at_work.SendSignal"
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


def job_dir(sweep: Path, name: str, overrides: list[str], metrics: dict | None,
            model: str = "genmodels.models.VAE", error: str | None = None) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "config.yaml").write_text(f"model:\n  _target_: {model}\n  loss: bce\n")
    if metrics is not None or error:
        summary = {"metrics": metrics or {}} | ({"status": "failed", "error": error}
                                                if error else {})
        (job / "summary.json").write_text(json.dumps(summary))


def test_sweep_table_has_a_column_per_parameter_units_and_the_best_job(tmp_path):
    from genmodels.jobs.sweeps import collect_jobs

    sweep = tmp_path / "sweep"
    job_dir(sweep, "0_vae_digits", ["model=vae", "model.kl_weight=0.5", "seed=1"],
            {"val/elbo": -120.0, "val/loss": 0.3})
    job_dir(sweep, "1_vae_digits", ["model=vae", "model.kl_weight=1", "seed=1"],
            {"val/elbo": -110.0, "val/loss": 0.4})
    job_dir(sweep, "2_vae_digits", ["model=vae", "model.kl_weight=2", "seed=1"], None,
            error="dataset.batch_size must be positive, got -5.")
    job_dir(sweep, "3_ae_digits", ["model=ae", "model.kl_weight=2", "seed=1"],
            {"val/loss": 0.1}, model="genmodels.models.AutoEncoder")
    rows = collect_jobs(sweep)
    write_tables(rows, sweep, "val/elbo", None)
    table = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    # One column per swept parameter; the parameters every job shares are left out.
    assert [(r["model"], r["model.kl_weight"]) for r in table] == [
        ("vae", "0.5"), ("vae", "1"), ("vae", "2"), ("ae", "2")]
    assert "seed" not in table[0]
    # A loss in another unit gets its own column; ELBOs compare, the best is marked.
    assert [r["val/loss [VAE objective]"] for r in table] == ["0.3", "0.4", "", ""]
    assert [r["val/loss [BCE/pixel]"] for r in table] == ["", "", "", "0.1"]
    assert [r["best"] for r in table] == ["", "*", "", ""]
    assert table[2]["status"] == "failed" and "got -5" in table[2]["error"]
    markdown = (sweep / "sweep_summary.md").read_text()
    assert "best: 1_vae_digits (highest val/elbo)" in markdown
    # val/loss is in two units here: no job is marked best rather than a wrong one.
    write_tables(rows, sweep, "val/loss", None)
    assert "No best job marked: val/loss is in different units" in \
        (sweep / "sweep_summary.md").read_text()


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
        (checkpoints / name).write_bytes(b"")
        os.utime(checkpoints / name, (time.time() - age, time.time() - age))
    assert find_checkpoint(tmp_path / "run") == checkpoints / "interrupted.ckpt"
    os.utime(checkpoints / "last.ckpt")  # the resumed run saved again since
    assert find_checkpoint(tmp_path / "run") == checkpoints / "last.ckpt"
