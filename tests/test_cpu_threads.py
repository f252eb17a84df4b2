"""The default number of PyTorch CPU threads (`speed.cpu_threads=null`) on a shared machine."""

import logging
import os

import pytest
import torch

from genmodels.errors import GenmodelsError
from genmodels.speed import choose_cpu_threads, configure_backends, parallel_jobs

from .conftest import compose_config


@pytest.mark.parametrize(("load", "cpus", "expected"), [
    (0.0, 2, 2),    # idle: every core
    (0.3, 2, 2),
    (1.2, 2, 1),    # another training on one of two cores
    (5.0, 2, 1),    # oversubscribed: still one thread
    (3.0, 16, 13),  # a big machine keeps the idle cores
    (0.0, 1, 1),
])
def test_default_threads_follow_the_idle_cores(load, cpus, expected):
    threads, reason = choose_cpu_threads(None, jobs=1, cpus=cpus, load=load)
    assert threads == expected
    assert f"load average {load:.1f} on {cpus} cores" in reason


def test_parallel_jobs_get_one_thread_each_and_a_setting_wins():
    assert choose_cpu_threads(None, jobs=4, cpus=16, load=0.0)[0] == 1
    assert choose_cpu_threads(3, jobs=4, cpus=2, load=9.0) == (3, "speed.cpu_threads")
    with pytest.raises(GenmodelsError, match="speed.cpu_threads must be at least 1"):
        choose_cpu_threads(-2, jobs=1, cpus=2, load=0.0)


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
    monkeypatch.setattr(os, "getloadavg", lambda: (1.4, 1.0, 1.0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    try:
        with caplog.at_level(logging.INFO, logger="genmodels.speed"):
            configure_backends(cfg.speed)
        assert torch.get_num_threads() == 3
        assert "PyTorch CPU threads: 3 (load average 1.4 on 4 cores" in caplog.text
    finally:
        torch.set_num_threads(before)
