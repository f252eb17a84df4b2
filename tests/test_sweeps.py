"""Sweeps: every search and launcher config composes, an Optuna sweep goes on past a
diverged trial and stops at one refused before training, each job runs in its own
directory, and the sweep table ranks them, also when the sweep ends early."""


import csv
import json
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig

from genmodels.jobs.sweeps import write_tables

from .conftest import CONF, TINY, compose_config, run_main, run_train


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


def test_multirun_trains_each_job_in_its_own_directory(tmp_path):
    # The second batch size is refused: the sweep goes on and its table says why.
    result = run_train("-m", "model=ae,vae", "dataset.batch_size=32,-5", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false",
                       "test=false", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: 2 of 4 jobs failed")
    (sweep,) = (tmp_path / "logs" / "multiruns").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_ae_digits", "1_ae_digits", "2_vae_digits", "3_vae_digits"]
    for job in ("0_ae_digits", "2_vae_digits"):
        assert (sweep / job / "checkpoints" / "last.ckpt").exists()
    with open(sweep / "sweep_summary.csv") as file:
        table = list(csv.DictReader(file))
    assert [(r["model"], r["dataset.batch_size"], r["status"]) for r in table] == [
        ("ae", "32", "ok"), ("ae", "-5", "failed"), ("vae", "32", "ok"), ("vae", "-5", "failed")]
    assert table[1]["error"] == "dataset.batch_size must be positive, got -5."
    assert table[0]["val/loss [BCE/pixel]"] and table[2]["val/loss [VAE objective]"]
    assert (sweep / "sweep_summary.md").read_text().count("| failed |") == 2


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


def test_a_job_that_trained_then_failed_is_listed_as_failed(tmp_path, monkeypatch):
    # `-m callbacks=quality optimized_metric=val/fd_classifier trainer.max_epochs=1`: the
    # run trains and writes an `ok` summary, then its metric is missing.
    from types import SimpleNamespace

    from genmodels.jobs.sweeps import record_failed_job

    hydra = SimpleNamespace(runtime=SimpleNamespace(output_dir=str(tmp_path)),
                            overrides=SimpleNamespace(task=["optimized_metric=val/x"]))
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hydra))
    for before, after in (("ok", "failed"), ("diverged", "diverged")):
        (tmp_path / "summary.json").write_text(json.dumps({"status": before}))
        record_failed_job(ValueError("optimized_metric='val/x' was not logged"))
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert summary["status"] == after
        assert summary["error"] == "optimized_metric='val/x' was not logged"


def test_an_optuna_search_stops_at_a_trial_refused_before_training(tmp_path, capsys):
    # `hparams_search=vae_optuna dataset=fashion` offline: every trial would be refused
    # alike. The search stops at the first, with the dataset's sentence, and its table.
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit) as stop:
        run_main("hparams_search=vae_optuna", "dataset=fashion", "dataset.download=false",
                 f"dataset.data_dir={tmp_path / 'nowhere'}", "hydra.sweeper.n_trials=3",
                 *TINY, f"hydra.sweep.dir={sweep}")
    assert str(stop.value.code).startswith("Error: The fashion dataset is not in "), stop.value
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_vae_fashion"]
    (row,) = csv.DictReader(open(sweep / "sweep_summary.csv"))
    assert row["status"] == "failed" and row["error"].startswith("The fashion dataset is not")
    assert "| 0_vae_fashion | failed |" in (sweep / "sweep_summary.md").read_text()


def test_an_optuna_search_without_a_completed_trial_says_so_and_writes_its_table(tmp_path):
    # Both trials diverge (a legitimate failed trial: the search goes on); Optuna would then
    # have no best trial and raise its own ValueError, and Hydra skip its end-of-sweep
    # callbacks: the last trial stops the search in one sentence instead.
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit, match="Error: None of the search's 2 trials completed "
                                         r"\(each failed or diverged.*no best trial"):
        run_main("hparams_search=vae_optuna", "hydra.sweeper.n_trials=2",
                 "model.optimizer.lr=1e6", "trainer.max_epochs=1", *TINY,
                 "callbacks.image_grids=null", f"hydra.sweep.dir={sweep}")
    table = list(csv.DictReader(open(sweep / "sweep_summary.csv")))
    assert [(r["job"], r["status"]) for r in table] == [("0_vae_digits", "diverged"),
                                                         ("1_vae_digits", "diverged")]
