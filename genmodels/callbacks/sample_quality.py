"""Sample-quality metrics during training, so a sweep can optimise image quality."""

import logging

import lightning as L
import torch

from genmodels.errors import GenmodelsError
from genmodels.metrics.classifier import classifier_for
from genmodels.metrics.measure import measure

log = logging.getLogger(__name__)


class SampleQuality(L.Callback):
    """Every `every_n_epochs` validation epochs, measures `num_samples` samples against
    the validation images with `genmodels.metrics.measure.measure` (fd_classifier,
    kid_classifier, precision/recall/density/coverage, mode coverage, and where they
    apply reconstruction error and conditional accuracy) and logs them as val/<metric>:
    `optimized_metric=val/fd_classifier` makes a sweep minimise the Frechet distance.

    The classifier is trained (or loaded from `cache_dir`) at the first measurement.
    Under DDP only rank zero trains the classifier and measures (the other ranks would
    repeat the same work from the same seed); it broadcasts the values, so every rank logs
    the same numbers (a checkpoint or early stopping watching val/fd_classifier works on
    all of them). Every rank reaches the broadcast at the same epochs, so none waits
    forever; when rank zero's measurement fails, it broadcasts the error, and every rank
    stops with it.
    """

    def __init__(self, every_n_epochs: int = 5, num_samples: int = 2000,
                 cache_dir: str = "~/.cache/genmodels/classifiers", classifier_epochs: int = 5,
                 seed: int = 0):
        self.every_n_epochs, self.num_samples = every_n_epochs, num_samples
        self.cache_dir, self.classifier_epochs, self.seed = cache_dir, classifier_epochs, seed
        self.classifier = None

    @staticmethod
    def of(trainer) -> "SampleQuality | None":
        """The trainer's sample-quality callback, if it has one."""
        return next((c for c in trainer.callbacks if isinstance(c, SampleQuality)), None)

    def measures(self, epoch: int) -> bool:
        """Whether it measures at the end of validation epoch `epoch` (counted from 0)."""
        return (epoch + 1) % self.every_n_epochs == 0

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or not self.measures(trainer.current_epoch):
            return
        failure = metrics = None
        if trainer.is_global_zero:
            try:
                metrics = self.measure(trainer, pl_module)
            except Exception as error:  # the other ranks wait at the broadcast: tell them
                failure = error
                metrics = f"{type(error).__name__}: {error}"
        metrics = trainer.strategy.broadcast(metrics, src=0)
        if failure is not None:
            raise failure
        if isinstance(metrics, str):
            raise GenmodelsError(f"The sample-quality measurement failed on rank 0: {metrics}")
        for name, value in metrics.items():
            pl_module.log(f"val/{name}", value, sync_dist=False)

    def measure(self, trainer, pl_module) -> dict[str, float]:
        datamodule = trainer.datamodule
        if self.classifier is None:
            self.classifier = classifier_for(datamodule, self.cache_dir,
                                             epochs=self.classifier_epochs, seed=self.seed)
        real, labels = datamodule.splits["val"]
        labels = labels if (labels >= 0).all() else None
        classifier = self.classifier.to(real.device)
        with torch.inference_mode(False), torch.no_grad():
            metrics = measure(pl_module, classifier, real, labels, self.num_samples,
                              seed=self.seed)
        return {name: float(value) for name, value in metrics.items()}
