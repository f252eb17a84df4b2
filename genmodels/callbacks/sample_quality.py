"""Sample-quality metrics during training, so a sweep can optimise image quality."""

import logging

import lightning as L
import torch

from genmodels.metrics.classifier import classifier_for

log = logging.getLogger(__name__)


class SampleQuality(L.Callback):
    """Every `every_n_epochs` validation epochs, measures `num_samples` samples against
    the validation images with `genmodels.evaluate.measure` (fd_classifier,
    kid_classifier, precision/recall/density/coverage, mode coverage, and where they
    apply reconstruction error and conditional accuracy) and logs them as val/<metric>:
    `optimized_metric=val/fd_classifier` makes a sweep minimise the Frechet distance.

    The classifier is trained (or loaded from `cache_dir`) at the first measurement.
    Every DDP rank computes the same values from the same seed, so no rank waits on a
    collective inside the callback.
    """

    def __init__(self, every_n_epochs: int = 5, num_samples: int = 2000,
                 cache_dir: str = "~/.cache/genmodels/classifiers", classifier_epochs: int = 5,
                 seed: int = 0):
        self.every_n_epochs, self.num_samples = every_n_epochs, num_samples
        self.cache_dir, self.classifier_epochs, self.seed = cache_dir, classifier_epochs, seed
        self.classifier = None

    def on_validation_epoch_end(self, trainer, pl_module):
        from genmodels.evaluate import measure  # evaluate imports the callbacks' package

        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
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
        for name, value in metrics.items():
            pl_module.log(f"val/{name}", float(value), sync_dist=False)
