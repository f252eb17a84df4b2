"""What the picture-drawing callbacks share: when they draw, and where pictures go."""

from pathlib import Path

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from torchvision.utils import make_grid, save_image

from genmodels.engine.lightning_private import logging_step
from genmodels.files import write_atomically


def is_drawing_epoch(trainer, every_n_epochs: int) -> bool:
    """Every `every_n_epochs`-th validation epoch, on rank zero only, never in the sanity
    check. Drawing calls no collective, so the other DDP ranks are never kept waiting."""
    return (not trainer.sanity_checking and trainer.is_global_zero
            and (trainer.current_epoch + 1) % every_n_epochs == 0)


def keep_first(kept: torch.Tensor | None, images: torch.Tensor, wanted: int) -> torch.Tensor:
    """The first `wanted` images seen so far: `kept`, topped up from this batch."""
    if kept is not None and len(kept) >= wanted:
        return kept
    seen = [] if kept is None else [kept]
    return torch.cat([*seen, images[:wanted].detach()])[:wanted]


def png_path(save_dir: Path, name: str, epoch: int) -> Path:
    save_dir.mkdir(parents=True, exist_ok=True)
    return save_dir / f"{name.replace('/', '_')}_epoch{epoch:04d}.png"


def log_image_grid(trainer, name: str, images: torch.Tensor, nrow: int,
                   save_dir: Path | None) -> None:
    """A grid of [0, 1] images to TensorBoard (when it is a logger), at the scalars' step
    (so that they line up with the curves), and to a PNG file named by epoch."""
    grid = make_grid(images.cpu(), nrow=nrow, padding=2, pad_value=1.0)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(name, grid, global_step=logging_step(trainer))
    if save_dir:
        write_atomically(png_path(save_dir, name, trainer.current_epoch),
                         lambda file: save_image(grid, file, format="png"))


def log_figure(trainer, name: str, figure: Figure, save_dir: Path | None,
               file_stem: str | None = None) -> None:
    """A matplotlib figure to TensorBoard (when it is a logger) and to a PNG file."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(name, figure, global_step=logging_step(trainer),
                                         close=False)
    if save_dir:
        write_atomically(png_path(save_dir, file_stem or name, trainer.current_epoch),
                         lambda file: figure.savefig(file, dpi=100, format="png"))
