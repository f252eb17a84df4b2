"""Maps of the codings: a 2-D scatter coloured by label, and a TensorBoard embedding."""

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from genmodels.callbacks.outputs import is_drawing_epoch, log_figure, log_image_grid
from genmodels.engine.lightning_private import logging_step
from genmodels.latent import top_activating

log = logging.getLogger(__name__)


class LatentScatter(L.Callback):
    """Every `every_n_epochs`-th validation epoch, encodes up to `max_points` validation
    images with `model.encode` (any model that has it: autoencoders, VAEs' posterior
    means) and logs to TensorBoard:

    - `latent_scatter`: a figure of the codings in 2-D, coloured by label: the codings
      themselves when they are 2-D, otherwise their t-SNE map (scikit-learn; van der
      Maaten & Hinton, 2008), which takes seconds for 1,000 points;
    - with `embedding`, the codings in the PROJECTOR tab (`add_embedding`), labelled and
      with the images as sprites, for interactive PCA / t-SNE / UMAP views;
    - `latent/top_activations`: one row per coding unit (the first 32), the
      `top_activations` of these images that activate it most, highest first (0: off).

    The figure is also saved as a PNG file with `save_dir`. Rank zero only, in eval mode.
    t-SNE runs on `tsne_threads` threads (None: all): inside a training process, its
    OpenMP threads compete with PyTorch's, and on a busy machine one thread is often
    dozens of times faster than all of them.
    """

    def __init__(self, every_n_epochs: int = 5, max_points: int = 1000,
                 perplexity: float = 30.0, embedding: bool = True, seed: int = 0,
                 save_dir: str | None = None, tsne_threads: int | None = 1,
                 top_activations: int = 10):
        self.every_n_epochs, self.max_points = every_n_epochs, max_points
        self.top_activations = top_activations
        self.tsne_threads = tsne_threads
        self.perplexity, self.embedding, self.seed = perplexity, embedding, seed
        self.save_dir = Path(save_dir) if save_dir else None
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer, pl_module):
        self.images, self.labels = [], []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                                dataloader_idx=0):
        held = sum(len(x) for x in self.images)
        wanted = is_drawing_epoch(trainer, self.every_n_epochs) and held < self.max_points
        if not wanted or not hasattr(pl_module, "encode"):
            return
        images, labels = batch
        self.images.append(images[: self.max_points - held].detach())
        self.labels.append(labels[: self.max_points - held].detach().cpu())

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer, pl_module):
        if not self.images:
            return
        images, labels = torch.cat(self.images), torch.cat(self.labels)
        self.images, self.labels = [], []
        was_training = pl_module.training
        pl_module.eval()
        codings = torch.cat([pl_module.encode(x).flatten(1).float().cpu()
                             for x in images.split(256)])
        pl_module.train(was_training)
        if self.top_activations:
            top = top_activating(codings, self.top_activations, max_units=32)
            log_image_grid(trainer, "latent/top_activations",
                           pl_module.to_unit_range(images[top.flatten()]), top.shape[1],
                           self.save_dir)
        points, method = self.to_2d(codings.numpy())
        figure = scatter_figure(points, labels.numpy(),
                                f"{type(pl_module).__name__} codings ({method}), "
                                f"epoch {trainer.current_epoch}")
        log_figure(trainer, "latent_scatter", figure, self.save_dir)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and self.embedding:
                logger.experiment.add_embedding(
                    codings, metadata=labels.tolist(), global_step=logging_step(trainer),
                    tag="codings", label_img=pl_module.to_unit_range(images).cpu())

    def to_2d(self, codings: np.ndarray) -> tuple[np.ndarray, str]:
        """The codings themselves if they are 1-D or 2-D, else their t-SNE embedding."""
        if codings.shape[1] <= 2:
            padded = np.zeros((len(codings), 2), dtype=codings.dtype)
            padded[:, : codings.shape[1]] = codings
            return padded, "codings"
        # t-SNE needs perplexity < number of points; small validation sets get less.
        perplexity = min(self.perplexity, max(1.0, (len(codings) - 1) / 3))
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=self.seed)
        with threadpool_limits(limits=self.tsne_threads):
            return tsne.fit_transform(codings), "t-SNE"


def scatter_figure(points: np.ndarray, labels: np.ndarray, title: str) -> Figure:
    """2-D points coloured by class (label -1, unlabelled, in grey), with a legend."""
    figure = Figure(figsize=(6, 6))
    axes = figure.add_subplot()
    for label in np.unique(labels):
        chosen = labels == label
        colour = "grey" if label < 0 else f"C{label % 10}"
        axes.scatter(points[chosen, 0], points[chosen, 1], s=6, color=colour,
                     label="no label" if label < 0 else str(label))
    if len(np.unique(labels)) <= 20:
        axes.legend(markerscale=3, fontsize="small", loc="best")
    axes.set_title(title)
    figure.tight_layout()
    return figure
