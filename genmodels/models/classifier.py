"""An image classifier on top of an encoder: for unsupervised pretraining experiments."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from genmodels.errors import GenmodelsError
from genmodels.models.base import WatchedForDivergence, flat_output_width
from genmodels.nn.dense import mlp


class ImageClassifier(WatchedForDivergence):
    """encoder -> batch norm -> dense head (`hidden_sizes`, then one logit per class),
    trained with cross-entropy.

    With `freeze_encoder`, only the head learns: the encoder (e.g. one pretrained as an
    autoencoder) is a fixed feature extractor, kept in eval mode. Logs loss and accuracy
    as train/..., val/..., test/... (accuracy from torchmetrics). Its training loss is
    watched by the engine's DivergenceGuard, as a generative model's is.
    """

    watched_for_divergence = {"loss": "classifier's loss"}
    # Its config is the pretraining experiment's (conf/experiment/pretrain_classifier.yaml).
    divergence_advice = "try a lower pretrain.classifier.optimizer.lr"

    def __init__(self, encoder: nn.Module, num_classes: int, channels: int, image_size: int,
                 optimizer: Callable, hidden_sizes: list[int] = (), activation: str = "selu",
                 freeze_encoder: bool = False):
        super().__init__()
        if num_classes < 2:
            raise GenmodelsError(
                f"A classifier needs a labelled dataset with 2 or more classes, got "
                f"{num_classes} (is dataset.labels set?)."
            )
        self.encoder, self.freeze_encoder = encoder, freeze_encoder
        width = flat_output_width(encoder, (channels, image_size, image_size))
        # Batch norm on the features, as for linear probes (He et al., "Masked Autoencoders
        # Are Scalable Vision Learners", 2021): a pretrained encoder's codings can have any
        # scale, which otherwise slows the head's training by orders of magnitude.
        self.head = nn.Sequential(nn.BatchNorm1d(width, affine=False),
                                  mlp([width, *hidden_sizes, num_classes], activation, None))
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        self.optimizer_factory = optimizer
        self.accuracy = nn.ModuleDict({stage: MulticlassAccuracy(num_classes, average="micro")
                                       for stage in ("train_", "val_", "test_")})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).flatten(1))

    def on_train_epoch_start(self) -> None:
        if self.freeze_encoder:
            self.encoder.eval()  # no dropout / batch-norm updates in a frozen encoder

    def step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.float(), y)
        accuracy = self.accuracy[f"{stage}_"]
        accuracy(logits, y)
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=len(x))
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def training_step(self, batch, batch_idx):
        loss = self.step(batch, "train")
        # Under "log", for the DivergenceGuard: it checks that the loss is finite.
        return {"loss": loss, "log": {"loss": loss.detach()}}

    def validation_step(self, batch, batch_idx):
        self.step(batch, "val")

    def test_step(self, batch, batch_idx):
        self.step(batch, "test")

    def configure_optimizers(self):
        return self.optimizer_factory([p for p in self.parameters() if p.requires_grad])
