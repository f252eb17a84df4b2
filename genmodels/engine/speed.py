"""GPU speed options from the config's `speed` node (see docs/speed.md).

Every option is off or neutral on CPU, where none of them helped these small models
(measured: channels_last no change, torch.compile slower after ~40 s of warm-up).
"""

import logging
import math
import os
import time

import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from genmodels.config import check_whole_number
from genmodels.errors import GenmodelsError

log = logging.getLogger(__name__)

MATMUL_PRECISIONS = ("highest", "high", "medium")


def configure_backends(speed: DictConfig | None) -> None:
    """Process-wide settings, before anything is built: TF32 matmuls and cuDNN autotuning."""
    if not speed:
        return
    precision = speed.get("float32_matmul_precision", "highest")
    if precision not in MATMUL_PRECISIONS:
        raise GenmodelsError(f"speed.float32_matmul_precision must be one of "
                             f"{MATMUL_PRECISIONS}, got {precision!r}.")
    # "high" lets CUDA matmuls use TF32 (Ampere and newer); convolutions use cuDNN's own
    # allow_tf32, which PyTorch enables by default.
    torch.set_float32_matmul_precision(precision)
    torch.backends.cudnn.benchmark = bool(speed.get("cudnn_benchmark", False))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    requested, jobs = speed.get("cpu_threads"), parallel_jobs(cpus)
    omp_threads = os.environ.get("OMP_NUM_THREADS")
    busy, judged = (0.0, "") if requested or jobs > 1 or omp_threads else busy_cores(cpus or 1)
    threads, reason = choose_cpu_threads(requested, jobs, cpus or 1, busy, omp_threads)
    torch.set_num_threads(threads)
    if rank_zero_only.rank == 0:
        hint = "" if requested else "; set speed.cpu_threads to change"
        log.info("PyTorch CPU threads: %d (%s%s%s).", threads, reason, judged, hint)


def choose_cpu_threads(requested: int | None, jobs: int, cpus: int, busy: float,
                       omp_threads: str | None = None) -> tuple[int, str]:
    """PyTorch's intra-op threads, and why: `requested` when given; else one per job when
    `jobs` run at once on the machine; else the environment's OMP_NUM_THREADS when set;
    else one per core that other work (`busy` cores' worth) leaves idle, at least one.

    On a CPU shared with other work, PyTorch's threads wait on each other: on a busy
    2-core machine, beside another training, the default VAE ran at 0.7 to 3 it/s on two
    threads and at 22 to 71 on one (docs/speed.md).
    """
    if requested is not None:
        # More threads than cores never helps PyTorch, and 100,000 crashed it (SIGSEGV).
        check_whole_number("speed.cpu_threads", requested, 1, cpus,
                           note=" (this machine's cores), or null to choose")
        return requested, "speed.cpu_threads"
    if jobs > 1:
        return 1, f"{jobs} jobs run at once"
    if omp_threads:
        if not omp_threads.strip().isdigit() or int(omp_threads) < 1:
            raise GenmodelsError(f"The environment's OMP_NUM_THREADS={omp_threads!r} is not a "
                                 "whole number of at least 1: unset it or fix it.")
        capped = f", capped at the {cpus} cores" if int(omp_threads) > cpus else ""
        return min(int(omp_threads), cpus), f"OMP_NUM_THREADS={omp_threads}{capped}"
    idle = max(1, min(cpus, math.floor(cpus - busy + 0.5)))
    return idle, f"{busy:.1f} of {cpus} cores busy"


def busy_cores(cpus: int, seconds: float = 0.25) -> tuple[float, str]:
    """How many of the `cpus` cores other work keeps busy, and how that was judged: the
    busy share of the CPUs over the next `seconds` (Linux), else the 1-minute load average.

    The load average lags both ways: it takes a minute to notice a training started just
    before, and a minute to forget one that has just ended, so each run of a sequential
    sweep or benchmark saw the previous one's load and took one thread of two idle cores
    (all 25 runs of benchmarks/catalogue.py did). A training keeps its cores busy without
    pause, which a quarter of a second sees."""
    load = os.getloadavg()[0]
    try:
        first = read_cpu_times()
        time.sleep(seconds)
        now = busy_share(first, read_cpu_times()) * (os.cpu_count() or 1)
    except OSError:  # no /proc/stat
        return load, f": load average {load:.1f}"
    return now, f": {now:.1f} busy just now, load average {load:.1f}"


def read_cpu_times() -> list[int]:
    """The machine's CPU time counters: user, nice, system, idle, iowait, irq, softirq,
    steal (the first line of /proc/stat)."""
    with open("/proc/stat") as stat:
        return [int(n) for n in stat.readline().split()[1:9]]


def busy_share(first: list[int], second: list[int]) -> float:
    """The share of CPU time spent busy between two read_cpu_times() readings."""
    spent = [b - a for a, b in zip(first, second, strict=True)]
    idle = spent[3] + spent[4]  # idle and waiting for I/O
    return (sum(spent) - idle) / sum(spent) if sum(spent) else 0.0


def parallel_jobs(cpus: int | None) -> int:
    """How many jobs of this Hydra multirun run at once: the joblib launcher's `n_jobs`
    (negative counts from the number of cores, as in joblib); 1 otherwise."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return 1
    launcher = HydraConfig.get().launcher
    if not str(launcher.get("_target_", "")).endswith("JoblibLauncher"):
        return 1
    n_jobs = int(launcher.get("n_jobs") or 1)
    return max(1, n_jobs if n_jobs > 0 else (cpus or 1) + 1 + n_jobs)


def optimize_model(model: torch.nn.Module, speed: DictConfig | None) -> torch.nn.Module:
    """channels_last weights (convolutions then run in NHWC) and `torch.compile` of each
    network, in place, so parameter names and checkpoints stay the same. A network the
    model differentiates twice (a GAN's D under a gradient penalty: `twice_differentiated`)
    stays eager: torch.compile's autograd cannot take a double backward, and would fail
    only after compiling for minutes."""
    if not speed:
        return model
    if speed.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    if speed.get("compile"):
        eager = set(getattr(model, "twice_differentiated", lambda: ())())
        for name, network in model.named_children():
            if name in eager:
                log.info("speed.compile: %s stays uncompiled (its gradient penalty needs a "
                         "double backward, which torch.compile cannot take).", name)
            elif any(True for _ in network.parameters()):
                network.compile(mode=speed.get("compile_mode") or None)
    return model


