"""GPU speed options from the config's `speed` node (see README, "Speed").

Every option is off or neutral on CPU, where none of them helped these small models
(measured: channels_last no change, torch.compile slower after ~40 s of warm-up).
"""

import logging
import math
import os

import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

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
    threads, reason = choose_cpu_threads(speed.get("cpu_threads"), parallel_jobs(cpus),
                                         cpus or 1, os.getloadavg()[0])
    torch.set_num_threads(threads)
    if rank_zero_only.rank == 0:
        log.info("PyTorch CPU threads: %d (%s).", threads, reason)


def choose_cpu_threads(requested: int | None, jobs: int, cpus: int,
                       load: float) -> tuple[int, str]:
    """PyTorch's intra-op threads, and why: `requested` when given; else one per job when
    `jobs` run at once on the machine; else one per core that the 1-minute load average
    leaves idle (at least one).

    On a CPU shared with other work, PyTorch's threads wait on each other: with another
    training on the same two cores, the default VAE ran at 25 it/s on two threads and
    228 it/s on one.
    """
    if requested:
        if int(requested) < 1:
            raise GenmodelsError(f"speed.cpu_threads must be at least 1 or null, got {requested}.")
        return int(requested), "speed.cpu_threads"
    if jobs > 1:
        return 1, f"{jobs} jobs run at once; set speed.cpu_threads to change"
    idle = max(1, min(cpus, math.floor(cpus - load + 0.5)))
    return idle, (f"load average {load:.1f} on {cpus} cores; set speed.cpu_threads to change")


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
    network, in place, so parameter names and checkpoints stay the same."""
    if not speed:
        return model
    if speed.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    if speed.get("compile"):
        for network in model.children():
            if any(True for _ in network.parameters()):
                network.compile(mode=speed.get("compile_mode") or None)
    return model
