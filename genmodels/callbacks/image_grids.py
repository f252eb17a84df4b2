"""Image grids of samples and reconstructions, logged every validation epoch."""

from pathlib import Path

import lightning as L
import torch

from genmodels.callbacks.outputs import is_drawing_epoch, keep_first, log_image_grid
from genmodels.sampling import interleave_rows


class ImageGrids(L.Callback):
    """Logs, at the end of every `every_n_epochs`-th validation epoch:

    - `samples`: `model.sample` on a fixed noise batch (the same seed every epoch, so the
      grids show how the same codings evolve); for conditional models (a `num_classes`
      attribute) one row of 8 per class, from `sample(n, labels=...)`;
    - `reconstructions` (models with `reconstruct`): rows of inputs over their
      reconstructions, for a fixed set of validation images;
    - `denoising` (models that also have `corrupt`): rows of corrupted inputs, their
      restorations and the clean images;
    - `denoising_chain` (diffusion models): rows of x_t from the noise x_T to the sample
      x_0, from the same fixed noise every epoch.

    Grids go to TensorBoard (when it is a logger) and, with `save_dir`, to PNG files.
    Sampling runs on rank zero only, in eval mode, and calls no collective, so it cannot
    stall the other DDP ranks.
    """

    def __init__(self, num_samples: int = 64, num_reconstructions: int = 32,
                 every_n_epochs: int = 1, seed: int = 0, save_dir: str | None = None):
        self.num_samples, self.num_reconstructions = num_samples, num_reconstructions
        self.every_n_epochs, self.seed = every_n_epochs, seed
        self.save_dir = Path(save_dir) if save_dir else None
        self.val_images: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        self.val_images = keep_first(self.val_images, batch[0], self.num_reconstructions)

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module):
        if not is_drawing_epoch(trainer, self.every_n_epochs):
            return
        was_training = pl_module.training
        pl_module.eval()
        grids = {}
        if self.num_samples:
            generator = torch.Generator().manual_seed(self.seed)
            num_classes = getattr(pl_module, "num_classes", None)
            if num_classes:  # conditional model: one row of 8 per class
                labels = torch.arange(num_classes).repeat_interleave(8)
                grids["samples"] = pl_module.sample(len(labels), generator=generator,
                                                    labels=labels)
            else:
                grids["samples"] = pl_module.sample(self.num_samples, generator=generator)
            if hasattr(pl_module, "denoising_chain"):
                grids["denoising_chain"] = pl_module.denoising_chain(
                    generator=torch.Generator().manual_seed(self.seed))
        if self.num_reconstructions and hasattr(pl_module, "reconstruct"):
            x = self.val_images.to(pl_module.device)
            pairs = torch.stack([x, pl_module.reconstruct(x)], dim=1)  # input over output
            grids["reconstructions"] = interleave_rows(pairs, row_length=8)
            if hasattr(pl_module, "corrupt"):  # denoising: noisy over restored over clean
                noisy = pl_module.corrupt(x)
                triplets = torch.stack([noisy, pl_module.reconstruct(noisy), x], dim=1)
                grids["denoising"] = interleave_rows(triplets, row_length=8)
        pl_module.train(was_training)
        for name, images in grids.items():
            log_image_grid(trainer, name, pl_module.to_unit_range(images), 8, self.save_dir)


