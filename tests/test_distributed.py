"""Multi-process training on CPU (DDP with gloo): GANs train on two processes, get DDP's
unused-parameter search however DDP is spelled, each process draws its own random numbers,
and a resumed run ends with the uninterrupted run's weights."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.environments.lightning import find_free_network_port

from genmodels.config import build
from genmodels.engine.random_streams import RandomStreams
from genmodels.jobs.train import train

from .conftest import FAST, ROOT, SMALL_DCGAN, SMALL_DDPM, run_train

DDP_GAN = ["model=dcgan", *SMALL_DCGAN, "trainer=ddp_cpu", "trainer.enable_progress_bar=false",
           "trainer.limit_val_batches=1", "test=false", "logger=csv", "dataset.batch_size=16",
           "callbacks.image_grids=null"]


class RecordFakes(L.Callback):
    """Writes, per rank, a digest of every batch of fakes G makes for D's training steps
    (those it makes without gradients) to <out>/rank<r>.json."""

    def __init__(self, out: str):
        self.out, self.digests = Path(out), []

    def setup(self, trainer, pl_module, stage):
        def record(module, inputs, output):
            if trainer.training and not trainer.sanity_checking and not torch.is_grad_enabled():
                self.digests.append(hashlib.md5(output.detach().numpy().tobytes()).hexdigest())
        pl_module.generator.register_forward_hook(record)

    def on_train_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.digests))


@pytest.mark.parametrize("model", [["model=dcgan"], ["model=ddpm", *SMALL_DDPM]],
                         ids=["dcgan", "ddpm"])
def test_gans_and_diffusion_train_with_ddp_on_two_cpu_processes(model, tmp_path):
    result = run_train(*model, "trainer=ddp_cpu", "trainer.max_epochs=1",
                       "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
                       "trainer.enable_progress_bar=false", "test=false",
                       # sample quality: measured by rank zero, shared with rank one
                       "callbacks=quality", "callbacks.sample_quality.every_n_epochs=1",
                       "callbacks.sample_quality.num_samples=50",
                       "callbacks.sample_quality.classifier_epochs=1",
                       f"callbacks.sample_quality.cache_dir={tmp_path / 'classifiers'}",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "runs").iterdir()  # both ranks share one run dir
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "images" / "samples_epoch0000.png").exists()
    assert (result.stdout + result.stderr).count("Training the feature classifier") == 1
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["metrics"]["val/fd_classifier"] > 0


@pytest.mark.parametrize("spelling", ["ddp", "ddp_spawn", "ddp_find_unused_parameters_false",
                                      "ddp_fork", "object", "object_false", "target"])
def test_gans_get_ddp_with_unused_parameters_however_ddp_is_spelled(spelling, make_config):
    from lightning.pytorch.strategies import DDPStrategy
    from omegaconf import OmegaConf

    from genmodels.jobs.train import choose_strategy

    strategy = {"object": DDPStrategy(), "object_false": DDPStrategy(find_unused_parameters=False),
                "target": OmegaConf.create({"_target_": "lightning.pytorch.strategies.DDPStrategy",
                                            "start_method": "spawn"})}.get(spelling, spelling)
    gan = build(make_config("model=gan").model)
    trainer = L.Trainer(accelerator="cpu", devices=2, logger=False,
                        strategy=choose_strategy(strategy, gan))
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is True
    # Everything else about the DDP asked for is kept.
    start = {"ddp_spawn": "spawn", "ddp_fork": "fork", "target": "spawn"}.get(spelling, "popen")
    assert trainer.strategy._start_method == start
    # Models with one optimizer keep the strategy exactly as configured.
    vae = build(make_config("model=vae").model)
    assert choose_strategy(strategy, vae) is strategy



def test_each_process_draws_its_own_numbers_from_seed_rank_and_step():
    def draws(rank: int, step: int, seed: int = 0) -> torch.Tensor:
        streams = RandomStreams(seed)
        streams.setup(SimpleNamespace(global_rank=rank), None, "fit")
        cpu_model = SimpleNamespace(device=torch.device("cpu"))
        streams.reseed(SimpleNamespace(global_step=step), cpu_model)
        return torch.rand(8)

    assert torch.equal(draws(0, 5), draws(0, 5))  # a resumed run draws the same
    assert not torch.equal(draws(0, 5), draws(1, 5))  # every rank its own
    assert not torch.equal(draws(0, 5), draws(0, 6))  # every step its own
    assert not torch.equal(draws(0, 5), draws(0, 5, seed=1))


def test_ddp_ranks_generate_different_fakes(tmp_path):
    out = tmp_path / "fakes"
    result = run_train(*DDP_GAN, "trainer.max_steps=3", "hydra.run.dir=run",
                       "+callbacks.fakes._target_=tests.test_distributed.RecordFakes",
                       f"+callbacks.fakes.out={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(rank0) == len(rank1) == 3
    assert not set(rank0) & set(rank1)  # no batch of fakes drawn twice


@pytest.mark.slow
def test_ddp_run_resumed_ends_with_the_uninterrupted_weights(tmp_path):
    # Two epochs of three batches on each of two processes, with dropout in D and dynamic
    # binarization: a run of one epoch resumed for a second ends with the weights of the
    # two-epoch run, bit for bit, because every rank's draws come from (seed, rank, step)
    # (restoring rank zero's generator state to both ranks would not give this).
    args = [*DDP_GAN, "trainer.limit_train_batches=3", "dataset.binarize=dynamic"]

    def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
        return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]

    for run in (["trainer.max_epochs=2", "hydra.run.dir=straight"],
                ["trainer.max_epochs=1", "hydra.run.dir=resumed"],
                [f"resume={tmp_path / 'resumed'}", "trainer.max_epochs=2"]):
        result = run_train(*args, *run, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    expected, actual = last_weights(tmp_path / "straight"), last_weights(tmp_path / "resumed")
    differing = [k for k in expected if not torch.equal(expected[k], actual[k])]
    assert not differing, differing[:5]


def torchrun_nodes(*args: str, cwd: Path, nodes: int = 2) -> list[subprocess.CompletedProcess]:
    """`train.py args` as `nodes` one-process nodes (torchrun, a rendezvous on localhost),
    all at once, as a cluster would start them."""
    port = str(find_free_network_port())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}",
               "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}"]
    processes = [subprocess.Popen([*command, f"--node-rank={rank}", str(ROOT / "train.py"),
                                   *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for rank in range(nodes)]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


@pytest.mark.slow
def test_two_nodes_train_into_one_run_and_resume_it(tmp_path):
    run_dir = tmp_path / "run"
    args = ["model=vae", "trainer=ddp_cpu", "trainer.devices=1", "trainer.num_nodes=2",
            "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "test=false",
            "trainer.enable_progress_bar=false", "logger=csv"]
    for step in ([*args, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"],
                 [f"resume={run_dir}", "trainer.max_epochs=2"]):
        node0, node1 = torchrun_nodes(*step, cwd=tmp_path)
        errors = node0.stderr[-2000:] + node1.stderr[-2000:]
        assert node0.returncode == node1.returncode == 0, errors
        # Rank zero alone reports (and writes the run's records and checkpoints).
        assert "Run directory:" in node0.stdout + node0.stderr
        assert "Run directory:" not in node1.stdout + node1.stderr
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["run"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt",
                                                                     "last.ckpt.sha256"]
    assert len(list((run_dir / ".hydra").glob("resumed_*"))) == 1
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 8)  # 2 epochs of 4 steps


SLURM_TASK = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "2",
              "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
              "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "genmodels",
              "SLURM_NODELIST": "node[1-2]"}


def test_under_srun_lightning_takes_ranks_and_world_size_from_slurm(monkeypatch, make_config):
    from lightning.fabric.utilities.rank_zero import rank_zero_only as fabric_rank_zero_only
    from lightning.pytorch.plugins.environments import SLURMEnvironment
    from lightning.pytorch.utilities import rank_zero_only

    for function in (rank_zero_only, fabric_rank_zero_only):  # the Trainer sets them to 1
        monkeypatch.setattr(function, "rank", function.rank)
    for name, value in SLURM_TASK.items():
        monkeypatch.setenv(name, value)
    cfg = make_config("model=vae", "trainer=ddp_cpu", "trainer.devices=1",
                      "trainer.num_nodes=2")
    trainer = build(cfg.trainer, logger=False)
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert (environment.global_rank(), environment.world_size(),
            environment.node_rank(), environment.local_rank()) == (1, 2, 1, 0)
    assert environment.main_address == "node1"


def test_a_requeued_slurm_job_continues_from_its_newest_checkpoint(monkeypatch, make_config):
    args = ["model=ae", *FAST, "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            "test=false", "logger=csv"]
    first = make_config(*args, "trainer.max_epochs=1")
    train(first)
    # The requeued job runs the same command again, in its own directory.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    metrics = train(make_config(*args, "trainer.max_epochs=2"))
    summary = json.loads((Path(first.paths.output_dir) / "summary.json").read_text())
    assert (summary["epochs"], summary["global_step"]) == (2, 4) and metrics
