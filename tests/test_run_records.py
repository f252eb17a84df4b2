"""Nothing a user makes is lost or mixed up: each run and sweep gets a directory of its own,
and a refused start leaves nothing behind (issue 10)."""
import copy
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict, read_write

from genmodels.engine.rundirs import RunDirectory, claim_directory

from .conftest import CONF, TINY, run_main


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
    # Refused on the sanity pass, after the run had written its records and loggers.
    with pytest.raises(SystemExit, match="optimized_metric='val/lossx' is not logged"):
        run_main("model=ae", "trainer=cpu", "trainer.enable_progress_bar=false",
                 "optimized_metric=val/lossx", f"paths.root_dir={tmp_path}")
    assert sorted(p.name for p in (tmp_path / "logs" / "runs").iterdir()) == ["vae_run"]
    assert "Traceback" not in capsys.readouterr().err




def test_a_named_run_carries_its_name_and_tags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_main("model=ae", *TINY, "trainer.max_epochs=1", "name=wide decoder/v2",
             "tags=[ablation,decoder]")
    (run_dir,) = (tmp_path / "logs" / "runs").iterdir()
    assert run_dir.name.endswith("_ae_digits_wide-decoder-v2")  # a folder name, one level
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["name"], summary["tags"]) == ("wide decoder/v2", ["ablation", "decoder"])
    from genmodels.engine.hparams import curated_hparams

    hparams = curated_hparams(OmegaConf.load(run_dir / "config.yaml"), run_dir)
    assert (hparams["name"], hparams["tags"]) == ("wide decoder/v2", "ablation,decoder")
