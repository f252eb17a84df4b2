"""Latent-space grids logged during training: the 2-d manifold and interpolations."""

from pathlib import Path

import lightning as L
import torch

from genmodels import latent
from genmodels.callbacks.outputs import is_drawing_epoch, keep_first, log_image_grid


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
        self.val_images = keep_first(self.val_images, batch[0], 2 * self.num_interpolations)

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module):
        if not is_drawing_epoch(trainer, self.every_n_epochs):
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
