"""engine/speed.py: the default number of PyTorch CPU threads (`speed.cpu_threads=null`) on a
shared machine, and what `speed.compile` compiles."""

import logging
import math
import os
import traceback
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict
from torch.overrides import TorchFunctionMode

from genmodels.config import build
from genmodels.engine import speed
from genmodels.engine.lightning_private import is_logging_step
from genmodels.engine.speed import choose_cpu_threads, configure_backends, parallel_jobs
from genmodels.errors import GenmodelsError
from genmodels.jobs.train import train

from .conftest import SMALL_DCGAN, TINY, compose_config


@pytest.mark.parametrize(("busy", "cpus", "expected"), [
    (0.0, 2, 2),    # idle: every core
    (0.3, 2, 2),
    (1.2, 2, 1),    # another training on one of two cores
    (5.0, 2, 1),    # oversubscribed: still one thread
    (3.0, 16, 13),  # a big machine keeps the idle cores
    (0.0, 1, 1),
])
def test_default_threads_follow_the_idle_cores(busy, cpus, expected):
    threads, reason = choose_cpu_threads(None, jobs=1, cpus=cpus, busy=busy)
    assert threads == expected
    assert f"{busy:.1f} of {cpus} cores busy" in reason


def test_parallel_jobs_get_one_thread_each_and_a_setting_wins():
    assert choose_cpu_threads(None, jobs=4, cpus=16, busy=0.0)[0] == 1
    assert choose_cpu_threads(3, jobs=4, cpus=4, busy=9.0) == (3, "speed.cpu_threads")
    # The environment's choice is kept (up to the cores), unless several jobs run at once.
    assert choose_cpu_threads(None, jobs=1, cpus=2, busy=0.0, omp_threads="1")[0] == 1
    assert choose_cpu_threads(None, jobs=1, cpus=2, busy=0.0, omp_threads="64")[0] == 2
    assert choose_cpu_threads(None, jobs=4, cpus=8, busy=0.0, omp_threads="8")[0] == 1


# 0 was taken as "automatic", 1.5 floored to 1, 100,000 crashed PyTorch (SIGSEGV).
@pytest.mark.parametrize("requested", [-2, 0, 1.5, 3, 100_000, "abc", True])
def test_cpu_threads_outside_one_to_the_cores_are_refused_by_name(requested):
    with pytest.raises(GenmodelsError, match=rf"speed.cpu_threads must be a whole number from "
                                             rf"1 to 2 .*got {requested!r}"):
        choose_cpu_threads(requested, jobs=1, cpus=2, busy=0.0)


def test_a_malformed_omp_num_threads_is_named():
    with pytest.raises(GenmodelsError, match="OMP_NUM_THREADS='abc' is not a whole number"):
        choose_cpu_threads(None, jobs=1, cpus=2, busy=0.0, omp_threads="abc")


def fake_machine(monkeypatch, load: float, busy_share: float, cpus: int = 4):
    """A machine of `cpus` cores with this load average, its CPUs busy `busy_share` of the
    time while the threads are chosen."""
    readings = iter([[0] * 8, [int(100 * busy_share), 0, 0, 100 - int(100 * busy_share),
                               0, 0, 0, 0]])
    monkeypatch.setattr(speed, "read_cpu_times", lambda: next(readings))
    monkeypatch.setattr(speed.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 1.0, 1.0))
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_a_job_started_just_now_counts_before_the_load_average_sees_it(monkeypatch):
    fake_machine(monkeypatch, load=0.1, busy_share=0.5, cpus=2)  # one of two cores busy
    assert speed.busy_cores(2) == (1.0, ": 1.0 busy just now, load average 0.1")


def test_a_job_that_just_ended_leaves_its_load_average_but_not_its_cores(monkeypatch):
    """As each run of a sequential sweep starts: the previous run's load average lingers
    for a minute, its cores are free; the CPUs are sampled for a quarter of a second."""
    fake_machine(monkeypatch, load=1.6, busy_share=0.0, cpus=2)
    waits = []
    monkeypatch.setattr(speed.time, "sleep", waits.append)
    assert speed.busy_cores(2) == (0.0, ": 0.0 busy just now, load average 1.6")
    assert waits == [0.25]
    assert choose_cpu_threads(None, jobs=1, cpus=2, busy=0.0) == (2, "0.0 of 2 cores busy")


def test_without_proc_stat_the_load_average_judges(monkeypatch):
    fake_machine(monkeypatch, load=1.6, busy_share=0.0, cpus=2)

    def no_proc_stat():
        raise FileNotFoundError("/proc/stat")

    monkeypatch.setattr(speed, "read_cpu_times", no_proc_stat)
    assert speed.busy_cores(2) == (1.6, ": load average 1.6")


@pytest.mark.parametrize(("n_jobs", "expected"), [(4, 4), (-1, 8), (-2, 7), (1, 1)])
def test_parallel_jobs_reads_the_joblib_launcher(n_jobs, expected):
    # As `python train.py -m hydra/launcher=joblib hydra.launcher.n_jobs=...` runs each job.
    compose_config(["hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}",
                    "hydra.mode=MULTIRUN"])
    assert parallel_jobs(cpus=8) == expected
    compose_config(["hydra.mode=MULTIRUN"])  # the basic launcher: one job after another
    assert parallel_jobs(cpus=8) == 1
    compose_config(["hydra/launcher=joblib", "hydra.launcher.n_jobs=4"])  # not a multirun
    assert parallel_jobs(cpus=8) == 1


def test_configure_backends_sets_and_says_the_chosen_count(monkeypatch, caplog):
    cfg = compose_config([])
    before = torch.get_num_threads()
    fake_machine(monkeypatch, load=0.4, busy_share=0.35, cpus=4)
    try:
        with caplog.at_level(logging.INFO, logger="genmodels.engine.speed"):
            configure_backends(cfg.speed)
        assert torch.get_num_threads() == 3
        assert ("PyTorch CPU threads: 3 (1.4 of 4 cores busy: 1.4 busy just now, load average "
                "0.4; set speed.cpu_threads to change).") in caplog.text
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("model, compiled", [
    ("wgan_gp", ["generator"]),
    ("dcgan", ["generator", "discriminator", "generator_ema"]),
    ("vae", ["encoder", "decoder", "to_posterior"])])
def test_compile_leaves_networks_under_a_gradient_penalty_eager(model, compiled, monkeypatch,
                                                                 tmp_path):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append(self))
    built = build(compose_config([f"model={model}", "speed.compile=true"], tmp_path).model)
    speed.optimize_model(built, compose_config(["speed.compile=true"], tmp_path).speed)
    names = {id(module): name for name, module in built.named_children()}
    assert [names[id(module)] for module in calls] == compiled


# One model of each family; wgan_gp and the dcgan variant train under a gradient penalty
# (WGAN-GP, R1), whose D stays eager.
COMPILED = {"ae": [], "vae": [], "gan": [], "wgan_gp": [*SMALL_DCGAN],
            "dcgan": [*SMALL_DCGAN, "model.penalty=r1", "model.penalty_weight=1.0"]}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(COMPILED))
def test_every_family_compiles_and_trains_on_the_cpu(model, tmp_path):
    cfg = compose_config([f"model={model}", *COMPILED[model], *TINY, "speed.compile=true",
                          "trainer.max_steps=3", "callbacks.image_grids=null", "logger=csv"],
                         tmp_path / "run")
    metrics = train(cfg)
    losses = {k: v for k, v in metrics.items() if k.startswith("train/") and "loss" in k}
    assert losses and all(math.isfinite(v) for v in losses.values()), metrics


class HostReads(TorchFunctionMode):
    """Counts the calls that read a tensor's value back to the host (on a GPU, a wait for
    all queued work), by whether the step they fall in is a logging step."""

    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"}

    def __init__(self):
        super().__init__()
        self.logging_step = True  # until the first step: setup reads freely
        self.reads = {True: [], False: []}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.READS:
            where = traceback.extract_stack(limit=6)[:-1]
            if "torch/optim/" in where[-1].filename:
                # Optimizers' step counts, kept on the CPU by design: no device read.
                return func(*args, **(kwargs or {}))
            self.reads[self.logging_step].append(
                f"{func.__name__} at " + " <- ".join(f"{Path(f.filename).name}:{f.lineno}"
                                                   for f in reversed(where)))
        return func(*args, **(kwargs or {}))


class WatchHostReads(L.Callback):
    """Turns HostReads on for the steps after the first few, telling it which are
    logging steps (what the logger connector does after the batch counts to its step)."""

    last: HostReads | None = None  # the last one built, for the test to read

    def __init__(self):
        self.mode = WatchHostReads.last = HostReads()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.mode.logging_step = is_logging_step(trainer)
        if batch_idx == 2:
            self.mode.__enter__()

    def on_train_end(self, trainer, pl_module):
        self.mode.__exit__(None, None, None)


@pytest.mark.parametrize("model", ["ae", "vae", "dcgan", "wgan_gp"])
def test_steps_between_logging_steps_read_nothing_back_from_the_device(model, tmp_path):
    # A read (.item(), bool(tensor), ...) makes the host wait for the GPU every step, so
    # that it cannot queue the next step's work meanwhile. Lightning reads values logged
    # with prog_bar=True at every batch end; the progress bar (never redrawn here) must
    # get its losses another way.
    cfg = compose_config([f"model={model}", *TINY, *(SMALL_DCGAN if "gan" in model else []),
                          "trainer.enable_progress_bar=true",
                          "callbacks.progress_bar.refresh_rate=1000",
                          "trainer.limit_train_batches=24", "trainer.log_every_n_steps=8",
                          "trainer.max_epochs=1", "logger=tensorboard"], tmp_path / "run")
    with open_dict(cfg):
        cfg.callbacks.watch = {"_target_": f"{__name__}.WatchHostReads"}
    train(cfg)
    mode = WatchHostReads.last
    assert mode.reads[True], "no logging step was watched: the test watches nothing"
    assert mode.reads[False] == []


class ReadProgressBar(L.Callback):
    """Keeps what the progress bar would show after the last step."""

    shown: dict = {}

    def on_train_end(self, trainer, pl_module):
        bar = trainer.progress_bar_callback
        ReadProgressBar.shown = bar.get_metrics(trainer, pl_module)
        ReadProgressBar.last_loss = pl_module.last_logged_d_loss


class LastDLoss(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.last_logged_d_loss = outputs["log"]["d_loss"].item()


def test_the_progress_bar_shows_the_latest_losses(tmp_path):
    cfg = compose_config(["model=dcgan", *TINY, *SMALL_DCGAN, "trainer.enable_progress_bar=true",
                          "trainer.max_epochs=1", "logger=csv"], tmp_path / "run")
    with open_dict(cfg):
        cfg.callbacks.last_d_loss = {"_target_": f"{__name__}.LastDLoss"}
        cfg.callbacks.read_bar = {"_target_": f"{__name__}.ReadProgressBar"}
    train(cfg)
    shown = ReadProgressBar.shown
    assert shown["train/d_loss_step"] == pytest.approx(ReadProgressBar.last_loss)
    assert math.isfinite(shown["train/g_loss_step"])
