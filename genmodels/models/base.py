"""What every model offers to callbacks and tools, whatever its family."""

import math
from collections.abc import Callable

import lightning as L
import torch
from torch import nn

from genmodels.config import check_whole_number
from genmodels.errors import GenmodelsError
from genmodels.nn.layers import OUTPUT_RANGES

VALUE_RANGES = ([0.0, 1.0], [-1.0, 1.0])


def check_latent_size(name: str, value) -> None:
    """A latent space of at least one dimension (latent_dim=0 trained a VAE with no latent
    at all, its KL exactly 0)."""
    check_whole_number(f"model.{name}", value, 1)



def check_output_range(activation: nn.Module, value_range, network: str, key: str) -> None:
    """Refuse an output activation whose values cannot cover the images' `value_range`
    (sigmoid for [-1, 1]: no dark pixel is reachable) or, bounded, spans another range
    (tanh for [0, 1]: half its outputs are never data)."""
    low, high = OUTPUT_RANGES.get(type(activation), (-math.inf, math.inf))
    data_low, data_high = map(float, value_range)
    bounded = math.isfinite(low) and math.isfinite(high)
    if low <= data_low and high >= data_high and not (bounded and (low, high) != (data_low,
                                                                                    data_high)):
        return
    fitting = {(0.0, 1.0): "sigmoid", (-1.0, 1.0): "tanh"}[(data_low, data_high)]
    raise GenmodelsError(
        f"The {network}'s output activation {type(activation).__name__} makes values in "
        f"[{low:g}, {high:g}], but model.value_range is {[data_low, data_high]}, the range "
        f"the images are scaled to: set {key}={fitting}"
        + (f", or set model.value_range={[low, high]}." if bounded else "."))


class ClassConditional:
    """The labels of a class-conditional model (`num_classes`; None: unconditional),
    checked before they index an embedding: every label of an in-memory dataset when fit
    starts (a bad one deep in the data would stop training mid-epoch with an indexing
    error), else a batch's until one passes. The GAN and DDPM families share it."""

    num_classes: int | None = None
    _labels_checked = False

    def real_batch(self, batch):
        """The images, and their labels when the model is conditional."""
        images, labels = batch
        if self.num_classes is None:
            return images, None
        if not self._labels_checked:
            self.check_labels(labels)
        return images, labels

    def on_fit_start(self) -> None:
        splits = getattr(self.trainer.datamodule, "splits", None) or {}
        if self.num_classes is not None and "train" in splits:
            self.check_labels(torch.cat([splits[s][1] for s in ("train", "val") if s in splits]))

    def sampling_labels(self, n: int, labels) -> torch.Tensor | None:
        """The classes of n samples: `labels` (one class for all, or one each) checked, by
        default 0, 1, ..., num_classes - 1, 0, 1, ...; None for an unconditional model
        (which refuses labels)."""
        if self.num_classes is None:
            if labels is not None:
                raise GenmodelsError(f"labels were given, but this {type(self).__name__} is not "
                                     "conditional (model.num_classes is not set; e.g. "
                                     "model=cgan).")
            return None
        if labels is None:
            labels = torch.arange(n) % self.num_classes
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(labels) == 1:
            labels = labels.expand(n)
        if labels.shape != (n,) or labels.min() < 0 or labels.max() >= self.num_classes:
            raise GenmodelsError(f"labels must be one class index or {n} of them, in [0, "
                                 f"{self.num_classes}), got {labels.tolist()}.")
        return labels.to(self.device)

    def check_labels(self, labels: torch.Tensor) -> None:
        if labels.min() < 0:
            raise GenmodelsError(f"A conditional {type(self).__name__} needs class labels, but "
                                 "this dataset has none (labels are -1); use a labelled "
                                 "dataset such as digits, mnist, fashion or cifar10.")
        if labels.max() >= self.num_classes:
            raise GenmodelsError(f"The dataset has labels up to {int(labels.max())}, but "
                                 f"model.num_classes is {self.num_classes}: set "
                                 f"model.num_classes={int(labels.max()) + 1} or fix the labels.")
        self._labels_checked = True

class WatchedForDivergence(L.LightningModule):
    """What the engine's DivergenceGuard reads from a model it guards: the values its
    `training_step` returns under "log" that it watches, how the message names them and
    ends, where training is and the 16-mixed GradScaler. Every model that genmodels trains
    has it: the generative families (GenerativeModel) and the pretraining classifier."""

    # The training logs that diverged training when NaN or infinite, and how the message
    # names them (a NaN gradient makes NaN weights, whose loss shows it a step later).
    watched_for_divergence = {"loss": "loss"}
    # The end of the "Training diverged" message.
    divergence_advice = "try a lower model.optimizer.lr"

    def training_progress(self) -> str:
        """Where training is, for messages."""
        return f"step {self.global_step}"

    @property
    def grad_scaler(self):
        """16-mixed precision's GradScaler during training; None under other precisions."""
        return getattr(self.trainer.precision_plugin, "scaler", None)


class GenerativeModel(WatchedForDivergence):
    """Base of every model family.

    The common interface: `sample(n)` returns n images in the model's `value_range`, and
    models that have them add `encode(x)`, `decode(z)` and `reconstruct(x)`. Callbacks and
    tools rely on nothing else. A family defines `losses(batch)` (or its own training
    step); how training is logged, guarded and sped up is the engine's (genmodels/engine/).
    """

    # The training logs shown in the progress bar.
    progress_bar_metrics = ("loss",)
    # The validation metric and direction (min or max) that judge the model when the
    # best checkpoint or early stopping leaves `monitor` null (callbacks=early_stopping).
    monitored_metric = ("val/loss", "min")
    # Whether a training step computes the figures that are only watched, not trained on
    # (a GAN's gradient norms and D's accuracies). The engine sets it for each step:
    # on Lightning's logging steps only, since each figure costs device work every step.
    monitoring = True

    def __init__(self, channels: int, image_size: int, value_range: list[float],
                 optimizer: Callable | None = None, scheduler: Callable | None = None):
        super().__init__()
        if list(value_range) not in VALUE_RANGES:
            raise GenmodelsError(
                f"value_range must be one of {VALUE_RANGES}, got {list(value_range)}."
            )
        self.image_shape = (channels, image_size, image_size)
        self.value_range = tuple(value_range)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n new images, shaped `image_shape`, with values in the model's `value_range`
        ((0, 1) or (-1, 1); `to_unit_range` maps them to (0, 1)), computed without
        gradients. Call it in eval mode (`model.eval()`) for batch-norm networks, as
        `genmodels.sampling.sample_images` does."""
        raise NotImplementedError

    def losses(self, batch) -> dict[str, torch.Tensor]:
        """The objective ("loss") and its named terms for one batch.

        Training, validation and test log the same terms, so their curves compare.
        """
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        """One step on `losses`: Lightning's automatic optimization minimises "loss", and
        the engine logs each term under "log" as train/<name> (genmodels/engine/)."""
        losses = self.losses(batch)
        return {"loss": losses["loss"], "log": losses}

    def validation_step(self, batch, batch_idx):
        self.log_evaluation_losses(self.losses(batch), "val", batch_size=len(batch[0]))

    def test_step(self, batch, batch_idx):
        self.log_evaluation_losses(self.losses(batch), "test", batch_size=len(batch[0]))

    def log_evaluation_losses(self, losses: dict[str, torch.Tensor], stage: str,
                              batch_size: int) -> None:
        for name, value in losses.items():
            # Epoch-level evaluation logs are averaged over DDP ranks.
            self.log(f"{stage}/{name}", value, prog_bar=name in self.progress_bar_metrics,
                     on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)

    def optimizer_steps_for(self, steps: int) -> int:
        """The optimizer steps (Lightning's `global_step`) that make `steps` training steps
        of this model, as `trainer.max_steps` counts them: one each here."""
        return steps

    # The model config's node of each optimizer configure_optimizers returns, in order:
    # resuming with e.g. model.optimizer.lr=1e-4 changes the restored optimizer it names.
    optimizer_nodes: tuple[str, ...] = ("optimizer",)

    def configure_optimizers(self):
        """The optimizer (and optional LR scheduler) from the config's Hydra partials."""
        if self.optimizer_factory is None:
            raise GenmodelsError(
                "The model config has no `optimizer` (a `_partial_` torch.optim entry)."
            )
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    def to_unit_range(self, images: torch.Tensor) -> torch.Tensor:
        """Map images from the model's value range to [0, 1], for display."""
        low, high = self.value_range
        return ((images.float() - low) / (high - low)).clamp(0, 1)

    def randn(self, *shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal noise on the model's device; seeded through a CPU generator."""
        if generator is None:
            return torch.randn(*shape, device=self.device)
        return torch.randn(*shape, generator=generator).to(self.device)


def flat_output_width(module: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of features `module` outputs per example, found by a dry run on zeros."""
    was_training = module.training
    module.eval()  # batch norm in train mode would update its statistics
    with torch.no_grad():
        width = module(torch.zeros(2, *input_shape)).flatten(1).shape[1]
    module.train(was_training)
    return width
