"""GPU speed options from the config's `speed` node (see README, "Speed").

Every option is off or neutral on CPU, where none of them helped these small models
(measured: channels_last no change, torch.compile slower after ~40 s of warm-up).
"""

import torch
from omegaconf import DictConfig

from genmodels.errors import GenmodelsError

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
    if speed.get("cpu_threads"):
        # On a CPU shared with other jobs, fewer threads than cores avoids threads waiting
        # on each other (measured here: 1 thread ran a small Linear layer 30x faster than 2
        # while other trainings used the same two cores).
        torch.set_num_threads(int(speed.cpu_threads))


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
