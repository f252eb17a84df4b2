"""Is the aggregate posterior close to the prior? Histograms of the codings' means."""

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure

from genmodels.callbacks.outputs import is_drawing_epoch, log_figure
from genmodels.engine.lightning_private import logging_step


class AggregatePosterior(L.Callback):
    """Every `every_n_epochs` validation epochs (opt-in: `callbacks=vae`), encodes the
    validation images and draws, per latent dimension (the first `max_dims`), the histogram
    of the codings' means against the standard normal density N(0, 1).

    A VAE's aggregate posterior q(z) = E_x q(z|x) should match its N(0, I) prior: otherwise
    prior samples land where the decoder was never trained. Each panel's title gives the
    mean and standard deviation of the means; for a VAE it also gives the aggregate
    posterior's variance, Var(means) + E[sigma^2], which should be near 1. The figure goes
    to TensorBoard (`latent/aggregate_posterior`) and, with `save_dir`, to a PNG file; the
    mean absolute mean and the mean aggregate variance are logged as scalars.
    Works for any model with `encode` (for an autoencoder N(0, 1) is only a reference).
    """

    def __init__(self, every_n_epochs: int = 5, max_dims: int = 16, bins: int = 40,
                 save_dir: str | None = None):
        self.every_n_epochs, self.max_dims, self.bins = every_n_epochs, max_dims, bins
        self.save_dir = Path(save_dir) if save_dir else None
        self.means: list[torch.Tensor] = []
        self.variances: list[torch.Tensor] = []

    def active(self, trainer, pl_module) -> bool:
        return (is_drawing_epoch(trainer, self.every_n_epochs)
                and callable(getattr(pl_module, "encode", None)))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        if not self.active(trainer, pl_module):
            return
        if callable(getattr(pl_module, "posterior", None)):
            mean, logvar = pl_module.posterior(batch[0])
            self.variances.append(logvar.float().exp().cpu())
        else:
            mean = pl_module.encode(batch[0])
        self.means.append(mean.float().flatten(1).cpu())

    def on_validation_epoch_end(self, trainer, pl_module):
        if not self.means:
            return
        means = torch.cat(self.means)
        variances = torch.cat(self.variances) if self.variances else None
        self.means, self.variances = [], []
        aggregate_var = None
        if variances is not None:
            aggregate_var = means.var(0) + variances.mean(0)
        figure = self.figure(means, aggregate_var)
        log_figure(trainer, "latent/aggregate_posterior", figure, self.save_dir,
                   file_stem="aggregate_posterior")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_scalar("latent/mean_abs_mean", means.mean(0).abs().mean(),
                                             global_step=logging_step(trainer))
                if aggregate_var is not None:
                    logger.experiment.add_scalar("latent/aggregate_variance",
                                                 aggregate_var.mean(),
                                                 global_step=logging_step(trainer))

    def figure(self, means: torch.Tensor, aggregate_var: torch.Tensor | None) -> Figure:
        dims = min(self.max_dims, means.shape[1])
        cols = min(4, dims)
        rows = math.ceil(dims / cols)
        figure = Figure(figsize=(3 * cols, 2.4 * rows), layout="constrained")
        axes = figure.subplots(rows, cols, squeeze=False).flatten()
        grid = torch.linspace(-4, 4, 200)
        normal_pdf = (-0.5 * grid.pow(2)).exp() / math.sqrt(2 * math.pi)
        for d, ax in enumerate(axes):
            if d >= dims:
                ax.axis("off")
                continue
            values = means[:, d].numpy()
            ax.hist(values, bins=self.bins, range=(-4, 4), density=True, alpha=0.6,
                    label="codings' means")
            ax.plot(grid.numpy(), normal_pdf.numpy(), "k", linewidth=1, label="N(0, 1)")
            title = f"z{d}: mean {values.mean():.2f}, std {values.std():.2f}"
            if aggregate_var is not None:
                title += f"\nVar q(z) {aggregate_var[d]:.2f}"
            ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0].legend(fontsize=7)
        return figure
