"""What every model offers to callbacks and tools, whatever its family."""

from collections.abc import Callable, Mapping
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

from genmodels.errors import GenmodelsError, TrainingDiverged

VALUE_RANGES = ([0.0, 1.0], [-1.0, 1.0])
# What Lightning calls around each optimizer step of manual optimization.
GRADIENT_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


class GenerativeModel(L.LightningModule):
    """Base of every model family.

    The common interface: `sample(n)` returns n images in the model's `value_range`, and
    models that have them add `encode(x)`, `decode(z)` and `reconstruct(x)`. Callbacks and
    tools rely on nothing else.
    """

    progress_bar_metrics = ("loss",)
    # The end of the "Training diverged" message.
    divergence_advice = "try a lower model.optimizer.lr"
    # Under 16-mixed precision the GradScaler halves its scale at every step it skips for
    # NaN or infinite gradients: this floor is 30 skips in a row from its initial 2^16.
    min_loss_scale = 2.0**-14

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
        self._epoch_loss_sums: dict[str, tuple[torch.Tensor, int]] = {}  # name: (sum, count)
        self._nonfinite: dict[str, torch.Tensor] = {}  # what: device flag (watch_finite)
        self._finite_until = "the start"  # where check_finite last found all finite

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def losses(self, batch) -> dict[str, torch.Tensor]:
        """The objective ("loss") and its named terms for one batch.

        Training, validation and test log the same terms, so their curves compare.
        """
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        if self.fused_batch_size is not None:
            return self.fused_training_step(batch)
        losses = self.losses(batch)
        self._log_training_losses(losses)
        # A NaN loss gives NaN gradients, and a NaN gradient NaN weights: the loss of the
        # step after shows it, and check_finite looks at the weights before any checkpoint.
        self.watch_finite("loss", losses["loss"])
        return losses["loss"]

    # ----- speed.fused_batches: several optimizer steps per Lightning step ------------------

    fused_batch_size: int | None = None  # the batch size inside a fused batch; None: off

    def fuse_batches(self, batch_size: int) -> None:
        """Train on fused batches (speed.fused_batches): each batch Lightning hands to
        `training_step` is several consecutive batches of `batch_size`, and the model takes
        one optimizer step on each, in order: the same steps as one batch per Lightning
        step, with Lightning's per-step work (hooks, closures, progress bar, and above all
        its logging steps) paid once per fused batch. Small models, whose own step takes a
        few milliseconds, gain most. This uses Lightning's manual optimization.
        """
        if type(self).training_step is not GenerativeModel.training_step:
            raise GenmodelsError(
                f"speed.fused_batches applies to models trained one loss at a time "
                f"(autoencoders, VAEs); {type(self).__name__} has its own training step: "
                f"use speed.fused_batches=1.")
        self.fused_batch_size = batch_size
        self.automatic_optimization = False

    def fused_training_step(self, batch) -> None:
        """What Lightning's automatic optimization does for one batch (zero_grad, backward,
        step; a step-interval LR scheduler), once per batch of the fused batch, stopping at
        trainer.max_steps exactly."""
        optimizer, max_steps = self.optimizers(), self.trainer.max_steps
        plain = self._plain_steps_do_the_same()
        parts = zip(*(part.split(self.fused_batch_size) for part in batch), strict=True)
        step_losses = []
        for index, part in enumerate(parts):
            if 0 <= max_steps <= self.global_step:
                break
            losses = self.losses(part)
            self._log_training_losses(losses, log=index == 0)
            step_losses.append(losses["loss"])
            optimizer.zero_grad()
            if plain:
                losses["loss"].backward()
                optimizer._on_before_step()  # Lightning's optimizer step count (global_step)
                optimizer.optimizer.step()
                optimizer._on_after_step()
            else:
                self.manual_backward(losses["loss"])
                optimizer.step()
            self._step_schedulers("step")
        if step_losses:
            # One record for the fused batch (a few tensor ops each time add up here).
            self.watch_finite("loss", *step_losses)

    def _plain_steps_do_the_same(self) -> bool:
        """Whether plain `loss.backward()` and `optimizer.step()` do all that Lightning's
        `manual_backward` and `LightningOptimizer.step` would. Those call the three
        gradient hooks on every callback and on the module (and the module's `backward`):
        ~0.2 ms per optimizer step with the default callbacks, a few percent of a small
        model's step, spent on nothing when no one implements them. Beyond that they only
        work under other strategies (DDP's backward prepares its gradient all-reduce) and
        precisions (16-mixed scales the loss, bf16-true casts)."""
        trainer, precision = self.trainer, self.trainer.precision_plugin
        return (not any(is_overridden(hook, listener) for listener in [*trainer.callbacks, self]
                        for hook in GRADIENT_HOOKS)
                and not is_overridden("backward", self)
                and type(trainer.strategy) is SingleDeviceStrategy
                and type(precision) in (Precision, MixedPrecision)
                and getattr(precision, "scaler", None) is None)

    def validation_step(self, batch, batch_idx):
        self._log_losses(self.losses(batch), "val", batch_size=len(batch[0]))

    def test_step(self, batch, batch_idx):
        self._log_losses(self.losses(batch), "test", batch_size=len(batch[0]))

    def _log_losses(self, losses: dict[str, torch.Tensor], stage: str, batch_size: int) -> None:
        if stage == "train":
            self._log_training_losses(losses)
            return
        for name, value in losses.items():
            # Epoch-level evaluation logs are averaged over DDP ranks.
            self.log(f"{stage}/{name}", value, prog_bar=name in self.progress_bar_metrics,
                     on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)

    def _log_training_losses(self, losses: dict[str, torch.Tensor], log: bool = True) -> None:
        """train/<name>_step every `trainer.log_every_n_steps` batches and train/<name>_epoch
        (the mean over the epoch) at the epoch's end.

        Each `self.log` call costs Lightning a fraction of a millisecond, as much as a
        whole training step of a small model, so the losses are summed here (a tensor add,
        no GPU sync) and handed to Lightning only on the steps its loggers write. Training
        logs are per rank under DDP: syncing them would cost a collective every step.
        """
        for name, value in losses.items():
            total, count = self._epoch_loss_sums.get(name, (0.0, 0))
            self._epoch_loss_sums[name] = (total + value.detach(), count + 1)
        if log and self.is_logging_step():
            for name, value in losses.items():
                self.log(f"train/{name}_step", value, prog_bar=name in self.progress_bar_metrics,
                         on_step=True, on_epoch=False)
            if (scaler := self.grad_scaler) is not None:
                # 16-mixed: the GradScaler halves its scale at each step it skips for
                # inf/NaN gradients and doubles it after a run of good ones; scale(1) keeps
                # the value on the device.
                self.log("train/loss_scale", scaler.scale(torch.ones((), device=self.device)),
                         on_step=True, on_epoch=False)

    def is_logging_step(self) -> bool:
        """Whether Lightning's loggers write this training step. Lightning's own test, a
        private attribute: without it, every step is one rather than fail."""
        connector = getattr(self.trainer, "_logger_connector", None)
        return connector is None or connector.should_update_logs

    # ----- divergence: NaN or infinite losses, gradients, weights --------------------------

    def watch_finite(self, what: str, *values: torch.Tensor) -> None:
        """Record, on the device, whether `values` (a loss, a gradient norm) are all finite.

        Called every training step, so it never reads a value back to the host (that waits
        for the GPU: a sync per step would slow small models down). `check_finite` reads the
        record on logging steps, before every checkpoint and at the end of training. Under
        16-mixed precision a non-finite value is not recorded: it is a step the GradScaler
        skips (and halves its scale for), normal in mixed precision.
        """
        if self.grad_scaler is not None:
            return
        bad = torch.stack([value.detach().float() for value in values]).isfinite().logical_not()
        bad = bad.any()
        self._nonfinite[what] = bad if what not in self._nonfinite else self._nonfinite[what] | bad

    def check_finite(self, weights: Mapping[str, torch.Tensor] | None = None) -> None:
        """Raise TrainingDiverged if a value recorded by `watch_finite` was not finite, the
        16-mixed loss scale collapsed below `min_loss_scale`, or one of `weights` (a state
        dict) is not finite. Reads device values: a GPU sync, so only on logging steps (whose
        logging syncs anyway), before checkpoints and at the end of training."""
        flags = list(self._nonfinite.items())
        reasons = []
        if flags:
            found = torch.stack([flag for _, flag in flags]).tolist()
            reasons += [f"the {what}" for (what, _), bad in zip(flags, found, strict=True) if bad]
        if weights is not None:
            floats = [w for w in weights.values() if torch.is_floating_point(w)]
            if floats and not torch.stack([w.isfinite().all() for w in floats]).all():
                reasons.append("the weights")
        scaler = self.grad_scaler
        if scaler is not None and (scale := scaler.get_scale()) < self.min_loss_scale:
            reasons.append(f"the gradients at every step (the 16-mixed loss scale fell to "
                           f"{scale:.3g}, halved at each skipped step)")
        # Every DDP process stops, or none (one alone would leave the others waiting).
        if not self.trainer.strategy.reduce_boolean_decision(bool(reasons), all=False):
            self._finite_until = self.training_progress()
            return
        checkpoint = last_checkpoint(self.trainer)
        kept = (f"the last good checkpoint is {checkpoint}" if checkpoint is not None
                else "no checkpoint was saved before")
        raise TrainingDiverged(
            f"Training diverged: {' and '.join(reasons) or 'a value on another process'} "
            f"became NaN or infinite between {self._finite_until} and "
            f"{self.training_progress()}; nothing from these steps was saved and {kept}; "
            f"{self.divergence_advice}.")

    def training_progress(self) -> str:
        """Where training is, for messages."""
        return f"step {self.global_step}"

    def on_train_start(self) -> None:
        self._finite_until = self.training_progress()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.is_logging_step():
            self.check_finite()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Raising here stops Lightning before it writes anything: a checkpoint with NaN
        # weights never replaces a good one.
        self.check_finite(checkpoint["state_dict"])

    def on_train_end(self) -> None:
        self.check_finite(self.state_dict())

    @property
    def grad_scaler(self):
        """16-mixed precision's GradScaler; None under other precisions or without a
        Trainer (the benchmark's bare loop computes the same losses without one)."""
        if self._trainer is None:
            return None
        return getattr(self._trainer.precision_plugin, "scaler", None)

    def on_train_epoch_end(self) -> None:
        for name, (total, count) in self._epoch_loss_sums.items():
            self.log(f"train/{name}_epoch", total / count, on_step=False, on_epoch=True)
        self._epoch_loss_sums = {}
        if self.fused_batch_size is not None:
            self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        """Under manual optimization Lightning leaves the LR schedulers to the model: step
        those of `interval` ("step" or "epoch"), as it would."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval:
                config.scheduler.step()

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


def last_checkpoint(trainer: L.Trainer) -> Path | None:
    """The newest checkpoint in the folders the trainer's callbacks save to, or the one
    training started from."""
    folders = {Path(c.dirpath) for c in trainer.callbacks if getattr(c, "dirpath", None)}
    saved = [path for folder in folders for path in folder.glob("*.ckpt")]
    if trainer.ckpt_path and Path(trainer.ckpt_path).is_file():
        saved.append(Path(trainer.ckpt_path))
    return max(saved, key=lambda path: path.stat().st_mtime, default=None)


def flat_output_width(module: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Number of features `module` outputs per example, found by a dry run on zeros."""
    was_training = module.training
    module.eval()  # batch norm in train mode would update its statistics
    with torch.no_grad():
        width = module(torch.zeros(2, *input_shape)).flatten(1).shape[1]
    module.train(was_training)
    return width
