"""Latent-space grids logged during training: the 2-d manifold and interpolations."""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid, save_image

from genmodels import latent


def log_image_grid(trainer, name: str, images: torch.Tensor, nrow: int,
                   save_dir: Path | None) -> None:
    """A grid of [0, 1] images to TensorBoard (when it is a logger) and to a PNG file."""
    grid = make_grid(images.cpu(), nrow=nrow, padding=2, pad_value=1.0)
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(name, grid, global_step=trainer.current_epoch)
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)
        filename = name.replace("/", "_") + f"_epoch{trainer.current_epoch:04d}.png"
        save_image(grid, save_dir / filename)


class LatentGrids(L.Callback):
    """Every `every_n_epochs` validation epochs (opt-in: `callbacks=vae`), for models with
    `encode`/`decode`, logs with `genmodels.latent`:

    - `latent/manifold` and `latent/manifold_quantiles` (2-d latent spaces only): the
      decoded latent plane, evenly over [-span, span] and at normal quantiles;
    - `latent/interpolations`: one row per pair of validation images, morphing from one to
      the other in `steps` (lerp or slerp);
    - `latent/semantic`: a bilinear upsampling of a 3x3 grid of random codings, decoded.

    Fixed seeds and the same validation images every time, so epochs compare. Runs on rank
    zero only, in eval mode.
    """

    def __init__(self, every_n_epochs: int = 5, manifold_size: int = 15, span: float = 3.0,
                 num_interpolations: int = 6, steps: int = 10, method: str = "lerp",
                 semantic_size: int = 10, seed: int = 0, save_dir: str | None = None):
        self.every_n_epochs, self.manifold_size, self.span = every_n_epochs, manifold_size, span
        self.num_interpolations, self.steps, self.method = num_interpolations, steps, method
        self.semantic_size, self.seed = semantic_size, seed
        self.save_dir = Path(save_dir) if save_dir else None
        self.val_images: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        wanted = 2 * self.num_interpolations
        if self.val_images is None or len(self.val_images) < wanted:
            seen = [] if self.val_images is None else [self.val_images]
            self.val_images = torch.cat([*seen, batch[0][:wanted].detach()])[:wanted]

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        if not all(callable(getattr(pl_module, m, None)) for m in ("encode", "decode")):
            return
        was_training = pl_module.training
        pl_module.eval()
        grids = {}  # name -> (images, images per row)
        if latent.latent_dim(pl_module) == 2:
            n = self.manifold_size
            grids["latent/manifold"] = (latent.manifold(pl_module, n, self.span), n)
            grids["latent/manifold_quantiles"] = (latent.manifold(pl_module, n, quantiles=True),
                                                  n)
        pairs = self.val_images if self.val_images is not None else torch.empty(0)
        rows = [latent.interpolate(pl_module, pairs[i], pairs[i + 1], self.steps, self.method)
                for i in range(0, len(pairs) - 1, 2)]
        if rows:
            grids["latent/interpolations"] = (torch.cat(rows), self.steps)
        size = self.semantic_size
        generator = torch.Generator().manual_seed(self.seed)
        grids["latent/semantic"] = (
            latent.semantic_interpolation(pl_module, size, size, generator=generator), size)
        pl_module.train(was_training)
        for name, (images, nrow) in grids.items():
            log_image_grid(trainer, name, pl_module.to_unit_range(images), nrow, self.save_dir)
